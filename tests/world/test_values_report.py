"""Value tests of the main job's report (pomp_world/report.py) and of its margins
(pomp_world.main_job.seed_margin / _summary, pomp_world.tasks.classification.paired_margin):
hand-computed tables, CSV, margin lines and figure bars on asymmetric numbers."""
import csv
import math
import statistics

import matplotlib.axes
import matplotlib.figure
import numpy as np
import pytest
import torch

from matplotlib.container import BarContainer
from PIL import Image

from pomp_world import report
from pomp_world.main_job import Settings, _summary, seed_margin
from pomp_world.report import HAND, POMP, POMP_NC, margin_lines, table_rows, write_results
from pomp_world.tasks.classification import paired_margin

pytestmark = pytest.mark.usefixtures("global_rng_kept")  # tests/conftest.py


SEG_METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU")
# per seed (1 and 3): POMP - hand differs in sign and size between the seeds and the metrics
DET = {HAND: {1: {"AP": 20.0, "APr": 5.0}, 3: {"AP": 22.0, "APr": 9.0}},
       POMP: {1: {"AP": 23.5, "APr": 6.0}, 3: {"AP": 22.5, "APr": 12.8}}}
SEG = {HAND: {1: {"mIoU_seen": 40.0, "mIoU_unseen": 10.0, "hIoU": 16.0},
              3: {"mIoU_seen": 42.0, "mIoU_unseen": 14.0, "hIoU": 21.0}},
       POMP: {1: {"mIoU_seen": 41.0, "mIoU_unseen": 15.0, "hIoU": 22.0},
              3: {"mIoU_seen": 45.0, "mIoU_unseen": 13.0, "hIoU": 20.0}}}
CLS = {"top1": {HAND: {"unseen": 0.25, "seen": 0.5}, POMP: {"unseen": 0.3134, "seen": 0.5452},
                POMP_NC: {"unseen": 0.2289, "seen": 0.5117}},
       # SE 4.94 and -6.41 points: a scale of 101 instead of 100 would print 5.0 and -6.5
       "margin": {POMP: {"unseen": (0.0634, 0.0494), "seen": (0.0452, 0.0088)},
                  POMP_NC: {"unseen": (-0.0641, 0.0101), "seen": (0.0117, 0.0093)}},
       "images": {"unseen": 4321, "seen": 987}, "classes": {"unseen": 1234, "seen": 56}}
COLS = ["cls unseen top-1 (1,234-way)", "cls seen top-1 (56-way)", "det AP", "det APr (novel)",
        "seg mIoU seen", "seg mIoU unseen", "seg hIoU"]


def results(det=DET, seg=SEG):
    out = {"cls": CLS}
    if det is not None:
        out["det"] = _summary(det, ("AP", "APr"))
    if seg is not None:
        out["seg"] = _summary(seg, SEG_METRICS)
    return out


def test_seed_margin_is_the_mean_difference_and_its_sd_over_root_n():
    # three seeds: diffs 2, 4, 9 -> mean 5, sample SD sqrt(((-3)^2 + (-1)^2 + 4^2) / 2) = sqrt(13)
    mean, se = seed_margin([3.0, 5.0, 10.0], [1.0, 1.0, 1.0])
    assert mean == pytest.approx(5.0) and se == pytest.approx(math.sqrt(13) / math.sqrt(3))
    # the order of the arguments is POMP minus hand
    assert seed_margin([1.0, 1.0, 1.0], [3.0, 5.0, 10.0])[0] == pytest.approx(-5.0)
    assert seed_margin([7.5], [2.0]) == (5.5, 0.0)  # one seed: no spread measured


def test_paired_margin_by_hand_over_images():
    pomp = torch.tensor([1, 1, 0, 1, 0, 0, 1, 1], dtype=torch.bool)
    hand = torch.tensor([0, 1, 0, 0, 1, 0, 0, 1], dtype=torch.bool)
    diff = np.array([1, 0, 0, 1, -1, 0, 1, 0], dtype=float)
    mean, se = paired_margin(pomp, hand)
    assert mean == pytest.approx(diff.mean()) == pytest.approx(2 / 8)
    assert se == pytest.approx(diff.std(ddof=1) / math.sqrt(8))
    assert paired_margin(hand, pomp)[0] == pytest.approx(-2 / 8)


