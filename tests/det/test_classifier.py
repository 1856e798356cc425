"""pomp_det building blocks: the zero-shot classifier, federated loss, max-size loss,
embedding sources and the LVIS norare split."""
import json

import pytest
import torch
import torch.nn.functional as F

from tests.frameworks import require

require("detectron2")
from detectron2.layers import ShapeSpec  # noqa: E402
from detectron2.modeling.box_regression import Box2BoxTransform  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

import pomp_core  # noqa: E402
from pomp_det.data.lvis_norare import make_norare_json  # noqa: E402
from pomp_det.embeddings import cached_class_embeddings, load_embedding_file  # noqa: E402
from pomp_det.fast_rcnn import PompFastRCNNOutputLayers, federated_classes  # noqa: E402
from pomp_det.zero_shot_classifier import ZeroShotClassifier  # noqa: E402


def predictor(emb, **kw):
    return PompFastRCNNOutputLayers(ShapeSpec(channels=6), box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
                                    class_embeddings=emb, cls_agnostic_bbox_reg=True, **kw)


def test_classifier_logits_match_hand_computation():
    torch.manual_seed(0)
    emb = torch.randn(3, 4)
    clf = ZeroShotClassifier(5, emb, temperature=50.0)
    x = torch.randn(2, 5)
    z = x @ clf.linear.weight.t() + clf.linear.bias
    expected = torch.zeros(2, 4)
    for i in range(2):
        for c in range(3):
            expected[i, c] = 50.0 * float(z[i] @ emb[c]) / (z[i].norm() * emb[c].norm())
    logits = clf(x)
    assert logits.shape == (2, 4)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-4)
    assert torch.all(logits[:, -1] == 0)  # background column
    assert not clf.embeddings.requires_grad and "embeddings" not in clf.state_dict()


def test_classifier_bias_and_per_call_vocabulary():
    clf = ZeroShotClassifier(5, torch.randn(3, 4), use_bias=True, bias_init=-2.0)
    x = torch.randn(2, 5)
    no_bias = ZeroShotClassifier(5, clf.embeddings)
    no_bias.linear.load_state_dict(clf.linear.state_dict())
    torch.testing.assert_close(clf(x)[:, :3], no_bias(x)[:, :3] - 2.0)
    assert clf(x, embeddings=torch.randn(7, 4)).shape == (2, 8)
    with pytest.raises(ValueError, match="D=4"):
        clf.set_embeddings(torch.randn(3, 8))


def test_federated_classes_keep_present_and_sample_by_weight():
    torch.manual_seed(0)
    weight = torch.tensor([1.0, 0.0, 4.0, 9.0, 0.0, 1.0])
    gt = torch.tensor([1, 1, 4, 6, 6])  # 6 = background
    counts = torch.zeros(6)
    for _ in range(400):
        used = federated_classes(gt, 4, weight)  # 1, 4 and the background (Detic counts it) + 1 drawn
        assert {1, 4} <= set(used.tolist()) and len(used) == 3 and 6 not in used.tolist()
        counts[used] += 1
    # the one extra class comes from {0, 2, 3, 5} with probability ~ weight (sum 15)
    assert counts[3] > counts[2] > counts[0] and counts[1] == counts[4] == 400
    assert len(federated_classes(gt, 50, weight)) == 6  # all classes with a non-zero weight
    assert set(federated_classes(torch.tensor([6]), 1, torch.zeros(6)).tolist()) == set()


def test_sigmoid_federated_loss_only_counts_selected_classes():
    torch.manual_seed(0)
    p = predictor(torch.randn(4, 3), use_fed_loss=True, fed_loss_num_classes=1,
                  fed_loss_weight=torch.tensor([0.0, 1.0, 0.0, 0.0]))
    logits = torch.randn(2, 5, requires_grad=True)
    p.sigmoid_cross_entropy(logits, torch.tensor([2, 4])).backward()
    touched = (logits.grad.abs() > 0).any(0).tolist()
    assert touched == [False, False, True, False, False]  # only the present class; fed budget 1
    p.fed_loss_num_classes = 3  # room for one sampled class (2 + background): class 1 (the only weight > 0)
    logits.grad = None
    p.sigmoid_cross_entropy(logits, torch.tensor([2, 4])).backward()
    assert (logits.grad.abs() > 0).any(0).tolist() == [False, True, True, False, False]


