"""The embedded default: one POMP prompt, three tasks, against the hand-crafted prompt, on the
synthetic world in CPU minutes.

1. write the world's renderings (classification; detection scenes and image labels;
   segmentation scenes);
2. pre-train a prompt on the seen classes with the shipped tiny CLIP (K << N), with and
   without local correction;
3. with the hand-crafted prompt and with the POMP prompt, unchanged:
   classification: zero-shot top-1 on held-out images of seen and unseen classes;
   detection: Detic's world recipe trained on the base classes with that prompt's class
   embeddings, box AP / APr (novel) with the full vocabulary;
   segmentation: ZSSeg, stage (a) started from that prompt, then stage (b); seen / unseen
   mIoU and hIoU with the full vocabulary;
   detection and segmentation at several training seeds, the same seeds for both prompts;
4. write the table (Markdown, CSV), one figure, and each task's margin with its uncertainty.

Trainings run in a pool of worker processes (two by default: two cores, one thread each).
Every finished stage is cached as JSON keyed by its settings, so a re-run re-prints the table.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from pomp_core.durable import atomic_write_json

from . import WorldConfig, write_world
from .report import HAND, POMP, POMP_NC, write_results
from .tasks import classification, detection, segmentation

logger = logging.getLogger(__name__)
TASKS = ("cls", "det", "seg")
PART = {"cls": "classification", "det": "detection", "seg": "segmentation"}


@dataclass(frozen=True)
class Settings:
    """What the detection and segmentation trainings run: the seeds (shared by both prompts)
    and the iterations of the detector and of ZSSeg's stage (b)."""
    seeds: Tuple[int, ...] = (1, 2)
    det_iters: int = 300
    seg_iters: int = 600


FULL = Settings()
QUICK = Settings(seeds=(1,), det_iters=150, seg_iters=200)  # the pipeline end to end, not a measurement
WORLD = WorldConfig(det_images=(200, 80))  # the detection world of docs/detection.md


