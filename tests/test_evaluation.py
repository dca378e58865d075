"""Evaluation: kNN and linear probes, BN statistics left alone, fine-tuning, the labelled cross-entropy."""
import contextlib
import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torchvision
from PIL import Image

import estimators
from plumbing import augment as plumbing_augment
from plumbing import backbones, data, distributed, evaluation


def test_knn_and_linear_probe_on_separable_features():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(600) % 3
    f = nn.functional.one_hot(y, 3).float() * 3 + 0.3 * torch.randn(600, 3, generator=g)
    assert estimators.knn_top1(f[:500], y[:500], f[500:], y[500:], 3) == 100.0
    noise = torch.randn(600, 3, generator=g)  # features unrelated to the labels: about chance
    assert estimators.knn_top1(noise[:500], y[:500], noise[500:], y[500:], 3) < 55
    backbone = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3))
    assert estimators.linear_probe(backbone, f[:500], y[:500], f[500:], y[500:], 3) == 100.0


def test_linear_probe_refuses_a_changed_backbone(monkeypatch):
    backbone = nn.BatchNorm1d(3)
    f, y = torch.randn(64, 3), torch.arange(64) % 2
    real_adam = torch.optim.Adam

    def sneaky_adam(params, lr):  # a probe that also trains (or changes) the backbone must be caught
        backbone.running_mean.add_(1.0)
        return real_adam(params, lr=lr)

    monkeypatch.setattr(torch.optim, "Adam", sneaky_adam)
    with pytest.raises(AssertionError, match="BN stats"):
        estimators.linear_probe(backbone, f, y, f, y, 2, epochs=1)


def test_evaluation_leaves_batchnorm_statistics_alone(train):
    """MI metrics and evaluation run the model in eval mode: BN running statistics do not move."""
    import simclr
    t = train(simclr, "--dataset", "synthetic", "--backbone", "tiny", "--batch-size", 32, "--max-steps", 2,
              "--epochs", 1, "--eval-every", 0, "--mi-every", 0, "--save-every", 0, "--device", "cpu")
    run = t.run
    before = {k: v.clone() for k, v in run.model.state_dict().items() if "running" in k}
    run.log_representation()
    run.evaluate()
    after = run.model.state_dict()
    assert before and all(torch.equal(v, after[k]) for k, v in before.items())


def test_finetuning_trains_on_the_labelled_train_split(monkeypatch):
    """STL-10's layout: an SSL split of mostly unlabelled images (label -1) and a smaller labelled train split.
    Fine-tuning sees only the train split's images, all labelled, in shuffled batches of its size."""
    x, y = data.make_synthetic(160, 0)
    ssl = x, torch.where(torch.arange(160) < 64, y, -1)  # images 64... unlabelled
    d = data.Data("stl-like", 10, 32, (0.5,) * 3, (0.25,) * 3, splits={"ssl": ssl, "train": (x[:64], y[:64]),
                                                                           "test": (x[:16], y[:16])})
    seen, ce = [], evaluation.labelled_cross_entropy
    monkeypatch.setattr(evaluation, "labelled_cross_entropy", lambda logits, y: seen.append(y) or ce(logits, y))
    backbone, dim = backbones.build_backbone("tiny", 32)
    top1 = evaluation.finetune(backbone, dim, d, lambda t: t.float() / 255, contextlib.nullcontext,
                           torch.amp.GradScaler("cpu", enabled=False), 2, 16, 0)
    assert len(seen) == 2 * 64 // 16 and all((s >= 0).all() for s in seen)
    assert torch.cat(seen[:4]).sort().values.tolist() == y[:64].sort().values.tolist()  # one epoch: each image once
    assert 0 <= top1 <= 100


def test_finetune_pool_mean_reads_the_mean_patch_token(monkeypatch):
    """MeanTokens = the mean of the patch tokens of torchvision's own encoder pass (CLS left out); finetune(pool="mean")
    puts it between the backbone copy and the head, pool "cls" does not."""
    vit, dim = backbones.build_backbone("vit_mini", 32, 8)
    x = torch.randn(3, 3, 32, 32)
    z = vit._process_input(x)  # torchvision: patch embedding (N, L, D)
    ref = vit.encoder(torch.cat([vit.class_token.expand(3, -1, -1), z], 1))[:, 1:].mean(1)
    assert torch.allclose(evaluation.MeanTokens(vit)(x), ref, atol=1e-5)
    made, cls = [], evaluation.MeanTokens
    monkeypatch.setattr(evaluation, "MeanTokens", lambda v: made.append(v) or cls(v))
    d = data.Data("s", 10, 32, (0.5,) * 3, (0.25,) * 3, splits={s: data.make_synthetic(16, 0) for s in
                                                                   ("ssl", "train", "test")})
    for pool in ("cls", "mean"):
        evaluation.finetune(vit, dim, d, lambda t: t.float() / 255, contextlib.nullcontext,
                        torch.amp.GradScaler("cpu", enabled=False), 1, 8, 0, pool)
        assert len(made) == (pool == "mean") and all(v is not vit for v in made)  # a copy, never the backbone


