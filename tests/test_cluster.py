"""run_all.sh --slurm: the sbatch script it writes (a dry run), and the grid on a real SLURM: a one-node cluster on
localhost (Debian's slurm-wlm: munged, slurmctld and slurmd with a slurm.conf generated in a temporary directory, as
root) runs a tiny grid as one array job while one task is requeued by hand and another gets the USR1 that --signal
sends before a time limit. Where SLURM is not installed or does not start, the SLURM test is skipped and says why."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT

SBIN = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
GRID = ("--methods", "simclr byol", "--datasets", "synthetic", "--seeds", "0 1")
# a few CPU seconds of training per run; long enough (80 steps) to be interrupted in its loop
FLAGS = ("--", "--backbone", "tiny", "--batch-size", "32", "--epochs", "1", "--max-steps", "80", "--warmup-epochs", "0",
         "--eval-every", "0", "--mi-every", "0", "--save-every", "0", "--device", "cpu")


def run_all(*args, cwd, env, timeout=600):
    return subprocess.run(["bash", str(ROOT / "run_all.sh"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_slurm_dry_run_prints_the_sbatch_script(tmp_path):
    """One array task per run, each naming its own directory; requeue and the USR1 before the time limit; --nproc:
    torchrun (srun over several nodes); the script is valid bash. Flags that do not go together are refused."""
    env = dict(os.environ, PYTHON=sys.executable)
    res = run_all("--slurm", "--dry-run", *GRID, "--nproc", "2", *FLAGS, cwd=tmp_path, env=env)
    assert res.returncode == 0, res.stderr
    script = res.stdout
    for line in ("#SBATCH --array=0-3", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300",
                 "#SBATCH --open-mode=append", f"#SBATCH --chdir={tmp_path}", "trap 'usr1=1;",
                 'scontrol requeue "${SLURM_ARRAY_JOB_ID}_'):
        assert line in script, line
    cell = r"task=\(bash \S+/run_all.sh --cell \"\$dir\" 1 \"\$\{launch\[@\]\}\" (.*)\) ;;"
    tasks = re.findall(r"^  (\d+)\) dir=(\S+); " + cell + "$", script, re.M)
    assert [(t, d) for t, d, _ in tasks] == [("0", "runs/synthetic__runall_full_simclr__0"),
                                             ("1", "runs/synthetic__runall_full_simclr__1"),
                                             ("2", "runs/synthetic__runall_full_byol__0"),
                                             ("3", "runs/synthetic__runall_full_byol__1")]
    assert all("--exp-name runall_full_" in c and c.endswith("--device cpu") for _, _, c in tasks)
    assert "torch.distributed.run --standalone --nproc_per_node 2" in script and "srun --nodes" in script
    (tmp_path / "grid.sbatch").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "grid.sbatch")]).returncode == 0
    assert not (tmp_path / "runs").exists()
    quick = run_all("--slurm", "--dry-run", "--quick", "--methods", "simclr", "--datasets", "synthetic", cwd=tmp_path,
                    env=env).stdout
    assert "#SBATCH --array=0-1" in quick and "--quick --random-init --methods simclr --datasets synthetic" in quick
    for bad in (["--slurm", "--jobs", "2"], ["--sbatch", "-p gpu"], ["--jobs", "0"], ["--nproc", "x"]):
        res = run_all(*bad, "--dry-run", cwd=tmp_path, env=env)
        assert res.returncode == 2 and res.stderr.startswith("error:"), (bad, res.stderr)


def test_cell_resumes_skips_moves_aside_locks_and_logs_the_device(tmp_path):
    """run_all.sh --cell DIR SHOW COMMAND (what each task runs) on each state of a run directory, with a stand-in
    nvidia-smi: the log names the GPUs of CUDA_VISIBLE_DEVICES."""
    import fcntl
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvidia-smi").write_text(
        '#!/bin/sh\ncase "$*" in *"-i 0,1"*) printf "NVIDIA H100 80GB HBM3\\nNVIDIA H100 80GB HBM3\\n" ;;\n'
        '*) printf "NVIDIA H100 80GB HBM3\\nNVIDIA H100 80GB HBM3\\nNVIDIA A100-SXM4-40GB\\n" ;; esac\n')
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}", CUDA_VISIBLE_DEVICES="0,1")
    runs = tmp_path / "runs"
    for name, files in (("resume", ["last.pt"]), ("done", ["last.pt", "results.json"]), ("stray", ["notes.txt"]),
                        ("empty", []), ("locked", [])):
        (runs / name).mkdir(parents=True)
        for f in files:
            (runs / name / f).write_text(f)
            time.sleep(0.01)  # results.json newer than last.pt
    (runs / "logs").mkdir()

    def cell(name, **extra):
        res = run_all("--cell", f"runs/{name}", "0", "echo", "ran", cwd=tmp_path, env=dict(env, **extra))
        log = runs / "logs" / f"{name}.log"
        return res, log.read_text() if log.exists() else ""

    res, log = cell("new")
    assert res.returncode == 0 and "device: 2 x NVIDIA H100 80GB HBM3 (CUDA_VISIBLE_DEVICES=0,1)\n" in log, log
    assert log.endswith("run_all: echo ran --run-dir runs/new\nran --run-dir runs/new\n"), log
    res, log = cell("resume", CUDA_VISIBLE_DEVICES="")
    assert "device: NVIDIA A100-SXM4-40GB, 2 x NVIDIA H100 80GB HBM3\n" in log, log
    assert log.endswith("ran --resume runs/resume/last.pt\n") and "runs/resume resumes from its last.pt" in res.stdout
    res, log = cell("done")
    assert res.returncode == 0 and log == ""
    assert res.stdout == "run_all: runs/done is finished (results.json): skipped\n"
    res, log = cell("stray")
    aside = list(runs.glob("stray.aside-*"))
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == "notes.txt" and not (runs / "stray").exists()
    assert f"moved to runs/{aside[0].name}" in res.stdout and log.endswith("ran --run-dir runs/stray\n")
    res, log = cell("empty")  # an empty directory is removed, not kept
    assert not list(runs.glob("empty.aside-*")) and log.endswith("ran --run-dir runs/empty\n")
    with open(runs / "logs" / "locked.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        res, log = cell("locked")
    assert res.returncode == 0 and log == "" and "runs/locked is being run by another process" in res.stdout


class Slurm:
    """A one-node SLURM in a temporary directory: its daemons, and the environment its commands need."""

    def __init__(self, directory):
        self.dir = directory
        self.env = dict(os.environ, SLURM_CONF=str(directory / "slurm.conf"))
        self.daemons = []

    def __call__(self, *command, check=True):
        res = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        assert not check or res.returncode == 0, f"{command}: {res.stderr}"
        return res.stdout

    def start(self):
        """munged, slurmctld, slurmd; None once the node is idle, else why not."""
        d = self.dir
        (d / "munge.key").write_bytes(os.urandom(1024))
        (d / "munge.key").chmod(0o600)
        for sub in ("state", "spool"):
            (d / sub).mkdir()
        ports = []
        for _ in range(2):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                ports.append(s.getsockname()[1])
        (d / "slurm.conf").write_text(f"""ClusterName=cleanssltest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ports[0]}