def _digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _stored(path: Path, key: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The cache file's content if its key is ``key`` (compared as JSON: tuples read back as lists)."""
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == json.loads(json.dumps(key)):
            return stored
    return None


def cached(path: Path, key: Dict[str, Any], compute: Callable[[], Any]) -> Any:
    """``compute()``'s result, stored in ``path`` with ``key``; a stored one whose key matches is returned instead."""
    stored = _stored(path, key)
    if stored is not None:
        return stored["result"]
    result = compute()
    atomic_write_json(path, {"key": key, "result": result})
    return result


def _job(spec: Tuple[str, str, Dict[str, Any], Dict[str, Any]]) -> Tuple[str, Any, float]:
    """A pool worker's stage: ``(name, cache file, key, kwargs)`` -> (name, result, seconds).
    Its output goes to a log file beside the cache: the terminal keeps the progress lines."""
    name, cache, key, kwargs = spec
    log = Path(cache).with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    fn = {"pretrain": _pretrain, "det": detection.train_detector, "seg": segmentation.train_segmentor}[key["stage"]]
    start = time.time()
    return name, cached(Path(cache), key, lambda: fn(**kwargs)), time.time() - start


def _pretrain(config: str, files: Dict[str, str], out: str, overrides: List[str]) -> str:
    return str(classification.pretrain_prompt(config, files, Path(out), overrides))


def _run_pool(specs: Sequence[tuple], workers: int, t0: float) -> Dict[str, Any]:
    """Runs the stages not cached yet in ``workers`` processes, logging each as it ends."""
    done: Dict[str, Any] = {}
    todo = []
    for spec in specs:
        name, cache, key, _ = spec
        stored = _stored(Path(cache), key)
        if stored is not None:
            done[name] = stored["result"]
            logger.info("[%4.0f s] %s: cached", time.time() - t0, name)
        else:
            todo.append(spec)
    if not todo:
        return done
    logger.info("[%4.0f s] running %d stage(s) in %d processes: %s", time.time() - t0, len(todo),
                min(workers, len(todo)), ", ".join(s[0] for s in todo))
    # spawn: each stage in a fresh process (detectron2 and mmengine keep global registries)
    with multiprocessing.get_context("spawn").Pool(min(workers, len(todo)), maxtasksperchild=1) as pool:
        for name, result, seconds in pool.imap_unordered(_job, todo):
            done[name] = result
            logger.info("[%4.0f s] %s done in %.0f s: %s", time.time() - t0, name, seconds,
                        result if isinstance(result, dict) else Path(result).name)
    return done


def _world(out: Path, world: WorldConfig, tasks: Iterable[str]) -> Dict[str, str]:
    """The world's files for ``tasks``, writing only the parts not on disk yet."""
    index = out / "world.json"
    stored = json.loads(index.read_text()) if index.is_file() else {}
    files = stored.get("files", {}) if stored.get("config") == json.loads(json.dumps(asdict(world))) else {}
    have = {"classification": "pretrain_root", "detection": "det_train", "segmentation": "seg_root"}
    # every task needs the classification part: the POMP prompt is pre-trained on it
    needed = ["classification"] + [PART[t] for t in ("det", "seg") if t in tasks]
    parts = [p for p in needed if have[p] not in files]
    if parts:
        logger.info("writing the synthetic world (%s) to %s", ", ".join(parts), out)
        files.update(write_world(out, world, parts=parts))
        if "detection" in parts:
            from .image_labels import write_image_labels
            write_image_labels(out)
        atomic_write_json(index, {"config": asdict(world), "files": files})
    return files


def _classification(out: Path, files: Dict[str, str], prompts: Dict[str, str]) -> Dict[str, Any]:
    """Top-1 and paired margins (fractions) of the hand prompt and the pre-trained prompts; also
    writes the POMP prompt's unseen-class embeddings (Detic's format)."""
    from pomp_core.clip_loader import load_clip
    from pomp_core.embeddings import class_embeddings, save_embeddings
    from pomp_core.prompt_io import load_prompt
    from pomp_core.transfer.datasets import read_split_file

    from .tiny_clip import MODEL_NAME, WEIGHTS

    model, tokenizer, preprocess = load_clip(MODEL_NAME, pretrained=str(WEIGHTS))
    classifiers = {HAND: classification.HAND_PROMPT, **{k: load_prompt(p) for k, p in prompts.items()}}
    correct = {split: classification.evaluate(model, tokenizer, preprocess, files[f"eval_{split}"], classifiers)
               for split in ("unseen", "seen")}
    _, unseen_names = read_split_file(files["eval_unseen"])
    emb = class_embeddings(model, tokenizer, classifiers[POMP], unseen_names, normalize=False)
    save_embeddings(emb, out / "unseen_classes_pomp.npy")
    return {
        "top1": {row: {split: float(correct[split][row].float().mean()) for split in correct} for row in classifiers},
        "margin": {row: {split: classification.paired_margin(correct[split][row], correct[split][HAND])
                         for split in correct} for row in prompts},
        "images": {split: len(correct[split][HAND]) for split in correct},
        "classes": {split: len(read_split_file(files[f"eval_{split}"])[1]) for split in correct},
    }


def seed_margin(pomp: Sequence[float], hand: Sequence[float]) -> Tuple[float, float]:
    """Mean paired difference over seeds and its standard error (SD of the differences / sqrt(n);
    0 for one seed, where the spread is not measured)."""
    diff = [p - h for p, h in zip(pomp, hand)]
    return statistics.mean(diff), (statistics.stdev(diff) / len(diff) ** 0.5 if len(diff) > 1 else 0.0)


def _summary(per_seed: Dict[str, Dict[int, Dict[str, float]]], metrics: Sequence[str]) -> Dict[str, Any]:
    seeds = sorted(per_seed[HAND])
    mean = {row: {m: statistics.mean(per_seed[row][s][m] for s in seeds) for m in metrics} for row in per_seed}
    margin = {m: seed_margin([per_seed[POMP][s][m] for s in seeds], [per_seed[HAND][s][m] for s in seeds])
              for m in metrics}
    return {"per_seed": per_seed, "mean": mean, "margin": margin, "seeds": seeds}


def run(out: str | Path = "output/world", config: str = "configs/pomp/world_tiny.yaml",
        world: Optional[WorldConfig] = None, overrides: Optional[List[str]] = None,
        tasks: Sequence[str] = TASKS, settings: Settings = FULL, workers: int = 2) -> Dict[str, Any]:
    """The main job; returns ``{"top1": {row: {split: acc}}, "margin": {prompt row: {split: (mean, SE)}}}``
    for classification (fractions; margins = POMP minus the hand prompt on the same images) and
    ``{"det" | "seg": {"per_seed", "mean", "margin": {metric: (mean, SE over seeds)}, "seeds"}}`` (points)."""
    t0 = time.time()
    out, overrides = Path(out), list(overrides or [])
    unknown = set(tasks) - set(TASKS)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}: choose from {', '.join(TASKS)}")
    world = world or WORLD
    files = _world(out / "world", world, tasks)
    world_key = asdict(world)
    pre_key = {"stage": "pretrain", "config": _digest(config), "world": world_key}

    def pretrain_spec(name: str, folder: str, extra: List[str]) -> tuple:
        return (name, str(out / folder / "stage.json"), {**pre_key, "overrides": overrides + extra},
                {"config": config, "files": files, "out": str(out / folder), "overrides": overrides + extra})

    def train_specs(task: str, prompt: Optional[str]) -> List[tuple]:
        fn = {"det": detection, "seg": segmentation}[task]
        row = POMP if prompt else HAND
        source = {"prompt": prompt} if prompt else {"words": fn.HAND_WORDS}
        iters = settings.det_iters if task == "det" else settings.seg_iters
        data = out / "world" if task == "det" else files["seg_root"]
        specs = []
        for seed in settings.seeds:
            folder = out / task / ("pomp" if prompt else "hand") / f"seed{seed}"
            key = {"stage": task, "seed": seed, "iters": iters, "world": world_key,
                   "prompt": _digest(prompt) if prompt else fn.HAND_WORDS}
            specs.append((f"{task} {row} seed {seed}", str(folder / "result.json"), key,
                          {"seed": seed, "iters": iters, "out": str(folder), ("world" if task == "det" else "seg_root"): str(data),
                           **source}))
        return specs

    # Stages that need no POMP prompt run beside its pre-training; the rest once it exists.
    trained = [t for t in ("det", "seg") if t in tasks]
    first = [pretrain_spec(POMP, "pomp", [])] + [s for t in trained for s in train_specs(t, None)]
    done = _run_pool(first, workers, t0)
    prompt = done[POMP]
    second = ([pretrain_spec(POMP_NC, "pomp_no_correction", ["sampling.correction=false"])] if "cls" in tasks else [])
    done.update(_run_pool(second + [s for t in trained for s in train_specs(t, prompt)], workers, t0))

    results: Dict[str, Any] = {}
    if "cls" in tasks:
        prompts = {POMP: prompt, POMP_NC: done[POMP_NC]}
        key = {"stage": "cls", "prompts": {k: _digest(p) for k, p in prompts.items()}, "world": world_key}
        cls = cached(out / "cls" / "result.json", key, lambda: _classification(out, files, prompts))
        logger.info("[%4.0f s] classification evaluated", time.time() - t0)
        results.update(top1=cls["top1"], margin={r: {s: tuple(v) for s, v in m.items()} for r, m in cls["margin"].items()},
                       cls=cls)
    for task, metrics in (("det", ("AP", "APr")), ("seg", segmentation.METRICS)):
        if task in tasks:
            per_seed = {row: {seed: done[f"{task} {row} seed {seed}"] for seed in settings.seeds} for row in (HAND, POMP)}
            results[task] = _summary(per_seed, metrics)
    table = write_results(results, out, settings)
    logger.info("[%4.0f s] results: %s", time.time() - t0, table)
    return results
