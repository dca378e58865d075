"""No host-device synchronization inside a steady-state training step, for every method (augmentation, masks, loss,
optimizer, probe, run.log, Run.batches). On a GPU the host queues kernels and runs ahead; an op whose result the host
must know (a value: .item(), bool(t), float(t); a size: nonzero, boolean-mask indexing, unique, repeat_interleave
without output_size) makes it wait for everything queued before. These are the same aten ops on the CPU, so a
TorchDispatchMode counts them here, per step: from the moment a method receives a batch to the moment it asks for the
next one (its whole step, and Run.batches' own code between the two).

Not a sync, so not counted: torch.optim's `.item()` of its `step` counters. Those are CPU tensors unless the optimizer
is `capturable` (then they live on the device), so reading them never waits for the GPU. The test recognizes them by
identity: `_local_scalar_dense` of exactly a tensor that is some optimizer's state["step"] in a param group without
capturable; any other `_local_scalar_dense` counts. Not visible on the CPU (no op is dispatched for them): `.cpu()`,
`.tolist()`, `.numpy()` of device tensors and host-to-device copies such as torch.tensor(list, device=...); the per-step
code has none (reviewed), and on a CUDA machine the last test checks them with torch.cuda.set_sync_debug_mode.
index_fill / masked_fill with a tensor value read it on the host on CUDA (C++ .item(), invisible here), so they count
whatever the value's device (on a GPU a CPU-scalar value would not wait; the CPU run cannot tell): the first H100 run of
the last test found one, torch.trace's backward in AdaDim's Renyi-2 MI, which these lines missed until then."""
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import adadim
import barlow_twins
import byol
import common
import deepcluster_v2
import dino
import dino_vit
import ibot
import jmi
import mae
import moco_v2
import moco_v3
import nnclr
import sdmi
import simclr
import simsiam
import swav
import vicreg
from conftest import TINY

VIT = ["--backbone", "vit_tiny", "--patch-size", 8]
FLAGS = {moco_v2: ["--queue-size", 64], nnclr: ["--queue-size", 64], dino: ["--num-prototypes", 64],
         swav: ["--queue-size", 64, "--num-prototypes", 30, "--queue-start-epoch", 0],  # the queue in use from step 3
         deepcluster_v2: ["--num-prototypes", 30, 30],
         dino_vit: [*VIT, "--num-prototypes", 256, "--proj-hidden-dim", 64, "--num-local-crops", 2],
         ibot: [*VIT, "--out-dim", 256, "--proj-hidden-dim", 64, "--num-local-crops", 2],
         mae: [*VIT, "--decoder-dim", 32, "--decoder-depth", 1, "--decoder-heads", 4], adadim: ["--alpha-every", 1]}
SIZE_OPS = {"nonzero", "masked_select", "unique", "_unique", "_unique2", "unique_dim", "unique_consecutive",
            "unique_dim_consecutive", "bincount", "equal", "is_nonzero", "item", "allclose"}
STEPS = 3  # steady-state steps counted per method (after 2 uncounted ones)


class SyncCounter(TorchDispatchMode):
    """Records each op that synchronizes on CUDA while `window` is set (the step it belongs to), with where it ran."""

    def __init__(self):
        super().__init__()
        self.window, self.counters, self.found = None, set(), {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.window is not None and self.syncs(func._schema.name.split("::")[-1], args, kwargs):
            where = "".join(f"  {f.filename.split('/')[-1]}:{f.lineno} {f.line}\n" for f in traceback.extract_stack()
                            if "/methods/" in f.filename or "/plumbing/" in f.filename or f.filename.endswith("common.py"))
            self.found.setdefault(self.window, []).append(f"{func}\n{where}")
        return func(*args, **kwargs)

    def syncs(self, name: str, args, kwargs) -> bool:
        if name == "_local_scalar_dense":
            return id(args[0]) not in self.counters
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):  # x[mask], x[mask] = v
            return any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in args[1])
        if name == "repeat_interleave":  # the int-repeats overload decomposes into expand (no sync)
            return kwargs.get("output_size") is None
        if name in ("index_fill", "index_fill_", "masked_fill", "masked_fill_"):  # a 0-dim tensor value: CUDA's kernel
            return torch.is_tensor(args[-1])  # reads it with .item() (the backward of torch.trace does this)
        return name in SIZE_OPS

    def open(self, run: common.Run):
        optimizers = [*run.optimizers, run.probe.opt]
        self.counters = {id(s["step"]) for o in optimizers for g in o.param_groups if not g.get("capturable")
                         for p in g["params"] for s in [o.state.get(p, {})] if torch.is_tensor(s.get("step"))}
        self.window = run.step_count


class Enough(Exception):
    pass


def count_syncs(train, monkeypatch, module, cuda: bool = False):
    """Run `module` on the tiny setup; count the syncs of STEPS steady-state steps, then stop the run. DeepCluster v2
    trains from epoch 1 on (epoch 0 only fills its memory): 3 steps per epoch, steps 4-6. cuda: on the GPU, under
    torch.cuda.set_sync_debug_mode("error") during the same steps (every sync raises there)."""
    counter, batches = SyncCounter(), common.Run.batches
    first, images, flags = (4, 96, ["--epochs", 3]) if module is deepcluster_v2 else (3, 192, [])

    def counted(run, epoch):
        it = batches(run, epoch)
        while True:
            b = next(it, None)  # Run.batches' code between the previous step and this one runs here
            counter.window = None
            torch.cuda.set_sync_debug_mode(0) if cuda else None
            if run.step_count >= first + STEPS or b is None:
                if b is not None:
                    run.writer.close()
                    raise Enough
                return
            if run.step_count >= first:
                counter.open(run)
                torch.cuda.set_sync_debug_mode("error") if cuda else None
            yield b

    monkeypatch.setattr(common.Run, "batches", counted)
    try:
        with counter, pytest.raises(Enough):
            train(module, *TINY, *FLAGS.get(module, []), *flags, *(["--device", "cuda"] if cuda else []), images=images)
    finally:
        torch.cuda.set_sync_debug_mode(0) if cuda else None
    return counter


METHODS = [simclr, moco_v2, moco_v3, nnclr, byol, simsiam, barlow_twins, vicreg, swav, deepcluster_v2, dino, dino_vit,
           ibot, mae, sdmi, jmi, adadim]


@pytest.mark.parametrize("module", METHODS, ids=lambda m: m.__name__)
def test_no_host_device_sync_in_a_training_step(train, monkeypatch, one_thread, module):
    counter = count_syncs(train, monkeypatch, module)
    assert not counter.found, "\n".join(f"step {s}: {len(v)} syncs, the first {v[0]}" for s, v in counter.found.items())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("module", METHODS, ids=lambda m: m.__name__)
def test_no_sync_on_cuda(train, monkeypatch, module):
    """Also what the CPU cannot see: copies between host and device, .cpu(), .tolist() (raise under the debug mode)."""
    count_syncs(train, monkeypatch, module, cuda=True)
