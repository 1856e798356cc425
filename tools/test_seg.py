"""Evaluate a trained pomp_seg segmentor (seen/unseen mIoU, hIoU, per-class IoU).

    .venv/bin/python tools/test_seg.py configs/seg/zsseg-r18tiny_world.py work_dirs/zsseg-r18tiny_world/iter_300.pth
"""
from __future__ import annotations

import os

from mmengine.runner import Runner

from pomp_core.cli import run_tool
from pomp_seg.checkpoint import trust_checkpoints_under
from pomp_seg.cli import base_parser, check_config_vocabulary, config_from_args


def main(argv=None) -> dict:
    parser = base_parser("test a pomp_seg segmentor")
    parser.add_argument("checkpoint", help="checkpoint file")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.checkpoint):
        raise FileNotFoundError(f"checkpoint '{args.checkpoint}' does not exist")
    cfg = config_from_args(args)
    cfg.load_from = args.checkpoint
    trust_checkpoints_under(os.path.dirname(os.path.abspath(args.checkpoint)))  # named by the user
    check_config_vocabulary(cfg, "test_dataloader")
    return Runner.from_cfg(cfg).test()


if __name__ == "__main__":
    run_tool(main)
