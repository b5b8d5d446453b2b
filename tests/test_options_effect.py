"""Options tested by their effect (issue 31, item 2), each against a value computed another way: the optimizers,
weight decay, momentum and the schedules against their update rules written out in float64 numpy; every norm's ε
against the float64 formula where ε matters (a variance of the order of ε); the loop's model options against the
model built directly. An option that is ignored (its default used instead) fails here."""

from __future__ import annotations

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnorm as jn
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import optim

# ---- optimizers, weight decay, momentum -----------------------------------------------------------------------------

LR, MU, WD = 0.05, 0.8, 0.03  # none of them the config's default (0.1, 0.9, 5e-4)


def _reference(name: str, params: dict, grads: list[dict], wd: float) -> list[dict]:
    """The parameters after each step, by the update rules in float64 (PyTorch's SGD and Adam with L2 weight decay
    added to the gradient; AdamW's decoupled decay), weight decay on the kernels only (ndim > 1)."""
    w = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = {k: np.zeros_like(v) for k, v in w.items()}
    m = {k: np.zeros_like(v) for k, v in w.items()}
    v2 = {k: np.zeros_like(v) for k, v in w.items()}
    out = []
    for t, g in enumerate(grads, start=1):
        new = {}
        for k in w:
            gk = np.asarray(g[k], np.float64)
            decay = wd * w[k] if w[k].ndim > 1 else 0.0
            if name != "adamw":
                gk = gk + decay
            if name == "sgd":
                step = gk
            elif name in ("momentum", "nesterov"):
                buf[k] = gk + MU * buf[k]
                step = gk + MU * buf[k] if name == "nesterov" else buf[k]
            else:  # adam, adamw: b1 0.9, b2 0.999, eps 1e-8 (optax's and PyTorch's defaults)
                m[k] = 0.9 * m[k] + 0.1 * gk
                v2[k] = 0.999 * v2[k] + 0.001 * gk**2
                step = (m[k] / (1 - 0.9**t)) / (np.sqrt(v2[k] / (1 - 0.999**t)) + 1e-8)
                if name == "adamw":
                    step = step + decay
            new[k] = w[k] - LR * step
        w = new
        out.append(w)
    return out


@pytest.mark.parametrize("wd", [0.0, WD])
@pytest.mark.parametrize("name", config_lib.OPTIMIZERS)
def test_each_optimizer_with_its_momentum_and_weight_decay_follows_its_update_rule(name, wd):
    c = config_lib.base_config()
    c.optimizer, c.learning_rate, c.momentum, c.weight_decay, c.schedule = name, LR, MU, wd, "constant"
    tx, _ = optim.make_optimizer(c)
    rng = np.random.default_rng(0)
    params = {"kernel": rng.normal(size=(3, 4)).astype(np.float32), "bias": rng.normal(size=4).astype(np.float32)}
    grads = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()} for _ in range(3)]
    state, p = tx.init(params), jax.tree.map(jnp.asarray, params)
    for g, ref in zip(grads, _reference(name, params, grads, wd)):
        updates, state = tx.update(jax.tree.map(jnp.asarray, g), state, p)
        p = jax.tree.map(lambda a, u: a + u, p, updates)
        for k in ref:  # float32 arithmetic against float64 (measured ≤ 1.5e-6 absolute on values of order 1)
            np.testing.assert_allclose(np.asarray(p[k]), ref[k], rtol=1e-5, atol=3e-6, err_msg=f"{name} {k}")


# ---- schedules ------------------------------------------------------------------------------------------------------


def _lr_reference(schedule: str, t: int, *, n: int, warm: int, bounds, factor: float) -> float:
    if t < warm:
        return LR * t / warm
    if schedule == "constant":
        return LR
    if schedule == "step":
        return LR * factor ** sum(t >= int(f * n) for f in bounds)
    s = min(t - warm, n - warm) / (n - warm)
    return LR * 0.5 * (1 + math.cos(math.pi * s))


