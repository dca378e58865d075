"""toy_gaussian.py: the closed-form Gaussian MI helper (against -(d/2) log(1 - rho^2), the Schur-complement form and
the PCA closed form), its ridge, the data and separation helpers, and the three experiments at a tiny size."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import toy_gaussian as T

ROOT = Path(__file__).resolve().parents[1]


def correlated(n, d, rho, seed):
    """X ~ N(0, I_d), Y = rho X + sqrt(1 - rho^2) E: I(X;Y) = -(d/2) log(1 - rho^2)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    return x, rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, d))


def schur_mi(cov, dx):
    """Second implementation: I = 1/2 log det S_Z / det(S_Z - S_ZR S_R^-1 S_RZ)."""
    cov = np.asarray(cov, dtype=np.float64)
    s_r, s_z, s_zr = cov[:dx, :dx], cov[dx:, dx:], cov[dx:, :dx]
    cond = s_z - s_zr @ np.linalg.solve(s_r, s_zr.T)
    return 0.5 * (np.linalg.slogdet(s_z)[1] - np.linalg.slogdet(cond)[1])


# ------------------------------------------------------------------------- closed-form Gaussian MI
@pytest.mark.parametrize("rho,d", [(0.0, 2), (0.5, 3), (0.9, 1), (0.8, 4)])
def test_gaussian_mi_rz_correlated_gaussians(rho, d):
    x, y = correlated(100_000, d, rho, seed=int(10 * rho) + d)
    true = -(d / 2) * math.log(1 - rho**2)
    for scale in ("absolute", "per_block", "shared"):  # without a ridge the scaling cannot change the MI
        assert T.gaussian_mi_rz(x, y, ridge=0.0, scale=scale) == pytest.approx(true, abs=0.01)


def test_schur_complement_form_agrees():
    rng = np.random.default_rng(1)
    r = rng.standard_normal((400, 6)) @ rng.standard_normal((6, 6))
    cases = [r @ rng.standard_normal((6, 3)) + 0.3 * rng.standard_normal((400, 3)),  # noisy linear map of R
             T.pca_project(r, 2).numpy()]  # deterministic function of R (needs the ridge)
    for z in cases:
        for scale in ("absolute", "per_block", "shared"):
            for ridge in (1e-4, 1e-2):
                cov = T.ridged_joint_cov(r, z, ridge, scale)
                assert T.gaussian_mi_rz(r, z, ridge, scale) == pytest.approx(schur_mi(cov, 6), rel=1e-9)


def test_ridged_cov_is_sample_cov_plus_ridge():
    rng = np.random.default_rng(2)
    r, z = rng.standard_normal((50, 3)) * 5, rng.standard_normal((50, 2))
    cov = T.ridged_joint_cov(r, z, 0.3, "absolute").numpy()
    np.testing.assert_allclose(cov, np.cov(np.hstack([r, z]).T) + 0.3 * np.eye(5), rtol=1e-12)
    scaled = T.ridged_joint_cov(r, z, 0.0, "per_block").numpy()
    assert np.trace(scaled[:3, :3]) / 3 == pytest.approx(1.0) and np.trace(scaled[3:, 3:]) / 2 == pytest.approx(1.0)
    shared = T.ridged_joint_cov(r, z, 0.0, "shared").numpy()
    assert np.trace(shared[:3, :3]) / 3 == pytest.approx(1.0)
    assert np.trace(shared[3:, 3:]) / 2 < 0.1  # z is divided by the scale of r, not by its own
    with pytest.raises(ValueError):
        T.ridged_joint_cov(r, z, 0.1, "relative")


# --------------------------------------------------------------------------------------------- ridge
def test_ridge_degenerate_pca_closed_form_and_growth():
    """Z = PCA_k(R): singular without a ridge; with an absolute ridge e the MI is
    1/2 sum_i log((l_i + e)^2 / (e (2 l_i + e))), finite, decreasing in e, and +k/2 log 100 per 100x smaller e."""
    rng = np.random.default_rng(3)
    r, _, _ = T.make_blobs(600, 8, 5, 1.0, rng)
    k = 2
    z = T.pca_project(r, k)
    lam = np.sort(np.linalg.eigvalsh(np.cov(r.T)))[::-1][:k]
    with pytest.raises(ValueError, match="positive definite"):
        T.gaussian_mi_rz(r, z, ridge=0.0, scale="absolute")
    ridges = [1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8]
    mis = [T.gaussian_mi_rz(r, z, e, "absolute") for e in ridges]
    for e, mi in zip(ridges, mis):
        expected = 0.5 * np.sum(np.log((lam + e) ** 2 / (e * (2 * lam + e))))
        assert math.isfinite(mi) and mi == pytest.approx(expected, rel=1e-6)
    assert all(a < b for a, b in zip(mis, mis[1:]))  # decreasing as the ridge grows
    assert mis[-1] - mis[-2] == pytest.approx(k / 2 * math.log(100), rel=1e-3)  # unbounded as the ridge -> 0
    for scale in ("shared", "per_block"):
        rel = [T.gaussian_mi_rz(r, z, e, scale) for e in ridges]
        assert all(math.isfinite(v) for v in rel) and all(a < b for a, b in zip(rel, rel[1:]))


def test_ridge_non_degenerate_converges_to_unridged():
    x, y = correlated(5000, 3, 0.7, seed=4)
    for scale in ("absolute", "per_block", "shared"):
        exact = T.gaussian_mi_rz(x, y, 0.0, scale)
        mis = [T.gaussian_mi_rz(x, y, e, scale) for e in (1e-1, 1e-2, 1e-4, 1e-8)]
        assert all(a < b for a, b in zip(mis, mis[1:])) and mis[0] < exact - 0.05
        assert mis[-1] == pytest.approx(exact, abs=1e-6)


