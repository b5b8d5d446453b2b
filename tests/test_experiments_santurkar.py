"""The Santurkar et al. analysis (experiments/santurkar.py) on hand-made runs with known answers: the grid names it
reads, the time windows, the paired ratios, and the verdicts of its claims."""

import json
import math
import os

import numpy as np

from jaxnorm import stats
from jaxnorm.lab import report, sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH = os.path.join(ROOT, "experiments", "santurkar.py")
S = sweep.load_experiment(PATH)


def test_every_point_the_analysis_reads_is_in_the_grid():
    _, points, _ = sweep.plan(PATH, 1)
    names = {p["name"] for p in points}
    wanted = {S.vgg(n, lr) for lr in S.LRS for n in S.vgg_norms(lr)} | {S.vgg(S.LP_NORM, S.LRS[0])}
    assert S.vgg("noisy_batch_norm", S.LRS[0]) in wanted and S.vgg("batch", S.LRS[1]) in wanted
    wanted |= {S.dln(n) for n in S.DLN_NORMS}
    assert wanted == names
    by_name = {p["name"]: p["config"] for p in points}
    assert all(by_name[S.vgg(n, lr)].probes.every > 0 for lr in S.LRS for n in S.vgg_norms(lr))  # probes at both LRs
    assert by_name[S.vgg(S.LP_NORM, S.LRS[0])].model_kwargs.p == S.LP_P
    dln = by_name[S.dln("batch")]
    assert (dln.model, dln.batch_size, dln.model_kwargs.width) == ("deep_linear", 1000, None)
    assert dln.probes.kinds == ("ics",)
    from jaxnorm.lab.models import DeepLinear

    d = S.dln_config()  # the DLN points take configs/dln.py's setting; its 25×10 is DeepLinear's default
    assert (d.model_kwargs.depth, d.model_kwargs.width) == (DeepLinear.depth, DeepLinear.width)
    assert all(dln[k] == d[k] for k in S.DLN_KEYS if "." not in k) and dln.probes.every == d.probes.every
    assert S._dln_overrides(S.get_config(), "none")["num_steps"] == d.num_steps
    _, smoke, _ = sweep.plan(PATH, 1, {"size": "smoke"})
    assert {p["name"] for p in smoke} <= names and all(p["config"].num_steps <= 4 for p in smoke)


def test_windows_early_and_last_third():
    w = S.windows(300)
    assert [s for s in range(0, 300, 50) if w["early"][0](s)] == [0, 50, 100]
    assert [s for s in range(0, 300, 50) if w["late"][0](s)] == [200, 250]


def test_paired_ratio_is_the_geometric_mean_with_a_log_t_interval():
    a, b = {0: 1.0, 1: 2.0, 2: 1.0}, {0: 10.0, 1: 40.0, 2: 20.0}
    r = S.paired_ratio(a, b)
    logs = np.log([10.0, 20.0, 20.0])
    want = stats.mean_ci(logs)
    assert math.isclose(r["interval"].estimate, want.estimate) and math.isclose(r["interval"].low, want.low)
    assert S.ratio_text(r).startswith(f"{math.exp(logs.mean()):.3g}×")
    assert r["verdict"] == "holds"
    assert S.paired_ratio({0: 1.0}, {0: 2.0}) is None  # one seed: no interval
    assert S.paired_ratio(a, b, criterion=lambda iv: iv.low > math.log(1e3))["verdict"] == "inconclusive"


def test_noninferiority_verdicts():
    mk = lambda lo, hi: {"interval": stats.Interval(0.5 * (lo + hi), lo, hi, 5, 0.95, "t")}  # noqa: E731
    assert S.noninferiority(mk(-0.005, 0.01), 0.01) == "holds"
    assert S.noninferiority(mk(-0.03, -0.02), 0.01) == "fails"
    assert S.noninferiority(mk(-0.03, 0.01), 0.01) == "inconclusive"
    assert S.noninferiority(None, 0.01) == "inconclusive"


def _write_run(workdir, seed, *, beta, cos, acc, rng, steps=300, every=50, train_loss=0.3):
    os.makedirs(workdir, exist_ok=True)
    rows = []
    for t in range(0, steps, every):
        b = beta * math.exp(0.1 * rng.normal())
        row = {
            "step": t,
            "split": "probe",
            "santurkar/beta_smoothness": b,
            "santurkar/grad_norm": 1.0,
            "santurkar/grad_change_min": 0.1 * b,
            "santurkar/grad_change_max": b,
            "santurkar/loss_min": 0.1,
            "santurkar/loss_max": 0.1 + b,
        }
        for layer in S.ICS_LAYERS:
            row.update(
                {
                    f"ics/cos/{layer}": cos + 0.005 * rng.normal(),
                    f"ics/l2/{layer}": 1 - cos,
                    f"ics/grad_norm/{layer}": 1.0,
                }
            )
        rows.append(row)
        rows.append({"step": t + every, "split": "train", "loss": train_loss * math.exp(0.05 * rng.normal())})
        rows.append({"step": t + every, "split": "eval", "accuracy": acc + 0.002 * rng.normal(), "loss": 0.1})
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write("\n".join(json.dumps(r) for r in rows) + "\n")
    return rows[-1]["accuracy"]


