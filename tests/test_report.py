"""The results report on a tiny experiment (issue 26, item 6): without ``--out`` it writes inside its workdir and
leaves the tracked ``docs/results.md`` and ``docs/figures`` byte-identical; ``--out`` puts the figures beside the
chosen file; a smoke-size report says so at its top and gives no verdicts, but shows the numbers."""

import hashlib
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from jaxnorm.lab import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPERIMENT = """
from jaxnorm.lab import plots
from jaxnorm.lab import report as R
from jaxnorm.lab.train.config import base_config

TITLE = "1. Tiny et al. (2024): a larger step"
ORDER = 1
PAPER_NAME = "Tiny et al. 2024"
SEEDS = 2


def get_config():
    c = base_config()
    c.dataset, c.model, c.norm, c.dropout = "digits", "mlp", "none", "none"
    c.optimizer, c.schedule, c.learning_rate, c.weight_decay = "sgd", "constant", 0.1, 0.0
    c.batch_size, c.num_steps, c.eval_every, c.log_every, c.checkpoint_every = 32, 20, 10, 5, 20
    c.parallel, c.progress = "none", False
    c.model_kwargs.hidden = (16,)
    c.sizes.smoke = dict(num_steps=2, eval_every=1, log_every=1, checkpoint_every=2)
    return c


def get_sweep(config):
    return [{"name": "slow", "learning_rate": 0.01}, {"name": "fast", "learning_rate": 0.5}]


def section(ctx):
    r = R.safe_compare(ctx, "slow", "fast", direction="greater")
    v = ctx.claim("a larger step learns faster", "Table 1", "digits MLP", R.compared(r) if r else "—", R.verdict_of(r))
    ctx.claim("an exact check", "§5", "no training", "12/12 entries agree", "reproduced")  # a verdict of its own
    fig = plots.plot_mean_curves(
        [("test accuracy", {p: ctx.metrics(p) for p in ("slow", "fast")})], ctx.path("accuracy"), ylim=(0.5, 1.0)
    )
    pairs = R.table(["paired difference", "mean [95% CI]", "verdict"], [["fast − slow", R.compared(r), R.verdict_of(r)]])
    return "\\n\\n".join([pairs, ctx.figure(fig), f"**Verdict**: fast − slow {R.compared(r)} ({v})."])
"""

VERDICT_WORDS = re.compile(r"\b(holds|fails|inconclusive|reproduced)\b")


