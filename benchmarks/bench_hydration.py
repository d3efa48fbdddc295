"""Time to predict the water density above a ~25 × 25 Å CaCO3 slab on the CPU.

    python benchmarks/bench_hydration.py [--model hydration-calcite] [--threads 2] [--runs 5]

Times voxelising the slab (C, O, Ca channels) and the network's pass over the whole
periodic cell, for each built-in surface at about 25 × 25 Å (3 layers). The first
call per surface warms up and is not counted; the median of ``--runs`` is reported.
Target: ≤ 0.5 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def main() -> None:
    import torch

    from hydrafm.hydration.density import load_density_model, predict_density
    from hydrafm.hydration.surfaces import SURFACES, build_surface

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="hydration-calcite")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_density_model(args.model)
    for name in SURFACES:
        slab = build_surface(name, (24.0, 24.0), 3, vacuum=25.0)
        predict_density(slab, model)  # warm-up
        times = []
        for _ in range(args.runs):
            t = time.perf_counter()
            dens = predict_density(slab, model)
            times.append(time.perf_counter() - t)
        print(json.dumps({"surface": name, "cell_A": [round(float(v), 2) for v in slab.cell.lengths()[:2]],
                          "atoms": len(slab), "grid": list(dens.density.shape), "threads": args.threads,
                          "median_s": round(statistics.median(times), 3), "best_s": round(min(times), 3),
                          "target_s": 0.5}), flush=True)


if __name__ == "__main__":
    main()
