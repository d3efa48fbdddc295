"""Build the ice-window pool (bilayer/2D ice, amorphous networks, hydrates in networks) and save it.

    python scripts/make_ice_pool.py                       # the shipped pool (200 windows per family)
    python scripts/make_ice_pool.py -n 20 --out /tmp/ice.npz

Deterministic: the same seed and size give the same file. Prints a JSON summary (structures per
family, held-out count, bytes, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hydrafm.progress import drive
from hydrafm.structures.ice import FAMILIES, held_out_mask, make_ice_pool

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "hydrafm" / "structures" / "pools" / \
    "ice_windows.npz"


def main(argv: list[str] | None = None) -> dict:
    """Build and save the pool; returns the summary that is printed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--n-per-family", type=int, default=200, help="windows per family (default 200)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", nargs="*", choices=list(FAMILIES), help="only these families")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        raise SystemExit(f"{args.out} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    pool = drive(make_ice_pool(args.n_per_family, args.seed, args.families), show=not args.quiet)
    pool.attrs["command"] = "python scripts/make_ice_pool.py " + " ".join(argv or [])
    path = pool.save(args.out, overwrite=args.overwrite)
    families, counts = np.unique(pool.info["family"].astype(str), return_counts=True)
    summary = {
        "pool": str(path),
        "structures": len(pool),
        "per_family": dict(zip(families.tolist(), counts.tolist())),
        "held_out": int(held_out_mask(pool).sum()),
        "atoms": int(pool.offsets[-1]),
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
