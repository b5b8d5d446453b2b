"""Figures from runs' ``metrics.jsonl``: ``python -m jaxnorm.lab.plots WORKDIR [WORKDIR ...] [--out DIR]``.

Writes PNGs (matplotlib, Agg) into ``--out`` (default: the first workdir's ``plots/``), one figure per kind, every run
overlaid and labelled by its workdir name:

- ``curves.png``: train loss (log scale) and eval accuracy against the step;
- ``santurkar.png``: Santurkar et al.'s bands over training — loss variation [min, max] (log scale), gradient
  predictiveness [min, max] of ‖∇L(w − ηg) − ∇L(w)‖, and effective β-smoothness (their Fig. 4);
- ``ics.png``: internal covariate shift per layer (ℓ2 difference and cosine of G, G′; their Fig. 2/3);
- ``slices.png``: the last 1-D loss slice of each run (Li et al. 2018);
- ``hessian.png``: top Hessian eigenvalue, trace and directional curvature over training;
- ``sharpness.png``: λ_max with the optimizer's stability threshold (2/η for gradient descent) and their ratio, the
  edge of stability at 1 (probe ``sharpness``; Cohen et al. 2021);
- ``density.png``: the last Hessian eigenvalue density (stochastic Lanczos quadrature) of each run;
- ``surfaces.png``: contour plots of the last 2-D filter-normalized loss surface of each run (probe
  ``loss_slice_2d``; Li et al. 2018).

With ``--landscapes`` (computed from the first run's checkpoints, on its first training batch, batch norm as
``probes.bn_mode``): ``trajectory.png``, the loss on the plane of the training trajectory's top-2 PCA directions with
the path of the initialization and every kept checkpoint drawn on it (Li et al. 2018, §7; keep more points with
``--config.keep_checkpoints``), and ``interpolation.png``, the loss on the line from the initialization to the last
checkpoint (Goodfellow et al. 2015).

- ``ae_filters.png``, ``ae_reconstructions.png``: for a run with autoencoder pretraining, the first layer's filters
  and test inputs with their reconstructions.

A figure is written only when some run has the metrics it needs.
"""

from __future__ import annotations

import argparse
import os
import textwrap
from collections import defaultdict

import matplotlib
import matplotlib.lines
import numpy as np

from jaxnorm.lab.train import metrics as metrics_lib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _label(workdir: str) -> str:
    return os.path.basename(os.path.normpath(workdir))


ACCURACY_BOUNDS = (0.0, 1.0)
Y_MARGIN = 0.05  # of the data's span, above and below


def data_ylim(values, bounds=None, hard=None, margin: float = Y_MARGIN) -> tuple[float, float] | None:
    """Y limits that follow the data: the range of the finite ``values`` widened by ``margin`` of its span on each
    side (a flat series by a small amount). ``bounds`` ``(low, high)`` (either None) is the range the quantity
    lives in: a margin never crosses it, but the data does (a bound never hides data: accuracies at chance under a
    bound of 0.5 still show). ``hard`` bounds are never crossed (accuracies: [0, 1]). None without finite values."""
    v = np.asarray([x for x in np.ravel(np.asarray(values, float)) if np.isfinite(x)])
    if not v.size:
        return None
    lo, hi = float(v.min()), float(v.max())
    pad = margin * (hi - lo) if hi > lo else max(margin * abs(hi), 1e-3)
    low, high = lo - pad, hi + pad
    b_lo, b_hi = bounds if bounds is not None else (None, None)
    if b_lo is not None and lo >= b_lo:
        low = max(low, b_lo)
    if b_hi is not None and hi <= b_hi:
        high = min(high, b_hi)
    if hard is not None:
        low, high = max(low, hard[0]), min(high, hard[1])
        if high <= low:  # every value outside the hard range: show the range
            low, high = hard
    return low, high


def _autoscale_y(ax, values, bounds=None, hard=None) -> None:
    """Sets ``ax``'s y limits with :func:`data_ylim` (nothing without finite values: matplotlib's own)."""
    lim = data_ylim(values, bounds, hard)
    if lim is not None:
        ax.set_ylim(*lim)


