"""Srivastava et al. (2014) at CPU size: does dropout reduce overfitting, and is weight scaling at test time a good
approximation of averaging the thinned networks? A 3×256 ReLU MLP on MNIST-1D (``mnist1d_10k``: 4000 training
signals, which the MLP overfits, 1000 validation, 10 000 test) trained with SGD + momentum and a cosine schedule at
batch 128, without dropout, with (inverted) dropout on the hidden units at each rate of ``RATES``, and with dropout
plus the max-norm constraint ‖w‖₂ ≤ 3 (§5.1).

The dropout rate is selected on the validation split (mean validation accuracy over seeds), never on the test set;
the train accuracy is that of the deterministic network (eval mode, dropout off) on the whole training split, so the
train − test gap is not biased in dropout's favour by training-mode minibatch accuracy. Monte-Carlo model averaging
(k sampled thinned networks, their softmax outputs averaged) vs weight scaling (the deterministic network) is
computed from each seed's final checkpoint of the selected arm on the test split, with fixed mask keys.

    python -m jaxnorm.lab.sweep experiments/srivastava.py --workdir runs/srivastava
    python train.py --config experiments/srivastava.py --workdir runs/dropout --config.dropout=dropout

--config.size=full: the paper's network (3×1024, dropout 0.5 hidden / 0.2 input) on a prepared tfds MNIST with
``train[:50000]`` / ``train[50000:]`` as train / validation (paper, Table 2: 1.25% error with dropout, 1.06% with
dropout + max-norm).
"""

from __future__ import annotations

import math

import numpy as np

from jaxnorm import stats
from jaxnorm.lab import plots, report
from jaxnorm.lab.train.config import base_config

TITLE = "4. Srivastava et al. (2014): dropout reduces overfitting; weight scaling approximates model averaging"
ORDER = 4
PAPER_NAME = "Srivastava et al. 2014"
SEEDS = 10

# The paper's numbers (Table 2, MNIST, 3×1024 ReLU nets): test error with dropout (keep 0.5 hidden, 0.8 input) and
# with dropout + max-norm. Table 2's 1.60% is Simard et al.'s 2×800 logistic net without dropout, not the same
# architecture, so it is no same-network baseline and is not quoted as one.
PAPER_ERROR = {"dropout": 1.25, "dropout + max-norm": 1.06}
PAPER_TABLE = "Table 2"
# §7.5, Fig. 11: the Monte-Carlo average of k thinned networks matches weight scaling from about k = 50
PAPER_MC_K = 50
MC_SOURCE = "§7.5, Fig. 11"
MC_KS = (1, 10, 50)  # the numbers of sampled thinned networks compared with weight scaling
MC_KS_SMOKE = (1, 2, 3)  # a smoke report checks the code path, not the average: 50 samples were 9 of its 26 s
MC_SEED = 12345  # the mask keys of the Monte-Carlo samples (fixed: the same masks every report)
# weight scaling ≈ MC averaging (k = 50): equivalent when the 95% interval of the paired difference lies within
# ± this margin (accuracy; 0.5 points, about the binomial noise floor of the 10 000 test signals)
EQUIVALENCE_MARGIN = 0.005
CHANCE = 0.1

RATES = (0.2, 0.5)  # candidate dropout rates, one is selected on validation
MAX_NORM = 3.0
MAX_NORM_RATE = 0.5  # the paper's hidden rate, with max-norm


def standard() -> str:
    return "standard"


def dropout_arm(rate: float) -> str:
    return f"dropout{rate:g}"


def maxnorm_arm(rate: float) -> str:
    return f"dropout{rate:g}_maxnorm{MAX_NORM:g}"


