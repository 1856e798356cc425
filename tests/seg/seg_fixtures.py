"""Small models and generated datasets in the real layouts, shared by the seg tests."""
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
SEG_CONFIGS = ROOT / "configs" / "seg"

# The real configs' model, made small for CPU: a tiny ResNetV1c and MaskFormer head, the
# random tiny CLIP (pomp-tiny) with a word-initialised prompt. Everything else is the config's.
TINY_MODEL: Dict[str, object] = {
    "model.backbone.depth": 18, "model.backbone.stem_channels": 16, "model.backbone.base_channels": 16,
    "model.backbone.init_cfg": None, "model.backbone.multi_grid": None,
    "model.decode_head.in_channels": [16, 32, 64, 128], "model.decode_head.embed_dims": 48,
    "model.decode_head.embed_hidden_dims": 32,
    "model.decode_head.feat_channels": 32, "model.decode_head.out_channels": 32,
    "model.decode_head.num_queries": 6, "model.decode_head.enforce_decoder_input_project": True,
    "model.decode_head.pixel_decoder.norm_cfg.num_groups": 8,
    "model.decode_head.positional_encoding.num_feats": 16,
    "model.decode_head.transformer_decoder.num_layers": 1,
    "model.decode_head.transformer_decoder.layer_cfg.self_attn_cfg.embed_dims": 32,
    "model.decode_head.transformer_decoder.layer_cfg.cross_attn_cfg.embed_dims": 32,
    "model.decode_head.transformer_decoder.layer_cfg.ffn_cfg.embed_dims": 32,
    "model.decode_head.transformer_decoder.layer_cfg.ffn_cfg.feedforward_channels": 64,
    "model.text_encoder.clip_model": "pomp-tiny", "model.text_encoder.clip_pretrained": None,
    "model.text_encoder.prompt": None, "model.text_encoder.init_words": "a photo of a",
}


def _png(path: Path, array: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(array)
    if palette:  # VOC's SegmentationClass files are palette PNGs
        img = img.convert("P")
        img.putpalette([v for i in range(256) for v in (i, i, i)])
    img.save(path)


def _scene(rng: np.random.Generator, labels: Sequence[int], size=(48, 64), border: bool = False):
    """An image and a label map: background 0 and a rectangle per label (VOC-style 255 border)."""
    h, w = size
    label = np.zeros((h, w), np.uint8)
    img = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
    for k, c in enumerate(labels):
        y0, x0 = 4 + 10 * k, 4 + 12 * k
        label[y0:y0 + 16, x0:x0 + 20] = c
        img[y0:y0 + 16, x0:x0 + 20] = rng.integers(60, 255, 3, dtype=np.uint8)
        if border:
            label[y0, x0:x0 + 20] = 255
    return img, label


def make_voc(root: Path, train: Dict[str, List[int]], aug: Dict[str, List[int]],
             val: Dict[str, List[int]]) -> Path:
    """VOCdevkit/VOC2012 in mmseg's aug layout: JPEGImages, SegmentationClass (palette PNGs,
    0 background, 1-20 the classes, 255 border), SegmentationClassAug, ImageSets lists."""
    voc = root / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    for split, items, folder in (("train", train, "SegmentationClass"), ("aug", aug, "SegmentationClassAug"),
                                 ("val", val, "SegmentationClass")):
        for name, labels in items.items():
            img, label = _scene(rng, labels, border=True)
            (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(voc / "JPEGImages" / f"{name}.jpg")
            _png(voc / folder / f"{name}.png", label, palette=folder == "SegmentationClass")
        lists = voc / "ImageSets" / "Segmentation"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("".join(f"{n}\n" for n in items))
    return voc


def make_coco_stuff(root: Path, train: Dict[str, List[int]], val: Dict[str, List[int]]) -> Path:
    """coco_stuff164k as mmseg's converter writes it: images/{train,val}2017/*.jpg and
    annotations/{train,val}2017/*_labelTrainIds.png (0-170, 255 unlabelled)."""
    coco = root / "coco_stuff164k"
    rng = np.random.default_rng(1)
    for split, items in (("train2017", train), ("val2017", val)):
        for name, labels in items.items():
            img, label = _scene(rng, [c + 1 for c in labels])
            label = label.astype(np.int16) - 1  # train ids: the classes 0-170, unlabelled 255
            label[label < 0] = 255
            (coco / "images" / split).mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(coco / "images" / split / f"{name}.jpg")
            _png(coco / "annotations" / split / f"{name}_labelTrainIds.png", label.astype(np.uint8))
    return coco


def override_config(path: Path, base: Path, flat: Dict[str, object], tail: str = "") -> Path:
    """Write a config at ``path`` inheriting ``base`` with the dotted keys of ``flat``
    (as --cfg-options would set them, but keeping spaces in strings) and ``tail`` lines."""
    nested: Dict[str, object] = {}
    for key, value in flat.items():
        node = nested
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    lines = [f"_base_ = [{str(base)!r}]"] + [f"{k} = {v!r}" for k, v in nested.items()]
    path.write_text("\n".join(lines) + "\n" + tail)
    return path
