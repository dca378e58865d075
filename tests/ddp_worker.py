"""Worker of tests/test_distributed.py: run three training steps of each method given on the command line, alone or as
one of torchrun's processes, and save to OUT/{method}_world{W}_rank{R}.pt {"grads": the gradients the last step
handed to the optimizer (after common.average_gradients), "state": the change of every parameter and buffer of the
model (queues, support set, memory, centers, EMA targets, alpha...) and of the online probe over the run (integer
buffers: their final value)}.

    python tests/ddp_worker.py OUT simclr vicreg                                    # one process, global batch 32
    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT simclr vicreg  # two, 16 images each

BatchNorm couples the images of a process's batch (SyncBatchNorm, which would make it global, refuses CPU tensors),
so every BatchNorm layer is built as a per-sample GroupNorm(1, C) here: then two processes must give the run of one
process on the concatenated batches. 64 images, batch 32: 2 steps per epoch, so the 3 steps cross an epoch (SwAV's
prototypes and DINO's last layer train from step 1, AdaDim re-measures alpha, DeepCluster v2 clusters again: its 3
loss steps are steps 3-5, after an epoch that only fills its memory). The queues are small enough to wrap (48 keys).
A third of the images are unlabelled (label -1), so the ranks hold different numbers of labelled images for the online
probe. DeepCluster v2's k-means returns slightly moved centroids on ranks > 0 (as CUDA atomics may): only a broadcast of
rank 0's clustering keeps the processes equal.
A name with the suffix +broken-gather (e.g. simclr+broken-gather) runs that method with common.gather replaced by an
all-gather whose backward returns only the local slice (the bug of lightly #1528): the test must then see a difference.
The name `download` loads --dataset cifar10 through a stand-in torchvision class (no network) that takes its time to
"download" and refuses to read what is not there yet; each process's calls go to OUT/download_world{W}_rank{R}.pt.
"""
import importlib
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)), sys.path.insert(0, str(ROOT / "methods"))
import common  # noqa: E402

IMAGES, STEPS = 64, 3
EXTRA = {"moco_v2": ["--queue-size", 48], "nnclr": ["--queue-size", 48], "dino": ["--num-prototypes", 64],
         "swav": ["--queue-size", 48, "--num-prototypes", 30, "--queue-start-epoch", 0],
         "deepcluster_v2": ["--num-prototypes", 12, 12], "adadim": ["--alpha-every", 1],
         "ibot": ["--patch-size", 8, "--out-dim", 256, "--num-local-crops", 2],
         "dino_vit": ["--patch-size", 8, "--num-prototypes", 256, "--num-local-crops", 2], "mae": ["--patch-size", 8]}
FROZEN_AT_START = {"swav": "--freeze-prototypes-epochs", "dino": "--freeze-last-layer-epochs",
                   "dino_vit": "--freeze-last-layer-epochs", "ibot": "--freeze-last-layer-epochs"}


class PerSampleNorm(nn.GroupNorm):
    """Stands in for BatchNorm1d/2d: normalizes each sample over its own channels."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, **_):
        super().__init__(1, num_features, eps, affine)


def broken_gather(x):  # forward as all_gather, backward only to the local slice: the other ranks' gradient is lost
    if common.world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(common.world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[common.rank()] = x
    return torch.cat(parts)


class FakeCIFAR10:
    """torchvision.datasets.CIFAR10's interface without network: a download takes 0.5 s and writes a marker file;
    download=False on files not there yet raises as torchvision does. Every call is recorded in `calls`."""
    calls = []

    def __init__(self, root, train=True, download=False):
        marker = Path(root) / f"{'train' if train else 'test'}.done"
        self.calls.append((train, download))
        if download and not marker.exists():
            time.sleep(0.5)
            Path(root).mkdir(parents=True, exist_ok=True)
            marker.write_text("done")
        if not marker.exists():
            raise RuntimeError("Dataset not found or corrupted. You can use download=True to download it")
        self.data, self.targets = np.zeros((4, 32, 32, 3), np.uint8), [0, 1, 2, 3]


def drifting(kmeans):
    """k-means whose centroids end a little elsewhere (1e-3 per coordinate), as they may on another GPU."""
    def moved(*args):
        centroids, assignments = kmeans(*args)
        return F.normalize(centroids + 1e-3, dim=1), assignments
    return moved


def download(out: Path):
    real, torchvision.datasets.CIFAR10 = torchvision.datasets.CIFAR10, FakeCIFAR10
    try:
        common.load_data("cifar10", str(out / "cifar"), 0, "cpu")
    finally:
        torchvision.datasets.CIFAR10 = real
    torch.save(FakeCIFAR10.calls, out / f"download_world{common.world_size()}_rank{common.rank()}.pt")


def main():
    out, names = Path(sys.argv[1]), sys.argv[2:]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    common.init_distributed("cpu")
    nn.BatchNorm1d = nn.BatchNorm2d = PerSampleNorm
    load, gather, track = common.load_data, common.gather, common.Run.track

    def small(*a, **k):  # IMAGES images per split; in the SSL split a third unlabelled
        d = load(*a, **k)
        d.splits = {s: (x[:IMAGES], y[:IMAGES]) for s, (x, y) in d.splits.items()}
        x, y = d.splits["ssl"]
        d.splits["ssl"] = x, torch.where(torch.arange(len(y)) % 3 == 0, -1, y)
        return d

    def track_spy(self, model, optimizers, backbones, probe, **kw):
        track(self, model, optimizers, backbones, probe, **kw)
        self.initial = {k: v.clone() for k, v in [*model.state_dict().items(),
                                                  *probe.state_dict(prefix="probe.").items()]}

    def finish_spy(self):  # after the last step, instead of the evaluation
        final = [*self.model.state_dict().items(), *self.probe.state_dict(prefix="probe.").items()]
        state = {k: v - self.initial[k] if v.is_floating_point() else v for k, v in final}
        grads = {k: p.grad.detach().clone() for m, pre in ((self.model, ""), (self.probe, "probe"))
                 for k, p in m.named_parameters(prefix=pre) if p.grad is not None}
        torch.save({"grads": grads, "state": state}, out / f"{self.label}_world{self.world}_rank{self.rank}.pt")
        if self.rank0:
            self.writer.close()

    common.load_data, common.Run.track, common.Run.finish = small, track_spy, finish_spy
    for label in names:
        if label == "download":
            download(out)
            continue
        name, broken = label.removesuffix("+broken-gather"), label.endswith("+broken-gather")
        common.gather = broken_gather if broken else gather
        common.Run.label = label
        module = importlib.import_module(name)
        if name == "deepcluster_v2" and common.rank() > 0:
            module.kmeans = drifting(module.kmeans)
        vit = name in ("ibot", "dino_vit", "mae")
        steps = STEPS + (2 if name == "deepcluster_v2" else 0)  # its first epoch (2 steps) only fills the memory
        flags = ["--dataset", "synthetic", "--backbone", "vit_tiny" if vit else "tiny", "--batch-size", 32,
                 "--epochs", 4, "--warmup-epochs", 1, "--eval-every", 0, "--mi-every", 0, "--save-every", 0,
                 "--save-every-minutes", 0, "--device", "cpu", "--no-sync-bn", "--max-steps", steps,
                 "--run-dir", out / f"run_{label}_{world}", *EXTRA.get(name, [])]
        flags += [FROZEN_AT_START[name], 0] if name in FROZEN_AT_START else []
        import tyro
        module.main(tyro.cli(module.Args, args=[str(f) for f in flags]))
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