def plot_curves(runs: dict[str, list[dict]], path: str) -> str | None:
    if not any(metrics_lib.series(rows, "train", "loss")[0] for rows in runs.values()):
        return None
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in runs.items():
        a.plot(*metrics_lib.series(rows, "train", "loss"), label=name)
        b.plot(*metrics_lib.series(rows, "eval", "accuracy"), marker="o", label=name)
    a.set(xlabel="step", ylabel="train loss", yscale="log", title="training loss")
    b.set(xlabel="step", ylabel="test accuracy", title="evaluation")
    _decorate((a, b))
    return _save(fig, path)


def plot_santurkar(runs: dict[str, list[dict]], path: str, prefix: str = "santurkar") -> str | None:
    keys = {f"{prefix}/loss_min", f"{prefix}/loss_max", f"{prefix}/grad_change_min", f"{prefix}/grad_change_max"}
    if not any(keys <= set(r) for rows in runs.values() for r in rows):
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for i, (name, rows) in enumerate(runs.items()):
        color = f"C{i}"
        for ax, lo, hi in ((axes[0], "loss_min", "loss_max"), (axes[1], "grad_change_min", "grad_change_max")):
            s, low = metrics_lib.series(rows, "probe", f"{prefix}/{lo}")
            _, high = metrics_lib.series(rows, "probe", f"{prefix}/{hi}")
            if s:
                ax.fill_between(s, low, high, color=color, alpha=0.35, label=name)
        s, beta = metrics_lib.series(rows, "probe", f"{prefix}/beta_smoothness")
        if s:
            axes[2].plot(s, beta, color=color, label=name)
    axes[0].set(title="loss landscape (variation along the gradient)", ylabel="loss", yscale="log")
    axes[1].set(title="gradient predictiveness", ylabel="‖∇L(w − ηg) − ∇L(w)‖", yscale="log")
    axes[2].set(title="effective β-smoothness", ylabel="max_η ‖Δ∇L‖ / ‖ηg‖", yscale="log")
    for ax in axes:
        ax.set_xlabel("step")
        _decorate([ax])
    return _save(fig, path)


def plot_ics(runs: dict[str, list[dict]], path: str) -> str | None:
    per_run = {}
    for name, rows in runs.items():
        layers = sorted({k.split("/", 2)[2] for r in rows for k in r if k.startswith("ics/l2/")})
        if layers:
            per_run[name] = (rows, layers)
    if not per_run:
        return None
    fig, axes = plt.subplots(2, len(per_run), figsize=(5 * len(per_run), 7), squeeze=False)
    for j, (name, (rows, layers)) in enumerate(per_run.items()):
        cosines = []
        for layer in layers:
            axes[0, j].plot(*metrics_lib.series(rows, "probe", f"ics/l2/{layer}"), label=layer)
            steps, cos = metrics_lib.series(rows, "probe", f"ics/cos/{layer}")
            axes[1, j].plot(steps, cos, label=layer)
            cosines += cos
        axes[0, j].set(title=f"{name}: ‖G − G′‖₂", yscale="log")
        axes[1, j].set(title=f"{name}: cos(G, G′)", xlabel="step")
        _autoscale_y(axes[1, j], cosines, hard=(-1.05, 1.05))  # a cosine: within [-1, 1]
        _decorate(axes[:, j], fontsize=7)
    return _save(fig, path)


def _plot_last_curve(runs, path, xkey, ykey, **axis) -> str | None:
    """The last logged (``xkey``, ``ykey``) curve of each run, overlaid (loss slices, eigenvalue densities)."""
    last = {}
    for name, rows in runs.items():
        found = [r for r in rows if xkey in r and ykey in r]
        if found:
            last[name] = found[-1]
    if not last:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in last.items():
        ax.plot(r[xkey], r[ykey], label=f"{name} (step {r['step']})")
    ax.set(yscale="log", **axis)
    _decorate([ax])
    return _save(fig, path)


def plot_slices(runs: dict[str, list[dict]], path: str) -> str | None:
    return _plot_last_curve(
        runs,
        path,
        "slice_1d/alphas",
        "slice_1d/losses",
        xlabel="α (filter-normalized direction)",
        ylabel="loss",
        title="1-D loss slice",
    )