def test_section_on_hand_made_runs_gives_the_expected_verdicts(tmp_path):
    rng = np.random.default_rng(0)
    # standard: β 10× BN's, cos 0.9 (BN: 0.97, i.e. BN *reduces* ICS); noisy BN 2 points below BN; at LR 0.5 the
    # standard network diverges in 4 of 5 seeds
    arms = {"none": (10.0, 0.90, 0.95), "batch": (1.0, 0.97, 0.98), "noisy_batch_norm": (1.5, 0.95, 0.96)}
    losses = {"none": 0.4, "batch": 0.1, "noisy_batch_norm": 0.1}  # training loss: noisy BN 4× below standard
    runs = []
    for lr in S.LRS:
        for norm, (beta, cos, acc) in arms.items():
            if norm not in S.vgg_norms(lr):
                continue
            for seed in range(5):
                wd = str(tmp_path / S.vgg(norm, lr) / f"seed{seed}")
                diverged = lr == S.LRS[1] and norm == "none" and seed < 4
                a = _write_run(wd, seed, beta=beta, cos=cos, acc=acc, rng=rng, train_loss=losses[norm])
                row = {
                    "point": S.vgg(norm, lr),
                    "overrides": {"norm": norm, "learning_rate": lr},
                    "seed": seed,
                    "workdir": wd,
                    "wall_s": 1.0,
                    "commit": "x",
                }
                row.update({"status": "diverged"} if diverged else {"status": "finished", "test_accuracy": a})
                runs.append(row)
    summary = {
        "runs": runs,
        "points": sweep.aggregate(runs),
        "config_file": PATH,
        "size": "small",
        "seeds": 5,
        "total_wall_s": 60.0,
        "command": "x",
        "commit": "x",
    }
    ctx = report.Context("santurkar", summary, str(tmp_path / "fig"), str(tmp_path), paper=S.PAPER_NAME)
    os.makedirs(ctx.figures_dir)
    # the analysis alone returns numbers: no claim recorded, no figure drawn
    data = S.analyze(ctx)
    assert not ctx.findings and not os.listdir(ctx.figures_dir)
    beta_ratio = data["ratios"]["beta", S.LRS[0], "early", "batch"]["interval"]  # log(standard/BN) ≈ log 10
    assert abs(beta_ratio.estimate - math.log(10.0)) < 0.1 and beta_ratio.n == 5
    text = S.section(ctx)
    assert text.count("**Verdict**") == 1
    found = {f.claim: f for f in ctx.findings}
    beta = found["BN lowers the effective β-smoothness"]
    assert beta.verdict == "holds" and beta.ours.startswith("standard/BN 1") and "×" in beta.ours
    assert found["BN makes the gradient more predictive (‖Δg‖/‖g‖ lower)"].verdict == "holds"
    assert (beta.primary, beta.paper_effect) == ("P1", "direction only") and beta.p_value < 1e-3
    # the band ratio is ~10×: in the paper's direction, but its CI lies below the paper's 100×
    band = next(f for c, f in found.items() if c.startswith("gradient-change gap"))
    assert (band.verdict, band.primary, band.paper_effect) == (stats.MAGNITUDE_NOT_REPRODUCED, "P2", "100×")
    assert band.p_value < 1e-3  # against zero: the family's test (Holm), on the log-ratio scale
    est, lo, hi, unit, paper = band.forest  # the forest plot's row: the ratio itself, and the paper's 100×
    assert unit == "×" and paper == 100.0 and lo < est < hi and 5 < est < 20 and beta.forest[4] is None
    lr05 = found["BN keeps training at the larger LR 0.5 (more runs train than without BN)"]
    # 5/5 BN runs train, 1/5 standard ones (4 diverged): Fisher's one-sided p = C(6,5)·C(4,0)/C(10,5) = 6/252
    assert lr05.verdict == "holds" and "BN 5/5, standard 1/5; Fisher's exact p = 0.0238" in lr05.ours
    assert found["BN does not reduce ICS (VGG, LR 0.1, early)"].verdict == "fails"  # BN's cosine is higher here
    assert next(f for c, f in found.items() if c.startswith("noisy BN trains as well")).verdict == "fails"
    noisy_train = found["noisy BN trains better than the standard network (training loss lower)"]
    assert noisy_train.verdict == "holds" and abs(noisy_train.forest[0] - 4.0) < 0.4
    assert "1/5" in text  # the standard network's success rate at LR 0.5
    for f in ctx.findings:
        assert f.verdict in report.VERDICT_ORDER


def test_dln_point_trains_and_its_wide_grid_probe_reads_its_checkpoints(tmp_path):
    """The DLN points are not in the smoke grid (no test accuracy): a 4-step run of the point at smoke size, then the
    analysis's [0.01, 30]·LR probe on its checkpoints."""
    from jaxnorm.lab.train import config as config_lib

    base = config_lib.resolve_size(S.get_config(), ())
    base.size = "smoke"
    over = S._dln_overrides(base, "batch")
    cfg = sweep._apply(
        S.get_config(), {**{k: v for k, v in over.items() if k != "name"}, "parallel": "none", "progress": False}
    )
    result = sweep.run_one(cfg, str(tmp_path / "dln"), sorted(set(over) - {"name"}))
    assert result["status"] == "finished", result.get("message")
    rows = S.dln_posthoc(str(tmp_path / "dln"))
    assert [r["step"] for r in rows][0] == 0 and len(rows) >= 2
    assert all(math.isfinite(r["santurkar/beta_smoothness"]) for r in rows)
    ics = [r for r in S.metrics_rows(str(tmp_path / "dln")) if r.get("split") == "probe"]
    assert ics and all(f"ics/cos/{layer}" in ics[0] for layer in S.DLN_ICS_LAYERS)
