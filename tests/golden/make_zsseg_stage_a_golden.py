"""Write the stage-(a) golden fixture from ZSSeg's own code (run by hand; CI only reads the output).

ZSSeg's stage (a) ("proposal classification, learn prompt") cuts one view of an (image, class)
record in its ``mask_former_binary_semantic`` dataset mapper and classifies it with CLIP and a
learned prompt in ``ProposalClipClassifier``. This script runs both, as the stage-(a) VOC config
builds them (the release's ``zero_shot_proposal_classification_learn_prompt_pomp_bs16_10k.yaml``
when the checkout is amazon-science/prompt-pretraining's fork, else MendelXu's
``zero_shot_proposal_classification_learn_prompt_bs16_10k.yaml``), on one generated record, with
a tiny CLIP in OpenAI's layout (reduced widths, random weights, seed 0), and writes to
``tests/fixtures/golden/zsseg_stage_a/``:

- ``image.png``, ``ann.png`` (labels in ``classes.json`` order, unseen classes included),
  ``classes.json`` (classes + unseen indices), ``record.json`` (the record's class and the
  view's draws: ZSSeg's box, random crop and flip, for seeds that keep and that miss the class);
- ``clip.pt`` (the tiny CLIP's OpenAI-layout state dict, float16) and
  ``pomp-zsseg-stage-a.json`` (the same architecture as an open_clip model config),
  ``prompt.pth`` (the 16 context vectors, in the
  release's ``{"state_dict": {"ctx": ...}}`` layout);
- ``golden.pt``: ZSSeg's masked view (the tensor its CLIP adapter receives) and the prompt
  learner's logits over the seen classes, and the record's cross-entropy loss.

``tests/seg/test_stage_a_golden.py`` runs pomp_seg's ``RecordMaskCrop`` + ``PromptTuner`` on the
same record and asserts the same view and logits.

Usage::

    python tests/golden/make_zsseg_stage_a_golden.py --zsseg /path/to/zsseg.baseline
    ZSSEG_ROOT=/path/to/zsseg.baseline python tests/golden/make_zsseg_stage_a_golden.py

Needs detectron2 0.6 and the checkout's ``mask_former/`` and ``third_party/CLIP``, which are
copied to ``--work`` (a temporary folder by default) and imported from there; nothing of
ZSSeg's enters this repository. Patches, all at import/run time (no file of ZSSeg's is edited):

1. ``mask_former``, ``mask_former.data``, ``mask_former.data.dataset_mappers`` and
   ``mask_former.modeling`` are registered as bare packages, so their ``__init__`` files (which
   import every model, dataset and the W&B / timm / skimage dependencies) do not run; the
   mapper, ``ProposalClipClassifier`` and the CLIP adapter import as they are.
2. ``detectron2.projects.point_rend`` (imported by the mapper module for a transform stage (a)
   does not use) is given a placeholder module when the installed detectron2 lacks it.
3. ``build_clip_model`` (``clip.load("ViT-B/16")``) returns the tiny CLIP, frozen as the
   original freezes it, and ``PROMPT_DIM`` is its text width (the config's 512 is ViT-B's);
   the yaml is merged with new keys allowed (its DeepLab solver keys; stage (a) does not
   read them).
4. The record's dataset is a metadata entry of ours (``stuff_classes`` = the seen classes,
   ``ignore_label`` 255), and the record dict carries ``meta.dataset_name`` as ZSSeg's loader
   adds it (``wrap_metas``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "golden" / "zsseg_stage_a"
CLASSES = ["aeroplane", "bicycle", "sofa", "bird", "tvmonitor", "diningtable"]
UNSEEN = [2, 4]  # sofa, tvmonitor
RECORD = 3  # bird: its mask reaches the last row, where ZSSeg's box loses a row
HEIGHT, WIDTH = 57, 83
# The tiny CLIP: OpenAI's ViT needs width // 64 heads (64 = one head); text heads are free.
ARCH = dict(embed_dim=16, image_resolution=224, vision_layers=2, vision_width=64, vision_patch_size=16,
            context_length=77, vocab_size=49408, transformer_width=16, transformer_heads=2,
            transformer_layers=2)
OPEN_CLIP_NAME = "pomp-zsseg-stage-a"  # open_clip names a config file's model by its stem
CONFIGS = ("configs/voc-11k-15/zero_shot_proposal_classification_learn_prompt_pomp_bs16_10k.yaml",
           "configs/voc-11k-15/zero_shot_proposal_classification_learn_prompt_bs16_10k.yaml")


def _checkout(parser: argparse.ArgumentParser, arg: str | None) -> Path:
    root = arg or os.environ.get("ZSSEG_ROOT")
    if not root:
        parser.error("no zsseg checkout: pass --zsseg PATH or set ZSSEG_ROOT (MendelXu/zsseg.baseline, "
                     "or third_party/zsseg.baseline of amazon-science/prompt-pretraining)")
    root = Path(root)
    code = root / "mask_former" / "proposal_classification.py"
    if not code.is_file() or not (root / "third_party" / "CLIP").is_dir():
        parser.error(f"{root} is not a zsseg.baseline checkout (no mask_former/proposal_classification.py "
                     "or third_party/CLIP)")
    return root


def _import_zsseg(root: Path, work: Path):
    """Copy ZSSeg's code to ``work`` and import the stage-(a) modules (patches 1 and 2)."""
    shutil.copytree(root / "mask_former", work / "mask_former", dirs_exist_ok=True)
    shutil.copytree(root / "third_party" / "CLIP" / "clip", work / "clip", dirs_exist_ok=True)
    sys.path.insert(0, str(work))
    for name in ("mask_former", "mask_former.data", "mask_former.data.dataset_mappers", "mask_former.modeling"):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(work / name.replace(".", "/"))]
        sys.modules[name] = pkg
    try:
        import detectron2.projects.point_rend  # noqa: F401
    except ImportError:
        stub = types.ModuleType("detectron2.projects.point_rend")
        stub.ColorAugSSDTransform = None
        sys.modules["detectron2.projects.point_rend"] = stub
    import clip
    from mask_former import proposal_classification
    from mask_former.config import add_mask_former_config
    from mask_former.data.dataset_mappers import mask_former_binary_semantic_dataset_mapper as mapper_mod
    from mask_former.modeling.clip_adapter import adapter
    return clip, proposal_classification, add_mask_former_config, mapper_mod, adapter