def test_finetune_head_comes_from_the_seed_not_the_global_random_state(monkeypatch):
    """The head fine-tuning starts from (the backbone's linear probe) comes from the backbone and the seed alone,
    whatever ran before; another seed, another head; the global random state is left as it was."""
    heads, make = [], evaluation.make_optimizer
    monkeypatch.setattr(evaluation, "make_optimizer", lambda name, groups, lr: heads.append(
        [p.detach().clone() for g in groups for p in g["params"] if p.shape[0] == 10]) or make(name, groups, lr))
    backbone, dim = backbones.build_backbone("tiny", 32)
    d = data.Data("s", 10, 32, (0.5,) * 3, (0.25,) * 3, splits={s: data.make_synthetic(16, 0) for s in
                                                                   ("ssl", "train", "test")})
    for state, seed in ((1, 0), (2, 0), (1, 1)):
        torch.manual_seed(state)
        evaluation.finetune(backbone, dim, d, lambda t: t.float() / 255, contextlib.nullcontext,
                        torch.amp.GradScaler("cpu", enabled=False), 1, 8, seed)
        assert torch.equal(torch.rand(3), torch.manual_seed(state) and torch.rand(3))  # the global state: untouched
    assert all(torch.equal(a, b) for a, b in zip(heads[0], heads[1])) and len(heads[0]) == 2  # head weight and bias
    assert not torch.equal(heads[0][0], heads[2][0])


def test_labelled_cross_entropy_of_two_ranks_with_unequal_labelled_counts_is_the_global_mean(monkeypatch):
    """Two ranks simulated in one process (world_size 2, all_reduce sums what both ranks reduce): the mean of their
    gradients (what average_gradients takes), their loss and top-1 are one process's on the whole batch."""
    logits = torch.randn(8, 5, generator=torch.Generator().manual_seed(0)).requires_grad_()
    y = torch.tensor([0, -1, 2, 3, -1, -1, -1, 1])  # rank 0 holds 3 labelled images, rank 1 holds 1
    loss, top1 = evaluation.labelled_cross_entropy(logits, y)
    mask = y >= 0
    naive = nn.functional.cross_entropy(logits[mask], y[mask])
    assert loss.item() == pytest.approx(naive.item(), rel=1e-6)
    assert top1.item() == pytest.approx(100 * (logits[mask].argmax(1) == y[mask]).float().mean().item())
    grad, = torch.autograd.grad(naive, logits)
    shares, reduced = [(logits[:4], y[:4]), (logits[4:], y[4:])], []
    monkeypatch.setattr(evaluation, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t: reduced.append(t.clone()))  # what each rank reduces
    for lg, t in shares:
        evaluation.labelled_cross_entropy(lg, t)
    monkeypatch.setattr(distributed.dist, "all_reduce", lambda t: t.copy_(reduced[0] + reduced[1]))
    mean_grad = 0
    for lg, t in shares:
        loss_r, top1_r = evaluation.labelled_cross_entropy(lg, t)
        mean_grad = mean_grad + torch.autograd.grad(loss_r, logits)[0] / 2
        assert loss_r.item() == pytest.approx(naive.item(), rel=1e-6) and top1_r.item() == pytest.approx(top1.item())
    assert torch.allclose(mean_grad, grad, atol=1e-7, rtol=1e-5)


def test_finetuning_augments_in_fp32_outside_autocast(monkeypatch):
    """Training augments outside autocast; so does fine-tuning (inside a bf16 autocast, area_resized_crop's matmuls of
    large images ran in bf16: 1.5 grey levels off)."""
    states, call = [], plumbing_augment.Augment.__call__

    def spy(self, x, g):
        states.append(torch.is_autocast_enabled("cpu"))
        return call(self, x, g)

    monkeypatch.setattr(plumbing_augment.Augment, "__call__", spy)
    backbone, dim = backbones.build_backbone("tiny", 32)
    d = data.Data("s", 10, 32, (0.5,) * 3, (0.25,) * 3, splits={s: data.make_synthetic(16, 0) for s in
                                                               ("ssl", "train", "test")})

    def bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    evaluation.finetune(backbone, dim, d, lambda t: t.float() / 255, bf16, torch.amp.GradScaler("cpu", enabled=False),
                        1, 8, 0)
    assert states == [False, False], states


def test_fine_tuning_starts_from_the_linear_probe_folded_into_one_linear_layer():
    """LP-FT's head on the raw features of a frozen backbone predicts exactly what the offline linear probe (on
    standardized features) predicts, so fine-tuning starts at the linear probe's test accuracy."""
    torch.manual_seed(0)
    backbone, dim = backbones.build_backbone("tiny", 32)
    backbone.eval()
    x, y = data.make_synthetic(96, 1)
    d = data.Data("s", 10, 32, (0.5,) * 3, (0.25,) * 3, splits={"ssl": (x[:64], y[:64]), "train": (x[:64], y[:64]),
                                                               "test": (x[64:], y[64:])})

    def normalize(t):
        return (t.float() / 255 - 0.5) / 0.25

    head = evaluation.linear_probe_head(backbone, dim, d, normalize, contextlib.nullcontext, seed=3)
    train_f, train_y = evaluation.extract_features(backbone, d, "train", normalize)
    test_f, test_y = evaluation.extract_features(backbone, d, "test", normalize)
    probe = estimators.linear_probe(backbone, train_f, train_y, test_f, test_y, 10, seed=3)
    clf, mean, std = estimators.fit_linear_classifier(train_f, train_y, 10, seed=3)
    with torch.no_grad():
        assert torch.allclose(head(test_f), clf((test_f - mean) / std), atol=1e-4)
        assert 100.0 * (head(test_f).argmax(1) == test_y).float().mean().item() == pytest.approx(probe)
    assert probe > 20  # the probe learned something: the fold is not vacuous
