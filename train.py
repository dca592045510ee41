"""Entry point for everything that is built or trained: one stage per `--stage`.

    python train.py --stage data --out data/builtin [--pieces N] [--seconds S] [--seed K]

Stages land one issue at a time; `--help` lists the ones that exist.
"""
import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

import config
import data


def stage_data(args, cfg):
    pieces = args.pieces or cfg.data.pieces
    seconds = args.seconds or cfg.data.seconds
    if pieces < 3:
        raise ValueError(f"--pieces {pieces} is too few: the split needs one piece each for "
                         f"train, val and test, so use 3 or more")
    if seconds < 1:
        raise ValueError(f"--seconds {seconds} is too short: use 1 or more")
    t0 = time.perf_counter()
    meta = data.build_dataset(args.out, pieces=pieces, seconds=seconds, seed=args.seed,
                              sample_rate=cfg.audio.sample_rate, workers=args.workers,
                              progress=lambda it, total: tqdm(it, total=total, desc="rendering",
                                                              unit="piece"))
    size = sum(p.stat().st_size for p in Path(args.out).rglob("*.wav"))
    n = {s: len(v) for s, v in meta["splits"].items()}
    print(f"wrote {pieces} pieces x {len(meta['styles'])} styles ({', '.join(meta['styles'])}) "
          f"to {args.out}: train/val/test pieces {n['train']}/{n['val']}/{n['test']}, "
          f"{size / 1e6:.1f} MB, {time.perf_counter() - t0:.1f} s")


STAGES = {"data": stage_data}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", required=True, choices=sorted(STAGES))
    p.add_argument("--preset", default="tiny", choices=sorted(config.PRESETS))
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("data stage")
    g.add_argument("--out", default="data/builtin", help="where the built-in dataset is written")
    g.add_argument("--pieces", type=int, default=None, help="number of pieces (default: preset)")
    g.add_argument("--seconds", type=float, default=None, help="length of each piece")
    g.add_argument("--workers", type=int, default=2, help="rendering processes")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    cfg = config.preset(args.preset)
    try:
        STAGES[args.stage](args, cfg)
    except (ValueError, FileNotFoundError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
