"""What tools/train_seg.py and tools/test_seg.py share: config set-up and input checks."""
from __future__ import annotations

import argparse
import os
import os.path as osp
from typing import Optional

from mmengine.config import Config, DictAction

from .checkpoint import trust_checkpoints_under


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("config", help="config file (configs/seg/...)")
    parser.add_argument("--work-dir", help="where logs and checkpoints go (default: ./work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, default={},
                        help="override config keys, e.g. train_dataloader.dataset.data_root=DIR")
    parser.add_argument("--data-root", help="the dataset folder: replaces the config's data root in "
                        "every dataloader and in model keys that name it (world class splits)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher (pytorch: torchrun for multi-GPU / multi-node)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0)
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    if not osp.isfile(args.config):
        raise FileNotFoundError(f"config '{args.config}' does not exist (see configs/seg/)")
    # No yapf pass over the text the Runner logs and dumps (4-5 times a run): on some configs
    # it took seconds a call (docs/segmentation.md); the dump is the same config, unformatted.
    # mmengine 0.10's fromfile drops format_python_code for plain configs, hence the rebuild.
    loaded = Config.fromfile(args.config)
    cfg = Config(loaded.to_dict(), cfg_text=loaded.text, filename=loaded.filename,
                 env_variables=loaded.env_variables, format_python_code=False)
    if args.data_root:
        set_data_root(cfg, args.data_root)
    cfg.merge_from_dict(args.cfg_options)
    check_data_roots(cfg)
    cfg.launcher = args.launcher
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if args.launcher != "none":
        _cpu_distributed(cfg)
    # mmseg's rule: --work-dir, else the config's work_dir, else ./work_dirs/<config name>
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = osp.join("./work_dirs", osp.splitext(osp.basename(args.config))[0])
    trust_checkpoints_under(cfg.work_dir)
    return cfg


def _cpu_distributed(cfg: Config) -> None:
    """Multi-process runs without GPUs: mmengine's pytorch launcher selects a CUDA device and
    gives DDP one, which CPU processes cannot; start the process group with gloo (nccl needs
    GPUs) and wrap the model without device ids."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        return
    if cfg.launcher == "pytorch" and not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    cfg.model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None, broadcast_buffers=False,
                                 find_unused_parameters=cfg.get("find_unused_parameters", False))


def _replace(node, old: str, new: str):
    if isinstance(node, dict):
        return {k: _replace(v, old, new) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, old, new) for v in node]
    return new if node == old else node


def _datasets(ds) -> list:
    """The leaf dataset configs of a dataset config, inside a ConcatDataset or a dataset wrapper too."""
    if ds.get("type") == "ConcatDataset":
        return [leaf for d in ds.datasets for leaf in _datasets(d)]
    if "dataset" in ds:  # a wrapper (ClassRecordDataset)
        return _datasets(ds.dataset)
    return [ds]


def set_data_root(cfg: Config, root: str) -> None:
    """Point every dataloader's dataset(s), and every model key equal to an old root, at ``root``."""
    if not osp.isdir(root):
        raise FileNotFoundError(f"--data-root '{root}' does not exist")
    datasets = [d for k in ("train_dataloader", "val_dataloader", "test_dataloader") if cfg.get(k)
                for d in _datasets(cfg[k].dataset)]
    old = {d.get("data_root") for d in datasets} - {None}
    for d in datasets:
        d.data_root = root
    for value in old:
        cfg.model = _replace(cfg.model.to_dict(), value, root)


def check_data_roots(cfg: Config) -> None:
    """Each dataloader's data root exists: fail before the model (and its CLIP) is built."""
    for key in ("train_dataloader", "val_dataloader", "test_dataloader"):
        roots = {d.get("data_root") for d in _datasets(cfg[key].dataset)} if cfg.get(key) else set()
        for root in sorted(r for r in roots if r and not osp.isdir(r)):
            raise FileNotFoundError(
                f"{key}'s data root '{root}' does not exist: pass --data-root DIR (see docs/segmentation.md; "
                "the synthetic world's: tools/make_world.py --parts segmentation)")


def check_config_vocabulary(cfg: Config, loader_key: str) -> None:
    """A text encoder whose vocabulary differs from the evaluated dataset's classes would
    score the wrong class for every label: fail before running."""
    from mmseg.registry import DATASETS

    from .text_encoder import encoder_class_names

    loader = cfg.get(loader_key)
    enc: Optional[dict] = cfg.model.get("text_encoder")
    if not loader or not enc:
        return
    from mmengine.registry import init_default_scope

    init_default_scope(cfg.get("default_scope", "mmseg"))
    dataset = DATASETS.build(dict(loader["dataset"], lazy_init=True, pipeline=[]))
    classes = list(dataset.metainfo["classes"])
    vocab = encoder_class_names(enc.get("dataset_name"), enc.get("vocabulary"))
    if vocab != classes:
        extra = [v for v in vocab if v not in classes][:5]
        missing = [c for c in classes if c not in vocab][:5]
        raise ValueError(
            f"the text encoder's vocabulary ({len(vocab)} names) does not match the classes of "
            f"{loader_key}'s dataset ({len(classes)}): not in the dataset {extra}, missing {missing}"
            f"{' (same names, other order)' if not extra and not missing else ''}. Set "
            "model.text_encoder.vocabulary (or dataset_name) to the dataset's classes, in order.")
