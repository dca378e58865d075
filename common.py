"""Where a method file's reader lands: every `common.` and `run.` name a method file uses, read top to bottom.
Nothing here is part of a method's algorithm (read a method first). Contents:
  1. the names a method file uses, re-exported from the plumbing/ module that owns each (one topic per module);
  2. the command line: `cli` runs a method's main(args) and turns a UserError into one line and an exit code;
  3. `Run`, which drives the loop: epochs, batches, learning rate, autocast, logging, checkpoints, evaluation, finish.
A method file imports common alone; copying a method takes the method file, common.py, estimators.py and plumbing/."""
import dataclasses
import json
import signal
import sys
import time
from pathlib import Path
from typing import List, Literal

try:  # the slow imports (seconds; method files import common first): Ctrl-C meanwhile exits 130, no traceback
    import numpy as np
    import torch
    import torch.nn as nn
    import tyro

    from plumbing import evaluation, runlog
    from plumbing.augment import Augment, ViewSpec, multicrop  # noqa: F401  (common.ViewSpec... in method files)
    from plumbing.backbones import ViT, build_backbone, check_patch_size, compile_networks, default_patch  # noqa: F401
    from plumbing.backbones import TinyResNet, mlp  # noqa: F401
    from plumbing.checkpoints import (Saver, StopSignals, changes_since, checkpoint_state, first_nonfinite, is_complete,
                                      last_good, load_checkpoint, restore, resume_position, save_checkpoint)
    from plumbing.data import DatasetName, Decoder, load_data  # noqa: F401
    from plumbing.distributed import (any_rank, average_gradients, broadcast, broadcast_tensors,  # noqa: F401
                                      device_name, end_process_group, gather, init_distributed, pick_precision, rank,
                                      set_determinism, world_size)
    from plumbing.errors import UserError, refuse_out_of_range
    from plumbing.evaluation import OnlineProbe, finetune
    from plumbing.optim import cosine_schedule, linspace_warmup, make_optimizer, param_groups  # noqa: F401
    from plumbing.optim import warmup_cosine
except KeyboardInterrupt:
    sys.exit(130)

BackboneName = Literal["resnet18", "resnet50", "tiny", "vit_mini", "vit_tiny", "vit_small"]
OptimizerName = Literal["lars", "sgd", "adamw"]
Precision = Literal["auto", "fp32", "bf16", "fp16"]
Tensor = torch.Tensor
LOWEST = dict(epochs=1, batch_size=2, lr=1e-12, weight_decay=0, warmup_epochs=0, max_steps=0, eval_every=0,
              mi_every=0, save_every=0, save_every_minutes=0, patch_size=0, finetune_epochs=0, workers=0)


def cli(main, args_cls):
    """Parse the command line with tyro and run main(args), alone or as one of torchrun's processes. A UserError is one
    line and its exit code; any other exception (a bug) keeps its traceback, exit 1 at once (imagefiles.end_workers)."""
    try:
        args = tyro.cli(args_cls)
    except BrokenPipeError:  # `--help | head`: the reader left; quiet, as other command-line tools
        runlog.silence_stdout()
        sys.exit(0)
    try:
        main(args)
    except UserError as e:
        who = f"[rank {rank()}] " if rank() else ""
        kind = "error: " if 0 < e.code < 3 else ""
        print(f"{who}{kind}{e}", file=sys.stderr)
        sys.exit(e.code)
    except KeyboardInterrupt:
        print("interrupted: nothing saved since the last checkpoint", file=sys.stderr)
        sys.exit(130)
    end_process_group()


