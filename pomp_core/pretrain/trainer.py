"""POMP prompt pre-training: local contrast + local correction, single process or torchrun DDP."""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import signal
import time
from datetime import timedelta
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from ..clip_loader import load_clip
from ..durable import atomic_write_text, kill_point
from ..embeddings import class_embeddings
from ..images import ImageListDataset, collate_skipping, eval_transform
from ..progress import Progress
from ..prompt import PromptLearner
from ..prompt_io import save_prompt
from ..text_encoder import PromptedTextEncoder
from ..text_tower import text_tower
from ..zero_shot import image_features, top1
from .checkpoint import CHECKPOINT, FORMAT, latest_checkpoint, load_checkpoint, save_checkpoint
from .config import PretrainConfig
from .contrast import build_contrast_batch, local_contrast_logits, local_contrast_loss, sample_negatives
from .data import ResumableDistributedSampler, build_split_index, read_class_names, train_transform
from .feature_cache import FeatureCacheDataset, build_feature_cache
from .monitor import MetricsLog, plot_curves
from .proposals import build_proposal

logger = logging.getLogger(__name__)


class PromptText(nn.Module):
    """The trainable part as one module (what DDP wraps): prompt -> text features of names."""

    def __init__(self, prompt: PromptLearner, encoder: PromptedTextEncoder) -> None:
        super().__init__()
        self.prompt = prompt
        self.__dict__["encoder"] = encoder  # the frozen CLIP is not a submodule: DDP syncs only ctx

    def forward(self, names: List[str]) -> torch.Tensor:
        return self.encoder(self.prompt, names)


def lr_at(step: int, steps_per_epoch: int, cfg: PretrainConfig) -> float:
    """The learning rate of ``step`` under ``optim.schedule``.

    ``epoch_cosine`` (Dassl's ConstantWarmupScheduler over CosineAnnealingLR(T_max=epochs),
    stepped once per epoch, recounted after the warmup): warmup_lr for warmup_epochs, then
    ``lr/2 (1 + cos(pi (e - warmup_epochs) / epochs))`` for epoch e. ``step_cosine``:
    warmup_lr for warmup_epochs, then cosine from lr to 0 over the remaining steps.
    """
    o = cfg.optim
    if o.schedule == "epoch_cosine":
        epoch = step // steps_per_epoch
        if epoch < o.warmup_epochs:
            return o.warmup_lr
        return 0.5 * o.lr * (1 + math.cos(math.pi * (epoch - o.warmup_epochs) / o.epochs))
    if o.schedule != "step_cosine":
        raise ValueError(f"optim.schedule must be epoch_cosine or step_cosine, got '{o.schedule}'")
    warmup = o.warmup_epochs * steps_per_epoch
    if step < warmup:
        return o.warmup_lr
    total = max(1, o.epochs * steps_per_epoch - warmup)
    return 0.5 * o.lr * (1 + math.cos(math.pi * (step - warmup) / total))


def _step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    # Negatives depend only on (seed, rank, step): each rank draws its own, and a resumed
    # run draws exactly what the uninterrupted one would have.
    return torch.Generator().manual_seed(seed * 1_000_003 + rank * 7_919 + step)