SlurmdPort={ports[1]}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge.sock
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
JobRequeue=1
MinJobAge=3600
KillWait=60
NodeName=cleanssl0 NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=cleanssl0 Default=YES MaxTime=INFINITE State=UP
""")
        commands = [[shutil.which("munged", path=SBIN), "-F", "--force", f"--socket={d}/munge.sock",
                     f"--key-file={d}/munge.key", f"--log-file={d}/munged.log", f"--pid-file={d}/munged.pid",
                     f"--seed-file={d}/munged.seed"],
                    [shutil.which("slurmctld", path=SBIN), "-D", "-f", str(d / "slurm.conf")],
                    [shutil.which("slurmd", path=SBIN), "-D", "-N", "cleanssl0", "-f", str(d / "slurm.conf")]]
        for command in commands:
            name = os.path.basename(command[0])
            with open(d / f"{name}.out", "w") as out:
                self.daemons.append(subprocess.Popen(command, env=self.env, stdout=out, stderr=subprocess.STDOUT))
            if name == "munged":
                for _ in range(50):
                    if (d / "munge.sock").exists():
                        break
                    time.sleep(0.1)
        for _ in range(60):
            if any(p.poll() is not None for p in self.daemons):
                break
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout
            if state.strip() == "idle":
                return None
            time.sleep(0.5)
        logs = [f"{f.name}: {f.read_text()[-300:]}" for f in sorted(d.glob("*.out")) + sorted(d.glob("*.log"))]
        return "the one-node SLURM did not come up: " + " | ".join(logs)

    def stop(self):
        """Cancel every job (its processes end), then the daemons, each by its process id."""
        if self.daemons and self.daemons[1].poll() is None:
            subprocess.run(["scancel", "--user", "root"], env=self.env, capture_output=True)
            for _ in range(60):
                if not subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True).stdout.strip():
                    break
                time.sleep(0.5)
        for p in reversed(self.daemons):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    missing = [t for t in ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "squeue", "scancel", "sinfo")
               if not shutil.which(t, path=SBIN)]
    if missing:
        pytest.skip(f"SLURM is not installed ({', '.join(missing)} missing; apt-get install slurm-wlm)")
    if os.geteuid() != 0:
        pytest.skip("the one-node SLURM of this test runs its daemons as root; this is not root")
    cluster = Slurm(tmp_path_factory.mktemp("slurm"))
    try:
        why = cluster.start()
        if why:
            pytest.skip(why)
        yield cluster
    finally:
        cluster.stop()


def tasks(cluster, job):
    """{array task: (state, reason)} of the job's tasks still in the queue."""
    rows = [ln.split() for ln in cluster("squeue", "-h", "-r", "-j", job, "-o", "%K %T %r").splitlines()]
    return {int(r[0]): (r[1], r[2]) for r in rows if r[0].isdigit()}


