"""Where the time of one on-the-fly training batch goes, stage by stage, on any device.

    python benchmarks/bench_otf_stages.py [--device cuda] [--batch 64] [--crop 128] [--repeats 3] [--ops]

Stages (each timed with the device synchronised before and after, median over ``repeats``):
``plan`` (CPU: draw structures, labels, tips), ``prepare`` + ``force_field`` + ``relax`` + ``df``
(the engine), ``maps`` (label maps), ``finish`` (degrade + normalise) and ``train_step`` (a 2D
U-Net, base 16, forward + backward + AdamW). ``--ops`` also counts the torch operators each stage
dispatches (``torch.profiler``): on a GPU each one is at least one kernel launch, so the count
times ~10 µs is a floor for a stage that is launch-bound. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run(device: str, batch: int, crop: int, repeats: int, count_ops: bool, solver: str = "newton") -> dict:
    from hydrafm.models.unet import StructureUNet, UNetConfig
    from hydrafm.simulate.engine import TipBatch
    from hydrafm.training.onthefly import BatchMaker, OnTheFlyConfig, default_split
    from hydrafm.training.train import structure_loss, train_step

    dev = torch.device(device)
    cfg = OnTheFlyConfig(crop=crop, batch_size=batch, pools=("water", "ice", "hydrates"), sim_share=0.5)
    maker = BatchMaker(cfg, [default_split(p)[0] for p in cfg.pools], dev, cfg.pool_weights)
    model = StructureUNet(UNetConfig(encoder="2d", base_channels=16)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {}
    ops: dict[str, int] = {}

    def timed(name, fn, *a):
        _sync(dev)
        t = time.perf_counter()
        if count_ops:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                out = fn(*a)
            _sync(dev)
            ops[name] = sum(1 for e in prof.events() if e.name.startswith("aten::") and e.cpu_parent is None)
        else:
            out = fn(*a)
        _sync(dev)
        times.setdefault(name, []).append(time.perf_counter() - t)
        return out

    for r in range(repeats + 1):
        plan = timed("plan", maker.plan, rng, batch)
        sim = maker.simulator(plan["amp"], plan["dz"])
        tb = TipBatch.from_tips(plan["tips"], sim.settings, dev)
        with torch.no_grad():
            pos, cLJ, q = timed("prepare", sim.prepare, plan["pos"], plan["num"], tb, None)
            grid = timed("force_field", sim.force_field, pos, cLJ, q, sim.tip_charges(tb))
            relaxed, apex, fz = timed("relax", lambda: sim.relax(grid, tb, solver=solver, return_fz=True))
            x = timed("df", sim.df, fz)
            y = timed("maps", maker.maps, plan["pos"], plan["lab"])
        xb, yb = timed("finish", maker.finish, x, y, rng)
        timed("train_step", train_step, model, model, opt, xb, yb,
              structure_loss(model.config, cfg.positive_weight), dev)
        if r == 0:  # warm-up
            times.clear()
    med = {k: round(statistics.median(v), 4) for k, v in times.items()}
    engine = sum(med[k] for k in ("prepare", "force_field", "relax", "df"))
    total = sum(med.values())
    out = {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "batch": batch, "crop": crop, "solver": solver, "seconds": med,
           "engine_stacks_per_s": round(batch / engine, 2),
           "fresh_batch_stacks_per_s": round(batch / total, 2)}
    if count_ops:
        out["ops"] = ops
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--solver", default="newton")
    ap.add_argument("--ops", action="store_true")
    a = ap.parse_args()
    print(json.dumps(run(a.device, a.batch, a.crop, a.repeats, a.ops, a.solver), indent=1))


if __name__ == "__main__":
    main()