@pytest.mark.parametrize("warm", [0, 4])
@pytest.mark.parametrize("schedule", ["constant", "step", "cosine"])
def test_schedules_warm_up_and_decay_where_the_config_says(schedule, warm):
    c = config_lib.base_config()
    c.learning_rate, c.schedule, c.warmup_steps, c.num_steps = LR, schedule, warm, 20
    c.decay_boundaries, c.decay_factor = (0.3, 0.65), 0.25  # not the defaults (0.5, 0.75), 0.1
    sched = optim.learning_rate_schedule(c)
    for t in range(0, 25):  # past the horizon too: the final value stays
        ref = _lr_reference(schedule, t, n=20, warm=warm, bounds=(0.3, 0.65), factor=0.25)
        # optax computes in float32: measured ≤ 1.2e-6 relative
        assert float(sched(t)) == pytest.approx(ref, rel=1e-5, abs=1e-9), (schedule, warm, t)


# ---- ε of every norm: a variance of the order of ε ------------------------------------------------------------------


def _x(shape, var=1e-4, seed=0):
    """A float32 array whose per-channel (and per-example) variance is about ``var``: ε = 1e-2 dominates it."""
    return (np.sqrt(var) * np.random.default_rng(seed).normal(size=shape) + 3.0).astype(np.float32)


def _normalized(x64, axes, eps):
    mu = x64.mean(axis=axes, keepdims=True)
    return (x64 - mu) / np.sqrt(((x64 - mu) ** 2).mean(axis=axes, keepdims=True) + eps)


EPS = 1e-2


def test_epsilon_reaches_every_norm():
    x = _x((6, 5, 4))
    x64 = x.astype(np.float64)
    stats = jn.init_batch_stats(4)
    cases = {
        "batch_norm": (jn.batch_norm(x, None, None, stats, train=True, epsilon=EPS)[0], (0, 1)),
        "batch_renorm": (
            jn.batch_renorm(x, None, None, stats, train=True, epsilon=EPS, r_max=1.0, d_max=0.0)[0],
            (0, 1),
        ),
        "layer_norm": (jn.layer_norm(x, epsilon=EPS), (1, 2)),
        "instance_norm": (jn.instance_norm(x, epsilon=EPS), (1,)),
        "group_norm": (jn.group_norm(x, num_groups=2, epsilon=EPS), None),
    }
    for name, (y, axes) in cases.items():
        if name == "group_norm":  # two groups of two channels: per example, over the length and the group's channels
            g = x64.reshape(6, 5, 2, 2)
            ref = _normalized(g, (1, 3), EPS).reshape(6, 5, 4)
        else:
            ref = _normalized(x64, axes, EPS)
        np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5, err_msg=name)
        assert np.abs(ref).max() < 0.5  # ε dominates: with the default 1e-5 the output would be of order 1–3
    ms = (x64**2).mean(axis=(1, 2), keepdims=True)  # RMS norm: no centring, so ε enters beside the mean square
    np.testing.assert_allclose(np.asarray(jn.rms_norm(x, epsilon=5.0)), x64 / np.sqrt(ms + 5.0), rtol=1e-5)
    # eval mode: the running variance with ε
    run = {"mean": jnp.full(4, 3.0), "var": jnp.full(4, 1e-4), "count": jnp.ones((), jnp.int32)}
    y_eval, _ = jn.batch_norm(x, None, None, run, train=False, epsilon=EPS)
    np.testing.assert_allclose(np.asarray(y_eval), (x64 - 3.0) / np.sqrt(1e-4 + EPS), rtol=1e-5, atol=1e-6)
    k = _x((3, 4, 5), seed=1)
    k64 = k.astype(np.float64)
    np.testing.assert_allclose(
        np.asarray(jn.weight_standardize(k, epsilon=EPS)), _normalized(k64, (0, 1), EPS), rtol=1e-5, atol=1e-5
    )


# ---- the loop's model and data options reach what it builds ---------------------------------------------------------


def _smoke_exp(**over):
    from test_train import load_config

    from jaxnorm.lab.train import loop

    c = load_config(batch_size=32)
    for k, v in over.items():
        parent, _, leaf = k.rpartition(".")  # "model_kwargs.epsilon", "probes.every": a nested field
        (c[parent] if parent else c)[leaf] = v
    return loop.build(c)


