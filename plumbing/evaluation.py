"""Evaluation: the online linear probe trained beside SSL, the kNN and offline linear probes of a backbone (their
protocols printed beside their numbers), the dimensionality and MI metrics on a fixed held-out pair of views, and
end-to-end fine-tuning. Every rank computes the same numbers (no collective inside an evaluation)."""
import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import estimators
from plumbing.augment import Augment, ViewSpec
from plumbing.backbones import MeanTokens
from plumbing.distributed import all_reduce_sum, average_gradients, broadcast_tensors, rank, world_size
from plumbing.optim import make_optimizer, param_groups, warmup_cosine

Tensor = torch.Tensor
ONLINE_PROTOCOL = ("online linear probe: trained during SSL on detached backbone features of augmented view 1 "
                   "(SGD lr 0.1, momentum 0.9)")
FINETUNE_PROTOCOL = ("LP-FT: a linear head started as the offline linear probe, then the backbone (every parameter) "
                     "and the head fine-tuned end to end on the labelled train images, AdamW lr 5e-4 x batch/256, wd "
                     "0.05, 10% warmup then cosine, crop 0.2-1 + flip; un-augmented test images")


@contextlib.contextmanager
def evaluating(model: nn.Module, sync: bool = True):
    """The model in eval mode for the block, then every module's training flag as it was. sync: first rank 0's
    buffers (BN statistics, queues...) on every rank, as DDP does (a collective)."""
    modes = [m.training for m in model.modules()]
    model.eval()
    if sync:
        broadcast_tensors(*model.buffers())
    try:
        yield
    finally:
        for module, training in zip(model.modules(), modes):
            module.training = training


def held_out_pair(data, views, channels_last: bool):
    """The pair of views on which MI and dimensionality are measured all run long: the first 256 test images through
    the first two views (one view: two draws of it), from a fixed seed, the same on every rank."""
    held_out = next(data.eval_batches("test", 256))[0]
    pair = Augment((views * 2)[:2], data.mean, data.std, channels_last)
    return pair(held_out, torch.Generator(data.device).manual_seed(12345))


@torch.no_grad()
def extract_features(net: nn.Module, data, split: str, normalize, batch_size=512):
    """Outputs of `net` in eval mode on the un-augmented images of a split, and their labels. Every rank computes
    them all (no collective, so evaluation cannot deadlock; it is not sped up by several processes)."""
    was_training = net.training
    net.eval()
    feats, labels = [], []
    for x, y in data.eval_batches(split, batch_size):
        feats.append(net(normalize(x)).float())
        labels.append(y)
    net.train(was_training)
    return torch.cat(feats), torch.cat(labels)


def labelled_cross_entropy(logits: Tensor, y: Tensor):
    """Cross-entropy L = S / n and top-1 (%) over the labelled samples (y >= 0) of the global batch: one all-reduce (no
    sync) sums rank r's loss sum S_r and labelled count n_r (unequal on STL-10). dL = sum_r dS_r / n; average_gradients
    divides the ranks' sum by W, so each rank backpropagates W S_r / n, with the value of L (what is logged)."""
    s_r = F.cross_entropy(logits, y, ignore_index=-1, reduction="sum")  # over this rank's labelled samples
    hits = (logits.argmax(1) == y).sum()
    totals = all_reduce_sum(torch.stack([s_r.detach(), hits, (y >= 0).sum()]).float())  # [S, hits, n]
    n = totals[2].clamp(min=1)
    loss = (world_size() * (s_r - s_r.detach()) + totals[0]) / n  # value S / n, gradient W dS_r / n
    return loss, 100 * totals[1] / n


class OnlineProbe(nn.Module):
    """Linear classifier trained alongside SSL on detached features, with its own SGD (ONLINE_PROTOCOL)."""

    def __init__(self, feat_dim: int, num_classes: int, device):
        super().__init__()
        self.fc = nn.Linear(feat_dim, num_classes).to(device)
        self.opt = make_optimizer("sgd", [dict(params=list(self.fc.parameters()))], 0.1)  # momentum 0.9

    def update(self, feats: Tensor, y: Tensor):
        """One step on the labelled samples (y = -1: skipped) of the global batch; returns its (loss, train top-1 %)."""
        loss, acc = labelled_cross_entropy(self.fc(feats.detach().float()), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.fc)
        self.opt.step()
        return loss.detach(), acc


