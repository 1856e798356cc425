"""Value tests of zero-shot transfer: pomp_core/transfer/evaluate.py (prompt parsing, which
classifier each row uses, top-1 per prompt and dataset), pomp_core/transfer/report.py (averages,
Markdown, CSV, bar plot) and pomp_core/zero_shot.py (unit image features, skipped images,
top-1), each against a hand computation."""
import csv
import importlib
import logging
from pathlib import Path

import matplotlib.axes
import matplotlib.figure
import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from pomp_core.prompt import PromptLearner
from pomp_core.prompt_io import save_prompt
from pomp_core.transfer.datasets import ClassificationSet
from pomp_core.transfer.report import bar_plot, markdown_table, with_averages, write_csv, write_report
from pomp_core import zero_shot as zs
from pomp_core.zero_shot import encode_images, image_features, top1

ev = importlib.import_module("pomp_core.transfer.evaluate")  # the package exports its function evaluate

pytestmark = pytest.mark.usefixtures("global_rng_kept")  # tests/conftest.py


# ------------------------------------------------------------------ evaluate.py
def test_parse_prompt_table(tmp_path, monkeypatch):
    saved = save_prompt(PromptLearner(n_ctx=2, width=8), tmp_path / "mine.v2.pth")
    odd = save_prompt(PromptLearner(n_ctx=3, width=8), tmp_path / "a{}.pth")  # a file named like a template
    loads = []
    real = ev.load_prompt
    monkeypatch.setattr(ev, "load_prompt", lambda path, trusted=False: loads.append((path, trusted)) or real(path))
    table = [  # spec -> (label, source)
        ("hand", ("CLIP hand prompt", ev.HAND)),
        ("mine=hand", ("mine", ev.HAND)),
        ("ensemble", ("CLIP 80-template ensemble", ev.ENSEMBLE)),
        ("avg=ensemble", ("avg", ev.ENSEMBLE)),
        ("a {} photo", ('"a {} photo"', "a {} photo")),
        ("t=a {} photo", ("t", "a {} photo")),
        ("a {} with x=1", ('"a {} with x=1"', "a {} with x=1")),  # "=" after a brace: not a label
        ("t=a {} with x=1", ("t", "a {} with x=1")),  # the first "=" ends the label
    ]
    for spec, (label, source) in table:
        p = ev.parse_prompt(spec)
        assert (p.label, p.source) == (label, source), spec
    assert loads == []
    p = ev.parse_prompt(str(saved), trusted=True)
    assert p.label == "mine" and isinstance(p.source, PromptLearner) and p.source.n_ctx == 2
    p = ev.parse_prompt(f"row={saved}")
    assert p.label == "row" and p.source.n_ctx == 2
    p = ev.parse_prompt(str(odd))  # an existing file wins over a template reading
    assert p.label == "a{}" and isinstance(p.source, PromptLearner) and p.source.n_ctx == 3
    assert loads == [(str(saved), True), (str(saved), False), (str(odd), False)]
    with pytest.raises(FileNotFoundError, match=r"prompt 'nothing\.pth' is neither a prompt file, a template "
                                                r"with '\{\}', 'hand' nor 'ensemble'"):
        ev.parse_prompt("nothing.pth")
    with pytest.raises(FileNotFoundError, match="'missing'"):
        ev.parse_prompt("lbl=missing")


def test_prompt_spec_classifier_per_source():
    data = ClassificationSet("d", Path("."), [], ["a"], template="itap of a {}.")
    prompt = PromptLearner(n_ctx=1, width=8)
    assert ev.PromptSpec("x", ev.HAND).classifier(data) == "itap of a {}."
    assert ev.PromptSpec("x", ev.ENSEMBLE).classifier(data) is open_clip.OPENAI_IMAGENET_TEMPLATES
    assert ev.PromptSpec("x", "a {} b").classifier(data) == "a {} b"
    assert ev.PromptSpec("x", prompt).classifier(data) is prompt


