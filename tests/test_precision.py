"""Mixed precision and compilation: every method trains a few steps under bf16 and fp16 autocast on the CPU with finite
losses and fp32 objectives; fp16's loss scale is checkpointed and resumed; --precision auto's choice; a compiled SimCLR
and MAE give eager's losses."""
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
FP16 = [sdmi, dino_vit]  # updates of each kind: two optimizers; unscale_ before the clip (SimCLR: the resume test)


def low_precision_run(train, monkeypatch, module, precision, *flags):
    """Train 2 steps (64 images, batch 32; deepcluster_v2: 4) and record the dtype of every logged loss."""
    dtypes, log = {}, common.Run.log
    monkeypatch.setattr(common.Run, "log", lambda self, scalars: (dtypes.update(
        {k: v.dtype for k, v in scalars.items() if k.startswith("losses/") and torch.is_tensor(v)}), log(self, scalars)))
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