def wait_for_the_job(cluster, job, interrupt=None, timeout=400):
    """Until no task of the job is left in the queue. A requeued task waits two minutes before it starts again
    (SLURM's delay after a requeue): it is let go at once. interrupt(queue) is called at every poll."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        queue = tasks(cluster, job)
        if interrupt:
            interrupt(queue)
        for task, (state, reason) in queue.items():
            if state == "PENDING" and reason == "BeginTime":
                cluster("scontrol", "update", f"JobId={job}_{task}", "StartTime=now", check=False)
        if not queue:
            assert interrupt is None or interrupt.done, f"job {job} ended before its runs were interrupted"
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} still queued after {timeout} s: {tasks(cluster, job)}")


class Interrupt:
    """Task 0 is requeued by hand (scontrol requeue), task 3 gets SLURM's USR1 (what --signal sends before the time
    limit; scancel --signal USR1 --batch), each a second after its run's loop has begun (its tensorboard events)."""

    def __init__(self, cluster, job, runs):
        self.cluster = cluster
        self.job = job
        self.runs = runs
        self.pending = {0: "synthetic__runall_full_simclr__0", 3: "synthetic__runall_full_byol__1"}
        self.seen = {}
        self.done = False

    def __call__(self, queue):
        for task, name in list(self.pending.items()):
            if queue.get(task, ("",))[0] != "RUNNING" or not list((self.runs / name).glob("events.out.tfevents.*")):
                continue
            self.seen.setdefault(task, time.time())
            if time.time() - self.seen[task] < 1:
                continue
            if task == 0:
                self.cluster("scontrol", "requeue", f"{self.job}_0")
            else:
                self.cluster("scancel", "--signal", "USR1", "--batch", f"{self.job}_3")
            del self.pending[task]
        self.done = not self.pending


