"""ZSSeg's recipe in the VOC / COCO-Stuff configs: learning-rate schedules, the trainaug set,
empty proposals, input normalisation, the query MLP, the separate region prompt, stage (a)'s
crops and the cross-dataset settings; and the configs built and run on generated data in
the real layouts with the real class lists."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.frameworks import require

require("mmseg.models")
from mmengine.config import Config  # noqa: E402
from mmengine.optim import build_optim_wrapper  # noqa: E402
from mmengine.registry import PARAM_SCHEDULERS, init_default_scope  # noqa: E402
from mmseg.registry import DATASETS, MODELS  # noqa: E402

import pomp_seg  # noqa: E402
from pomp_seg.clip import CLIP_MEAN, CLIP_STD  # noqa: E402
from pomp_seg.crop_classifier import CLIPCropClassifier  # noqa: E402
from tests.seg.seg_fixtures import SEG_CONFIGS, TINY_MODEL, make_coco_stuff, make_voc, override_config  # noqa: E402

from tests.tool_scripts import load_tool  # noqa: E402

test_seg = load_tool("test_seg")
train_seg = load_tool("train_seg")

VOC_CFG = SEG_CONFIGS / "zsseg-r101c_voc12aug-512x512.py"
COCO_CFG = SEG_CONFIGS / "zsseg-r101c_coco-stuff164k-640x640.py"
IMAGENET = ([123.675, 116.28, 103.53], [58.395, 57.12, 57.375])


@pytest.fixture(autouse=True)
def mmseg_scope():
    init_default_scope("mmseg")


def _lrs(cfg: Config, iters: int) -> np.ndarray:
    """[iters, groups] lr of each param group at each iteration of ``cfg``'s optimiser and
    schedule (shortened to ``iters``), on a model with a backbone and a head."""
    model = torch.nn.Module()
    model.backbone, model.decode_head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    *warmup, main = cfg.param_scheduler  # the main schedule is shortened to ``iters``
    main = dict(main, end=iters, **({"T_max": iters} if "T_max" in main else {}))
    schedulers = [PARAM_SCHEDULERS.build(s, default_args=dict(optimizer=wrapper)) for s in [*warmup, main]]
    out = []
    for _ in range(iters):
        out.append([g["lr"] for g in wrapper.optimizer.param_groups])
        for s in schedulers:
            s.step()
    return np.array(out)


@pytest.mark.parametrize("config", [VOC_CFG, COCO_CFG])
def test_stage_b_lr_decays_polynomially_to_zero_for_head_and_backbone(config):
    cfg = Config.fromfile(str(config))
    assert cfg.param_scheduler[-1].end == cfg.train_cfg.max_iters  # the decay spans the whole run
    lrs = _lrs(cfg, 50)
    t = np.arange(50)
    expected = 1e-4 * (1 - t / 49) ** 0.9  # mmengine reaches eta_min at the last iteration
    backbone, head = lrs[:, 0], lrs[:, -1]  # groups in named_parameters() order
    assert np.allclose(head, expected, rtol=1e-6)
    assert np.allclose(backbone, 0.1 * expected, rtol=1e-6)  # x0.1 all along: never rises
    assert head[-1] < 0.03 * head[0]


def test_stage_a_lr_is_zssegs_constant_warmup_then_cosine():
    cfg = Config.fromfile(str(SEG_CONFIGS / "zsseg-prompt_voc12aug.py"))
    assert cfg.optim_wrapper.optimizer.lr == 0.02 and cfg.optim_wrapper.optimizer.weight_decay == 5e-4
    assert cfg.train_cfg.max_iters == 3200 and cfg.model.crop_in_pipeline  # one view per record
    assert cfg.train_dataloader.batch_size * 8 == 32  # 32 views on 8 GPUs
    lr = _lrs(cfg, 400)[:, 0]
    cosine = 0.02 * 0.5 * (1 + np.cos(np.pi * np.arange(400) / 400))
    assert np.allclose(lr[:99], 0.005 * cosine[:99], rtol=1e-5)  # mmengine lifts it after step 99
    assert np.allclose(lr[100:], cosine[100:], rtol=1e-5)


def test_voc_trains_on_trainaug_with_unseen_pixels_ignored(tmp_path):
    # VOC ids: 1 aeroplane ... 15 person (seen), 16 pottedplant ... 20 tvmonitor (unseen)
    # a3 holds unseen classes only: every label ignored, left out as ZSSeg's data preparation does
    voc = make_voc(tmp_path, train={"t1": [1, 16]}, aug={"a1": [3], "a3": [16, 19], "a2": [20, 15]}, val={"v1": [2]})
    cfg = Config.fromfile(str(VOC_CFG))
    init_default_scope("mmseg")
    loader = cfg.train_dataloader.dataset
    for d in loader.datasets:
        d.data_root = str(voc)
        d.pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations")]
        assert d.drop_all_ignore is True
    dataset = DATASETS.build(loader)
    assert len(dataset) == 3  # train.txt + aug.txt, a3 left out
    assert sorted(Path(dataset[i]["seg_map_path"]).stem for i in range(3)) == ["a1", "a2", "t1"]
    labels = {int(v) for i in range(3) for v in np.unique(dataset[i]["gt_seg_map"])}
    # reduce_zero_label: background 0 -> 255, class k -> k - 1; unseen (15-19) -> 255
    assert labels == {0, 2, 14, 255}
    assert [d.data_prefix["seg_map_path"] for d in loader.datasets] == ["SegmentationClass", "SegmentationClassAug"]
    for d in loader.datasets:
        d.drop_all_ignore = False
    assert len(DATASETS.build(loader)) == 4


def test_coco_stuff_training_leaves_out_images_with_only_ignored_labels(tmp_path):
    # labelTrainIds: 0 person and 40 wine glass seen, 19 cow unseen; 255 unlabelled
    coco = make_coco_stuff(tmp_path, train={"000000000001": [0, 19], "000000000003": [19],
                                            "000000000004": [40]}, val={"000000000002": [0]})
    init_default_scope("mmseg")
    ds = Config.fromfile(str(COCO_CFG)).train_dataloader.dataset
    assert ds.drop_all_ignore is True
    cache = tmp_path / "labels.json"
    ds.update(data_root=str(coco), pipeline=[dict(type="LoadImageFromFile")], class_count_file=str(cache))
    kept = DATASETS.build(ds)
    assert sorted(Path(kept[i]["seg_map_path"]).name.split("_")[0] for i in range(len(kept))) == [
        "000000000001", "000000000004"]
    assert len(json.loads(cache.read_text())) == 3  # every annotation listed once, then cached


def test_backbone_input_and_sizes_are_zssegs():
    voc, coco = Config.fromfile(str(VOC_CFG)), Config.fromfile(str(COCO_CFG))
    for cfg in (voc, coco):
        bb = cfg.model.backbone
        assert (bb.type, bb.depth, tuple(bb.multi_grid)) == ("ResNetV1c", 101, (1, 2, 4))  # deep stem
        assert list(cfg.model.data_preprocessor.mean) == IMAGENET[0]
        assert cfg.model.decode_head.embed_layers == 2
    assert tuple(coco.model.data_preprocessor.size) == (640, 640)
    assert [t for t in coco.test_pipeline if t.type == "ResizeShortestEdge"][0].scale == 640
    assert tuple(voc.model.data_preprocessor.size) == (512, 512)


def test_crops_are_renormalised_from_imagenet_to_clip_statistics(tiny_clip):
    model = tiny_clip[0]
    raw = torch.rand(3, 8, 8) * 255
    mean, std = (torch.tensor(v).view(3, 1, 1) for v in IMAGENET)
    clf = CLIPCropClassifier(model.visual, 100.0, input_mean=IMAGENET[0], input_std=IMAGENET[1])
    clip_norm = (raw - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)
    torch.testing.assert_close(clf.to_clip((raw - mean) / std), clip_norm, atol=1e-4, rtol=1e-4)
    same = CLIPCropClassifier(model.visual, 100.0)  # CLIP-normalised input: unchanged
    torch.testing.assert_close(same.to_clip(clip_norm), clip_norm)


def _tiny_segmentor(tiny_clip, **kwargs):
    cfg = Config.fromfile(str(VOC_CFG))
    cfg.merge_from_dict({k: v for k, v in TINY_MODEL.items() if not k.startswith("model.text_encoder")})
    model_cfg = cfg.model  # a ConfigDict: mmdet's heads read their loss configs by attribute
    model_cfg["text_encoder"] = dict(type="POMPTextEncoder", dataset_name="ZeroShotVOCDataset",
                                     clip=tiny_clip[:2], init_words="a photo of a")
    model_cfg["region_text_encoder"] = None
    model_cfg.update(kwargs)
    model = MODELS.build(model_cfg)
    model.init_weights()
    return model.eval()


def _fixed_proposals(model, p_mf, logits):
    model.decode_head.proposals = lambda x, metas, shape: (p_mf[None], logits[None])


def test_empty_proposal_gets_a_neutral_clip_probability(tiny_clip):
    model = _tiny_segmentor(tiny_clip, region_text_encoder=None)
    assert isinstance(model.crop_classifier.renorm_scale, torch.Tensor)
    torch.manual_seed(0)
    p_mf = torch.rand(3, 20).softmax(-1)
    logits = torch.full((3, 32, 32), -9.0)
    logits[0, 2:12, 3:20] = 9.0
    logits[1, 16:30, 10:30] = 9.0  # proposal 2 stays empty after thresholding
    _fixed_proposals(model, p_mf, logits)
    image = torch.randn(1, 3, 32, 32)
    embeds = model.text_encoder.class_embeddings(model.text_encoder.class_names)
    p_valid, valid = model.crop_classifier(image[0], logits.sigmoid() > 0.5, embeds)
    assert valid.tolist() == [True, True, False] and p_valid.shape == (2, 20)
    p_clip = torch.cat([p_valid, torch.ones(1, 20)])
    expected = pomp_seg.pixel_scores(pomp_seg.ensemble_probs(p_mf, p_clip, model.is_seen(), 0.7), logits)
    torch.testing.assert_close(model.encode_decode(image, [dict(img_shape=(32, 32))])[0], expected)


def test_query_head_maps_to_text_space_with_a_two_layer_mlp():
    clf = pomp_seg.TextEmbeddingClassifier(8, 6, temperature=1.0, proj_layers=2, proj_hidden=5)
    lin1, lin2 = clf.proj[0], clf.proj[2]
    assert (lin1.in_features, lin1.out_features, lin2.out_features) == (8, 5, 6)
    x, text = torch.randn(4, 8), F.normalize(torch.randn(3, 6), dim=-1)
    expected = F.normalize(lin2(F.relu(lin1(x))), dim=-1) @ text.t()
    torch.testing.assert_close(clf(x, text), expected)


def test_region_classifier_uses_its_own_prompt(tiny_clip):
    model = _tiny_segmentor(tiny_clip, region_text_encoder=dict(type="POMPTextEncoder", init_words="a sculpture of"))
    seen = {}
    real = model.crop_classifier.forward
    model.crop_classifier.forward = lambda img, masks, text: seen.setdefault("text", text) is not None and real(img, masks, text)
    logits = torch.full((2, 32, 32), -9.0)
    logits[0, 4:20, 4:20] = 9.0
    _fixed_proposals(model, torch.rand(2, 20).softmax(-1), logits)
    model.encode_decode(torch.randn(1, 3, 32, 32), [dict(img_shape=(32, 32))])
    names = model.text_encoder.class_names
    torch.testing.assert_close(seen["text"], model.region_text_encoder.class_embeddings(names))
    assert not torch.allclose(seen["text"], model.text_encoder.class_embeddings(names))
    model.set_vocabulary(["cat", "sofa"])  # a vocabulary swap reaches both encoders
    assert model.region_text_encoder.class_names == ["cat", "sofa"]
    assert model.is_seen().tolist() == [True, False]


def test_hand_templates_are_clips_template_ensemble(tiny_clip):
    model, tokenizer, _ = tiny_clip
    templates = ["a sculpture of a {}.", "a photo of the {}."]
    enc = MODELS.build(dict(type="POMPTextEncoder", vocabulary=["cat", "sofa"], clip=(model, tokenizer),
                            templates=templates, cat_bg=False))
    feats = [F.normalize(model.encode_text(tokenizer([t.format(n) for n in ["cat", "sofa"]])), dim=-1)
             for t in templates]
    torch.testing.assert_close(enc.class_embeddings(["cat", "sofa"]), F.normalize(sum(feats) / 2, dim=-1))


def test_stage_a_cuts_zssegs_view_in_the_pipeline_and_fills_it_with_zssegs_grey():
    for config in ("zsseg-prompt_voc12aug.py", "zsseg-prompt_coco-stuff164k.py"):
        cfg = Config.fromfile(str(SEG_CONFIGS / config))
        inner = cfg.train_dataloader.dataset.dataset
        pipeline = (inner.get("datasets") or [inner])[0].pipeline
        assert [t.type for t in pipeline] == ["LoadImageFromFile", "LoadAnnotations", "RecordMaskCrop",
                                              "RandomFlip", "PackSegInputs"]
        crop = pipeline[2]
        assert (tuple(crop.size), tuple(crop.scale), crop.drop_empty) == ((244, 224), (0.08, 1.0), True)
        assert (cfg.model.crop_in_pipeline, cfg.model.fill, cfg.model.min_pixels) == (True, "normalised_mean", 1)


@pytest.mark.parametrize("config,lam,thr", [("zsseg-r101c_coco-stuff164k_test-ade20k.py", 0.5, 0.4),
                                            ("zsseg-r101c_coco-stuff164k_test-pascal-context59.py", 0.4, 0.5)])
def test_cross_dataset_tests_treat_every_class_as_unseen(config, lam, thr, tiny_clip):
    cfg = Config.fromfile(str(SEG_CONFIGS / config))
    assert (cfg.model.ensemble_lambda, cfg.model.mask_threshold, cfg.model.ensemble_seen) == (lam, thr, False)
    model = _tiny_segmentor(tiny_clip, ensemble_seen=False, ensemble_lambda=lam, mask_threshold=thr)
    model.set_vocabulary(list(pomp_seg.datasets.seen_classes("ZeroShotVOCDataset"))[:3] + ["wall"])
    assert not model.is_seen().any()  # even the names COCO-Stuff's seen set shares


def _small_images(path):
    """The config's pipelines at 64 px (the real ones resize to 320-960 px: slow on CPU)."""
    cfg = Config.fromfile(str(path))
    sizes = {"RandomChoiceResize": dict(scales=[64], max_size=128), "RandomCrop": dict(crop_size=(64, 64)),
             "ResizeShortestEdge": dict(scale=64, max_size=128)}

    def shrink(node):
        if isinstance(node, dict):
            node.update(sizes.get(node.get("type"), {}))
            for v in node.values():
                shrink(v)
        elif isinstance(node, list):
            for v in node:
                shrink(v)
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        shrink(cfg[key])
    cfg.model.data_preprocessor.size = (64, 64)
    out = path.with_name("small.py")
    cfg.dump(str(out))
    return out