def plot_hessian(runs: dict[str, list[dict]], path: str) -> str | None:
    keys = [
        k
        for k in ("hessian/top_eigenvalue", "hessian/trace", "hessian/directional_curvature")
        if any(k in r for rows in runs.values() for r in rows)
    ]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 4), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, rows in runs.items():
            ax.plot(*metrics_lib.series(rows, "probe", key), label=name)
        ax.set(title=key.split("/")[1].replace("_", " "), xlabel="step")
        _decorate([ax])
    return _save(fig, path)


def plot_sharpness(runs: dict[str, list[dict]], path: str) -> str | None:
    """λ_max over training with each run's stability threshold (dashed, the same colour; 2/η for gradient descent)
    and the run's ratio λ_max/threshold on a second panel, the edge of stability at 1 (Cohen et al. 2021)."""
    if not any("sharpness/lambda_max" in r for rows in runs.values() for r in rows):
        return None
    fig, (ax, ax_r) = plt.subplots(1, 2, figsize=(10, 4))
    values = []
    for name, rows in runs.items():
        steps, lam = metrics_lib.series(rows, "probe", "sharpness/lambda_max")
        if not len(steps):
            continue
        (line,) = ax.plot(steps, lam, label=name)
        ax.plot(*metrics_lib.series(rows, "probe", "sharpness/threshold"), "--", color=line.get_color())
        ax_r.plot(*metrics_lib.series(rows, "probe", "sharpness/ratio"), color=line.get_color(), label=name)
        values.extend(np.asarray(lam, np.float64).ravel())
    if values and np.all(np.asarray(values) > 0):  # λ grows by orders of magnitude towards 2/η: a log axis
        ax.set_yscale("log")
        ax_r.set_yscale("log")
    ax_r.axhline(1.0, color="k", lw=0.8)
    ax.set(title="sharpness λ_max (dashed: stability threshold)", xlabel="step")
    ax_r.set(title="λ_max / threshold (1: edge of stability)", xlabel="step")
    _decorate([ax, ax_r])
    return _save(fig, path)


def plot_density(runs: dict[str, list[dict]], path: str) -> str | None:
    return _plot_last_curve(
        runs,
        path,
        "hessian/density_grid",
        "hessian/density",
        xlabel="eigenvalue",
        ylabel="density",
        title="Hessian eigenvalue density (SLQ)",
    )


def _contour(ax, alphas, betas, losses, coords=None, title: str = ""):
    """Filled contours of ``log10`` of the loss over the (α, β) grid (``losses[i, j]`` at ``alphas[i], betas[j]``),
    non-finite points left blank, with an optional path of ``coords`` (T, 2) on top."""
    z = np.log10(np.ma.masked_invalid(np.asarray(losses, np.float64).T).clip(1e-12))
    cs = ax.contourf(np.asarray(alphas), np.asarray(betas), z, levels=20, cmap="viridis")
    ax.contour(np.asarray(alphas), np.asarray(betas), z, levels=10, colors="k", linewidths=0.4)
    ax.figure.colorbar(cs, ax=ax, label="log₁₀ loss")
    if coords is not None:
        c = np.asarray(coords)
        ax.plot(c[:, 0], c[:, 1], "w.-", lw=1.2, ms=5)
        ax.plot(c[-1, 0], c[-1, 1], "r*", ms=10)
    ax.set(xlabel="α", ylabel="β", title=title)


def plot_surface(result: dict, path: str, title: str = "loss surface") -> str:
    """A contour plot of one 2-D surface: the dict of :func:`jaxnorm.probes.loss_slice_2d` or
    :func:`jaxnorm.probes.trajectory_surface` (whose ``coords`` path is drawn on it, the last point starred)."""
    fig, ax = plt.subplots(figsize=(6, 5))
    extra = ""
    if "explained_variance" in result:
        ev = np.asarray(result["explained_variance"])
        extra = f" (PCA: {100 * ev[0]:.1f}% + {100 * ev[1]:.1f}%)"
    _contour(ax, result["alphas"], result["betas"], result["losses"], result.get("coords"), title + extra)
    return _save(fig, path)


