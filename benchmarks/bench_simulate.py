"""Training-data throughput: simulated 128×128×10 stacks per second, per engine.

    python benchmarks/bench_simulate.py [N] [--kind water|hydrates] [--engine torch|ppafm|both]
                                        [--pix-per-angstrom 5] [--device cpu]

Runs the real pipeline (`make_dataset`: draw a structure, simulate, label, write shards)
for N stacks (default 60) into a temporary folder with each engine, and prints the
device, the one-off start-up time (kernel build / first stack) and the steady-state
seconds per stack and stacks per second; with ``--engine both`` also the ratio torch /
ppafm from this one run. Nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

from hydrafm.paths import pool_path
from hydrafm.progress import Progress
from hydrafm.simulate.dataset import make_dataset
from hydrafm.simulate.settings import SimulationSettings
from hydrafm.structures.pool import StructurePool


def run(engine: str, n: int, kind: str, settings: SimulationSettings, device: str) -> dict:
    pool = StructurePool.load(pool_path(kind))
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        t_first = None
        gen = make_dataset(tmp, n, kind, pool, settings, seed=123, shard_size=32, engine=engine, device=device)
        for rec in gen:
            if isinstance(rec, Progress) and rec.done == 1:
                t_first = time.perf_counter()
        t1 = time.perf_counter()
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    per = (t1 - t_first) / (n - 1)
    if engine == "ppafm":
        from hydrafm.simulate.afm import opencl_platform

        dev = f"OpenCL {opencl_platform()[1]}"
    else:
        import torch

        dev = f"torch {device} ({torch.get_num_threads()} threads)"
    return {"engine": engine, "device": dev, "kind": kind, "n": n, "startup_s": round(t_first - t0, 2),
            "s_per_stack": round(per, 4), "stacks_per_s": round(1 / per, 3), "stacks_per_hour": round(3600 / per),
            "kB_per_stack": round(size / n / 1e3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=60)
    ap.add_argument("--kind", default="water", choices=["water", "hydrates"])
    ap.add_argument("--engine", default="both", choices=["torch", "ppafm", "both"])
    ap.add_argument("--pix-per-angstrom", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="torch device of the torch engine")
    args = ap.parse_args()
    settings = SimulationSettings(pix_per_angstrom=args.pix_per_angstrom)
    print(f"scan={settings.n_pixels}x{settings.n_pixels}x{settings.n_heights} over {settings.scan_size} Å, "
          f"pixPerAngstrome={settings.pix_per_angstrom}; {os.cpu_count()} CPU cores visible")
    res = {}
    for eng in (["torch", "ppafm"] if args.engine == "both" else [args.engine]):
        res[eng] = run(eng, args.n, args.kind, settings, args.device)
        print(json.dumps(res[eng]), flush=True)
    if len(res) == 2:
        print(json.dumps({"torch_over_ppafm": round(res["torch"]["stacks_per_s"] / res["ppafm"]["stacks_per_s"], 2)}))


if __name__ == "__main__":
    main()
