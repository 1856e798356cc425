#!/usr/bin/env python
"""Train / evaluate a detectron2 detector with the POMP classifier (pomp_det).

    python tools/train_net.py --config-file configs/det/lvis-base_pomp_mask_rcnn_R50_FPN_4x.yaml \
        --num-gpus 8 [--resume] [--eval-only MODEL.WEIGHTS model.pth] [KEY VALUE ...]
    python tools/train_net.py --zoo-config COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml \
        --config-file configs/det/Base-POMP.yaml MODEL.POMP.EMBEDDINGS coco_pomp.npy

``--num-gpus N`` without CUDA starts N CPU processes (gloo backend). ``--zoo-config NAME``
starts from a detectron2 model-zoo config (configs may also say ``_BASE_: "zoo:NAME"``);
``--world DIR`` registers a synthetic world's datasets. ``--resume`` continues from the last
checkpoint in OUTPUT_DIR and, when there is none yet (a requeued job that died early), starts
from MODEL.WEIGHTS with a warning, as detectron2 does.
"""
import logging
import os
import weakref
from collections import OrderedDict

import detectron2.utils.comm as comm
from detectron2.data import MetadataCatalog
from detectron2.engine import (AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model,
                               default_argument_parser, default_setup)
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator, LVISEvaluator, verify_results

import pomp_det
from pomp_core.cli import run_tool
from pomp_core.durable import KILL_ENV
from pomp_det.checkpoint import DurableCheckpointer, KillPointHook
from pomp_det.centernet import build_optimizer
from pomp_det.data.multi_dataset import build_multi_dataset_train_loader
from pomp_det.data.world import register_world
from pomp_det.cli import check_cfg_inputs, check_gpus, load_cfg_checked
from pomp_det.launch import ddp_kwargs, launch
from pomp_det.vocabulary import vocabulary_for_dataset


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer.__init__, but the model is wrapped with ddp_kwargs(cfg): unused
        # parameters allowed (image-label batches) and CPU processes (gloo) supported
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, **ddp_kwargs(cfg))
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        # checkpoints renamed once whole, an atomic last_checkpoint (pomp_det/checkpoint.py)
        self.checkpointer = DurableCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter, self.max_iter, self.cfg = 0, cfg.SOLVER.MAX_ITER, cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)  # SOLVER.OPTIMIZER: SGD (detectron2's) or ADAMW

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        if MetadataCatalog.get(dataset_name).get("evaluator_type") == "lvis":
            return LVISEvaluator(dataset_name, output_dir=output_folder)
        # the pure-Python COCOeval: detectron2 here has no C++ extension
        return COCOEvaluator(dataset_name, output_dir=output_folder, use_fast_impl=False)

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.DATALOADER.MULTI_DATASET:
            return build_multi_dataset_train_loader(cfg)
        return super().build_train_loader(cfg)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        # one dataset at a time: each may need its own vocabulary (MODEL.POMP.TEST_VOCABULARY)
        results = OrderedDict()
        for name in cfg.DATASETS.TEST:
            one = cfg.clone()
            one.defrost()
            one.DATASETS.TEST = (name,)
            with vocabulary_for_dataset(model, cfg, name):
                results[name] = super().test(one, model)
        return results if len(results) != 1 else results[name]


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
