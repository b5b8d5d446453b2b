"""Probes inside the training loop and the plots made from a run: probes leave the training untouched."""

import os

import numpy as np
import pytest
from test_train import final_state, load_config

from jaxnorm.lab import plots
from jaxnorm.lab.train import loop
from jaxnorm.lab.train.metrics import read_metrics


def test_probes_in_the_loop_leave_training_unchanged_and_plot(tmp_path):
    base = dict(num_steps=10, checkpoint_every=10, eval_every=10, log_every=5, dropout="dropout", dropout_rate=0.1)
    base.update(schedule="constant", learning_rate=0.05, optimizer="momentum", momentum=0.9)
    loop.train_and_evaluate(load_config(**base), str(tmp_path / "plain"))
    c = load_config(**base)
    c.probes.every = 5
    c.probes.kinds = ("santurkar", "ics", "sharpness")
    c.probes.ics_layers = ("conv_0", "conv_1")
    loop.train_and_evaluate(c, str(tmp_path / "probed"))
    _, a = final_state(tmp_path / "plain")
    _, b = final_state(tmp_path / "probed")
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    rows = [r for r in read_metrics(tmp_path / "probed") if r["split"] == "probe"]
    assert [r["step"] for r in rows] == [0, 5]
    assert all(len(r["santurkar/losses"]) == 8 and r["santurkar/beta_smoothness"] > 0 for r in rows)
    assert {"ics/l2/conv_0", "ics/cos/conv_1"} <= set(rows[0]) and "ics/l2/head" not in rows[0]
    assert rows[0]["ics/l2/conv_0"] == 0.0  # nothing precedes the first layer
    for r in rows:  # heavy-ball momentum 0.9 at η = 0.05: the threshold (2 + 2β)/η = 76
        assert r["sharpness/threshold"] == pytest.approx(76.0) and r["sharpness/lambda_max"] > 0
        assert r["sharpness/ratio"] == pytest.approx(r["sharpness/lambda_max"] / 76.0)
        assert 1 <= r["sharpness/num_products"] <= 20 and r["sharpness/converged"] in (True, False)
        # the step-size context beside the landscape rows (Cohen et al.'s edge of stability)
        assert r["santurkar/lr"] == r["ics/lr"] == pytest.approx(0.05)
        assert r["santurkar/beta_eta"] == pytest.approx(r["santurkar/beta_smoothness"] * 0.05, rel=1e-6)
        assert r["santurkar/lambda_eta_half"] == pytest.approx(r["sharpness/lambda_max"] * 0.025, rel=1e-6)
        assert r["santurkar/rel_grad_change"] == pytest.approx(
            r["santurkar/grad_change_max"] / r["santurkar/grad_norm"], rel=1e-6
        )
        assert r["ics/sharpness_ratio"] == r["sharpness/ratio"]
    paths = plots.make_plots([str(tmp_path / "probed"), str(tmp_path / "plain")], str(tmp_path / "figs"))
    assert sorted(os.path.basename(p) for p in paths) == ["curves.png", "ics.png", "santurkar.png", "sharpness.png"]
    assert all(os.path.getsize(p) > 10_000 for p in paths)
    assert plots.main([str(tmp_path / "missing")]) == 1


def test_bad_probe_config_is_refused_before_writing(tmp_path):
    c = load_config()
    c.probes.every = 5
    c.probes.kinds = ("santurkar", "hessian_magic")

    with pytest.raises(ValueError, match=r"unknown probes \['hessian_magic'\]"):
        loop.train_and_evaluate(c, str(tmp_path / "wd"))
    assert not (tmp_path / "wd").exists()
    c = load_config()
    c.probes.every = 5
    c.probes.kinds = ("ics",)
    c.probes.ics_layers = ("conv_9",)
    with pytest.raises(ValueError, match=r"\['conv_9'\] are not layers of simple_cnn; valid: \[.*'conv_0'"):
        loop.train_and_evaluate(c, str(tmp_path / "wd2"))
    assert not (tmp_path / "wd2").exists()


def test_deep_linear_network_config_regression_with_probes(tmp_path):
    c = load_config("dln", num_steps=30, log_every=1, eval_every=30, checkpoint_every=30)
    c.model_kwargs.depth = 6
    c.probes.every = 10
    c.probes.kinds = ("santurkar", "ics", "top_eigenvalues", "spectral_density", "loss_slice_1d")
    c.learning_rate = 1e-2
    result = loop.train_and_evaluate(c, str(tmp_path / "dln"))
    assert set(result) == {"loss"}  # regression: no accuracy
    train = [r for r in read_metrics(tmp_path / "dln") if r["split"] == "train"]
    assert "accuracy" not in train[0] and train[-1]["loss"] < train[0]["loss"]
    probes = [r for r in read_metrics(tmp_path / "dln") if r["split"] == "probe"]
    assert [r["step"] for r in probes] == [0, 10, 20]
    assert {"santurkar/beta_smoothness", "ics/l2/dense_5", "hessian/top_eigenvalue"} <= set(probes[0])
    density = np.asarray(probes[0]["hessian/density"])
    grid = np.asarray(probes[0]["hessian/density_grid"])
    assert abs(np.sum(density) * (grid[1] - grid[0]) - 1.0) < 0.05  # a density: integrates to 1
    paths = plots.make_plots([str(tmp_path / "dln")])
    assert {"density.png", "hessian.png", "slices.png", "santurkar.png", "ics.png"} <= {
        os.path.basename(p) for p in paths
    }


def test_linear_regression_dataset_is_a_fixed_linear_map():
    from jaxnorm.lab import data

    ds = data.linear_regression()
    assert ds.info.task == "regression" and ds.info.num_train == 1000 and ds.train.x.shape == (1000, 10)
    a, *_ = np.linalg.lstsq(ds.train.x, ds.train.y, rcond=None)
    np.testing.assert_allclose(ds.train.x @ a, ds.train.y, atol=1e-4)  # exactly linear
    np.testing.assert_array_equal(data.linear_regression().train.y, ds.train.y)  # deterministic