def plot_surfaces(runs: dict[str, list[dict]], path: str) -> str | None:
    last = {}
    for name, rows in runs.items():
        found = [r for r in rows if "slice_2d/losses" in r]
        if found:
            last[name] = found[-1]
    if not last:
        return None
    fig, axes = plt.subplots(1, len(last), figsize=(6 * len(last), 5), squeeze=False)
    for ax, (name, r) in zip(axes[0], last.items()):
        _contour(
            ax,
            r["slice_2d/alphas"],
            r["slice_2d/betas"],
            r["slice_2d/losses"],
            title=f"{name} (step {r['step']}, BN {r.get('bn_mode', 'train')} mode)",
        )
    return _save(fig, path)


def landscape_figures(workdir: str, out: str, steps: int = 21) -> list[str]:
    """``trajectory.png`` and ``interpolation.png`` of one run (see the module docstring); the initialization and
    the kept checkpoints are restored (verified) from ``workdir``."""
    import jax

    import jaxnorm.probes as jp
    from jaxnorm.lab.train import loop

    exp, states = loop.restore_trajectory(workdir)
    batch = loop.train_batch(exp, 0)
    final = states[-1][1]
    loss_fn = jp.model_state_loss_fn(exp.eval_model, train=exp.config.probes.bn_mode == "train", loss=exp.loss)
    key = jax.random.key(exp.config.seed)
    inputs = lambda s: {"batch": batch, "batch_stats": s.batch_stats, "dropout_key": key}  # noqa: E731
    made = []
    line = jp.interpolate(loss_fn, states[0][1].params, final.params, inputs(final), steps=41)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(np.asarray(line["alphas"]), np.asarray(line["losses"]))
    ax.axvline(0, color="gray", lw=0.5)
    ax.axvline(1, color="gray", lw=0.5)
    ax.set(
        xlabel=f"α (0 = initialization, 1 = step {states[-1][0]})",
        ylabel="training loss",
        yscale="log",
        title="linear interpolation (Goodfellow et al. 2015)",
    )
    made.append(_save(fig, os.path.join(out, "interpolation.png")))
    if len(states) >= 3:
        surf = jp.trajectory_surface(loss_fn, [s.params for _, s in states], inputs(final), steps=steps)
        made.append(
            plot_surface(surf, os.path.join(out, "trajectory.png"), f"trajectory, steps {states[0][0]}–{states[-1][0]}")
        )
    else:
        print(
            f"{workdir}: {len(states) - 1} checkpoint(s) kept: a trajectory plane needs the initialization and at "
            "least 2 checkpoints (raise --config.keep_checkpoints)"
        )
    return made


def _mean_series(runs: list[list[dict]], split: str, key: str, log: bool = False):
    """Steps common to all runs and the centre and band (over runs) of ``key`` at those steps: the mean ± 1 std, or
    with ``log`` the geometric mean ×/÷ the geometric std, ``exp(m ± s)`` with m, s the mean and std of ``log v``
    (a band that stays positive and is symmetric on a log axis; a non-positive value has no logarithm: NaN)."""
    series = [dict(zip(*metrics_lib.series(rows, split, key))) for rows in runs]
    steps = sorted(set.intersection(*(set(s) for s in series))) if series else []
    if not steps:
        return [], np.array([]), np.array([]), np.array([])
    vals = np.array([[s[t] for t in steps] for s in series], float)
    if not log:
        mean, std = vals.mean(0), vals.std(0)
        return steps, mean, mean - std, mean + std
    with np.errstate(divide="ignore", invalid="ignore"):
        logs = np.log(np.where(vals > 0, vals, np.nan))
    m, sd = logs.mean(0), logs.std(0)
    return steps, np.exp(m), np.exp(m - sd), np.exp(m + sd)


def _autoscale_log_y(ax, values) -> None:
    """Log-axis y limits from the positive finite ``values``, with :func:`data_ylim`'s margins in decades."""
    v = np.asarray([x for x in np.ravel(np.asarray(values, float)) if np.isfinite(x) and x > 0])
    lim = data_ylim(np.log10(v)) if v.size else None
    if lim is not None:
        ax.set_ylim(10 ** lim[0], 10 ** lim[1])


