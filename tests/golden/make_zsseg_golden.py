"""Golden outputs of zsseg's own stage-(b) model for ``tests/seg/test_golden.py``.

Builds zsseg's ``ZeroShotMaskFormer`` as the POMP release's VOC config does
(``configs/voc-11k-15/zero_shot_maskformer_R101c_pomp_prompt_bs16_20k.yaml``: DeepLab R-103
backbone, MaskFormer head, the POMP prompt for queries and crops, CLIP crop ensemble λ 0.7),
with zsseg's code, at reduced widths (a few MB), a tiny CLIP in OpenAI's layout and random
weights from a fixed seed, and writes into ``tests/fixtures/golden/zsseg/``:

- ``zsseg_tiny.pth``: the model's checkpoint in the release layout (``{"model": state_dict, ...}``);
- ``image0.png``, ``image1.png``: two small non-square RGB images of different sizes;
- ``zsseg-golden-clip.json``: the tiny CLIP as an open_clip architecture;
- ``train_batch.npz``: the training batch's images and labels;
- ``golden.json``: the vocabulary (seen and unseen classes), the reduced widths, the training
  labels and zsseg's scalar outputs (the losses of one training batch);
- ``release_shapes.json``: key -> shape of the release's model at its real widths and of
  detectron2's R-103 backbone (``R-103.pkl``'s keys), for the key tests;
- ``outputs.pth``: zsseg's tensors: per-query class probabilities, mask logits, the CLIP crop
  probabilities, and the semantic logits without and with the ensemble.

Run by hand where checkouts of the release's fork of zsseg (``third_party/zsseg.baseline`` of
amazon-science/prompt-pretraining: MendelXu/zsseg.baseline plus the POMP configs and prompt
extractor, which MendelXu's lacks) and of detectron2 (for its ``projects/DeepLab``, which a
pip-installed detectron2 lacks) exist; detectron2 0.6 runs it:

    ZSSEG_ROOT=/path/to/zsseg.baseline DETECTRON2_ROOT=/path/to/detectron2 \\
        .venv/bin/python tests/golden/make_zsseg_golden.py

(or ``--zsseg PATH --detectron2 PATH``). Without them it exits with a message.

zsseg's code is copied into a work folder (``--work``, default a temporary one) and imported
from there; it never enters this repository. Patches, all outside zsseg's files:
- ``import clip`` resolves to zsseg's ``third_party/CLIP`` (put on ``sys.path``);
- ``wandb`` (imported by ``mask_former.utils.events``, used only for logging) is an empty
  stand-in module;
- ``detectron2.projects.deeplab`` is detectron2's ``projects/DeepLab/deeplab``, copied;
- ``build_clip_model`` (which downloads ViT-B/16) returns the tiny CLIP; OpenAI's
  ``clip.model.CLIP`` derives the visual heads from the width (64 per head), so the tiny
  CLIP is built with ``CLIP(...)`` directly rather than ``clip.load``.
The transformer's dropout is 0 (the release: 0.1) so that one training batch's losses are
deterministic. Rows of CLIP's token embedding that no token of the vocabulary uses are zero
(they never reach an output; the checkpoint compresses well).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "zsseg"
RELEASE_CONFIG = "configs/voc-11k-15/zero_shot_maskformer_R101c_pomp_prompt_bs16_20k.yaml"
SEED = 0
# the vocabulary: seen classes (trained on) and unseen ones, interleaved
VOCABULARY = ["cat", "sofa", "dog", "car", "train", "person"]
UNSEEN = ["sofa", "train"]
SEEN = [c for c in VOCABULARY if c not in UNSEEN]
IMAGE_SIZES = [(72, 100), (90, 66)]  # H x W: non-square, different, not multiples of 32
TRAIN_SIZE = (64, 96)
# zsseg's R-103 / MaskFormer at reduced widths (the release: stem 128, res2 256, width 64,
# 256-wide head and decoder with 8 heads and 2048 FFN, 100 queries, 1024-wide query MLP)
WIDTHS = dict(stem=16, res2=32, width_per_group=8, convs_dim=32, hidden_dim=32, nheads=2,
              dim_feedforward=48, num_queries=6, embed_hidden_dim=24, dec_layers=6)
TINY_CLIP = dict(embed_dim=16, image_resolution=224, vision_layers=1, vision_width=64, vision_patch_size=16,
                 context_length=77, vocab_size=49408, transformer_width=8, transformer_heads=2,
                 transformer_layers=1)
LOGIT_SCALE = float(np.log(30.0))  # not zsseg's fixed temperature 100: a test reading it fails


def find_checkouts(zsseg: str | None, detectron2: str | None) -> tuple[Path, Path]:
    zsseg = zsseg or os.environ.get("ZSSEG_ROOT")
    detectron2 = detectron2 or os.environ.get("DETECTRON2_ROOT")
    problems = []
    if not zsseg or not (Path(zsseg) / RELEASE_CONFIG).is_file() or not (Path(zsseg) / "third_party" / "CLIP").is_dir():
        problems.append(f"no zsseg checkout with the POMP configs (got {zsseg!r}): pass --zsseg PATH or set ZSSEG_ROOT "
                        "to the release's third_party/zsseg.baseline (amazon-science/prompt-pretraining, with "
                        "third_party/CLIP)")
    if not detectron2 or not (Path(detectron2) / "projects" / "DeepLab" / "deeplab").is_dir():
        problems.append(f"no detectron2 checkout (got {detectron2!r}): pass --detectron2 PATH or set DETECTRON2_ROOT "
                        "to a clone of facebookresearch/detectron2 (its projects/DeepLab)")
    if problems:
        sys.exit("make_zsseg_golden: " + "; ".join(problems))
    return Path(zsseg), Path(detectron2)


def import_zsseg(zsseg: Path, detectron2: Path, work: Path):
    """Copy zsseg's package, its CLIP and detectron2's DeepLab project to ``work`` and import them."""
    for src, dst in ((zsseg / "mask_former", work / "mask_former"),
                     (zsseg / "third_party" / "CLIP" / "clip", work / "clip"),
                     (detectron2 / "projects" / "DeepLab" / "deeplab", work / "deeplab")):
        shutil.copytree(src, dst, dirs_exist_ok=True)
    sys.path.insert(0, str(work))
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    import deeplab  # registers build_resnet_deeplab_backbone
    import detectron2.projects

    sys.modules["detectron2.projects.deeplab"] = deeplab
    detectron2.projects.deeplab = deeplab
    import mask_former
    return mask_former, deeplab


def tiny_clip(clip_module, vocabulary):
    torch.manual_seed(SEED + 1)
    model = clip_module.model.CLIP(**TINY_CLIP).float()
    with torch.no_grad():
        used = torch.unique(clip_module.tokenize([f"X {n}." for n in vocabulary] + ["X."]))
        keep = torch.zeros(TINY_CLIP["vocab_size"], dtype=torch.bool)
        keep[used] = True
        model.token_embedding.weight[~keep] = 0
        model.logit_scale.fill_(LOGIT_SCALE)
    return model.eval().requires_grad_(False)


def build_cfg(zsseg: Path, deeplab, reduced: bool = True):
    from detectron2.config import get_cfg
    from mask_former import add_mask_former_config

    cfg = get_cfg()
    deeplab.add_deeplab_config(cfg)
    add_mask_former_config(cfg)
    cfg.merge_from_file(str(zsseg / RELEASE_CONFIG))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.CLIP_ADAPTER.PROMPT_CHECKPOINT", "",
                         "MODEL.SEM_SEG_HEAD.NUM_CLASSES", len(SEEN)])
    if not reduced:
        return cfg
    w = WIDTHS
    cfg.merge_from_list([
        "MODEL.RESNETS.STEM_OUT_CHANNELS", w["stem"], "MODEL.RESNETS.RES2_OUT_CHANNELS", w["res2"],
        "MODEL.RESNETS.WIDTH_PER_GROUP", w["width_per_group"],
        "MODEL.SEM_SEG_HEAD.CONVS_DIM", w["convs_dim"], "MODEL.SEM_SEG_HEAD.MASK_DIM", w["convs_dim"],
        "MODEL.SEM_SEG_HEAD.EMBEDDING_DIM", TINY_CLIP["embed_dim"],
        "MODEL.SEM_SEG_HEAD.EMBED_HIDDEN_DIM", w["embed_hidden_dim"],
        "MODEL.MASK_FORMER.HIDDEN_DIM", w["hidden_dim"], "MODEL.MASK_FORMER.NHEADS", w["nheads"],
        "MODEL.MASK_FORMER.DIM_FEEDFORWARD", w["dim_feedforward"],
        "MODEL.MASK_FORMER.NUM_OBJECT_QUERIES", w["num_queries"], "MODEL.MASK_FORMER.DEC_LAYERS", w["dec_layers"],
        "MODEL.MASK_FORMER.DROPOUT", 0.0,
        "MODEL.CLIP_ADAPTER.PROMPT_DIM", TINY_CLIP["transformer_width"],
    ])
    return cfg


FIXED = ("token_embedding", "_signal", "criterion.", "pixel_mean", "pixel_std", "logit_scale")


def randomise(model: torch.nn.Module) -> None:
    """Move every weight and statistic off its initial value (ones, zeros, identical BN
    statistics would hide a swapped key), keeping activations of order one: the last norm of
    each residual branch is scaled down, as a trained ResNet's are."""
    g = torch.Generator().manual_seed(SEED + 2)
    with torch.no_grad():
        for name, t in model.state_dict().items():
            # token embeddings (and the prompt learner's copies, *_signal), the loss's class
            # weights and pixel statistics are config-like: ours come from CLIP and the config
            if not t.is_floating_point() or any(s in name for s in FIXED):
                continue
            if name.endswith("running_var"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
            elif name.endswith("running_mean"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif ".norm." in name and name.startswith("backbone.") and name.endswith("weight"):
                scale = 0.2 if ".conv3." in name else 1.0
                t.copy_(scale * (0.8 + 0.4 * torch.rand(t.shape, generator=g)))
            else:
                t.add_(0.05 * torch.randn(t.shape, generator=g))


def spread_scores(model: torch.nn.Module) -> None:
    """At temperature 100, random 16-d text and query features give logit gaps of tens and
    saturated probabilities (1e-8 against no-object), which would make the comparison
    vacuous: give every text feature a common direction (a large final LayerNorm bias) and
    put the no-object embedding near it, so that probabilities spread over the classes."""
    g = torch.Generator().manual_seed(SEED + 4)
    adapter = model.clip_adapter
    with torch.no_grad():
        ln = adapter.clip_model.ln_final
        ln.bias.copy_(3.0 * torch.randn(ln.bias.shape, generator=g))
        feats = adapter.prompt_learner(VOCABULARY, adapter.clip_model)
        mean = torch.nn.functional.normalize(feats.mean(0, keepdim=True), dim=-1)
        adapter.non_object_embedding.copy_(mean + 0.1 * torch.randn(mean.shape, generator=g) / mean.shape[1] ** 0.5)


def make_images():
    rng = np.random.default_rng(SEED)
    images = []
    for h, w in IMAGE_SIZES:
        img = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for k in range(3):  # a few coloured blocks, so masks and crops differ
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            img[y0:y0 + h // 3, x0:x0 + w // 3] = rng.integers(80, 255, 3, dtype=np.uint8)
        images.append(img)
    return images


def make_train_batch():
    """Two training images (same size: zsseg's mapper pads to 512 with its own values) and
    their labels as indices into SEEN, 255 ignored (unseen objects and unlabelled pixels)."""
    rng = np.random.default_rng(SEED + 3)
    h, w = TRAIN_SIZE
    images, labels = [], []
    for layout in ([(0, 5, 30, 4, 40), (2, 30, 60, 50, 90), (255, 40, 64, 0, 30)],
                   [(1, 0, 40, 10, 70), (3, 20, 64, 60, 96), (255, 44, 60, 20, 50)]):
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        lab = np.full((h, w), 255, np.uint8)
        for c, y0, y1, x0, x1 in layout:
            lab[y0:y1, x0:x1] = c
        images.append(img)
        labels.append(lab)
    return images, labels


def write_release_shapes(zsseg: Path, deeplab, clip_module, out: Path) -> None:
    """Key -> shape of the release's model at its real widths (CLIP ViT-B/16, R-103, 100
    queries) and of detectron2's R-103 backbone alone (R-103.pkl's keys): the key tests check
    that our full-size config takes both with nothing left over."""
    from detectron2.modeling import build_backbone, build_model
    from mask_former.modeling.clip_adapter import adapter

    full_clip = clip_module.model.CLIP(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768,
                                       vision_patch_size=16, context_length=77, vocab_size=49408,
                                       transformer_width=512, transformer_heads=8, transformer_layers=12)
    adapter.build_clip_model = lambda name, frozen=True: full_clip
    cfg = build_cfg(zsseg, deeplab, reduced=False)
    shapes = {k: list(v.shape) for k, v in build_model(cfg).state_dict().items()}
    backbone = {k: list(v.shape) for k, v in build_backbone(cfg).state_dict().items()}
    (out / "release_shapes.json").write_text(json.dumps(dict(model=shapes, r103=backbone)) + "\n")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zsseg", help="zsseg.baseline checkout (default: $ZSSEG_ROOT)")
    p.add_argument("--detectron2", help="detectron2 checkout, for projects/DeepLab (default: $DETECTRON2_ROOT)")
    p.add_argument("--work", help="folder for the copies of zsseg's code (default: a temporary folder)")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    zsseg, d2_root = find_checkouts(args.zsseg, args.detectron2)
    work = Path(args.work or tempfile.mkdtemp(prefix="zsseg_golden_"))
    mask_former, deeplab = import_zsseg(zsseg, d2_root, work)
    import clip
    from detectron2.data import MetadataCatalog
    from detectron2.modeling import build_model
    from detectron2.structures import Instances
    from mask_former.modeling.clip_adapter import adapter

    torch.set_num_threads(1)
    model_clip = tiny_clip(clip, VOCABULARY)
    adapter.build_clip_model = lambda name, frozen=True: model_clip
    MetadataCatalog.get("golden_train").set(stuff_classes=SEEN)
    MetadataCatalog.get("golden_test").set(stuff_classes=VOCABULARY,
                                           trainable_flag=[int(c in SEEN) for c in VOCABULARY])
    cfg = build_cfg(zsseg, deeplab)
    torch.manual_seed(SEED)
    model = build_model(cfg)
    randomise(model)
    spread_scores(model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    # -- inference on two images of different sizes (each padded to a multiple of 32) --------
    from PIL import Image

    images = make_images()
    for i, img in enumerate(images):
        Image.fromarray(img).save(out / f"image{i}.png")
    batch = [{"image": torch.as_tensor(img.transpose(2, 0, 1).copy()), "height": img.shape[0],
              "width": img.shape[1], "meta": {"dataset_name": "golden_test"}} for img in images]
    seen_calls = []
    inner_inference = model.semantic_inference

    def recording_inference(mask_cls, mask_pred, image, class_names, dataset_name):
        result = inner_inference(mask_cls, mask_pred, image, class_names, dataset_name)
        seen_calls.append(dict(query_logits=mask_cls.clone(), mask_logits=mask_pred.clone(), sem_seg=result.clone()))
        return result

    clip_calls = []
    region = model.region_clip_adapter
    inner_region = region.forward

    def recording_region(image, text, mask, normalize=True):
        logits, valid = inner_region(image, text, mask, normalize=normalize)
        clip_calls.append(dict(crop_probs=torch.softmax(logits[:, :-1], -1).clone(), valid=valid.clone()))
        return logits, valid

    model.semantic_inference = recording_inference
    region.forward = recording_region
    model.eval()
    tensors = {}
    with torch.no_grad():
        for ensemble in (False, True):
            model.clip_ensemble = ensemble
            seen_calls.clear()
            clip_calls.clear()
            for item in batch:  # one image at a time, as zsseg's test loader feeds them
                model([item])
            tag = "ensemble" if ensemble else "plain"
            for i, call in enumerate(seen_calls):
                tensors[f"{tag}.sem_seg.{i}"] = call["sem_seg"]
                if not ensemble:
                    tensors[f"probs.{i}"] = torch.softmax(call["query_logits"], -1)[:, :-1]
                    tensors[f"mask_logits.{i}"] = call["mask_logits"]
            for i, call in enumerate(clip_calls):
                tensors[f"crop_probs.{i}"] = call["crop_probs"]
                tensors[f"crop_valid.{i}"] = call["valid"]
    model.clip_ensemble = True

    # -- the losses of one training batch -------------------------------------------------
    train_images, train_labels = make_train_batch()
    train_batch = []
    for img, lab in zip(train_images, train_labels):
        inst = Instances(lab.shape)
        classes = np.unique(lab)
        classes = classes[classes != 255]  # zsseg's mapper: ascending class ids, ignore dropped
        inst.gt_classes = torch.tensor(classes, dtype=torch.int64)
        inst.gt_masks = torch.stack([torch.from_numpy(lab == c) for c in classes])
        train_batch.append({"image": torch.as_tensor(img.transpose(2, 0, 1).copy()), "instances": inst,
                            "meta": {"dataset_name": "golden_train"}})
    model.train()
    losses = {k: float(v) for k, v in model(train_batch).items()}

    torch.save({"model": model.state_dict(), "iteration": 0}, out / "zsseg_tiny.pth")
    torch.save(tensors, out / "outputs.pth")
    np.savez_compressed(out / "train_batch.npz", images=np.stack(train_images), labels=np.stack(train_labels))
    meta = dict(vocabulary=VOCABULARY, seen=SEEN, unseen=UNSEEN, widths=WIDTHS, clip=TINY_CLIP,
                clip_logit_scale=LOGIT_SCALE, ensemble_lambda=cfg.MODEL.CLIP_ADAPTER.CLIP_ENSEMBLE_WEIGHT,
                mask_threshold=cfg.MODEL.CLIP_ADAPTER.MASK_THR, image_sizes=IMAGE_SIZES,
                size_divisibility=cfg.MODEL.MASK_FORMER.SIZE_DIVISIBILITY, losses=losses,
                release_config=RELEASE_CONFIG, seed=SEED)
    (out / "golden.json").write_text(json.dumps(meta, indent=1) + "\n")
    c = TINY_CLIP  # the same CLIP as an open_clip architecture (the file name is its name)
    (out / "zsseg-golden-clip.json").write_text(json.dumps(dict(
        embed_dim=c["embed_dim"], quick_gelu=True,
        vision_cfg=dict(image_size=c["image_resolution"], layers=c["vision_layers"], width=c["vision_width"],
                        patch_size=c["vision_patch_size"], head_width=64),
        text_cfg=dict(context_length=c["context_length"], vocab_size=c["vocab_size"], width=c["transformer_width"],
                      heads=c["transformer_heads"], layers=c["transformer_layers"])), indent=1) + "\n")
    write_release_shapes(zsseg, deeplab, clip, out)
    print(f"wrote {out}: {len(tensors)} tensors, losses {sum(losses.values()):.4f} over {len(losses)} terms")


if __name__ == "__main__":
    main()
