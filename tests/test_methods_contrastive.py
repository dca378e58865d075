"""Contrastive methods (in-batch or queued negatives): SimCLR, MoCo v2, MoCo v3, NNCLR. Objectives against hand-worked
values and naive second implementations, the queues and support sets, the nearest-neighbour search against brute
force, MoCo v3's momentum update in one real step."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import moco_v3
from conftest import TINY
from moco_v2 import KeyQueue, ema_update, moco_loss
from moco_v3 import contrastive_loss
from nnclr import SupportSet, nearest_neighbour, nnclr_loss
from simclr import info_nce_loss


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

# --------------------------------------------------------------------------------------------------- SimCLR
def naive_nt_xent(z1, z2, t):
    z = [F.normalize(v, dim=0) for v in torch.cat([z1, z2])]
    n2, n = len(z), len(z1)
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2  # partner
        num = math.exp(float(z[i] @ z[j]) / t)
        den = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(num / den)
    return total / n2


def test_info_nce_matches_naive_loop():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g, dtype=torch.float64), torch.randn(5, 7, generator=g, dtype=torch.float64)
    for t in (0.1, 0.5, 1.0):
        assert abs(info_nce_loss(z1, z2, t).item() - naive_nt_xent(z1, z2, t)) < 1e-9


def test_info_nce_hand_value():
    # two orthogonal pairs: views identical. Each anchor: positive cos 1, negatives cos 0 (two of them).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    t = 0.5
    expect = -math.log(math.exp(2) / (math.exp(2) + 2))
    assert abs(info_nce_loss(z1, z1.clone(), t).item() - expect) < 1e-12


# ------------------------------------------------------------------------------------------------- MoCo v2
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


# ------------------------------------------------------------------------------------------------- MoCo v3
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


def test_moco_v3_momentum_encoder_is_the_ema_of_the_updated_query_encoder(train):
    # tau_base 0.5 (step 0 of the cosine schedule) and a plain SGD step, so the EMA is visible in float32
    t = train(moco_v3, *TINY, "--max-steps", 1, "--tau-base", 0.5, "--optimizer", "sgd", "--lr", 1.0,
              "--warmup-epochs", 0, "--pred-hidden-dim", 16, "--proj-hidden-dim", 64, "--proj-output-dim", 32, images=256)
    model, before = t.run.model, t.before
    assert not any(p.requires_grad for p in model["momentum"].parameters())
    moved = 0.0
    for name, m in model["momentum"].named_parameters():
        theta0, theta1 = before["online." + name], model["online"].get_parameter(name).detach()
        assert torch.equal(before["momentum." + name], theta0)  # starts as a copy of the query encoder
        assert torch.allclose(m, 0.5 * theta0 + 0.5 * theta1, atol=1e-6), name
        moved = max(moved, (theta1 - theta0).abs().max().item())
    assert moved > 1e-3  # the query encoder did move, so the check above is not trivially true


# --------------------------------------------------------------------------------------------------- NNCLR
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

