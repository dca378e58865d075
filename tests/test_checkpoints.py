"""Checkpoints: atomic writes whose bytes depend on the state alone; incomplete files refused."""
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

from plumbing import checkpoints
from plumbing.errors import UserError


def test_checkpoint_is_atomic_and_its_bytes_depend_on_the_state_alone(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoints.save_checkpoint(path, {"step": 1})
    checkpoints.save_checkpoint(tmp_path / "other.pt", {"step": 1})  # another name (torch.save stores a file's name)
    assert path.read_bytes() == (tmp_path / "other.pt").read_bytes()
    real_write = Path.write_bytes

    def full_disk(self, data):
        real_write(self, bytes(data)[:100])  # half written, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_checkpoint(path, {"step": 2})
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "other.pt"]  # and no temporary file is left


def test_a_checkpoint_with_the_format_tag_but_missing_keys_is_one_line(tmp_path):
    import simclr
    args = simclr.Args()
    full = {"format": checkpoints.CKPT_FORMAT, "method": "simclr", "model": {}, "optimizers": [], "probe": {},
            "probe_opt": {}, "epoch": 0, "batch_in_epoch": 0, "rng": {}, "args": dataclasses.asdict(args)}  # no "step"
    for state in (full, {"format": checkpoints.CKPT_FORMAT}):
        torch.save(state, tmp_path / "bad.pt")
        with pytest.raises(UserError, match="not a complete cleanssl training checkpoint"):
            checkpoints.load_checkpoint(str(tmp_path / "bad.pt"), "simclr", args)


def test_a_second_sigterm_changes_nothing_and_a_second_ctrl_c_quits_at_once():
    """A scheduler preempting a job under torchrun may deliver two SIGTERMs: the run still saves and stops after its
    step. Ctrl-C twice quits at once."""
    import signal
    said = []
    signals = checkpoints.StopSignals(said.append)
    signals._on_signal(signal.SIGTERM, None)
    signals._on_signal(signal.SIGTERM, None)
    assert signals.received == signal.SIGTERM and len(said) == 1 and "saving a checkpoint" in said[0]
    with pytest.raises(KeyboardInterrupt):
        signals._on_signal(signal.SIGINT, None)
    ctrl_c = checkpoints.StopSignals(said.append)
    ctrl_c._on_signal(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        ctrl_c._on_signal(signal.SIGINT, None)
