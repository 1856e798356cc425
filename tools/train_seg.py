"""Train a pomp_seg model (stage (a) prompt tuning or stage (b) segmentor) with mmengine's Runner.

    .venv/bin/python tools/train_seg.py configs/seg/zsseg-prompt_world.py
    .venv/bin/python tools/train_seg.py configs/seg/zsseg-r18tiny_world.py [--resume] [--amp]
    torchrun --nproc_per_node 8 tools/train_seg.py CONFIG --launcher pytorch
"""
from __future__ import annotations

from mmengine.runner import Runner

from pomp_seg.tool_utils import base_parser, check_vocabulary, load_config


def main(argv=None) -> Runner:
    parser = base_parser("train a pomp_seg model")
    parser.add_argument("--resume", nargs="?", const="auto", default=None,
                        help="resume from the latest checkpoint in the work dir, or from the given one")
    parser.add_argument("--amp", action="store_true", help="automatic mixed precision")
    args = parser.parse_args(argv)
    cfg = load_config(args)
    if args.amp:
        cfg.optim_wrapper.type = "AmpOptimWrapper"
        cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    check_vocabulary(cfg, "val_dataloader")
    runner = Runner.from_cfg(cfg)
    runner.train()
    return runner


if __name__ == "__main__":
    main()
