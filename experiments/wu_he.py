"""Wu & He (2018) at CPU size: batch norm vs group norm (and layer and instance norm) across batch sizes, on MNIST-1D
with a 10 000-example test set (``mnist1d_10k``), for the same number of epochs at every batch size with the learning
rate scaled linearly with the batch size (0.025 at 32), SGD with momentum 0.9 and a cosine schedule; group norm with
8 groups; running statistics with momentum 0.9 (PyTorch's default 0.1), and every BN run also evaluated with
population statistics (Ioffe & Szegedy §3.1, recomputed over 2048 training examples in batches of the run's size).

Three networks (``ARCHS``):

- ``cnn``: the default 1-D CNN (3 conv layers, strides 1, 1, 2): the port of the earlier experiment. At batch 2 its BN
  layers pool 80, 80 and 40 values per channel, so its batch statistics are never small-sample;
- ``deep``: a deeper strided 1-D CNN (5 conv layers of 32 channels, strides 1, 2, 2, 2, 2: lengths 40, 20, 10, 5, 3),
  whose last two BN layers pool 10 and 6 values per channel at batch 2: genuinely small-sample statistics, as in
  ResNet-50's last stage (7×7 = 49 values per image, 98 at Wu & He's batch 2);
- ``mlp``: a 3×128 ReLU MLP, whose BN units see exactly the batch (2 values at batch 2): the positive control, where
  the effect must show if the pipeline can see it at all.

    python -m jaxnorm.lab.sweep experiments/wu_he.py --workdir runs/wu_he                 # the grid below, 5 seeds

Time per run measured on 2 CPU cores shared with three other jobs (load 4-9), at 6 epochs: about 8-13 s at batch 32,
10 s at batch 8 and 26-45 s (cnn), 76 s (deep) and 55 s (mlp) at batch 2 (12 000 steps); on idle cores, from the
fastest measured step rates (500-1200 steps/s) plus ~3 s per run, an estimated 140 s per seed, 11-12 minutes for the
80 runs.
    python train.py --config experiments/wu_he.py --workdir runs/gn_b2 --config.norm=group --config.batch_size=2 \\
        --config.learning_rate=0.0015625 --config.num_steps=12000

--config.size=full: ResNet-50 on a prepared imagenet2012 (paper, batch per GPU, top-1 error: BN 23.6/23.7/24.8/27.3/
34.7 and GN 24.1/24.2/24.0/24.2/24.1 at 32/16/8/4/2; LN 25.3, IN 28.4 at 32). The claim: GN is flat across batch
sizes while BN degrades at 2–4. No hyperparameter is selected (the recipe is fixed: Wu & He's linear LR scaling),
so no validation split is used.
"""

from __future__ import annotations

import math

import ml_collections

from jaxnorm import stats
from jaxnorm.lab import plots
from jaxnorm.lab import report as R
from jaxnorm.lab.train.config import base_config

TITLE = "2. Wu & He (2018): group norm across batch sizes"
ORDER = 2
PAPER_NAME = "Wu & He 2018"
SEEDS = 10  # registered (experiments/REGISTRATION.md, P3); the pilot ran 5

NORMS = ("batch", "group", "layer", "instance")
LABEL = {"batch": "BN", "group": "GN", "layer": "LN", "instance": "IN"}
BASE_BATCH = 32
EPOCHS = 6  # at every batch size: num_steps = EPOCHS · 4000 / batch
NUM_TRAIN = 4000
NUM_TEST = 10_000  # mnist1d_10k's test split: the noise floor below
CHANCE = 0.1  # a diverged run scores chance accuracy (10 classes)
EQUIVALENCE_MARGIN = 0.005  # error (0.5 points, about 2 binomial SEs on 10 000 signals): "flat" = the 95% interval of
# GN's change from batch 32 to 2 lies within ± this
# "flat" relative to BN (exploratory, after the absolute margin failed on the registered runs): in the deep CNN, the
# 95% bootstrap interval of (GN₂ − GN₃₂) / (BN₂ − BN₃₂) lies within ± this; the paper's is 0 / 11.1 = 0
RELATIVE_MARGIN = 0.25
# the equal-steps control (exploratory): at equal epochs batch 2 takes 16× the steps of batch 32, so GN's change from
# 32 to 2 mixes the batch size with the number of updates; GN at batch 32 trained for batch 2's number of steps
# (16× the epochs, the same LR and cosine schedule over the longer run) separates them
EQUAL_STEPS = ("deep", "group", 2)  # (arch, norm, the batch size whose step count the batch-32 run matches)

