"""The results report: ``python -m jaxnorm.lab.report [--experiments experiments] [--workdir runs/results]
[--out WORKDIR/results.md] [--seeds N] [--size small] [--only NAME ...] [--jobs N]``.

The experiments are the files of ``experiments/`` (one per paper, read by path; a new paper is one new file). Each
holds its training config and grid (``get_config``, ``get_sweep``: :mod:`jaxnorm.lab.sweep` runs it), ``TITLE``,
``ORDER`` (its place in the report), ``SEEDS``, the paper's numbers with their sources, and ``section(ctx) -> str``:
its analysis and report section, which records one :class:`Finding` per claim with ``ctx.claim(...)``. This module
runs (or finishes: finished runs are skipped) every experiment's sweep (``--jobs N``: N runs at once, with the
same numbers as one at a time), then writes the report (``--out``, by default
``WORKDIR/results.md``, inside the sweeps' workdir) and its figures (``figures/*.png`` beside it): a claims table
(paper, claim, source, our setting, our number with its 95% confidence interval, verdict), then one section per
experiment. Every number comes from the runs; the claims quoted from the papers are the only fixed text. The
tracked results are rewritten only when asked by name::

    python -m jaxnorm.lab.report --out docs/results.md      # docs/results.md and docs/figures/*.png

A smoke-size report (``--size smoke``: a few steps per run, to check that everything runs) says so at its top and
gives no verdicts (each reads *smoke: no verdict*); its numbers are shown but are too short-run to judge a claim.

Statistics (:mod:`jaxnorm.stats`): arms share seeds, so a comparison is the mean of the per-seed differences with a
t interval; a diverged run is not dropped (its accuracy counts as chance, and success rates count it as a failure);
a verdict is *holds* (the interval excludes zero in the paper's direction and the claim's criterion is met),
*fails* (it excludes zero the other way), *magnitude not reproduced* (it excludes the paper's stated effect from
below: :func:`jaxnorm.stats.magnitude_verdict`) or *inconclusive*. The claims registered in
``experiments/REGISTRATION.md`` are primary: Holm's adjustment holds their family-wise error at 5%
(:func:`apply_holm`), and the report cites the registration's commit; every other claim is exploratory.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

from jaxnorm import stats
from jaxnorm.lab import sweep
from jaxnorm.lab.train import metrics as metrics_lib

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS_DIR = "experiments"
DEFAULT_WORKDIR = os.path.join("runs", "results")
REPORT_NAME = "results.md"  # the default --out, inside --workdir
SMOKE_SIZE = "smoke"  # the size preset of a quick check: its runs are too short for a verdict
NO_VERDICT = "smoke: no verdict"
# True while a smoke-size experiment's section is written: every verdict it asks for reads NO_VERDICT
_SMOKE: contextvars.ContextVar[bool] = contextvars.ContextVar("jaxnorm_report_smoke", default=False)


def is_smoke(summary: dict) -> bool:
    """Whether a sweep ran at the smoke size preset (a few steps per run: a check that it runs, not a result)."""
    return summary.get("size") == SMOKE_SIZE


@contextlib.contextmanager
def _smoke_section(smoke: bool):
    token = _SMOKE.set(smoke)
    try:
        yield
    finally:
        _SMOKE.reset(token)


@dataclasses.dataclass(frozen=True)
class Finding:
    """One claim's row of the claims table."""

    paper: str
    claim: str
    source: str  # where in the paper: table, figure or section
    setting: str  # ours, in a few words
    ours: str  # our number with its confidence interval
    verdict: str  # holds | inconclusive | fails | magnitude not reproduced | reproduced | not reproduced (exact checks)
    paper_effect: str = "—"  # the paper's number for the claim, where it states one
    primary: str = ""  # the registration's id of a primary (confirmatory) claim, e.g. "P1"; "" for exploratory
    p_value: float | None = None  # a primary claim's one-sided p-value (Holm's family: the primary claims)
    holm_p: float | None = None  # its Holm-adjusted p-value, set by write_report
    # (estimate, low, high, unit, paper's value or None) on a display scale, unit '×' or 'pts': the forest plot's row
    forest: tuple | None = None
    discovery: str | None = None  # a primary claim's verdict on the discovery seeds (with --discovery-workdir)
    kind: str = "claim"  # or "check": a manipulation check, a control or a premise, listed apart and never counted


