"""Figures follow their data (issue 26, item 6): a smoke run at chance accuracy is drawn, not lost above a y axis fixed
at 0.5–1; accuracies stay within [0, 1] and cosines within [-1, 1]. The limits are read back from the Axes."""

import numpy as np
import pytest

from jaxnorm.lab import plots


@pytest.fixture
def ylims(monkeypatch):
    """The y limits of every axes of each figure saved, in order (read before the figure is closed)."""
    seen = []
    save = plots._save

    def spy(fig, path):
        seen.append([ax.get_ylim() for ax in fig.axes if ax.get_label() != "<colorbar>"])
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def _runs(values_per_seed):
    """[rows of each seed]: eval rows with ``accuracy`` = the given values at steps 0, 2, 4, ..."""
    return [
        [{"split": "eval", "step": 2 * i, "accuracy": float(a)} for i, a in enumerate(values)]
        for values in values_per_seed
    ]


def _band(values_per_seed):
    v = np.asarray(values_per_seed, float)
    return (v.mean(0) - v.std(0)).min(), (v.mean(0) + v.std(0)).max()


def test_accuracy_at_chance_is_inside_the_axes_even_under_ylim_half_to_one(tmp_path, ylims):
    seeds = [[0.09, 0.11, 0.10], [0.10, 0.12, 0.08]]  # a smoke run: 10 classes at chance
    made = plots.plot_mean_curves(
        [("test accuracy", {"no norm": _runs(seeds), "layer norm": _runs([[0.1, 0.1, 0.13], [0.1, 0.11, 0.1]])})],
        str(tmp_path / "acc.png"),
        ylim=(0.5, 1.0),  # as experiments/ba.py asks
    )
    assert made and (tmp_path / "acc.png").exists()
    ((low, high),) = ylims[0]
    assert low <= 0.08 and high >= 0.13  # every band inside
    assert low >= 0.0  # an accuracy: not below 0
    assert high < 0.5  # follows the data: neither 0.5–1 nor a fixed 0–1


def test_high_accuracy_is_zoomed_and_capped_at_one(tmp_path, ylims):
    seeds = [[0.90, 0.97, 0.99], [0.92, 0.96, 1.0], [0.91, 0.98, 0.97]]
    plots.plot_mean_curves([("test accuracy", {"bn": _runs(seeds)})], str(tmp_path / "a.png"), ylim=(0.0, 1.0))
    ((low, high),) = ylims[0]
    lo, _ = _band(seeds)
    assert low <= lo and low > 0.5  # not the fixed 0–1 range
    assert high == pytest.approx(1.0)  # the band above 1 (mean + std) is cut at 1; the data reaches it


def test_reference_lines_stay_in_view(tmp_path, ylims):
    plots.plot_mean_curves(
        [("test accuracy", {"bn": _runs([[0.10, 0.11], [0.11, 0.12]])})],
        str(tmp_path / "a.png"),
        hlines={"target": 0.9},
        ylim=(0.0, 1.0),
    )
    ((low, high),) = ylims[0]
    assert low <= 0.10 and 0.9 <= high <= 1.0


def test_unbounded_quantity_follows_its_data(tmp_path, ylims):
    rows = [[{"split": "train", "step": s, "embedding_norm_sq": 100.0 + s} for s in range(5)]]
    plots.plot_mean_curves([("h", {"a": rows})], str(tmp_path / "h.png"), key="embedding_norm_sq", split="train")
    ((low, high),) = ylims[0]
    assert 95.0 < low <= 100.0 and 104.0 <= high < 110.0


def test_ics_cosines_follow_the_data_within_minus_one_one(tmp_path, ylims):
    rows = [
        {"split": "probe", "step": s, "ics/l2/layer_0": 0.1 + s, "ics/cos/layer_0": 0.990 + 0.002 * s} for s in range(5)
    ]
    plots.plot_ics({"run": rows}, str(tmp_path / "ics.png"))
    (_, _), (low, high) = ylims[0]  # the cosine panel, below the l2 panel
    assert low <= 0.990 and high >= 0.998 and high <= 1.05
    assert low > 0.9  # not the fixed [-1.05, 1.05]