class Run:
    """Everything around a method's training loop: processes, seed, device, data, run directory and tensorboard,
    learning-rate schedule, precision, evaluation, metrics, checkpoints, resume, interruptions. It yields batches,
    sets the lr, evaluates, logs and saves; every forward, backward, step and weight change is in the method file:
        run.track(model, optimizer, backbones, probe); run.restart_from_checkpoint()
        for epoch in run.epochs():
            for x, y in run.batches(epoch): views, forward, loss, zero_grad, backward, step, run.log({...})
        run.finish()
    """

    def __init__(self, args, method: str):
        self.args = args
        self.method = method
        self.t0 = time.time()
        refuse_out_of_range(args, LOWEST)
        self.device = init_distributed(args.device)
        self.rank = rank()
        self.world = world_size()
        self.rank0 = self.rank == 0  # rank 0 prints and writes the run directory
        if args.batch_size % self.world:
            raise UserError(f"--batch-size {args.batch_size} (global) is not a multiple of the {self.world} processes.")
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)  # the same initial weights on every rank
        set_determinism(args.deterministic)
        self.checkpoint = load_checkpoint(args.resume, method, args) if args.resume else None
        self.dir, error = runlog.choose_run_dir(args, method, args.resume, self.rank0)
        if error:
            raise UserError(error)
        self.data = load_data(args.dataset, args.data_dir, args.seed, self.device, args.workers, args.decode)
        self._check_data()
        self.steps_per_epoch = len(self.data) // args.batch_size
        self.total_steps = args.epochs * self.steps_per_epoch  # what the lr / EMA / temperature schedules span
        self.stop_step = min(self.total_steps, args.max_steps or self.total_steps)
        if is_complete(self.checkpoint, self.stop_step, self.dir, args.resume, self.rank0):
            raise UserError(f"{args.resume}: the run is already complete; a larger --max-steps or --epochs extends "
                            "it.", 0)
        precision = pick_precision(args.precision, self.device)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=precision == "fp16")  # fp16 only; its step syncs
        self.channels_last = not args.backbone.startswith("vit")  # faster convolutions on CUDA and on CPU (oneDNN)
        self.gen = torch.Generator(device=self.device)  # augmentation: reseeded from (seed, step) at every step
        self.step_count = 0  # in the loop: the step being taken, 1-based (step_count - 1 are done)
        self.epoch = 0
        self.start_epoch = 0  # where this process began (a resumed run: the checkpoint's position)
        self.start_batch = 0
        self.batch_in_epoch = 0
        self.done = False  # the last step (--max-steps or the last epoch's) is taken
        self.resumed_mid_epoch = False  # this epoch began before the checkpoint this run resumed from
        self.restored = False  # run.restart_from_checkpoint() was called: the loop may start
        self.saver = Saver(self.dir)
        self.signals = StopSignals(self.print)
        self.scalars = runlog.ScalarLog()
        self.writer = None  # rank 0's tensorboard SummaryWriter, from the first epoch on
        self.view_specs = None  # the ViewSpecs of run.augment
        self.progress = runlog.Progress()  # views/s and when the progress line is due
        self.saved = time.time()  # when the last checkpoint was written (--save-every-minutes)
        self.minutes_before = 0.0  # a resumed run: the minutes of its earlier parts
        self.final_logged = False  # the final evaluation is in tensorboard (a run resumed only to finish: not again)
        self.final_scalars = {}  # the final evaluation's eval/* scalars, logged together
        self.last_checkpoint = None
        self.grid = None
        self.embedding = None
        self.results = {}
        self.print(runlog.header_line(method, args, self.data, self.device, precision, self.world, self.stop_step,
                                      self.dir))

    def _check_data(self):
        args = self.args
        if len(self.data) < args.batch_size:
            raise UserError(f"--batch-size {args.batch_size} exceeds the {len(self.data)} training images of "
                            f"{args.dataset}.")
        check_patch_size(args.backbone, self.data.image_size, args.patch_size, args.dataset)
        mine = (len(self.data), self.data.num_classes, self.data.image_size, sorted(dataclasses.asdict(args).items()))
        if self.world > 1 and any_rank(broadcast(mine) != mine):
            raise UserError("the processes disagree on the data or the flags (the same files and command everywhere?).")

    def print(self, *parts):
        """Print on rank 0's stdout; once stdout is closed (`| head`, a closed terminal), what cannot be printed is
        dropped."""
        if not self.rank0:
            return
        try:
            print(*parts, flush=True)
        except OSError:  # BrokenPipeError, or EIO from a terminal that hung up
            runlog.silence_stdout()

    def shard(self, t: Tensor) -> Tensor:
        """This rank's rows of a tensor drawn for the global batch (e.g. masks drawn with run.gen)."""
        share = len(t) // self.world
        return t[self.rank * share:(self.rank + 1) * share]

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 images -> normalized float (the un-augmented evaluation input)."""
        mean = torch.tensor(self.data.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.data.std, device=x.device).view(1, 3, 1, 1)
        y = (x.float() / 255 - mean) / std
        return y.contiguous(memory_format=torch.channels_last) if self.channels_last else y

    def augment(self, views: List[ViewSpec]) -> Augment:
        """The batched augmentation of these views. Also fixes the held-out pair of views on which MI and dimensionality
        are measured all run long, and a grid of images with their views for tensorboard (images/views)."""
        self.view_specs = views
        self.fixed_pair = evaluation.held_out_pair(self.data, views, self.channels_last)  # the same on every rank
        self.grid = runlog.views_grid(self.data, views, self.normalize)
        return Augment(views, self.data.mean, self.data.std, self.channels_last, (self.rank, self.world))

    def prepare(self, model: nn.Module) -> nn.Module:
        """To the device (channels_last for conv nets), SyncBatchNorm across processes with --sync-bn; with --compile,
        torch.compile of every network a method calls: the model's parts, the members of a part that is a Sequential,
        and each backbone (ViT.tokens runs through its forward: compiled too); in place."""
        model = model.to(self.device, memory_format=torch.channels_last if self.channels_last else None)
        if self.args.sync_bn and self.world > 1 and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif self.args.sync_bn and self.world > 1:  # SyncBatchNorm runs on GPUs only
            self.print("--sync-bn is off: SyncBatchNorm needs GPUs (BatchNorm uses each process's share of the batch)")
        if self.args.compile:
            compile_networks(model)
        return model

    def track(self, model: nn.Module, optimizers, backbones: dict, probe: OnlineProbe, branches=None):
        """Register what a checkpoint holds: model (every parameter and buffer: queues, centers, memories), optimizer(s)
        and the online probe; `backbones` {name: (backbone, project R -> Z)} are evaluated, the first as the main one
        (no tag suffix, online probe, backbone.pt); `branches` (online, target): the two networks (images ->
        embeddings) whose outputs on two views the objective compares, if not one network. Changes nothing."""
        self.model = model
        self.probe = probe
        self.backbones = backbones
        self.branches = branches
        self.optimizers = list(optimizers) if isinstance(optimizers, (list, tuple)) else [optimizers]

    def restart_from_checkpoint(self):
        """With --resume: the tracked model, optimizers, online probe and loss scale as saved, the RNG state, and the
        loop's position (step, epoch, batch); flags changed since are honoured and printed. Without: nothing."""
        self.restored = True
        state = self.checkpoint
        if state is None:
            return
        restore(state, self.model, self.optimizers, self.probe, self.scaler, self.args.resume)
        self.step_count, self.start_epoch, self.start_batch = resume_position(state, self.steps_per_epoch)
        self.last_checkpoint = Path(self.args.resume)
        self.saver.kept = [f"last.pt (step {state['step']})"]
        self.minutes_before = state.get("minutes", 0.0)
        self.final_logged = state.get("final_logged", False) and self.step_count >= self.stop_step  # not if extended
        self.print(f"resumed from {self.args.resume} at step {self.step_count} (epoch {self.start_epoch + 1}, batch "
                   f"{self.start_batch}){changes_since(state, self.world)}")

    # -- the loop
    def epochs(self):
        """The epochs left (from a resumed run's); after each: progress, evaluation and checkpoint when due."""
        self._open()
        end = self.args.epochs if self.step_count < self.stop_step else 0  # resumed at the end: no epoch left
        for epoch in range(self.start_epoch, end):
            self.epoch = epoch
            self.resumed_mid_epoch = epoch == self.start_epoch and self.start_batch > 0
            yield epoch
            self.flush(force_print=True)
            last = epoch == self.args.epochs - 1 or self.done
            if self.args.eval_every and ((epoch + 1) % self.args.eval_every == 0 or last):
                self.evaluate()
            if self.args.save_every and ((epoch + 1) % self.args.save_every == 0 or last):
                self.save()
            if self.done:
                break
            self._save_or_stop_if_asked()  # so that a checkpoint at an epoch's end follows its evaluation

    def _open(self):
        """The loop starts: the run directory and tensorboard writer (rank 0), and the stop signals caught."""
        if not self.restored:  # a method file that forgot the line would train from scratch in the resumed directory
            raise RuntimeError("call run.restart_from_checkpoint() after run.track(...) and before run.epochs()")
        with self.saver.writing("the run directory and its tensorboard events"):
            if self.rank0:
                resumed_at = self.step_count if self.checkpoint else None
                self.writer = runlog.open_run_dir(self.dir, self.args, resumed_at, self.grid)
        self.signals.catch()

    def batches(self, epoch: int):
        """This rank's training batches of one epoch, from where a resumed run stopped: (uint8 images, or a padded batch
        for large images; labels, -1 = none); `run.batch_index` holds their dataset indices; `run.step_count` is 1-based
        (the step being taken; step_count - 1 were done). Between steps: metrics, time checkpoints, SIGINT / SIGTERM."""
        args = self.args
        start = self.start_batch if epoch == self.start_epoch else 0
        steady = None  # (time, step) from the epoch's 4th step on, when compilation and autotuning are done
        batches = self.data.ssl_batches(args.batch_size, epoch, args.seed, start)
        for i, (x, y, self.batch_index) in enumerate(batches, start):
            self.step_count += 1
            self.batch_in_epoch = i + 1
            self.gen.manual_seed(args.seed * 1_000_003 + self.step_count)
            yield x, y
            self.progress.views += args.batch_size * len(self.view_specs)
            if i - start == 2:
                steady = (self._sync(), self.step_count)
            if args.mi_every and self.step_count % args.mi_every == 0:
                self.flush()
                self.log_representation()
            last_of_epoch = self.batch_in_epoch == self.steps_per_epoch  # asked after the epoch's end (epochs())
            if (self.world == 1 or self.step_count % 50 == 0) and not last_of_epoch:  # processes: a collective
                self._save_or_stop_if_asked()
            if self.step_count >= self.stop_step:
                self.done = True
                break
        if steady and self.step_count > steady[1]:
            views = (self.step_count - steady[1]) * args.batch_size * len(self.view_specs)
            self.results["views_per_sec"] = views / (self._sync() - steady[0])

    def _save_or_stop_if_asked(self):
        """A checkpoint every --save-every-minutes; after SIGINT / SIGTERM, a checkpoint and a stop (on every rank)."""
        minutes = self.args.save_every_minutes
        due = self.rank0 and minutes and time.time() - self.saved > 60 * minutes
        stop = any_rank(self.signals.received is not None)
        save = any_rank(bool(due))
        if stop or save:
            self.save()
        if stop:
            sig = signal.Signals(self.signals.received or signal.SIGTERM)  # another rank's signal: SIGTERM
            raise UserError(f"stopped by {sig.name} at step {self.step_count}; checkpoint {self.last_checkpoint}; "
                            f"continue with --resume {self.last_checkpoint}", 128 + sig.value)

    def _sync(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def update_lr(self, *optimizers) -> float:
        """Set each param group's lr to base_lr x warmup-cosine factor (groups with fixed_lr=True keep base_lr)."""
        warmup = round(self.args.warmup_epochs * self.steps_per_epoch)
        factor = warmup_cosine(self.step_count - 1, self.total_steps, warmup)
        optimizers = optimizers or self.optimizers
        for optimizer in optimizers:
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * (1.0 if group.get("fixed_lr") else factor)
        return optimizers[0].param_groups[0]["lr"]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def log(self, scalars: dict):
        """Log this step's scalars {tensorboard tag: tensor or number}, e.g. {"losses/total": loss}; written in batches
        of 50 steps, so logging costs no device sync."""
        self.scalars.add(self.step_count, scalars)
        if len(self.scalars) >= 50:
            self.flush()

    def flush(self, force_print=False):
        """Write pending scalars, then stop if a loss is not finite (on every rank), print the progress line (~10 s)."""
        rows = self.scalars.read(self.device)
        now = time.time()
        if rows and self.rank0:
            views_per_sec = self.progress.rate(now)
            with self.saver.writing("tensorboard's scalars"):
                for step, tag, value in rows:
                    self.writer.add_scalar(tag, value, step)
                self.writer.add_scalar("charts/views_per_sec", views_per_sec, self.step_count)
        bad = runlog.first_nonfinite_loss(rows)
        if any_rank(bad is not None):
            tag, value, step = bad or ("a loss of another rank", "not finite", "?")
            raise UserError(f"{tag} is {value} at step {step}: training diverged. "
                            f"{last_good(self.last_checkpoint, self.dir)}. Try a lower --lr or --precision fp32.")
        if rows and self.rank0 and self.progress.due(now, force_print):
            done = self.step_count - self.start_epoch * self.steps_per_epoch - self.start_batch  # by this process
            eta = (now - self.t0) / max(1, done) * (self.stop_step - self.step_count)
            latest = {tag: value for _, tag, value in rows}
            self.print(runlog.progress_line(self.epoch, self.args.epochs, self.step_count, self.stop_step, latest,
                                            views_per_sec, eta))

    # -- evaluation
    def log_representation(self):
        """On the fixed held-out pair of views (rank 0): mi/* between the embeddings the objective compares (the
        branches: online(view 1), target(view 2); else one network's Z of both views), dimensionality of each tracked
        network (dim/*, suffix _name) and, with branches, each network's Z of both views as mi_same/*."""
        if not self.rank0:
            return
        with evaluation.evaluating(self.model, sync=False):
            scalars = evaluation.representation_scalars(self.backbones, self.branches, self.fixed_pair, self.autocast)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, self.step_count)
        self.progress.tick = time.time()  # evaluation is not training time

    def evaluate(self, final: bool = False):
        """kNN top-1 of each tracked backbone and the online probe's test top-1 (on the first, main backbone's
        features); at the end (final) also the linear probe, H(R) and I(R;Z), printed with their protocols."""
        with evaluation.evaluating(self.model):  # rank 0's BN statistics on every rank, as DDP does
            for position, (name, (backbone, project)) in enumerate(self.backbones.items()):
                self._evaluate(final, position, name, backbone, project)
        self.progress.tick = time.time()  # evaluation is not training time

    def _evaluate(self, final: bool, position: int, name: str, backbone: nn.Module, project: nn.Module):
        """One tracked backbone's scores: printed, kept for results.json and logged (once: see final_logged)."""
        main = position == 0
        suffix = "" if main else f"_{name}"
        features = evaluation.backbone_features(backbone, self.data, self.normalize, self.autocast)
        scores = evaluation.knn_and_online_scores(features, self.data.num_classes, self.probe if main else None)
        if final:
            scores.update(evaluation.final_scores(backbone, project, features, self.data.num_classes,
                                                  self.fixed_pair, self.autocast, self.args.seed))
            dims = min(len(self.fixed_pair[0]), features.train.shape[1])
            self.print(evaluation.final_report(name, scores, dims))
        else:
            self.print(evaluation.progress_report(self.epoch, suffix, scores))
        self.results.update({key + suffix: value for key, value in scores.items()})
        if final and main:  # for tensorboard's projector (PCA / t-SNE of test features with labels), written last
            self.embedding = evaluation.projector_embedding(features, self.data)
        logged = {f"eval/{key}{suffix}": scores[key] for key in ("knn_top1", "online_linear_top1", "linear_top1")
                  if key in scores}
        if final:
            self.final_scalars.update(logged)  # logged together at the end of finish()
        elif self.rank0:
            for tag, value in logged.items():
                self.writer.add_scalar(tag, value, self.step_count)

    def save(self, final_scalars: dict = None):
        """Checkpoint of a finite state (every rank checks, rank 0 writes atomically): model, optimizers, probe, step,
        position in the epoch, args, RNG states. A non-finite state stops the run and never replaces a checkpoint.
        final_scalars (finish): logged right before the checkpoint that says so, SIGINT and SIGTERM deferred."""
        self.flush()
        bad = first_nonfinite(self.model, self.probe)
        if any_rank(bad is not None):
            raise UserError(f"{bad or 'a parameter of another rank'} is not finite at step {self.step_count}: training "
                            f"diverged; not saved. {last_good(self.last_checkpoint, self.dir)}. Try a lower --lr.")
        position = dict(step=self.step_count, epoch=self.epoch, batch_in_epoch=self.batch_in_epoch,
                        minutes=self.minutes_before + (time.time() - self.t0) / 60, final_logged=self.final_logged)
        with self.saver.writing(f"last.pt of step {self.step_count}"):
            if self.rank0:
                with self.signals.deferred(final_scalars is not None):  # never the scalars without their checkpoint
                    for tag, value in (final_scalars or {}).items():
                        self.writer.add_scalar(tag, value, self.step_count)
                    self.writer.flush()  # what the checkpoint covers is in tensorboard first: a resume never logs it
                    state = checkpoint_state(self.method, self.model, self.optimizers, self.probe, self.scaler,
                                             position, self.world, self.args, resumed_from=self.checkpoint)
                    save_checkpoint(self.dir / "last.pt", state)
        self.last_checkpoint = self.dir / "last.pt"
        self.saved = time.time()
        self.saver.kept = [f"last.pt (step {self.step_count})"]

    def finish(self):
        """Final evaluation of each backbone (and fine-tuning with --finetune-epochs), backbone.pt, results.json."""
        self.signals.release()
        self.flush(force_print=True)
        args = self.args
        epochs = min(args.epochs, -(-self.step_count // self.steps_per_epoch))  # the epochs begun
        self.print(f"== {self.method} on {args.dataset}: {args.backbone}, {epochs} epochs, {self.step_count} steps, "
                   f"seed {args.seed} ==")
        name, (backbone, _) = next(iter(self.backbones.items()))  # the main result: the first tracked backbone
        # the projector's embedding is the largest file, written last
        with self.saver.writing("backbone.pt", "results.json", "tensorboard's projector"):
            self.evaluate(final=True)
            if args.finetune_epochs:
                self._finetune(name, backbone)
            if self.last_checkpoint is not None and not self.final_logged:  # resumed to finish, it logs them not again
                self.final_logged = True
                self.save(self.final_scalars)
            elif self.rank0 and not self.final_logged:  # no checkpoint (--save-every 0, no stop) to say they are logged
                for tag, value in self.final_scalars.items():
                    self.writer.add_scalar(tag, value, self.step_count)
            if self.rank0 and first_nonfinite(backbone) is None:
                save_checkpoint(self.dir / "backbone.pt", {k: v.cpu() for k, v in backbone.state_dict().items()})
                self.saver.kept.append("backbone.pt")
            self.results.update(method=self.method, dataset=args.dataset, backbone=args.backbone, seed=args.seed,
                                epochs=epochs, steps=self.step_count, processes=self.world,
                                minutes=self.minutes_before + (time.time() - self.t0) / 60,  # every part of the run
                                device=device_name(self.device), views_per_image=len(self.view_specs),
                                batch_size=args.batch_size)
            if self.rank0:
                (self.dir / "results.json").write_text(json.dumps(self.results, indent=1))
                self.saver.kept.append("results.json")
                self.writer.add_embedding(**self.embedding, global_step=self.step_count, tag="backbone_features")
                self.writer.close()
        self.print(f"backbone: {self.dir / 'backbone.pt'}   checkpoint: {self.last_checkpoint}   tensorboard --logdir "
                   f"{self.dir.parent}")
        return self.results

    def _finetune(self, name: str, backbone: nn.Module):
        """--finetune-epochs: a copy of the backbone fine-tuned end to end (FINETUNE_PROTOCOL), its test top-1."""
        args = self.args
        pool = getattr(args, "finetune_pool", "cls")
        scaler = torch.amp.GradScaler(self.device.type, enabled=self.scaler.is_enabled())
        top1 = finetune(backbone, self.probe.fc.in_features, self.data, self.normalize, self.autocast, scaler,
                        args.finetune_epochs, args.batch_size, args.seed, pool)
        self.results["finetune_top1"] = top1
        self.final_scalars["eval/finetune_top1"] = top1
        self.print(evaluation.finetune_report(name, top1, args.finetune_epochs, pool))