def get_config():
    c = base_config()
    c.dataset = "mnist1d_10k"
    c.validation_split = "validation"
    c.eval_train = True  # the deterministic network's accuracy on the whole training split
    c.model = "mlp"
    c.model_kwargs.hidden = (256, 256, 256)
    c.norm = "none"
    c.dropout = "none"
    c.dropout_rate = 0.0
    c.batch_size = 128
    c.optimizer = "momentum"
    c.learning_rate = 0.1
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.num_steps = 2500
    c.eval_every = 500
    c.eval_batch_size = 5000
    c.log_every = 100
    c.checkpoint_every = 2500
    c.sizes.smoke = dict(
        num_steps=4,
        eval_every=2,
        log_every=2,
        checkpoint_every=4,
        eval_batch_size=500,
        model_kwargs=dict(hidden=(32, 32, 32)),
    )
    c.sizes.full = dict(
        dataset="mnist",
        train_split="train[:50000]",
        validation_split="train[50000:]",
        model_kwargs=dict(hidden=(1024, 1024, 1024), input_dropout_rate=0.2),
        num_steps=100_000,
        eval_every=5000,
        log_every=1000,
        checkpoint_every=10_000,
        eval_batch_size=1000,
    )
    return c


def get_sweep(config):
    """no dropout / dropout at each candidate rate / dropout at the paper's rate + max-norm 3."""
    return [
        {"name": standard(), "dropout": "none", "dropout_rate": 0.0, "max_norm": 0.0},
        *[{"name": dropout_arm(r), "dropout": "dropout", "dropout_rate": r, "max_norm": 0.0} for r in RATES],
        {"name": maxnorm_arm(MAX_NORM_RATE), "dropout": "dropout", "dropout_rate": MAX_NORM_RATE, "max_norm": MAX_NORM},
    ]


# --------------------------------------------------------------------------------------------------------------------
# analysis


def select_rate(ctx) -> tuple[float | None, dict]:
    """The candidate rate with the highest mean validation accuracy (diverged runs at chance), and every rate's
    mean; None when no run logged a validation accuracy."""
    means = {}
    for r in RATES:
        if ctx.has(dropout_arm(r)):
            vals = [
                v for v in ctx.outcomes(dropout_arm(r), "val_accuracy", diverged=CHANCE).values() if math.isfinite(v)
            ]
            if vals:
                means[r] = float(np.mean(vals))
    return (max(means, key=means.get) if means else None), means


def mc_accuracies(workdir: str, ks=MC_KS, seed: int = MC_SEED) -> dict:
    """Test accuracy of one run's final network with weight scaling (the deterministic network: inverted dropout
    needs no rescaling at test time) and of the Monte-Carlo average of the softmax outputs of k sampled thinned
    networks, for each k of ``ks`` (the first k of one fixed sequence of masks, so the estimates are nested).
    Returns ``{'weight_scaling': acc, k: acc, ...}``."""
    import jax
    import jax.numpy as jnp

    from jaxnorm.lab import data as data_lib
    from jaxnorm.lab.train import loop

    exp, state = loop.restore(workdir)
    variables = state.variables()
    model = exp.eval_model

    @jax.jit
    def thinned(v, x, key):  # one sampled thinned network: dropout on (train mode), its softmax output
        out = model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])[0]
        return jax.nn.softmax(out.astype(jnp.float32), axis=-1)

    logits = loop.predict(exp, variables)
    bs = min(exp.config.eval_batch_size, exp.dataset.info.num_test)
    batches = [
        (jnp.asarray(b["x"]), np.asarray(b["y"]), np.asarray(b["mask"]))
        for b in data_lib.eval_batches(exp.dataset.test, bs)
    ]
    labels = np.concatenate([y[m] for _, y, m in batches])
    out = {"weight_scaling": float(np.mean(logits.argmax(-1) == labels))}
    total = None
    base = jax.random.key(seed)
    for i in range(max(ks)):
        key = jax.random.fold_in(base, i)
        probs = np.concatenate(
            [np.asarray(thinned(variables, x, jax.random.fold_in(key, j)))[m] for j, (x, _, m) in enumerate(batches)]
        )
        total = probs if total is None else total + probs
        if i + 1 in ks:
            out[i + 1] = float(np.mean(total.argmax(-1) == labels))
    return out


