"""SimSiam, MoCo v3, Barlow Twins and VICReg objectives against hand-worked values and naive second implementations,
and the method-specific mechanics (SimSiam's fixed predictor lr, MoCo v3's momentum update) in one real step."""
import math

import pytest
import torch

import barlow_twins
import common
import moco_v3
import simsiam
from barlow_twins import barlow_twins_loss
from moco_v3 import contrastive_loss
from simsiam import negative_cosine
from vicreg import vicreg_loss


def one_step(module, monkeypatch, tmp_path, **overrides):
    """Run `module.main` for one optimizer step on synthetic data; return the model, optimizer and the model's
    state_dict as it was before training (captured when main registers them with run.track)."""
    seen = {}
    track = common.Run.track

    def spy(self, model, optimizers, backbones, feat_dim):
        seen.update(run=self, model=model, optimizer=optimizers,
                    before={k: v.detach().clone() for k, v in model.state_dict().items()})
        return track(self, model, optimizers, backbones, feat_dim)

    monkeypatch.setattr(common.Run, "track", spy)
    monkeypatch.setattr(common.Run, "finish", lambda self: self.writer.close())  # no final kNN / linear probe
    monkeypatch.chdir(tmp_path)
    kw = dict(dataset="synthetic", backbone="tiny", batch_size=32, epochs=2, max_steps=1, eval_every=0, mi_every=0,
              save_every=0, warmup_epochs=1, device="cpu", proj_hidden_dim=64, proj_output_dim=32)
    kw.update(overrides)
    module.main(module.Args(**kw))
    assert seen["run"].step_count == 1
    return seen


# ---------------------------------------------------------------------------------------------------- SimSiam
def test_negative_cosine_hand_values():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    z = torch.tensor([[0.0, 3.0], [1.0, 1.0], [5.0, 0.0]])
    expect = -(0.0 + 1 / math.sqrt(2) + 1.0) / 3  # cos = 0, 1/sqrt(2), 1
    assert abs(negative_cosine(p, z).item() - expect) < 1e-6
    assert abs(negative_cosine(z, z).item() + 1) < 1e-6  # the minimum, -1, at p = z


def test_negative_cosine_stops_gradient_into_z():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    negative_cosine(p, z).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None


@pytest.mark.parametrize("fix", [True, False])
def test_simsiam_predictor_lr_is_fixed_while_the_rest_follows_the_schedule(monkeypatch, tmp_path, fix):
    seen = one_step(simsiam, monkeypatch, tmp_path, fix_pred_lr=fix, pred_hidden_dim=16)
    model, opt = seen["model"], seen["optimizer"]
    pred_ids = {id(p) for p in model["predictor"].parameters()}
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    base = common.scaled_lr(simsiam.Args.lr, 32)
    factor = common.warmup_cosine(0, seen["run"].total_steps, seen["run"].steps_per_epoch)  # step 1, in warmup
    assert factor < 1e-3
    for g in opt.param_groups:
        if not g["params"]:
            continue
        is_pred = {id(p) for p in g["params"]} <= pred_ids
        assert is_pred or not ({id(p) for p in g["params"]} & pred_ids)  # groups do not mix predictor and encoder
        expect = base if (is_pred and fix) else base * factor
        assert g["base_lr"] == pytest.approx(base) and g["lr"] == pytest.approx(expect)


# ---------------------------------------------------------------------------------------------------- MoCo v3
def naive_ctr(q, k, t):
    q = [v / v.norm() for v in q]
    k = [v / v.norm() for v in k]
    total = 0.0
    for i in range(len(q)):
        num = math.exp(float(q[i] @ k[i]) / t)
        den = sum(math.exp(float(q[i] @ k[j]) / t) for j in range(len(k)))
        total += -math.log(num / den)
    return 2 * t * total / len(q)  # the 2 tau factor of the paper's pseudocode


def test_contrastive_loss_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(6, 5, generator=g, dtype=torch.float64), torch.randn(6, 5, generator=g, dtype=torch.float64)
    for t in (0.1, 0.2, 1.0):
        assert abs(contrastive_loss(q, k, t).item() - naive_ctr(q, k, t)) < 1e-9
        assert abs(contrastive_loss(q, k, t).item() - contrastive_loss(3 * q, 0.5 * k, t).item()) < 1e-9  # l2-normalized


