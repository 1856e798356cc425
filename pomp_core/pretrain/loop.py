"""The training loop: optimizer steps over micro-batches, in lockstep across ranks, epoch ends.

Every rank runs every step, whatever its data: a micro-batch with no readable image still
goes through the (DDP-wrapped) text path with a zero loss, so the ranks' all-reduces stay in
step, and one small all-reduce per step (:meth:`ProcessGroup.agree`) tells every rank how many
micro-batches had data, the images skipped and the mean loss. The gradient is the mean over
the micro-batches that had data (DDP's mean over ranks, rescaled), and a step where none had
data makes no update on any rank.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional

import torch

from ..durable import kill_point
from ..progress import Progress
from ..prompt_io import save_prompt
from .checkpoint import CHECKPOINT
from .monitor import MetricsLog, plot_curves
from .optim import lr_at
from .selection import BEST

if TYPE_CHECKING:
    from .trainer import Pretrainer

logger = logging.getLogger(__name__)


def train_step(t: "Pretrainer", batches: List[Dict[str, torch.Tensor]]) -> Optional[Dict[str, float]]:
    cfg = t.cfg
    accumulate = len(batches)
    lr = lr_at(t.step, t.steps_per_epoch, cfg)
    for group in t.optimizer.param_groups:
        group["lr"] = lr
    t.optimizer.zero_grad(set_to_none=True)
    refreshed = False
    filled, loss_sum, acc_sum, classes = 0, 0.0, 0.0, 0
    for j, batch in enumerate(batches):
        with t.text_model.no_sync() if j < accumulate - 1 else contextlib.nullcontext():
            if "labels" in batch:
                if not refreshed:
                    t.proposal.refresh(t.step, t.encode_all_classes)
                    refreshed = True
                loss, logits, n_classes = t.micro_loss(batch, t.rank * accumulate + j)
                t.scaler.scale(loss / accumulate if accumulate > 1 else loss).backward()
                filled += 1
                loss_sum += loss.item()
                acc_sum += (logits.argmax(dim=1) == 0).float().mean().item()
                classes = max(classes, n_classes)
            elif t.world > 1:
                logger.warning("rank %d, step %d: no readable image in micro-batch %d; it joins the step "
                               "with no gradient", t.rank, t.step, j)
                if j == accumulate - 1:  # the micro-batch whose backward all-reduces: join it, zero gradient
                    with t.text_model.autocast():
                        (t.text([t.class_names[0]]).float().sum() * 0).backward()
    total = t.group.agree(torch.tensor([filled, sum(int(b["skipped"]) for b in batches), loss_sum, acc_sum],
                                       dtype=torch.float64))
    filled_all, skipped = int(total[0]), int(total[1])
    _count_skipped(t, skipped)
    if filled_all == 0:
        return None
    slots = t.world * accumulate
    if filled_all < slots:  # the mean over the micro-batches that had data
        if t.is_main:
            logger.warning("step %d: %d of %d micro-batches had no readable image; the step averages "
                           "the other %d", t.step, slots - filled_all, slots, filled_all)
        if t.prompt.ctx.grad is not None:
            t.prompt.ctx.grad.mul_(slots / filled_all)
    t.scaler.step(t.optimizer)
    t.scaler.update()
    return {"loss": float(total[2]) / filled_all, "acc_k": float(total[3]) / filled_all, "lr": lr,
            "classes_encoded": classes}


def _count_skipped(t: "Pretrainer", skipped: int) -> None:
    if skipped:
        t.skipped += skipped
        if t.is_main:
            logger.warning("skipped %d unreadable images (%d so far)", skipped, t.skipped)
        if t.skipped > t.cfg.data.max_skipped:
            raise RuntimeError(f"{t.skipped} unreadable images, more than data.max_skipped="
                               f"{t.cfg.data.max_skipped}: check the dataset (the last checkpoint "
                               f"is kept at {t.out / CHECKPOINT})")


def _steps(loader, accumulate: int) -> Iterator[List[Dict[str, torch.Tensor]]]:
    it = iter(loader)
    while True:
        batches = list(itertools.islice(it, accumulate))
        if len(batches) < accumulate:
            return
        yield batches


def fit(t: "Pretrainer") -> Path:
    cfg = t.cfg
    log = MetricsLog(t.out, cfg.train.tensorboard, resume_step=t.step,
                     redo_key="val_top1" if t.pending_validation else None) if t.is_main else None
    bar = Progress(total=t.total_steps, initial=t.step, desc="pomp", unit="step", disable=not t.is_main)
    images_per_step = cfg.optim.batch_size * cfg.optim.accumulate * t.world
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    try:
        if t.pending_validation:  # resumed from an epoch end killed before or during its validation
            _validate(t, log)
        while t.step < t.total_steps:
            epoch, offset = divmod(t.step, t.steps_per_epoch)
            t.data.start_epoch(epoch, offset)
            tic = time.perf_counter()
            for batches in _steps(t.data.loader(), cfg.optim.accumulate):
                # a step with no readable image still counts (no update), so steps stay
                # aligned with the sampler's order for resume
                metrics = t.train_step(batches)
                t.step += 1
                speed = images_per_step / (time.perf_counter() - tic)
                tic = time.perf_counter()
                bar.update(1)
                if metrics:
                    bar.set_postfix(epoch=epoch, loss=f"{metrics['loss']:.3f}", acc=f"{metrics['acc_k']:.2f}",
                                    lr=f"{metrics['lr']:.2e}", img_s=f"{speed:.1f}")
                if log and metrics and (t.step % cfg.train.log_every == 0 or t.step == t.total_steps):
                    log.log(t.step, {**metrics, "epoch": epoch, "images_per_s": speed})
                epoch_end = t.step % t.steps_per_epoch == 0 or t.step >= t.total_steps
                if t.step % cfg.train.save_every == 0 and not epoch_end:  # epoch ends save below
                    t.save_checkpoint(log)
                kill_point("step", t.step)
                if t.step >= t.total_steps:
                    break
            _end_epoch(t, log)
    except KeyboardInterrupt:
        path = t.save_checkpoint(log)
        if path:
            logger.warning("interrupted at step %d; saved %s (continue with --resume)", t.step, path)
        raise
    finally:
        bar.close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if log:
            log.close()
    return _finish(t)


def _epoch(t: "Pretrainer") -> int:
    """The 1-based epoch the current step ends (the release's model.pth.tar-<epoch>)."""
    return math.ceil(t.step / t.steps_per_epoch)


def _end_epoch(t: "Pretrainer", log: Optional[MetricsLog]) -> None:
    """Keep the epoch's prompt, checkpoint, then validate (an epoch end or the last step)."""
    if t.is_main:
        t.selection.save_epoch(t.prompt, _epoch(t), step=t.step)
    t.pending_validation = True
    t.save_checkpoint(log)
    kill_point("epoch_end", t.step)
    _validate(t, log)


def _validate(t: "Pretrainer", log: Optional[MetricsLog]) -> None:
    epoch = (t.step - 1) // t.steps_per_epoch  # metrics.jsonl counts epochs from 0
    top1 = t.evaluate()
    if top1 is not None:
        t.selection.record(t.prompt, _epoch(t), top1, step=t.step)
        if log:
            log.log(t.step, {"val_top1": top1, "epoch": epoch})
            logger.info("epoch %d: val top-1 over %d classes %.2f%%", _epoch(t), t.num_classes, 100 * top1)
    t.wait_for_rank0()  # the other ranks wait for rank 0's validation here
    t.pending_validation = False


def _finish(t: "Pretrainer") -> Path:
    cfg = t.cfg
    final = t.out / "prompt.pth"
    if t.is_main:
        save_prompt(t.prompt, final, step=t.step, epoch=_epoch(t), num_classes=t.num_classes,
                    k=cfg.sampling.k, correction=cfg.sampling.correction)
        kill_point("final_prompt")
        plot = plot_curves(t.out / "metrics.jsonl", t.out / "training_curves.png",
                           title=f"POMP {cfg.model.name}, M={t.prompt.n_ctx}, K={cfg.sampling.k}, "
                                 f"N={t.num_classes}")
        logger.info("last prompt: %s; curves: %s; metrics: %s", final, plot, t.out / "metrics.jsonl")
        if t.selection.best_epoch is not None:
            logger.info("best epoch %d (val top-1 %.2f%%): %s", t.selection.best_epoch,
                        100 * t.selection.best_top1, t.out / BEST)
    t.wait_for_rank0()
    return t.out / BEST if cfg.train.final_prompt == "best" else final


def _raise_interrupt(signum, frame):  # torchrun and schedulers stop jobs with SIGTERM
    raise KeyboardInterrupt(f"signal {signum}")