def test_the_loops_model_and_data_options_reach_the_model_and_the_batches():
    from jaxnorm.lab import models as models_lib
    from jaxnorm.lab.data import batch_at
    from jaxnorm.lab.train import loop

    base = _smoke_exp()
    x = loop.train_batch(base, 0)["x"]
    key = jax.random.key(0)

    def train_mode(model):  # batch statistics: in eval mode at initialization BN is ≈ the identity
        v = model.init(key, x, train=False)
        return np.asarray(model.apply(v, x, train=True, mutable=["batch_stats"])[0])

    def outputs(exp):
        return train_mode(exp.eval_model), None

    y0, _ = outputs(base)
    direct = dict(num_classes=10, channels=(8, 16), momentum=0.99, dropout="none", dropout_rate=0.0)
    for key_, value, kwargs in (
        ("norm", "layer", dict(norm="layer", norm_position="before", activation="relu")),
        ("activation", "tanh", dict(norm="batch", norm_position="before", activation="tanh")),
        ("norm_position", "after", dict(norm="batch", norm_position="after", activation="relu")),
        ("model_kwargs.epsilon", 3.0, dict(norm="batch", norm_position="before", activation="relu", epsilon=3.0)),
    ):
        exp = _smoke_exp(**{key_: value})
        y, _ = outputs(exp)
        assert not np.allclose(y, y0, atol=1e-4), key_  # the option changed the network
        ref = models_lib.build_model("simple_cnn", **direct, **kwargs)  # the model built without the loop
        np.testing.assert_array_equal(y, train_mode(ref))
    # kernel_norm, without BN after the convolutions (BN would undo the kernel's scale)
    plain = dict(norm="none", norm_position="before", activation="relu")
    y, _ = outputs(_smoke_exp(norm="none", kernel_norm="spectral"))
    assert not np.allclose(y, outputs(_smoke_exp(norm="none"))[0], atol=1e-4)
    ref = models_lib.build_model("simple_cnn", **direct, **plain, kernel_norm="spectral")
    np.testing.assert_array_equal(y, train_mode(ref))
    # the batch: its size, and augmentation as the data layer does it
    small = _smoke_exp(batch_size=24, augment=True)
    b = loop.train_batch(small, 3)
    assert b["x"].shape[0] == 24
    plain = batch_at(small.dataset.train, 3, 24, seed=small.config.seed, augment=False)
    same = batch_at(small.dataset.train, 3, 24, seed=small.config.seed, augment=True)
    np.testing.assert_array_equal(b["x"], same["x"])
    assert not np.array_equal(b["x"], plain["x"])
    with loop.input_pipeline(small, 3) as pipeline:  # what the training steps read: augmented too
        np.testing.assert_array_equal(next(pipeline)["x"], same["x"])