def test_summary_means_and_margins_per_metric():
    s = _summary(DET, ("AP", "APr"))
    assert s["seeds"] == [1, 3] and s["per_seed"] is DET
    assert s["mean"][HAND] == pytest.approx({"AP": 21.0, "APr": 7.0})
    assert s["mean"][POMP] == pytest.approx({"AP": 23.0, "APr": 9.4})
    # diffs AP +3.5, +0.5; APr +1.0, +3.8: with two seeds SE = |d1 - d2| / 2
    assert s["margin"]["AP"] == pytest.approx((2.0, 1.5))
    assert s["margin"]["APr"] == pytest.approx((2.4, 1.4))


def test_table_rows_in_points_with_the_no_correction_row_classification_only():
    cols, rows = table_rows(results())
    assert cols == COLS
    assert list(rows) == [HAND, POMP, POMP_NC]
    assert rows[HAND] == pytest.approx(dict(zip(COLS, [25.0, 50.0, 21.0, 7.0, 41.0, 12.0, 18.5])))
    assert rows[POMP] == pytest.approx(dict(zip(COLS, [31.34, 54.52, 23.0, 9.4, 43.0, 14.0, 21.0])))
    assert rows[POMP_NC] == pytest.approx(dict(zip(COLS[:2], [22.89, 51.17])))
    # one task alone: its columns only, the two prompt rows
    cols, rows = table_rows({"det": _summary(DET, ("AP", "APr"))})
    assert cols == ["det AP", "det APr (novel)"] and list(rows) == [HAND, POMP]
    assert rows[POMP] == pytest.approx({"det AP": 23.0, "det APr (novel)": 9.4})


MARGINS = [
    "- classification, unseen: POMP - hand-crafted +6.3 points (paired standard error 4.9 over 4,321 images; "
    "no local correction: -6.4)",
    "- classification, seen: POMP - hand-crafted +4.5 points (paired standard error 0.9 over 987 images; "
    "no local correction: +1.2)",
    "- detection, AP: POMP - hand-crafted +2.0 points (standard error 1.5 over 2 training seeds; per seed +3.5, +0.5)",
    "- detection, APr: POMP - hand-crafted +2.4 points (standard error 1.4 over 2 training seeds; per seed +1.0, +3.8)",
    "- segmentation, mIoU_seen: POMP - hand-crafted +2.0 points (standard error 1.0 over 2 training seeds; "
    "per seed +1.0, +3.0)",
    "- segmentation, mIoU_unseen: POMP - hand-crafted +2.0 points (standard error 3.0 over 2 training seeds; "
    "per seed +5.0, -1.0)",
    "- segmentation, hIoU: POMP - hand-crafted +2.5 points (standard error 3.5 over 2 training seeds; "
    "per seed +6.0, -1.0)",
]


def test_margin_lines_by_hand():
    assert margin_lines(results(), (1, 3)) == MARGINS
    # the per-seed differences follow the seeds' order as given
    assert margin_lines({"det": _summary(DET, ("AP", "APr"))}, (3, 1))[0].endswith("per seed +0.5, +3.5)")


def test_one_seed_says_its_spread_is_not_measured():
    det = {row: {2: v[1]} for row, v in DET.items()}
    lines = margin_lines({"det": _summary(det, ("AP", "APr"))}, (2,))
    assert lines == [
        "- detection, AP: POMP - hand-crafted +3.5 points (one training seed: its spread over seeds is not "
        "measured here, see docs/world.md; per seed +3.5)",
        "- detection, APr: POMP - hand-crafted +1.0 points (one training seed: its spread over seeds is not "
        "measured here, see docs/world.md; per seed +1.0)"]