@dataclasses.dataclass
class Context:
    """What a section writer gets: the sweep summary, where the runs and figures are, the figure-path helper, the
    per-seed outcomes and paired comparisons, and ``claim`` to record its findings."""

    name: str
    summary: dict
    figures_dir: str
    out_dir: str
    paper: str = ""
    findings: list = dataclasses.field(default_factory=list)
    smoke: bool = False  # a smoke-size sweep: claim() records NO_VERDICT whatever the numbers say
    _loaded: dict = dataclasses.field(default_factory=dict, repr=False)

    def points(self) -> dict[str, dict]:
        return {p["point"]: p for p in self.summary["points"]}

    def has(self, point: str) -> bool:
        return point in self.points()

    def point(self, name: str) -> dict:
        """The aggregate of grid point ``name``; a KeyError naming the grid's points when it has none of that name
        (an analysis asking for a point its grid does not define)."""
        pts = self.points()
        if name not in pts:
            raise KeyError(
                f"{self.name}: the analysis uses grid point {name!r}, which the sweep did not run "
                f"(its points: {sorted(pts)}); define the name once and use it in get_sweep and the "
                "analysis"
            )
        return pts[name]

    def runs(self, point: str) -> list[dict]:
        self.point(point)
        return [r for r in self.summary["runs"] if r["point"] == point]

    def _rows(self, run: dict) -> list[dict]:
        # Sections read the same runs for tables, figures and verdicts: load each metrics file once.
        if run["workdir"] not in self._loaded:
            self._loaded[run["workdir"]] = metrics_lib.read_metrics(run["workdir"])
        return self._loaded[run["workdir"]]

    def metrics(self, point: str, status: str = "finished") -> list[list[dict]]:
        return [self._rows(r) for r in self.runs(point) if r["status"] == status]

    def seed_metrics(self, point: str) -> dict[int, list[dict]]:
        """``{seed: metrics rows}`` of the finished runs of ``point``."""
        return {r["seed"]: self._rows(r) for r in self.runs(point) if r["status"] == "finished"}

    def outcomes(self, point: str, metric: str = "test_accuracy", *, diverged: float | None = None) -> dict[int, float]:
        """``{seed: final metric}`` over the runs of ``point``. A diverged run gives ``diverged`` (e.g. the chance
        accuracy) or NaN when None; a failed run (it never trained) is absent."""
        out = {}
        for r in self.runs(point):
            if r["status"] == "finished" and isinstance(r.get(metric), (int, float)):
                out[r["seed"]] = float(r[metric])
            elif r["status"] == "diverged":
                out[r["seed"]] = math.nan if diverged is None else float(diverged)
        return out

    def compare(
        self,
        a: str,
        b: str,
        metric: str = "test_accuracy",
        *,
        direction: str,
        diverged: float | None = None,
        criterion: Callable | None = None,
    ) -> dict:
        """The paired comparison ``b − a`` of ``metric`` over the seeds both points ran (:func:`jaxnorm.stats.compare`,
        t interval); ``direction`` is the paper's: ``'greater'`` when it says b's metric is larger."""
        return stats.compare(
            self.outcomes(a, metric, diverged=diverged),
            self.outcomes(b, metric, diverged=diverged),
            direction=direction,
            criterion=criterion,
        )

    def claim(
        self,
        claim: str,
        source: str,
        setting: str,
        ours: str,
        verdict: str,
        *,
        paper_effect: str = "—",
        primary: str = "",
        p_value: float | None = None,
        forest: tuple | None = None,
        kind: str = "claim",
    ) -> str:
        """Record a finding for the claims table; returns the verdict in bold, for the section's text. In a smoke
        report (``smoke``) the verdict is :data:`NO_VERDICT`: the number is kept, the judgement is not.

        ``paper_effect`` is the paper's number, shown beside ours. ``primary`` names a registered primary claim
        (``experiments/REGISTRATION.md``, e.g. ``"P1"``) and needs its one-sided ``p_value``: the report holds the
        primary claims' family-wise error with Holm, and a primary claim that holds on its own interval but not
        after Holm is reported *inconclusive*. Every other claim is exploratory. ``forest`` (:func:`ratio_forest`,
        :func:`points_forest`) puts the claim's interval, and the paper's number, in the report's forest plot.
        ``kind='check'`` records a manipulation check, a control or a premise: listed under *Checks*, not counted
        as a claim (it tests the design, not the paper)."""
        if kind not in ("claim", "check") or (kind == "check" and primary):
            raise ValueError(f"{self.name}: kind must be 'claim' or 'check' (a check is never primary), got {kind!r}")
        if primary and (p_value is None or not 0 <= p_value <= 1):
            raise ValueError(f"{self.name}: primary claim {primary} needs its p-value in [0, 1], got {p_value!r}")
        if self.smoke or _SMOKE.get():
            verdict = NO_VERDICT
        self.findings.append(
            Finding(
                self.paper,
                claim,
                source,
                setting,
                ours,
                verdict,
                paper_effect,
                primary,
                p_value,
                forest=forest,
                kind=kind,
            )
        )
        return f"**{verdict}**"

    def figure(self, made: str | None) -> str:
        if made is None:
            return ""
        return f"![{os.path.basename(made)}]({os.path.relpath(made, self.out_dir)})"

    def path(self, stem: str) -> str:
        return os.path.join(self.figures_dir, f"{self.name}_{stem}.png")


# --------------------------------------------------------------------------------------------------------------------
# formatting


