"""Built and annealed versions of the same ice-pool windows (docs/images/ice_md.png).

    python scripts/ice_md_figure.py --out docs/images/ice_md.png

Top row: windows as :mod:`hydrafm.structures.ice` builds them; middle row: the same windows from the
annealed pool (``ice-md``, :mod:`hydrafm.structures.ice_md`); colours as in ``ice_families_figure.py``
(training labels: O red, H_up green, H_flat light blue, H_down brown; upper O larger). Bottom row: the O
heights of both, seen from the side (x against z).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ice_families_figure import draw

from hydrafm.paths import pool_path
from hydrafm.structures.ice import FAMILIES, make_structure
from hydrafm.structures.pool import StructurePool

#: (family, window i of the family: the pool's ``window`` column)
PANELS = [("bilayer-Au111", 0), ("bilayer-Pt111", 1), ("amorphous", 2), ("2d-flat-hex", 0)]


def main(argv: list[str] | None = None) -> Path:
    """Draw the figure and save it; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/images/ice_md.png"))
    p.add_argument("--pool", type=Path, default=pool_path("ice-md"))
    args = p.parse_args(argv)
    pool = StructurePool.load(args.pool)
    family = np.asarray(pool.info["family"]).astype(str)
    window = np.asarray(pool.info["window"]).astype(int)
    seed = int(pool.attrs.get("seed", 0))
    fig, axes = plt.subplots(3, len(PANELS), figsize=(3.2 * len(PANELS), 8.6),
                             gridspec_kw={"height_ratios": [1, 1, 0.45]})
    for col, (name, i) in enumerate(PANELS):
        rows = np.flatnonzero((family == name) & (window == i))
        if not len(rows):
            raise SystemExit(f"{name}: window {i} is not in the pool (the quench dropped it); pick another")
        built_pos, numbers, info = make_structure(name, np.random.default_rng(
            np.random.SeedSequence([seed, list(FAMILIES).index(name), i])))
        annealed, numbers_a = pool.arrays(int(rows[0]))
        draw(axes[0, col], built_pos, numbers, f"{name} ({info.get('variant', '')}), built")
        draw(axes[1, col], annealed, numbers_a, "annealed (ice-md)")
        for pos, colour, label in ((built_pos, "0.6", "built"), (annealed, "tab:red", "annealed")):
            o = pos[numbers == 8]
            axes[2, col].scatter(o[:, 0], o[:, 2], s=6, color=colour, label=label)
        axes[2, col].set_xlim(0, 25)
        axes[2, col].set_xlabel("x (Å)", fontsize=8)
        axes[2, col].set_ylabel("O height (Å)", fontsize=8)
        axes[2, col].tick_params(labelsize=7)
    axes[2, 0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    print(args.out)
    return args.out


if __name__ == "__main__":
    main()