def test_check_prompt_fits_compares_the_text_width(tiny_clip):
    model = tiny_clip[0]
    width = model.token_embedding.weight.shape[1]
    ev.check_prompt_fits(ev.PromptSpec("ok", PromptLearner(n_ctx=1, width=width)), model)
    ev.check_prompt_fits(ev.PromptSpec("template", "a {}"), model)
    with pytest.raises(ValueError, match=f"prompt 'bad' has width {width + 1} but the model's text tower has "
                                         f"width {width}: it was trained for another CLIP model"):
        ev.check_prompt_fits(ev.PromptSpec("bad", PromptLearner(n_ctx=1, width=width + 1)), model)


# features and labels of two datasets; class weights per classifier (see test below)
FEATS = {"a": (torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1], [0.0, 0.3, 0.7]]),
               torch.tensor([0, 1, 0, 2, 2])),
         "b": (torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.4, 0.6], [0.8, 0.2]]), torch.tensor([0, 0, 1, 0]))}


class FakeCache:
    def __init__(self):
        self.calls = []

    def features(self, model, transform, data):
        self.calls.append((model, transform, data.name))
        return FEATS[data.name]


def test_evaluate_top1_per_prompt_and_dataset(tiny_clip, monkeypatch, caplog):
    model = tiny_clip[0]
    tokenizer, transform = object(), object()
    sets = [ClassificationSet("a", Path("."), [], ["cat", "dog", "owl"], template="a pet: {}.", title="A"),
            ClassificationSet("b", Path("."), [], ["x", "x"], title="B")]
    calls = []

    def embeddings(m, tok, classifier, names, allow_duplicates=False):
        calls.append((m, tok, classifier, list(names), allow_duplicates))
        eye = torch.eye(len(names))
        # the dataset's hand template: identity; the ensemble: classes score the next feature
        return eye if classifier in ("a pet: {}.", "a photo of a {}.") else eye.roll(1, dims=1)

    monkeypatch.setattr(ev, "class_embeddings", embeddings)
    cache = FakeCache()
    prompts = [ev.PromptSpec("hand row", ev.HAND), ev.PromptSpec("ens", ev.ENSEMBLE)]
    with caplog.at_level(logging.INFO, logger=ev.__name__):
        results = ev.evaluate(model, tokenizer, transform, sets, prompts, cache)
    # A, hand (argmax of the features): predictions 0 1 2 0 2 vs labels 0 1 0 2 2 -> 3/5;
    # ensemble (class c scores feature c+1): predictions 2 0 1 2 1 -> 1/5.
    # B, hand: 0 1 1 0 vs 0 0 1 0 -> 3/4; ensemble: 1 0 0 1 -> 1/4
    assert results == {"hand row": {"A": pytest.approx(0.6), "B": pytest.approx(0.75)},
                       "ens": {"A": pytest.approx(0.2), "B": pytest.approx(0.25)}}
    assert list(results) == ["hand row", "ens"] and list(results["ens"]) == ["A", "B"]
    assert cache.calls == [(model, transform, "a"), (model, transform, "b")]  # features read once per dataset
    assert calls == [(model, tokenizer, "a pet: {}.", ["cat", "dog", "owl"], True),
                     (model, tokenizer, open_clip.OPENAI_IMAGENET_TEMPLATES, ["cat", "dog", "owl"], True),
                     (model, tokenizer, "a photo of a {}.", ["x", "x"], True),
                     (model, tokenizer, open_clip.OPENAI_IMAGENET_TEMPLATES, ["x", "x"], True)]
    assert caplog.messages == ["hand row on A: top-1 60.00%", "ens on A: top-1 20.00%",
                               "hand row on B: top-1 75.00%", "ens on B: top-1 25.00%"]


def test_evaluate_checks_every_prompt_before_reading_features(tiny_clip):
    cache = FakeCache()
    width = tiny_clip[0].token_embedding.weight.shape[1]
    prompts = [ev.PromptSpec("hand", ev.HAND), ev.PromptSpec("wide", PromptLearner(n_ctx=1, width=width * 2))]
    with pytest.raises(ValueError, match="prompt 'wide' has width"):
        ev.evaluate(tiny_clip[0], None, None, [ClassificationSet("a", Path("."), [], ["c"])], prompts, cache)
    assert cache.calls == []