def test_relative_ridge_is_unit_free():
    rng = np.random.default_rng(5)
    r, _, _ = T.make_blobs(500, 10, 5, 1.0, rng)
    z = T.pca_project(r, 2).numpy()
    base = {s: T.gaussian_mi_rz(r, z, 1e-3, s) for s in ("per_block", "shared", "absolute")}
    assert T.gaussian_mi_rz(100 * r, 0.01 * z, 1e-3, "per_block") == pytest.approx(base["per_block"], rel=1e-9)
    assert T.gaussian_mi_rz(100 * r, 100 * z, 1e-3, "shared") == pytest.approx(base["shared"], rel=1e-9)
    assert abs(T.gaussian_mi_rz(100 * r, 100 * z, 1e-3, "absolute") - base["absolute"]) > 1.0


def test_pca_trends_two_components():
    """The AdaDim claims for 2 components (shared ridge): I(R;Z) rises with n_features, falls with cluster_std."""
    rng = np.random.default_rng(6)

    def mi(d, std):
        vals = []
        for _ in range(3):
            r, _, _ = T.make_blobs(1000, d, 5, std, rng)
            vals.append(T.gaussian_mi_rz(r, T.pca_project(r, 2), 1e-3, "shared"))
        return np.mean(vals)

    assert mi(100, 1.0) > mi(10, 1.0) + 1.0
    assert mi(50, 16.0) < mi(50, 1.0) - 0.5


# ---------------------------------------------------------------------------------------------- data
def test_make_blobs_and_separation():
    rng = np.random.default_rng(7)
    x, y, c = T.make_blobs(1000, 4, 5, 0.5, rng)
    assert x.shape == (1000, 4) and c.shape == (5, 4) and np.all(np.abs(c) <= 10)
    assert np.bincount(y).tolist() == [200] * 5
    assert np.std(x - c[y]) == pytest.approx(0.5, rel=0.05)
    e = np.array([[-1.0, 0.0], [1.0, 0.0], [10.0, -1.0], [10.0, 1.0]])
    # cluster means (0, 0), (10, 0): squared distance 25 to the grand mean; within: 1 for every point
    assert T.separation(e, np.array([0, 0, 1, 1])) == pytest.approx(25.0)


# ------------------------------------------------------------------------------- the experiments, tiny
def run_dir(tmp_path, experiment):
    (d,) = (tmp_path / "runs").glob(f"toy_gaussian__{experiment}__0__*")
    return d


def printed(path, tmp_path, stdout):
    """The figure exists, is not empty, and its path (relative to where the script ran) was printed."""
    return path.stat().st_size > 10_000 and f"figure: {path.relative_to(tmp_path)}" in stdout


def scalar_tags(path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(path))
    acc.Reload()
    return set(acc.Tags()["scalars"])


def test_experiment_trajectories(script, tmp_path):
    res = script("toy_gaussian.py", "--experiment", "trajectories", "--steps", "30", "--record-every", "10",
                 "--n-samples", "600", "--batch-size", "64")
    assert res.returncode == 0, res.stderr[-3000:]
    d = run_dir(tmp_path, "trajectories")
    for png in ("trajectories.png", "mi.png"):
        assert printed(d / png, tmp_path, res.stdout)
    results = json.loads((d / "results.json").read_text())
    assert set(T.ALL_METHODS) <= set(results)  # every method trained (an import failure is an error, not a skip)
    for m in T.ALL_METHODS:
        assert results[m]["separation"] > 0 and math.isfinite(results[m]["mi/cos_dv"])
    tags = scalar_tags(d / "simclr")
    assert {"mi/cos_dv", "mi/infonce", "mi/jsd", "losses/info_nce", "losses/total", "eval/separation"} <= tags
    assert "separation (L2-normalized)" in res.stdout


def test_experiment_pca(script, tmp_path):
    res = script("toy_gaussian.py", "--experiment", "pca", "--draws", "3", "--n-features-sweep", "10", "30",
              "--cluster-std-sweep", "0.5", "4", "--fixed-n-features", "20")
    assert res.returncode == 0, res.stderr[-3000:]
    d = run_dir(tmp_path, "pca")
    assert printed(d / "pca.png", tmp_path, res.stdout)
    results = json.loads((d / "results.json").read_text())
    assert set(results) == {"n_features", "cluster_std"} and set(results["n_features"]) == {"k2", "k10"}
    assert all(math.isfinite(v) for sw in results.values() for k in sw.values() for v in k["mean"])
    assert any(t.startswith("pca_k2/") for t in scalar_tags(d))


@pytest.mark.parametrize("kw", [dict(experiment="pca", n_features_sweep=(5, 20)),  # 10 components > 5 features
                                dict(experiment="trajectories", methods=()), dict(experiment="mlp", epochs=0),
                                dict(experiment="pca", ridge=-1.0)])
def test_bad_flags_write_nothing(tmp_path, monkeypatch, kw):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(T.common.UserError):
        T.main(T.Args(**kw))
    assert not (tmp_path / "runs").exists()


def test_experiment_mlp(script, tmp_path):
    res = script("toy_gaussian.py", "--experiment", "mlp", "--epochs", "5")
    assert res.returncode == 0, res.stderr[-3000:]
    d = run_dir(tmp_path, "mlp")
    assert printed(d / "mlp.png", tmp_path, res.stdout)
    results = json.loads((d / "results.json").read_text())
    assert set(results) == {"simclr", "vicreg"} and all(math.isfinite(v["I_XR"]) for v in results.values())
    assert {"mi/I_XR", "mi/I_XZ"} <= scalar_tags(d / "vicreg")