# The networks: model and model_kwargs (None = the model's default)
ARCHS = {
    "cnn": {"model": "cnn1d", "model_kwargs.channels": None, "model_kwargs.strides": None, "model_kwargs.hidden": None},
    "deep": {
        "model": "cnn1d",
        "model_kwargs.channels": (32, 32, 32, 32, 32),
        "model_kwargs.strides": (1, 2, 2, 2, 2),
        "model_kwargs.hidden": None,
    },
    "mlp": {
        "model": "mlp",
        "model_kwargs.channels": None,
        "model_kwargs.strides": None,
        "model_kwargs.hidden": (128, 128, 128),
    },
}
ARCH_LABEL = {"cnn": "1-D CNN (3 BN layers)", "deep": "deep strided 1-D CNN (5 BN layers)", "mlp": "3×128 MLP"}
# values per channel each BN layer pools at batch 2 (batch × length; the MLP: the batch)
POOLED_AT_2 = {"cnn": (80, 80, 40), "deep": (80, 40, 20, 10, 6), "mlp": (2, 2, 2)}

# The grid: (arch, norms, batch sizes). The port sweeps BN and GN over three of the paper's five batch sizes (32, 8,
# 2: the two ends and the middle; the budget does not allow all five at 5 seeds), LN and IN at 32 (Table 1)
GRID = (
    ("cnn", ("batch", "group"), (32, 8, 2)),
    ("cnn", ("layer", "instance"), (32,)),
    ("deep", ("batch", "group"), (32, 2)),
    ("mlp", ("batch", "group"), (32, 2)),
)
SMOKE_GRID = (
    ("cnn", ("batch", "group"), (32, 2)),
    ("deep", ("batch",), (2,)),
    ("mlp", ("batch",), (2,)),
)

# --------------------------------------------------------------------------------------------------------------------
# the paper's numbers: ResNet-50, ImageNet validation top-1 error (%), batch size = images per GPU (8 GPUs)
PAPER_BATCH_SIZES = (32, 16, 8, 4, 2)
PAPER_TABLE2 = {"batch": (23.6, 23.7, 24.8, 27.3, 34.7), "group": (24.1, 24.2, 24.0, 24.2, 24.1)}
PAPER_TABLE2_SOURCE = "Wu & He 2018, Table 2 and Fig. 1"
PAPER_TABLE1 = {"batch": 23.6, "group": 24.1, "layer": 25.3, "instance": 28.4}
PAPER_TABLE1_SOURCE = "Wu & He 2018, Table 1 (32 images/GPU)"


def point(arch: str, norm: str, batch_size: int) -> str:
    """The grid point's name: ``cnn_batch_b32``."""
    return f"{arch}_{norm}_b{batch_size}"


def point_equal_steps(arch: str, norm: str, small: int) -> str:
    """The equal-steps control's name: ``deep_group_b32_steps2`` (batch 32, as many steps as batch 2)."""
    return f"{point(arch, norm, BASE_BATCH)}_steps{small}"


def get_config():
    c = base_config()
    c.model_kwargs.channels = ml_collections.config_dict.placeholder(tuple)  # set by the grid (ARCHS)
    c.model_kwargs.strides = ml_collections.config_dict.placeholder(tuple)
    c.model_kwargs.hidden = ml_collections.config_dict.placeholder(tuple)
    c.dataset = "mnist1d_10k"
    c.model = "cnn1d"
    c.norm = "batch"
    c.model_kwargs.num_groups = 8
    c.dropout = "none"
    c.batch_size = BASE_BATCH
    c.optimizer = "momentum"
    c.learning_rate = 0.025  # at batch 32; the grid scales it with the batch size
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.num_steps = EPOCHS * NUM_TRAIN // BASE_BATCH  # at batch 32; the grid scales it with 1/batch
    c.eval_every = c.num_steps
    c.log_every = c.num_steps // 10
    c.checkpoint_every = c.num_steps
    c.population_batches = 64  # at batch 32 (2048 examples); the grid keeps the examples fixed
    # the grid's batch sizes are global: batch 2 cannot be split over several devices (Wu & He's per-GPU batch is
    # emulated by the global batch on one device)
    c.parallel = "none"
    c.sizes.smoke = dict(num_steps=4, eval_every=4, log_every=2, checkpoint_every=4, population_batches=1)
    c.sizes.full = dict(
        dataset="imagenet2012",
        model="resnet50",
        model_kwargs=dict(stem="imagenet", num_groups=32),
        learning_rate=0.0125,
        weight_decay=1e-4,
        num_steps=4_000_000,
        eval_every=40_000,
        log_every=1000,
        checkpoint_every=40_000,
        augment=True,
    )
    return c


