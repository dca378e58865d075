"""soak.py: a short soak (two runs and a torchrun run, one fault each: SIGTERM, SIGINT and SIGKILL) loses nothing and
ends every run equal to its uninterrupted twin; its checks catch a run that differs from its twin, a tensorboard curve
with steps logged twice and a directory that is not a run; with --full, the full ten-minute soak. Four tests show
what the soaks and their checks found in resumed runs, now fixed (docs/reliability.md): a stop at an epoch's last
step, a resume for the final evaluation alone (logged twice; its checkpoint unlike the twin's), a process that ends
right after its checkpoint."""
import json
import shutil
import signal
import time

import pytest
import torch
from tensorboard.summary.writer.record_writer import RecordWriter
from torch.utils.tensorboard import SummaryWriter

import common
import simclr
import soak
import soak_checks
from conftest import TINY, events, run_script

QUICK = ("--minutes", 0.1, "--methods", "simclr", "byol", "--jobs", 4, "--steps", 60, "--faults-per-run", 1,
         "--window", 4)  # the runs of the first moment only; 60 steps: torchrun's ranks agree on a stop at step 50


def passed(res, out):
    report = json.loads((out / "soak.json").read_text())
    assert report["runs_lost"] == 0 and report["mismatches"] == 0 and report["problems"] == [], report["problems"]
    assert res.returncode == (1 if report["problems"] else 0), res.stdout[-3000:] + res.stderr[-3000:]
    assert all(report["faults_by_signal"][s] >= 1 for s in ("SIGTERM", "SIGINT", "SIGKILL")), report["faults_sent"]
    assert report["resumes"] + report["restarts_from_scratch"] >= 1
    assert all((out / "runs" / r["name"] / "backbone.pt").is_file() for r in report["per_run"])
    return report


def test_a_short_soak_loses_nothing(tmp_path):
    res = run_script("soak.py", *QUICK, "--out", tmp_path / "soak", cwd=tmp_path)
    report = passed(res, tmp_path / "soak")
    assert report["runs"] == 3 and report["torchrun_runs"] == 1 and report["faults"] == 3
    assert "0 runs lost, 0 mismatches, 0 problems" in res.stdout


@pytest.mark.full
def test_the_full_soak_loses_nothing(tmp_path):
    res = run_script("soak.py", "--minutes", 10, "--out", tmp_path / "soak", cwd=tmp_path, timeout=3600)
    report = passed(res, tmp_path / "soak")
    assert report["torchrun_runs"] >= 1 and report["runs"] >= 4


def test_a_run_that_differs_from_its_twin_is_a_mismatch(train):
    """Three 2-step runs: seed 0 twice (equal, tensor for tensor, and the same loss curve), and seed 1."""
    flags = [*TINY, "--max-steps", 2, "--save-every", 1]
    first = train(simclr, *flags, "--exp-name", "first", images=64).dir
    again = train(simclr, *flags, "--exp-name", "again", images=64).dir
    other = train(simclr, *flags, "--seed", 1, "--exp-name", "other", images=64).dir
    assert soak_checks.compare_runs(again, first) == [] and soak_checks.compare_curves(again, first) == []
    differences = soak_checks.compare_runs(other, first)
    assert any("backbone.pt/" in d for d in differences) and any("last.pt/model/" in d for d in differences)
    assert any("losses/total differs" in p for p in soak_checks.compare_curves(other, first))
    assert soak_checks.unequal({"a": [1, 2]}, {"a": [1, 2, 3]}, "x") == ["x/a (another length)"]


