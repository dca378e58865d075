"""AdaDim, NNCLR and MoCo v2: objectives against naive second implementations and hand-worked values, the
queues/support sets, the nearest-neighbour search against brute force, AdaDim's alpha on a short run, and exact
--resume with the queues in the checkpoint."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import adadim
import common
import deepcluster_v2
import dino
import estimators
import moco_v2
import nnclr
import swav
from adadim import adadim_loss, dimensionality_alpha, renyi2_mutual_information
from moco_v2 import KeyQueue, ema_update, moco_loss
from nnclr import SupportSet, nearest_neighbour, nnclr_loss
from simclr import info_nce_loss
from test_scripts import events
from vicreg import vicreg_loss


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------------------------------------ AdaDim
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
        assert torch.allclose(total, vic, rtol=0, atol=1e-12) and m == 0
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


def small_run(monkeypatch, tmp_path, module, **kw):
    """Run module.main in this process, in tmp_path, on a 256-image slice of the synthetic data (128 test images):
    4 steps per epoch at batch 64, so that epoch boundaries (alpha, checkpoints) are reached in seconds."""
    load = common.load_data

    def small(*a, **k):
        d = load(*a, **k)
        d.train, d.train_labels = d.train[:256], d.train_labels[:256]
        d.test, d.test_labels = d.test[:128], d.test_labels[:128]
        d.eval_train, d.eval_train_labels = d.train, d.train_labels
        return d

    monkeypatch.setattr(common, "load_data", small)
    monkeypatch.chdir(tmp_path)
    args = dict(dataset="synthetic", backbone="tiny", eval_every=0, mi_every=0, save_every=1, warmup_epochs=1)
    module.main(module.Args(**{**args, **kw}))
    return sorted((tmp_path / "runs").iterdir(), key=lambda p: p.stat().st_mtime)[-1]


def test_adadim_alpha_is_remeasured_each_epoch(monkeypatch, tmp_path):
    """3 epochs of 4 steps, --alpha-every 1: alpha is measured at each epoch start (steps 0, 4, 8), held constant
    within the epoch, equals erank / min(batch, dim R), starts near 0 (an untrained network's uncentered R is
    dominated by its mean direction) and is checkpointed. That alpha then grows towards 1 is the paper's observation
    over hundreds of epochs; 12 CPU steps cannot test it and it is not asserted."""
    run_dir = small_run(monkeypatch, tmp_path, adadim, batch_size=64, epochs=3, alpha_every=1, proj_hidden_dim=256,
                        proj_output_dim=256)
    acc = events(run_dir)
    erank = {e.step: e.value for e in acc.Scalars("dim/alpha_erank")}
    alpha = {e.step: e.value for e in acc.Scalars("charts/alpha")}
    assert sorted(erank) == [0, 4, 8] and sorted(alpha) == list(range(1, 13))
    for step, a in alpha.items():
        measured_at = (step - 1) // 4 * 4
        assert abs(a - erank[measured_at] / 64) < 1e-5, (step, a, erank)  # min(batch 64, dim R 128) = 64
        assert 0 < a < 1
    assert alpha[1] < 0.3 and len({alpha[1], alpha[5], alpha[9]}) == 3, alpha  # near 0 at init; re-measured
    ckpt = torch.load(run_dir / "last.pt", weights_only=False)
    assert abs(ckpt["model"]["alpha"].item() - alpha[12]) < 1e-6


@pytest.mark.parametrize("mode", ["linear", "cosine", "fixed"])
def test_adadim_alpha_schedules(monkeypatch, tmp_path, mode):
    """The ablations: linear t/T and cosine (1 - cos(pi t/T)) / 2 growth over all 8 steps, or a fixed alpha."""
    run_dir = small_run(monkeypatch, tmp_path, adadim, batch_size=64, epochs=2, alpha_mode=mode, alpha=0.25,
                        proj_hidden_dim=64, proj_output_dim=64, save_every=0)
    alpha = {e.step: e.value for e in events(run_dir).Scalars("charts/alpha")}
    expect = {"linear": lambda t: t, "cosine": lambda t: (1 - math.cos(math.pi * t)) / 2, "fixed": lambda t: 0.25}[mode]
    assert sorted(alpha) == list(range(1, 9))
    for step, a in alpha.items():
        assert abs(a - expect((step - 1) / 8)) < 1e-6, (step, a)
    assert "dim/alpha_erank" not in events(run_dir).Tags()["scalars"]


# ------------------------------------------------------------------------------------------------ MoCo v2
def naive_moco(q, k, queue, t):
    total = 0.0
    for i in range(len(q)):
        qi = q[i] / q[i].norm()
        pos = math.exp(float(qi @ (k[i] / k[i].norm())) / t)
        neg = sum(math.exp(float(qi @ queue[j]) / t) for j in range(len(queue)))
        total += -math.log(pos / (pos + neg))
    return total / len(q)


def test_moco_loss_matches_naive_loop():
    q, k = _randn(5, 6), _randn(5, 6, seed=1)
    queue = F.normalize(_randn(9, 6, seed=2), dim=1)
    for t in (0.07, 0.2, 1.0):
        assert abs(moco_loss(q, k, queue, t).item() - naive_moco(q, k, queue, t)) < 1e-9


def test_moco_loss_hand_value_and_stop_gradient():
    # query = key, two orthogonal negatives: -log e^(1/T) / (e^(1/T) + 2)
    q = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    queue = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert abs(moco_loss(q, 2 * q, queue, 0.5).item() + math.log(math.exp(2) / (math.exp(2) + 2))) < 1e-12
    q, k = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    moco_loss(q, k, F.normalize(torch.randn(6, 3), dim=1), 0.2).backward()
    assert q.grad is not None and k.grad is None


def test_key_queue_is_fifo_and_wraps_around():
    queue = KeyQueue(2, 5, 3)
    assert torch.allclose(queue.keys.norm(dim=-1), torch.ones(2, 5))
    batches = [torch.full((2, 2, 3), float(i)) for i in (1, 2, 3)]  # 2 views, 2 keys each
    for b in batches:
        queue.push(b)
    # slots 0,1 <- 1; 2,3 <- 2; 4,0 <- 3 (wrap); 1 still holds batch 1; pointer at 1
    assert queue.keys[:, :, 0].tolist() == [[3, 1, 2, 2, 3]] * 2 and queue.ptr.item() == 1
    assert {"keys", "ptr"} <= set(queue.state_dict())


def test_moco_ema_update_is_the_convex_combination():
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(online, target, 0.99)
    for b, o, t in zip(before, online.parameters(), target.parameters()):
        assert torch.allclose(t, 0.99 * b + 0.01 * o.detach(), atol=1e-7)


# ------------------------------------------------------------------------------------------------ NNCLR
def test_nearest_neighbour_matches_brute_force():
    z = _randn(20, 8)  # not normalized: the search must use cosine similarity
    support = F.normalize(_randn(300, 8, seed=1), dim=1)
    idx, nn_z = nearest_neighbour(z, support)
    for i in range(len(z)):
        best, best_j = -2.0, -1
        for j in range(len(support)):
            c = float(z[i] @ support[j]) / float(z[i].norm())
            if c > best:
                best, best_j = c, j
        assert idx[i].item() == best_j
        assert torch.equal(nn_z[i], support[best_j])
    # a support set that contains the queries themselves returns them
    idx, _ = nearest_neighbour(z, torch.cat([support, F.normalize(z, dim=1)]))
    assert idx.tolist() == list(range(300, 320))


def test_nearest_neighbour_gets_no_gradient():
    z = torch.randn(4, 3, requires_grad=True)
    _, nn_z = nearest_neighbour(z, F.normalize(torch.randn(10, 3), dim=1))
    assert not nn_z.requires_grad


def naive_nnclr(nn_z, p, t):
    total = 0.0
    for i in range(len(p)):
        s = [float(nn_z[i] @ p[k]) / float(nn_z[i].norm() * p[k].norm()) / t for k in range(len(p))]
        total += -(s[i] - math.log(sum(math.exp(v) for v in s)))
    return total / len(p)


def test_nnclr_loss_matches_naive_loop():
    nn_z, p = _randn(6, 5), _randn(6, 5, seed=1)
    for t in (0.1, 0.2, 1.0):
        assert abs(nnclr_loss(nn_z, p, t).item() - naive_nnclr(nn_z, p, t)) < 1e-9


def test_support_set_is_fifo_with_labels():
    s = SupportSet(5, 2)
    assert s.y.tolist() == [-1] * 5
    for i in (1, 2, 3):
        s.push(torch.full((2, 2), float(i)), torch.tensor([10 * i, 10 * i + 1]))
    assert s.z[:, 0].tolist() == [3, 1, 2, 2, 3] and s.y.tolist() == [31, 11, 20, 21, 30] and s.ptr.item() == 1


# ---------------------------------------------------------------------------------- resume with queues
@pytest.mark.parametrize("module,extra", [(moco_v2, dict(queue_size=192)), (nnclr, dict(queue_size=192)),
                                          (adadim, dict(alpha_every=2, proj_hidden_dim=256, proj_output_dim=256)),
                                          (swav, dict(queue_size=192, queue_start_epoch=0, num_prototypes=32,
                                                      freeze_prototypes_epochs=1, proj_hidden_dim=256)),
                                          (dino, dict(num_prototypes=256, proj_hidden_dim=256, warmup_teacher_temp_epochs=1)),
                                          (deepcluster_v2, dict(num_prototypes=(16, 16), proj_hidden_dim=256))])
def test_resume_is_exact_with_queues_and_alpha(monkeypatch, tmp_path, module, extra):
    """Queues, memories, centers and alpha are checkpointed. 5 steps at batch 64 (4 steps/epoch) straight, against 4 steps (epoch 1, checkpointed) then --resume for the
    5th. The queues (192 slots, so they wrap around) and alpha (measured at epoch 0 only: --alpha-every 2) must come
    back from the checkpoint for the two runs to end bit-identical."""
    args = dict(batch_size=64, epochs=2, **extra)
    straight = small_run(monkeypatch, tmp_path, module, max_steps=5, exp_name="straight", **args)
    half = small_run(monkeypatch, tmp_path, module, max_steps=4, exp_name="halves", **args)
    assert torch.load(half / "last.pt", weights_only=False)["step"] == 4
    small_run(monkeypatch, tmp_path, module, max_steps=5, resume=str(half / "last.pt"), **args)
    a, b = (torch.load(d / "last.pt", weights_only=False) for d in (straight, half))
    assert a["step"] == b["step"] == 5
    stateful = [k for k in a["model"] if k.split(".")[-1] in ("keys", "ptr", "z", "y", "alpha", "queue", "center", "memory", "assignments", "prototypes0")]
    assert stateful, list(a["model"])
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