@pytest.fixture
def bars(monkeypatch):
    """Records each bar call (x, heights, yerr, label) and tick call, drawing them as usual."""
    calls = {"bar": [], "ticks": []}
    bar, ticks = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.set_xticks

    def spy_bar(self, x, height, width=0.8, *args, **kwargs):
        calls["bar"].append((list(x), list(height), width, kwargs.get("yerr"), kwargs.get("label")))
        return bar(self, x, height, width, *args, **kwargs)

    def spy_ticks(self, ticks_, labels=None, **kwargs):
        calls["ticks"].append((list(ticks_), list(labels)))
        return ticks(self, ticks_, labels, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", spy_bar)
    monkeypatch.setattr(matplotlib.axes.Axes, "set_xticks", spy_ticks)
    return calls


@pytest.fixture
def figures(monkeypatch):
    """What each saved figure shows, read at savefig (the report closes the figure after)."""
    saved = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, path, **kwargs):
        axes = []
        for ax in fig.axes:
            ticks = ax.get_xticklabels()
            caps = [line.get_markersize() for c in ax.containers if isinstance(c, BarContainer) and c.errorbar
                    for line in c.errorbar.lines[1]]
            legend = ax.get_legend()
            axes.append({"title": ax.get_title(), "ylabel": ax.get_ylabel(),
                         "ticks": {(t.get_rotation(), t.get_ha(), t.get_fontsize()) for t in ticks},
                         "labels": [t.get_text() for t in ax.texts], "label_size": {t.get_fontsize() for t in ax.texts},
                         "caps": set(caps),
                         "legend": legend and ([t.get_text() for t in legend.get_texts()],
                                               {t.get_fontsize() for t in legend.get_texts()})})
        sup = fig._suptitle
        saved.append({"dpi": kwargs.get("dpi"), "axes": axes, "suptitle": (sup.get_text(), sup.get_fontsize())})
        return real(fig, path, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return saved


def test_results_figure_panels_labels_and_size(tmp_path, figures):
    write_results(results(), tmp_path, Settings(seeds=(1, 3)))
    (fig,) = figures
    assert fig["dpi"] == 110 and Image.open(tmp_path / "results.png").size == (1386, 418)  # 3 x 4.2 in, 3.8 in
    assert fig["suptitle"] == ("Synthetic world, tiny CLIP: one prompt, three tasks (hand-crafted vs POMP)", 10)
    assert [a["title"] for a in fig["axes"]] == ["classification", "detection", "segmentation"]
    assert {a["ylabel"] for a in fig["axes"]} == {"points"}
    assert all(a["ticks"] == {(20.0, "right", 8)} and a["label_size"] == {7} for a in fig["axes"])
    assert fig["axes"][0]["labels"] == ["25.0", "50.0", "31.3", "54.5"]
    assert fig["axes"][2]["labels"] == ["41.0", "12.0", "18.5", "43.0", "14.0", "21.0"]
    # error bars (two seeds) on detection and segmentation, caps 3 points wide each side
    assert [a["caps"] for a in fig["axes"]] == [set(), {6.0}, {6.0}]
    assert fig["axes"][0]["legend"] == ([HAND, POMP], {8}) and fig["axes"][1]["legend"] is None
    write_results({"seg": _summary(SEG, SEG_METRICS)}, tmp_path, Settings(seeds=(1, 3)))
    assert len(figures[1]["axes"]) == 1 and Image.open(tmp_path / "results.png").size == (462, 418)


def test_segmentation_alone_gets_the_training_note(tmp_path):
    write_results({"seg": _summary(SEG, SEG_METRICS)}, tmp_path, Settings(seeds=(1, 3), det_iters=5, seg_iters=6))
    text = (tmp_path / "results.md").read_text()
    assert "Hand-crafted prompt: segmentation stage (a) started from \"a photo of a\" (ZSSeg's initialisation)." in text
    assert "Detection and segmentation: mean over training seeds 1, 3 (the same seeds for both prompts; " \
           "detector 5 iterations, ZSSeg stage (b) 6)" in text


def test_write_results_markdown_csv_and_figure(tmp_path, bars):
    md = write_results(results(), tmp_path, Settings(seeds=(1, 3), det_iters=123, seg_iters=456))
    assert md == tmp_path / "results.md"
    assert md.read_text().splitlines() == [
        "| prompt | " + " | ".join(COLS) + " |",
        "|---|---|---|---|---|---|---|---|",
        "| hand-crafted | 25.0 | 50.0 | 21.0 | 7.0 | 41.0 | 12.0 | 18.5 |",
        "| POMP | 31.3 | 54.5 | 23.0 | 9.4 | 43.0 | 14.0 | 21.0 |",
        "| POMP, no local correction | 22.9 | 51.2 | - | - | - | - | - |",
        "",
        'Hand-crafted prompt: classification "a photo of a {}."; detection Detic\'s "a {}"; segmentation '
        'stage (a) started from "a photo of a" (ZSSeg\'s initialisation). POMP: the prompt pre-trained on the '
        "seen classes, unchanged in every task.",
        "Detection and segmentation: mean over training seeds 1, 3 (the same seeds for both prompts; detector "
        "123 iterations, ZSSeg stage (b) 456); box AP on the val scenes; both with the full vocabulary.",
        "",
        "POMP's margin over the hand-crafted prompt:",
        *MARGINS]
    with open(tmp_path / "results.csv", newline="") as f:
        assert list(csv.reader(f)) == [
            ["prompt"] + COLS,
            ["hand-crafted", "25.00", "50.00", "21.00", "7.00", "41.00", "12.00", "18.50"],
            ["POMP", "31.34", "54.52", "23.00", "9.40", "43.00", "14.00", "21.00"],
            ["POMP, no local correction", "22.89", "51.17", "", "", "", "", ""]]
    assert (tmp_path / "results.png").stat().st_size > 0
    # one panel per task: hand-crafted bars at i, POMP at i + 0.4; error bars = SD over the seeds
    sd = statistics.stdev
    expected = [
        ([0, 1], [25.0, 50.0], None, HAND), ([0.4, 1.4], [31.34, 54.52], None, POMP),
        ([0, 1], [21.0, 7.0], [sd([20, 22]), sd([5, 9])], HAND),
        ([0.4, 1.4], [23.0, 9.4], [sd([23.5, 22.5]), sd([6, 12.8])], POMP),
        ([0, 1, 2], [41.0, 12.0, 18.5], [sd([40, 42]), sd([10, 14]), sd([16, 21])], HAND),
        ([0.4, 1.4, 2.4], [43.0, 14.0, 21.0], [sd([41, 45]), sd([15, 13]), sd([22, 20])], POMP)]
    assert len(bars["bar"]) == len(expected)
    for (x, h, width, err, label), (ex, eh, eerr, elabel) in zip(bars["bar"], expected):
        assert x == pytest.approx(ex) and h == pytest.approx(eh) and width == 0.4 and label == elabel
        assert err is None if eerr is None else err == pytest.approx(eerr)
    assert bars["ticks"] == [
        (pytest.approx([0.2, 1.2]), ["unseen top-1 (1,234-way)", "seen top-1 (56-way)"]),
        (pytest.approx([0.2, 1.2]), ["AP", "APr (novel)"]),
        (pytest.approx([0.2, 1.2, 2.2]), ["mIoU seen", "mIoU unseen", "hIoU"])]


def test_write_results_classification_only_and_one_seed(tmp_path, bars):
    md = write_results({"cls": CLS}, tmp_path, Settings(seeds=(1,)))
    text = md.read_text()
    assert 'Hand-crafted prompt: classification "a photo of a {}.". POMP:' in text
    assert "Detection and segmentation" not in text and "detection" not in text
    assert len(bars["bar"]) == 2
    # one training seed: no error bars on the detection panel
    det = {row: {2: v[1]} for row, v in DET.items()}
    write_results({"det": _summary(det, ("AP", "APr"))}, tmp_path, Settings(seeds=(2,), det_iters=7, seg_iters=8))
    assert [(b[1], b[3]) for b in bars["bar"][2:]] == [([20.0, 5.0], None), ([23.5, 6.0], None)]
    text = (tmp_path / "results.md").read_text()
    assert "Hand-crafted prompt: detection Detic's \"a {}\". POMP:" in text
    assert "mean over training seeds 2 (the same seeds for both prompts; detector 7 iterations, ZSSeg stage (b) 8)" in text
    assert report.DET_COLS == {"AP": "det AP", "APr": "det APr (novel)"}
