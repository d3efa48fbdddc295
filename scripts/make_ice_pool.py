"""Build the ice-window pool (bilayer/2D ice, amorphous networks, hydrates in networks) and save it.

    python scripts/make_ice_pool.py                       # the shipped pool (200 windows per family)
    python scripts/make_ice_pool.py -n 20 --out /tmp/ice.npz
    python scripts/make_ice_pool.py --annealed            # the shipped annealed pool, ice-md (48 per family)

Deterministic: the same seed and size give the same file. ``--annealed`` anneals and quenches window i
of each water-only family by MD (``hydrafm.structures.ice_md``; needs OpenMM, the ``sim`` extra; ~10 s
a window on one core). Prints a JSON summary (structures per family, held-out count, bytes, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from hydrafm.paths import pool_path
from hydrafm.progress import drive
from hydrafm.structures.ice import FAMILIES, held_out_mask, make_ice_pool


def main(argv: list[str] | None = None) -> dict:
    """Build and save the pool; returns the summary that is printed."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--n-per-family", type=int, help="windows per family (default 200; annealed 48)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--families", nargs="*", choices=list(FAMILIES), help="only these families")
    p.add_argument("--annealed", action="store_true",
                   help="anneal the water-only families by MD: the ice-md pool (hydrafm.structures.ice_md)")
    p.add_argument("--out", type=Path, help="default: the shipped pool file (ice or ice-md)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    out = args.out or pool_path("ice-md" if args.annealed else "ice")
    if out.exists() and not args.overwrite:
        raise SystemExit(f"{out} exists; pass --overwrite to replace it")
    start = time.perf_counter()
    if args.annealed:
        from hydrafm.structures.ice_md import make_ice_md_pool

        made = make_ice_md_pool(args.n_per_family or 48, args.seed, args.families)
    else:
        made = make_ice_pool(args.n_per_family or 200, args.seed, args.families)
    try:
        pool = drive(made, show=not args.quiet)
    except ValueError as exc:  # e.g. a family the anneal has no substrate for
        raise SystemExit(f"make_ice_pool: {exc}") from None
    pool.attrs["command"] = "python scripts/make_ice_pool.py " + " ".join(argv or [])
    path = pool.save(out, overwrite=args.overwrite)
    families, counts = np.unique(pool.info["family"].astype(str), return_counts=True)
    summary = {
        "pool": str(path),
        "structures": len(pool),
        "per_family": dict(zip(families.tolist(), counts.tolist())),
        "held_out": int(held_out_mask(pool).sum()),
        **({"dropped": pool.attrs.get("dropped", {})} if args.annealed else {}),
        "atoms": int(pool.offsets[-1]),
        "bytes": path.stat().st_size,
        "seconds": round(time.perf_counter() - start, 1),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