# ------------------------------------------------------------------ report.py
GROUPS = {"cross-dataset": ["Caltech", "DTD", "EuroSAT"], "domain": ["V2", "Sketch"], "solo": ["Food"]}


def test_with_averages_by_hand():
    res = {"p": {"Caltech": 0.9, "DTD": 0.5, "EuroSAT": 0.3, "V2": 0.6, "Sketch": 0.2, "Food": 0.7, "Other": 0.1},
           "q": {"Caltech": 0.8, "Sketch": 0.4},  # two groups present, each with one dataset: no group average
           "r": {"Caltech": 0.8, "DTD": 0.4}}  # one group only: its average would repeat "Avg"
    out = with_averages(res, GROUPS)
    assert list(out["p"]) == ["Caltech", "DTD", "EuroSAT", "V2", "Sketch", "Food", "Other",
                              "Avg cross-dataset", "Avg domain", "Avg"]
    assert out["p"]["Avg cross-dataset"] == pytest.approx((0.9 + 0.5 + 0.3) / 3)
    assert out["p"]["Avg domain"] == pytest.approx((0.6 + 0.2) / 2)
    assert out["p"]["Avg"] == pytest.approx(3.3 / 7)
    assert out["q"] == pytest.approx({"Caltech": 0.8, "Sketch": 0.4, "Avg": 0.6})
    assert out["r"] == pytest.approx({"Caltech": 0.8, "DTD": 0.4, "Avg": 0.6})
    assert with_averages({"p": {"V2": 0.6, "Sketch": 0.2, "Food": 0.4}}, GROUPS)["p"] == pytest.approx(
        {"V2": 0.6, "Sketch": 0.2, "Food": 0.4, "Avg domain": 0.4, "Avg": 0.4})
    assert with_averages(res)["p"] == pytest.approx({**res["p"], "Avg": 3.3 / 7})
    assert res["q"] == {"Caltech": 0.8, "Sketch": 0.4}  # the input is left as it was


TABLE = {"POMP": {"ImageNet": 0.7034, "DTD": 0.4567}, "hand": {"ImageNet": 0.6251, "DTD": 0.4449}}


def test_markdown_table_and_csv_in_points(tmp_path):
    assert markdown_table(TABLE) == ("| prompt | ImageNet | DTD |\n|---|---|---|\n"
                                     "| POMP | 70.3 | 45.7 |\n| hand | 62.5 | 44.5 |\n")
    assert markdown_table(TABLE, corner="method").startswith("| method | ImageNet | DTD |\n")
    path = write_csv(TABLE, tmp_path / "t.csv", corner="method")
    assert path == tmp_path / "t.csv"
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [["method", "ImageNet", "DTD"], ["POMP", "70.34", "45.67"],
                                       ["hand", "62.51", "44.49"]]
    write_csv(TABLE, tmp_path / "d.csv")
    assert (tmp_path / "d.csv").read_text().splitlines()[0] == "prompt,ImageNet,DTD"


@pytest.fixture
def axes_calls(monkeypatch):
    """Records the bar plot's calls on its axes, drawing them as usual."""
    calls = []
    for name in ("bar", "set_xticks", "set_ylabel", "set_title"):
        real = getattr(matplotlib.axes.Axes, name)

        def spy(self, *args, _name=name, _real=real, **kwargs):
            calls.append((_name, args, kwargs))
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(matplotlib.axes.Axes, name, spy)
    return calls