def plot_mean_curves(
    panels: list[tuple],
    path: str,
    key: str = "accuracy",
    split: str = "eval",
    ylabel: str = "test accuracy",
    yscale: str = "linear",
    hlines: dict[str, float] | None = None,
    ylim=None,
) -> str | None:
    """One panel per ``(title, {label: [rows of each seed]}[, {label: y}])``: the centre of ``split/key`` over seeds
    against the step with a band: on a linear axis the mean ± 1 std, on a log axis (``yscale='log'``) the geometric
    mean ×/÷ the geometric std (a mean − std below zero has no place on a log axis). ``hlines`` draws labelled
    horizontal reference lines on every panel, a panel's own third element on that panel only (e.g. 2/η per LR).

    On a linear scale the y axis follows the panel's data (the bands and the reference lines, with a margin:
    :func:`data_ylim`); ``ylim`` ``(low, high)`` is the range the quantity lives in, which the margins stay within
    but the data may leave (a run at chance accuracy under ``ylim=(0.5, 1)`` is still drawn), and an accuracy
    (``key`` naming one) never leaves [0, 1]. On a log scale the axis follows the bands and lines in decades."""
    if not any(
        metrics_lib.series(rows, split, key)[0] for panel in panels for runs in panel[1].values() for rows in runs
    ):
        return None
    log = yscale == "log"
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        title, groups = panel[0], panel[1]
        lines = {**(hlines or {}), **(panel[2] if len(panel) > 2 else {})}
        shown = list(lines.values())
        for i, (label, runs) in enumerate(groups.items()):
            steps, centre, low, high = _mean_series(runs, split, key, log=log)
            if steps:
                ax.plot(steps, centre, color=f"C{i}", label=f"{label} (n={len(runs)})")
                ax.fill_between(steps, low, high, color=f"C{i}", alpha=0.2)
                shown += [*low, *high]
        for j, (label, y) in enumerate(lines.items()):
            ax.axhline(y, color="k", ls=("--", ":", "-.")[j % 3], lw=1, label=label)
        ax.set(xlabel="step", ylabel=ylabel, yscale=yscale)
        _fit_title(ax, title)
        if yscale == "linear":
            _autoscale_y(ax, shown, bounds=ylim, hard=ACCURACY_BOUNDS if "accuracy" in key else None)
        elif log:
            _autoscale_log_y(ax, shown)
        _decorate([ax])
    return _save(fig, path)


