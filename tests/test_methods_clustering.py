"""Clustering methods: SwAV (Sinkhorn-Knopp codes, swapped prediction, queue) and DeepCluster v2 (spherical k-means
of a memory), against naive loops, hand-worked values and known marginals."""
import math

import torch
import torch.nn.functional as F

from deepcluster_v2 import deepcluster_loss, kmeans
from swav import sinkhorn, swav_loss, update_queue

def cosine_scores(b, k, d=16, seed=0):
    """Scores z . c of unit embeddings and unit prototypes, as in SwAV (values in [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    z, c = F.normalize(torch.randn(b, d, generator=g), dim=1), F.normalize(torch.randn(k, d, generator=g), dim=1)
    return z @ c.T


def naive_sinkhorn(scores, eps, iterations):
    """Sinkhorn-Knopp written element by element: Q = exp(S / eps) normalized, then alternate rescalings so that
    each prototype (column of S) holds 1/K of the mass and each sample (row of S) 1/B; returned per sample."""
    B, K = scores.shape
    q = [[math.exp(float(scores[b, k]) / eps) for k in range(K)] for b in range(B)]
    total = sum(map(sum, q))
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for k in range(K):
            col = sum(q[b][k] for b in range(B))
            for b in range(B):
                q[b][k] /= col * K
        for b in range(B):
            row = sum(q[b])
            q[b] = [v / (row * B) for v in q[b]]
    return torch.tensor(q, dtype=torch.float64) * B


def test_sinkhorn_matches_naive_loops():
    s = cosine_scores(6, 4).double()
    for eps, it in ((0.05, 3), (0.5, 1), (0.1, 7)):
        assert torch.allclose(sinkhorn(s, eps, it), naive_sinkhorn(s, eps, it), rtol=1e-9, atol=1e-12)


def test_sinkhorn_marginals_are_uniform():
    # the paper's setting: batch 256, 3000 prototypes, 128-d unit vectors, epsilon 0.05, 3 iterations
    q = sinkhorn(cosine_scores(256, 3000, d=128), 0.05, 3)
    assert (q >= 0).all()
    assert torch.allclose(q.sum(1), torch.ones(256), atol=1e-5)  # each sample: a distribution over prototypes
    assert torch.allclose(q.sum(0), torch.full((3000,), 256 / 3000), rtol=1e-3)  # each prototype: B/K samples
    # peakier scores (16-d): 3 iterations only approach the polytope; the prototype marginal converges to uniform
    s = cosine_scores(256, 30)
    dev = [((sinkhorn(s, 0.05, it).sum(0) - 256 / 30).abs().max() / (256 / 30)).item() for it in (1, 3, 10, 50)]
    assert dev[0] > 0.1 and dev == sorted(dev, reverse=True) and dev[-1] < 1e-3
    # collapse pressure: every sample prefers prototype 0, yet the codes share the prototypes equally
    s = torch.full((40, 4), -1.0)
    s[:, 0] = 1.0
    s += 0.1 * cosine_scores(40, 4)
    q = sinkhorn(s, 0.05, 50)
    assert torch.allclose(q.sum(1), torch.ones(40), atol=1e-5)
    assert torch.allclose(q.sum(0), torch.full((4,), 10.0), rtol=1e-3)
    assert F.softmax(s / 0.05, dim=1).sum(0)[0] > 39  # whereas a plain softmax puts (almost) everything on 0


def test_sinkhorn_is_a_diagonal_scaling_of_exp_scores():
    # Q = diag(u) exp(S / eps) diag(v): log Q - S / eps has no sample x prototype interaction (double-centred = 0)
    s = cosine_scores(32, 10).double()
    m = sinkhorn(s, 0.05, 3).log() - s / 0.05
    m = m - m.mean(0, keepdim=True) - m.mean(1, keepdim=True) + m.mean()
    assert m.abs().max() < 1e-9
    assert not torch.allclose(sinkhorn(s, 0.05, 3), torch.full_like(s, 0.1), atol=1e-2)  # not the trivial uniform Q


def test_sinkhorn_is_stable_for_large_scores_and_needs_no_gradient():
    s = (100 * cosine_scores(16, 8)).requires_grad_()  # exp(s / 0.05) would overflow (and underflow) in float32
    q = sinkhorn(s, 0.05, 3)
    assert torch.isfinite(q).all() and not q.requires_grad
    assert torch.allclose(q.sum(1), torch.ones(16), atol=1e-5)


def naive_swapped(p, q, t):
    """Mean over (global view i, view v != i) pairs and samples of -sum_k q[i, n, k] log softmax(p[v, n] / t)_k."""
    terms = []
    for i in range(q.shape[0]):
        for v in range(p.shape[0]):
            if v == i:
                continue
            for n in range(p.shape[1]):
                logits = [float(x) / t for x in p[v, n]]
                lse = math.log(sum(math.exp(x) for x in logits))
                terms.append(-sum(float(q[i, n, k]) * (logits[k] - lse) for k in range(p.shape[2])))
    return sum(terms) / len(terms)


def test_swav_loss_matches_naive_loops_with_multicrop():
    g = torch.Generator().manual_seed(1)
    p = torch.randn(4, 5, 6, generator=g, dtype=torch.float64)  # 2 global + 2 local views
    q = F.softmax(torch.randn(2, 5, 6, generator=g, dtype=torch.float64), dim=-1)
    for t in (0.1, 1.0):
        assert abs(swav_loss(p, q, t).item() - naive_swapped(p, q, t)) < 1e-9


def test_swav_loss_hand_value():
    # two views, one sample, two prototypes; hard codes: view 0 -> proto 0, view 1 -> proto 1
    p = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    q = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    # view 1 predicts q_0 = proto 0 from scores (0, 1); view 0 predicts q_1 = proto 1 from (1, 0): both -log sigmoid(-1)
    expect = -math.log(math.exp(0) / (math.exp(0) + math.exp(1)))
    assert abs(swav_loss(p, q, 1.0).item() - expect) < 1e-12


def test_queue_is_first_in_first_out():
    queue = torch.zeros(2, 6, 3)
    for step in range(1, 4):
        update_queue(queue, torch.full((2, 2, 3), float(step)))
    assert queue[:, :, 0].tolist() == [[3, 3, 2, 2, 1, 1]] * 2
    update_queue(queue, torch.full((2, 2, 3), 4.0))  # the oldest batch (1) drops out
    assert queue[:, :, 0].tolist() == [[4, 4, 3, 3, 2, 2]] * 2


def blobs(n_blobs=5, per_blob=40, d=8, seed=0):
    """Tight clusters around n_blobs orthogonal unit directions; labels in blob order."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.eye(d)[:n_blobs]
    x = centres.repeat_interleave(per_blob, 0) + 0.05 * torch.randn(n_blobs * per_blob, d, generator=g)
    return F.normalize(x, dim=1), torch.arange(n_blobs).repeat_interleave(per_blob)


