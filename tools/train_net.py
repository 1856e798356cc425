#!/usr/bin/env python
"""Train / evaluate a detectron2 detector with the POMP classifier (pomp_det).

    python tools/train_net.py --config-file configs/det/lvis-base_pomp_mask_rcnn_R50_FPN_4x.yaml \
        --num-gpus 8 [--resume] [--eval-only MODEL.WEIGHTS model.pth] [KEY VALUE ...]
    python tools/train_net.py --zoo-config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \
        --config-file configs/det/Base-POMP.yaml MODEL.POMP.EMBEDDINGS coco_pomp.npy

``--config-file`` also takes Detic's own configs (their keys read as ours, pomp_det/detic_keys.py).
``--num-gpus N`` without CUDA starts N CPU processes (gloo backend). ``--zoo-config NAME``
starts from a detectron2 model-zoo config (configs may also say ``_BASE_: "zoo:NAME"``);
``--world DIR`` registers a synthetic world's datasets. ``--resume`` continues from the last
checkpoint in OUTPUT_DIR and, when there is none yet (a requeued job that died early), starts
from MODEL.WEIGHTS with a warning, as detectron2 does.
"""
import logging
import os

import detectron2.utils.comm as comm
from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results

import pomp_det
from pomp_core.cli import run_tool
from pomp_core.durable import KILL_ENV
from pomp_det.checkpoint import DurableCheckpointer, KillPointHook
from pomp_det.data.world import register_world
from pomp_det.engine import Trainer
from pomp_det.cli import check_cfg_inputs, check_gpus, load_cfg_checked
from pomp_det.launch import launch


def setup(args):
    if args.world:
        register_world(args.world)
    cfg = pomp_det.load_pomp_cfg(args.config_file, args.opts, zoo_config=args.zoo_config)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        DurableCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    if args.resume and not trainer.checkpointer.has_checkpoint():
        logging.getLogger("detectron2").warning("--resume: no checkpoint in %s yet; starting from "
                                                "MODEL.WEIGHTS", cfg.OUTPUT_DIR)
    trainer.resume_or_load(resume=args.resume)
    if os.environ.get(KILL_ENV):  # tests stop the real process at a named point
        trainer.register_hooks([KillPointHook()])
    return trainer.train()


def check_inputs(args) -> None:
    """Fail in the launching process, in a second, on a missing file or a bad key."""
    check_gpus(args.num_gpus)
    if args.world:
        register_world(args.world)
    check_cfg_inputs(load_cfg_checked(args.config_file, args.opts, zoo_config=args.zoo_config))


def parser():
    p = default_argument_parser()
    p.add_argument("--zoo-config", default="", help="detectron2 model-zoo config to start from, "
                   "e.g. LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml")
    p.add_argument("--world", default="", help="register the synthetic world written in this folder")
    return p


if __name__ == "__main__":
    args = run_tool(parser().parse_args)
    logging.getLogger(__name__).info("Command line arguments: %s", args)
    run_tool(check_inputs, args)
    run_tool(launch, main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
             dist_url=args.dist_url, args=(args,))
