"""Experiment sweeps and the results report: every experiment's smoke sweep end to end, the size presets, and the
training features the experiments need (embedding regularization, max-norm, original dropout, percentiles)."""

import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnorm import stats
from jaxnorm.lab import report, sweep
from jaxnorm.lab.train import config as config_lib
from jaxnorm.lab.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODULES = report.discover(os.path.join(ROOT, "experiments"))
EXPERIMENT_FILES = {name: m.__file__ for name, m in MODULES.items()}
SMOKE = {"size": "smoke", "parallel": "none"}  # one device: the 4 fake test devices would only add compile time


@pytest.fixture(scope="module")
def smoke_sweeps(tmp_path_factory):
    """Every experiment's smoke sweep (2 seeds, so that the report has standard deviations and seed pairs)."""
    root = tmp_path_factory.mktemp("sweeps")
    out = {}
    for name, path in EXPERIMENT_FILES.items():
        seeds = 2 if name in ("srivastava", "ioffe") else 1
        out[name] = sweep.run_sweep(path, str(root / name), seeds, SMOKE, log=lambda *_: None)
    return root, out


@pytest.mark.parametrize("name", sorted(EXPERIMENT_FILES))
def test_smoke_sweep_writes_summary_and_figures(smoke_sweeps, name):
    root, summaries = smoke_sweeps
    summary = summaries[name]
    _, points, seeds = sweep.plan(EXPERIMENT_FILES[name], summary["seeds"], SMOKE)
    assert len(summary["runs"]) == len(points) * seeds
    assert all(r["status"] == "finished" for r in summary["runs"]), [r.get("message") for r in summary["runs"]]
    with open(root / name / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(summary["runs"])
    for row, run in zip(rows, summary["runs"]):
        assert float(row["test_accuracy"]) == pytest.approx(run["test_accuracy"], rel=1e-5)
        assert 0.0 <= float(row["test_accuracy"]) <= 1.0
        assert row["seed"] == str(run["seed"])
    with open(root / name / "summary.json") as f:
        saved = json.load(f)
    assert saved["size"] == "smoke" and saved["commit"]
    for point in saved["points"]:
        accs = [r["test_accuracy"] for r in saved["runs"] if r["point"] == point["point"]]
        assert point["metrics"]["test_accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert point["metrics"]["test_accuracy"]["n"] == len(accs)
    assert os.path.exists(root / name / "plots" / "curves.png")
    if name == "santurkar":  # the probed runs give the band and ICS figures
        assert os.path.exists(root / name / "plots" / "santurkar.png")
        assert os.path.exists(root / name / "plots" / "ics.png")


def test_rerun_skips_finished_runs(smoke_sweeps):
    root, summaries = smoke_sweeps
    lines = []
    again = sweep.run_sweep(EXPERIMENT_FILES["ba"], str(root / "ba"), 1, SMOKE, plots=False, log=lines.append)
    assert all(r["skipped"] for r in again["runs"]) and all("finished before" in line for line in lines)
    assert [r["test_accuracy"] for r in again["runs"]] == [r["test_accuracy"] for r in summaries["ba"]["runs"]]


def test_report_from_smoke_sweeps(smoke_sweeps, tmp_path):
    _, summaries = smoke_sweeps
    out = tmp_path / "docs" / "results.md"
    report.write_report(summaries, str(out), "python -m jaxnorm.lab.report --size smoke", MODULES)
    text = out.read_text()
    for module in MODULES.values():
        assert f"## {module.TITLE}" in text
    assert text.count("**Verdict**") == len(MODULES)
    figures = [line.split("](")[1].rstrip(")") for line in text.splitlines() if line.startswith("![")]
    assert len(figures) >= 10
    for fig in figures:
        assert (out.parent / fig).exists(), fig
    assert "12/12" in text  # Ba et al.'s invariance table reproduced exactly
    assert summaries["ba"]["commit"] in text
    # the claims table: one row per recorded finding, every verdict one of the defined words
    claims = text.split("## Claims", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in claims.splitlines() if line.startswith("| ") and not line.startswith("| # |")]
    assert len(rows) >= len(MODULES)
    for row in rows:
        assert row.rstrip(" |").split("| ")[-1].strip("* ") in report.VERDICT_ORDER, row


def test_per_example_correctness_matches_each_run_and_gives_the_crossed_interval(smoke_sweeps, tmp_path):
    _, summaries = smoke_sweeps
    ctx = report.Context("srivastava", summaries["srivastava"], str(tmp_path), str(tmp_path))
    a, b = [p["point"] for p in summaries["srivastava"]["points"] if p["finished"] == 2][:2]
    correct = {p: report.per_example_correct(ctx, p) for p in (a, b)}
    for p in (a, b):
        for r in ctx.runs(p):  # the restored final state's predictions score what the run's final eval scored
            assert correct[p][r["seed"]].mean() == pytest.approx(r["test_accuracy"], abs=1e-6)
            assert os.path.exists(os.path.join(r["workdir"], report.CORRECT_FILE))
    res = report.accuracy_comparison(ctx, a, b, direction="greater")
    iv = res["interval"]
    assert iv.method == "crossed bootstrap" and iv.n == 2
    assert iv.estimate == pytest.approx(np.mean([correct[b][s].mean() - correct[a][s].mean() for s in (0, 1)]))
    accs = {p: {r["seed"]: r["test_accuracy"] for r in ctx.runs(p)} for p in (a, b)}
    assert res["p"] == pytest.approx(stats.t_test_p([accs[b][s] - accs[a][s] for s in (0, 1)], direction="greater"))
    assert "resampled with the test examples" in report.compared(res)


def test_every_experiment_file_declares_what_the_report_needs():
    for name, module in MODULES.items():
        for attr in report.REQUIRED + ("ORDER", "SEEDS", "PAPER_NAME"):
            assert hasattr(module, attr), (name, attr)
        assert module.SEEDS >= 5, name
    assert sorted(m.ORDER for m in MODULES.values()) == sorted({m.ORDER for m in MODULES.values()})


def test_an_analysis_asking_for_a_point_outside_its_grid_is_an_error(smoke_sweeps, tmp_path):
    _, summaries = smoke_sweeps
    ctx = report.Context("ba", summaries["ba"], str(tmp_path), str(tmp_path))
    with pytest.raises(KeyError, match="uses grid point 'no_such_point', which the sweep did not run"):
        ctx.point("no_such_point")
    with pytest.raises(KeyError, match="no_such_point"):
        ctx.outcomes("no_such_point")


def test_report_cli_rejects_unknown_experiments(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "jaxnorm.lab.report",
            "--only",
            "santurkr",
            "--workdir",
            str(tmp_path / "w"),
            "--out",
            str(tmp_path / "r.md"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 1 and "santurkr" in r.stderr and "santurkar" in r.stderr
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.md").exists()


def test_sweep_cli_errors_before_running(tmp_path, capsys):
    args = [EXPERIMENT_FILES["ba"], "--workdir", str(tmp_path / "w")]
    # the module entry once, as a user types it; the other errors through its main() (the same code, no new process)
    bad = subprocess.run(
        [sys.executable, "-m", "jaxnorm.lab.sweep", *args, "--config.nrom=batch"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert bad.returncode == 1 and "nrom" in bad.stderr
    for flags, expected in (
        (["--config.norm=group"], ("grid key",)),
        (["--config.size=huge"], ("'huge'", "full")),
        (["--seeds", "0"], ("--seeds",)),
        (["--first-seed", "-1"], ("--first-seed", "-1")),
        (["--seed-stride", "0"], ("--seed-stride", "0")),
        (["--first-seed", str(2**30 - 1), "--seed-stride", str(2**29)], ("int32", "--first-seed")),
        (["--jobs", "0"], ("--jobs", "0")),
        (["--jobs", "4096"], ("--jobs 4096", "CPU cores", "or less")),
        (["--config.model_kwargs.kernel_sise=5"], ("kernel_sise", "not a field of the model cnn1d", "kernel_size")),
    ):
        assert sweep.main(args + flags) == 1, flags
        err = capsys.readouterr().err
        assert err.startswith("error: ") and all(e in err for e in expected), (flags, err)
    assert not (tmp_path / "w").exists()
    # a model field the experiment file does not set is declared, and reaches every point's config
    _, points, _ = sweep.plan(EXPERIMENT_FILES["ba"], 1, {"size": "smoke", "model_kwargs.kernel_size": 5})
    assert points and all(p["config"].model_kwargs.kernel_size == 5 for p in points)


TINY_EXPERIMENT = (
    "from jaxnorm.lab.train.config import base_config\n"
    "def get_config():\n"
    "    c = base_config(); c.dataset = 'digits'; c.model = 'mlp'; c.norm = 'batch'; c.optimizer = 'momentum'\n"
    "    c.schedule = 'constant'; c.batch_size = 32; c.num_steps = 12; c.eval_every = 6; c.log_every = 6\n"
    "    c.checkpoint_every = 12; c.model_kwargs.hidden = (64, 64); c.parallel = 'none'\n"
    "    return c\n"
    "def get_sweep(config):\n"
    "    return [{'learning_rate': 0.05}, {'learning_rate': 0.2}]\n"
)


def test_jobs_train_side_by_side_each_on_its_share_of_the_cores(tmp_path, monkeypatch):
    """--jobs 2: two worker processes, each pinned to half the cores; the rows in the grid's order whatever order
    the runs finish in, each run's numbers bit-identical to the same sweep in one process on that many cores, and
    a second call skips every run without starting a worker."""
    cores = sweep._cores()
    if len(cores) < 2:
        pytest.skip(f"--jobs 2 needs 2 CPU cores, this machine gives {len(cores)}")
    exp = tmp_path / "exp.py"
    exp.write_text(TINY_EXPERIMENT)
    logged = []
    two = sweep.run_sweep(str(exp), str(tmp_path / "two"), 2, {}, plots=False, log=logged.append, jobs=2)
    assert [(r["point"], r["seed"]) for r in two["runs"]] == [
        (p, s) for p in ("learning_rate-0.05", "learning_rate-0.2") for s in (0, 1)
    ]
    assert all(r["status"] == "finished" and not r["skipped"] for r in two["runs"])
    assert sorted(int(m.split("/")[0][1:]) for m in logged) == [1, 2, 3, 4]
    share = cores[: len(cores) // 2]
    # the child pins itself before JAX starts (a preexec_fn would fork this multithreaded JAX process)
    pinned = (
        f"import os, runpy, sys; os.sched_setaffinity(0, {share!r}); sys.argv = ['sweep', {str(exp)!r}, "
        f"'--workdir', {str(tmp_path / 'one')!r}, '--seeds', '2', '--no-plots']; "
        "runpy.run_module('jaxnorm.lab.sweep', run_name='__main__')"
    )
    subprocess.run([sys.executable, "-c", pinned], check=True, capture_output=True, cwd=ROOT, timeout=300)
    with open(tmp_path / "one" / "summary.json") as f:
        one = json.load(f)
    for a, b in zip(two["runs"], one["runs"]):
        assert (a["point"], a["seed"]) == (b["point"], b["seed"])
        assert a["test_loss"] == b["test_loss"] and a["train_loss"] == b["train_loss"], (a, b)
        with open(os.path.join(a["workdir"], "result.json")) as f:
            assert json.load(f)["cpus"] == len(share)
    assert two["runs"][0]["test_loss"] != two["runs"][2]["test_loss"]  # the points are different runs
    monkeypatch.setattr(sweep, "_run_in_workers", lambda *a: pytest.fail("a worker started for finished runs"))
    again = sweep.run_sweep(str(exp), str(tmp_path / "two"), 2, {}, plots=False, log=lambda *_: None, jobs=2)
    assert all(r["skipped"] for r in again["runs"])


def test_diverged_run_is_a_result_and_is_not_rerun(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text(
        "from jaxnorm.lab.train.config import base_config\n"
        "def get_config():\n"
        "    c = base_config(); c.dataset = 'digits'; c.model = 'mlp'; c.norm = 'none'; c.optimizer = 'sgd'\n"
        "    c.schedule = 'constant'; c.batch_size = 32; c.num_steps = 20; c.eval_every = 10; c.log_every = 5\n"
        "    c.checkpoint_every = 10; c.model_kwargs.hidden = (16,)\n"
        "    return c\n"
        "def get_sweep(config):\n"
        "    return [{'learning_rate': 0.1}, {'learning_rate': 1e12}]\n"
    )
    s = sweep.run_sweep(str(exp), str(tmp_path / "w"), 1, {}, plots=False, log=lambda *_: None)
    status = {r["point"]: r["status"] for r in s["runs"]}
    assert status == {"learning_rate-0.1": "finished", "learning_rate-1e+12": "diverged"}
    point = {p["point"]: p for p in s["points"]}["learning_rate-1e+12"]
    assert point["diverged"] == 1 and point["finished"] == 0 and "test_accuracy" not in point["metrics"]
    again = sweep.run_sweep(str(exp), str(tmp_path / "w"), 1, {}, plots=False, log=lambda *_: None)
    assert all(r["skipped"] for r in again["runs"])


def test_first_seed_and_stride_choose_the_runs_seeds(tmp_path):
    exp = tmp_path / "exp.py"
    exp.write_text(
        "from jaxnorm.lab.train.config import base_config\n"
        "def get_config():\n"
        "    c = base_config(); c.dataset = 'digits'; c.model = 'mlp'; c.norm = 'none'; c.optimizer = 'sgd'\n"
        "    c.schedule = 'constant'; c.batch_size = 32; c.num_steps = 4; c.eval_every = 4; c.log_every = 2\n"
        "    c.checkpoint_every = 4; c.model_kwargs.hidden = (8,)\n"
        "    return c\n"
        "def get_sweep(config):\n"
        "    return [{'learning_rate': 0.1}]\n"
    )
    quiet = dict(plots=False, log=lambda *_: None)
    s = sweep.run_sweep(str(exp), str(tmp_path / "w"), 2, {}, first_seed=1000, seed_stride=8, **quiet)
    assert [r["seed"] for r in s["runs"]] == [1000, 1008] and s["seed_list"] == [1000, 1008]
    assert "--first-seed 1000 --seed-stride 8" in s["command"]
    assert "(seeds 1000, 1008)" in report.setting(report.Context("exp", s, str(tmp_path), str(tmp_path)))
    for r in s["runs"]:  # each run trained with its seed: its saved config, and its directory
        assert json.loads(open(os.path.join(r["workdir"], "config.json")).read())["seed"] == r["seed"]
        assert r["workdir"].endswith(f"seed{r['seed']}")
    # the same point at seeds 0, 1 gives other runs (the seeds reach the initialization), and seed 1008 is seed 8 + 1000
    zero = sweep.run_sweep(str(exp), str(tmp_path / "z"), 2, {}, **quiet)
    assert [r["seed"] for r in zero["runs"]] == [0, 1]
    losses = {r["seed"]: r["train_loss"] for r in s["runs"] + zero["runs"]}
    assert len(set(losses.values())) == 4, losses


def test_size_presets_and_explicit_keys_win():
    c = config_lib.base_config()
    c.sizes.full = dict(num_steps=99, dataset="cifar10", model_kwargs=dict(width=2), probes=dict(every=7))
    assert config_lib.resolve_size(c).num_steps == c.num_steps  # small: unchanged
    c.size = "full"
    r = config_lib.resolve_size(c)
    assert (r.num_steps, r.dataset, r.model_kwargs.width, r.probes.every) == (99, "cifar10", 2, 7)
    c.num_steps = 5
    kept = config_lib.resolve_size(c, explicit=["num_steps", "probes.every"])
    assert (kept.num_steps, kept.dataset, kept.probes.every) == (5, "cifar10", 0)
    assert config_lib.resolve_size(kept, explicit=["num_steps", "probes.every"]).to_dict() == kept.to_dict()
    c.size = "huge"
    with pytest.raises(ValueError, match="'huge'.*'small', 'full'"):
        config_lib.validate(c)
    c.size, c.sizes.full = "full", dict(nmu_steps=3)
    with pytest.raises(ValueError, match="unknown key 'nmu_steps'"):
        config_lib.resolve_size(c)


def test_train_py_size_flag_with_explicit_override(tmp_path):
    wd = tmp_path / "w"
    r = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "train.py"),
            "--config",
            EXPERIMENT_FILES["ba"],
            "--workdir",
            str(wd),
            "--config.size=smoke",
            "--config.num_steps=3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    saved = json.loads((wd / "config.json").read_text())
    assert saved["num_steps"] == 3 and saved["eval_every"] == 2  # the explicit key won, the preset applied


def _smoke(**overrides):
    c = config_lib.base_config()
    c.update(
        dict(
            dataset="digits",
            model="mlp",
            norm="none",
            batch_size=32,
            num_steps=3,
            eval_every=3,
            log_every=1,
            checkpoint_every=3,
            progress=False,
            **overrides,
        )
    )
    c.model_kwargs.hidden = (16,)
    return c


def test_embedding_regularization_loss_and_gradient():
    from jaxnorm import losses
    from jaxnorm.lab.train import steps

    exp = loop.build(_smoke())
    batch = {k: jnp.asarray(v) for k, v in loop._train_batch(exp, 0).items()}
    state = steps.create_state(exp.model, exp.tx, batch["x"], 0)
    lam = 0.01
    plain = steps.make_train_step(exp.model, exp.tx, exp.schedule, 0)
    reg = steps.make_train_step(exp.model, exp.tx, exp.schedule, 0, embedding_reg=lam)
    _, m0 = plain(state, batch)
    _, m1 = reg(state, batch)
    logits, h = exp.model.apply(state.variables(), batch["x"], train=False, return_features=True)
    sq = jnp.mean(jnp.sum(h**2, -1))
    np.testing.assert_allclose(m1["embedding_norm_sq"], sq, rtol=1e-5)
    np.testing.assert_allclose(m1["loss"], m0["loss"] + lam * sq, rtol=1e-5)

    def total(params):
        out, hh = exp.model.apply({"params": params}, batch["x"], train=False, return_features=True)
        ce = losses.per_example_loss(out, batch["y"], "cross_entropy")
        return jnp.mean(ce + lam * jnp.sum(hh**2, -1))

    g = jax.grad(total)(state.params)
    np.testing.assert_allclose(m1["grad_norm"], jnp.sqrt(sum(jnp.sum(x**2) for x in jax.tree.leaves(g))), rtol=1e-5)


def test_max_norm_config_constrains_every_kernel(tmp_path):
    c = _smoke(max_norm=0.5, learning_rate=1.0, optimizer="momentum", weight_decay=0.0)
    loop.train_and_evaluate(c, str(tmp_path / "w"))
    _, state = loop.restore(str(tmp_path / "w"))
    for k in jax.tree.leaves(state.params):
        if k.ndim >= 2:
            norms = np.linalg.norm(np.asarray(k).reshape(-1, k.shape[-1]), axis=0)
            assert norms.max() <= 0.5 + 1e-5


def test_restore_and_predict_match_the_final_eval(tmp_path):
    final = loop.train_and_evaluate(_smoke(), str(tmp_path / "w"))
    exp, state = loop.restore(str(tmp_path / "w"))
    logits = loop.predict(exp, state.variables())
    labels = np.concatenate(
        [
            np.asarray(b["y"])[np.asarray(b["mask"])]
            for b in __import__("jaxnorm.lab.data", fromlist=["eval_batches"]).eval_batches(exp.dataset.test, 500)
        ]
    )
    assert logits.shape == (exp.dataset.info.num_test, 10)
    assert np.mean(logits.argmax(-1) == labels) == pytest.approx(final["accuracy"])


def test_original_dropout_is_inverted_dropout_rescaled():
    import jaxnorm as jn
    from jaxnorm.lab.models import build_model

    x = jax.random.normal(jax.random.key(0), (64, 32))
    key = jax.random.key(1)
    np.testing.assert_allclose(jn.original_dropout(x, 0.3, key=key) / 0.7, jn.dropout(x, 0.3, key=key), rtol=1e-6)
    np.testing.assert_allclose(jn.original_dropout(x, 0.3, train=False), 0.7 * x, rtol=1e-6)
    with pytest.raises(ValueError, match="key"):
        jn.original_dropout(x, 0.3)
    # a network with original dropout and weights W is the inverted-dropout network with (1 − rate)·W after it
    orig = build_model("mlp", hidden=(32,), dropout="original", dropout_rate=0.3)
    inv = build_model("mlp", hidden=(32,), dropout="dropout", dropout_rate=0.3)
    v = orig.init(jax.random.key(2), x, train=False)
    v_inv = jax.tree_util.tree_map_with_path(
        lambda p, w: w * 0.7 if "head" in jax.tree_util.keystr(p) and "kernel" in jax.tree_util.keystr(p) else w, v
    )
    for train in (False, True):
        a = orig.apply(v, x, train=train, rngs={"dropout": key})
        b = inv.apply(v_inv, x, train=train, rngs={"dropout": key})
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_activation_percentiles_probe_matches_numpy():
    from jaxnorm.lab.models import build_model
    from jaxnorm.probes import activation_percentiles_fn

    model = build_model("ioffe_mlp", norm="none")
    x = jax.random.normal(jax.random.key(0), (60, 64))
    v = model.init(jax.random.key(1), x, train=False)
    out = activation_percentiles_fn(model, unit=3)(v, x, jax.random.key(2))
    _, state = model.apply(v, x, train=True, mutable=["intermediates"], rngs={"dropout": jax.random.key(2)})
    col = np.asarray(state["intermediates"]["preact_2"][0])[:, 3]
    for q in (15, 50, 85):
        np.testing.assert_allclose(out[f"preact_2/p{q}"], np.percentile(col, q), rtol=1e-5)
    with pytest.raises(ValueError, match="unit=200"):
        activation_percentiles_fn(model, unit=200)(v, x, jax.random.key(2))
    cnn = build_model("cnn1d")
    xc = jnp.ones((4, 40, 1))
    with pytest.raises(ValueError, match="sows"):
        activation_percentiles_fn(cnn)(cnn.init(jax.random.key(0), xc, train=False), xc, jax.random.key(0))


def test_activation_percentiles_options_take_effect():
    """percentiles, layers and train=False against numpy on the sown inputs of a BN network evaluated with its
    running statistics (which differ from the batch's: the running mean is 0, the batch's is not)."""
    from jaxnorm.lab.models import build_model
    from jaxnorm.probes import activation_percentiles_fn

    model = build_model("ioffe_mlp", norm="batch")
    x = 2.0 + jax.random.normal(jax.random.key(0), (60, 64))
    v = model.init(jax.random.key(1), x, train=False)
    out = activation_percentiles_fn(model, unit=1, percentiles=(10.0, 90.0), train=False, layers=["preact_1"])(
        v, x, jax.random.key(2)
    )
    assert sorted(out) == ["preact_1/p10", "preact_1/p90"]
    _, state = model.apply(v, x, train=False, mutable=["intermediates"])
    col = np.asarray(state["intermediates"]["preact_1"][0])[:, 1]
    _, state_train = model.apply(v, x, train=True, mutable=["intermediates", "batch_stats"])
    col_train = np.asarray(state_train["intermediates"]["preact_1"][0])[:, 1]
    for q in (10, 90):
        np.testing.assert_allclose(out[f"preact_1/p{q}"], np.percentile(col, q), rtol=1e-5)
        assert abs(np.percentile(col, q) - np.percentile(col_train, q)) > 0.05  # train=True would read another one


def test_norm_invariances_reproduce_ba_table_1():
    from jaxnorm.probes import invariance

    measured = invariance.norm_invariances(("batch", "layer"))
    for norm, expected in invariance.PAPER_TABLE.items():
        got = tuple(measured[norm][t] < 1e-2 for t in invariance.TRANSFORMS)
        assert got == expected, (norm, measured[norm])
        # the non-invariant entries change the output by order one, not by round-off
        assert all(measured[norm][t] > 0.1 for t, inv in zip(invariance.TRANSFORMS, expected) if not inv)


@pytest.mark.parametrize("name", sorted(EXPERIMENT_FILES))
def test_full_size_presets_resolve_and_need_a_prepared_dataset(name, tmp_path):
    from jaxnorm.lab import data as data_lib

    base, points, _ = sweep.plan(EXPERIMENT_FILES[name], 1, {"size": "full", "data_dir": str(tmp_path / "data")})
    assert base.dataset in ("cifar10", "imagenet2012", "mnist") and base.num_steps >= 15000
    point = points[0]
    with pytest.raises(data_lib.DatasetNotPreparedError, match=base.dataset):
        loop.train_and_evaluate(point["config"], str(tmp_path / "run"), point["explicit"])
    assert not (tmp_path / "run").exists()