def _gap_table(ctx, order) -> str:
    pts = ctx.points()
    rows = []
    for p in order:
        m = pts[p]["metrics"]
        rows.append(
            [
                p,
                report.pm(m.get("val_accuracy"), 100, 2),
                report.pm(m.get("test_error"), 100, 2),
                report.pm(m.get("train_eval_accuracy"), 100, 2),
                report.pm(m.get("gap"), 100, 2),
                report.pm(m.get("gap_minibatch"), 100, 2),
                f"{pts[p]['finished']}/{pts[p]['seeds']}",
            ]
        )
    return report.table(
        [
            "run",
            "validation accuracy %",
            "test error %",
            "train accuracy % (eval mode)",
            "train − test (pts, eval mode)",
            "train − test (pts, training-mode minibatches, biased)",
            "seeds finished",
        ],
        rows,
    )


def section(ctx) -> str:
    pts = ctx.points()
    order = [p for p in [standard(), *map(dropout_arm, RATES), maxnorm_arm(MAX_NORM_RATE)] if p in pts]
    rate, val_means = select_rate(ctx)
    sel = dropout_arm(rate) if rate is not None else None
    tab = _gap_table(ctx, order)
    fig = plots.plot_mean_curves([("test accuracy", {p: ctx.metrics(p) for p in order})], ctx.path("accuracy"))
    fig_train = plots.plot_mean_curves(
        [("training loss", {p: ctx.metrics(p) for p in order})],
        ctx.path("train_loss"),
        key="loss",
        split="train",
        ylabel="training loss",
        yscale="log",
    )
    selection = (
        "Dropout rate selected on the validation split (mean validation accuracy over seeds): "
        + ", ".join(f"{r:g}: {100 * v:.2f}%" for r, v in val_means.items())
        + f" → **{rate:g}**; the test split is used only to report it."
        if sel
        else "No validation accuracy was logged, so no rate is selected."
    )

    findings, texts = [], {}
    r1 = report.accuracy_comparison(ctx, standard(), sel, direction="greater", diverged=CHANCE) if sel else None
    texts[1] = report.compared(r1) if r1 else "—"
    findings.append(
        ctx.claim(
            "dropout lowers the test error of the same network",
            f"{PAPER_TABLE}, §6.1",
            f"3×256 ReLU MLP, mnist1d_10k, rate {rate:g} (selected on validation)" if sel else "—",
            f"test accuracy {texts[1]}",
            report.verdict_of(r1),
            paper_effect="direction only (Table 2's 1.60% is another network)",
            primary="P5",
            p_value=report.p_of(r1),
            forest=report.points_forest(r1),
        )
    )
    r2 = report.safe_compare(ctx, standard(), sel, "gap", direction="less", diverged=0.0) if sel else None
    texts[2] = report.compared(r2) if r2 else "—"
    findings.append(
        ctx.claim(
            "dropout reduces overfitting (train − test gap)",
            "§6.1, Fig. 4",
            "train accuracy of the deterministic network on the whole training split",
            f"gap {texts[2]}",
            report.verdict_of(r2),
        )
    )
    mx, mx_base = maxnorm_arm(MAX_NORM_RATE), dropout_arm(MAX_NORM_RATE)
    r3 = report.safe_compare(ctx, mx_base, mx, "test_accuracy", direction="greater", diverged=CHANCE)
    texts[3] = report.compared(r3) if r3 else "—"
    findings.append(
        ctx.claim(
            f"max-norm improves dropout ({PAPER_ERROR['dropout']}% → {PAPER_ERROR['dropout + max-norm']}% error)",
            PAPER_TABLE,
            f"rate {MAX_NORM_RATE:g}, ‖w‖₂ ≤ {MAX_NORM:g}",
            f"test accuracy {texts[3]}",
            report.verdict_of(r3),
        )
    )

    # Monte-Carlo model averaging vs weight scaling, from the final checkpoints of the selected arm
    mc, ks = {}, (MC_KS_SMOKE if ctx.smoke else MC_KS)
    if sel:
        for run in ctx.runs(sel):
            if run["status"] == "finished":
                mc[run["seed"]] = mc_accuracies(run["workdir"], ks)
    mc_rows, mc_res = [], {}
    if mc:
        ws = {s: v["weight_scaling"] for s, v in mc.items()}
        mc_rows.append(
            ["weight scaling (deterministic network)", report.mean_std([100 * v for v in ws.values()], ".2f"), "—"]
        )
        for k in ks:
            mk = {s: v[k] for s, v in mc.items()}
            res = stats.compare(ws, mk, direction="less") if len(mk) >= 2 else None
            mc_res[k] = res
            mc_rows.append(
                [
                    f"Monte-Carlo average of k = {k}",
                    report.mean_std([100 * v for v in mk.values()], ".2f"),
                    report.compared(res) if res else "—",
                ]
            )
    mc_tab = (
        report.table(
            ["test-time inference (selected arm)", "test accuracy %", "minus weight scaling, paired (95% CI)"], mc_rows
        )
        if mc_rows
        else ""
    )
    r4 = mc_res.get(PAPER_MC_K)
    v4 = stats.equivalence_verdict(r4["interval"], EQUIVALENCE_MARGIN) if r4 else "inconclusive"
    texts[4] = report.compared(r4) if r4 else "—"
    findings.append(
        ctx.claim(
            f"weight scaling ≈ Monte-Carlo averaging of k ≈ {PAPER_MC_K} thinned nets",
            MC_SOURCE,
            f"selected arm, k = {PAPER_MC_K} masks, equivalence margin ±{100 * EQUIVALENCE_MARGIN:.1f} pts",
            f"MC − weight scaling {texts[4]}",
            v4,
        )
    )
    r5 = mc_res.get(1)
    texts[5] = report.compared(r5) if r5 else "—"
    findings.append(
        ctx.claim(
            "one sampled thinned net is worse than weight scaling (MC error falls with k)",
            MC_SOURCE,
            "selected arm, k = 1",
            f"MC(1) − weight scaling {texts[5]}",
            "inconclusive" if r5 is None else stats.verdict(r5["interval"], "less"),
        )
    )

    verdict = (
        f"**Verdict**: with the validation-selected rate ({rate:g}), dropout changes the test accuracy by "
        f"{texts[1]} vs no dropout — {findings[0]}; the train − test gap of the deterministic networks by {texts[2]} "
        f"— {findings[1]}. Max-norm on top of dropout {MAX_NORM_RATE:g}: {texts[3]} — {findings[2]}. Monte-Carlo "
        f"averaging of {PAPER_MC_K} thinned networks minus weight scaling: {texts[4]} — {findings[3]} (equivalence "
        f"within ±{100 * EQUIVALENCE_MARGIN:.1f} pts, pre-registered); a single thinned network: {texts[5]} — "
        f"{findings[4]}."
        if sel
        else "**Verdict**: no dropout arm logged a validation accuracy; nothing to select."
    )
    return "\n\n".join(
        filter(
            None,
            [
                "**Claim** (Srivastava et al. 2014): dropout reduces overfitting — lower test error than the same network "
                f"without it and a smaller train − test gap (§6.1; MNIST, {PAPER_TABLE}: 3×1024 ReLU nets with dropout "
                f"{PAPER_ERROR['dropout']}% error, with dropout + max-norm {PAPER_ERROR['dropout + max-norm']}%); at test "
                "time, scaling the weights by the keep probability approximates averaging the exponentially many thinned "
                f"networks: the Monte-Carlo average of k sampled ones matches it from about k = {PAPER_MC_K} "
                f"({MC_SOURCE}).",
                "**Our setting**: " + report.setting(ctx) + f" Test noise floor (binomial SE, {standard()}): "
                f"{report.noise_floor(ctx, standard(), 10000) if ctx.has(standard()) else '—'} pts on 10 000 signals.",
                selection,
                tab,
                ctx.figure(fig),
                ctx.figure(fig_train),
                "*What to look for*: the standard network's training loss falls to ~0 while its test accuracy stalls; "
                "dropout keeps the training loss higher and the test accuracy higher. The gap column uses the "
                "deterministic network on the training split; the minibatch column (dropout on) is shown only to make its "
                "bias visible.",
                mc_tab,
                (
                    f"Monte-Carlo averaging: each of the {len(mc)} seeds' final networks of {sel}, k masks drawn with fixed "
                    f"keys (seed {MC_SEED}), the softmax outputs averaged; the k's are nested (the first k of one sequence)."
                    if mc
                    else ""
                ),
                verdict,
                report.status_note(ctx),
            ],
        )
    )
