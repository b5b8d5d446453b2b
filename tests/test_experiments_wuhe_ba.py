"""The Wu & He and Ba et al. analyses on hand-made sweep summaries with known answers: the paired interaction
(BN's change from batch 32 to 2 minus GN's), GN's flatness as an equivalence with a margin, the batch-32 ordering,
BN with population statistics, diverged runs counted at chance, Ba's paired comparisons and its exact invariance
table; and every grid-point name the analyses use exists in the grids."""

import json
import os

import pytest

from jaxnorm import stats
from jaxnorm.lab import report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WU_HE = sweep.load_experiment(os.path.join(ROOT, "experiments", "wu_he.py"))
BA = sweep.load_experiment(os.path.join(ROOT, "experiments", "ba.py"))
SEEDS = 5
JITTER = (0.0, 0.001, -0.001, 0.002, -0.002)  # per seed, shared by every arm: cancels in paired differences


def _summary(path, accuracies, tmp_path, diverged=(), metrics=None):
    """A sweep summary with ``accuracies[point] = (test accuracy, population accuracy or None)`` per point, the same
    for every seed up to JITTER·(point index + 1) (so paired differences have a small, nonzero spread)."""
    _, points, _ = sweep.plan(path, SEEDS, {})
    rows, aggs = [], []
    for i, p in enumerate(points):
        acc, pop = accuracies.get(p["name"], (0.9, None))
        for s in range(SEEDS):
            workdir = tmp_path / p["name"] / f"seed{s}"
            workdir.mkdir(parents=True)
            if metrics is not None:
                (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in metrics(p["name"], s)))
            row = {
                "point": p["name"],
                "overrides": p["overrides"],
                "seed": s,
                "workdir": str(workdir),
                "status": "finished",
                "wall_s": 1.0,
            }
            if (p["name"], s) in diverged:
                row["status"] = "diverged"
            else:
                a = acc + JITTER[s] * (1 + 0.1 * i)
                row.update(test_accuracy=a, test_error=1 - a, test_loss=0.1)
                if pop is not None:
                    row["test_population_accuracy"] = pop + JITTER[s]
            rows.append(row)
        aggs.append(p["name"])
    summary = {
        "config_file": path,
        "size": "small",
        "seeds": SEEDS,
        "runs": rows,
        "total_wall_s": 1.0,
        "commit": "test",
        "command": "test",
    }
    summary["points"] = sweep.aggregate(rows)
    return summary


def _ctx(summary, tmp_path):
    figures = tmp_path / "figures"
    figures.mkdir(exist_ok=True)
    return report.Context("test", summary, str(figures), str(tmp_path))


def _wu_he_accuracies(bn32=0.97, bn2=0.90, gn32=0.96, gn2=0.96, pop2=None, gn32_steps=None):
    out = {}
    for arch in WU_HE.ARCHS:
        out[WU_HE.point(arch, "batch", 32)] = (bn32, bn32)
        out[WU_HE.point(arch, "batch", 8)] = (bn32, bn32)
        out[WU_HE.point(arch, "batch", 2)] = (bn2, bn2 if pop2 is None else pop2)
        out[WU_HE.point(arch, "group", 32)] = (gn32, None)
        out[WU_HE.point(arch, "group", 8)] = (gn32, None)
        out[WU_HE.point(arch, "group", 2)] = (gn2, None)
    out[WU_HE.point_equal_steps(*WU_HE.EQUAL_STEPS)] = (gn32 if gn32_steps is None else gn32_steps, None)
    out[WU_HE.point("cnn", "layer", 32)] = (0.95, None)
    out[WU_HE.point("cnn", "instance", 32)] = (0.94, None)
    return out


def _findings(ctx):
    return {f.claim: f for f in ctx.findings}


