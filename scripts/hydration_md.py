"""Run (or resume) the MD teacher: one surface, or the whole teacher campaign round by round.

One surface::

    python scripts/hydration_md.py calcite-104 --out DIR [--size 18 18] [--layers 2] \\
        [--equilibration-ps 5] [--production-ps 200] [--threads 0] [--vacancies 0] [--seed 0]

The teacher campaign (the densities the density network is trained and tested on)::

    python scripts/hydration_md.py campaign --out DIR --ps-per-round 5 --rounds 40 [--threads 0]

The campaign extends every run of :data:`CAMPAIGN` by ``--ps-per-round`` ps per round,
round-robin, so that stopping at any time leaves every surface sampled about equally.
Checkpoints ``DIR/<name>.npz`` are resumed on every call; after every extension
``DIR/<name>_density.npz`` (float16, compressed) is rewritten and one JSON line is printed
with the heights of the first two maxima of the laterally averaged water-O density above
the top Ca plane (the physics check: calcite (10-14) MD 2.24 / 3.39 Å, X-ray 2.3 / 3.45 Å).
The runs are deterministic given their seeds; on a GPU (OpenMM CUDA platform) they are
used automatically.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: (surface, vacancy pairs, seed, split): calcite pristine and defected for training; unseen defects,
#: aragonite and vaterite for testing, as in Ranawat et al. 2021
CAMPAIGN = (
    ("calcite-104", 0, 0, "train"),
    ("calcite-104", 1, 1, "train"),
    ("calcite-104", 2, 2, "train"),
    ("calcite-104", 2, 7, "test"),
    ("aragonite-010", 0, 0, "test"),
    ("aragonite-001", 0, 0, "test"),
    ("vaterite-010", 0, 0, "test"),
)


def profile_peaks(z: np.ndarray, rho: np.ndarray, n: int = 2) -> list[tuple[float, float]]:
    """``(height, density)`` of the first ``n`` local maxima above 1.5 Å (3-bin smoothing)."""
    smooth = np.convolve(rho, np.ones(3) / 3, mode="same")
    peaks = [(float(z[i]), float(smooth[i])) for i in range(1, len(z) - 1)
             if z[i] > 1.5 and smooth[i] > smooth[i - 1] and smooth[i] >= smooth[i + 1] and smooth[i] > 0.02]
    return peaks[:n]


def run_one(surface: str, vacancies: int, seed: int, out: Path, production_ps: float, *, size=(18.0, 18.0),
            layers: int = 2, equilibration_ps: float = 5.0, threads: int = 0, split: str = "") -> dict:
    """Extend one run to ``production_ps`` and save its density; returns the summary line."""
    from hydrafm.hydration.md import HydrationRun, run_hydration_md
    from hydrafm.hydration.surfaces import build_surface
    from hydrafm.progress import drive

    slab = build_surface(surface, tuple(size), layers, vacuum=25.0, vacancies=vacancies, seed=seed)
    name = f"{surface}_v{vacancies}_s{seed}"
    run = HydrationRun(name, equilibration_ps=equilibration_ps, production_ps=production_ps, seed=seed,
                       threads=threads)
    out.mkdir(parents=True, exist_ok=True)
    dens = drive(run_hydration_md(slab, run, out / f"{name}.npz"))
    from hydrafm._atomic import atomic_path

    with atomic_path(out / f"{name}_density.npz", ".npz") as tmp:
        np.savez_compressed(tmp, density=dens.density.astype(np.float16), spacing=dens.spacing,
                            origin=dens.origin, frames=dens.frames, ps=dens.ps, surface=surface,
                            vacancies=vacancies, seed=seed, size=np.asarray(size), layers=layers, split=split)
    if split:  # campaign: keep every round's density too, for the half-vs-half noise estimate
        import shutil

        shutil.copyfile(out / f"{name}_density.npz", out / f"{name}_density_{dens.ps:g}ps.npz")
    z, rho = dens.profile()
    return {"surface": name, "split": split, "ps": dens.ps, "frames": dens.frames,
            "bulk_like_mean_8_15A": round(float(rho[(z > 8) & (z < 15)].mean()), 5),
            "peaks_A_rho": [(round(a, 2), round(b, 4)) for a, b in profile_peaks(z, rho)]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("surface", help="a built-in surface name, or 'campaign'")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--size", type=float, nargs=2, default=(18.0, 18.0))
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vacancies", type=int, default=0)
    ap.add_argument("--equilibration-ps", type=float, default=5.0)
    ap.add_argument("--production-ps", type=float, default=200.0)
    ap.add_argument("--ps-per-round", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    common = dict(size=args.size, layers=args.layers, equilibration_ps=args.equilibration_ps, threads=args.threads)
    if args.surface != "campaign":
        print(json.dumps(run_one(args.surface, args.vacancies, args.seed, args.out, args.production_ps, **common)))
        return
    for k in range(1, args.rounds + 1):
        for surface, vac, seed, split in CAMPAIGN:
            line = run_one(surface, vac, seed, args.out, k * args.ps_per_round, split=split, **common)
            print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