def test_drop_remainder_eval_batch_size_and_data_dir_reach_the_data(tmp_path):
    """drop_remainder=False: each epoch's last step is the short batch, padded and masked (True: every step is
    full), in the loop's batch and in its input pipeline; eval_batch_size: the number of evaluation batches;
    data_dir: where the dataset is prepared."""
    from jaxnorm.lab.data import num_batches
    from jaxnorm.lab.train import loop

    kept = _smoke_exp(norm="none", drop_remainder=False, data_dir=str(tmp_path / "tfds"), eval_batch_size=40)
    n = len(kept.dataset.train)
    assert n % 32, "the smoke train split must not be a multiple of the batch"
    last = num_batches(n, 32, drop_remainder=False) - 1
    assert int(loop.train_batch(kept, last)["mask"].sum()) == n % 32
    with loop.input_pipeline(kept, last) as pipeline:
        np.testing.assert_array_equal(next(pipeline)["mask"], loop.train_batch(kept, last)["mask"])
    dropped = _smoke_exp(norm="none", drop_remainder=True)
    assert all(bool(loop.train_batch(dropped, t)["mask"].all()) for t in (last - 1, last, last + 1))
    assert any(os.scandir(tmp_path / "tfds")) and kept.dataset.info.data_dir == str(tmp_path / "tfds")
    with pytest.raises(ValueError, match=r"drop_remainder=False pads the last batch .* norm='batch'"):
        _smoke_exp(norm="batch", drop_remainder=False)  # batch statistics would count the padding
    calls = []

    def eval_step(variables, batch):
        calls.append(int(batch["mask"].sum()))
        return {"loss_sum": 0.0, "correct": 0, "count": int(batch["mask"].sum())}

    loop.evaluate(kept, eval_step, None)
    m = len(kept.dataset.test)
    assert len(calls) == -(-m // 40) and sum(calls) == m


# ---- training-loop options, through train_and_evaluate ---------------------------------------------------------------


def _first_train_row(workdir):
    from jaxnorm.lab.train.metrics import read_metrics

    return next(r for r in read_metrics(str(workdir)) if r["split"] == "train")


def test_embedding_reg_from_the_config_adds_its_penalty_to_the_loss(tmp_path):
    from test_train import load_config

    from jaxnorm.lab.train import loop

    rows = {}
    for lam in (0.0, 0.5):  # the same initialization and first batch: the first step's loss differs by λ·‖h‖²
        c = load_config(num_steps=1, log_every=1, eval_every=1, checkpoint_every=1, log_embedding_norm=True)
        c.embedding_reg = lam
        loop.train_and_evaluate(c, str(tmp_path / str(lam)))
        rows[lam] = _first_train_row(tmp_path / str(lam))
    h2 = rows[0.0]["embedding_norm_sq"]
    assert h2 > 0 and rows[0.5]["embedding_norm_sq"] == pytest.approx(h2, rel=1e-6)
    assert rows[0.5]["loss"] - rows[0.0]["loss"] == pytest.approx(0.5 * h2, rel=1e-4)


def test_sync_bn_from_the_config_decides_whose_statistics_normalize(tmp_path):
    """shard_map over the 4 fake devices: the first step's loss with synchronized statistics is the one-device
    loss on the global batch; without, each device's own batch of 8 normalizes it (ghost batches): another loss.
    On one device (parallel='none') sync_bn changes nothing."""
    from test_train import final_state, load_config

    from jaxnorm.lab.train import loop

    loss = {}
    for name, over in (("one", dict(parallel="none")), ("sync", dict(parallel="shard_map", sync_bn=True))) + (
        ("ghost", dict(parallel="shard_map", sync_bn=False)),
        ("one_unsynced", dict(parallel="none", sync_bn=False)),  # one device: its batch is the global batch
        ("auto_ghost", dict(parallel="auto", sync_bn=False)),  # 'auto' picks the per-device mode sync_bn asks for
        ("ghost_one", dict(parallel="none")),  # ghost batch norm on one device: 4 virtual batches of 8
    ):
        c = load_config(num_steps=1, log_every=1, eval_every=1, checkpoint_every=1, **over)
        if name == "ghost_one":
            c.model_kwargs.norm_kwargs = {"virtual_batch_size": c.batch_size // 4}
        loop.train_and_evaluate(c, str(tmp_path / name))
        loss[name] = _first_train_row(tmp_path / name)["loss"]
    assert loss["sync"] == pytest.approx(loss["one"], rel=1e-5)
    assert abs(loss["ghost"] - loss["one"]) > 1e-3 * abs(loss["one"]), loss
    assert loss["one_unsynced"] == loss["one"]  # parallel='none' is honoured: no devices to split the batch over
    assert loss["auto_ghost"] == pytest.approx(loss["ghost"], rel=1e-6)
    # ... and the running statistics, which then differ per device, are averaged over the devices: those of ghost
    # batch norm on one device
    assert loss["ghost_one"] == pytest.approx(loss["ghost"], rel=1e-5)
    ghost, ghost_one = final_state(tmp_path / "ghost")[1], final_state(tmp_path / "ghost_one")[1]
    stats = [k for k in ghost if "batch_stats" in k]
    assert stats and all(np.allclose(ghost[k], ghost_one[k], rtol=1e-5, atol=1e-6) for k in stats), stats


def test_train_rows_at_every_log_eval_and_checkpoint_step_and_progress_counts_to_num_steps(tmp_path, capfd):
    """A train row after every step a log, an evaluation or a checkpoint falls on (a resume rewinds to a
    checkpoint's row; an evaluation has its train row beside it); the progress lines count to ``num_steps``."""
    from test_train import load_config

    from jaxnorm.lab.train import loop
    from jaxnorm.lab.train.metrics import read_metrics

    c = load_config(num_steps=10, log_every=4, eval_every=3, checkpoint_every=5, progress=True)
    loop.train_and_evaluate(c, str(tmp_path / "run"))
    rows = read_metrics(tmp_path / "run")
    assert [r["step"] for r in rows if r["split"] == "train"] == [3, 4, 5, 6, 8, 9, 10]
    steps = re.findall(r"step (\d+)/(\d+) ", capfd.readouterr().err)
    assert steps and {n for _, n in steps} == {"10"} and steps[-1][0] == "10"


def test_the_sharpness_probe_takes_the_threshold_of_the_configured_optimizer():
    """Plain SGD at η = 0.05 is stable below λ_max = 2/η = 40 (heavy-ball momentum 0.9 would give 76)."""
    from jaxnorm.lab.train import loop

    over = {"probes.every": 1, "probes.kinds": ("sharpness",)}
    exp = _smoke_exp(optimizer="sgd", learning_rate=0.05, schedule="constant", **over)
    state = loop.initial_state(exp)
    probe = loop.make_probes(exp, jax.eval_shape(lambda: state.variables()))
    row = probe(state, loop.train_batch(exp, 0), 0)
    assert row["sharpness/threshold"] == pytest.approx(40.0)


def test_restore_step_resumes_from_that_checkpoint_and_trains_again_from_it(tmp_path):
    from test_train import final_state, load_config

    from jaxnorm.lab.train import loop
    from jaxnorm.lab.train.metrics import read_metrics

    def train_rows():
        return {r["step"]: r for r in read_metrics(str(wd)) if r["split"] == "train"}

    wd = tmp_path / "run"
    c = load_config(num_steps=10, log_every=1, eval_every=10, checkpoint_every=5, keep_checkpoints=3)
    loop.train_and_evaluate(c, str(wd))
    _, first = final_state(wd)
    rows = train_rows()
    c.restore_step = 5
    loop.train_and_evaluate(c, str(wd))
    again = train_rows()
    assert sorted(again) == list(range(1, 11))
    # steps 1–5 kept their rows; 6–10 ran again (their measured speed is new): the run restored step 5, not 10
    assert all(again[s] == rows[s] for s in range(1, 6))
    assert any(again[s]["steps_per_sec"] != rows[s]["steps_per_sec"] for s in range(6, 11))
    assert all(again[s]["loss"] == rows[s]["loss"] for s in range(6, 11))  # deterministic steps: the same losses
    step, state = final_state(wd)
    assert step == 10
    for k in first:
        np.testing.assert_array_equal(state[k], first[k], err_msg=k)


def test_keep_checkpoints_keeps_that_many_of_the_newest(tmp_path):
    from test_train import load_config

    from jaxnorm.lab.train import loop

    for keep in (2, 4):
        wd = tmp_path / str(keep)
        c = load_config(num_steps=10, log_every=5, eval_every=10, checkpoint_every=2, keep_checkpoints=keep)
        loop.train_and_evaluate(c, str(wd))
        kept = sorted(int(d) for d in os.listdir(wd / "checkpoints") if d.isdigit())
        assert kept == list(range(10 - 2 * (keep - 1), 11, 2)), (keep, kept)


# ---- probe options ---------------------------------------------------------------------------------------------------


def _quad():
    """``L(w) = ½ wᵀAw`` with A = diag(4, 2, 1, 0.5, 0.25, 0.1): the Hessian is A whatever w."""
    a = jnp.diag(jnp.array([4.0, 2.0, 1.0, 0.5, 0.25, 0.1]))
    params = {"w": jnp.linspace(-1.0, 1.0, 6)}
    return (lambda p, batch: 0.5 * p["w"] @ batch["A"] @ p["w"]), params, {"A": a}


def test_probe_options_change_what_the_probes_compute():
    import jaxnorm.probes as jp

    loss, params, batch = _quad()
    key = jax.random.key(0)
    # loss_slice_2d: the grid spans `span`, and every point is the loss there along the returned directions' grid
    d = (jax.tree.map(jnp.ones_like, params), jax.tree.map(lambda w: jnp.arange(6.0) - 2.5, params))
    s = jp.loss_slice_2d(loss, params, batch, directions=d, steps=(5, 3), span=(-2.0, 1.5))
    np.testing.assert_allclose(s["alphas"], np.linspace(-2.0, 1.5, 5), rtol=1e-6)
    np.testing.assert_allclose(s["betas"], np.linspace(-2.0, 1.5, 3), rtol=1e-6)
    w, a_ = np.asarray(params["w"], np.float64), np.diag([4.0, 2.0, 1.0, 0.5, 0.25, 0.1])
    for i, al in enumerate(np.linspace(-2.0, 1.5, 5)):
        for j, be in enumerate(np.linspace(-2.0, 1.5, 3)):
            v = w + al * 1.0 + be * (np.arange(6.0) - 2.5)
            assert float(s["losses"][i, j]) == pytest.approx(0.5 * v @ a_ @ v, rel=1e-5)
    # spectral density: runs, grid points and the broadening
    narrow = jp.hessian_spectral_density(
        loss, params, batch, key=key, num_lanczos_steps=6, num_runs=3, num_points=50, sigma=0.05
    )
    wide = jp.hessian_spectral_density(
        loss, params, batch, key=key, num_lanczos_steps=6, num_runs=3, num_points=50, sigma=0.5
    )
    assert narrow["nodes"].shape == (3, 6) and narrow["grid"].shape == (50,)
    np.testing.assert_allclose(np.sort(np.asarray(narrow["nodes"][0])), [0.1, 0.25, 0.5, 1.0, 2.0, 4.0], rtol=1e-4)
    assert float(jnp.max(wide["density"])) < 0.5 * float(jnp.max(narrow["density"]))  # σ widens the peaks
    # top eigenvalues: 2 power iterations are not converged (the exact λ_max is 4)
    two, _ = jp.hessian_top_eigenvalues(loss, params, batch, k=1, key=key, num_iters=2, tol=0.0)
    many, _ = jp.hessian_top_eigenvalues(loss, params, batch, k=1, key=key, num_iters=200)
    assert float(many[0]) == pytest.approx(4.0, rel=1e-4) and abs(float(two[0]) - 4.0) > 1e-3
    # sharpness: λ_max 4 at lr 0.45 is ratio 0.9: inside a band of 0.1, outside one of 0.05
    at = jp.sharpness(loss, params, batch, lr=0.45, key=key, band=0.1)
    off = jp.sharpness(loss, params, batch, lr=0.45, key=key, band=0.05)
    assert at["ratio"] == pytest.approx(0.9, rel=1e-4) and at["at_edge"] and not off["at_edge"]


def test_pretraining_options_reach_its_loss_and_its_step():
    import optax

    from jaxnorm import losses
    from jaxnorm.lab.models import autoencoder as ae_lib
    from jaxnorm.lab.train import pretrain

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(16, 12)), jnp.float32)
    ae = {
        "kernel": jnp.asarray(0.3 * rng.normal(size=(12, 5)), jnp.float32),
        "bias": jnp.zeros(5, jnp.float32),
        "bias_out": jnp.zeros(12, jnp.float32),
    }
    key = jax.random.key(7)

    def first_step(**pre):
        c = config_lib.base_config()
        c.activation = "sigmoid"
        c.pretrain.update(pre)
        tx = optax.adam(c.pretrain.learning_rate)
        step = pretrain._make_step(c, tx, jax.nn.sigmoid, None)
        new, _, loss = step(ae, tx.init(ae), x, key)
        return float(loss), new

    def reference(corrupt: float | None, rho=None, beta=None):  # the objective written out from its parts
        xc = losses.masking_noise(x, corrupt, key=key) if corrupt is not None else x
        z = ae_lib.tied_encode(ae, xc, jax.nn.sigmoid, None)
        rec = float(losses.reconstruction_loss(ae_lib.tied_decode(ae, z, x.shape, None), x, kind="squared"))
        return rec + (float(losses.sparsity_penalty(z, rho=rho, beta=beta)) if rho is not None else 0.0)

    den, _ = first_step(kind="denoising", corruption=0.6)
    assert den == pytest.approx(reference(0.6), rel=1e-5) and den != pytest.approx(reference(0.3), rel=1e-3)
    sparse, _ = first_step(kind="sparse", rho=0.2, beta=0.7)
    assert sparse == pytest.approx(reference(None, 0.2, 0.7), rel=1e-5)
    assert sparse != pytest.approx(reference(None, 0.05, 0.1), rel=1e-3)  # not the defaults
    both, _ = first_step(kind="both", corruption=0.6, rho=0.2, beta=0.7)
    assert both == pytest.approx(reference(0.6, 0.2, 0.7), rel=1e-5)
    # the learning rate: Adam's first step moves every parameter with a non-zero gradient by about lr
    for lr in (1e-3, 1e-2):
        _, new = first_step(kind="denoising", corruption=0.6, learning_rate=lr)
        moved = np.abs(np.asarray(new["kernel"] - ae["kernel"]))
        assert np.median(moved) == pytest.approx(lr, rel=1e-3)
