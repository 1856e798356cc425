#!/usr/bin/env python
"""Detect any vocabulary in images with a POMP-classifier detector; draws boxes and masks.

    python tools/demo_det.py --config-file configs/det/lvis-base_pomp_mask_rcnn_R50_FPN_4x.yaml \
        --input img1.jpg img2.jpg --output out/ --vocabulary lvis|coco|"cat,dog"|names.txt|emb.npy \
        MODEL.WEIGHTS model_final.pth
"""
import argparse
import os

import cv2
import torch
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import Visualizer

import pomp_det
from pomp_core.cli import require_file, run_tool
from pomp_det.data.world import register_world
from pomp_det.cli import check_cfg_inputs, load_cfg_checked
from pomp_det.vocabulary import configure_vocabulary


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--zoo-config", default="", help="detectron2 model-zoo config to start from")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    p.add_argument("--output", required=True, help="folder for the drawn images")
    p.add_argument("--vocabulary", default="", help="lvis | coco | a registered dataset | 'a,b,c' | "
                   "names file | annotation json | .npy embeddings; default: the training vocabulary")
    p.add_argument("--world", default="", help="register the synthetic world written in this folder")
    p.add_argument("--confidence", type=float, default=0.5)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    for path in args.input:
        require_file(path, "--input image")
    if args.world:
        register_world(args.world)
    cfg = load_cfg_checked(args.config_file, args.opts, zoo_config=args.zoo_config)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence
    if not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    # the model is built for the demo's vocabulary: the training embeddings are not needed
    names = configure_vocabulary(cfg, args.vocabulary) if args.vocabulary else None
    check_cfg_inputs(cfg, datasets=False)
    cfg.freeze()
    predictor = DefaultPredictor(cfg)
    if names is None:
        n = predictor.model.roi_heads.num_classes
        # an .npy vocabulary has no names: the training set's would mislabel its classes
        train = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]) if cfg.DATASETS.TRAIN and not args.vocabulary else None
        known = train.get("thing_classes") if train is not None else None
        names = known if known and len(known) == n else [f"class {i}" for i in range(n)]
    metadata = MetadataCatalog.get("__pomp_demo")
    metadata.set(thing_classes=list(names))
    os.makedirs(args.output, exist_ok=True)
    for path in args.input:
        img = cv2.imread(path)
        if img is None:
            raise FileNotFoundError(f"cannot read image '{path}'")
        instances = predictor(img)["instances"].to("cpu")
        drawn = Visualizer(img[:, :, ::-1], metadata).draw_instance_predictions(instances)
        out = os.path.join(args.output, os.path.basename(path))
        cv2.imwrite(out, drawn.get_image()[:, :, ::-1])
        print(f"{path}: {len(instances)} detections -> {out}")


if __name__ == "__main__":
    run_tool(main)
