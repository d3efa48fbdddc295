"""Markdown table of an architecture sweep: compute spent and held-out scores per candidate.

    python scripts/sweep_table.py OUT_DIR            # after scripts/arch_sweep.sh and compare_heldout.py

Reads ``OUT_DIR/<name>.jsonl`` (epoch lines of ``hydrafm train --on-the-fly``, resumed runs appended) and
``OUT_DIR/compare.json`` and/or ``OUT_DIR/eval/*.json`` (``scripts/compare_heldout.py``) and prints one row per candidate:
parameters, CPU minutes actually spent (process CPU time where logged, else wall time),
samples trained and simulated, held-out O / H F1 per set, their mean, and the mean per CPU-hour.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    root = Path(sys.argv[1])
    scores = {}
    for f in [root / "compare.json", *sorted((root / "eval").glob("*.json"))]:
        if f.exists():
            scores.update(json.loads(f.read_text()))
    print("| candidate | params | CPU min | trained / simulated samples | best val loss | threshold "
          "| ice-like O / H F1 | MD water O / H F1 | hydrates O / H F1 | mean F1 | degraded mean F1 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for model, s in scores.items():
        name = Path(model).stem
        log = root / f"{name}.jsonl"
        epochs = [json.loads(v) for v in log.read_text().splitlines() if v.startswith('{"epoch"')] if log.exists() else []
        # a log may hold several runs of the same model (a resumed run restarts its CPU clock)
        cpu, last = None, 0.0
        for e in epochs:
            c = e.get("cpu_seconds")
            if c is None:
                continue
            if c < last:
                cpu = (cpu or 0.0) + last
            last = c
        cpu = None if last == 0.0 else (cpu or 0.0) + last
        wall = sum(e["seconds"] for e in epochs)
        trained = sum(e["samples_per_s"] * e["seconds"] for e in epochs)
        fresh = sum(e.get("new_samples_per_s", 0.0) * e["seconds"] for e in epochs)
        best = min((e["val_loss"] for e in epochs), default=float("nan"))
        params = "—"
        try:
            import torch

            from hydrafm.models.checkpoint import load_checkpoint

            net, _, _ = load_checkpoint(model)
            params = f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f} M"
        except Exception:  # noqa: BLE001 - the table still prints
            pass
        f1 = {k: (s[k]["all"]["O"]["f1"], s[k]["all"]["H"]["f1"]) for k in ("ice", "water", "hydrates")}
        fd = {k: (s[k + "_degraded"]["all"]["O"]["f1"], s[k + "_degraded"]["all"]["H"]["f1"])
              for k in ("ice", "water", "hydrates")}
        mean = sum(sum(v) for v in f1.values()) / 6
        mean_d = sum(sum(v) for v in fd.values()) / 6
        minutes = (cpu if cpu is not None else wall) / 60
        cells = " | ".join(f"{o:.2f} / {h:.2f}" for o, h in f1.values())
        print(f"| {name} | {params} | {minutes:.0f}{'' if cpu is not None else ' (wall)'} | "
              f"{trained:,.0f} / {fresh:,.0f} | {best:.4f} | {s['threshold']} | {cells} | {mean:.3f} | {mean_d:.3f} |")


if __name__ == "__main__":
    main()
