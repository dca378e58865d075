"""Soak: several small runs at once, and a two-process torchrun run, stopped again and again by SIGTERM, SIGINT (once
or twice) and SIGKILL at random times and resumed with --resume until each completes; then every run must end with
the weights of an uninterrupted twin, and no directory may hold a partial or mixed run (issue 30, "nothing lost").

    python soak.py --help
    python soak.py --minutes 10 --out /tmp/soak                  # the full soak (docs/reliability.md, its figures)
    python soak.py --minutes 0.1 --methods simclr byol --jobs 4 --steps 60 --faults-per-run 1 --window 4 --out /tmp/q

What it does
- The runs: each method of --methods (in turn, again while time is left), --steps steps of batch 32 on synthetic
  data (128 steps per epoch: a run of 200 steps stops in the middle of its second epoch), small heads, a checkpoint
  every epoch and every --save-every-minutes, one CPU thread per process (the same thread count makes the same
  floating-point reductions: bit-identical results); the methods cover the state a resume restores: EMA targets
  (BYOL, DINO, iBOT), queues (MoCo v2, SwAV), a support set (NNCLR), a memory with k-means each epoch (DeepCluster
  v2), ViT multi-crop and masks (DINO-ViT, iBOT, MAE), per-epoch evaluation and MI estimates between steps
  (SimCLR). Besides them, one --torchrun run at a time: two processes (gloo) under torchrun.
- Each run has an uninterrupted twin: the same command, never signalled, run beside it.
- The faults: at most --faults-per-run per run. After each (re)start the run draws when its next fault comes: most
  within --window seconds of training (the moment its process opens a new tensorboard file), one in five while the
  process is still starting (importing torch, making the data: before the run catches signals). The signal comes
  from a shuffled deck (every three faults send SIGTERM, SIGINT and SIGKILL once each), the way it is sent at
  random: SIGINT once or twice (the second 0.05 to 1 s after the first: the run quits at once); under torchrun,
  SIGTERM to torchrun (it forwards it) or to one of its two processes, SIGINT to torchrun, SIGKILL to one process
  (torchrun stops the other) or to all three (a machine that dies).
- After a fault: the run's last.pt exists, so the same command continues with --resume DIR/last.pt; or the process
  died before its first checkpoint: its directory (tensorboard's first events, perhaps a half-written *.tmp, nothing
  trained) is moved to OUT/aside/, recorded, and the run starts again from scratch in a new directory of the same
  name (--run-dir must not exist). A process that exits with an error nobody caused, or that does not exit within
  --hang-minutes, loses its run.
- New runs start while the longest run so far would still end within --minutes; the runs in flight then finish.
- The checks: every run completed (results.json, backbone.pt, last.pt at the last step, its own seed and method,
  one or two processes); backbone.pt and last.pt (model, optimizers, online probe, position, RNG state) equal to
  the twin's, tensor by tensor (torch.equal); in tensorboard (EventAccumulator), losses/total's steps strictly
  increase and every scalar but views/s has the twin's steps (none lost, none twice) and values (resume purges what
  a stopped process logged after its checkpoint); no *.tmp in a run; nothing under OUT but runs/ (the runs),
  twins/, aside/ (each entry recorded) and logs/.
Writes OUT/soak.json (the figures, every fault with what followed, every problem), prints one summary line and
exits 1 if a run was lost, a run differs from its twin or a check failed.
"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional

import torch
import tyro

from soak_checks import compare_curves, compare_runs, complete, strays

ROOT = Path(__file__).resolve().parent
SYNTHETIC_STEPS_PER_EPOCH = 4096 // 32  # synthetic's training images at batch 32
STARTUP_SHARE = 0.2  # the share of faults sent while the process starts, before it catches signals
SIGNALS = ["SIGTERM", "SIGINT", "SIGKILL"]  # the deck: every three faults send each signal once
# the faults of each signal, of a single-process run and of a torchrun run, one drawn at random
SINGLE_FAULTS = {"SIGTERM": ["SIGTERM"], "SIGINT": ["SIGINT", "SIGINT twice"], "SIGKILL": ["SIGKILL"]}
TORCHRUN_FAULTS = {"SIGTERM": ["SIGTERM to torchrun", "SIGTERM to a rank"], "SIGINT": ["SIGINT to torchrun"],
                   "SIGKILL": ["SIGKILL to a rank", "SIGKILL to all (machine lost)"]}
HEADS = {"--proj-hidden-dim": 256, "--proj-output-dim": 64}  # small heads: a step is the backbone's
VIT = {"--backbone": "vit_mini", "--patch-size": 8, "--num-local-crops": 2, "--proj-hidden-dim": 256,
       "--warmup-teacher-temp-epochs": 1}
# each method's own flags: the state its resume must restore comes early in a short run
METHOD_FLAGS = {  # in the order the soak takes them: the most kinds of state first
    "simclr": {**HEADS, "--eval-every": 1, "--mi-every": 50},  # evaluation and MI between steps change nothing
    "deepcluster_v2": {**HEADS, "--num-prototypes": [30, 30]},  # memory, k-means at each epoch's start
    "moco_v2": {**HEADS, "--queue-size": 256},  # a queue that wraps every 8 steps
    "ibot": {**VIT, "--out-dim": 256, "--pred-start-epochs": 0.5},  # EMA teacher, centers, masks from step 65
    "swav": {**HEADS, "--queue-size": 256, "--queue-start-epoch": 1, "--num-prototypes": 30,
             "--freeze-prototypes-epochs": 1},  # queue and prototype updates from epoch 2
    "byol": {**HEADS, "--pred-hidden-dim": 256},  # EMA target
    "nnclr": {**HEADS, "--pred-hidden-dim": 256, "--queue-size": 512},  # support set
    "mae": {"--backbone": "vit_mini", "--patch-size": 8, "--decoder-dim": 64, "--decoder-depth": 1,
            "--decoder-heads": 4, "--finetune-epochs": 0},  # random masks
    "dino_vit": {**VIT, "--num-prototypes": 256},  # EMA teacher, center, multi-crop
}
MethodName = Literal["simclr", "byol", "moco_v2", "nnclr", "deepcluster_v2", "swav", "dino_vit", "ibot", "mae"]


@dataclass
class Args:
    minutes: float = 10.0
    """new runs start while the longest run so far would still end within this time; those in flight then finish"""
    seed: int = 0
    """seed of the fault schedule (which fault, how long after a start; the runs' seeds are their numbers)"""
    out: str = "runs/soak"
    """the soak's folder, which must not exist or be empty: runs/, twins/, aside/, logs/, soak.json"""
    jobs: int = 3
    """single-process runs (a faulted run or a twin) at once, besides one torchrun run and its twin"""
    methods: List[MethodName] = field(default_factory=lambda: list(METHOD_FLAGS))
    """the single-process runs' methods, taken in turn"""
    torchrun: Literal["simclr", "byol", "none"] = "simclr"
    """method of the two-process torchrun runs (none: no torchrun run)"""
    steps: int = 200
    """--max-steps of every run (epochs of 128 steps: --epochs is the number begun)"""
    faults_per_run: int = 4
    """faults sent to a run at most; then it runs to its end"""
    window: float = 60.0
    """a fault while training comes within this many seconds after the process opens its tensorboard file"""
    save_every_minutes: float = 0.05
    """the runs' --save-every-minutes (besides --save-every 1): what a SIGKILL loses"""
    hang_minutes: float = 5.0
    """a process still running this long after its fault (or 6 times as long after its start, without one) hung"""


@dataclass
class Plan:
    """One run: its name (its directory's), method, flags and whether it runs under torchrun."""
    name: str
    method: str
    flags: List[str]
    torchrun: bool
    seed: int


@dataclass
class Job:
    """One line of processes: a faulted run (started again and again until it completes) or its twin."""
    plan: Plan
    twin: bool
    dir: Path
    rng: random.Random
    attempt: int = 0  # processes started so far
    resume: bool = False  # the next process continues from last.pt
    popen: Optional[subprocess.Popen] = None
    log: Optional[object] = None
    began: float = 0.0  # when the run's first process started
    started: float = 0.0  # when this process started
    events_before: int = 0  # tensorboard files in the directory when this process started
    training_since: Optional[float] = None  # when this process opened its tensorboard file
    fault_phase: str = ""  # this process's fault: "startup", "training" or "" (none)
    fault_delay: float = 0.0
    fault_at: Optional[float] = None
    fault: Optional[dict] = None  # the fault sent to this process
    second_sigint_at: Optional[float] = None
    faults: List[dict] = field(default_factory=list)
    resumes: int = 0
    restarts: int = 0
    wall: float = 0.0
    done: bool = False
    lost: str = ""  # why the run is lost, if it is


def run_flags(method: str, steps: int, seed: int, save_every_minutes: float) -> List[str]:
    flags = {"--dataset": "synthetic", "--backbone": "tiny", "--batch-size": 32,
             "--epochs": -(-steps // SYNTHETIC_STEPS_PER_EPOCH), "--max-steps": steps, "--warmup-epochs": 1,
             "--eval-every": 0, "--mi-every": 0, "--save-every": 1, "--save-every-minutes": save_every_minutes,
             "--device": "cpu", "--seed": seed, **METHOD_FLAGS[method]}
    words = []
    for name, value in flags.items():
        values = value if isinstance(value, list) else [value]
        words += [name, *map(str, values)]
    return words


def command(plan: Plan, where: List[str]) -> List[str]:
    script = str(ROOT / "methods" / f"{plan.method}.py")
    if plan.torchrun:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
        return [*launcher, script, *plan.flags, *where]
    return [sys.executable, script, *plan.flags, *where]


def event_files(directory: Path) -> int:
    return len(list(directory.glob("events.out.tfevents.*"))) if directory.is_dir() else 0


def checkpoint_step(path: Path):
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)["step"]


def children(pid: int, running: str = "") -> List[int]:
    """The processes whose parent is `pid` and whose command line holds `running` (torchrun's ranks run the method
    file; while it imports torch, torchrun may have short-lived helpers), from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            line = (stat.parent / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid and running in line:
            found.append(int(stat.parent.name))
    return sorted(found)


def deliver(pid: int, sig: signal.Signals, group: bool = False) -> bool:
    """Send a signal to a process (or its process group); False if it has ended meanwhile."""
    try:
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_tree(pid: int) -> bool:
    """SIGKILL to a process and its children's process groups (torchrun starts each rank in a session of its own):
    stopped first, so that it starts no child meanwhile."""
    deliver(pid, signal.SIGSTOP)
    for child in children(pid):
        deliver(child, signal.SIGKILL, group=True)
    return deliver(pid, signal.SIGKILL, group=True)


class Soak:
    """The runs, their processes and the faults sent to them; `tick` moves everything on by one look."""

    def __init__(self, args: Args, out: Path):
        self.args = args
        self.out = out
        self.t0 = time.time()
        self.rng = random.Random(args.seed)
        self.deck = []  # the signals still to deal
        self.pools = {False: [], True: []}  # the jobs running
        self.queues = {False: [], True: []}  # the jobs of runs already begun, waiting for a slot
        self.slots = {False: args.jobs, True: 0 if args.torchrun == "none" else 2}
        self.count = 0  # runs planned
        self.jobs: List[Job] = []
        self.aside: List[dict] = []
        self.problems: List[str] = []

    def deal(self, torchrun: bool) -> str:
        """The next fault: the deck's next signal, sent in one of the ways a run of this kind can get it."""
        if not self.deck:
            self.deck += SIGNALS
            self.rng.shuffle(self.deck)
        kinds = TORCHRUN_FAULTS if torchrun else SINGLE_FAULTS
        return self.rng.choice(kinds[self.deck.pop()])

    def plan(self, torchrun: bool) -> Plan:
        args = self.args
        singles = sum(not j.plan.torchrun and not j.twin for j in self.jobs)  # single-process runs begun
        method = args.torchrun if torchrun else args.methods[singles % len(args.methods)]
        seed = self.count
        self.count += 1
        name = f"{seed:02d}-{method}" + ("-torchrun" if torchrun else "")
        return Plan(name, method, run_flags(method, args.steps, seed, args.save_every_minutes), torchrun, seed)

    def may_begin(self, torchrun: bool, now: float) -> bool:
        """A new run begins while the longest run of its kind so far (finished, or still going) would end in time."""
        if torchrun and self.pools[True]:  # one torchrun run (and its twin) at a time: the CPUs go to the others
            return False
        runs = [j for j in self.jobs if j.plan.torchrun == torchrun and not j.twin]
        longest = max([j.wall if j.done else now - j.began for j in runs] + [0.0])
        return now + longest <= self.t0 + 60 * self.args.minutes

    def fill(self, now: float):
        for torchrun in (False, True):
            while len(self.pools[torchrun]) < self.slots[torchrun]:
                if not self.queues[torchrun]:
                    if not self.may_begin(torchrun, now):
                        break
                    plan = self.plan(torchrun)
                    for twin in (True, False):  # the twin first: with one free slot it starts, the run follows
                        rng = random.Random(f"{self.args.seed}-{plan.name}-{twin}")
                        where = "twins" if twin else "runs"
                        self.queues[torchrun].append(Job(plan, twin, self.out / where / plan.name, rng))
                job = self.queues[torchrun].pop(0)
                self.jobs.append(job)
                self.pools[torchrun].append(job)
                job.began = now
                self.start(job, now)

    def start(self, job: Job, now: float):
        job.attempt += 1
        where = ["--resume", str(job.dir / "last.pt")] if job.resume else ["--run-dir", str(job.dir)]
        role = "twin" if job.twin else f"{job.attempt}"
        job.log = open(self.out / "logs" / f"{job.plan.name}.{role}.log", "w")
        job.events_before = event_files(job.dir)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # one thread: bit-identical sums
        job.popen = subprocess.Popen(command(job.plan, where), cwd=self.out, env=env, stdout=job.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)  # its own process group
        job.started = now
        job.training_since = None
        job.fault = None
        job.fault_at = None
        job.second_sigint_at = None
        job.fault_phase = ""
        if job.twin or len(job.faults) >= self.args.faults_per_run:
            return
        if job.rng.random() < STARTUP_SHARE:
            job.fault_phase = "startup"
            job.fault_at = now + job.rng.uniform(0.5, 4.0)
        else:
            job.fault_phase = "training"
            job.fault_delay = job.rng.uniform(0.0, self.args.window)

    def send(self, job: Job, now: float):
        kind = self.deal(job.plan.torchrun)
        pid = job.popen.pid
        ranks = children(pid, f"methods/{job.plan.method}.py") if job.plan.torchrun else []
        target = "torchrun" if job.plan.torchrun else "the run"
        sig = signal.Signals[kind.split()[0]]
        if kind.endswith("a rank") and not ranks:  # torchrun has not started its ranks yet: the fault goes to it
            kind = f"{sig.name} to torchrun (no rank yet)"
        if kind in ("SIGKILL to all (machine lost)", "SIGKILL to torchrun (no rank yet)"):  # all of it
            target = "torchrun and its ranks"
            delivered = kill_tree(pid)
        elif kind.endswith("a rank"):
            rank_pid = job.rng.choice(ranks)
            target = f"rank {ranks.index(rank_pid)} of {len(ranks)}"  # by process id: rank 0 starts first
            delivered = deliver(rank_pid, sig)
        else:
            delivered = deliver(pid, sig)
        if kind == "SIGINT twice":
            job.second_sigint_at = now + job.rng.uniform(0.05, 1.0)
        training = None if job.training_since is None else round(now - job.training_since, 2)
        job.fault = {"run": job.plan.name, "process": job.attempt, "kind": kind, "signal": sig.name, "target": target,
                     "phase": job.fault_phase, "after_start_s": round(now - job.started, 2),
                     "after_training_s": training, "signals_delivered": int(delivered)}
        job.faults.append(job.fault)

    def tick(self, now: float):
        for job in [j for pool in self.pools.values() for j in pool]:
            code = job.popen.poll()
            if code is not None:
                self.ended(job, code, now)
                continue
            if job.training_since is None and event_files(job.dir) > job.events_before:
                job.training_since = now
                if job.fault_phase == "training":
                    job.fault_at = now + job.fault_delay
            if job.fault is None and job.fault_at is not None and now >= job.fault_at:
                self.send(job, now)
            elif job.second_sigint_at is not None and now >= job.second_sigint_at:
                job.second_sigint_at = None
                job.fault["signals_delivered"] += deliver(job.popen.pid, signal.SIGINT)
            if self.hung(job, now):
                kill_tree(job.popen.pid)
                job.popen.wait()
                self.ended(job, "hung", now)
        self.fill(now)

    def hung(self, job: Job, now: float) -> bool:
        """Still running --hang-minutes after its fault (it should save and stop within a step, under torchrun within
        50 steps), or 6 x --hang-minutes after its start without one."""
        if job.fault is None:
            return now - job.started > 6 * 60 * self.args.hang_minutes
        return now - job.started - job.fault["after_start_s"] > 60 * self.args.hang_minutes

    def ended(self, job: Job, code, now: float):
        """A process of the job ended: the run is complete, continues from last.pt, starts again or is lost."""
        job.log.close()
        self.pools[job.plan.torchrun].remove(job)
        fault = job.fault
        if fault is not None:
            fault["exit"] = code
        if code == 0:
            job.done = True
            job.wall = now - job.began
            if fault is not None:
                fault["then"] = "the process completed the run"
            return
        if code == "hung" or fault is None:
            job.done = True
            job.lost = f"{job.dir}: process {job.attempt} ended with {code} without a fault (logs/{job.plan.name}.*)"
            if code == "hung":
                job.lost = f"{job.dir}: process {job.attempt} hung (logs/{job.plan.name}.*)"
            self.problems.append(job.lost)
            return
        step = checkpoint_step(job.dir / "last.pt")
        job.resume = step is not None
        if job.resume:
            job.resumes += 1
            fault["then"] = f"resumed from step {step}"
        else:
            job.restarts += 1
            fault["then"] = "started again from scratch" + self.move_aside(job)
        self.pools[job.plan.torchrun].append(job)
        self.start(job, now)

    def move_aside(self, job: Job) -> str:
        """A run stopped before its first checkpoint: its directory, if it made one, goes to aside/ (it holds
        tensorboard's first events and perhaps a half-written *.tmp: nothing trained, nothing to resume)."""
        if not job.dir.exists():
            return " (it had made no directory)"
        files = sorted(str(p.relative_to(job.dir)) for p in job.dir.rglob("*") if p.is_file())
        trained = [f for f in files if f in ("last.pt", "backbone.pt", "results.json")]
        to = self.out / "aside" / f"{job.plan.name}.{job.attempt}"
        job.dir.rename(to)
        self.aside.append({"from": str(job.dir), "to": str(to), "files": files})
        if trained:
            self.problems.append(f"{to}: no last.pt but {trained}: a run without its checkpoint")
        return f" ({job.dir.name} moved to aside/{to.name})"

    def running(self) -> bool:
        return any(self.pools.values()) or any(self.queues.values())

    def kill_all(self):
        for job in [j for pool in self.pools.values() for j in pool]:
            kill_tree(job.popen.pid)


def check(soak: Soak) -> dict:
    """The end: every run complete and equal to its twin; the figures."""
    args = soak.args
    runs = [j for j in soak.jobs if not j.twin]
    twins = {j.plan.name: j for j in soak.jobs if j.twin}
    lost = [j.plan.name for j in runs if j.lost or twins[j.plan.name].lost]
    mismatched = []
    problems = list(soak.problems)
    for job in runs:
        if job.plan.name in lost:
            continue
        twin = twins[job.plan.name]
        incomplete = complete(job.dir, job.plan, args.steps) + complete(twin.dir, twin.plan, args.steps)
        if incomplete:
            lost.append(job.plan.name)
            problems += incomplete
            continue
        differences = compare_runs(job.dir, twin.dir)
        if differences:
            mismatched.append(job.plan.name)
        problems += differences
        problems += compare_curves(job.dir, twin.dir)
    problems += strays(soak.out, [j.plan.name for j in runs], [Path(a["to"]).name for a in soak.aside])
    faults = [f for j in runs for f in j.faults]
    kinds = [k for faults_of in (SINGLE_FAULTS, TORCHRUN_FAULTS) for ks in faults_of.values() for k in ks]
    by_kind = {k: sum(f["kind"] == k for f in faults) for k in dict.fromkeys(kinds + [f["kind"] for f in faults])}
    by_signal = {s: sum(f["signal"] == s for f in faults) for s in SIGNALS}
    return {"runs": len(runs), "torchrun_runs": sum(j.plan.torchrun for j in runs), "faults": len(faults),
            "faults_by_signal": by_signal, "faults_by_kind": by_kind, "resumes": sum(j.resumes for j in runs),
            "restarts_from_scratch": sum(j.restarts for j in runs), "runs_lost": len(lost), "lost": lost,
            "mismatches": len(mismatched), "mismatched": mismatched, "problems": problems,
            "wall_minutes": round((time.time() - soak.t0) / 60, 2),
            "per_run": [{"name": j.plan.name, "method": j.plan.method, "torchrun": j.plan.torchrun,
                         "processes_started": j.attempt, "faults": len(j.faults), "resumes": j.resumes,
                         "restarts": j.restarts, "minutes": round(j.wall / 60, 2), "lost": j.lost} for j in runs],
            "faults_sent": faults, "aside": soak.aside}


def commit() -> str:
    """The code the runs start from: HEAD's short hash, with "+changes" if tracked files differ from it."""
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    changed = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                             capture_output=True, text=True)
    return (done.stdout.strip() or "unknown") + ("+changes" if changed.stdout.strip() else "")