def _run_one_step(config, data_root, tmp_path, extra):
    loaders = {f"{k}.{o}": v for k in ("train_dataloader", "val_dataloader", "test_dataloader")
               for o, v in (("num_workers", 0), ("persistent_workers", False))}
    cfg = override_config(tmp_path / "cfg.py", config, {
        **TINY_MODEL, **loaders, **extra, "train_cfg.max_iters": 1, "train_cfg.val_interval": 10,
        "default_hooks.checkpoint.interval": 1}, tail=(
        "param_scheduler = [dict(type='PolyLR', eta_min=0.0, power=0.9, begin=0, end=1, by_epoch=False)]\n"))
    cfg = _small_images(cfg)
    args = [str(cfg), "--work-dir", str(tmp_path / "work"), "--data-root", str(data_root)]
    runner = train_seg.main(args)
    assert runner.iter == 1 and (tmp_path / "work" / "iter_1.pth").is_file()
    return test_seg.main([args[0], str(tmp_path / "work" / "iter_1.pth"), *args[1:]])


@pytest.mark.slow
def test_voc_config_trains_and_tests_a_step_in_the_real_layout(tmp_path):
    voc = make_voc(tmp_path, train={"t1": [1, 16], "t2": [7]}, aug={"a1": [12, 3]}, val={"v1": [2, 18]})
    res = _run_one_step(VOC_CFG, voc, tmp_path, {  # the config's text side: templates + a region prompt
        "model.region_text_encoder.prompt": None, "model.region_text_encoder.init_words": "a sculpture of",
        "model.text_encoder.init_words": None})
    assert {"mIoU_seen", "mIoU_unseen", "hIoU", "IoU.aeroplane", "IoU.tvmonitor"} <= set(res)


@pytest.mark.slow
def test_coco_stuff_config_trains_and_tests_a_step_in_the_real_layout(tmp_path):
    coco = make_coco_stuff(tmp_path, train={"000000000001": [0, 19]}, val={"000000000002": [0, 170]})
    res = _run_one_step(COCO_CFG, coco, tmp_path, {"train_dataloader.batch_size": 1})
    assert len([k for k in res if k.startswith("IoU.")]) == 171 and "IoU.wall-wood" in res
