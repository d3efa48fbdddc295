"""Convergence of the MD teacher densities: ρ(z) peaks, bulk density and counting noise per run length.

    python scripts/md_convergence.py data/hydration-md [--json out.json]

For every run of a campaign folder and every saved length (``<run>_density_<ps>ps.npz``):
the heights of the first two maxima of the laterally averaged water-O density above the
top Ca plane, the mean density 8-15 Å above it (bulk 0.0334 Å⁻³), and, from the snapshot
closest to half the length, the voxel noise of the full-length density
(first part against the rest, scaled to the full run; RMS, Å⁻³).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from hydrafm.hydration.teacher import snapshots, voxel_noise
    from hydrafm.hydration.train import profile_peaks

    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    runs = sorted({p.name.split("_density")[0] for p in args.folder.glob("*_density_*ps.npz")})
    for run in runs:
        dens = {}
        for ps, p in snapshots(args.folder, run).items():
            with np.load(p) as z:
                d = z["density"].astype(np.float64)
                z0, dz = float(z["origin"][2]), float(z["spacing"][2])
            dens[ps] = d
            h = z0 + dz * np.arange(d.shape[2])
            prof = d.mean(axis=(0, 1))
            row = {"run": run, "ps": ps, "peaks_A": [round(v, 2) for v in profile_peaks(h, prof)],
                   "bulk_8_15A": round(float(prof[(h > 8) & (h < 15)].mean()), 5)}
            half = [t for t in dens if t < ps]
            if half:
                t = min(half, key=lambda t: abs(t - ps / 2))
                row["voxel_noise_rms"] = round(voxel_noise(dens[t], d, t / ps, (h >= -1) & (h <= 16)), 5)
            rows.append(row)
            print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