def get_sweep(config):
    """arch × norm × batch size; steps ∝ 1/batch (same epochs), LR ∝ batch, logging and eval at the same epochs;
    BN runs also evaluated with population statistics over the same number of examples at every batch size."""
    grid = []
    full = config.size == "full"
    for arch, norms, sizes in SMOKE_GRID if config.size == "smoke" else GRID:
        if full and arch != "cnn":
            continue  # at full size the network is ResNet-50 (config.sizes.full): the other archs are CPU tests
        for norm in norms:
            for bs in sizes:
                g = _grid_point(config, point(arch, norm, bs), norm, bs, BASE_BATCH // bs)
                if not full:
                    g.update(ARCHS[arch])
                grid.append(g)
    if config.size == "small":
        arch, norm, small = EQUAL_STEPS
        g = _grid_point(config, point_equal_steps(arch, norm, small), norm, BASE_BATCH, BASE_BATCH // small)
        grid.append({**g, **ARCHS[arch]})
    return grid


def _grid_point(config, name: str, norm: str, bs: int, steps_factor: int) -> dict:
    """One grid point at batch ``bs``: LR ∝ batch, ``steps_factor`` × the batch-32 steps (and logging, eval and
    checkpoint periods), population statistics over the same number of examples at every batch size."""
    return {
        "name": name,
        "norm": norm,
        "batch_size": bs,
        "learning_rate": config.learning_rate * bs / BASE_BATCH,
        "num_steps": config.num_steps * steps_factor,
        "eval_every": config.eval_every * steps_factor,
        "log_every": config.log_every * steps_factor,
        "checkpoint_every": config.checkpoint_every * steps_factor,
        "eval_population_stats": norm == "batch",
        "population_batches": config.population_batches * (BASE_BATCH // bs),
    }


# --------------------------------------------------------------------------------------------------------------------
# the analysis


def errors(ctx, name: str, metric: str = "test_accuracy") -> dict[int, float]:
    """``{seed: test error}`` (fraction) of grid point ``name``; a diverged run scores chance (error 0.9), so it is
    never dropped; ``metric='test_population_accuracy'``: BN evaluated with population statistics."""
    return {s: 1.0 - a for s, a in ctx.outcomes(name, metric, diverged=CHANCE).items() if math.isfinite(a)}


def paired(a: dict, b: dict, direction: str) -> dict | None:
    """:func:`jaxnorm.stats.compare` of ``b − a`` over the shared seeds, or None with fewer than 2 (a smoke sweep)."""
    if len(set(a) & set(b)) < 2:
        return None
    return stats.compare(a, b, direction=direction)


def change(e_small: dict, e_large: dict) -> dict:
    """``{seed: error at the small batch − error at the large batch}``."""
    return {s: e_small[s] - e_large[s] for s in set(e_small) & set(e_large)}


def interaction(ctx, arch: str, small: int, large: int = BASE_BATCH, bn_metric: str = "test_accuracy"):
    """The paired test of "BN's error grows as the batch shrinks while GN's stays flat": per seed,
    ``(BN err at small − BN err at large) − (GN err at small − GN err at large)``, > 0 in the paper's direction
    (Table 2: (34.7 − 23.6) − (24.1 − 24.1) = +11.1 points). ``bn_metric``: BN's accuracy with running
    (``test_accuracy``) or population (``test_population_accuracy``) statistics. None when a point is missing."""
    names = [point(arch, n, b) for n in ("batch", "group") for b in (small, large)]
    if not all(ctx.has(p) for p in names):
        return None
    bn = change(errors(ctx, names[0], bn_metric), errors(ctx, names[1], bn_metric))
    gn = change(errors(ctx, names[2]), errors(ctx, names[3]))
    return paired(gn, bn, "greater")


def combined_verdict(results: list) -> str:
    """An ordering that needs every paired comparison: holds when all hold, fails when any fails."""
    verdicts = [R.verdict_of(r) for r in results]
    if "fails" in verdicts:
        return "fails"
    return "holds" if verdicts and all(v == "holds" for v in verdicts) else "inconclusive"


def _ours(result, digits: int = 2) -> str:
    return R.compared(result, digits=digits) if result else "— (fewer than 2 seeds)"


def _sizes(ctx, arch: str, norm: str) -> list[int]:
    return sorted(
        {p["overrides"]["batch_size"] for p in ctx.summary["points"] if p["point"].startswith(f"{arch}_{norm}_b")},
        reverse=True,
    )


def _error_cell(ctx, name: str, metric: str = "test_accuracy") -> str:
    e = list(errors(ctx, name, metric).values())
    div = ctx.point(name)["diverged"]
    return (R.mean_std([100 * x for x in e], ".2f") if e else "—") + (f" ({div} div.)" if div else "")


def _tables(ctx, arch: str) -> str:
    """Test error (mean ± std over seeds) per norm and batch size, BN with population statistics, and the paired
    BN − GN difference at each batch size with its 95% interval."""
    sizes = sorted({b for n in NORMS for b in _sizes(ctx, arch, n)}, reverse=True)
    norms = [n for n in NORMS if _sizes(ctx, arch, n)]
    rows = []
    for n in norms:
        rows.append(
            [LABEL[n]] + [_error_cell(ctx, point(arch, n, b)) if ctx.has(point(arch, n, b)) else "—" for b in sizes]
        )
        if n == "batch":
            rows.append(
                ["BN, population statistics"]
                + [
                    _error_cell(ctx, point(arch, n, b), "test_population_accuracy")
                    if ctx.has(point(arch, n, b))
                    else "—"
                    for b in sizes
                ]
            )
    diffs = []
    for b in sizes:
        bn, gn = point(arch, "batch", b), point(arch, "group", b)
        r = paired(errors(ctx, gn), errors(ctx, bn), "greater") if ctx.has(bn) and ctx.has(gn) else None
        diffs.append(_ours(r) if r else "—")
    rows.append(["BN − GN (paired, 95% CI)"] + diffs)
    return R.table([f"{ARCH_LABEL[arch]}: test error %"] + [f"batch {b}" for b in sizes], rows)


def _figure(ctx, arch: str) -> str:
    series = {}
    for n in NORMS:
        sizes = _sizes(ctx, arch, n)
        if len(sizes) < 2:
            continue
        for label, metric in ((LABEL[n], "test_accuracy"),) + (
            (("BN, population stats", "test_population_accuracy"),) if n == "batch" else ()
        ):
            vals = [[100 * e for e in errors(ctx, point(arch, n, b), metric).values()] for b in sizes]
            series[label] = (sizes, [sum(v) / len(v) if v else math.nan for v in vals], [stats_std(v) for v in vals])
    if not series:
        return ""
    made = plots.plot_lines(
        series,
        ctx.path(f"{arch}_error_vs_batch"),
        xlabel="batch size",
        ylabel="test error %",
        title=f"{ARCH_LABEL[arch]}: test error vs batch size (mean ± std over seeds)",
        logx=True,
        xticks=sorted({b for s in series.values() for b in s[0]}),
    )
    return ctx.figure(made)


def stats_std(v: list[float]) -> float:
    if len(v) < 2:
        return 0.0
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def section(ctx) -> str:
    small = min(b for _, _, sizes in GRID for b in sizes)
    setting_small = f"batch {small} vs {BASE_BATCH}, {EPOCHS} epochs, {ctx.summary['seeds']} seeds"
    paper_inter = (PAPER_TABLE2["batch"][-1] - PAPER_TABLE2["batch"][0]) - (
        PAPER_TABLE2["group"][-1] - PAPER_TABLE2["group"][0]
    )
    lines = []

    # 1. the port: the default 1-D CNN
    r_int = {arch: interaction(ctx, arch, small) for arch in ARCHS}
    r_pop = {arch: interaction(ctx, arch, small, bn_metric="test_population_accuracy") for arch in ARCHS}
    v_cnn = ctx.claim(
        "BN's error grows as the batch shrinks while GN's stays flat: (BN₂ − BN₃₂) − (GN₂ − GN₃₂) > 0",
        PAPER_TABLE2_SOURCE,
        f"3-layer 1-D CNN, MNIST-1D, {setting_small}",
        _ours(r_int["cnn"]),
        R.verdict_of(r_int["cnn"]),
    )
    gn_flat = None
    if ctx.has(point("cnn", "group", small)) and ctx.has(point("cnn", "group", BASE_BATCH)):
        gn_flat = paired(
            errors(ctx, point("cnn", "group", BASE_BATCH)), errors(ctx, point("cnn", "group", small)), "greater"
        )
    v_flat = ctx.claim(
        f"GN's error is flat across batch sizes (GN₂ − GN₃₂ within ±{100 * EQUIVALENCE_MARGIN:.1f} pts)",
        PAPER_TABLE2_SOURCE,
        f"3-layer 1-D CNN, {setting_small}",
        _ours(gn_flat) + f" (equivalence margin ±{100 * EQUIVALENCE_MARGIN:.1f} pts)",
        stats.equivalence_verdict(gn_flat["interval"], EQUIVALENCE_MARGIN) if gn_flat else "inconclusive",
    )
    # in the deep CNN, whose last BN layers pool 10 and 6 values per channel at batch 2 (the port's pool 40–80: its
    # statistics are never small-sample, so it cannot test this)
    bn2, gn2 = point("deep", "batch", small), point("deep", "group", small)
    r_small = paired(errors(ctx, gn2), errors(ctx, bn2), "greater") if ctx.has(bn2) and ctx.has(gn2) else None
    v_small = ctx.claim(
        f"at batch 2, GN's error is below BN's (paper: {PAPER_TABLE2['batch'][-1]} vs {PAPER_TABLE2['group'][-1]})",
        PAPER_TABLE2_SOURCE,
        f"5-layer strided 1-D CNN, batch {small}",
        "BN − GN: " + _ours(r_small),
        R.verdict_of(r_small),
    )
    # Table 1: the order at batch 32
    at32 = {n: point("cnn", n, BASE_BATCH) for n in NORMS}
    order = []
    for lo, hi in (("batch", "group"), ("group", "layer"), ("layer", "instance")):
        ok = ctx.has(at32[lo]) and ctx.has(at32[hi])
        order.append(paired(errors(ctx, at32[lo]), errors(ctx, at32[hi]), "greater") if ok else None)
    v_order = ctx.claim(
        "at batch 32, error BN < GN < LN < IN (paper: 23.6 < 24.1 < 25.3 < 28.4)",
        PAPER_TABLE1_SOURCE,
        "3-layer 1-D CNN, batch 32",
        "; ".join(
            f"{LABEL[hi]} − {LABEL[lo]}: {_ours(r)}"
            for (lo, hi), r in zip((("batch", "group"), ("group", "layer"), ("layer", "instance")), order)
        ),
        combined_verdict(order),
    )

    # 2. the redesign: small-sample BN statistics, and the MLP positive control
    v_deep = ctx.claim(
        "BN's error grows as the batch shrinks while GN's stays flat (last BN layers pool 10 and 6 "
        "values per channel at batch 2)",
        PAPER_TABLE2_SOURCE,
        f"5-layer strided 1-D CNN, {setting_small}",
        _ours(r_int["deep"]),
        R.magnitude_of(r_int["deep"], "greater", paper_inter / 100),  # errors are fractions here
        paper_effect=f"{paper_inter:+.1f} pts",
        primary="P3",
        p_value=R.p_of(r_int["deep"]),
        forest=R.points_forest(r_int["deep"], paper_inter),
    )
    gn_rel = relative_to_bn(ctx, point("deep", "group", small), point("deep", "group", BASE_BATCH), small)
    rel_text = ratio_text(gn_rel)
    v_rel = ctx.claim(
        f"GN's error is flat relative to BN's: (GN₂ − GN₃₂) / (BN₂ − BN₃₂) within ±{RELATIVE_MARGIN:g}",
        PAPER_TABLE2_SOURCE,
        f"5-layer strided 1-D CNN, {setting_small}",
        rel_text + f" (margin ±{RELATIVE_MARGIN:g}; paper (24.1 − 24.1) / (34.7 − 23.6) = 0)",
        stats.equivalence_verdict(gn_rel, RELATIVE_MARGIN) if gn_rel else "inconclusive",
    )
    arch, norm, eq_small = EQUAL_STEPS
    eq_name = point_equal_steps(arch, norm, eq_small)
    gn_eq = relative_to_bn(ctx, point(arch, norm, eq_small), eq_name, eq_small)
    eq_text = ratio_text(gn_eq)
    v_eq = ctx.claim(
        f"GN's error is flat relative to BN's at equal steps: (GN₂ − GN₃₂ trained {BASE_BATCH // eq_small}× the "
        f"epochs) / (BN₂ − BN₃₂) within ±{RELATIVE_MARGIN:g}",
        PAPER_TABLE2_SOURCE,
        f"5-layer strided 1-D CNN, batch {eq_small} vs {BASE_BATCH} at batch {eq_small}'s number of steps, "
        f"{ctx.summary['seeds']} seeds",
        eq_text + f" (margin ±{RELATIVE_MARGIN:g}; equal-steps control)",
        stats.equivalence_verdict(gn_eq, RELATIVE_MARGIN) if gn_eq else "inconclusive",
    )
    v_mlp = ctx.claim(
        "positive control: the same interaction where BN pools 2 values per unit",
        PAPER_TABLE2_SOURCE,
        f"3×128 MLP, {setting_small}",
        _ours(r_int["mlp"]),
        R.verdict_of(r_int["mlp"]),
        kind="check",  # BN over 2 values per unit gives ±1: a control of the design, not the paper's claim
    )
    # 3. running vs population statistics: is BN's small-batch error a test-time estimation artifact?
    v_pop = ctx.claim(
        "BN's small-batch degradation persists when BN is evaluated with population statistics "
        "(so it is not the running averages' estimation error at test time)",
        "Wu & He 2018, abstract ('inaccurate batch statistics estimation'); Ioffe & Szegedy 2015, §3.1",
        f"5-layer strided 1-D CNN, {setting_small}, BN with population statistics over 2048 examples",
        _ours(r_pop["deep"]),
        R.verdict_of(r_pop["deep"]),
    )

    pop_rows = []
    for arch in ARCHS:
        for b in _sizes(ctx, arch, "batch"):
            name = point(arch, "batch", b)
            run_e, pop_e = errors(ctx, name), errors(ctx, name, "test_population_accuracy")
            r = paired(run_e, pop_e, "less")
            pop_rows.append(
                [
                    ARCH_LABEL[arch],
                    str(b),
                    _error_cell(ctx, name),
                    _error_cell(ctx, name, "test_population_accuracy"),
                    _ours(r) if r else "—",
                ]
            )
    pop_table = R.table(
        [
            "BN network",
            "batch",
            "test error %, running statistics",
            "test error %, population statistics",
            "population − running (paired, 95% CI)",
        ],
        pop_rows,
    )

    inter_rows = [
        [
            ARCH_LABEL[a],
            " / ".join(str(v) for v in POOLED_AT_2[a]),
            _ours(r_int[a]),
            R.verdict_of(r_int[a]),
            _ours(r_pop[a]),
            R.verdict_of(r_pop[a]),
        ]
        for a in ARCHS
    ]
    inter_table = R.table(
        [
            "network",
            "values per channel pooled by each BN layer at batch 2",
            "(BN₂ − BN₃₂) − (GN₂ − GN₃₂), running statistics",
            "verdict",
            "the same, BN with population statistics",
            "verdict",
        ],
        inter_rows,
    )
    paper_rows = [[LABEL[n]] + [f"{v:.1f}" for v in PAPER_TABLE2[n]] for n in ("batch", "group")]
    paper_rows.append(["BN − GN"] + [f"{b - g:+.1f}" for b, g in zip(PAPER_TABLE2["batch"], PAPER_TABLE2["group"])])
    theirs = R.table(
        ["ResNet-50 ImageNet top-1 error % (Wu & He Table 2)"] + [f"{b}/GPU" for b in PAPER_BATCH_SIZES], paper_rows
    )
    floor_point = point("cnn", "batch", BASE_BATCH)
    floor = R.noise_floor(ctx, floor_point, NUM_TEST) if ctx.has(floor_point) else "—"
    mlp32 = point("mlp", "batch", BASE_BATCH)
    floor_mlp = R.noise_floor(ctx, mlp32, NUM_TEST) if ctx.has(mlp32) else "—"

    def est(r):
        return f"{R.signed(100 * r['interval'].estimate, 2)} points" if r else "— (fewer than 2 seeds)"

    lines += [
        "**Claim** (Wu & He 2018, Table 2 and Fig. 1; Table 1 for batch 32): batch norm's error grows as the batch "
        "shrinks while group norm's stays flat (ResNet-50 ImageNet, images per GPU: BN 23.6% → 34.7% from 32 to 2, "
        f"GN 24.1% → 24.1%; the interaction (BN₂ − BN₃₂) − (GN₂ − GN₃₂) is {paper_inter:+.1f} points); at batch 32, "
        "BN < GN < LN < IN (23.6, 24.1, 25.3, 28.4). Their explanation (abstract): BN's small-batch error is caused by "
        "inaccurate batch statistics estimation.",
        "**Our setting**: " + R.setting(ctx) + f" Same number of epochs ({EPOCHS}) at every batch size (steps ∝ "
        "1/batch), learning rate ∝ batch size (fixed recipe, nothing selected, so no validation split is used); group "
        "norm with 8 groups; BN's running statistics with momentum 0.9, and every BN run also evaluated with "
        "population statistics. Test set: the 10 000 signals of `mnist1d_10k`; the test noise floor (binomial SE of "
        f"one run's accuracy) is {floor} points for the 1-D CNN with BN at batch 32 and {floor_mlp} for the MLP "
        "at batch 32 (the intervals below include it: each run is scored on the same 10 000 signals). Comparisons "
        "are paired over seeds (the arms share seeds); a diverged run counts as chance accuracy. The port's batch sizes are 32, 8 and 2 (three of the paper's five: the budget).",
        theirs,
        _tables(ctx, "cnn"),
        _figure(ctx, "cnn"),
        "*What to look for*: the BN line rising at the small batch sizes while GN (and LN, IN: no batch dependence "
        "by construction) stay flat. The 3-layer CNN's BN layers pool 80, 80 and 40 values per channel even at batch "
        "2, so its batch statistics are never small-sample; the next two networks are the redesigned test.",
        _tables(ctx, "deep"),
        _figure(ctx, "deep"),
        _tables(ctx, "mlp"),
        _figure(ctx, "mlp"),
        "The interaction per network (per seed: BN's change from batch 32 to 2 minus GN's change; paper: "
        f"{paper_inter:+.1f} points):",
        inter_table,
        "BN evaluated with running vs population statistics (paired over seeds):",
        pop_table,
        verdict_text(
            v_cnn, v_flat, v_small, v_order, v_deep, v_mlp, v_pop, r_int, r_pop, gn_flat, r_small, paper_inter, est
        ),
        f"Flat in the paper's sense — small beside BN's change (ImageNet: GN 24.1 → 24.1 while BN 23.6 → 34.7) — "
        f"rather than within a fixed ±{100 * EQUIVALENCE_MARGIN:.1f} points: in the deep CNN GN's change from batch "
        f"32 to 2 is {rel_text} of BN's ({v_rel}, margin ±{RELATIVE_MARGIN:g}; exploratory). At equal epochs batch "
        f"{eq_small} takes {BASE_BATCH // eq_small}× the steps; against GN at batch {BASE_BATCH} trained as many "
        f"steps it is {eq_text} ({v_eq}; exploratory): "
        + equal_steps_reading(v_rel.strip("*"), v_eq.strip("*") if gn_eq else None),
        R.status_note(ctx),
    ]
    return "\n\n".join(x for x in lines if x)


def relative_to_bn(ctx, gn_small: str, gn_large: str, small: int):
    """GN's change relative to BN's in the deep CNN, ``(GN_small − GN_large) / (BN_small − BN₃₂)`` over the shared
    seeds (:func:`jaxnorm.stats.ratio_ci`), or None until every run it needs has finished."""
    bn_small, bn_large = point("deep", "batch", small), point("deep", "batch", BASE_BATCH)
    if not all(ctx.has(n) for n in (gn_small, gn_large, bn_small, bn_large)):
        return None
    return stats.ratio_ci(
        change(errors(ctx, gn_small), errors(ctx, gn_large)), change(errors(ctx, bn_small), errors(ctx, bn_large))
    )


def ratio_text(r) -> str:
    """``+0.12 [+0.05, +0.20] (bootstrap over seeds, n = 10)``, or ``—`` for None."""
    return f"{r.estimate:+.2f} [{r.low:+.2f}, {r.high:+.2f}] (bootstrap over seeds, n = {r.n})" if r else "—"


def equal_steps_reading(v_rel: str, v_eq: str | None) -> str:
    """What the equal-steps control says about GN's change at equal epochs (``v_eq`` None: it has not run)."""
    if v_eq is None:
        return "the control has not run."
    if v_eq == "holds" and v_rel != "holds":
        return "GN is flat at equal steps, so the number of updates, not the batch size, accounts for its change."
    if v_eq == v_rel:
        return "the control reads as the equal-epochs comparison does."
    return "at equal steps GN's change is not flat, so the extra updates at batch 2 hide part of it."


def verdict_text(
    v_cnn, v_flat, v_small, v_order, v_deep, v_mlp, v_pop, r_int, r_pop, gn_flat, r_small, paper_inter, est
) -> str:
    """The section's verdict paragraph; an explanation of a verdict that differs from the paper is offered only
    where a run of this grid tests it (the deep CNN: the sample BN pools; population statistics: the estimate)."""
    bare = {v: v.strip("*") for v in (v_cnn, v_deep, v_mlp, v_pop)}
    text = (
        f"**Verdict**: in the port (3-layer 1-D CNN) the interaction (BN₂ − BN₃₂) − (GN₂ − GN₃₂) is "
        f"{est(r_int['cnn'])} ({v_cnn}; paper {paper_inter:+.1f}); GN's change from batch 32 to 2 is "
        f"{est(gn_flat)} (flat within ±{100 * EQUIVALENCE_MARGIN:.1f} points: {v_flat}); at batch 2, BN − GN is "
        f"{est(r_small)} ({v_small}); the batch-32 order BN < GN < LN < IN: {v_order}. With genuinely "
        f"small-sample statistics (the 5-layer strided CNN, whose last BN layers pool 10 and 6 values per channel "
        f"at batch 2) the interaction is {est(r_int['deep'])} ({v_deep}); in the MLP positive control (2 values "
        f"per unit) {est(r_int['mlp'])} ({v_mlp}). "
    )
    if bare[v_cnn] != "holds" and bare[v_deep] == "holds":
        text += (
            "So the port's weaker result is explained by the size of the sample BN's statistics pool — the "
            "3-layer CNN pools 40 or more values per channel even at batch 2 — and this explanation is tested: "
            "the same recipe with 5 BN layers whose last ones pool ≤ 10 values shows the effect. "
        )
    elif bare[v_cnn] != "holds" and r_int["deep"] is None:
        text += "Whether the size of BN's sample explains the port's result is untested here (no deep CNN runs). "
    elif bare[v_cnn] != "holds":
        text += (
            "The port's result is not explained by the size of BN's sample either: the deep CNN, which pools "
            "≤ 10 values, does not show the effect "
            + ("although the MLP control does. " if bare[v_mlp] == "holds" else "(nor does the MLP control). ")
        )
    if bare[v_pop] == "holds":
        text += (
            f"Evaluated with population statistics instead of running averages, the deep CNN's interaction is "
            f"{est(r_pop['deep'])} ({v_pop}): BN's small-batch error is not the test-time estimate of the "
            "statistics; it comes from training on the noisy statistics of small batches. "
        )
    else:
        text += (
            f"Evaluated with population statistics instead of running averages, the deep CNN's interaction is "
            f"{est(r_pop['deep'])} ({v_pop}): a test-time estimation error of the running averages is not "
            "excluded as (part of) the cause. "
        )
    return text + (
        "Anything else that differs from the paper's setting (ImageNet's difficulty, ResNet-50's depth and "
        "residual connections, 8-GPU training) is untested here."
    )
