"""Reader timings: how long load_stack takes on the public instrument files.

    python benchmarks/bench_io.py [TESTDATA]

Prints one line per input: best and median wall time of 5 runs.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path

from hydrafm import load_stack

CASES = [
    ("nanonis_stack_borazine_Cu111", {}),
    ("SpmImages_01514_Au111_ncAFM.sxm", {}),
    ("SpmGrids_Grid_Spectroscopy006_Zsweep_df.3ds", {}),
    ("ProbeFlow_createc_afm.dat", {}),
    ("py_createc_A200622.082616_rot45.dat", {"channel": "Z"}),
    ("jiang_lab_water_Au111/L1_20_L2_1Ying_Jiang_1.npz", {}),
]


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "shared" / "testdata"
    print(f"{'input':50s} {'shape':>16s} {'best ms':>8s} {'median ms':>10s}")
    for rel, kw in CASES:
        times = []
        for _ in range(5):
            t = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                s = load_stack(root / rel, **kw)
            times.append((time.perf_counter() - t) * 1000)
        print(f"{rel[:50]:50s} {str(s.shape):>16s} {min(times):8.1f} {statistics.median(times):10.1f}")


if __name__ == "__main__":
    main()