@dataclass
class Features:
    """A backbone's features of the un-augmented train and test images, with their labels."""
    train: Tensor
    train_labels: Tensor
    test: Tensor
    test_labels: Tensor


def backbone_features(backbone: nn.Module, data, normalize, autocast) -> Features:
    with autocast():
        train, train_labels = extract_features(backbone, data, "train", normalize)
        test, test_labels = extract_features(backbone, data, "test", normalize)
    return Features(train, train_labels, test, test_labels)


def knn_and_online_scores(features: Features, num_classes: int, probe: OnlineProbe = None) -> dict:
    """kNN top-1 (estimators.KNN_PROTOCOL) and, given the online probe, its test top-1."""
    f = features
    scores = {"knn_top1": estimators.knn_top1(f.train, f.train_labels, f.test, f.test_labels, num_classes)}
    if probe is not None:
        hits = (probe.fc(f.test).argmax(1) == f.test_labels).float()
        scores["online_linear_top1"] = 100.0 * hits.mean().item()
    return scores


def pair_metrics(backbone: nn.Module, project: nn.Module, pair, autocast) -> dict:
    """dim/* and mi/* (estimators.representation_metrics) of R = backbone and Z = project(R) on a pair of views."""
    with torch.no_grad(), autocast():
        r1, r2 = backbone(pair[0]), backbone(pair[1])
        z1, z2 = project(r1), project(r2)
    return estimators.representation_metrics(r1.float(), z1.float(), z2.float())


def representation_scalars(backbones: dict, branches, pair, autocast) -> dict:
    """{tag: value} on the held-out pair of views: dim/* of each tracked network (suffix _name after the first) and
    mi/* between the embeddings the objective compares: the branches (online(view 1), target(view 2)), where the
    method has two; then each network's Z of both views is mi_same/*. One network: its Z of both views is mi/*."""
    scalars = {}
    for position, (name, (backbone, project)) in enumerate(backbones.items()):
        suffix = "" if position == 0 else f"_{name}"
        for tag, value in pair_metrics(backbone, project, pair, autocast).items():
            if branches:
                tag = tag.replace("mi/", "mi_same/")
            scalars[tag + suffix] = value
    if branches:
        with torch.no_grad(), autocast():
            embeddings = [branch(x).float() for branch, x in zip(branches, pair)]
        scalars.update(estimators.mi_estimates(*embeddings))
    return scalars


def final_scores(backbone: nn.Module, project: nn.Module, features: Features, num_classes: int, pair, autocast,
                 seed: int) -> dict:
    """The offline linear probe (estimators.LINEAR_PROTOCOL), H(R) and I(R;Z) on the held-out pair of views."""
    metrics = pair_metrics(backbone, project, pair, autocast)
    f = features
    linear = estimators.linear_probe(backbone, f.train, f.train_labels, f.test, f.test_labels, num_classes, seed=seed)
    return dict(linear_top1=linear, H_R=metrics["dim/erank_R"], I_RZ=metrics["dim/mi_RZ"])


def progress_report(epoch: int, tag: str, scores: dict) -> str:
    line = f"  eval epoch {epoch + 1}: kNN top-1{tag} {scores['knn_top1']:.2f}"
    if "online_linear_top1" in scores:
        line += f", online linear top-1 {scores['online_linear_top1']:.2f}"
    return line


def final_report(name: str, scores: dict, dims: int) -> str:
    """The final numbers of one backbone, each with its protocol (dims: the most H(R) can be)."""
    h, i = scores["H_R"], scores["I_RZ"]
    lines = [f"[{name}] kNN top-1 {scores['knn_top1']:.2f}   ({estimators.KNN_PROTOCOL})",
             f"[{name}] linear top-1 {scores['linear_top1']:.2f}   ({estimators.LINEAR_PROTOCOL})",
             f"[{name}] H(R) = effective rank {h:.2f} of {dims} (a count, not nats); I(R;Z) = {i:.3f} nats (matrix "
             f"Renyi-2, held-out batch); I(R;Z)/H(R) = {i / max(h, 1e-9):.4f} nats per effective dimension"]
    if "online_linear_top1" in scores:
        lines.append(f"[{name}] online linear top-1 {scores['online_linear_top1']:.2f}   ({ONLINE_PROTOCOL})")
    return "\n".join(lines)