def test_a_curve_with_steps_logged_twice_is_caught(tmp_path):
    """A process that logged steps 1-3, then another that logged 2-3 again without purging them (what a resume
    without purge_step would leave): the steps go back."""
    (tmp_path / "run").mkdir()
    for process, steps in enumerate(((1, 2, 3), (2, 3))):
        writer = SummaryWriter(str(tmp_path / f"process{process}"))
        for step in steps:
            writer.add_scalar("losses/total", 1.0, step)
        writer.close()
        # named as two processes' files seconds apart, which tensorboard reads in name order (two writers of one
        # process in one second are told apart by a counter: .9 sorts after .10, and the test failed when it crossed)
        (events_file,) = (tmp_path / f"process{process}").iterdir()
        events_file.rename(tmp_path / "run" / f"events.out.tfevents.{1796000000 + process}.host.{100 + process}.0")
    writer = SummaryWriter(str(tmp_path / "twin"))
    for step in (1, 2, 3):
        writer.add_scalar("losses/total", 1.0, step)
    writer.close()
    problems = soak_checks.compare_curves(tmp_path / "run", tmp_path / "twin")
    assert len(problems) == 2 and "not strictly increasing (again at [2, 3])" in problems[0], problems
    assert "losses/total at other steps than the twin's (more at [2, 3], none at [])" in problems[1], problems


def test_a_run_resumed_for_its_final_evaluation_logs_it_once(train):
    """A run stopped between its last checkpoint and results.json (SIGTERM or SIGKILL while it evaluates at the end)
    is resumed: it only evaluates and writes the missing files. The stopped process's eval/* scalars at the last
    step stay, so tensorboard holds two of each at that step (eval/knn_top1 at [3, 3]), unlike its twin."""
    flags = [*TINY, "--max-steps", 3, "--save-every", 1]
    t = train(simclr, *flags, images=64)
    (t.dir / "results.json").unlink()  # as if stopped after the evaluation was logged
    train(simclr, *flags, "--resume", t.dir / "last.pt", images=64)
    assert [e.step for e in events(t.dir).Scalars("eval/knn_top1")] == [3]


def test_a_run_resumed_only_to_finish_checkpoints_the_position_and_lr_it_stopped_at(train):
    """Killed during its final evaluation (after its last checkpoint, before the one that says the evaluation is
    logged), a run is resumed to finish: its last.pt must be the state it stopped in, as its twin's is. Two full soaks
    of 2026-12-07 (afternoon) found epoch 0, batch 0 and the base lr there (then iBOT's base weight decay): the process
    trains no step, so its position was never set, and the flags' lr and weight decay replace the scheduled ones."""
    flags = [*TINY, "--max-steps", 3, "--save-every", 1, "--warmup-epochs", 0]
    t = train(simclr, *flags, images=64)
    path = t.dir / "last.pt"
    twin = torch.load(path, weights_only=True)
    torch.save({**twin, "final_logged": False}, path)  # as the checkpoint before the final evaluation was
    (t.dir / "results.json").unlink()
    train(simclr, *flags, "--resume", path, images=64)
    again = torch.load(path, weights_only=True)
    assert again["final_logged"] and (again["step"], again["epoch"], again["batch_in_epoch"]) == (3, 1, 1)
    assert (twin["epoch"], twin["batch_in_epoch"]) == (again["epoch"], again["batch_in_epoch"])
    for group, twin_group in zip(again["optimizers"][0]["param_groups"], twin["optimizers"][0]["param_groups"]):
        assert group["lr"] == twin_group["lr"] < group["base_lr"]  # the cosine schedule's value at step 3, not base


def test_a_signal_between_the_final_scalars_and_their_checkpoint_waits_for_the_checkpoint(train, monkeypatch,
                                                                                             tmp_path):
    """SIGINT (Ctrl-C) arrives while the final checkpoint is written, after the final scalars went to tensorboard: the
    checkpoint completes first (it says the scalars are logged), then the run stops; resumed, it logs them not again.
    The soak of BYOL under torchrun (2026-12-07, bb10034) found eval/* twice at the last step: rank 0 had logged them
    and waited for rank 1, killed by SIGTERM, before the checkpoint that says so."""
    flags = [*TINY, "--max-steps", 3, "--save-every", 1]
    save = common.save_checkpoint

    def interrupted_while_saving(path, state):
        if state["final_logged"]:
            signal.raise_signal(signal.SIGINT)  # signals are released at finish: Ctrl-C quits at once
        save(path, state)

    monkeypatch.setattr(common, "save_checkpoint", interrupted_while_saving)
    with pytest.raises(KeyboardInterrupt):
        train(simclr, *flags, images=64)
    monkeypatch.setattr(common, "save_checkpoint", save)
    (stopped,) = (tmp_path / "runs").iterdir()
    t = train(simclr, *flags, "--resume", stopped / "last.pt", images=64)
    assert torch.load(t.dir / "last.pt", weights_only=True)["final_logged"]
    assert [e.step for e in events(t.dir).Scalars("eval/knn_top1")] == [3]