def test_max_size_loss_uses_the_largest_proposal_but_the_last():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 30, 20], [5, 5, 20, 20], [0, 0, 90, 90.0]])
    p = predictor(torch.randn(5, 3), use_fed_loss=False, image_label_weight=0.1)
    props = Instances((100, 100), proposal_boxes=Boxes(boxes))
    scores = torch.randn(4, 6, requires_grad=True)
    loss = p.image_label_losses((scores, None), [props], [[2, 4]])
    loss.backward()
    # box 3 is the largest, but Detic's max-size rule never picks the last proposal
    assert (scores.grad.abs().sum(1) > 0).tolist() == [False, True, False, False]
    per_label = [F.binary_cross_entropy_with_logits(scores[1].detach(), F.one_hot(torch.tensor(c), 6).float(),
                                                    reduction="sum") for c in (2, 4)]
    torch.testing.assert_close(loss, 0.1 * sum(per_label) / 2)


def test_test_scores_are_geometric_mean_with_objectness():
    p = predictor(torch.randn(3, 3), use_fed_loss=False)
    props = Instances((50, 50), proposal_boxes=Boxes(torch.tensor([[0, 0, 5, 5.0]])),
                      objectness_logits=torch.tensor([0.3]))
    scores = torch.tensor([[1.0, -2.0, 0.5, 0.0]])
    probs = p.predict_probs((scores, None), [props])[0]
    torch.testing.assert_close(probs, (scores.sigmoid() * torch.sigmoid(torch.tensor(0.3))).sqrt())


def test_embedding_sources(tmp_path, tiny_clip, monkeypatch):
    with pytest.raises(FileNotFoundError, match="export_embeddings"):
        load_embedding_file(tmp_path / "none.npy")
    model, tokenizer, _ = tiny_clip
    monkeypatch.setattr(pomp_core, "load_clip", lambda *a, **k: (model, tokenizer, None))
    emb = cached_class_embeddings(["cat", "dog"], "pomp-tiny", "", prompt_words="a photo of a", cache_dir=str(tmp_path))
    assert emb.shape == (2, 48) and len(list(tmp_path.glob("*.npy"))) == 1
    monkeypatch.setattr(pomp_core, "load_clip", lambda *a, **k: pytest.fail("the cache was not used"))
    again = cached_class_embeddings(["cat", "dog"], "pomp-tiny", "", prompt_words="a photo of a", cache_dir=str(tmp_path))
    assert torch.equal(again, emb)  # the first build returns what the cache holds
    # a prompt for another CLIP (width 512) on the tiny one (width 64)
    prompt = pomp_core.PromptLearner(n_ctx=4, width=512)
    pomp_core.save_prompt(prompt, tmp_path / "p512.pt")
    monkeypatch.setattr(pomp_core, "load_clip", lambda *a, **k: (model, tokenizer, None))
    with pytest.raises(ValueError, match="width"):
        cached_class_embeddings(["cat"], "pomp-tiny", "", prompt=str(tmp_path / "p512.pt"), cache_dir=None)


def test_encoding_leaves_the_random_state_so_first_and_cached_builds_agree(tmp_path):
    """Building CLIP (random weights here, then a checkpoint's) draws from torch's generator:
    the encoding must not, or a detector's first build initialises its later modules otherwise."""
    torch.manual_seed(5)
    expected = torch.rand(4)
    torch.manual_seed(5)
    emb = cached_class_embeddings(["cat", "dog", "red fox"], "pomp-tiny", "", prompt_words="a photo of a",
                            cache_dir=str(tmp_path))
    assert torch.equal(torch.rand(4), expected)
    assert emb.dtype == torch.float32 and emb.shape == (3, 48)


def test_norare_split_drops_rare_annotations_keeps_images(tmp_path):
    src = tmp_path / "lvis_v1_train.json"
    src.write_text(json.dumps({
        "images": [{"id": 1}, {"id": 2}],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}, {"id": 2, "name": "b", "frequency": "r"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1}, {"id": 2, "image_id": 2, "category_id": 2}]}))
    out = make_norare_json(src)
    data = json.loads(out.read_text())
    assert out.name == "lvis_v1_train_norare.json" and len(data["images"]) == 2
    assert [a["category_id"] for a in data["annotations"]] == [1] and len(data["categories"]) == 2
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="lvis_v1_train.json"):
        make_norare_json(tmp_path / "missing.json", tmp_path / "x.json")


def test_lvis_json_without_coco_url_names_the_field(tmp_path):
    from detectron2.data import DatasetCatalog

    from pomp_det.data.lvis import register_lvis_json

    src = tmp_path / "mine.json"
    src.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "train/1.png", "height": 8, "width": 8}],
        "categories": [{"id": 1, "name": "a", "frequency": "f"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 4, 4], "area": 16}]}))
    register_lvis_json("mine_no_url", src, tmp_path)
    with pytest.raises(ValueError, match="coco_url"):
        DatasetCatalog.get("mine_no_url")
    DatasetCatalog.remove("mine_no_url")