def plot_lines(
    series: dict[str, tuple[list, list, list]],
    path: str,
    *,
    xlabel: str,
    ylabel: str,
    title: str = "",
    logx: bool = False,
    xticks=None,
) -> str:
    """``{label: (xs, means, stds)}`` as lines with error bars (e.g. test error against the batch size per norm)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, (xs, means, stds) in series.items():
        ax.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=label)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    _fit_title(ax, title)
    if logx:
        ax.set_xscale("log", base=2)
    if xticks is not None:
        ax.set_xticks(list(xticks))
        ax.set_xticklabels([str(x) for x in xticks])
    _decorate([ax])
    return _save(fig, path)


def plot_forest(
    rows: list[tuple], path: str, title: str = "claims: our 95% intervals and the papers' effects"
) -> str | None:
    """A forest plot: one line per claim ``(label, estimate, low, high, unit, paper_value, verdict)``, its interval
    as a bar with the estimate as a dot, the paper's number (None: the paper states none) as a red diamond, and a
    dashed line at no effect. Claims in ``'×'`` (ratios) share a log-axis panel with no effect at 1; claims in
    ``'pts'`` (differences in points) a linear panel with no effect at 0."""
    panels = [(unit, [r for r in rows if r[4] == unit]) for unit in ("×", "pts")]
    panels = [(u, rs) for u, rs in panels if rs]
    if not panels:
        return None
    colors = {"holds": "C2", "fails": "C3", "magnitude not reproduced": "C1"}
    heights = [max(1.6, 0.45 * len(rs) + 1.0) for _, rs in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, sum(heights)), squeeze=False, height_ratios=heights)
    for ax, (unit, rs) in zip(axes[:, 0], panels):
        ys = np.arange(len(rs))[::-1]
        for y, (_, est, lo, hi, _, paper, verdict) in zip(ys, rs):
            c = colors.get(verdict, "0.4")
            ax.plot([lo, hi], [y, y], color=c, lw=2.5, solid_capstyle="butt")
            ax.plot([est], [y], "o", color=c, ms=6)
            if paper is not None:
                ax.plot([paper], [y], "D", color="red", ms=6, mfc="none", mew=1.5)
        ax.axvline(1.0 if unit == "×" else 0.0, color="k", ls="--", lw=1)
        ax.set_yticks(ys)
        ax.set_yticklabels([textwrap.fill(r[0], 38) for r in rs], fontsize=8)
        if unit == "×":
            ax.set_xscale("log")
        ax.set_xlabel("ratio (×)" if unit == "×" else "difference (points)")
        ax.set_ylim(-0.7, len(rs) - 0.3)
        ax.grid(alpha=0.3, axis="x")
    handles = [
        matplotlib.lines.Line2D([], [], color=c, lw=2.5, label=v) for v, c in (*colors.items(), ("other", "0.4"))
    ]
    handles.append(matplotlib.lines.Line2D([], [], ls="", marker="D", color="red", mfc="none", label="paper"))
    axes[0, 0].legend(handles=handles, fontsize=7, loc="best")
    _fit_title(axes[0, 0], title)
    return _save(fig, path)


def plot_percentiles(runs: dict[str, list[dict]], path: str, layer: str, unit_label: str = "unit 0") -> str | None:
    """Ioffe & Szegedy's Fig. 1(b, c): the 15th, 50th and 85th percentiles of one activation's input (probe
    ``activations/<layer>/p15`` …) over training, one panel per run, on a shared y axis."""
    keys = [f"activations/{layer}/p{q}" for q in (15, 50, 85)]
    found = {name: rows for name, rows in runs.items() if any(keys[1] in r for r in rows)}
    if not found:
        return None
    fig, axes = plt.subplots(1, len(found), figsize=(5 * len(found), 3.6), squeeze=False, sharey=True)
    for ax, (name, rows) in zip(axes[0], found.items()):
        for key, style in zip(keys, ("--", "-", "--")):
            ax.plot(*metrics_lib.series(rows, "probe", key), "k" + style, lw=1.2)
        ax.set(title=f"{name}: {layer}, {unit_label}", xlabel="step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("activation input: 15th / 50th / 85th pct")
    return _save(fig, path)


def _fit_title(ax, title: str) -> None:
    """``title`` wrapped to the axes' width (a title wider than its panel is cut off at the figure's edge)."""
    width_in = ax.get_position().width * ax.figure.get_figwidth()
    size = matplotlib.font_manager.FontProperties(size=matplotlib.rcParams["axes.titlesize"]).get_size_in_points()
    chars = max(12, int(width_in * 72 / (0.6 * size)))  # DejaVu Sans averages ~0.6 em per character
    ax.set_title(textwrap.fill(title, chars) if title else title)


def _decorate(axes, fontsize: int = 8) -> None:
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:  # a panel with no run drawn has nothing to label
            ax.legend(fontsize=fontsize)
        ax.grid(alpha=0.3)


def _save(fig, path: str) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_autoencoder(workdir: str, out: str, num_images: int = 8) -> list[str]:
    """First-layer filters and reconstructions of test inputs through the first pretrained tied autoencoder of a run
    with ``pretrain.layers`` (its pretraining checkpoint, restored by
    :func:`jaxnorm.lab.train.pretrain.restore_autoencoders`;
    imports jax lazily)."""
    from jaxnorm.lab.models import autoencoder, components
    from jaxnorm.lab.train import loop, pretrain

    exp = loop.load_experiment(workdir)
    step, aes = pretrain.restore_autoencoders(exp, workdir)
    ae = next(iter(aes.values()))
    w = np.asarray(ae["kernel"])  # (inputs, hidden) for a dense layer
    if w.ndim != 2:  # the first pretrained layer is a convolution: the figures are drawn for dense layers
        return []
    shape = exp.dataset.info.input_shape
    x = exp.dataset.test.take(np.arange(num_images))[0].reshape(num_images, -1)
    act = components.get_activation(exp.config.activation)
    x_hat = np.asarray(autoencoder.tied_decode(ae, autoencoder.tied_encode(ae, x, act), x.shape))
    image = (lambda v: v.reshape(shape[0], shape[1])) if len(shape) == 3 and shape[-1] == 1 else None
    paths = []
    n_f = min(32, w.shape[1])
    fig, axes = plt.subplots(4, n_f // 4, figsize=(n_f // 2, 4), squeeze=False)
    for j, ax in enumerate(axes.flat):
        if image:
            ax.imshow(image(w[:, j]), cmap="RdBu")
        else:
            ax.plot(w[:, j])
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"first-layer filters (pretrained, step {step})")
    paths.append(_save(fig, os.path.join(out, "ae_filters.png")))
    fig, axes = plt.subplots(2, num_images, figsize=(1.5 * num_images, 3.2), squeeze=False)
    for i in range(num_images):
        for row, v in ((0, x[i]), (1, x_hat[i])):
            if image:
                axes[row, i].imshow(image(v), cmap="gray")
            else:
                axes[row, i].plot(v)
            axes[row, i].set_xticks([])
            axes[row, i].set_yticks([])
    axes[0, 0].set_ylabel("input")
    axes[1, 0].set_ylabel("reconstruction")
    paths.append(_save(fig, os.path.join(out, "ae_reconstructions.png")))
    return paths


def make_plots(
    workdirs: list[str], out: str | None = None, labels: list[str] | None = None, landscapes: bool = False
) -> list[str]:
    """Write every figure that the runs' metrics support (and, with ``landscapes``, the first run's trajectory and
    interpolation figures, :func:`landscape_figures`); returns the PNG paths. Runs are labelled by ``labels`` or
    their directory names."""
    if not workdirs:
        raise ValueError("make_plots: give at least one run directory")
    labels = list(labels) if labels is not None else [_label(w) for w in workdirs]
    if len(labels) != len(workdirs) or len(set(labels)) != len(labels):
        raise ValueError(f"make_plots: need one distinct label per run, got {labels} for {len(workdirs)} runs")
    runs = defaultdict(list)
    for w, label in zip(workdirs, labels):
        runs[label] = metrics_lib.read_metrics(w)
    out = out or os.path.join(workdirs[0], "plots")
    os.makedirs(out, exist_ok=True)
    made = [
        plot_curves(runs, os.path.join(out, "curves.png")),
        plot_santurkar(runs, os.path.join(out, "santurkar.png")),
        plot_santurkar(runs, os.path.join(out, "santurkar_random.png"), prefix="santurkar_random"),
        plot_ics(runs, os.path.join(out, "ics.png")),
        plot_slices(runs, os.path.join(out, "slices.png")),
        plot_hessian(runs, os.path.join(out, "hessian.png")),
        plot_sharpness(runs, os.path.join(out, "sharpness.png")),
        plot_density(runs, os.path.join(out, "density.png")),
        plot_surfaces(runs, os.path.join(out, "surfaces.png")),
    ]
    made = [p for p in made if p]
    for w, label in zip(workdirs, labels):  # runs with autoencoder pretraining: filters and reconstructions
        if os.path.isdir(os.path.join(w, "pretrain", "checkpoints")):
            sub = os.path.join(out, label) if len(workdirs) > 1 else out
            os.makedirs(sub, exist_ok=True)
            made += plot_autoencoder(w, sub)
    if landscapes:
        made += landscape_figures(workdirs[0], out)
    return made


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnorm.lab.plots", description=__doc__.split("\n\n")[0])
    p.add_argument("workdirs", nargs="+", help="run directories (each with a metrics.jsonl)")
    p.add_argument("--out", default=None, help="where the PNGs go (default: FIRST_WORKDIR/plots)")
    p.add_argument(
        "--landscapes",
        action="store_true",
        help="also the first run's trajectory plane and init→final interpolation, from its checkpoints",
    )
    args = p.parse_args(argv)
    from jaxnorm.lab.train.checkpoint import CheckpointError

    try:
        paths = make_plots(args.workdirs, args.out, landscapes=args.landscapes)
    except (FileNotFoundError, ValueError, CheckpointError) as e:
        print(f"error: {e}")
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
