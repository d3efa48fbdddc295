"""Time to predict the water density above a ~25 × 25 Å CaCO3 slab on the CPU, and the density where water cannot be.

    python benchmarks/bench_hydration.py [--model hydration-calcite] [--threads 2] [--runs 5]

Times voxelising the slab (C, O, Ca channels and, for a gated network, the distances to
the nearest atoms) and the network's pass over the whole periodic cell, for each built-in
surface at about 25 × 25 Å (3 layers) and for the calcite slab read back from a structure
file (z shifted, as a user's file would be). The first call per surface warms up and is
not counted; the median of ``--runs`` is reported. Target: ≤ 0.5 s on 2 CPU cores.

``excluded_max`` is the largest predicted density (Å⁻³) in the region where the MD teacher
has no water (``teacher.excluded_region``: nearer a C, O or Ca atom than any water O came
in the campaign, or under such a voxel, i.e. inside the slab); target ≤ 1e-4.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch
    from ase.io import write

    from hydrafm.hydration.density import load_density_model, predict_density, slab_grid
    from hydrafm.hydration.surfaces import SURFACES, build_surface, load_surface
    from hydrafm.hydration.teacher import excluded_region

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="hydration-calcite")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_density_model(args.model)
    slabs = {name: build_surface(name, (24.0, 24.0), 3, vacuum=25.0) for name in SURFACES}
    with tempfile.TemporaryDirectory() as tmp:
        user = slabs["calcite-104"].copy()
        user.positions[:, 2] += 6.0
        write(Path(tmp) / "user.extxyz", user)
        slabs["calcite-104 (slab file)"] = load_surface(Path(tmp) / "user.extxyz")
    for name, slab in slabs.items():
        predict_density(slab, model)  # warm-up
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            dens = predict_density(slab, model)
            times.append(time.perf_counter() - t)
        z = dens.profile()[0]
        region = excluded_region(slab, slab_grid(slab))
        print(json.dumps({"surface": name, "cell_A": [round(float(v), 2) for v in slab.cell.lengths()[:2]],
                          "atoms": len(slab), "grid": list(dens.density.shape), "threads": args.threads,
                          "median_s": round(statistics.median(times), 3), "best_s": round(min(times), 3),
                          "target_s": 0.5, "excluded_max": float(dens.density[region].max()),
                          "inside_slab_max": float(dens.density[region & (z < 0)].max()),
                          "excluded_fraction": round(float(region.mean()), 3)}), flush=True)


if __name__ == "__main__":
    main()