def test_a_run_stopped_at_the_last_step_of_an_epoch_still_evaluates_that_epoch(train, monkeypatch, tmp_path):
    """SIGTERM during the last step of epoch 1 of 2 (2 steps each, --eval-every 1): the run saves after that step and
    stops; resumed, it starts epoch 2 at once and never evaluates epoch 1 (eval/knn_top1 [4, 4], not the uninterrupted
    run's [2, 4, 4]). The full soak (2026-12-07) lost SimCLR's eval/* at step 128 of 200 this way in both its runs
    (SIGINT during step 128; the checkpoint of step 128 resumed at epoch 2, batch 0). MAE's reconstruction images of
    that epoch go the same way; no weight changes (no method does more at an epoch's end)."""
    flags = [*TINY, "--eval-every", 1, "--save-every", 1]
    log = common.Run.log

    def sigterm_during_step_2(self, scalars):
        log(self, scalars)
        if self.step_count == 2 and not self.checkpoint:
            self.signals.received = signal.SIGTERM  # what the handler does when SIGTERM comes during the step

    monkeypatch.setattr(common.Run, "log", sigterm_during_step_2)
    with pytest.raises(common.UserError, match="stopped by SIGTERM at step 2"):
        train(simclr, *flags, images=64)
    (stopped,) = (tmp_path / "runs").iterdir()
    train(simclr, *flags, "--resume", stopped / "last.pt", images=64)
    assert [e.step for e in events(stopped).Scalars("eval/knn_top1")] == [2, 4, 4]  # epoch 1, epoch 2, the final one


def test_what_a_checkpoint_covers_is_in_tensorboard_when_it_is_written(train, monkeypatch):
    """A process that ends right after a checkpoint (SIGKILL, or a second Ctrl-C: "nothing saved since the last
    checkpoint") must not lose the scalars logged up to it: --resume purges only what comes after the checkpoint's
    step and never logs those again. The writer's thread keeps up to 10 events queued; here it is slowed down, as
    on a busy machine, and each checkpoint looks at what is on disk once it is written. (A race the soaks have not
    caught in the act: the scalars they lost had the cause above.)"""
    write = RecordWriter.write

    def slow(self, data):
        time.sleep(0.2)
        write(self, data)

    on_disk = []
    save = common.Run.save

    def save_and_look(self, *final_scalars):
        save(self, *final_scalars)
        curves = events(self.dir)
        logged = "losses/total" in curves.Tags()["scalars"]
        on_disk.append((self.step_count, [e.step for e in curves.Scalars("losses/total")] if logged else []))

    monkeypatch.setattr(RecordWriter, "write", slow)
    monkeypatch.setattr(common.Run, "save", save_and_look)
    train(simclr, *TINY, "--max-steps", 2, "--save-every", 1, images=64)  # at the end of epoch 1, and when finished
    assert on_disk == [(2, [1, 2]), (2, [1, 2])], on_disk


def test_a_directory_that_is_no_run_is_caught(tmp_path):
    for folder in ("runs/00-simclr", "twins/00-simclr", "aside/00-simclr.1", "runs/stray", "logs"):
        (tmp_path / folder).mkdir(parents=True)
    assert soak_checks.strays(tmp_path, ["00-simclr"], ["00-simclr.1"]) == [
        f"{tmp_path / 'runs' / 'stray'}: not a run of this soak nor recorded as set aside"]
    shutil.rmtree(tmp_path / "runs" / "stray")
    (tmp_path / "extra").mkdir()
    assert len(soak_checks.strays(tmp_path, ["00-simclr"], [])) == 2  # extra/ and the unrecorded aside
