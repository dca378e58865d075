"""run_all.sh (dry run and table) and benchmark.py, run as a user would."""
import json
import os
import subprocess
import sys

from conftest import ROOT

MI_SET = ["sdmi", "jmi", "simclr", "byol", "simsiam", "moco_v3", "barlow_twins", "vicreg"]


def bash(*args, cwd, env=None):
    env = dict(os.environ, PYTHON=sys.executable, **(env or {}))
    return subprocess.run(["bash", str(ROOT / "run_all.sh"), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_quick_dry_run_prints_every_method_and_runs_nothing(tmp_path):
    res = bash("--quick", "--dry-run", cwd=tmp_path, env={"CIFAR10_ZIP": str(tmp_path / "absent.zip")})
    assert res.returncode == 0, res.stderr
    cmds = [ln for ln in res.stdout.splitlines() if "/methods/" in ln]
    assert [c.split("/methods/")[1].split(".py")[0] for c in cmds] == MI_SET
    assert all("--dataset synthetic" in c and "--backbone tiny" in c and "--max-steps 300" in c for c in cmds)
    assert not (tmp_path / "runs").exists()


def test_full_grid_dry_run_and_bad_arguments(tmp_path):
    res = bash("--dry-run", cwd=tmp_path)
    assert res.returncode == 0 and len(res.stdout.splitlines()) == 8 * 4 * 3
    for bad in (["--bogus"], ["--methods", "simclr nope", "--dry-run"], ["--set", "xyz"]):
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
    # dataset, method, seeds, steps, kNN, linear, paper, H(R), I(R;Z), ratio; sample std of (60, 64) = 2.83
    assert cells == ["cifar10", "simclr", "2", "10", "51.00 ± 1.41", "62.00 ± 2.83", "87.24", "10.00 ± 0.00", "1.000 ± 0.000", "0.1000 ± 0.0000"]


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
    assert "| 41.00 | 46.00 |" in rows["ibot (student)"] and "| 40.00 | 45.00 |" in rows["ibot"]


def test_benchmark_prints_rows(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmark.py"), "--methods", "simclr", "--backbone", "tiny",
                          "--batch-size", "32", "--steps", "5", "--no-pil-baseline"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    aug = [ln for ln in res.stdout.splitlines() if ln.startswith("| batched")]
    row = next(ln for ln in res.stdout.splitlines() if ln.startswith("| simclr |"))
    assert len(aug) == 2 and float(row.split("|")[2].replace(",", "")) > 0 and float(row.split("|")[3]) > 0