def test_contrastive_loss_hand_value_with_two_tau_factor():
    # q = k = two orthonormal vectors, tau = 0.25: each row of logits is [4, 0] (positive first) or [0, 4].
    e = torch.eye(2, dtype=torch.float64)
    expect = 2 * 0.25 * math.log(1 + math.exp(-4))  # 2 tau * CE
    assert abs(contrastive_loss(e, e.clone(), 0.25).item() - expect) < 1e-12
    # swapped keys: the positive is now the orthogonal one, CE = log(1 + e^4)
    assert abs(contrastive_loss(e, e.flip(0), 0.25).item() - 0.5 * math.log(1 + math.exp(4))) < 1e-12


def test_contrastive_loss_stops_gradient_into_keys():
    q, k = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    contrastive_loss(q, k, 0.2).backward()
    assert q.grad is not None and q.grad.abs().sum() > 0 and k.grad is None


def test_moco_v3_momentum_encoder_is_the_ema_of_the_updated_query_encoder(monkeypatch, tmp_path):
    # tau_base 0.5 (step 0 of the cosine schedule) and a plain SGD step, so the EMA is visible in float32
    seen = one_step(moco_v3, monkeypatch, tmp_path, tau_base=0.5, optimizer="sgd", lr=1.0, warmup_epochs=0,
                    pred_hidden_dim=16)
    model, before = seen["model"], seen["before"]
    assert not any(p.requires_grad for p in model["momentum"].parameters())
    moved = 0.0
    for name, m in model["momentum"].named_parameters():
        theta0, theta1 = before["online." + name], model["online"].get_parameter(name).detach()
        assert torch.equal(before["momentum." + name], theta0)  # starts as a copy of the query encoder
        assert torch.allclose(m, 0.5 * theta0 + 0.5 * theta1, atol=1e-6), name
        moved = max(moved, (theta1 - theta0).abs().max().item())
    assert moved > 1e-3  # the query encoder did move, so the check above is not trivially true


# ----------------------------------------------------------------------------------------------- Barlow Twins
def naive_barlow(z1, z2, lambd, eps=1e-5):
    n, d = z1.shape

    def standardized(z, j):  # column j minus its mean, over its biased std (BatchNorm1d without affine)
        col = [float(z[b, j]) for b in range(n)]
        mu = sum(col) / n
        sd = math.sqrt(sum((c - mu) ** 2 for c in col) / n + eps)
        return [(c - mu) / sd for c in col]

    a = [standardized(z1, j) for j in range(d)]
    b = [standardized(z2, j) for j in range(d)]
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c_ij = sum(a[i][t] * b[j][t] for t in range(n)) / n
            loss += (1 - c_ij) ** 2 if i == j else lambd * c_ij ** 2
    return loss


def test_barlow_twins_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randn(7, 4, generator=g, dtype=torch.float64)
    for lambd in (0.0051, 0.5):
        total, on, off = barlow_twins_loss(z1, z2, lambd)
        assert abs(total.item() - naive_barlow(z1, z2, lambd)) < 1e-9
        assert abs(total.item() - (on + lambd * off).item()) < 1e-12


def test_barlow_twins_hand_values():
    # columns +-1 with mean 0 and biased variance 1, orthogonal: C = I / (1 + eps) for identical views
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    c = 1 / (1 + 1e-5)
    total, on, off = barlow_twins_loss(z, z.clone(), 0.0051)
    assert abs(on.item() - 2 * (1 - c) ** 2) < 1e-15 and off.item() == 0.0
    # view 2 = view 1 with its columns swapped: C = [[0, c], [c, 0]], on-diagonal 2, off-diagonal 2 c^2
    total, on, off = barlow_twins_loss(z, z.flip(1), 0.5)
    assert abs(on.item() - 2) < 1e-12 and abs(off.item() - 2 * c ** 2) < 1e-12
    assert abs(total.item() - (2 + 0.5 * 2 * c ** 2)) < 1e-12


