"""Training throughput of candidate structure networks: samples per second for one optimiser step.

    python benchmarks/bench_train_speed.py [--threads 2] [--device cpu] [--steps 5]

For each candidate (encoder 3d/2d × base channels × crop) times forward + backward + AdamW
on random stacks (the data pipeline is not included) and prints samples/s. The accuracy side
of the choice (held-out F1 per CPU-hour / GPU-minute) needs equal-compute training runs;
see docs/structure-network.md.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from hydrafm.models.unet import StructureUNet, UNetConfig

    dev = torch.device(args.device)
    rows = []
    for enc, base, crop in [("3d", 16, 64), ("2d", 16, 64), ("2d", 32, 64), ("3d", 16, 128), ("2d", 32, 128)]:
        m = StructureUNet(UNetConfig(encoder=enc, base_channels=base)).to(dev)
        opt = torch.optim.AdamW(m.parameters(), 1e-3)
        x = torch.randn(args.batch, 1, 10, crop, crop, device=dev)
        y = torch.rand(args.batch, 6, crop, crop, device=dev)

        def step():
            loss = ((torch.sigmoid(m(x)) - y) ** 2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()

        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = (time.perf_counter() - t0) / args.steps
        rows.append({"encoder": enc, "base_channels": base, "crop": crop,
                     "params": sum(p.numel() for p in m.parameters()), "samples_per_s": round(args.batch / dt, 2)})
        print(json.dumps(rows[-1]), flush=True)


if __name__ == "__main__":
    main()