def test_wu_he_interaction_holds_when_bn_degrades_and_gn_is_flat(tmp_path):
    ctx = _ctx(_summary(WU_HE.__file__, _wu_he_accuracies(), tmp_path), tmp_path)
    r = WU_HE.interaction(ctx, "deep", 2)
    # (BN₂ − BN₃₂) − (GN₂ − GN₃₂) = (0.10 − 0.03) − (0.04 − 0.04) = +0.07
    assert r["interval"].estimate == pytest.approx(0.07, abs=1e-3) and r["verdict"] == "holds"
    text = WU_HE.section(ctx)
    assert text.count("**Verdict**") == 1
    verdicts = [f.verdict for f in ctx.findings]
    assert len(verdicts) == 9 and verdicts.count("holds") == 8, [(f.claim, f.verdict, f.ours) for f in ctx.findings]
    rel = [f for f in ctx.findings if f.claim.startswith("GN's error is flat relative to BN's: ")]
    assert rel[0].verdict == "holds" and rel[0].ours.startswith("+0.00 [")  # GN unchanged: 0 of BN's 7 points
    assert "+7.00" in text and "+11.1" in text  # ours and the paper's interaction (Table 2)
    for f in ctx.findings:
        assert f.source.startswith(("Wu & He 2018, Table", "Wu & He 2018, abstract"))
    # the registered claim (P3, the deep CNN) is judged against the paper's +11.1 points: +7 [≈6.9, 7.1] is below it
    (deep,) = [f for f in ctx.findings if f.primary]
    assert (deep.primary, deep.paper_effect, deep.verdict) == ("P3", "+11.1 pts", stats.MAGNITUDE_NOT_REPRODUCED)
    assert deep.p_value < 1e-6
    assert deep.forest[3:] == ("pts", pytest.approx(11.1)) and deep.forest[0] == pytest.approx(7.0, abs=0.1)
    more = tmp_path / "more"
    more.mkdir()
    ctx = _ctx(_summary(WU_HE.__file__, _wu_he_accuracies(bn2=0.85), more), more)  # +12 points
    WU_HE.section(ctx)
    assert [f.verdict for f in ctx.findings if f.primary] == ["holds"]


def test_wu_he_interaction_fails_the_other_way_and_flatness_fails_when_gn_degrades(tmp_path):
    acc = _wu_he_accuracies(bn32=0.97, bn2=0.97, gn32=0.96, gn2=0.90)
    ctx = _ctx(_summary(WU_HE.__file__, acc, tmp_path), tmp_path)
    WU_HE.section(ctx)
    by_source = [(f.claim, f.verdict) for f in ctx.findings]
    assert by_source[0][1] == "fails"  # the port's interaction: −6 points
    assert by_source[1][1] == "fails"  # GN's change (+6 points) lies wholly outside ±0.5
    assert by_source[2][1] == "fails"  # at batch 2 BN is better than GN here


def test_wu_he_flatness_is_inconclusive_when_the_interval_straddles_the_margin(tmp_path):
    acc = _wu_he_accuracies(gn2=0.96 - 0.005)  # GN's error +0.5 points: the interval straddles the margin
    ctx = _ctx(_summary(WU_HE.__file__, acc, tmp_path), tmp_path)
    WU_HE.section(ctx)
    assert ctx.findings[1].verdict == "inconclusive"


def test_wu_he_diverged_run_counts_as_chance_not_dropped(tmp_path):
    acc = _wu_he_accuracies(bn2=0.97, gn2=0.96)  # no effect, except one diverged BN run at batch 2
    summary = _summary(WU_HE.__file__, acc, tmp_path, diverged={(WU_HE.point("mlp", "batch", 2), 3)})
    ctx = _ctx(summary, tmp_path)
    errs = WU_HE.errors(ctx, WU_HE.point("mlp", "batch", 2))
    assert len(errs) == SEEDS and errs[3] == pytest.approx(0.9)
    r = WU_HE.interaction(ctx, "mlp", 2)
    assert r["interval"].n == SEEDS
    assert r["differences"][3] == pytest.approx(0.9 - 0.03 - JITTER[3] * 0, abs=0.01)


