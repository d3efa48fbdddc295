"""Average the weights of several checkpoints of one training run (stochastic weight averaging).

    python scripts/average_weights.py SNAP1.pt SNAP2.pt ... -o AVERAGED.pt

Give snapshots of a run's ``<name>.last.pt`` taken over the tail of its learning-rate decay
(:func:`hydrafm.models.checkpoint.average_checkpoints`). The output is a model checkpoint (no
optimiser state) with the last file's settings and the averaged files named in its provenance;
it is written atomically and an existing OUT is refused without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+", type=Path)
    ap.add_argument("-o", "--out", type=Path, required=True)
    ap.add_argument("--overwrite", action="store_true")
    args = ap.parse_args()
    from hydrafm.models.checkpoint import CheckpointError, average_checkpoints, save_checkpoint

    if args.out.exists() and not args.overwrite:
        print(f"average_weights: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    try:
        model, info = average_checkpoints(args.checkpoints)
    except CheckpointError as exc:  # names the file
        print(f"average_weights: {exc}", file=sys.stderr)
        return 2
    save_checkpoint(args.out, model, info)
    print(f"{args.out}: mean of {len(args.checkpoints)} checkpoints")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