def _tiny_clip(clip):
    torch.manual_seed(0)
    model = clip.model.CLIP(**ARCH)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))  # OpenAI's value, ZSSeg's fixed temperature
    state = {k: v.half() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.float() for k, v in state.items()})  # the float16 values, as saved
    return model.float().eval().requires_grad_(False), state


def _open_clip_config() -> dict:
    return {"embed_dim": ARCH["embed_dim"], "quick_gelu": True,
            "vision_cfg": {"image_size": ARCH["image_resolution"], "layers": ARCH["vision_layers"],
                           "width": ARCH["vision_width"], "patch_size": ARCH["vision_patch_size"], "head_width": 64},
            "text_cfg": {"context_length": ARCH["context_length"], "vocab_size": ARCH["vocab_size"],
                         "width": ARCH["transformer_width"], "heads": ARCH["transformer_heads"],
                         "layers": ARCH["transformer_layers"]}}


def _scene() -> tuple:
    """A non-square image with structure and noise, and labels: the record's class an L shape
    that reaches the last row, other seen and unseen classes around it, background 255."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    img = np.stack([(3 * xx + 2 * yy) % 256, (5 * yy + xx * xx // 7) % 256, (xx * yy // 3) % 256], -1)
    img = np.clip(img + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)
    ann = np.full((HEIGHT, WIDTH), 255, np.uint8)
    ann[2:20, 3:30] = 0
    ann[5:25, 60:80] = 2
    ann[30:HEIGHT, 12:22] = RECORD
    ann[44:HEIGHT, 12:51] = RECORD
    ann[25:40, 50:70] = 1
    ann[40:52, 62:81] = 4
    ann[20:30, 35:45] = 5
    return img, ann


def _cfg(root: Path, add_mask_former_config, prompt: Path):
    from detectron2.config import get_cfg
    cfg = get_cfg()
    add_mask_former_config(cfg)
    cfg.set_new_allowed(True)  # patch 3: the base yaml's DeepLab keys
    name = next(c for c in CONFIGS if (root / c).is_file())
    cfg.merge_from_file(str(root / name))
    cfg.MODEL.CLIP_ADAPTER.PROMPT_DIM = ARCH["transformer_width"]  # the tiny CLIP's width, as 512 is ViT-B's
    cfg.DATASETS.TRAIN = ("pomp_golden_stage_a",)
    cfg.DATASETS.TEST = ("pomp_golden_stage_a",)
    if cfg.MODEL.CLIP_ADAPTER.PROMPT_LEARNER == "pomp":
        cfg.MODEL.CLIP_ADAPTER.PROMPT_CHECKPOINT = str(prompt)
    return cfg, name


def _draws(mapper, record: dict, seed: int) -> dict:
    """The transforms ZSSeg's augmentations draw for ``record`` with numpy seeded ``seed``."""
    from detectron2.data import detection_utils as utils
    from detectron2.data import transforms as T
    from fvcore.transforms import HFlipTransform
    np.random.seed(seed)
    image = utils.read_image(record["file_name"], format="RGB")
    seg = utils.read_image(record["sem_seg_file_name"]).astype("double")
    aug = T.AugInput(image, sem_seg=seg)
    aug.category_id = record["category_id"]
    tfms = T.AugmentationList(mapper.tfm_gens)(aug).transforms
    flat = []
    for t in tfms:
        flat += list(getattr(t, "transforms", [t]))
    box, crop, resize = flat[0], flat[1], flat[2]
    return {"seed": seed, "box": [int(box.y0), int(box.x0), int(box.h), int(box.w)],
            "crop": [int(crop.y0), int(crop.x0), int(crop.h), int(crop.w)],
            "size": [int(resize.new_h), int(resize.new_w)],
            "flip": any(isinstance(t, HFlipTransform) for t in flat)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zsseg", help="a zsseg.baseline checkout (default: $ZSSEG_ROOT)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--work", help="where ZSSeg's code is copied (default: a temporary folder)")
    args = parser.parse_args(argv)
    root = _checkout(parser, args.zsseg)
    work = Path(args.work or tempfile.mkdtemp(prefix="zsseg_stage_a_"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    clip, proposal_classification, add_mask_former_config, mapper_mod, adapter = _import_zsseg(root, work)
    from detectron2.data import MetadataCatalog
    from detectron2.utils.events import EventStorage

    tiny, state = _tiny_clip(clip)
    torch.save(state, out / "clip.pt")
    (out / f"{OPEN_CLIP_NAME}.json").write_text(json.dumps(_open_clip_config(), indent=1) + "\n")
    torch.manual_seed(1)
    ctx = torch.randn(16, ARCH["transformer_width"]) * 0.02
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 0}, out / "prompt.pth")

    seen = [c for i, c in enumerate(CLASSES) if i not in UNSEEN]
    img, ann = _scene()
    base = np.full_like(ann, 255)  # ZSSeg's *_base annotation: seen classes as 0..S-1
    for k, c in enumerate(i for i in range(len(CLASSES)) if i not in UNSEEN):
        base[ann == c] = k
    Image.fromarray(img).save(out / "image.png")
    Image.fromarray(ann).save(out / "ann.png")
    Image.fromarray(base).save(work / "ann_base.png")
    (out / "classes.json").write_text(json.dumps({"classes": CLASSES, "unseen": UNSEEN}) + "\n")
    MetadataCatalog.get("pomp_golden_stage_a").set(stuff_classes=seen, ignore_label=255)  # patch 4
    category = seen.index(CLASSES[RECORD])
    record = {"file_name": str(out / "image.png"), "sem_seg_file_name": str(work / "ann_base.png"),
              "category_id": category, "height": HEIGHT, "width": WIDTH,
              "meta": {"dataset_name": "pomp_golden_stage_a"}}

    cfg, config_name = _cfg(root, add_mask_former_config, out / "prompt.pth")
    adapter.build_clip_model = lambda name, frozen=True: tiny  # patch 3
    mapper = mapper_mod.MaskFormerBinarySemanticDatasetMapper(cfg, is_train=True)
    kept, missed, mapped = None, None, None  # a kept view that is flipped, and a view that misses
    for seed in range(200):
        np.random.seed(seed)
        data = mapper(dict(record))
        draws = _draws(mapper, record, seed)
        if data is None and missed is None:
            missed = draws
        if data is not None and kept is None and draws["flip"]:
            kept, mapped = draws, data
        if kept and missed:
            break
    model = proposal_classification.ProposalClipClassifier(cfg)
    if cfg.MODEL.CLIP_ADAPTER.PROMPT_LEARNER == "learnable":
        model.clip_adapter.prompt_learner.prefix_prompt.data.copy_(ctx)
    seen_input = []
    model.clip_adapter.register_forward_pre_hook(lambda mod, inp: seen_input.append(inp[0].detach().clone()))
    model.eval()
    with torch.no_grad():
        logits = model([mapped])[0]["classification"][0]
    model.train()
    with EventStorage(1):
        loss = model([mapped])["loss_cls"].detach()
    torch.save({"view": seen_input[0][0], "logits": logits, "loss": loss}, out / "golden.pt")
    (out / "record.json").write_text(json.dumps({
        "category_id": RECORD, "category_name": CLASSES[RECORD], "config": config_name,
        "prompt_learner": cfg.MODEL.CLIP_ADAPTER.PROMPT_LEARNER,
        "min_size_train": list(cfg.INPUT.MIN_SIZE_TRAIN), "kept": kept, "missed": missed}, indent=1) + "\n")
    print(f"wrote {out} from {root / config_name}: view {tuple(seen_input[0].shape)}, logits {logits.tolist()}, "
          f"loss {float(loss):.6f}; draws kept {kept}, missed {missed}")


if __name__ == "__main__":
    main()
