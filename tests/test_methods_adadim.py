"""AdaDim: its own NCE and VICReg terms equal SimCLR's and VICReg's, the Renyi-2 MI against the eigenvalue estimator,
the mixture and the sign of the MI term, alpha by hand and re-measured on schedule in a short run, the ablations."""
import math

import pytest
import torch

import adadim
import common
import estimators
from adadim import adadim_loss, dimensionality_alpha, nce_loss, renyi2_mutual_information, vicreg_terms
from conftest import TINY, events
from simclr import info_nce_loss
from vicreg import vicreg_loss

def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_renyi2_mi_equals_the_eigenvalue_estimator():
    for seed, (n, dr, dz) in enumerate([(16, 8, 5), (32, 64, 64), (10, 3, 40)]):
        r, z = _randn(n, dr, seed=seed), _randn(n, dz, seed=seed + 10)
        z_of_r = torch.relu(r @ _randn(dr, dz, seed=seed + 20))  # a Z computed from R, as the projector
        for a, b in ((r, z), (r, z_of_r), (r, r)):
            ours = renyi2_mutual_information(a, b).item()
            assert abs(ours - estimators.matrix_mutual_information(a, b, 2.0)) < 1e-9, (seed, ours)


def test_renyi2_mi_hand_value_and_gradient():
    # R: 4 orthonormal rows -> A = I/4, S_2 = log 4. Z: two identical pairs -> B = blockdiag(J2, J2)/4, S_2 = log 2.
    # A o B = A, so S_2(joint) = log 4 and I = log 4 + log 2 - log 4 = log 2.
    r = torch.eye(4, dtype=torch.float64)
    z = torch.tensor([[1.0, 0], [1, 0], [0, 1], [0, 1]], dtype=torch.float64)
    assert abs(renyi2_mutual_information(r, z).item() - math.log(2)) < 1e-12
    r, z = _randn(6, 4).requires_grad_(), _randn(6, 3, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(renyi2_mutual_information, (r, z))


def test_adadim_alpha_one_is_pure_nce_and_alpha_zero_is_pure_vicreg():
    r1, r2, z1, z2 = _randn(12, 7), _randn(12, 7, seed=1), _randn(12, 9, seed=2), _randn(12, 9, seed=3)
    nce, vic = info_nce_loss(z1, z2, 0.2), vicreg_loss(z1, z2)[0]
    assert abs(nce - vic) > 1  # the two losses differ, so the checks below can fail
    for a in (0.0, torch.tensor(0.0, dtype=torch.float64)):  # gamma = alpha: the MI term vanishes with alpha
        total, n, v, m = adadim_loss(r1, r2, z1, z2, a, a, 1e-4, 0.2)
        assert torch.allclose(total, vic, rtol=0, atol=1e-12) and abs(float(m)) < 1e-15
    total, n, v, m = adadim_loss(r1, r2, z1, z2, 1.0, 1.0, 0.0, 0.2)
    assert torch.allclose(total, nce, rtol=0, atol=1e-12) and torch.equal(n, nce) and torch.equal(v, vic)


def test_adadim_mixture_and_mi_term_sign():
    r1, r2, z1, z2 = _randn(12, 7), _randn(12, 7, seed=1), _randn(12, 9, seed=2), _randn(12, 9, seed=3)
    nce, vic = info_nce_loss(z1, z2, 0.5), vicreg_loss(z1, z2)[0]
    mi = (estimators.matrix_mutual_information(r1, z1) + estimators.matrix_mutual_information(r2, z2)) / 2
    alpha, gamma, beta = 0.3, 0.3, 0.05
    total, _, _, m = adadim_loss(r1, r2, z1, z2, alpha, gamma, beta, 0.5)
    assert abs(m.item() - beta * gamma * mi) < 1e-12 and mi > 0
    assert abs(total.item() - (alpha * nce + (1 - alpha) * vic + beta * gamma * mi).item()) < 1e-10
    # positive beta penalizes I(R;Z): the term's gradient points towards more MI, so descent lowers it
    for beta, sign in ((1.0, 1), (-1.0, -1)):
        rr, zz = r1.clone().requires_grad_(), torch.relu(r1 @ _randn(7, 9, seed=5)).requires_grad_()
        _, _, _, m = adadim_loss(rr, rr, zz, zz, 1.0, 1.0, beta, 0.5)
        m.backward()
        with torch.no_grad():
            after = renyi2_mutual_information(rr - 1e-3 * rr.grad, zz - 1e-3 * zz.grad)
            assert sign * (after - renyi2_mutual_information(rr, zz)) < 0


def test_dimensionality_alpha_hand_values():
    q, _ = torch.linalg.qr(_randn(8, 4))  # (8, 4), orthonormal columns: 4 equal singular values
    alpha, erank = dimensionality_alpha([q, 3 * q])
    assert abs(erank - 4) < 1e-6 and abs(alpha - 1) < 1e-6  # full rank: alpha = 1
    rank1 = torch.ones(8, 1, dtype=torch.float64) @ _randn(1, 16)  # (8, 16), rank 1
    alpha, erank = dimensionality_alpha([rank1])
    assert abs(erank - 1) < 1e-6 and abs(alpha - 1 / 8) < 1e-6  # collapsed: 1 / min(N, D)


def test_nce_and_vicreg_terms_equal_simclr_and_vicreg():
    """AdaDim writes its two losses again (one floor of self-contained files): they must be SimCLR's and VICReg's."""
    for seed, (n, d) in enumerate([(8, 5), (32, 64), (3, 300)]):
        z1, z2 = _randn(n, d, seed=seed), _randn(n, d, seed=seed + 1) * 3 + 1
        for t in (0.1, 0.5):
            assert abs(nce_loss(z1, z2, t).item() - info_nce_loss(z1, z2, t).item()) < 1e-12
        assert abs(vicreg_terms(z1, z2).item() - vicreg_loss(z1, z2)[0].item()) < 1e-9


def test_adadim_alpha_is_remeasured_each_epoch(train):
    """3 epochs of 4 steps, --alpha-every 1: alpha is measured at each epoch start (steps 0, 4, 8), held constant
    within the epoch, equals erank / min(batch, dim R) and is checkpointed. The first one is the effective rank of
    the initial network's R with BatchNorm on batch statistics (recomputed here from the initial weights; in eval
    mode the untouched running statistics give a much lower rank). That alpha then grows towards 1 is the paper's
    observation over hundreds of epochs; 12 CPU steps cannot test it and it is not asserted."""
    t = train(adadim, *TINY, "--batch-size", 64, "--epochs", 3, "--alpha-every", 1, "--proj-hidden-dim", 256,
              "--proj-output-dim", 256, "--save-every", 1, images=256)
    acc, run_dir = events(t.dir), t.dir
    erank = {e.step: e.value for e in acc.Scalars("dim/alpha_erank")}
    alpha = {e.step: e.value for e in acc.Scalars("charts/alpha")}
    assert sorted(erank) == [0, 4, 8] and sorted(alpha) == list(range(1, 13))
    for step, a in alpha.items():
        measured_at = (step - 1) // 4 * 4
        assert abs(a - erank[measured_at] / 64) < 1e-5, (step, a, erank)  # min(batch 64, dim R 128) = 64
        assert 0 < a < 1
    assert len({alpha[1], alpha[5], alpha[9]}) == 3, alpha  # re-measured each epoch
    backbone, _ = common.build_backbone("tiny", 32)
    backbone.load_state_dict({k[9:]: v for k, v in t.before.items() if k.startswith("backbone.")})
    data, g = t.run.data, torch.Generator().manual_seed((0 + 1) * 100_003 + 0)  # seed 0, epoch 0: as adadim.py
    aug, batches = common.Augment(t.run.view_specs, data.mean, data.std), list(data.ssl_batches(64, 0, 1))
    with torch.no_grad():
        views = [aug(x, g)[0] for x, _, _ in batches]
        train_mode = sum(estimators.effective_rank(backbone.train()(v)) for v in views) / len(views)
        eval_mode = sum(estimators.effective_rank(backbone.eval()(v)) for v in views) / len(views)
    assert abs(erank[0] - train_mode) < 1e-3 and eval_mode < train_mode - 5, (erank[0], train_mode, eval_mode)
    ckpt = torch.load(run_dir / "last.pt", weights_only=True)
    assert abs(ckpt["model"]["alpha"].item() - alpha[12]) < 1e-6
    # alpha is measured on batch statistics without touching the running ones: BatchNorm counted only the 12 steps'
    # 2 views each, not the 3 x 4 alpha batches
    assert ckpt["model"]["backbone.stem.1.num_batches_tracked"].item() == 24


@pytest.mark.parametrize("mode", ["linear", "cosine", "fixed"])
def test_adadim_alpha_schedules(train, mode):
    """The ablations: linear t/T and cosine (1 - cos(pi t/T)) / 2 growth over all 8 steps, or a fixed alpha."""
    run_dir = train(adadim, *TINY, "--batch-size", 64, "--epochs", 2, "--alpha-mode", mode, "--alpha", 0.25,
                    "--proj-hidden-dim", 64, "--proj-output-dim", 64, images=256).dir
    alpha = {e.step: e.value for e in events(run_dir).Scalars("charts/alpha")}
    expect = {"linear": lambda t: t, "cosine": lambda t: (1 - math.cos(math.pi * t)) / 2, "fixed": lambda t: 0.25}[mode]
    assert sorted(alpha) == list(range(1, 9))
    for step, a in alpha.items():
        assert abs(a - expect((step - 1) / 8)) < 1e-6, (step, a)
    assert "dim/alpha_erank" not in events(run_dir).Tags()["scalars"]

