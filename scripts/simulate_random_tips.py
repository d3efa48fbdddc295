"""Simulate a dataset whose tips and scans are drawn like on-the-fly training's.

``hydrafm simulate`` keeps the tip's stiffness, charge, amplitude and height step fixed (the
settings' values) and draws only the distance and the tilt. This script draws every stack's tip
from :class:`hydrafm.simulate.settings.TipRanges` instead (closest probe 2.3–3.8 Å above the top
atom, lateral stiffness 0.25–0.8 N/m, charge −0.2…+0.1 e, a quadrupole on 30 %, amplitude
0.6/1.0/1.4 Å, true height step 0.08/0.10/0.12 Å), from the shipped pools' training or held-out
structures (``default_split``). The folder reads as an ordinary dataset (:class:`AFMDataset`);
each shard also holds the draws (``k_lateral``, ``charge``, ``quadrupole``, ``dz``, ``amplitude``).
Resumable: finished shards are kept. Clean stacks (no noise: degrade them when training).

    python scripts/simulate_random_tips.py OUT --pools ice,water,hydrates --split train -n 1536 --seed 34
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from hydrafm._atomic import atomic_path
from hydrafm.io.xyz import LABELS
from hydrafm.training.onthefly import BatchMaker, OnTheFlyConfig, default_split


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--pools", default="ice,water,hydrates")
    ap.add_argument("--split", choices=("train", "held-out"), default="train")
    ap.add_argument("-n", type=int, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shard-size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=4, help="stacks simulated together")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    pools = tuple(a.pools.split(","))
    cfg = OnTheFlyConfig(pools=pools, crop=128)
    sources = [default_split(p)[0 if a.split == "train" else 1] for p in pools]
    bm = BatchMaker(cfg, sources, torch.device("cpu"))
    a.out.mkdir(parents=True, exist_ok=True)
    manifest = {"kind": "mixed", "pools": list(pools), "split": a.split, "n": a.n, "seed": a.seed,
                "shard_size": a.shard_size, "settings": cfg.settings.to_dict(), "tips": cfg.to_dict()["tips"],
                "labels": list(LABELS), "format": 1, "engine": "torch",
                "made_by": "scripts/simulate_random_tips.py"}
    (a.out / "dataset.json").write_text(json.dumps(manifest, indent=1))
    n_shards = (a.n + a.shard_size - 1) // a.shard_size
    t0 = time.time()
    for s in range(n_shards):
        k = min(a.shard_size, a.n - s * a.shard_size)
        path = a.out / f"shard_{s:05d}.npz"
        if path.exists():
            continue
        rng = np.random.default_rng(np.random.SeedSequence([a.seed, s]))
        cols: dict[str, list] = {key: [] for key in ("stacks", "positions", "labels", "distance", "tilt",
                                                     "k_lateral", "charge", "quadrupole", "dz", "amplitude")}
        offsets = [0]
        while len(cols["stacks"]) < k:
            plan = bm.plan(rng, min(a.batch, k - len(cols["stacks"])))
            x, _ = bm.simulate(plan)
            for b in range(len(plan["pos"])):
                tip = plan["tips"][b]
                cols["stacks"].append(x[b].numpy().astype(np.float16))
                cols["positions"].append(plan["pos"][b].astype(np.float32))
                cols["labels"].append(plan["lab"][b])
                offsets.append(offsets[-1] + len(plan["pos"][b]))
                cols["distance"].append(tip.distance)
                cols["tilt"].append(tip.tilt_xy)
                cols["k_lateral"].append(tip.k_lateral)
                cols["charge"].append(tip.charge)
                cols["quadrupole"].append(tip.quadrupole)
                cols["dz"].append(plan["dz"])
                cols["amplitude"].append(plan["amp"])
        arrays = {"stacks": np.stack(cols["stacks"]), "positions": np.concatenate(cols["positions"]),
                  "labels": np.concatenate(cols["labels"]), "offsets": np.asarray(offsets, np.int64)}
        for key in ("distance", "tilt", "k_lateral", "charge", "quadrupole", "dz", "amplitude"):
            arrays[key] = np.asarray(cols[key], np.float32)
        with atomic_path(path, ".npz") as tmp:
            np.savez(tmp, **arrays)
        print(json.dumps({"shard": s, "of": n_shards, "seconds": round(time.time() - t0, 1)}), flush=True)


if __name__ == "__main__":
    main()
