"""Worker of tests/test_distributed.py: run one training step of each method given on the command line, alone or as
one of torchrun's processes, and save the parameter gradients that step hands to the optimizer (after
common.average_gradients) to OUT/{method}_world{W}_rank{R}.pt.

    python tests/ddp_worker.py OUT simclr vicreg                                    # one process, global batch 32
    torchrun --standalone --nproc_per_node 2 tests/ddp_worker.py OUT simclr vicreg  # two, 16 images each

BatchNorm couples the images of a process's batch (SyncBatchNorm, which would make it global, refuses CPU tensors),
so every BatchNorm layer is built as a per-sample GroupNorm(1, C) here: then one step of two processes must give
the gradient of one process on the concatenated batch. 128 images, batch 32: 4 steps per epoch (DeepCluster v2's
first gradient is at step 5, in epoch 1). A name with the suffix +broken-gather (e.g. simclr+broken-gather) runs that
method with common.gather replaced by an all-gather whose backward returns only the local slice (the bug of lightly
#1528): the test must then see different gradients.
"""
import importlib
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT)), sys.path.insert(0, str(ROOT / "methods"))
import common  # noqa: E402


class PerSampleNorm(nn.GroupNorm):
    """Stands in for BatchNorm1d/2d: normalizes each sample over its own channels."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, track_running_stats=True, **_):
        super().__init__(1, num_features, eps, affine)


class Captured(Exception):
    pass


def broken_gather(x):  # forward as all_gather, backward only to the local slice: the other ranks' gradient is lost
    if common.world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(common.world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[common.rank()] = x
    return torch.cat(parts)


def main():
    out, names = Path(sys.argv[1]), sys.argv[2:]
    nn.BatchNorm1d = nn.BatchNorm2d = PerSampleNorm
    load, average, gather = common.load_data, common.average_gradients, common.gather

    def small(*a, **k):
        d = load(*a, **k)
        d.splits = {s: (x[:128], y[:128]) for s, (x, y) in d.splits.items()}
        return d

    common.load_data = small
    for label in names:
        name, broken = label.removesuffix("+broken-gather"), label.endswith("+broken-gather")
        common.gather = broken_gather if broken else gather
        module = importlib.import_module(name)
        first = 4 + 1 if name == "deepcluster_v2" else 1

        def spy(*modules):
            average(*modules)
            run = spy.run
            if modules[0] is run.model and run.step_count == first:
                grads = {k: p.grad.detach().clone() for k, p in run.model.named_parameters() if p.grad is not None}
                torch.save(grads, out / f"{label}_world{common.world_size()}_rank{common.rank()}.pt")
                raise Captured

        track = common.Run.track

        def track_spy(self, *a, **k):
            spy.run = self
            return track(self, *a, **k)

        common.average_gradients, common.Run.track = spy, track_spy
        extra = {"moco_v2": ["--queue-size", 64], "nnclr": ["--queue-size", 64], "dino": ["--num-prototypes", 64],
                 "swav": ["--queue-size", 64, "--num-prototypes", 30], "deepcluster_v2": ["--num-prototypes", 12, 12],
                 "ibot": ["--patch-size", 8], "dino_vit": ["--patch-size", 8], "mae": ["--patch-size", 8]}
        vit = name in ("ibot", "dino_vit", "mae")
        flags = ["--dataset", "synthetic", "--backbone", "vit_tiny" if vit else "tiny", "--batch-size", 32,
                 "--epochs", 2, "--warmup-epochs", 1, "--eval-every", 0, "--mi-every", 0, "--save-every", 0,
                 "--save-every-minutes", 0, "--device", "cpu", "--no-sync-bn", "--run-dir", out / f"run_{label}_{os.environ.get('WORLD_SIZE', 1)}",
                 "--max-steps", first, *extra.get(name, [])]
        import tyro
        try:
            module.main(tyro.cli(module.Args, args=[str(f) for f in flags]))
        except Captured:
            pass
        common.average_gradients, common.Run.track = average, track
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
