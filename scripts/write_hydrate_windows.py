"""Write composed Na⁺/K⁺ hydrate windows from the shipped pool as .xyz files: a "structures folder".

Each file is one 25 × 25 Å window of 1–3 hydrates composed as on-the-fly training does
(:func:`hydrafm.structures.hydrates.compose_hydrate_window`), from the pool's training or
held-out clusters. Used to measure fine-tuning from structures (docs/finetune.md):

    python scripts/write_hydrate_windows.py structures -n 48 --seed 36
    hydrafm finetune structures --name ft --base water --epochs 15 --per-structure 8
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import write

from hydrafm.structures.hydrates import compose_hydrate_window
from hydrafm.training.onthefly import default_split


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("-n", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--split", choices=("train", "held-out"), default="train")
    a = ap.parse_args(argv)
    source = default_split("hydrates")[0 if a.split == "train" else 1]
    clusters = source.pool.subset(source.indices)
    rng = np.random.default_rng(a.seed)
    a.out.mkdir(parents=True, exist_ok=True)
    for i in range(a.n):
        pos, numbers, _ = compose_hydrate_window(clusters, rng, (25.0, 25.0))
        path = a.out / f"w{i:02d}.xyz"
        if path.exists():
            raise SystemExit(f"{path} exists; choose an empty folder")
        write(path, Atoms(numbers=numbers, positions=pos))
    print(f"{a.n} windows in {a.out}")


if __name__ == "__main__":
    main()
