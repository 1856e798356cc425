"""``Trainer``: detectron2's DefaultTrainer for pomp_det models (tools/train_net.py launches it).

What it changes: DDP arguments for image-label batches and CPU processes, crash-safe
checkpoints, the recipe's optimizer, Detic's loaders (multi-dataset, or detectron2's with
Detic's resize-and-crop), backbone-only fp16 (``FP16``), and a test vocabulary per dataset.
"""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict

import detectron2.utils.comm as comm
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, create_ddp_model
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator, LVISEvaluator

from .centernet import build_optimizer
from .checkpoint import DurableCheckpointer
from .data.multi_dataset import build_multi_dataset_train_loader, dataset_augmentations
from .launch import ddp_kwargs
from .vocabulary import vocabulary_for_dataset

logger = logging.getLogger(__name__)


class Trainer(DefaultTrainer):
    def __init__(self, cfg):
        # DefaultTrainer.__init__, but the model is wrapped with ddp_kwargs(cfg): unused
        # parameters allowed (image-label batches) and CPU processes (gloo) supported
        TrainerBase.__init__(self)
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        # FP16 (Detic's): autocast inside the backbone only, but the loss still needs the scaler
        scaled = cfg.SOLVER.AMP.ENABLED or getattr(model, "fp16", False)
        model = create_ddp_model(model, **ddp_kwargs(cfg))
        self._trainer = (AMPTrainer if scaled else SimpleTrainer)(model, data_loader, optimizer)
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
        """Detic's two loaders: several datasets (DATALOADER.MULTI_DATASET, per-process batch
        sizes), or detectron2's (SOLVER.IMS_PER_BATCH over all processes, SAMPLER_TRAIN), whose
        mapper resizes and crops as Detic's EfficientDetResizeCrop when INPUT.DATASET_AUG says so."""
        if cfg.DATALOADER.MULTI_DATASET:
            return build_multi_dataset_train_loader(cfg)
        if cfg.INPUT.DATASET_AUG == "resize_scale_crop":
            mapper = DatasetMapper(cfg, True, augmentations=dataset_augmentations(cfg, 0))
            return build_detection_train_loader(cfg, mapper=mapper)
        return build_detection_train_loader(cfg)

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