def _hashes(directory) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` (the tracked results and figures)."""
    out = {}
    for dirpath, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return out


def _tracked(root) -> dict[str, str]:
    return {
        "results.md": _hashes(os.path.join(root, "docs")).get("results.md"),
        **{f"figures/{k}": v for k, v in _hashes(os.path.join(root, "docs", "figures")).items()},
    }


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory):
    """The report's main run with no --out, at size smoke, from a copy of the repository's docs/ as the current
    directory (the old default, docs/results.md, resolved there); the hashes of both docs/ before and after."""
    repo = tmp_path_factory.mktemp("repo")
    shutil.copytree(os.path.join(ROOT, "docs"), repo / "docs", ignore=shutil.ignore_patterns("_build"))
    experiments = repo / "my_experiments"
    experiments.mkdir()
    (experiments / "tiny.py").write_text(EXPERIMENT)
    before = {"copy": _tracked(repo), "repository": _tracked(ROOT)}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)
        code = report.main(["--experiments", "my_experiments", "--size", "smoke", "--seeds", "2"])
    after = {"copy": _tracked(repo), "repository": _tracked(ROOT)}
    return {"repo": repo, "code": code, "before": before, "after": after}


def test_default_out_is_inside_the_workdir_and_docs_are_untouched(smoke_report):
    repo = smoke_report["repo"]
    assert smoke_report["code"] == 0
    assert smoke_report["before"]["copy"]["results.md"] is not None and len(smoke_report["before"]["copy"]) > 1
    assert smoke_report["after"] == smoke_report["before"]  # docs/results.md and every docs/figures file, byte for byte
    out = repo / "runs" / "results" / "results.md"
    assert out.exists()
    assert (repo / "runs" / "results" / "figures" / "tiny_accuracy.png").exists()  # figures beside the report
    text = out.read_text()
    assert "](figures/tiny_accuracy.png)" in text
    assert "--out runs/results/results.md" in text  # the command it records is the one that reproduces it


def test_explicit_out_writes_there_with_figures_beside_it(smoke_report, tmp_path):
    repo = smoke_report["repo"]
    out = tmp_path / "elsewhere" / "report.md"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(repo)  # the finished runs of the fixture are reused (skipped), nothing trains again
        code = report.main(["--experiments", "my_experiments", "--size", "smoke", "--seeds", "2", "--out", str(out)])
    assert code == 0 and out.exists()
    assert (tmp_path / "elsewhere" / "figures" / "tiny_accuracy.png").exists()
    assert _tracked(repo) == smoke_report["before"]["copy"]


def _claim_rows(text: str) -> list[str]:
    claims = text.split("## Claims", 1)[1].split("\n## ", 1)[0]
    return [line for line in claims.splitlines() if line.startswith("| ") and not line.startswith("| # |")]


def test_smoke_report_says_so_and_gives_no_verdicts_but_the_numbers(smoke_report):
    text = (smoke_report["repo"] / "runs" / "results" / "results.md").read_text()
    head = text.split("## Claims", 1)[0]
    assert "Smoke check" in head and "no verdicts" in head  # at the top, before the claims
    rows = _claim_rows(text)
    assert len(rows) == 2
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[-1] for c in cells] == [f"**{report.NO_VERDICT}**"] * 2
    # the numbers are still there: the interval, the exact check's count
    assert re.search(r"\[[^\]]+\] pts \(n = 2\)", cells[0][-2]) and cells[1][-2] == "12/12 entries agree"
    assert not any(VERDICT_WORDS.search(row) for row in rows), rows
    assert not VERDICT_WORDS.search(text), text  # no verdict word anywhere, nor their definitions
    section = text.split("## 1. Tiny", 1)[1]
    assert not VERDICT_WORDS.search(section), section  # nor in the section's tables and verdict line
    assert section.count(report.NO_VERDICT) == 2  # the pairs table and the verdict line


def test_the_command_gives_no_verdicts_either(smoke_report, tmp_path):
    """``python -m jaxnorm.lab.report``: the module runs as ``__main__`` while the experiment files import
    ``jaxnorm.lab.report``; the verdicts of the sections' tables (``verdict_of``) are withheld all the same."""
    repo = smoke_report["repo"]
    out = tmp_path / "cli.md"
    args = ["--experiments", "my_experiments", "--size", "smoke", "--seeds", "2", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    r = subprocess.run(
        [sys.executable, "-m", "jaxnorm.lab.report", *args],
        capture_output=True,
        text=True,
        cwd=repo,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    section = out.read_text().split("## 1. Tiny", 1)[1]
    assert not VERDICT_WORDS.search(section) and section.count(report.NO_VERDICT) == 2, section
    assert _tracked(repo) == smoke_report["before"]["copy"]


def test_the_same_runs_at_size_small_get_verdicts(smoke_report, tmp_path, monkeypatch):
    """What the smoke report withholds is there otherwise: the same summary labelled ``small`` gives a verdict."""
    import json

    repo = smoke_report["repo"]
    monkeypatch.chdir(repo)  # the summary names its runs relative to where the report ran
    summary = json.loads((repo / "runs" / "results" / "tiny" / "summary.json").read_text())
    assert summary["size"] == "smoke"
    modules = report.discover(str(repo / "my_experiments"))
    out = tmp_path / "r.md"
    report.write_report({"tiny": {**summary, "size": "small"}}, str(out), "cmd", modules)
    text = out.read_text()
    rows = _claim_rows(text)
    assert report.NO_VERDICT not in text and "Smoke check" not in text
    verdicts = [row.rstrip(" |").split("| ")[-1].strip("* ") for row in rows]
    assert verdicts[0] in ("holds", "fails", "inconclusive") and verdicts[1] == "reproduced", rows


def _finding(primary="", p=None, verdict="holds", claim="c"):
    return report.Finding("Paper", claim, "§1", "ours", "+1 [+0.5, +1.5]", verdict, "+2", primary, p)


REG = {"P1": "A", "P2": "B", "P3": "C"}


def test_holm_over_the_primary_claims_downgrades_what_does_not_survive_it():
    findings = [
        _finding(claim="exploratory, p irrelevant"),
        _finding("P2", 0.04),
        _finding("P1", 0.01),
        _finding("P3", 0.03, verdict="fails"),
    ]
    out = report.apply_holm(findings, REG)
    by = {f.primary: f for f in out}
    # Holm over (0.04, 0.01, 0.03): adjusted 0.06, 0.03, 0.06 (stats.holm's own example, reordered)
    assert by["P1"].holm_p == pytest.approx(0.03) and by["P1"].verdict == "holds"
    assert by["P2"].holm_p == pytest.approx(0.06) and by["P2"].verdict == "inconclusive"  # holds alone, not after Holm
    assert by["P3"].verdict == "fails"  # Holm never turns a failure into anything else
    assert by[""].verdict == "holds" and by[""].holm_p is None  # exploratory: outside the family
    table = report.claims_table(out)
    rows = [line for line in table.splitlines()[2:]]
    assert [r.split("|")[1].strip() for r in rows] == ["P1", "P2", "P3", "exploratory"]
    assert "| paper's number |" in table.splitlines()[0] and "| +2 |" in rows[0]
    assert "Holm p = 0.03" in rows[0] and "Holm p" not in rows[3]
    with pytest.raises(ValueError, match=r"\['P9'\] are not in"):
        report.apply_holm([_finding("P9", 0.01)], REG)
    with pytest.raises(ValueError, match=r"\['P1'\] are recorded more than once"):
        report.apply_holm([_finding("P1", 0.01), _finding("P1", 0.02)], REG)


def test_a_primary_claim_needs_its_p_value(tmp_path):
    ctx = report.Context("x", {"points": [], "runs": []}, str(tmp_path), str(tmp_path))
    with pytest.raises(ValueError, match="primary claim P1 needs its p-value"):
        ctx.claim("c", "§1", "s", "o", "holds", primary="P1")
    assert ctx.claim("c", "§1", "s", "o", "holds", primary="P1", p_value=0.2, paper_effect="2.3×") == "**holds**"
    assert ctx.findings[0].paper_effect == "2.3×" and ctx.findings[0].p_value == 0.2


def test_the_registration_is_read_and_cited_with_its_commit():
    registered = report.registered_claims()
    assert list(registered) == [f"P{k}" for k in range(1, 8)] and registered["P7"] == "Ba et al. 2016"
    _, head = report._git("rev-parse", "--short", "HEAD")
    _, reg = report._git("log", "-1", "--format=%h", "--", report.REGISTRATION)
    note = report.registration_note([head])
    assert f"at commit `{reg}`" in note and "Every run here was made at a commit that contains" in note
    note = report.registration_note([head, "unknown"])
    assert "Not every run was made at a commit that contains the registration" in note


def test_each_experiment_declares_the_seed_count_its_registered_claims_need():
    rows = {}
    with open(os.path.join(ROOT, report.REGISTRATION)) as f:
        for line in f:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 7 and re.fullmatch(r"P\d+", cells[0]):
                rows.setdefault(cells[1], []).append(int(cells[6]))
    modules = {m.PAPER_NAME: m for m in report.discover(os.path.join(ROOT, "experiments")).values()}
    assert set(rows) <= set(modules) and len(rows) == 6, (sorted(rows), sorted(modules))
    for paper, seeds in rows.items():
        assert modules[paper].SEEDS == max(seeds), (paper, modules[paper].SEEDS, seeds)


def test_the_forest_plot_draws_each_interval_and_the_papers_number(tmp_path, monkeypatch):
    from jaxnorm.lab import plots

    seen = []
    save = plots._save

    def spy(fig, path):
        seen.append([([np.asarray(line.get_xdata(), float) for line in ax.lines], ax.get_xscale()) for ax in fig.axes])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    findings = [
        report.Finding("A", "ratio", "§1", "s", "o", "holds", forest=(9.5, 7.2, 12.6, "×", 100.0), primary="P2"),
        report.Finding("B", "points", "§2", "s", "o", "fails", forest=(-1.0, -2.0, -0.5, "pts", 2.9)),
        report.Finding("C", "no interval", "§3", "s", "o", "inconclusive"),
    ]
    made = report.forest_figure(findings, str(tmp_path / "f.png"))
    assert made and (tmp_path / "f.png").exists()
    (ratio_lines, ratio_scale), (point_lines, point_scale) = seen[0]
    assert (ratio_scale, point_scale) == ("log", "linear")
    # per claim: its bar [low, high], its estimate, the paper's diamond; then the no-effect line (1 for ratios, 0)
    assert [list(x) for x in ratio_lines[:3]] == [[7.2, 12.6], [9.5], [100.0]] and list(ratio_lines[3]) == [1.0, 1.0]
    assert [list(x) for x in point_lines[:3]] == [[-2.0, -0.5], [-1.0], [2.9]] and list(point_lines[3]) == [0.0, 0.0]
    assert report.forest_figure(findings[2:], str(tmp_path / "g.png")) is None  # nothing to draw


def test_a_primary_claim_counts_only_when_the_discovery_seeds_agree(tmp_path, capsys):
    confirm = [_finding("P1", 0.001), _finding("P2", 0.001), _finding(claim="exploratory")]
    discovered = [_finding("P1", 0.01), _finding("P2", 0.2, verdict="inconclusive")]
    out = report.with_discovery(report.apply_holm(confirm, REG), report.apply_holm(discovered, REG))
    by = {f.primary: f for f in out}
    assert (by["P1"].discovery, by["P1"].verdict) == ("holds", "holds")
    assert (by["P2"].discovery, by["P2"].verdict) == ("inconclusive", "inconclusive")  # holds here, not there
    assert by[""].discovery is None and by[""].verdict == "holds"
    header, _, *rows = report.claims_table(out).splitlines()
    assert "| on the discovery seeds | verdict |" in header
    assert rows[1].endswith("| inconclusive | **inconclusive** |") and rows[2].endswith("| — | **holds** |")
    # the CLI refuses seed sets that overlap before anything runs
    code = report.main(
        [
            "--only",
            "ba",
            "--size",
            "smoke",
            "--workdir",
            str(tmp_path / "w"),
            "--discovery-workdir",
            str(tmp_path / "d"),
            "--first-seed",
            "3",
        ]
    )
    assert code == 1 and not (tmp_path / "w").exists() and not (tmp_path / "d").exists()
    err = capsys.readouterr().err  # Ba registers 40 seeds: seeds 3 … 39 would be in both sets
    assert "37 confirmation seeds (3 … 39) are also discovery seeds (0 … 39); give --first-seed 40" in err, err


def test_rank_and_count_verdicts_for_skewed_and_all_or_nothing_outcomes():
    a = {s: 1.0 for s in range(8)}
    lower = {s: 1.0 - 0.1 * (s + 1) ** 2 for s in range(8)}  # skewed drops: every seed lower
    v, res = report.signed_rank_verdict(a, lower, "less")
    assert v == "holds" and res["p"] == pytest.approx(1 / 2**8)  # all 8 signs negative: the exact p is 2⁻⁸
    assert report.signed_rank_verdict(a, lower, "greater")[0] == "fails"
    mixed = {s: 1.0 + (0.1 if s % 2 else -0.1) * (s + 1) for s in range(8)}
    assert report.signed_rank_verdict(a, mixed, "less")[0] == "inconclusive"
    assert report.signed_rank_verdict(a, a, "less") == ("inconclusive", None)  # no non-zero difference
    v, p = report.fisher_verdict(1, 5, 5, 5)  # b: 5/5 vs a: 1/5
    assert v == "holds" and p == pytest.approx(6 / 252)
    assert report.fisher_verdict(5, 5, 1, 5)[0] == "fails" and report.fisher_verdict(3, 5, 3, 5)[0] == "inconclusive"


def test_the_holm_family_uses_the_two_sided_p_the_95_percent_intervals_imply():
    from scipy import stats as scipy_stats

    from jaxnorm import stats

    r = stats.compare({0: 1.0, 1: 2.0, 2: 3.0, 3: 2.5}, {0: 1.4, 1: 2.1, 2: 3.6, 3: 2.6}, direction="greater")
    two = scipy_stats.ttest_1samp([0.4, 0.1, 0.6, 0.1], 0.0).pvalue
    assert report.p_of(r) == pytest.approx(two) and r["p"] == pytest.approx(two / 2)  # compare's own p: one-sided
    assert report.p_of(None) == 1.0
    # the count and rank verdicts test each side at 2.5%: 10/10 against 6/10 is one-sided p = 0.043, not enough
    v, p = report.fisher_verdict(6, 10, 10, 10)
    assert v == "inconclusive" and p == pytest.approx(8008 / 184756)
