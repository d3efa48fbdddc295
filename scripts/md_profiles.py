"""Figure for docs/training-data.md: water-O density above the Au and Pt walls, and one MD frame.

Usage: python scripts/md_profiles.py [MD_CACHE] --out docs/images/md_profiles.png
MD_CACHE defaults to the HydrAFM cache (`hydrafm pool water` fills it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hydrafm.paths import cache_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cache", nargs="?", type=Path, default=cache_dir("md"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--waters", type=int, default=450)
    args = ap.parse_args()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    bins = np.arange(0, 20.05, 0.1)
    for f in sorted(args.cache.glob(f"*_n{args.waters}_*.npz")):
        with np.load(f) as z:
            pos, cell = z["positions"], z["cell"]
        wall, _, temp = f.stem.split("_")[:3]
        o = pos[:, 0::3, 2].ravel()
        h, _ = np.histogram(o, bins)
        rho = h / (len(pos) * cell[0] * cell[1] * 0.1)
        axes[0].plot(bins[:-1] + 0.05, rho, label=f"{wall} {temp[1:]} K", ls="-" if wall == "Au" else "--")
        print(f"{f.stem}: first O peak at {bins[np.argmax(rho)] + 0.05:.2f} Å, height {rho.max():.3f} Å⁻³")
    axes[0].axhline(0.0334, color="gray", lw=0.8)
    axes[0].set(xlabel="height of O above the top metal layer (Å)", ylabel="O number density (Å⁻³)",
                title=f"{args.waters} waters on Au(111) / Pt(111)")
    axes[0].legend(fontsize=8)
    for ax, wall in zip(axes[1:], ("Au", "Pt")):
        files = sorted(args.cache.glob(f"{wall}_n{args.waters}_T260*.npz"))
        if not files:
            continue
        with np.load(files[0]) as z:
            pos = z["positions"][-1]
        o, h = pos[0::3], np.concatenate([pos[1::3], pos[2::3]])
        low = o[:, 2] < 4.5
        ax.scatter(o[~low, 0], o[~low, 1], s=12, c="lightcoral", label="O, higher layers")
        ax.scatter(o[low, 0], o[low, 1], s=18, c="red", label="O, contact layer (< 4.5 Å)")
        ax.scatter(h[:, 0], h[:, 1], s=3, c="gray", label="H")
        ax.set(title=f"{wall}(111), 260 K, last frame (top view)", aspect="equal", xlabel="x (Å)", ylabel="y (Å)")
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=80)
    print(args.out)


if __name__ == "__main__":
    main()
