"""Train a pomp_seg model (stage (a) prompt tuning or stage (b) segmentor) with mmengine's Runner.

    .venv/bin/python tools/train_seg.py configs/seg/zsseg-prompt_world.py
    .venv/bin/python tools/train_seg.py configs/seg/zsseg-r18tiny_world.py [--resume] [--amp]
    torchrun --nproc_per_node 8 tools/train_seg.py CONFIG --launcher pytorch

--resume continues from the last checkpoint in the work dir and, when there is none yet (a
requeued job that died early), starts from scratch with a warning; --resume CKPT must exist.
"""
from __future__ import annotations

import logging
import os
import os.path as osp

from mmengine.logging import print_log
from mmengine.runner import Runner

from pomp_core.cli import run_tool
from pomp_core.durable import KILL_ENV
from pomp_seg.checkpoint import DurableRunner, KillPointHook, checkpoint_to_resume
from pomp_seg.cli import base_parser, check_config_vocabulary, config_from_args


def main(argv=None) -> Runner:
    parser = base_parser("train a pomp_seg model")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="resume from the latest checkpoint in the work dir, or from the given one")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume == "auto":
        found = checkpoint_to_resume(cfg.work_dir)
        if found:
            cfg.resume, cfg.load_from = True, found
        else:  # the same command line a scheduler requeues: nothing to resume yet
            print_log(f"--resume: no checkpoint in {cfg.work_dir} yet; starting from scratch",
                      logger="current", level=logging.WARNING)
    elif args.resume:
        if not osp.isfile(args.resume):
            raise FileNotFoundError(f"--resume {args.resume} does not exist (--resume alone continues "
                                    "from the last checkpoint in the work dir, if any)")
        cfg.resume, cfg.load_from = True, args.resume
    check_config_vocabulary(cfg, "val_dataloader")
    runner = DurableRunner.from_cfg(cfg)
    if os.environ.get(KILL_ENV):  # tests stop the real process at a named point
        runner.register_hook(KillPointHook())
    runner.train()
    return runner


if __name__ == "__main__":
    run_tool(main)