def test_grid_on_slurm_survives_a_requeue_and_a_time_limit_and_resubmits_as_a_no_op(slurm, tmp_path):
    """2 methods x 2 seeds on SLURM. The requeued run and the one stopped by USR1 each save, stop and resume in their
    own directory: their backbone.pt equals that of the same run never interrupted (run_all.sh on this machine).
    Every run finishes exactly once, the table lists all four, and the grid submitted again skips every run."""
    env = dict(slurm.env, PYTHON=sys.executable, OMP_NUM_THREADS="1", DATA=str(tmp_path / "data"))
    (tmp_path / "grid").mkdir()
    (tmp_path / "twins").mkdir()
    res = run_all(*GRID, "--slurm", "--sbatch", "--cpus-per-task 1", "--sbatch", "--time 20", *FLAGS,
                  cwd=tmp_path / "grid", env=env)
    assert res.returncode == 0, res.stderr
    job = re.search(r"submitted SLURM array job (\d+): 4 runs", res.stdout).group(1)
    assert f"squeue -j {job}" in res.stdout and f"runs/logs/slurm_runall_full_{job}_" in res.stdout
    twins = [subprocess.Popen(["bash", str(ROOT / "run_all.sh"), "--methods", m, "--datasets", "synthetic",
                               "--seeds", s, *FLAGS], cwd=tmp_path / "twins", env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for m, s in (("simclr", "0"), ("byol", "1"))]
    runs = tmp_path / "grid" / "runs"
    wait_for_the_job(slurm, job, Interrupt(slurm, job, runs))
    for twin in twins:
        assert twin.wait(timeout=400) == 0, twin.stdout.read()[-2000:]
    names = [f"synthetic__runall_full_{m}__{s}" for m in ("simclr", "byol") for s in (0, 1)]
    logs = {n: (runs / "logs" / f"{n}.log").read_text() for n in names}
    for task, name in enumerate(names):
        out = (runs / "logs" / f"slurm_runall_full_{job}_{task}.out").read_text()
        assert f"run_all: task {task} ends with exit status 0" in out, out[-2000:]
        assert logs[name].count("backbone: ") == 1 and (runs / name / "results.json").exists(), logs[name][-2000:]
        interrupted = task in (0, 3)
        stops = re.findall(r"stopped by SIGTERM at step (\d+)", logs[name])
        assert len(stops) == interrupted and all(0 < int(step) < 80 for step in stops), logs[name][-3000:]
        assert logs[name].count(f"resumed from runs/{name}/last.pt") == interrupted, logs[name][-3000:]
        if task == 3:  # the USR1 path: SIGTERM passed to the run, then the task requeued itself
            assert "USR1 (time limit near)" in out and "requeued: the task will resume" in out, out[-2000:]
        if interrupted:
            mine = torch.load(runs / name / "backbone.pt", weights_only=True)
            twin = torch.load(tmp_path / "twins" / "runs" / name / "backbone.pt", weights_only=True)
            assert mine.keys() == twin.keys() and all(torch.equal(mine[k], twin[k]) for k in mine), name
    assert not list(runs.glob("*.aside-*"))
    res = run_all("--table", cwd=tmp_path / "grid", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    table = (runs / "run_all_full.md").read_text()
    rows = [ln.split("|")[1:4] for ln in table.splitlines() if ln.startswith("| synthetic |")]
    assert sorted((m.strip(), n.strip()) for _, m, n in rows) == [("byol", "2"), ("simclr", "2")]
    finished = {n: (runs / n / "results.json").stat().st_mtime_ns for n in names}
    res = run_all(*GRID, "--slurm", "--sbatch", "--cpus-per-task 1", *FLAGS, cwd=tmp_path / "grid", env=env)
    assert res.returncode == 0, res.stderr
    again = re.search(r"submitted SLURM array job (\d+)", res.stdout).group(1)
    wait_for_the_job(slurm, again)
    for task, name in enumerate(names):
        out = (runs / "logs" / f"slurm_runall_full_{again}_{task}.out").read_text()
        assert f"run_all: runs/{name} is finished (results.json): skipped" in out, out
        assert (runs / "logs" / f"{name}.log").read_text() == logs[name]
    assert {n: (runs / n / "results.json").stat().st_mtime_ns for n in names} == finished
    assert json.loads((runs / names[0] / "results.json").read_text())["steps"] == 80


@pytest.mark.full
def test_nproc_2_on_slurm_and_here_under_torchrun(slurm, tmp_path):
    """--nproc 2: each run under torchrun with two (gloo, CPU) processes, on SLURM (a task of 2 CPUs, requeued by hand
    while it trains) and on this machine; both finish once, with 2 processes, and end with the same weights."""
    env = dict(slurm.env, PYTHON=sys.executable, OMP_NUM_THREADS="1", DATA=str(tmp_path / "data"))
    grid = ("--methods", "simclr", "--datasets", "synthetic", "--seeds", "0", "--nproc", "2")
    for d in ("grid", "here"):
        (tmp_path / d).mkdir()
    res = run_all(*grid, "--slurm", "--sbatch", "--cpus-per-task 2", *FLAGS, cwd=tmp_path / "grid", env=env)
    assert res.returncode == 0, res.stderr
    job = re.search(r"submitted SLURM array job (\d+)", res.stdout).group(1)
    here = subprocess.Popen(["bash", str(ROOT / "run_all.sh"), *grid, *FLAGS], cwd=tmp_path / "here", env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    name = "synthetic__runall_full_simclr__0"
    interrupt = Interrupt(slurm, job, tmp_path / "grid" / "runs")
    interrupt.pending = {0: name}
    wait_for_the_job(slurm, job, interrupt)
    assert here.wait(timeout=400) == 0, here.stdout.read()[-3000:]
    runs = tmp_path / "grid" / "runs"
    log = (runs / "logs" / f"{name}.log").read_text()
    out = (runs / "logs" / f"slurm_runall_full_{job}_0.out").read_text()
    assert "run_all: task 0 ends with exit status 0" in out and log.count("backbone: ") == 1, out[-3000:]
    assert json.loads((runs / name / "results.json").read_text())["processes"] == 2
    assert json.loads((tmp_path / "here" / "runs" / name / "results.json").read_text())["processes"] == 2
    mine = torch.load(runs / name / "backbone.pt", weights_only=True)
    theirs = torch.load(tmp_path / "here" / "runs" / name / "backbone.pt", weights_only=True)
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