@pytest.fixture
def figures(monkeypatch):
    """Bar labels and legend of each saved figure, read at savefig (bar_plot closes it after)."""
    saved = []
    real = matplotlib.figure.Figure.savefig

    def spy(fig, path, **kwargs):
        (ax,) = fig.axes
        legend = ax.get_legend().get_texts()
        saved.append({"labels": [t.get_text() for t in ax.texts], "label_size": {t.get_fontsize() for t in ax.texts},
                      "legend": [t.get_text() for t in legend], "legend_size": {t.get_fontsize() for t in legend},
                      "title": ax.get_title()})
        return real(fig, path, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    return saved


def test_bar_plot_bars_ticks_and_size(tmp_path, axes_calls, figures):
    table = {"r0": {"A": 0.1, "B": 0.2, "C": 0.3}, "r1": {"A": 0.4, "B": 0.5, "C": 0.6},
             "r2": {"A": 0.7, "B": 0.8, "C": 0.9}, "r3": {"A": 0.15, "B": 0.25, "C": 0.35}}
    path = bar_plot(table, tmp_path / "p.png", title="my title")
    assert path == tmp_path / "p.png"
    bars = [c for c in axes_calls if c[0] == "bar"]
    assert len(bars) == 4
    for k, (_, (x, h, width), kwargs) in enumerate(bars):  # four rows: bars 0.2 wide, row k shifted by 0.2 k
        assert width == pytest.approx(0.2) and kwargs["label"] == f"r{k}"
        assert x == pytest.approx([i + 0.2 * k for i in range(3)])
        assert h == pytest.approx([100 * v for v in table[f"r{k}"].values()])
    (_, (ticks, labels), kw), = [c for c in axes_calls if c[0] == "set_xticks"]
    assert ticks == pytest.approx([0.3, 1.3, 2.3]) and labels == ["A", "B", "C"]
    assert kw == {"rotation": 30, "ha": "right"}
    assert [c[1] for c in axes_calls if c[0] in ("set_ylabel", "set_title")] == [("top-1 (%)",), ("my title",)]
    # 110 dpi; width max(6, 0.9 x 3 columns x sqrt(4 rows) + 2) = 7.4 in, height 3.8 in
    assert Image.open(path).size == (814, 418)
    assert figures[0]["labels"][:4] == ["10.0", "20.0", "30.0", "40.0"] and figures[0]["label_size"] == {7}
    assert figures[0]["legend"] == ["r0", "r1", "r2", "r3"] and figures[0]["legend_size"] == {8}
    bar_plot({"r": {"A": 0.5, "B": 0.25}}, tmp_path / "q.png")
    assert Image.open(tmp_path / "q.png").size == (660, 418)  # 0.9 x 2 + 2 < 6 in
    three = {f"r{k}": {c: 0.5 for c in "ABC"} for k in range(3)}
    bar_plot(three, tmp_path / "r.png")  # 0.9 x 3 x sqrt(3) + 2 = 6.68 in
    assert Image.open(tmp_path / "r.png").size == (734, 418)
    bar_plot({"r": {c: 0.5 for c in "ABCDE"}}, tmp_path / "s.png")  # one row: 0.9 x 5 + 2 = 6.5 in
    assert Image.open(tmp_path / "s.png").size == (715, 418)
    assert [c[1] for c in axes_calls if c[0] == "set_title"][-1] == ("zero-shot top-1",)
    assert [c for c in axes_calls if c[0] == "bar"][-1][1][2] == pytest.approx(0.8)


def test_write_report_adds_the_averages_everywhere(tmp_path, figures):
    res = {"p": {"Caltech": 0.9, "DTD": 0.5, "V2": 0.6, "Sketch": 0.2}}
    paths = write_report(res, tmp_path / "new" / "dir", GROUPS, title="t")
    assert figures[0]["title"] == "t" and figures[0]["legend"] == ["p"]
    assert figures[0]["labels"] == ["90.0", "50.0", "60.0", "20.0", "70.0", "40.0", "55.0"]  # averages plotted
    out = tmp_path / "new" / "dir"
    assert paths == {"md": out / "results.md", "csv": out / "results.csv", "png": out / "results.png"}
    assert (out / "results.md").read_text().splitlines()[0] == \
        "| prompt | Caltech | DTD | V2 | Sketch | Avg cross-dataset | Avg domain | Avg |"
    assert (out / "results.md").read_text().splitlines()[2] == "| p | 90.0 | 50.0 | 60.0 | 20.0 | 70.0 | 40.0 | 55.0 |"
    with open(out / "results.csv", newline="") as f:
        assert list(csv.reader(f))[1] == ["p", "90.00", "50.00", "60.00", "20.00", "70.00", "40.00", "55.00"]
    assert (out / "results.png").stat().st_size > 0
    write_report(res, out)  # no groups: "Avg" only, the folder may exist
    assert figures[1]["title"] == "zero-shot top-1"
    assert (out / "results.md").read_text().splitlines()[0] == "| prompt | Caltech | DTD | V2 | Sketch | Avg |"


# ------------------------------------------------------------------ zero_shot.py
class ColourEncoder(nn.Module):
    """encode_image = mean colour [B, 3] @ M [3, 4], recording the input dtypes and batch sizes."""

    def __init__(self, dtype=torch.float64):
        super().__init__()
        self.m = nn.Parameter(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 3.0, -1.0], [2.0, 0.0, -1.0, 1.0]],
                                           dtype=dtype))
        self.seen = []

    def encode_image(self, x):
        self.seen.append((x.dtype, x.shape[0], x.dim()))
        return x.mean(dim=(2, 3)) @ self.m


