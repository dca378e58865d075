"""run_all.sh (dry run and table) and benchmark.py, run as a user would."""
import json
import os
import signal
import subprocess
import sys
import time

import torch
import tyro

from conftest import ROOT

MI_SET = ["sdmi", "jmi", "simclr", "byol", "simsiam", "moco_v3", "barlow_twins", "vicreg"]


def bash(*args, cwd, env=None):
    env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(ROOT / "run_all.sh"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_quick_dry_run_prints_every_method_and_runs_nothing(tmp_path):
    """--quick: CIFAR-10 by default (not there: one line, the run would download it), an image folder with --data-dir;
    each method's quick recipe visible in its command, two seeds where the quick runs were at random init, and the
    same networks at random init."""
    res = bash("--quick", "--dry-run", cwd=tmp_path, env={"DATA": str(tmp_path / "empty")})
    assert res.returncode == 0, res.stderr
    assert len(res.stderr.splitlines()) == 1 and "CIFAR-10" in res.stderr
    cmds = [ln for ln in res.stdout.splitlines() if "/methods/" in ln]
    two = ("barlow_twins", "sdmi", "simsiam")
    assert [c.split("/methods/")[1].split(".py")[0] for c in cmds] == [m for m in MI_SET for _ in (0, 1)[:1 + (m in two)]]
    assert all("--dataset cifar10" in c and "--backbone tiny" in c and "--max-steps 300" in c for c in cmds)
    adamw = ("simclr", "barlow_twins", "byol", "simsiam", "sdmi")  # the quick recipes found by the README's search
    assert [c for c in cmds if "--optimizer adamw --lr 2e-3" in c] == [c for c in cmds if c.split("/methods/")[1].split(
        ".py")[0] in adamw]
    assert sum("random init:" in ln and " tiny " in ln for ln in res.stdout.splitlines()) == 2  # seeds 0 and 1
    (tmp_path / "folder" / "train").mkdir(parents=True)
    res = bash("--quick", "--dry-run", "--set", "vit", "--data-dir", str(tmp_path / "folder"), cwd=tmp_path)
    assert res.returncode == 0 and not res.stderr, res.stderr
    cmds = [ln for ln in res.stdout.splitlines() if "/methods/" in ln]
    names = [c.split("/methods/")[1].split(".py")[0] for c in cmds]  # the ViTs, near +3 (iBOT under): a second seed
    assert names == ["dino_vit", "dino_vit", "ibot", "ibot", "mae", "mae"], names
    assert all(f"--dataset imagefolder --data-dir {tmp_path / 'folder'}" in c for c in cmds)
    assert all("--warmup-epochs 0.1 " in c + " " for c in cmds[:2]) and "--seed 1 " in cmds[1]
    assert "--finetune-epochs 2" in cmds[4] and all("--seed 1 " in cmds[i] for i in (3, 5))
    assert sum("random init:" in ln for ln in res.stdout.splitlines()) == 2
    assert not (tmp_path / "runs").exists()


def test_quick_deepcluster_gets_its_memory_epoch_before_the_same_300_steps(tmp_path):
    """DeepCluster v2's first epoch only fills its memory: --quick gives it that epoch (390 steps of 128 CIFAR-10
    images; 32 of synthetic) on top of the 300 training steps every method gets, and the schedule spans them."""
    for datasets, flags in (("cifar10", "--epochs 2 --max-steps 690"), ("synthetic", "--epochs 11 --max-steps 332")):
        res = bash("--quick", "--dry-run", "--methods", "deepcluster_v2", "--datasets", datasets, cwd=tmp_path,
                   env={"DATA": str(tmp_path / "empty")})
        assert res.returncode == 0, res.stderr
        cmd = [ln for ln in res.stdout.splitlines() if "/methods/" in ln][0]
        assert cmd.endswith(f"{flags} --run-dir runs/{datasets}__runall_quick_deepcluster_v2__0"), res.stdout


def test_quick_adadim_and_dino_parse_to_the_seventh_searchs_recipes_over_two_seeds(tmp_path):
    """AdaDim and DINO (ResNet): their quick commands parse (tyro, the last of a repeated flag wins) to the recipes the
    seventh search chose on seeds 0 and 1 (docs/searches.md), and --quick runs both seeds."""
    import adadim
    import dino
    res = bash("--quick", "--dry-run", "--methods", "adadim dino", cwd=tmp_path, env={"DATA": str(tmp_path / "empty")})
    assert res.returncode == 0, res.stderr
    cmds = [ln for ln in res.stdout.splitlines() if "/methods/" in ln]
    assert [(c.split("/methods/")[1].split(".py")[0], c.split("--seed ")[1].split()[0]) for c in cmds] == [
        ("adadim", "0"), ("adadim", "1"), ("dino", "0"), ("dino", "1")]
    modules = (adadim, adadim, dino, dino)
    parsed = [tyro.cli(module.Args, args=cmd.split(".py ")[1].split()) for module, cmd in zip(modules, cmds)]
    for args in parsed:
        assert (args.backbone, args.batch_size, args.max_steps, args.optimizer) == ("tiny", 128, 300, "adamw")
        assert args.weight_decay == 1e-6
    assert parsed[0].lr == 2e-3 and parsed[0].warmup_epochs == 0
    dino_args = parsed[2]
    assert (dino_args.lr, dino_args.warmup_epochs, dino_args.freeze_last_layer_epochs) == (1e-3, 0.1, 0)
    assert (dino_args.tau_base, dino_args.tau_final, dino_args.warmup_teacher_temp) == (0.99, 0.99, 0.02)
    assert (dino_args.proj_hidden_dim, dino_args.num_prototypes) == (512, 256)
    assert sum("random init:" in ln and " tiny " in ln for ln in res.stdout.splitlines()) == 2


def test_full_grid_dry_run_and_bad_arguments(tmp_path):
    res = bash("--dry-run", cwd=tmp_path)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 8 * 4 * 3
    assert "--proj-bn" not in res.stdout and "random init" not in res.stdout  # the quick recipes are --quick's only
    for bad in (["--bogus"], ["--methods", "simclr nope", "--dry-run"], ["--set", "xyz"],
                ["--quick", "--data-dir", str(tmp_path / "nothing"), "--dry-run"]):
        res = bash(*bad, cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_table_mean_std_over_seeds_beside_the_paper(tmp_path):
    for seed, (knn, lin) in enumerate([(50.0, 60.0), (52.0, 64.0)]):
        d = tmp_path / "runs" / f"cifar10__runall_full_simclr__{seed}__1"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(dict(method="simclr", dataset="cifar10", seed=seed, steps=10, knn_top1=knn,
                                                        linear_top1=lin, H_R=10.0, I_RZ=1.0)))
    res = bash("--table", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    row = next(ln for ln in (tmp_path / "runs" / "run_all_full.md").read_text().splitlines() if "| simclr |" in ln)
    cells = [c.strip() for c in row.strip("|").split("|")]
    # dataset, method, seeds, steps, kNN, gain (no random init here), linear, paper, H(R), I(R;Z), ratio;
    # sample std of (60, 64) = 2.83
    assert cells == ["cifar10", "simclr", "2", "10", "51.00 ± 1.41", "–", "62.00 ± 2.83", "87.24", "10.00 ± 0.00",
                     "1.000 ± 0.000", "0.1000 ± 0.0000"]


def test_table_has_a_row_for_the_second_network(tmp_path):
    """SDMI's g and DINO / iBOT's student (their main result is the teacher) get a row of their own."""
    for m, other in (("sdmi", "g"), ("ibot", "student")):
        d = tmp_path / "runs" / f"cifar10__runall_full_{m}__0__1"
        d.mkdir(parents=True)
        r = dict(knn_top1=40.0, linear_top1=45.0, H_R=10.0, I_RZ=1.0)
        (d / "results.json").write_text(json.dumps(dict(method=m, dataset="cifar10", seed=0, steps=10, **r,
                                                        **{f"{k}_{other}": v + 1 for k, v in r.items()})))
    assert bash("--table", cwd=tmp_path).returncode == 0
    rows = {ln.split("|")[2].strip(): ln for ln in (tmp_path / "runs" / "run_all_full.md").read_text().splitlines()
            if ln.startswith("| cifar10 |")}
    assert set(rows) == {"sdmi", "sdmi (g)", "ibot", "ibot (student)"}
    assert "| 41.00 | – | 46.00 |" in rows["ibot (student)"] and "| 40.00 | – | 45.00 |" in rows["ibot"]  # kNN, gain, linear


def fake_run(runs, method, seed, knn, mi, backbone="tiny"):
    """A finished quick run as run_all.sh reads it: results.json and the mi/* scalars of its tensorboard events."""
    from torch.utils.tensorboard import SummaryWriter
    d = runs / f"cifar10__runall_quick_{method}__{seed}__1"
    with SummaryWriter(str(d)) as w:
        for step in range(50, 301, 50):
            for k, v in (("cos_dv", mi * step / 300), ("infonce", 1.5 * mi * step / 300), ("jsd", -1 / (1 + mi * step / 300))):
                w.add_scalar(f"mi/{k}", v, step)
    (d / "results.json").write_text(json.dumps(dict(method=method, dataset="cifar10", backbone=backbone, seed=seed,
                                                    steps=0 if method == "random_init" else 300, knn_top1=knn, linear_top1=knn + 5, H_R=20.0 + knn / 2,
                                                    I_RZ=0.3)))


def test_quick_offline_falls_back_to_synthetic_with_random_init_gain_and_figures(tmp_path):
    """No CIFAR-10 and no network (a proxy that refuses): one line, then synthetic. A tiny real SimCLR run and its random
    init give a table row with the gain; finished runs of both paradigms (fakes) give both figures."""
    runs = tmp_path / "runs"
    for method, seed, knn, mi in (("sdmi", 0, 40.0, 2.0), ("sdmi", 1, 42.0, 2.2), ("byol", 0, 45.0, 3.0),
                                  ("jmi", 0, 38.0, 1.5), ("vicreg", 0, 44.0, 2.5)):
        fake_run(runs, method, seed, knn, mi)
    fake_run(runs, "random_init", 0, 30.0, 0.0, backbone="vit_tiny")  # another backbone: not simclr's baseline
    refuse = "http://127.0.0.1:9"
    res = bash("--quick", "--methods", "simclr", "--", "--max-steps", "2", "--batch-size", "32", "--mi-every", "1",
               "--device", "cpu", cwd=tmp_path, env={"DATA": str(tmp_path / "data"), "https_proxy": refuse,
                                                     "http_proxy": refuse, "no_proxy": ""})
    assert res.returncode == 0, res.stderr[-2000:]
    assert [ln for ln in res.stderr.splitlines() if "synthetic" in ln] == [
        f"run_all: CIFAR-10 is not in {tmp_path / 'data'}/ and cannot be downloaded (offline?): --quick uses --dataset "
        "synthetic"]
    simclr = json.loads((runs / "synthetic__runall_quick_simclr__0" / "results.json").read_text())
    base = json.loads((runs / "synthetic__runall_quick_random_init__0__tiny" / "results.json").read_text())
    assert simclr["steps"] == 2 and base["steps"] == 0 and base["backbone"] == "tiny" and 0 < base["knn_top1"] < 100
    rows = {ln.split("|")[2].strip(): [c.strip() for c in ln.strip("|").split("|")]
            for ln in (runs / "run_all_quick.md").read_text().splitlines() if ln.startswith("| synthetic")}
    assert rows["random init (tiny)"][5] == "–" and rows["simclr"][5] == f"{simclr['knn_top1'] - base['knn_top1']:+.2f}"
    assert {"sdmi", "jmi", "sdmi (g)"} & set(rows) == set()  # the fakes are CIFAR-10 runs
    import matplotlib.image
    for name in ("synthetic_mi", "synthetic_dims", "cifar10_mi", "cifar10_dims"):
        img = matplotlib.image.imread(runs / f"run_all_quick_{name}.png")[..., :3]
        assert img.shape[0] > 200 and (img < 0.5).any(axis=2).mean() > 0.005, name  # axes, curves, text drawn


TINY = ("--backbone", "tiny", "--batch-size", "32", "--epochs", "1", "--warmup-epochs", "0", "--eval-every", "0",
        "--mi-every", "0", "--save-every", "0", "--device", "cpu")


def start(*args, cwd, env=None):
    """run_all.sh in the background (its output in cwd/out.txt and cwd/err.txt)."""
    cwd.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", **(env or {}))
    with open(cwd / "out.txt", "w") as out, open(cwd / "err.txt", "w") as err:
        return subprocess.Popen(["bash", str(ROOT / "run_all.sh"), *args], cwd=cwd, env=env, stdout=out, stderr=err)


def test_jobs_2_gives_the_sequential_table_and_resumes_an_interrupted_grid(tmp_path):
    """--jobs 2, each run on its own GPU of CUDA_VISIBLE_DEVICES (here on the CPU): the second run's directory, left
    without a checkpoint, is moved aside and the run starts afresh; SIGTERM while both train: each saves last.pt and
    the grid stops (143). Run again, both resume: the table and each backbone.pt are those of the same grid run one
    after another, never interrupted. Once more, both runs are skipped and nothing is written."""
    grid = ("--methods", "simclr", "--datasets", "synthetic", "--seeds", "0 1", "--", *TINY, "--max-steps", "60")
    names = [f"synthetic__runall_full_simclr__{s}" for s in range(2)]
    sequential = start(*grid, cwd=tmp_path / "one_by_one")
    runs = tmp_path / "jobs" / "runs"
    (runs / names[1]).mkdir(parents=True)  # killed before its first checkpoint: neither last.pt nor results.json
    (runs / names[1] / "notes.txt").write_text("mine")
    jobs = start("--jobs", "2", *grid, cwd=tmp_path / "jobs", env={"CUDA_VISIBLE_DEVICES": "3,5"})
    deadline = time.time() + 900
    while not all(list((runs / n).glob("events.out.tfevents.*")) for n in names) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    jobs.send_signal(signal.SIGTERM)
    assert jobs.wait(timeout=900) == 143, (tmp_path / "jobs" / "err.txt").read_text()
    stopped = (tmp_path / "jobs" / "err.txt").read_text()
    assert "run_all: stopped by SIGTERM; the same command resumes the grid" in stopped, stopped
    aside = list(runs.glob(f"{names[1]}.aside-*"))
    assert len(aside) == 1 and (aside[0] / "notes.txt").read_text() == "mine"
    assert f"moved to {aside[0].relative_to(tmp_path / 'jobs')}" in (tmp_path / "jobs" / "out.txt").read_text()
    assert all((runs / n / "last.pt").exists() and not (runs / n / "results.json").exists() for n in names)
    plan = bash("--dry-run", *grid, cwd=tmp_path / "jobs").stdout.splitlines()  # what a run would do now
    assert [ln.split(" --max-steps 60 ")[1] for ln in plan] == [f"--resume runs/{n}/last.pt" for n in names], plan
    jobs = start("--jobs", "2", *grid, cwd=tmp_path / "jobs", env={"CUDA_VISIBLE_DEVICES": "3,5"})
    assert jobs.wait(timeout=900) == 0, (tmp_path / "jobs" / "err.txt").read_text()[-2000:]
    assert sequential.wait(timeout=900) == 0, (tmp_path / "one_by_one" / "err.txt").read_text()[-2000:]
    logs = [(runs / "logs" / f"{n}.log").read_text() for n in names]
    for n, log in zip(names, logs):
        assert log.count("stopped by SIGTERM at step") == 1 and log.count(f"resumed from runs/{n}/last.pt") == 1, log
        assert log.count("backbone: ") == 1, log
    assert "device: CUDA_VISIBLE_DEVICES=3\n" in logs[0] and "device: CUDA_VISIBLE_DEVICES=5\n" in logs[1]
    table = (tmp_path / "one_by_one" / "runs" / "run_all_full.md").read_text()
    assert "| synthetic | simclr | 2 | 60 |" in table and (runs / "run_all_full.md").read_text() == table
    for n in names:
        mine = torch.load(runs / n / "backbone.pt", weights_only=True)
        theirs = torch.load(tmp_path / "one_by_one" / "runs" / n / "backbone.pt", weights_only=True)
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine), n
    finished = [(runs / n / "results.json").stat().st_mtime_ns for n in names]
    plan = bash("--dry-run", *grid, cwd=tmp_path / "jobs").stdout.splitlines()
    assert plan == [f"# runs/{n} is finished (results.json): skipped" for n in names]
    again = start("--jobs", "2", *grid, cwd=tmp_path / "jobs")
    assert again.wait(timeout=900) == 0
    out = (tmp_path / "jobs" / "out.txt").read_text()
    assert all(f"run_all: runs/{n} is finished (results.json): skipped" in out for n in names), out
    assert [(runs / n / "results.json").stat().st_mtime_ns for n in names] == finished
    assert [(runs / "logs" / f"{n}.log").read_text() for n in names] == logs


LIGHTLY = ["simclr", "byol", "dino", "moco_v2", "nnclr", "simsiam", "swav", "barlow_twins"]


def test_lightly_dry_run_gives_the_eight_resnet_methods_lightlys_budget(tmp_path):
    """--lightly: each command parses with its method's own flags (tyro) to ResNet-18, batch 512, 200 epochs, kNN every
    10 epochs; MoCo v2 alone with an 8,192-key queue."""
    import barlow_twins
    import byol
    import dino
    import moco_v2
    import nnclr
    import simclr
    import simsiam
    import swav
    modules = dict(simclr=simclr, byol=byol, dino=dino, moco_v2=moco_v2, nnclr=nnclr, simsiam=simsiam, swav=swav,
                   barlow_twins=barlow_twins)
    res = bash("--lightly", "--dry-run", cwd=tmp_path)
    assert res.returncode == 0 and not res.stderr, res.stderr
    cmds = res.stdout.splitlines()
    assert [c.split("/methods/")[1].split(".py")[0] for c in cmds] == LIGHTLY
    for m, cmd in zip(LIGHTLY, cmds):
        flags = cmd.split(f"/methods/{m}.py ")[1].split()
        assert flags[-2:] == ["--run-dir", f"runs/cifar10__runall_lightly_{m}__0"]
        args = tyro.cli(modules[m].Args, args=flags[:-2])
        assert (args.dataset, args.seed, args.exp_name) == ("cifar10", 0, f"runall_lightly_{m}")
        assert (args.backbone, args.batch_size, args.epochs, args.eval_every) == ("resnet18", 512, 200, 10)
        assert args.save_every_minutes == 5 and ("--queue-size" in flags) == (m == "moco_v2")
    assert tyro.cli(moco_v2.Args, args=["--queue-size", "8192"]).queue_size == 8192
    for bad in (["--lightly", "--quick"], ["--lightly", "--methods", "vicreg"]):
        res = bash(*bad, "--dry-run", cwd=tmp_path)
        assert res.returncode == 2 and res.stderr.startswith("error:"), res.stderr
    assert not (tmp_path / "runs").exists()


def fake_lightly_run(runs, method, knn, final, processes=1, log=""):
    """A finished --lightly run: results.json, eval/knn_top1 every 10 epochs of 97 steps and the hyperparameters text
    in its tensorboard events, and its log (runs/logs/{run}.log)."""
    from torch.utils.tensorboard import SummaryWriter
    d = runs / f"cifar10__runall_lightly_{method}__0"
    with SummaryWriter(str(d)) as w:
        w.add_text("hyperparameters", "|param|value|\n|-|-|\n|optimizer|lars|\n|lr|0.4|\n|weight_decay|0.0001|\n"
                                      "|warmup_epochs|10.0|")
        for i, v in enumerate(knn, 1):
            w.add_scalar("eval/knn_top1", v, 970 * i)
    (d / "results.json").write_text(json.dumps(dict(method=method, dataset="cifar10", backbone="resnet18", seed=0,
                                                    epochs=10 * len(knn), steps=970 * len(knn), knn_top1=final,
                                                    minutes=90.4, processes=processes)))
    (runs / "logs").mkdir(exist_ok=True)
    (runs / "logs" / f"{d.name}.log").write_text(log)


def test_lightly_table_puts_the_final_and_best_knn_beside_lightlys(tmp_path):
    """The best kNN is the highest eval/knn_top1 (the first of equal ones, its epoch); the device is the log's (CPU if
    the run says so); a resumed run's minutes are marked; a method lightly does not benchmark gets dashes."""
    runs = tmp_path / "runs"
    on = "run_all: 2026-12-07 10:00:00 on gpu7; device: {} (CUDA_VISIBLE_DEVICES=0)\n[{}] cifar10: ... resnet18 on {} ("
    fake_lightly_run(runs, "simclr", [70.0, 82.5, 82.5, 81.0], 81.0,
                     log=on.format("NVIDIA RTX A6000", "simclr", "cuda"))
    fake_lightly_run(runs, "moco_v2", [60.0, 85.0], 84.9, processes=2,
                     log=on.format("2 x NVIDIA H100 80GB HBM3", "moco_v2", "cuda:0") + "\nresumed from x/last.pt\n")
    fake_lightly_run(runs, "byol", [50.0], 50.0, log=on.format("NVIDIA H100", "byol", "cpu"))
    fake_lightly_run(runs, "vicreg", [40.0], 40.0)  # not lightly's, no log
    res = bash("--table", "--lightly", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    table = (runs / "run_all_lightly.md").read_text()
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in table.splitlines() if ln.startswith("| cifar10 |")]
    recipe = "lars, lr 0.4, weight decay 0.0001, warmup 10.0 epochs"
    # dataset, method, seed, epochs, final, best (epoch), lightly, best - lightly, minutes, lightly's, device, recipe
    assert rows == [
        ["cifar10", "SimCLR", "0", "40", "81.00", "82.50 (20)", "84.8", "-2.30", "90", "87", "NVIDIA RTX A6000",
         recipe],
        ["cifar10", "BYOL", "0", "10", "50.00", "50.00 (10)", "86.8", "-36.80", "90", "108", "CPU", recipe],
        ["cifar10", "MoCo v2 (queue 8,192)", "0", "20", "84.90", "85.00 (20)", "84.7", "+0.30", "90 (last part)", "112",
         "2 x NVIDIA H100 80GB HBM3", recipe],
        ["cifar10", "vicreg", "0", "10", "40.00", "40.00 (10)", "–", "–", "90", "–", "–", recipe]]


def test_benchmark_prints_rows(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--methods", "simclr", "--backbone", "tiny",
                          "--batch-size", "32", "--steps", "5", "--no-pil-baseline"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    aug = [ln for ln in res.stdout.splitlines() if ln.startswith("| batched")]
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("| simclr |"))
    assert len(aug) == 2 and float(row.split("|")[2].replace(",", "")) > 0 and float(row.split("|")[3]) > 0


def test_benchmark_data_part_prints_every_row_of_the_large_image_path(tmp_path):
    """benchmark.py --part data on a folder of large JPEGs: the previous path, the decoding workers, --decode gpu's
    byte-reading workers, decode alone (PIL, torchvision) and the device part, each with a rate for both view sets."""
    import torchvision
    g = torch.Generator().manual_seed(0)
    (tmp_path / "jpegs").mkdir()
    for i in range(32):
        torchvision.io.write_jpeg(torch.randint(0, 256, (3, 120, 100 + i), dtype=torch.uint8, generator=g),
                                  str(tmp_path / "jpegs" / f"{i}.jpg"))
    res = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--part", "data", "--data-dir",
                          str(tmp_path / "jpegs"), "--images", "32", "--workers", "1"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    rows = [ln.split("|")[1:-1] for ln in res.stdout.splitlines() if ln.startswith("| ") and ln.count("|") == 4]
    labels = [r[0].strip() for r in rows[1:]]
    assert [lab.split(":")[0].split(",")[0] for lab in labels] == [
        "previous", "workers decode (torchvision) and pad; crops on the device", "--decode gpu", "decode alone",
        "decode alone", "device part"], labels
    assert all(float(v.replace(",", "")) > 0 for r in rows[1:] for v in r[1:])


def test_quick_mae_random_init_is_fine_tuned_like_mae(tmp_path):
    """With MAE in the quick grid, the vit_mini network at random init is fine-tuned too (MAE's protocol), for the
    table's fine-tune gain; a later grid skips it, as it skips finished runs. The random-init code once passed the
    epochs where finetune takes its scaler."""
    import torchvision
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 72), ("test", 8)):  # 144 images: one batch of 128 per epoch
        for c in ("a", "b"):
            (tmp_path / "folder" / split / c).mkdir(parents=True)
            for i in range(n):
                torchvision.io.write_jpeg(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8, generator=g),
                                          str(tmp_path / "folder" / split / c / f"{i}.jpg"))
    res = bash("--quick", "--methods", "mae", "--data-dir", str(tmp_path / "folder"), "--", "--max-steps", "1",
               "--batch-size", "32", "--mi-every", "0", "--finetune-epochs", "0", "--device", "cpu", cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    base = json.loads((tmp_path / "runs" / "imagefolder__runall_quick_random_init__0__vit_mini" / "results.json")
                      .read_text())
    assert base["backbone"] == "vit_mini" and 0 <= base["finetune_top1"] <= 100
    res = bash("--quick", "--methods", "ibot", "--data-dir", str(tmp_path / "folder"), "--", "--max-steps", "1",
               "--batch-size", "32", "--mi-every", "0", "--proj-hidden-dim", "32", "--out-dim", "32", "--device", "cpu",
               cwd=tmp_path)  # a grid without MAE skips the random init evaluated before, fine-tune and all
    assert res.returncode == 0, res.stderr[-2000:]
    assert "random init vit_mini on imagefolder, seed 0: evaluated before" in res.stdout, res.stdout[-2000:]
    again = json.loads((tmp_path / "runs" / "imagefolder__runall_quick_random_init__0__vit_mini" / "results.json")
                       .read_text())
    assert again == base