def test_barlow_twins_is_invariant_to_per_dimension_affine_maps_and_trains_both_views():
    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(16, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scale, shift = torch.tensor([3.0, 0.5, 7.0], dtype=torch.float64), torch.tensor([5.0, -2.0, 0.1], dtype=torch.float64)
    a = barlow_twins_loss(z1, z2, 0.0051)[0]
    b = barlow_twins_loss(z1 * scale + shift, z2, 0.0051)[0]
    assert abs(a.item() - b.item()) < 1e-5  # only the eps inside the std differs
    a.backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0  # no stop-gradient: both branches learn


def test_barlow_twins_scale_loss_default_is_solo_learn_cifar():
    assert barlow_twins.Args.scale_loss == 0.1 and barlow_twins.Args.lambd == 0.0051


# ----------------------------------------------------------------------------------------------------- VICReg
def test_vicreg_three_terms_by_hand_on_a_4x3_example():
    z1 = torch.tensor([[2.0, 0, 0], [-2, 0, 0], [0, 2, 0], [0, -2, 0]], dtype=torch.float64)
    z2 = torch.tensor([[1.0, 1, 0], [-1, -1, 0], [1, 1, 0], [-1, -1, 0]], dtype=torch.float64)
    total, inv, var, cov = vicreg_loss(z1, z2)
    # invariance: z1 - z2 rows (1,-1,0), (-1,1,0), (-1,1,0), (1,-1,0): squares sum to 8, over 4 x 3 entries
    assert abs(inv.item() - 8 / 12) < 1e-12
    # variance: z1 columns 0, 1 have unbiased variance 8/3 (std > 1, no hinge), column 2 is constant:
    # std = sqrt(0 + 1e-4) = 0.01, hinge 0.99; v(Z1) = 0.99 / 3. z2: columns 0, 1 variance 4/3, column 2 the same.
    assert abs(var.item() - 2 * 0.99 / 3) < 1e-12
    # covariance: z1's columns are orthogonal (c = 0); z2's columns 0 and 1 are equal, C_01 = C_10 = 4/3:
    # c(Z2) = 2 (4/3)^2 / 3 = 32/27
    assert abs(cov.item() - 32 / 27) < 1e-12
    assert abs(total.item() - (25 * 8 / 12 + 25 * 2 * 0.99 / 3 + 32 / 27)) < 1e-10
    total2 = vicreg_loss(z1, z2, sim_coeff=1.0, std_coeff=2.0, cov_coeff=3.0)[0]
    assert abs(total2.item() - (8 / 12 + 2 * 2 * 0.99 / 3 + 3 * 32 / 27)) < 1e-12


def naive_vicreg(z1, z2, lam, mu, nu):
    n, d = z1.shape
    s = sum(float(z1[b, j] - z2[b, j]) ** 2 for b in range(n) for j in range(d)) / (n * d)
    v = c = 0.0
    for z in (z1, z2):
        cols = [[float(z[b, j]) for b in range(n)] for j in range(d)]
        means = [sum(col) / n for col in cols]
        cov = [[sum((cols[i][b] - means[i]) * (cols[j][b] - means[j]) for b in range(n)) / (n - 1) for j in range(d)]
               for i in range(d)]
        v += sum(max(0.0, 1 - math.sqrt(cov[j][j] + 1e-4)) for j in range(d)) / d
        c += sum(cov[i][j] ** 2 for i in range(d) for j in range(d) if i != j) / d
    return lam * s + mu * v + nu * c, s, v, c


def test_vicreg_matches_naive_loop():
    g = torch.Generator().manual_seed(3)
    z1 = 0.7 * torch.randn(9, 5, generator=g, dtype=torch.float64)  # std around 0.7: the hinge is active
    z2 = z1 + 0.3 * torch.randn(9, 5, generator=g, dtype=torch.float64)
    for coeffs in ((25.0, 25.0, 1.0), (1.0, 3.0, 0.5)):
        got = vicreg_loss(z1, z2, *coeffs)
        want = naive_vicreg(z1, z2, *coeffs)
        for a, b in zip(got, want):
            assert abs(a.item() - b) < 1e-9
    assert want[2] > 0  # the hinge was active, so the variance term was really tested


def test_vicreg_variance_hinge_is_zero_above_one_and_gradients_reach_both_views():
    g = torch.Generator().manual_seed(4)
    z1 = (5 * torch.randn(64, 4, generator=g, dtype=torch.float64)).requires_grad_()
    z2 = (5 * torch.randn(64, 4, generator=g, dtype=torch.float64)).requires_grad_()
    total, inv, var, cov = vicreg_loss(z1, z2)
    assert var.item() == 0.0
    total.backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0
