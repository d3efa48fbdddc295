"""Heavier fuzzing than CI: random byte mutations and truncations of the public files.

    python benchmarks/fuzz_readers.py SEED [N] [TESTDATA]

Counts exceptions other than AFMFileError ("escapes") and reads slower than 2 s.
"""

from __future__ import annotations

import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from hydrafm import load_stack
from hydrafm.io import AFMFileError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_fuzz import FILES  # noqa: E402  (the same files CI fuzzes)


def main() -> None:
    seed = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 5000
    root = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(__file__).resolve().parents[2] / "shared" / "testdata"
    rng = np.random.default_rng(seed)
    originals = {name: (root / name).read_bytes() for name in FILES}
    escapes = slow = 0
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(n):
            name = FILES[rng.integers(len(FILES))]
            raw = bytearray(originals[name])
            for _ in range(rng.integers(1, 20)):
                region = rng.choice([len(raw), 20000, 600])
                raw[int(rng.integers(0, min(len(raw), region)))] = int(rng.integers(0, 256))
            if rng.random() < 0.3:
                raw = raw[: int(rng.integers(0, len(raw)))]
            p = Path(tmp) / ("f" + Path(name).suffix)
            p.write_bytes(bytes(raw))
            t = time.time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    load_stack(p, scan_size=20.0)
                except AFMFileError:
                    pass
                except Exception as exc:  # an escape: report it
                    escapes += 1
                    print(f"ESCAPE {name}: {type(exc).__name__}: {str(exc)[:160]}")
            if time.time() - t > 2:
                slow += 1
                print(f"SLOW {name}: {time.time() - t:.1f} s")
    print(f"{n} mutations, {escapes} escapes, {slow} slower than 2 s, {time.time() - t0:.1f} s")


if __name__ == "__main__":
    main()