def test_kmeans_recovers_well_separated_blobs():
    x, label = blobs()
    # one initial centroid per blob, taken at its worst (least typical) point, in a shuffled order
    order = [3, 0, 4, 1, 2]
    worst = lambda pts: pts[(pts @ F.normalize(pts.mean(0), dim=0)).argmin()]
    init = torch.stack([worst(x[label == b]) for b in order])
    centroids, a = kmeans(x, init, 10)
    assert torch.equal(a, torch.tensor(order).argsort()[label])  # blob b -> the cluster initialized in blob b
    assert torch.allclose(centroids.norm(dim=1), torch.ones(5))
    assert torch.allclose(centroids, F.normalize(torch.stack([x[label == b].mean(0) for b in order]), dim=1), atol=1e-6)


def test_kmeans_random_init_never_mixes_blobs():
    x, label = blobs()
    g = torch.Generator().manual_seed(0)
    centroids, a = kmeans(x, x[torch.randperm(len(x), generator=g)[:40]], 10)  # random memory points, as main()
    for c in a.unique():
        assert label[a == c].unique().numel() == 1  # every cluster lies inside a single blob
    assert torch.equal(a, (x @ centroids.T).argmax(1))  # the returned assignment is to the returned centroids


def naive_kmeans(x, c, iterations):
    x, c = x.tolist(), c.tolist()
    dot = lambda u, v: sum(a * b for a, b in zip(u, v))
    assign = lambda: [max(range(len(c)), key=lambda k: dot(p, c[k])) for p in x]
    for _ in range(iterations):
        a = assign()
        for k in range(len(c)):
            members = [p for p, ak in zip(x, a) if ak == k]
            if members:  # empty clusters keep their centroid
                s = [sum(col) for col in zip(*members)]
                norm = math.sqrt(dot(s, s))
                c[k] = [v / norm for v in s]
    return torch.tensor(c, dtype=torch.float64), torch.tensor(assign())


def test_kmeans_matches_naive_loops_including_empty_clusters():
    g = torch.Generator().manual_seed(3)
    x = F.normalize(torch.randn(60, 4, generator=g, dtype=torch.float64), dim=1)
    for iterations in (0, 1, 5):
        c, a = kmeans(x, x[:6].clone(), iterations, chunk=7)  # chunks smaller than N on purpose
        c_ref, a_ref = naive_kmeans(x, x[:6].clone(), iterations)
        assert torch.equal(a, a_ref) and torch.allclose(c, c_ref, atol=1e-12)
    # points in the positive orthant of the first 3 axes; a centroid on the 4th axis is never the most similar
    x = F.normalize(torch.cat([torch.rand(60, 3, generator=g, dtype=torch.float64) + 0.01,
                               torch.zeros(60, 1, dtype=torch.float64)], 1), dim=1)
    init = torch.cat([x[:3], torch.tensor([[0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)])
    c, a = kmeans(x, init.clone(), 3)
    assert (a != 3).all() and torch.equal(c[3], init[3]) and not torch.equal(c[:3], init[:3])


def naive_deepcluster(p, assignments, t):
    total = 0.0
    for h, p_h in enumerate(p):
        terms = []
        for v in range(p_h.shape[0]):
            for n in range(p_h.shape[1]):
                logits = [float(s) / t for s in p_h[v, n]]
                lse = math.log(sum(math.exp(s) for s in logits))
                terms.append(lse - logits[int(assignments[h, n])])
        total += sum(terms) / len(terms)
    return total / len(p)


def test_deepcluster_loss_matches_naive_loops():
    g = torch.Generator().manual_seed(2)
    p = [torch.randn(3, 4, k, generator=g, dtype=torch.float64) for k in (5, 7)]  # 2 heads of different K, 3 views
    a = torch.stack([torch.randint(0, 5, (4,), generator=g), torch.randint(0, 7, (4,), generator=g)])
    for t in (0.1, 1.0):
        assert abs(deepcluster_loss(p, a, t).item() - naive_deepcluster(p, a, t)) < 1e-9


def test_deepcluster_loss_hand_value():
    # one head, one view, one sample, scores (1, 0) with target cluster 1, T = 1: -log(e^0 / (e^1 + e^0))
    p = [torch.tensor([[[1.0, 0.0]]])]
    assert abs(deepcluster_loss(p, torch.tensor([[1]]), 1.0).item() - math.log(1 + math.e)) < 1e-6