def test_data_ylim_margins_stay_within_bounds_but_data_never_hidden():
    assert plots.data_ylim([0.6, 0.9], bounds=(0.5, 1.0)) == pytest.approx((0.585, 0.915))
    assert plots.data_ylim([0.0, 0.2], bounds=(0.0, 1.0)) == pytest.approx((0.0, 0.21))  # the margin stops at 0
    assert plots.data_ylim([0.1, 0.2], bounds=(0.5, 1.0)) == pytest.approx((0.095, 0.205))  # data below the bound
    assert plots.data_ylim([0.98, 1.02], hard=(0.0, 1.0)) == pytest.approx((0.978, 1.0))
    low, high = plots.data_ylim([0.1, 0.1, np.nan])  # flat: a small window around it
    assert low < 0.1 < high and high - low < 0.05
    assert plots.data_ylim([np.nan]) is None and plots.data_ylim([]) is None


@pytest.fixture
def drawn(monkeypatch):
    """Per figure saved, per axes: the y data of its lines and the y range of each band (fill_between)."""
    seen = []
    save = plots._save

    def spy(fig, path):
        seen.append(
            [
                (
                    [np.asarray(line.get_ydata(), float) for line in ax.lines],
                    [(p.vertices[:, 1].min(), p.vertices[:, 1].max()) for c in ax.collections for p in c.get_paths()],
                    ax.get_ylim(),
                )
                for ax in fig.axes
            ]
        )
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    return seen


def test_log_axis_bands_are_geometric_and_per_panel_lines_stay_on_their_panel(tmp_path, drawn):
    # three seeds of a quantity spread over two decades: mean − std is below zero, which a log axis cannot show
    per_seed = [1.0, 1.0, 100.0]
    rows = [[{"split": "probe", "step": s, "beta": v * (1 + s)} for s in range(3)] for v in per_seed]
    panels = [("LR 0.1", {"bn": rows}, {"2/η": 20.0}), ("LR 0.5", {"bn": rows}, {"2/η": 4.0})]
    plots.plot_mean_curves(panels, str(tmp_path / "b.png"), key="beta", split="probe", yscale="log")
    logs = np.log(per_seed)
    centre, spread = np.exp(logs.mean()), np.exp(logs.std())
    (lines0, bands0, (low, high)), (lines1, _, _) = drawn[0]
    np.testing.assert_allclose(lines0[0], centre * np.arange(1, 4), rtol=1e-12)  # the geometric mean, not 34
    band_lo, band_hi = bands0[0]
    assert band_lo == pytest.approx(centre / spread, rel=1e-9) and band_hi == pytest.approx(3 * centre * spread)
    assert 0 < low < centre / spread and high > 20.0  # the band and the panel's 2/η line in view, a positive axis
    assert [y[0] for y in lines0[1:]] == [20.0] and [y[0] for y in lines1[1:]] == [4.0]  # each panel its own line


def test_long_titles_stay_inside_the_figure(tmp_path, monkeypatch):
    outside = []
    save = plots._save

    def spy(fig, path):
        fig.tight_layout()  # as _save lays it out before writing it
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        box = fig.bbox
        for ax in fig.axes:
            t = ax.title.get_window_extent(renderer)
            if t.x0 < box.x0 - 0.5 or t.x1 > box.x1 + 0.5 or t.y1 > box.y1 + 0.5:
                outside.append(ax.get_title())
        return save(fig, path)

    monkeypatch.setattr(plots, "_save", spy)
    long = "deep strided 1-D CNN (5 BN layers): test error vs batch size (mean ± std over seeds)"  # Wu & He's
    plots.plot_lines(
        {"BN": ([2, 8, 32], [9.0, 8.0, 7.5], [1.0, 0.5, 0.4])},
        str(tmp_path / "l.png"),
        xlabel="b",
        ylabel="e",
        title=long,
        logx=True,
    )
    plots.plot_mean_curves([(long, {"bn": _runs([[0.5, 0.6]])})], str(tmp_path / "m.png"))
    assert not outside, outside
