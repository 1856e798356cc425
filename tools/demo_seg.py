#!/usr/bin/env python
"""Segment any vocabulary in images with a trained pomp_seg segmentor; writes each image
beside its colour-coded segmentation, with a legend.

    .venv/bin/python tools/demo_seg.py configs/seg/zsseg-r18tiny_world.py \
        work_dirs/zsseg-r18tiny_world/iter_300.pth --input output/world/segmentation/img_dir/val/00000.png \
        --vocabulary output/world/segmentation --output output/demo_seg
"""
from __future__ import annotations

import argparse
import os

import numpy as np
from mmengine.config import Config, DictAction
from mmseg.apis import inference_model, init_model
from PIL import Image

from pomp_core.cli import require_file, run_tool
from pomp_seg.checkpoint import trust_checkpoints_under
from pomp_seg.text_encoder import encoder_class_names
from pomp_seg.visualize import draw_segmentation


def main(argv=None) -> list:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("checkpoint")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    p.add_argument("--output", required=True, help="folder for the drawn images")
    p.add_argument("--vocabulary", default=None, help="'name,name,...', a names file (one a line), a "
                   "COCO/LVIS json or a world classes.json (or its folder); default: the config's")
    p.add_argument("--device", default="cpu")
    p.add_argument("--cfg-options", nargs="+", action=DictAction, default={})
    args = p.parse_args(argv)
    require_file(args.config, "config")
    require_file(args.checkpoint, "checkpoint")
    for path in args.input:
        require_file(path, "--input image")
        try:  # a corrupt file fails here, before the model loads
            with Image.open(path) as im:
                im.verify()
        except Exception as err:
            raise ValueError(f"cannot read image '{path}' ({err}): pass JPEG or PNG files") from None
    cfg = Config.fromfile(args.config)
    cfg.merge_from_dict(args.cfg_options)
    trust_checkpoints_under(os.path.dirname(os.path.abspath(args.checkpoint)))  # named by the user
    model = init_model(cfg, args.checkpoint, device=args.device)
    if args.vocabulary:
        model.set_vocabulary(encoder_class_names(vocabulary=args.vocabulary))
    names = model.text_encoder.class_names
    os.makedirs(args.output, exist_ok=True)
    written = []
    for path in args.input:
        seg = inference_model(model, path).pred_sem_seg.data[0].cpu().numpy()
        image = np.asarray(Image.open(path).convert("RGB"))
        out = os.path.join(args.output, os.path.splitext(os.path.basename(path))[0] + "_seg.png")
        draw_segmentation(image, seg, names).save(out)
        print(f"{path}: {', '.join(names[c] for c in np.unique(seg) if c < len(names))} -> {out}")
        written.append(out)
    return written


if __name__ == "__main__":
    run_tool(main)
