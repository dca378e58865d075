"""Mixed precision and compilation: every method trains a few steps under bf16 and fp16 autocast on the CPU with finite
losses and fp32 objectives; fp16's loss scale is checkpointed and resumed; --precision auto's choice; a compiled SimCLR
and MAE give eager's losses."""
import functools

import pytest
import torch

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

VIT = ("--backbone", "vit_tiny", "--patch-size", 16)  # 2 x 2 patches at 32 px: quick
SMALL = {moco_v2: ["--queue-size", 64], nnclr: ["--queue-size", 64], dino: ["--num-prototypes", 64],
         swav: ["--queue-size", 64, "--num-prototypes", 30, "--queue-start-epoch", 0],
         deepcluster_v2: ["--num-prototypes", 16, "--epochs", 2],  # epoch 1 only fills the memory: train in epoch 2
         dino_vit: [*VIT, "--num-prototypes", 256, "--proj-hidden-dim", 128, "--num-local-crops", 2],
         ibot: [*VIT, "--out-dim", 256, "--proj-hidden-dim", 128, "--num-local-crops", 2],
         mae: [*VIT, "--decoder-dim", 32, "--decoder-depth", 1, "--decoder-heads", 4, "--finetune-epochs", 1],
         adadim: [], barlow_twins: [], byol: [], jmi: [], moco_v3: [], sdmi: [], simclr: [], simsiam: [], vicreg: []}
LOG, TRACK = common.Run.log, common.Run.track  # the originals, under the tests' spies
FP16 = [sdmi, dino_vit]  # updates of each kind: two optimizers; unscale_ before the clip (SimCLR: the resume test)


def low_precision_run(train, monkeypatch, module, precision, *flags):
    """Train 2 steps (64 images, batch 32; deepcluster_v2: 4) and record the dtype of every logged loss."""
    dtypes = {}
    monkeypatch.setattr(common.Run, "log", lambda self, s: (dtypes.update(
        {k: v.dtype for k, v in s.items() if k.startswith("losses/") and torch.is_tensor(v)}), LOG(self, s)))
    t = train(module, *TINY, "--epochs", 1, "--precision", precision, *SMALL[module], *flags, images=64)
    assert t.run.amp_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert dtypes and all(d == torch.float32 for d in dtypes.values()), dtypes  # objectives computed in fp32
    state = t.run.model.state_dict()
    assert any(not torch.equal(t.before[k], state[k]) for k in state if state[k].is_floating_point())  # it trained
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    return t


@pytest.mark.parametrize("module", list(SMALL), ids=lambda m: m.__name__)
def test_every_method_trains_in_bf16_with_finite_losses_and_fp32_objectives(train, monkeypatch, module):
    t = low_precision_run(train, monkeypatch, module, "bf16")
    assert not t.run.scaler.is_enabled()  # bf16 needs no loss scaling (fp32's exponent range)


@pytest.mark.parametrize("module", FP16, ids=lambda m: m.__name__)
def test_fp16_trains_with_a_loss_scale(train, monkeypatch, module):
    """CPU autocast computes float16 in this torch (convolutions, matmuls); the GradScaler runs on the CPU too."""
    t = low_precision_run(train, monkeypatch, module, "fp16")
    assert t.run.scaler.is_enabled() and 1.0 <= t.run.scaler.get_scale() <= 2.0 ** 16


def test_fp16_loss_scale_is_checkpointed_and_resumed(train, monkeypatch):
    """SimCLR in fp16 for 2 steps, then --resume to step 3: the scaler's state (scale, growth tracker) comes back from
    last.pt, so the tracker counts 3 finite steps, not 1."""
    flags = [*TINY, "--epochs", 2, "--precision", "fp16", "--save-every", 1]
    t = low_precision_run(train, monkeypatch, simclr, "fp16", "--max-steps", 2, "--save-every", 1)
    assert torch.load(t.dir / "last.pt", weights_only=True)["scaler"]["_growth_tracker"] == 2  # no overflow so far
    t = train(simclr, *flags, "--max-steps", 3, "--resume", t.dir / "last.pt", images=64)
    s = torch.load(t.dir / "last.pt", weights_only=True)["scaler"]
    assert s["_growth_tracker"] == 3 and s["scale"] == t.run.scaler.get_scale() == 2.0 ** 16, s


def step_losses(train, monkeypatch, module, *flags):
    """The logged losses of 3 steps, and whether each network ran inside compiled code (pre-hooks on the model's parts,
    its backbones and their layers record torch.compiler.is_compiling(): True while dynamo traces them). run.finish is
    left out: the final evaluation would compile eval-mode graphs too, slow on the CPU."""
    losses, compiled = [], set()
    hook = lambda m, _: compiled.add((type(m).__name__, torch.compiler.is_compiling()))  # noqa: E731

    def spy(self, model, *a, **k):
        for m in {*model.children(), *(m for m in model.modules() if isinstance(m, (common.ViT, common.TinyResNet)))}:
            for c in [m, *m.children()]:  # the layers inside too: ViT.tokens did not run through the ViT's call
                c.register_forward_pre_hook(hook)
        return TRACK(self, model, *a, **k)

    monkeypatch.setattr(common.Run, "track", spy)
    monkeypatch.setattr(common.Run, "log", lambda self, s: (losses.append(
        {k: float(v.detach()) for k, v in s.items() if k.startswith("losses/")}), LOG(self, s)))
    monkeypatch.setattr(common.Run, "finish", lambda self: (self.flush(), self.writer.close()))
    train(module, *TINY, "--max-steps", 3, *flags, images=96)
    return losses, compiled


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.full)])
@pytest.mark.parametrize("module", [simclr, mae], ids=lambda m: m.__name__)
def test_compiled_training_gives_eager_losses(train, monkeypatch, module, backend):
    """--compile against eager, 3 steps of the tiny ResNet / ViT-Tiny with 2 x 2 patches: every network ran compiled
    (MAE: the ViT's token path and the decoder), and each logged loss agrees to 1e-4 relative. CI traces with dynamo
    and AOT autograd (backend aot_eager: what --compile captures, differentiates and runs); inductor's code generation
    (the default backend) costs minutes of CPU here: pytest --full."""
    flags = SMALL[module] + (["--finetune-epochs", 0] if module is mae else [])
    eager, ran = step_losses(train, monkeypatch, module, *flags)
    assert ran and not any(c for _, c in ran)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    compiled, ran = step_losses(train, monkeypatch, module, *flags, "--compile")
    assert ran and all(c for _, c in ran), sorted(ran)  # no network ran eagerly
    assert len(eager) == len(compiled) == 3
    for a, b in zip(eager, compiled):
        assert a.keys() == b.keys() and all(abs(a[k] - b[k]) <= 1e-4 * max(1.0, abs(a[k])) for k in a), (a, b)