COLOURS = [(255, 0, 0), (10, 200, 30), (0, 0, 255), (90, 90, 250), (40, 160, 60)]


def to_tensor(im):
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255).permute(2, 0, 1)


@pytest.fixture
def images(tmp_path):
    for k, c in enumerate(COLOURS):
        if k != 2:  # image 2 is missing
            Image.new("RGB", (3, 2), c).save(tmp_path / f"{k}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    return tmp_path


def test_encode_images_unit_features_in_item_order_without_the_unreadable(images, caplog):
    model = ColourEncoder()
    items = [(f"{k}.png", 10 + k) for k in range(5)] + [("bad.png", 99)]
    with caplog.at_level(logging.WARNING, logger="pomp_core.zero_shot"):
        feats, index = encode_images(model, images, items, to_tensor, batch_size=2)
    assert index.tolist() == [0, 1, 3, 4]
    m = model.m.detach()
    expected = F.normalize(torch.tensor([COLOURS[k] for k in (0, 1, 3, 4)], dtype=torch.float64) / 255 @ m, dim=-1)
    assert feats.dtype == torch.float32 and torch.allclose(feats, expected.float(), atol=1e-6)
    assert torch.allclose(feats.norm(dim=1), torch.ones(4))
    # batches of two items (the first pair, then 3 and 4, then the bad one alone and skipped) in the model's dtype
    assert model.seen == [(torch.float64, 2, 4), (torch.float64, 1, 4), (torch.float64, 1, 4)]
    assert f"skipped 2 unreadable or missing images under {images}" in caplog.text
    feats2, labels = image_features(model, images, items, to_tensor, batch_size=3)
    assert torch.allclose(feats2, feats) and labels.tolist() == [10, 11, 13, 14]


def test_image_features_passes_its_loader_settings(images, monkeypatch):
    calls = []
    real = zs.encode_images
    monkeypatch.setattr(zs, "encode_images", lambda *a: calls.append(a[4:]) or real(*a))
    items = [("0.png", 3), ("1.png", 4)]
    _, labels = zs.image_features(ColourEncoder(), images, items, to_tensor)
    zs.image_features(ColourEncoder(), images, items, to_tensor, batch_size=1, workers=2)
    assert labels.tolist() == [3, 4] and calls == [(128, 0), (1, 2)]


def test_encode_images_without_a_readable_image_raises(images):
    with pytest.raises(RuntimeError, match=f"none of the 2 images under {images} could be read"):
        encode_images(ColourEncoder(), images, [("2.png", 0), ("bad.png", 1)], to_tensor)


def test_top1_counts_the_argmax_over_classes_not_over_images():
    # 3 images x 2-D features, 4 classes: the argmax runs over the classes of each image
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    weights = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [-1.0, 0.0]])
    # scores: [1, 0, .8, -1] -> 0; [0, 1, .6, 0] -> 1; [.6, .8, .96, -.6] -> 2
    assert top1(feats, torch.tensor([0, 1, 2]), weights) == pytest.approx(1.0)
    assert top1(feats, torch.tensor([0, 0, 1]), weights) == pytest.approx(1 / 3)
    assert top1(feats, torch.tensor([3, 3, 3]), weights) == 0.0