def refused(args: Args, out: Path) -> str:
    """Why the soak cannot start with these flags ('' if it can)."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        return f"--out {out} exists and is not empty; the soak checks everything in it, so it starts empty."
    if not args.methods or args.jobs < 1 or args.steps < 1 or args.minutes <= 0 or args.faults_per_run < 0:
        return "--methods needs a method, --jobs and --steps at least 1, --minutes more than 0, --faults-per-run >= 0."
    return ""


def main(args: Args) -> int:
    out = Path(args.out).resolve()
    if refused(args, out):
        print(f"error: {refused(args, out)}", file=sys.stderr)
        return 2
    for folder in ("runs", "twins", "aside", "logs"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    # started in the background (`python soak.py ... &`), the shell ignores SIGINT, and so would every run it starts
    # until the run catches signals itself: the runs must start as a terminal or a cluster starts them
    signal.signal(signal.SIGINT, signal.default_int_handler)
    soak = Soak(args, out)
    code = commit()  # every run starts from the tree as it is now (and at each restart: a commit meanwhile is noted)
    print(f"soak: runs of {', '.join(args.methods)} ({args.jobs} at once) and torchrun {args.torchrun}, faults from "
          f"seed {args.seed}; new runs for {args.minutes:g} minutes; in {out}", flush=True)
    try:
        soak.fill(time.time())
        while soak.running():
            time.sleep(0.1)
            soak.tick(time.time())
    except KeyboardInterrupt:
        soak.kill_all()
        print(f"soak: interrupted; its processes killed; what it did is in {out}", file=sys.stderr)
        return 130
    report = {"date": time.strftime("%Y-%m-%d"), "commit": code, "args": vars(args), **check(soak)}
    if commit() != code:
        report["commit_at_end"] = commit()
    (out / "soak.json").write_text(json.dumps(report, indent=1))
    signals = ", ".join(f"{k} {v}" for k, v in report["faults_by_signal"].items())
    twice = report["faults_by_kind"]["SIGINT twice"]
    print(f"soak: {report['runs']} runs ({report['torchrun_runs']} under torchrun), {report['faults']} faults "
          f"({signals}; SIGINT twice {twice}), {report['resumes']} resumes, {report['restarts_from_scratch']} restarts "
          f"from scratch, {report['runs_lost']} runs lost, {report['mismatches']} mismatches, "
          f"{len(report['problems'])} problems, {report['wall_minutes']:.1f} min; {out / 'soak.json'}", flush=True)
    for problem in report["problems"]:
        print(f"  {problem}", flush=True)
    return 1 if report["runs_lost"] or report["mismatches"] or report["problems"] else 0


if __name__ == "__main__":
    sys.exit(main(tyro.cli(Args, description=__doc__[:__doc__.index("What it does")])))
