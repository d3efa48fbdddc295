"""Training-data throughput: simulated 128×128×10 stacks per hour.

    python benchmarks/bench_simulate.py [N] [--kind water|hydrates] [--pix-per-angstrom 5]

Runs the real pipeline (`make_dataset`: draw a structure, simulate with ppafm's
OpenCL AFMulator, label, write shards) for N stacks (default 60) into a temporary
folder and prints the OpenCL device, the one-off start-up time (kernel build) and
the steady-state seconds per stack and stacks per hour. Nothing else should run
on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from hydrafm.paths import pool_path
from hydrafm.progress import Progress
from hydrafm.simulate.afm import SimulationSettings
from hydrafm.simulate.dataset import make_dataset
from hydrafm.structures.pool import StructurePool


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", nargs="?", type=int, default=60)
    ap.add_argument("--kind", default="water", choices=["water", "hydrates"])
    ap.add_argument("--pix-per-angstrom", type=int, default=5)
    args = ap.parse_args()
    from hydrafm.simulate.afm import opencl_platform

    device = opencl_platform()[1]
    pool = StructurePool.load(pool_path(args.kind))
    settings = SimulationSettings(pix_per_angstrom=args.pix_per_angstrom)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        t_first = None
        gen = make_dataset(tmp, args.n, args.kind, pool, settings, seed=123, shard_size=32)
        for rec in gen:
            if isinstance(rec, Progress) and rec.done == 1:
                t_first = time.perf_counter()
        t1 = time.perf_counter()
        size = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp))
    per = (t1 - t_first) / (args.n - 1)
    print(f"device: {device}; threads: {os.cpu_count()} CPU cores visible")
    print(f"kind={args.kind} n={args.n} scan={settings.n_pixels}x{settings.n_pixels}x{settings.n_heights} "
          f"over {settings.scan_size} Å, pixPerAngstrome={settings.pix_per_angstrom}")
    print(f"start-up incl. first stack: {t_first - t0:.1f} s")
    print(f"steady state: {per:.3f} s/stack = {3600 / per:.0f} stacks/hour ({1 / per:.2f} stacks/s)")
    print(f"total: {t1 - t0:.1f} s for {args.n} stacks; shards on disk {size / args.n / 1e3:.0f} kB/stack")


if __name__ == "__main__":
    main()
