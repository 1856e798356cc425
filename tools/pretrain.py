#!/usr/bin/env python
"""Pre-train a POMP prompt (local contrast + local correction).

    python tools/pretrain.py --config configs/pomp/vit_b16_ctx4_k1000_5ep.yaml data.root=/data/imagenet21k_resized/imagenet21k_train
    torchrun --nproc_per_node 8 tools/pretrain.py --config ... [KEY=VALUE ...]
    torchrun --nnodes 2 --node_rank 0 --master_addr HOST --nproc_per_node 8 tools/pretrain.py --config ...

Overrides are dotted config keys (see pomp_core/pretrain/config.py), e.g. sampling.k=256
train.precision=bf16. --resume continues from the newest checkpoint in train.output_dir and, when
there is none yet (a requeued job that died early), starts from scratch with a warning;
--checkpoint PATH continues from that file, which must exist.
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional

from pomp_core.cli import run_tool
from pomp_core.log import setup_logging
from pomp_core.pretrain.config import load_config
from pomp_core.pretrain.trainer import Pretrainer


def main(argv: Optional[List[str]] = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (configs/pomp/*.yaml)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest checkpoint in train.output_dir; none yet: start from scratch")
    p.add_argument("--checkpoint", help="checkpoint to resume from (implies --resume)")
    p.add_argument("overrides", nargs="*", help="KEY=VALUE config overrides")
    args = p.parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    setup_logging(rank)
    cfg = load_config(args.config, args.overrides)
    if args.checkpoint and not os.path.isfile(args.checkpoint):  # before the long set-up
        raise FileNotFoundError(f"--checkpoint {args.checkpoint} does not exist (--resume alone continues "
                                "from the newest checkpoint in train.output_dir, if any)")
    trainer = Pretrainer(cfg)
    trainer.setup()
    if rank == 0:
        trainer.write_config()
        logging.info("%d classes, %d training images, %d process(es) x %d micro-batch(es), %d steps/epoch, K=%d",
                     trainer.num_classes, len(trainer.index.train), trainer.world, cfg.optim.accumulate,
                     trainer.steps_per_epoch, cfg.sampling.k)
    if args.checkpoint:
        trainer.resume(args.checkpoint)
    elif args.resume:
        # the same command line a scheduler requeues: resume if there is anything to resume
        if trainer.latest_checkpoint():
            trainer.resume()
        else:
            logging.warning("--resume: no checkpoint in %s yet; starting from scratch", trainer.out)
    return str(trainer.fit())


if __name__ == "__main__":
    run_tool(main)
