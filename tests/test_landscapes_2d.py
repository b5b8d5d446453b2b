"""2-D landscapes: the surface and the interpolation of a quadratic equal the formula at every grid point; the
trajectory PCA recovers a known plane; in the training loop the ``loss_slice_2d`` probe (with the caller's batch-norm
mode, recorded in every row) and ``python -m jaxnorm.lab.plots RUN --landscapes`` draw contour plots."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train import load_config

import jaxnorm.probes as jp
from jaxnorm.lab import plots
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import loop
from jaxnorm.lab.train.metrics import read_metrics

R = np.random.default_rng(0)
A = R.normal(size=(6, 6))
A = (A + A.T) / 2
B = R.normal(size=6)


def quad(p, _):
    w = jnp.concatenate([p["u"], p["v"].reshape(-1)])
    return 0.5 * w @ jnp.asarray(A, jnp.float32) @ w + jnp.asarray(B, jnp.float32) @ w


def formula(w):
    return 0.5 * w @ A @ w + B @ w


def tree(w):
    w = np.asarray(w, np.float32)
    return {"u": jnp.asarray(w[:2]), "v": jnp.asarray(w[2:].reshape(2, 2))}


def flat(t):
    return np.concatenate([np.asarray(t["u"]), np.asarray(t["v"]).reshape(-1)]).astype(np.float64)


@pytest.fixture(autouse=True)
def _precise(highest_precision):
    pass


def test_surface_of_a_quadratic_matches_the_formula_at_every_grid_point():
    w0, d1, d2 = R.normal(size=6), R.normal(size=6), R.normal(size=6)
    out = jp.loss_slice_2d(quad, tree(w0), None, directions=(tree(d1), tree(d2)), steps=(7, 5), span=(-2.0, 1.5))
    assert out["losses"].shape == (7, 5)
    for i, a in enumerate(np.asarray(out["alphas"])):
        for j, b in enumerate(np.asarray(out["betas"])):
            np.testing.assert_allclose(out["losses"][i, j], formula(w0 + a * d1 + b * d2), rtol=1e-5, atol=1e-4)


def test_interpolation_of_a_quadratic_matches_the_formula():
    a, b = R.normal(size=6), R.normal(size=6)
    out = jp.interpolate(quad, tree(a), tree(b), None, steps=9)
    alphas = np.asarray(out["alphas"])
    np.testing.assert_allclose(alphas[[0, -1]], [-0.5, 1.5])
    np.testing.assert_allclose(out["losses"], [formula((1 - t) * a + t * b) for t in alphas], rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="differ in leaf shapes"):
        jp.interpolate(quad, tree(a), {"u": jnp.zeros(3), "v": jnp.zeros((2, 2))}, None)


def test_trajectory_pca_recovers_the_plane_of_a_trajectory():
    e1, e2 = np.linalg.qr(R.normal(size=(6, 2)))[0].T
    center = R.normal(size=6)
    coords = np.array([[3.0, 1.0], [2.0, -0.5], [1.2, 0.4], [0.5, -0.2], [0.0, 0.0]])
    points = [tree(center + a * e1 + b * e2) for a, b in coords]
    pca = jp.trajectory_pca(points)
    d1, d2 = (flat(d) for d in pca["directions"])
    for d in (d1, d2):
        np.testing.assert_allclose(np.linalg.norm(d), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm([d @ e1, d @ e2]), 1.0, rtol=1e-4)  # in the plane
    np.testing.assert_allclose(abs(d1 @ d2), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.sum(pca["explained_variance"]), 1.0, rtol=1e-4)
    # the coordinates reproduce the points: center + c1 d1 + c2 d2
    for (c1, c2), p in zip(np.asarray(pca["coords"]), points):
        np.testing.assert_allclose(center + c1 * d1 + c2 * d2, flat(p), atol=1e-4)
    surf = jp.trajectory_surface(quad, points, None, steps=5, margin=0.1)
    for i, a in enumerate(np.asarray(surf["alphas"])):
        for j, b in enumerate(np.asarray(surf["betas"])):
            np.testing.assert_allclose(surf["losses"][i, j], formula(center + a * d1 + b * d2), rtol=1e-4, atol=1e-3)
    c = np.asarray(surf["coords"])
    assert surf["alphas"][0] < c[:, 0].min() and surf["alphas"][-1] > c[:, 0].max()
    with pytest.raises(ValueError, match="at least 3 parameter vectors"):
        jp.trajectory_pca(points[:2])
    with pytest.raises(ValueError, match="fewer than 2 directions"):
        jp.trajectory_pca([tree(center + t * e1) for t in (0.0, 1.0, 2.0)])


def test_trajectory_pca_refuses_every_float32_line_and_keeps_a_thin_plane():
    """Points on a line in float32 keep ~1e-7 of rounding off it (more at large offsets): still one direction. A
    plane whose second direction is 1e-3 of the first is still two."""
    for seed in range(40):
        rng = np.random.default_rng(seed)
        e1, e2 = np.linalg.qr(rng.normal(size=(6, 2)))[0].T
        center = rng.normal(size=6) * (1.0, 10.0, 100.0)[seed % 3]
        with pytest.raises(ValueError, match="fewer than 2 directions"):
            jp.trajectory_pca([tree(center + t * e1) for t in (0.0, 1.0, 2.0)])
        thin = jp.trajectory_pca([tree(center + t * e1 + 1e-3 * t * t * e2) for t in (0.0, 1.0, 2.0)])
        assert 0 < float(thin["explained_variance"][1]) < 1e-5


def test_2d_probe_in_the_loop_with_eval_mode_batch_norm_and_the_landscape_figures(tmp_path):
    c = load_config(num_steps=12, checkpoint_every=4, eval_every=12, log_every=4, keep_checkpoints=5)
    c.probes.every = 6
    c.probes.kinds = ("loss_slice_2d", "hessian_trace")
    c.probes.bn_mode = "eval"
    wd = tmp_path / "run"
    loop.train_and_evaluate(c, str(wd))
    rows = [r for r in read_metrics(wd) if r["split"] == "probe"]
    assert [r["step"] for r in rows] == [0, 6]
    assert all(r["bn_mode"] == "eval" for r in rows)
    losses = np.asarray(rows[-1]["slice_2d/losses"])
    assert losses.shape == (11, 11) and np.all(np.isfinite(losses))
    # the centre of the grid is the unperturbed network: its eval-mode loss
    assert losses[5, 5] == pytest.approx(np.min(losses), rel=0.5)
    assert plots.main([str(wd), "--out", str(tmp_path / "figs"), "--landscapes"]) == 0
    made = sorted(os.listdir(tmp_path / "figs"))
    assert {"surfaces.png", "trajectory.png", "interpolation.png"} <= set(made), made
    assert all(os.path.getsize(tmp_path / "figs" / f) > 10_000 for f in made)
    # bn_mode is honoured, not only recorded: the same run probed with batch statistics (train mode) sees another
    # surface, the same at the step-0 probe only if the running statistics equalled the batch's (they do not)
    c.probes.bn_mode = "train"
    c.probes.kinds = ("loss_slice_2d",)
    loop.train_and_evaluate(c, str(tmp_path / "train_mode"))
    train_rows = [r for r in read_metrics(tmp_path / "train_mode") if r["split"] == "probe"]
    assert [r["bn_mode"] for r in train_rows] == ["train", "train"]
    for ev, tr in zip(rows, train_rows, strict=True):
        a, b = np.asarray(ev["slice_2d/losses"]), np.asarray(tr["slice_2d/losses"])
        assert not np.allclose(a, b, rtol=1e-3), ev["step"]


def test_bn_mode_is_checked_and_earlier_runs_without_it_still_resume():
    c = load_config()
    c.probes.bn_mode = "inference"
    with pytest.raises(ValueError, match="unknown probes.bn_mode 'inference'"):
        config_lib.validate(c)
    old = json.loads(load_config().to_json())
    del old["probes"]["bn_mode"]
    assert config_lib.upgrade(old)["probes"]["bn_mode"] == "train"
    new = json.loads(json.dumps(config_lib.result_affecting(load_config())))  # as check_workdir compares them
    assert config_lib.result_affecting(old) == new


def test_the_filter_normalized_surface_leaves_batch_norm_parameters_out_by_default():
    from jaxnorm.lab.models import SimpleCNN

    model = SimpleCNN(channels=(4,), num_classes=3, norm="batch")
    x = np.random.default_rng(0).normal(size=(8, 8, 8, 1)).astype(np.float32)
    variables = model.init(jax.random.key(0), x, train=False)
    d = jp.filter_normalized_direction(jax.random.key(1), variables["params"])
    assert not np.any(np.asarray(d["norm_0"]["scale"])) and not np.any(np.asarray(d["norm_0"]["bias"]))
    assert np.any(np.asarray(d["conv_0"]["kernel"]))
    loss_fn = jp.model_loss_fn(model, variables["batch_stats"])
    out = jp.loss_slice_2d(
        loss_fn, variables["params"], {"x": x, "y": np.arange(8) % 3}, key=jax.random.key(1), steps=5, span=3.0
    )
    assert np.all(np.isfinite(out["losses"]))
