"""Pre-training configuration: dataclasses with documented defaults, YAML files, KEY=VALUE overrides.

A YAML config may name ``_base_`` (a path relative to itself) whose values it overrides.
The keys renamed when the proposal options became one section per distribution are read
under their new names with a warning (:data:`RENAMED`).
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from .proposals import PROPOSALS, proposal_entry

logger = logging.getLogger(__name__)

# old flat key -> its new name (read as the new key, with a warning)
RENAMED = {
    "sampling.proposal": "sampling.distribution.name",
    "sampling.refresh_steps": "sampling.distribution.similarity.refresh_steps",
    "sampling.temperature": "sampling.distribution.similarity.temperature",
    "sampling.uniform_mix": "sampling.distribution.similarity.uniform_mix",
}


@dataclass
class ModelConfig:
    name: str = "ViT-B-16-quickgelu"  # open_clip architecture
    pretrained: Optional[str] = "openai"  # open_clip tag or local checkpoint file; null = random
    grad_checkpointing: bool = False  # recompute text-tower activations in backward (less memory)


@dataclass
class PromptConfig:
    n_ctx: int = 4  # M, number of context vectors
    position: str = "end"  # class token position: end | middle | front
    init_words: Optional[str] = None  # initialise the context from words (M = their token count)
    init_std: float = 0.02  # std of the N(0, std) init when init_words is null


@dataclass
class DataConfig:
    root: str = ""  # folder per class (ImageNet-21K layout: <root>/<wnid>/*.JPEG)
    names_file: Optional[str] = None  # '<folder> <name>' lines, or one name per sorted folder
    miil_tree: Optional[str] = None  # MIIL imagenet21k_miil_tree.pth (class_description)
    wordnet: bool = False  # names from nltk's WordNet (first lemma per wnid)
    # '<wnid>\t<lemma>, …' file, first lemma per wnid (MIIL's naming); 'timm' = timm's
    # data/_info/imagenet_synset_to_lemma.txt, so the real data needs no MIIL tree file
    lemmas: Optional[str] = None
    trusted: bool = False  # unpickle data.miil_tree fully (only for files you trust)
    shots: int = 16  # training images per class (classes with fewer keep all)
    val_per_class: int = 0  # held-out validation images per class (0 = no validation; with val_root: 0 = all)
    val_root: Optional[str] = None  # separate validation folders (MIIL's imagenet21k_val), same class folders
    split_seed: int = 42  # seed of the few-shot subsample
    index_cache: Optional[str] = None  # folder for the cached split index (default: the root)
    views: int = 4  # augmented views per image
    image_size: int = 224
    augment: bool = True  # the recipe's augmentation; false = eval transform for every view
    randaugment: str = "dassl"  # dassl (the release's randaugment2) | torchvision (RandAugment block at p=0.6)
    workers: int = 4  # DataLoader worker processes
    max_skipped: int = 1000  # unreadable images tolerated before the run fails


def distribution_config() -> Any:
    """``sampling.distribution``: ``name`` plus one section of options per registered distribution
    that has options (built from the registry, so a new distribution needs no edit here)."""
    fields = [("name", str, field(default="uniform"))]  # a registered distribution: uniform | frequency | similarity
    fields += [(name, entry.options, field(default_factory=entry.options))
               for name, entry in sorted(PROPOSALS.items()) if entry.options is not None]
    return dataclasses.make_dataclass("DistributionConfig", fields)()


@dataclass
class SamplingConfig:
    k: int = 1000  # classes per step (1 positive + K-1 shared negatives); K >= N = full softmax
    # the proposal of the negatives: name (uniform | frequency (∝ images per class) | similarity (hard))
    # and each distribution's options, e.g. sampling.distribution.similarity.temperature
    distribution: Any = field(default_factory=distribution_config)
    correction: bool = True  # local correction: margin on negative logits
    log_base: float = 10.0  # base of the margin's log (10 = published values; 2.718281828 = paper eq.)


@dataclass
class OptimConfig:
    batch_size: int = 32  # images per process (each in `views` views)
    epochs: int = 5
    lr: float = 0.002
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant warmup_lr for this many epochs, then cosine
    warmup_lr: float = 1e-5
    # epoch_cosine: Dassl's (the release's) lr, fixed per epoch, cosine with T_max = epochs
    #   restarted after the warmup (never reaches 0); step_cosine: cosine per step to 0 after the warmup
    schedule: str = "epoch_cosine"
    # micro-batches of batch_size per optimizer step, each with its own negatives, as `accumulate`
    # processes would draw them: 1 process x accumulate A = A processes x 1 (docs/pretraining.md)
    accumulate: int = 1


@dataclass
class TrainConfig:
    output_dir: str = "output/pomp"
    seed: int = 1  # the release configs: 42, the release's
    device: str = "auto"  # auto | cpu | cuda
    # fp32 | bf16 (autocast) | fp16 (autocast + grad scaler: the release's "amp") |
    # fp16_weights (the release's default "fp16": CLIP and the prompt held in fp16, plain SGD; GPU only)
    precision: str = "fp32"
    log_every: int = 20  # steps between metric lines (jsonl, TensorBoard)
    save_every: int = 500  # steps between checkpoints (also saved at each epoch end and on interrupt)
    # the prompt fit() returns: last (prompt.pth, the last step) | best (prompt_best.pth, the
    # epoch of highest validation top-1, the release's model-best.pth.tar; needs validation)
    final_prompt: str = "last"
    max_steps: Optional[int] = None  # stop early after this many steps (smoke runs)
    feature_cache: bool = False  # precompute frozen image features once (see docs/pretraining.md)
    cache_views: int = 8  # augmented views per image held in the feature cache
    feature_cache_dir: Optional[str] = None  # where caches live (default <output_dir>/feature_cache); shareable
    tensorboard: bool = True
    dist_timeout_s: float = 1800.0  # process-group timeout of the training collectives (torch's default)
    rank0_wait_s: float = 86400.0  # how long other ranks wait for rank 0's scans, feature cache, validation


@dataclass
class PretrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _set(cfg: Any, dotted: str, value: Any, source: str) -> None:
    if dotted in RENAMED:
        logger.warning("%s: '%s' is now '%s'; reading it as that key", source, dotted, RENAMED[dotted])
        dotted = RENAMED[dotted]
    *parents, leaf = dotted.split(".")
    node = cfg
    for i, part in enumerate(parents + [leaf]):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            where = ".".join(parents[:i]) or "the config"
            close = difflib.get_close_matches(part, names, n=3)
            raise KeyError(f"{source}: '{dotted}' is not a config key: {where} has no '{part}'"
                           f"{f'; did you mean {close}?' if close else f'; keys: {names}'}")
        if part == leaf:
            break
        node = getattr(node, part)
    current = getattr(node, leaf)
    if dataclasses.is_dataclass(current):
        if isinstance(value, str) and hasattr(current, "name"):  # sampling.distribution=similarity
            value = {"name": value}
        if not isinstance(value, dict):
            raise TypeError(f"{source}: '{dotted}' is a section; give its keys")
        for k, v in value.items():
            _set(cfg, f"{dotted}.{k}", v, source)
        return
    setattr(node, leaf, _coerce(value, typing.get_type_hints(type(node))[leaf], dotted, source))


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check a value against the field's type, converting what YAML reads loosely (1e-5 is a string)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if args else hint
    if value is None:
        if type(None) in typing.get_args(hint):
            return None
        raise TypeError(f"{source}: '{key}' cannot be null")
    try:
        if base is bool:
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            if isinstance(value, bool):
                return value
            raise ValueError
        if base is int and not isinstance(value, bool) and float(value) == int(float(value)):
            return int(float(value))
        if base is float and not isinstance(value, bool):
            return float(value)
        if base is str:
            return str(value)
    except (TypeError, ValueError):
        pass
    raise TypeError(f"{source}: '{key}' must be {getattr(base, '__name__', base)}, got {value!r}")


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text) if text != "" else ""


def load_config(path: Optional[str] = None, overrides: Optional[List[str]] = None) -> PretrainConfig:
    """Defaults <- YAML file (and its ``_base_`` chain) <- ``KEY=VALUE`` overrides."""
    cfg = PretrainConfig()

    def apply_file(file: Path) -> None:
        if not file.is_file():
            raise FileNotFoundError(f"config file '{file}' does not exist")
        data = yaml.safe_load(file.read_text()) or {}
        base = data.pop("_base_", None)
        if base:
            apply_file((file.parent / base).resolve())
        for key, value in data.items():
            _set(cfg, key, value, str(file))

    if path:
        apply_file(Path(path))
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override '{item}' is not KEY=VALUE (e.g. sampling.k=256)")
        key, value = item.split("=", 1)
        _set(cfg, key.strip(), _parse_value(value.strip()), "command line")
    proposal_entry(cfg.sampling.distribution.name)  # an unknown distribution fails here
    return cfg