def test_wu_he_population_statistics_remove_a_test_time_artifact(tmp_path):
    # BN degrades with running statistics but not with population statistics: the degradation was the estimate
    acc = _wu_he_accuracies(bn2=0.90, pop2=0.97)
    ctx = _ctx(_summary(WU_HE.__file__, acc, tmp_path), tmp_path)
    WU_HE.section(ctx)
    pop = [f for f in ctx.findings if "population" in f.claim]
    assert len(pop) == 1 and pop[0].verdict == "inconclusive"
    assert WU_HE.interaction(ctx, "deep", 2)["verdict"] == "holds"


def test_wu_he_order_at_batch_32_needs_every_pair():
    holds = {"verdict": "holds"}
    assert WU_HE.combined_verdict([holds, holds, holds]) == "holds"
    assert WU_HE.combined_verdict([holds, None, holds]) == "inconclusive"
    assert WU_HE.combined_verdict([holds, {"verdict": "fails"}, holds]) == "fails"


def test_wu_he_grid_names_and_small_sample_design():
    _, points, seeds = sweep.plan(WU_HE.__file__, None, {})
    names = {p["name"] for p in points}
    assert seeds == WU_HE.SEEDS >= 5
    for arch, norms, sizes in WU_HE.GRID:
        for n in norms:
            for b in sizes:
                assert WU_HE.point(arch, n, b) in names
    for arch in WU_HE.ARCHS:  # the points every interaction needs
        for n in ("batch", "group"):
            assert {WU_HE.point(arch, n, 32), WU_HE.point(arch, n, 2)} <= names
    cfg = {p["name"]: p["config"] for p in points}
    deep = cfg[WU_HE.point("deep", "batch", 2)]
    length = 40
    pooled = []
    for s in deep.model_kwargs.strides:
        length = -(-length // s)  # SAME padding
        pooled.append(2 * length)
    assert tuple(pooled) == WU_HE.POOLED_AT_2["deep"] and max(pooled[-2:]) <= 10
    assert cfg[WU_HE.point("mlp", "batch", 2)].model == "mlp"
    # same epochs at every batch size, LR ∝ batch, BN evaluated with population statistics over fixed examples
    b32, b2 = cfg[WU_HE.point("cnn", "batch", 32)], cfg[WU_HE.point("cnn", "batch", 2)]
    assert b2.num_steps * 2 == b32.num_steps * 32 and b2.learning_rate * 32 == pytest.approx(b32.learning_rate * 2)
    assert b2.eval_population_stats and b2.population_batches * 2 == b32.population_batches * 32
    assert not cfg[WU_HE.point("cnn", "group", 2)].eval_population_stats
    assert b32.dataset == "mnist1d_10k"


def _ba_metrics(accs):
    def rows(name, seed):
        early, final = accs[name]
        return [
            {"step": 500, "split": "eval", "accuracy": early + JITTER[seed]},
            {"step": 2000, "split": "eval", "accuracy": final + JITTER[seed]},
        ]

    return rows


def test_ba_paired_comparisons_and_invariance_table(tmp_path):
    accs = {"none": (0.80, 0.95), "batch": (0.90, 0.98), "layer": (0.88, 0.97)}
    summary = _summary(BA.__file__, {k: (v[1], None) for k, v in accs.items()}, tmp_path, metrics=_ba_metrics(accs))
    ctx = _ctx(summary, tmp_path)
    assert BA.early_accuracy(ctx, "layer")[0] == pytest.approx(0.88)
    text = BA.section(ctx)
    assert text.count("**Verdict**") == 1 and "12/12" in text
    verdicts = [f.verdict for f in ctx.findings]
    assert verdicts == ["reproduced", "holds", "holds", "holds"], [(f.claim, f.ours) for f in ctx.findings]
    assert all(f.source.startswith("Ba et al. 2016, §") for f in ctx.findings)


def test_ba_bn_below_ln_fails_and_diverged_counts(tmp_path):
    accs = {"none": (0.80, 0.95), "batch": (0.90, 0.96), "layer": (0.88, 0.97)}
    summary = _summary(
        BA.__file__,
        {k: (v[1], None) for k, v in accs.items()},
        tmp_path,
        diverged={("none", 2)},
        metrics=_ba_metrics(accs),
    )
    ctx = _ctx(summary, tmp_path)
    BA.section(ctx)
    f = {x.claim.split(" (")[0]: x for x in ctx.findings}
    assert f["ConvNet: BN outperforms LN"].verdict == "fails"
    early_none = BA.early_accuracy(ctx, "none")
    assert early_none[2] == BA.CHANCE and len(early_none) == SEEDS


def test_wu_he_flatness_relative_to_bn_fails_when_gn_degrades_half_as_much(tmp_path):
    """In the deep CNN BN's error grows by 10 points and GN's by 5: GN's change is 0.5 of BN's, outside ±0.25."""
    acc = _wu_he_accuracies(bn32=0.97, bn2=0.87, gn32=0.96, gn2=0.91)
    ctx = _ctx(_summary(WU_HE.__file__, acc, tmp_path), tmp_path)
    WU_HE.section(ctx)
    (rel,) = [f for f in ctx.findings if f.claim.startswith("GN's error is flat relative to BN's: ")]
    assert rel.verdict == "fails" and rel.ours.startswith("+0.50 ["), rel.ours


def test_wu_he_equal_steps_control_separates_the_updates_from_the_batch_size(tmp_path):
    """GN at batch 2 is 3 points better than at batch 32 (−0.3 of BN's +10: not flat); GN at batch 32 trained batch
    2's number of steps reaches batch 2's error, so at equal steps GN is flat (0 of BN's change). Without the control's
    runs its row is inconclusive and the text says it has not run."""
    acc = _wu_he_accuracies(bn32=0.97, bn2=0.87, gn32=0.93, gn2=0.96, gn32_steps=0.96)
    ctx = _ctx(_summary(WU_HE.__file__, acc, tmp_path), tmp_path)
    text = WU_HE.section(ctx)
    f = {x.claim.split(":")[0]: x for x in ctx.findings}
    rel, eq = f["GN's error is flat relative to BN's"], f["GN's error is flat relative to BN's at equal steps"]
    assert rel.verdict == "fails" and rel.ours.startswith("-0.30 [")
    assert eq.verdict == "holds" and eq.ours.startswith("+0.00 [") and not eq.primary
    assert "the number of updates, not the batch size, accounts for its change" in text
    # GN₃₂ at equal steps no better than at equal epochs: the control agrees with the equal-epochs reading
    more = tmp_path / "more"
    more.mkdir()
    ctx = _ctx(_summary(WU_HE.__file__, _wu_he_accuracies(bn32=0.97, bn2=0.87, gn32=0.93, gn2=0.96), more), more)
    text = WU_HE.section(ctx)
    eq = [x for x in ctx.findings if x.claim.startswith("GN's error is flat relative to BN's at equal steps")][0]
    assert eq.verdict == "fails" and eq.ours.startswith("-0.30 [")
    assert "the control reads as the equal-epochs comparison does" in text
    # the control's point: batch 32, the LR of batch 32, 16× the steps of the batch-32 point
    _, points, _ = sweep.plan(WU_HE.__file__, None, {})
    cfg = {p["name"]: p["config"] for p in points}
    ctl, b32 = cfg[WU_HE.point_equal_steps(*WU_HE.EQUAL_STEPS)], cfg[WU_HE.point("deep", "group", 32)]
    b2 = cfg[WU_HE.point("deep", "group", 2)]
    assert (ctl.batch_size, ctl.learning_rate, ctl.norm) == (32, b32.learning_rate, "group")
    assert ctl.num_steps == b2.num_steps == 16 * b32.num_steps and ctl.model_kwargs.strides == b32.model_kwargs.strides