def finetune_report(name: str, top1: float, epochs: int, pool: str) -> str:
    note = "; the head reads the mean patch token" if pool == "mean" else ""
    return f"[{name}] fine-tune top-1 {top1:.2f} after {epochs} epochs ({FINETUNE_PROTOCOL}{note})"


def projector_embedding(features: Features, data) -> dict:
    """Up to 2,000 test features with their labels (and thumbnails for small images), for tensorboard's projector."""
    n = min(2000, len(features.test))
    thumbnails = None
    if not data.large:
        thumbnails = (data.splits["test"][0][:n].float() / 255).cpu()
    return dict(mat=features.test[:n].cpu(), metadata=features.test_labels[:n].tolist(), label_img=thumbnails)


def linear_probe_head(body: nn.Module, feat_dim: int, data, normalize, autocast, seed: int) -> nn.Linear:
    """LP-FT's first step (Kumar et al. 2022): the linear probe of the frozen body on the un-augmented labelled train
    images (estimators.LINEAR_PROTOCOL: standardized features, Adam, 100 epochs), folded into one Linear layer on the
    raw features: W / std and b - W mean / std. From the seed and the body alone, the same on every rank."""
    with autocast():
        features, labels = extract_features(body, data, "train", normalize)
    clf, mean, std = estimators.fit_linear_classifier(features, labels, data.num_classes, seed=seed)
    with torch.random.fork_rng(devices=[]):  # its random initialization is overwritten: the global RNG is left alone
        head = nn.Linear(feat_dim, data.num_classes).to(data.device)
    with torch.no_grad():
        head.weight.copy_(clf.weight / std)
        head.bias.copy_(clf.bias - head.weight @ mean)
    return head


def finetune(backbone: nn.Module, feat_dim: int, data, normalize, autocast, scaler, epochs: int, batch_size: int,
             seed: int, pool: str = "cls") -> float:
    """End-to-end supervised fine-tuning of a copy of the backbone with a linear head started as its linear probe
    (FINETUNE_PROTOCOL: LP-FT, so that fine-tuning starts where the probe ends, not from a random head), each rank on
    its share of the labelled train split (not the SSL split, unlabelled on STL-10), gradients averaged (`scaler`: fp16
    loss scaling); returns the test top-1. pool "mean": the head reads a ViT's mean patch token (MeanTokens; MAE)."""
    body = MeanTokens(copy.deepcopy(backbone)) if pool == "mean" else copy.deepcopy(backbone)
    head = linear_probe_head(body, feat_dim, data, normalize, autocast, seed)
    net = nn.Sequential(body, head).to(data.device).train()
    net.requires_grad_(True)  # every parameter, also those fixed during SSL (MAE's sin-cos positions), as MAE does
    opt = make_optimizer("adamw", param_groups(net, 0.05), 5e-4 * batch_size / 256)
    view = ViewSpec(data.image_size, scale=(0.2, 1.0), jitter_p=0.0, gray_p=0.0)
    augment = Augment([view], data.mean, data.std, shard=(rank(), world_size()))
    generator = torch.Generator(data.device)
    total = epochs * (len((data.files or data.splits)["train"][0]) // batch_size)
    step = 0
    for epoch in range(epochs):
        for x, y, _ in data.ssl_batches(batch_size, epoch, seed + 7, split="train"):
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * warmup_cosine(step, total, total // 10, start=0.0)
            views = augment(x, generator.manual_seed(seed * 1_000_003 + step))  # in fp32, as training augments
            with autocast():
                loss, _ = labelled_cross_entropy(net(views[0]).float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            average_gradients(net)
            scaler.step(opt)
            scaler.update()
            step += 1
    with autocast():
        logits, labels = extract_features(net, data, "test", normalize)
    return 100.0 * (logits.argmax(1) == labels).float().mean().item()