class Pretrainer:
    def __init__(self, cfg: PretrainConfig) -> None:
        self.cfg = cfg
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want = cfg.train.device
        use_cuda = torch.cuda.is_available() if want == "auto" else want == "cuda"
        self.device = torch.device(f"cuda:{self.local_rank}" if use_cuda else "cpu")
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(seconds=cfg.train.dist_timeout_s))
        # Rank 0's long work (scanning the image folders, the feature cache, validation) is
        # waited for in this group, not inside a training collective with dist_timeout_s.
        self._wait_group = dist.new_group(backend="gloo", timeout=timedelta(seconds=cfg.train.rank0_wait_s)) \
            if self.world > 1 else None
        if use_cuda:
            torch.cuda.set_device(self.device)
        self.out = Path(cfg.train.output_dir)
        if self.is_main:
            self.out.mkdir(parents=True, exist_ok=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier(group=self._wait_group)

    def _autocast(self):
        p = self.cfg.train.precision
        if p in ("fp32", "fp16_weights"):  # fp16_weights: the model itself is in fp16
            return contextlib.nullcontext()
        if p not in ("bf16", "fp16"):
            raise ValueError(f"train.precision must be fp32, bf16, fp16 or fp16_weights, got '{p}'")
        return torch.autocast(self.device.type, dtype=torch.bfloat16 if p == "bf16" else torch.float16)

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        cfg = self.cfg
        d = cfg.data
        # Everything that can fail on bad input fails here, before any training.
        if not d.root:
            raise ValueError("data.root is not set: pass data.root=/path/to/class/folders "
                             "(one folder of images per class)")
        index = build_split_index(d.root, d.shots, d.val_per_class, d.split_seed, d.index_cache, d.val_root) \
            if self.is_main else None
        self._barrier()
        if not self.is_main:  # read the index rank 0 cached
            index = build_split_index(d.root, d.shots, d.val_per_class, d.split_seed, d.index_cache, d.val_root)
        self.index = index
        self.class_names = read_class_names(index.classes, d.names_file, d.miil_tree, d.wordnet, d.lemmas, d.trusted)
        self.num_classes = len(self.class_names)
        if cfg.sampling.k < 2:
            raise ValueError(f"sampling.k must be at least 2, got {cfg.sampling.k}")
        lr_at(0, 1, cfg)  # an unknown optim.schedule fails here
        half = cfg.train.precision == "fp16_weights"
        if half and self.device.type != "cuda":
            raise ValueError("train.precision=fp16_weights (the release's fp16) needs a GPU; "
                             "use fp32 or bf16 on CPU")

        torch.manual_seed(cfg.train.seed)  # random-weight models (tests, smoke runs) are reproducible
        self.model, self.tokenizer, _ = load_clip(cfg.model.name, cfg.model.pretrained, device=self.device,
                                                  precision="fp16" if half else "fp32")
        if cfg.model.grad_checkpointing:
            text_tower(self.model).transformer.grad_checkpointing = True
        width = text_tower(self.model).width
        if cfg.prompt.init_words:
            prompt = PromptLearner.from_words(cfg.prompt.init_words, self.model, self.tokenizer,
                                              position=cfg.prompt.position)
        else:
            prompt = PromptLearner(cfg.prompt.n_ctx, width, cfg.prompt.position,
                                   init_std=cfg.prompt.init_std, model_name=self.model.pomp_model_name)
        self.prompt = prompt.to(self.device, torch.float16 if half else torch.float32)
        self.encoder = PromptedTextEncoder(self.model, self.tokenizer)
        self.encoder.token_ids(self.class_names, prompt.n_ctx, prompt.position)  # every name fits?
        text = PromptText(self.prompt, self.encoder)
        self.text = DistributedDataParallel(text, device_ids=[self.device] if self.device.type == "cuda" else None) \
            if self.world > 1 else text
        self.optimizer = torch.optim.SGD([self.prompt.ctx], lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                                         weight_decay=cfg.optim.weight_decay)
        self.proposal = build_proposal(cfg.sampling.proposal, [y for _, y in index.train], self.num_classes,
                                       cfg.sampling.refresh_steps, cfg.sampling.temperature,
                                       cfg.sampling.uniform_mix)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.train.precision == "fp16"
                                           and self.device.type == "cuda")

        transform = train_transform(d.image_size, d.randaugment) if d.augment else eval_transform(d.image_size)
        images = ImageListDataset(index.root, index.train, transform, views=d.views, seed=cfg.train.seed)
        if cfg.train.feature_cache:
            cache = build_feature_cache(self, images, Path(cfg.train.feature_cache_dir or self.out / "feature_cache"))
            self.dataset = FeatureCacheDataset(cache, index.train, views=d.views, seed=cfg.train.seed)
        else:
            self.dataset = images
        self.sampler = ResumableDistributedSampler(self.dataset, num_replicas=self.world, rank=self.rank,
                                                   shuffle=True, seed=cfg.train.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // cfg.optim.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(f"{len(index.train)} training images give no full batch of "
                             f"{cfg.optim.batch_size} per process: lower optim.batch_size")
        self.total_steps = cfg.optim.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.step = 0
        self.skipped = 0
        self.pending_validation = False  # the checkpoint at an epoch end precedes its validation

    def loader(self) -> DataLoader:
        w = self.cfg.data.workers
        return DataLoader(self.dataset, batch_size=self.cfg.optim.batch_size, sampler=self.sampler,
                          num_workers=w, collate_fn=collate_skipping, drop_last=True,
                          pin_memory=self.device.type == "cuda", persistent_workers=False)

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict:
        return {"format": FORMAT, "ctx": self.prompt.ctx.detach().cpu(),
                "optimizer": self.optimizer.state_dict(), "step": self.step, "skipped": self.skipped,
                "proposal": self.proposal.state_dict(), "scaler": self.scaler.state_dict(),
                "pending_validation": self.pending_validation, "config": self.cfg.to_dict()}

    def save_checkpoint(self, log: Optional[MetricsLog] = None) -> Optional[Path]:
        """Keep the last two checkpoints, written atomically (see checkpoint.py); the metrics
        logged so far are flushed first, so a resume from this checkpoint finds them."""
        if not self.is_main:
            return None
        if log is not None:
            log.flush()
        return save_checkpoint(self.state_dict(), self.out, self.step)

    def latest_checkpoint(self) -> Optional[Path]:
        return latest_checkpoint(self.out)

    def resume(self, path: Optional[str] = None) -> None:
        """Continue from ``path`` (default: the newest checkpoint in the output folder)."""
        path = Path(path) if path else (self.latest_checkpoint() or self.out / CHECKPOINT)
        state = load_checkpoint(path)
        if state["ctx"].shape != self.prompt.ctx.shape:
            raise ValueError(f"checkpoint prompt {tuple(state['ctx'].shape)} does not match this "
                             f"config's {tuple(self.prompt.ctx.shape)}")
        with torch.no_grad():
            self.prompt.ctx.copy_(state["ctx"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.proposal.load_state_dict(state["proposal"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.skipped = state["step"], state["skipped"]
        self.pending_validation = state.get("pending_validation", False)
        logger.info("resumed from %s at step %d", path, self.step)

    # ---------------------------------------------------------------- training
    def encode_all_classes(self) -> torch.Tensor:
        with self._autocast():
            return class_embeddings(self.model, self.tokenizer, self.prompt, self.class_names,
                                    normalize=True, progress=False, allow_duplicates=True)

    def image_features(self, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        if batch["images"].dim() == 3:  # cached features [b, V, D], not pixels [b, V, 3, H, W]
            return batch["images"].flatten(0, 1).to(self.device).float()
        images = batch["images"].flatten(0, 1).to(self.device, self.prompt.ctx.dtype, non_blocking=True)
        with torch.no_grad(), self._autocast():
            return self.model.encode_image(images).float()

    def train_step(self, batch: Dict[str, torch.Tensor]) -> Dict[str, float]:
        cfg = self.cfg
        views = batch["images"].shape[1]
        labels = batch["labels"].repeat_interleave(views)
        feats = self.image_features(batch)

        self.proposal.refresh(self.step, self.encode_all_classes)
        q = self.proposal.distribution(labels)
        negatives = sample_negatives(self.num_classes, cfg.sampling.k, q,
                                     _step_generator(cfg.train.seed, self.rank, self.step))
        cb = build_contrast_batch(labels, negatives, self.num_classes, q,
                                  cfg.sampling.log_base if cfg.sampling.correction else None)
        with self._autocast():
            text = self.text([self.class_names[c] for c in cb.classes.tolist()])
        logits = local_contrast_logits(feats, text.float(), cb, self.model.logit_scale.exp().float())
        loss = local_contrast_loss(logits)

        lr = lr_at(self.step, self.steps_per_epoch, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        acc = (logits.argmax(dim=1) == 0).float().mean()
        return {"loss": loss.item(), "acc_k": acc.item(), "lr": lr, "classes_encoded": len(cb.classes)}

    @torch.no_grad()
    def evaluate(self) -> Optional[float]:
        """Top-1 over all N classes on the held-out split (rank 0)."""
        if not self.index.val or not self.is_main:
            return None
        kill_point("validation", self.step)
        with self._autocast():
            feats, labels = image_features(self.model, self.index.val_root or self.index.root, self.index.val,
                                           eval_transform(self.cfg.data.image_size), batch_size=64,
                                           workers=self.cfg.data.workers)
        return top1(feats, labels, self.encode_all_classes().float())

    def _check_skipped(self, batch: Dict[str, torch.Tensor]) -> None:
        skipped = int(batch["skipped"])
        if skipped:
            self.skipped += skipped
            logger.warning("skipped %d unreadable images (%d so far)", skipped, self.skipped)
            if self.skipped > self.cfg.data.max_skipped:
                raise RuntimeError(f"{self.skipped} unreadable images, more than data.max_skipped="
                                   f"{self.cfg.data.max_skipped}: check the dataset (the last checkpoint "
                                   f"is kept at {self.out / CHECKPOINT})")

    def fit(self) -> Path:
        """Train to the end (or train.max_steps); return the final prompt file."""
        cfg = self.cfg
        log = MetricsLog(self.out, cfg.train.tensorboard, resume_step=self.step,
                         redo_key="val_top1" if self.pending_validation else None) if self.is_main else None
        bar = Progress(total=self.total_steps, initial=self.step, desc="pomp", unit="step",
                       disable=not self.is_main)
        images_per_step = cfg.optim.batch_size * self.world
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if _main_thread() else None
        try:
            if self.pending_validation:  # resumed from an epoch end killed before or during its validation
                self._validate(log)
            while self.step < self.total_steps:
                epoch, offset = divmod(self.step, self.steps_per_epoch)
                self.sampler.set_epoch(epoch)
                self.dataset.set_epoch(epoch)
                self.sampler.set_start(offset * cfg.optim.batch_size)
                tic = time.perf_counter()
                for batch in self.loader():
                    self._check_skipped(batch)
                    # a batch with no readable image still counts as a step (no update), so
                    # steps stay aligned with the sampler's order for resume
                    metrics = self.train_step(batch) if "labels" in batch else None
                    self.step += 1
                    speed = images_per_step / (time.perf_counter() - tic)
                    tic = time.perf_counter()
                    bar.update(1)
                    if metrics:
                        bar.set_postfix(epoch=epoch, loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc_k']:.2f}",
                                        lr=f"{metrics['lr']:.2e}", img_s=f"{speed:.1f}")
                    if log and metrics and (self.step % cfg.train.log_every == 0 or self.step == self.total_steps):
                        log.log(self.step, {**metrics, "epoch": epoch, "images_per_s": speed})
                    epoch_end = self.step % self.steps_per_epoch == 0 or self.step >= self.total_steps
                    if self.step % cfg.train.save_every == 0 and not epoch_end:  # epoch ends save below
                        self.save_checkpoint(log)
                    kill_point("step", self.step)
                    if self.step >= self.total_steps:
                        break
                self.pending_validation = True  # an epoch end (or the last step): validate after saving
                self.save_checkpoint(log)
                kill_point("epoch_end", self.step)
                self._validate(log)
        except KeyboardInterrupt:
            path = self.save_checkpoint(log)
            if path:
                logger.warning("interrupted at step %d; saved %s (continue with --resume)", self.step, path)
            raise
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            if log:
                log.close()
        final = self.out / "prompt.pth"
        if self.is_main:
            save_prompt(self.prompt, final, step=self.step, epoch=math.ceil(self.step / self.steps_per_epoch),
                        num_classes=self.num_classes,
                        k=cfg.sampling.k, correction=cfg.sampling.correction)
            kill_point("final_prompt")
            plot = plot_curves(self.out / "metrics.jsonl", self.out / "training_curves.png",
                               title=f"POMP {cfg.model.name}, M={self.prompt.n_ctx}, K={cfg.sampling.k}, "
                                     f"N={self.num_classes}")
            logger.info("final prompt: %s; curves: %s; metrics: %s", final, plot, self.out / "metrics.jsonl")
        self._barrier()
        return final

    def _validate(self, log: Optional[MetricsLog]) -> None:
        epoch = (self.step - 1) // self.steps_per_epoch
        top1 = self.evaluate()
        if top1 is not None and log:
            log.log(self.step, {"val_top1": top1, "epoch": epoch})
            logger.info("epoch %d: val top-1 over %d classes %.2f%%", epoch, self.num_classes, 100 * top1)
        self._barrier()  # the other ranks wait for rank 0's validation here
        self.pending_validation = False

    def write_config(self) -> None:
        """config.json in the output folder (rank 0), written atomically."""
        if self.is_main:
            atomic_write_text(self.out / "config.json", json.dumps(self.cfg.to_dict(), indent=2))


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _raise_interrupt(signum, frame):  # torchrun and schedulers stop jobs with SIGTERM
    raise KeyboardInterrupt(f"signal {signum}")