def pm(stat: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std`` of an aggregate, scaled (100 for percentages); '—' when missing."""
    if not stat:
        return "—"
    return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def mean_std(values, fmt: str = ".3g") -> str:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], float)
    if not len(v):
        return "—"
    return f"{v.mean():{fmt}} ± {v.std(ddof=1) if len(v) > 1 else 0.0:{fmt}}"


def signed(x: float, digits: int = 1) -> str:
    """``+0.5`` / ``-0.5``, and ``0.0`` rather than ``-0.0`` when the rounded value is zero; ``+∞``/``−∞``/``nan``
    for the bounds of an interval that has none."""
    x = float(x)
    if not math.isfinite(x):
        return "nan" if math.isnan(x) else ("+∞" if x > 0 else "−∞")
    r = round(x, digits) + 0.0
    return f"{r:.{digits}f}" if r == 0 else f"{r:+.{digits}f}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def status_note(ctx: Context) -> str:
    bad = [p for p in ctx.summary["points"] if p["diverged"] or p["failed"]]
    if not bad:
        return ""
    parts = [
        f"{p['point']}: {p['diverged']} of {p['seeds']} diverged" + (f", {p['failed']} failed" if p["failed"] else "")
        for p in bad
    ]
    return (
        "Runs that did not finish: " + "; ".join(parts) + ". They are left out of the mean ± std columns but "
        "counted in every paired comparison and success rate (a diverged run scores chance accuracy)."
    )


def error_table(ctx: Context, points: list[str], labels: dict[str, str] | None = None) -> str:
    pts = ctx.points()
    rows = []
    for p in points:
        m = pts[p]["metrics"]
        rows.append(
            [
                (labels or {}).get(p, p),
                pm(m.get("test_error"), 100, 2),
                pm(m.get("train_accuracy"), 100, 2),
                pm(m.get("gap"), 100, 2),
                pm(m.get("test_loss"), 1, 3),
                f"{pts[p]['finished']}/{pts[p]['seeds']}",
            ]
        )
    return table(
        ["run", "test error %", "train accuracy %", "train − test accuracy (pts)", "test loss", "seeds finished"], rows
    )


def first_step_reaching(rows: list[dict], target: float) -> int | None:
    for step, acc in zip(*metrics_lib.series(rows, "eval", "accuracy")):
        if acc >= target - 1e-9:
            return step
    return None


def ci(interval: stats.Interval, scale: float = 100.0, digits: int = 2, unit: str = " pts") -> str:
    """``+0.52 [−0.10, +1.14] pts (n = 5)``: a paired difference and its 95% interval, scaled (100: points); a
    crossed-bootstrap interval says that the test examples were resampled too."""
    return (
        f"{signed(interval.estimate * scale, digits)} [{signed(interval.low * scale, digits)}, "
        f"{signed(interval.high * scale, digits)}]{unit} (n = {interval.n}"
        + (" seeds, resampled with the test examples)" if interval.method == "crossed bootstrap" else ")")
    )


def compared(result: dict, scale: float = 100.0, digits: int = 2, unit: str = " pts") -> str:
    """A comparison's interval, as :func:`ci`, for a table or the claims row."""
    return ci(result["interval"], scale, digits, unit)


def safe_compare(ctx: Context, a: str, b: str, metric: str = "test_accuracy", **kw) -> dict | None:
    """:meth:`Context.compare`, or None when the points share fewer than two finite seeds (a smoke sweep)."""
    if not (ctx.has(a) and ctx.has(b)):
        return None
    oa, ob = ctx.outcomes(a, metric, diverged=kw.get("diverged")), ctx.outcomes(b, metric, diverged=kw.get("diverged"))
    common = [s for s in set(oa) & set(ob) if math.isfinite(oa[s]) and math.isfinite(ob[s])]
    if len(common) < 2:
        return None
    return ctx.compare(a, b, metric, **kw)


CORRECT_FILE = "test_correct.npy"  # a run's per-example correctness on the test split, written by the report


def per_example_correct(ctx: Context, point: str) -> dict[int, np.ndarray] | None:
    """``{seed: 0/1 per test example}`` of the runs of ``point``: each finished run's final checkpoint restored and
    its predictions on the test split compared with the labels, in the split's order (kept in the run's
    ``test_correct.npy``, so a rerun reads it). None when a run did not finish, or has no final checkpoint: the
    comparison then keeps its seed-only interval."""
    from jaxnorm.lab.data import eval_batches
    from jaxnorm.lab.train import checkpoint as ckpt_lib
    from jaxnorm.lab.train import loop

    out = {}
    for r in ctx.runs(point):
        if r["status"] != "finished":
            return None
        path = os.path.join(r["workdir"], CORRECT_FILE)
        if not os.path.exists(path):
            try:
                exp, state = loop.restore(r["workdir"])
            except (FileNotFoundError, ckpt_lib.CheckpointError):
                return None
            if int(state.step) != exp.config.num_steps or exp.loss != "cross_entropy":
                return None
            logits = loop.predict(exp, state.variables())
            bs = min(exp.config.eval_batch_size, len(exp.dataset.test))
            labels = np.concatenate(
                [np.asarray(b["y"])[np.asarray(b["mask"])] for b in eval_batches(exp.dataset.test, bs)]
            )
            np.save(path, (logits.argmax(-1) == labels).astype(np.uint8))
        out[r["seed"]] = np.load(path)
    return out


def accuracy_comparison(ctx: Context, a: str, b: str, *, direction: str, diverged: float | None = None) -> dict | None:
    """The paired comparison ``b − a`` of final test accuracy, with an interval that includes the test set's
    sampling error: :func:`jaxnorm.stats.crossed_bootstrap_ci` over seeds and test examples when every run of both
    points has its per-example correctness (:func:`per_example_correct`), else :func:`safe_compare`'s seed-only t
    interval (``text`` says which; a diverged run, which has no predictions, scores ``diverged`` there). ``p`` is
    the paired t test's over the per-seed accuracies, in ``direction``. None when the points share fewer than two
    seeds."""
    r = safe_compare(ctx, a, b, direction=direction, diverged=diverged)
    if r is None:
        return None
    ca, cb = per_example_correct(ctx, a), per_example_correct(ctx, b)
    if ca is None or cb is None or sorted(ca) != sorted(cb):
        return {**r, "text": r["text"] + " (seed-only interval: no per-example predictions)"}
    iv = stats.crossed_bootstrap_ci(ca, cb)
    return {**r, "interval": iv, "verdict": stats.verdict(iv, direction), "text": f"b − a = {iv}"}


def verdict_of(result: dict | None) -> str:
    """A comparison's verdict (*inconclusive* without one); :data:`NO_VERDICT` inside a smoke-size section."""
    if _SMOKE.get():
        return NO_VERDICT
    return "inconclusive" if result is None else result["verdict"]


def magnitude_of(result: dict | None, direction: str, paper_effect: float | None = None) -> str:
    """A comparison's verdict judged against the paper's effect as well as zero (:func:`jaxnorm.stats.
    magnitude_verdict`, on the interval's scale: a log ratio for ratios); *inconclusive* without a comparison,
    :data:`NO_VERDICT` inside a smoke-size section."""
    if _SMOKE.get():
        return NO_VERDICT
    return "inconclusive" if result is None else stats.magnitude_verdict(result["interval"], direction, paper_effect)


def ratio_forest(result: dict | None, paper: float | None = None, *, invert: bool = False) -> tuple | None:
    """A forest-plot row of a comparison on the log scale: ``exp`` of its interval (``invert``: of its negative,
    e.g. a speed-up from log step counts) in '×', with the paper's ratio."""
    if result is None:
        return None
    iv, sign = result["interval"], -1.0 if invert else 1.0
    lo, hi = sorted((math.exp(sign * iv.low), math.exp(sign * iv.high)))
    return (math.exp(sign * iv.estimate), lo, hi, "×", paper)


def points_forest(result: dict | None, paper: float | None = None, scale: float = 100.0) -> tuple | None:
    """A forest-plot row of a difference of fractions, in points (× ``scale``), with the paper's value in points."""
    if result is None:
        return None
    iv = result["interval"]
    return (scale * iv.estimate, scale * iv.low, scale * iv.high, "pts", paper)


def signed_rank_verdict(a: dict, b: dict, direction: str, alpha: float = 0.025) -> tuple[str, dict | None]:
    """The verdict of a skewed paired outcome (drift, reach times) by the Wilcoxon signed-rank test of ``b − a``
    over the shared seeds (:func:`jaxnorm.stats.signed_rank`): *holds* when the one-sided p in ``direction`` is
    below ``alpha``, *fails* when the other side's is, else *inconclusive* (also with too few seeds or no
    non-zero difference). ``alpha`` 0.025 on each side is the 5% two-sided level of the report's 95% intervals.
    Returns ``(verdict, result or None)``."""
    other = "less" if direction == "greater" else "greater"
    try:
        res, rev = stats.signed_rank(a, b, direction=direction), stats.signed_rank(a, b, direction=other)
    except ValueError:
        return "inconclusive", None
    return ("holds" if res["p"] < alpha else "fails" if rev["p"] < alpha else "inconclusive"), res


def fisher_verdict(successes_a: int, n_a: int, successes_b: int, n_b: int, alpha: float = 0.025) -> tuple[str, float]:
    """The verdict of "b succeeds more often than a" from run counts by Fisher's exact test: *holds* when the
    one-sided p is below ``alpha`` (0.025: the 5% two-sided level of the report's 95% intervals), *fails* when
    the opposite one's is, else *inconclusive*. Returns ``(verdict, one-sided p)``."""
    p = stats.fisher_exact(successes_a, n_a, successes_b, n_b, direction="greater")
    q = stats.fisher_exact(successes_a, n_a, successes_b, n_b, direction="less")
    return ("holds" if p < alpha else "fails" if q < alpha else "inconclusive"), p


def p_of(result: dict | None) -> float:
    """A comparison's two-sided p-value, the paired t test of its per-seed differences (:func:`jaxnorm.stats.
    t_test_p`): the test whose rejection at 5% is the 95% interval excluding zero, as the verdicts read it; 1
    without a comparison."""
    if result is None:
        return 1.0
    return stats.t_test_p(list(result["differences"].values()), direction="two-sided")


def noise_floor(ctx: Context, point: str, num_test: int) -> str:
    """The binomial standard error of ``point``'s mean test accuracy on ``num_test`` examples, in points."""
    acc = ctx.point(point)["metrics"].get("test_accuracy", {}).get("mean")
    if acc is None:
        return "—"
    return f"{100 * stats.binomial_se(acc, num_test):.2f}"


def _seed_range(seeds: list[int]) -> str:
    return ", ".join(map(str, seeds)) if len(seeds) <= 3 else f"{seeds[0]}, {seeds[1]}, …, {seeds[-1]}"


def setting(ctx: Context) -> str:
    s = ctx.summary
    return (
        f"`{os.path.relpath(s['config_file'], _ROOT) if os.path.isabs(s['config_file']) else s['config_file']}` "
        f"at size `{s['size']}`, {s['seeds']} seed{'s' if s['seeds'] != 1 else ''} per grid point "
        + (f"(seeds {_seed_range(s['seed_list'])}) " if s.get("first_seed") or s.get("seed_stride", 1) != 1 else "")
        + f"({len(s['runs'])} runs, {s['total_wall_s'] / 60:.1f} min of training on this machine). "
        + config_line(ctx)
    )


def config_line(ctx: Context) -> str:
    run = ctx.summary["runs"][0]
    path = os.path.join(run["workdir"], "config.json")
    if not os.path.exists(path):
        return ""
    with open(path) as f:
        c = json.load(f)
    kw = ", ".join(f"{k}={v}" for k, v in c.get("model_kwargs", {}).items() if v is not None)
    return (
        f"Model `{c['model']}`{' (' + kw + ')' if kw else ''} on `{c['dataset']}`, {c['optimizer']} "
        f"(LR {c['learning_rate']:g}, {c['schedule']} schedule, weight decay {c['weight_decay']:g}), batch "
        f"{c['batch_size']}, {c['num_steps']} steps (values of the first grid point; the grid changes some)."
    )


# --------------------------------------------------------------------------------------------------------------------
# the experiments: files of experiments/, read by path


def experiments_dir(directory: str | None = None) -> str:
    """``directory``, else ``./experiments`` when it exists, else the repository's ``experiments/``."""
    for d in [directory] if directory else [EXPERIMENTS_DIR, os.path.join(_ROOT, EXPERIMENTS_DIR)]:
        if os.path.isdir(d):
            return d
    raise FileNotFoundError(
        f"no experiments directory ({directory or EXPERIMENTS_DIR}); pass --experiments DIR, "
        "the folder of one file per paper"
    )


REQUIRED = ("TITLE", "get_config", "get_sweep", "section")


def discover(directory: str | None = None) -> dict[str, object]:
    """``{name: module}`` of every experiment file of the directory (``name`` = file stem), ordered by ``ORDER``."""
    d = experiments_dir(directory)
    found = {}
    for fname in sorted(os.listdir(d)):
        if not fname.endswith(".py") or fname.startswith("_"):
            continue
        module = sweep.load_experiment(os.path.join(d, fname))
        missing = [a for a in REQUIRED if not hasattr(module, a)]
        if missing:
            raise ValueError(
                f"{os.path.join(d, fname)} defines no {', '.join(missing)}: an experiment file needs "
                f"{', '.join(REQUIRED)} (see jaxnorm.lab.report)"
            )
        found[os.path.splitext(fname)[0]] = module
    if not found:
        raise FileNotFoundError(f"{d}: no experiment files (*.py)")
    return dict(sorted(found.items(), key=lambda kv: (getattr(kv[1], "ORDER", 99), kv[0])))


VERDICT_ORDER = {
    "holds": 0,
    "reproduced": 0,
    "inconclusive": 1,
    NO_VERDICT: 1,
    stats.MAGNITUDE_NOT_REPRODUCED: 2,
    "fails": 2,
    "not reproduced": 2,
}
REGISTRATION = os.path.join(EXPERIMENTS_DIR, "REGISTRATION.md")
HOLM_ALPHA = 0.05


def registered_claims(path: str | None = None) -> dict[str, str]:
    """``{id: paper}`` of the primary claims in the registration's table (rows ``| P<k> | paper | ...``)."""
    path = path or os.path.join(_ROOT, REGISTRATION)
    out = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                cells = [c.strip() for c in line.strip().strip("|").split("|")]
                if len(cells) > 2 and cells[0][:1] == "P" and cells[0][1:].isdigit():
                    out[cells[0]] = cells[1]
    return out


def apply_holm(findings: list[Finding], registered: dict[str, str] | None = None) -> list[Finding]:
    """The findings with Holm's adjustment over the primary claims (α = 0.05): each primary gets ``holm_p``, and
    one whose own verdict is *holds* but whose adjusted p exceeds α becomes *inconclusive*. Raises ValueError for a
    primary id the registration does not define, or one recorded twice."""
    registered = registered_claims() if registered is None else registered
    primary = [f for f in findings if f.primary]
    ids = [f.primary for f in primary]
    unknown = sorted(set(ids) - set(registered))
    if unknown:
        raise ValueError(f"primary claims {unknown} are not in {REGISTRATION} (it registers {sorted(registered)})")
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise ValueError(f"primary claims {twice} are recorded more than once; each registered claim is one finding")
    if not primary:
        return list(findings)
    adjusted, reject = stats.holm([f.p_value for f in primary], alpha=HOLM_ALPHA)
    by_id = {f.primary: (a, r) for f, a, r in zip(primary, adjusted, reject)}
    out = []
    for f in findings:
        if f.primary:
            a, r = by_id[f.primary]
            verdict = "inconclusive" if f.verdict == "holds" and not r else f.verdict
            f = dataclasses.replace(f, holm_p=a, verdict=verdict)
        out.append(f)
    return out


def _id_order(f: Finding) -> tuple:
    return (0, int(f.primary[1:])) if f.primary else (1, 0)


def claims_table(findings: list[Finding]) -> str:
    """The primary claims first (in registration order, with Holm's adjusted p), then the exploratory ones; with
    discovery runs, a column with each primary claim's verdict on the discovery seeds."""
    with_discovery = any(f.discovery is not None for f in findings)
    rows = []
    for f in sorted(findings, key=_id_order):  # stable: exploratory rows keep the report's order
        ours = f.ours + (f"; Holm p = {f.holm_p:.3g}" if f.holm_p is not None else "")
        which = f.primary or "exploratory"
        row = [which, f.paper, f.claim, f.source, f.paper_effect, f.setting, ours]
        if with_discovery:
            row.append(f.discovery or "—")
        rows.append(row + [f"**{f.verdict}**"])
    header = ["#", "paper", "claim", "source", "paper's number", "our setting", "our number (95% CI)"]
    if with_discovery:
        header.append("on the discovery seeds")
    return table(header + ["verdict"], rows)


def with_discovery(findings: list[Finding], discovered: list[Finding]) -> list[Finding]:
    """Each primary claim with its verdict on the discovery seeds beside the confirmation's: a claim counts only
    when both agree, so a primary that holds (or fails) on one seed set and not on the other is *inconclusive*."""
    found = {f.primary: f.verdict for f in discovered if f.primary}
    out = []
    for f in findings:
        if f.primary and f.primary in found:
            d = found[f.primary]
            f = dataclasses.replace(f, discovery=d, verdict=f.verdict if d == f.verdict else "inconclusive")
        out.append(f)
    return out


def _git(*args: str) -> tuple[int, str]:
    """``(exit status, stdout)`` of a git command in the repository (``(-1, '')`` without git)."""
    try:
        r = subprocess.run(["git", *args], cwd=_ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return -1, ""
    return r.returncode, r.stdout.strip()


def registration_note(run_commits: list[str]) -> str:
    """Which registration governs the report: the commit of ``experiments/REGISTRATION.md``, and whether every run
    was made at a commit that contains it (a run made before the registration cannot confirm anything)."""
    rc, reg = _git("log", "-1", "--format=%h %cs", "--", REGISTRATION)
    if rc != 0 or not reg:
        return f"No registration (`{REGISTRATION}`) is committed: every claim below is exploratory."
    commit, date = reg.split()
    runs = [c.split("+")[0] for c in run_commits]
    after = bool(runs) and all(c != "unknown" and _git("merge-base", "--is-ancestor", commit, c)[0] == 0 for c in runs)
    return (
        f"The primary claims (P1–P{len(registered_claims())}) are registered in `{REGISTRATION}` at commit "
        f"`{commit}` ({date}); every other row is exploratory. "
        + (
            "Every run here was made at a commit that contains the registration."
            if after
            else "**Not every run was made at a commit that contains the registration** (runs at "
            f"{', '.join(f'`{c}`' for c in sorted(set(runs)))}): those runs are a pilot, and their primary rows "
            "confirm nothing."
        )
        + f" The history the registration discloses (the pilot report, the seed change, the pilot-chosen target) is "
        f"in `{REGISTRATION}`."
    )


def forest_figure(findings: list[Finding], path: str) -> str | None:
    """The claims' forest plot (:func:`jaxnorm.lab.plots.plot_forest`): primary claims first."""
    from jaxnorm.lab import plots

    rows = [
        (f"{f.primary or 'expl.'}: {f.paper}: {f.claim}", *f.forest[:3], f.forest[3], f.forest[4], f.verdict)
        for f in sorted(findings, key=_id_order)
        if f.forest is not None and all(math.isfinite(v) for v in f.forest[:3])
    ]
    return plots.plot_forest(rows, path) if rows else None


def _discovery_findings(discovery: dict[str, dict], modules: dict) -> list[Finding]:
    """The findings of every section on the discovery runs, Holm applied among them (their figures and text are
    not kept: the report shows the confirmation's)."""
    import tempfile

    found = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, summary in discovery.items():
            module = modules[name]
            ctx = Context(name, summary, tmp, tmp, paper=getattr(module, "PAPER_NAME", module.TITLE))
            with _smoke_section(is_smoke(summary)):
                module.section(ctx)
            found += ctx.findings
    return apply_holm(found)


def write_report(
    summaries: dict[str, dict],
    out: str,
    command: str,
    modules: dict | None = None,
    discovery: dict[str, dict] | None = None,
) -> str:
    """Render ``out`` (markdown) and its figures (``<out dir>/figures``) from the sweeps' summaries; with
    ``discovery`` (the same experiments' sweeps on other seeds), each primary claim's verdict on those seeds too
    (:func:`with_discovery`)."""
    modules = modules or discover()
    out_dir = os.path.dirname(os.path.abspath(out))
    figures = os.path.join(out_dir, "figures")
    os.makedirs(figures, exist_ok=True)
    commits = sorted({c for s in summaries.values() for c in s["commit"].split(", ")})
    sections, findings = [], []
    smoke = [name for name, summary in summaries.items() if is_smoke(summary)]
    for name, summary in summaries.items():
        module = modules[name]
        ctx = Context(
            name, summary, figures, out_dir, paper=getattr(module, "PAPER_NAME", module.TITLE), smoke=is_smoke(summary)
        )
        t0 = time.perf_counter()
        with _smoke_section(ctx.smoke):
            body = module.section(ctx)
        analysis_s = time.perf_counter() - t0
        findings += ctx.findings
        # the runs' own wall times (kept from when they trained: a rerun that skips them reports the same)
        extra = (
            f" ({summary.get('total_wall_s', math.nan) / 60:.1f} min of training on this machine, "
            f"{analysis_s / 60:.1f} min for the analysis)"
        )
        sections += [f"## {module.TITLE}", "", f"Command: `{summary['command']}`{extra}", "", body, ""]
    checks = [f for f in findings if f.kind == "check"]
    findings = apply_holm([f for f in findings if f.kind != "check"])
    if discovery:
        findings = with_discovery(findings, _discovery_findings(discovery, modules))
        commits = sorted(set(commits) | {c for d in discovery.values() for c in d["commit"].split(", ")})
    parts = [
        "# Results: reproducing the seeds' claims",
        "",
        "<!-- generated by `" + command + "`; do not edit by hand -->",
        "",
    ]
    if smoke:
        which = "every experiment" if len(smoke) == len(summaries) else "the experiments " + ", ".join(smoke)
        parts += [
            f"> **Smoke check, not results.** The runs of {which} are at size `{SMOKE_SIZE}`: a few steps each, to "
            "check that everything runs. They are too short to judge any claim, so no verdicts are given (each reads "
            f"*{NO_VERDICT}*); the numbers are shown as they came out. Run at size `small` (the default) or `full` "
            "for results.",
            "",
        ]
    parts += [
        f"Every number and figure below comes from runs of jaxnorm at commit `{', '.join(commits)}`, "
        f"analysed and rendered at commit `{sweep.git_commit()}` by `{command}` (finished runs are skipped, so a "
        "rerun only rebuilds the report). "
        "Comparisons are paired over seeds (arms share seeds): the mean of the per-seed differences with its "
        "95% t interval; diverged runs count (chance accuracy), never dropped. "
        + (
            ""
            if len(smoke) == len(summaries)  # a smoke check defines no verdicts: it gives none
            else "A claim *holds* when the interval excludes zero in the paper's direction and its stated "
            "criterion is met, *fails* when it excludes zero the other way, is *magnitude not reproduced* when the "
            "interval excludes the paper's stated effect from below (a smaller effect, or a null that rules the "
            "paper's size out), and is *inconclusive* otherwise (no difference is never read as equivalence). "
            "A primary claim holds only if it also survives Holm's adjustment over the primary claims "
            f"(α = {HOLM_ALPHA}). "
        )
        + "Hyperparameters are selected on validation splits only. The runs are CPU-sized (2 cores). The configs' "
        "`--config.size=full` presets name the papers' scale (tfds datasets, larger models); no run at that size is "
        "behind any number here.",
        "",
        registration_note(commits),
        "",
        "## Claims",
        "",
        claims_table(findings),
        "",
    ]
    if checks:
        parts += [
            "## Checks",
            "",
            "Manipulation checks, controls and premises: they test the design (is the arm what it should be, does "
            "the control behave), not a paper's claim, and are not counted as claims.",
            "",
            table(
                ["paper", "check", "source", "our setting", "our number (95% CI)", "outcome"],
                [[f.paper, f.claim, f.source, f.setting, f.ours, f"**{f.verdict}**"] for f in checks],
            ),
            "",
        ]
    forest = forest_figure(findings, os.path.join(figures, "claims_forest.png"))
    if forest:
        parts += [
            f"![claims_forest.png]({os.path.relpath(forest, out_dir)})",
            "",
            "*The forest plot*: every claim that gives an interval, ours as a bar (95%) with its estimate, the paper's "
            "number as a red diamond where the paper states one, coloured by the verdict; ratios on a log axis.",
            "",
        ]
    parts += [f"- [{modules[n].TITLE}](#{_anchor(modules[n].TITLE)})" for n in summaries] + [""]
    text = "\n".join(parts + sections)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, out)
    return out


def _anchor(title: str) -> str:
    keep = "".join(ch for ch in title.lower() if ch.isalnum() or ch in " -")
    return keep.replace(" ", "-")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jaxnorm.lab.report", description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", default=None, help="the folder of experiment files (default: experiments/)")
    p.add_argument("--workdir", default=DEFAULT_WORKDIR, help="where the sweeps run (one folder per experiment)")
    p.add_argument(
        "--out",
        default=None,
        help=f"the markdown report, its figures in figures/ beside it (default: WORKDIR/{REPORT_NAME}; the tracked "
        "results are rewritten only with an explicit --out docs/results.md)",
    )
    p.add_argument("--seeds", type=int, default=None, help="seeds per grid point (default: each file's SEEDS)")
    p.add_argument("--first-seed", type=int, default=0, help="the first seed F (new seeds for a confirmatory run)")
    p.add_argument("--seed-stride", type=int, default=1, help="the step S between seeds (8: disjoint random streams)")
    p.add_argument(
        "--discovery-workdir",
        default=None,
        help="also run (or finish) every sweep there on seeds 0, 1, … (the discovery seeds) and show each primary "
        "claim's verdict on them beside the confirmation's: a claim counts only when both agree",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="runs trained at once, one worker process each (default 1; 2 on 2 cores)"
    )
    p.add_argument("--only", nargs="*", default=None, help="a subset of experiments (file stems)")
    p.add_argument("--size", default="small", help="the configs' size preset (small; smoke for a quick check)")
    args = p.parse_args(argv)
    out = args.out or os.path.join(args.workdir, REPORT_NAME)
    try:
        modules = discover(args.experiments)
        unknown = sorted(set(args.only or ()) - set(modules))
        if unknown:
            raise ValueError(f"--only {' '.join(unknown)}: no such experiment; the experiments are {sorted(modules)}")
        names = [n for n in modules if not args.only or n in args.only]
        overrides = {"size": args.size} if args.size != "small" else {}  # the same for every sweep
        if args.discovery_workdir:  # before anything runs: the two seed sets must be disjoint
            for name in names:
                n = sweep.plan(modules[name].__file__, args.seeds, overrides)[2]
                confirm = {args.first_seed + k * args.seed_stride for k in range(n)}
                overlap = sorted(confirm & set(range(n)))
                if overlap:
                    raise ValueError(
                        f"{name}: {len(overlap)} confirmation seeds ({overlap[0]} … {overlap[-1]}) are also discovery "
                        f"seeds (0 … {n - 1}); give "
                        f"--first-seed {n} or more (the registered confirmation: --first-seed 1000 --seed-stride 8)"
                    )
        summaries, discovery = {}, {}
        for name in names:
            print(f"== {name}", flush=True)
            path = os.path.relpath(modules[name].__file__)  # the command in the report, as a user types it
            path = modules[name].__file__ if path.startswith("..") else path
            summaries[name] = sweep.run_sweep(
                path,
                os.path.join(args.workdir, name),
                args.seeds,
                overrides,
                first_seed=args.first_seed,
                seed_stride=args.seed_stride,
                jobs=args.jobs,
            )
            if args.discovery_workdir:
                print(f"== {name} (discovery seeds)", flush=True)
                discovery[name] = sweep.run_sweep(
                    path, os.path.join(args.discovery_workdir, name), args.seeds, overrides, jobs=args.jobs
                )
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    command = (
        "python -m jaxnorm.lab.report"
        + "".join(f" {flag} {val}" for flag, val in (("--workdir", args.workdir), ("--out", out)) if val)
        + (f" --experiments {args.experiments}" if args.experiments else "")
        + (f" --seeds {args.seeds}" if args.seeds else "")
        + (f" --first-seed {args.first_seed}" if args.first_seed else "")
        + (f" --seed-stride {args.seed_stride}" if args.seed_stride != 1 else "")
        + (f" --discovery-workdir {args.discovery_workdir}" if args.discovery_workdir else "")
        + (f" --size {args.size}" if args.size != "small" else "")
        + (f" --only {' '.join(args.only)}" if args.only else "")
    )
    print(write_report(summaries, out, command, {n: modules[n] for n in names}, discovery or None))
    return 0


if __name__ == "__main__":
    # Run the imported module's main, not this __main__ copy's: the experiment files import jaxnorm.lab.report, and
    # its smoke state (verdict_of) must be the one that write_report sets.
    from jaxnorm.lab import report as _report

    raise SystemExit(_report.main())
