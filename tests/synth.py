"""Writers for small synthetic instrument files with known content (tests only)."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np


def write_sxm(
    path: Path,
    planes: dict[str, tuple[np.ndarray, np.ndarray | None]],
    *,
    width_m: float = 2e-9,
    height_m: float = 2e-9,
    z_m: float | None = -3.2e-9,
    scan_dir: str = "up",
    angle: float = 0.0,
    units: dict[str, str] | None = None,
    offset_m: tuple[float, float] = (1.0e-8, 2.0e-8),
) -> Path:
    """Write an .sxm file. ``planes[name] = (forward_raw, backward_raw or None)`` in file order."""
    first = next(iter(planes.values()))[0]
    ny, nx = first.shape
    rows = []
    for i, (name, (fwd, bwd)) in enumerate(planes.items()):
        unit = (units or {}).get(name, "Hz" if "Freq" in name else "m")
        rows.append(f"\t{i}\t{name}\t{unit}\t{'both' if bwd is not None else 'fwd'}\t1.000E+0\t0.000E+0")
    header = [
        ":NANONIS_VERSION:", "2", ":SCANIT_TYPE:", "              FLOAT            MSBFIRST",
        ":REC_DATE:", " 01.01.2026", ":REC_TIME:", "12:00:00",
        ":SCAN_PIXELS:", f"       {nx}       {ny}",
        ":SCAN_RANGE:", f"           {width_m:E}           {height_m:E}",
        ":SCAN_OFFSET:", f"             {offset_m[0]:E}         {offset_m[1]:E}",
        ":SCAN_ANGLE:", f"            {angle:E}",
        ":SCAN_DIR:", scan_dir, ":BIAS:", "            1.0E-3",
    ]
    if z_m is not None:
        header += [":Z-Controller>Z (m):", f"{z_m:E}", ":Z-Controller>Controller status:", "OFF"]
    header += [":DATA_INFO:", "\tChannel\tName\tUnit\tDirection\tCalibration\tOffset", *rows, "", ":SCANIT_END:"]
    blob = b""
    for fwd, bwd in planes.values():
        blob += np.asarray(fwd, dtype=">f4").tobytes()
        if bwd is not None:
            blob += np.asarray(bwd, dtype=">f4").tobytes()
    path.write_bytes(("\n".join(header) + "\n\n\n").encode("latin-1") + b"\x1a\x04" + blob)
    return path


def write_createc(
    path: Path,
    planes: list[np.ndarray],
    *,
    length_a: tuple[float, float] = (50.0, 50.0),
    select: int = 0b1110000011,
    pll_on: int = 1,
    rotation: float = 0.0,
    header_pad: int = 16380,
    extra: str = "",
) -> Path:
    """Write a [Paramco32] Createc file whose raw planes (top row first) are ``planes``."""
    ny, nx = planes[0].shape
    lines = [
        "[Paramco32]", f"Num.X / Num.X={nx}", f"Num.Y / Num.Y={ny}",
        f"Length x[A]={length_a[1]}", f"Length y[A]={length_a[0]}", f"Channels / Channels={len(planes)}",
        f"Channelselectval / Channelselectval={select}", f"Rotation / Rotation={rotation:.2f}",
        f"PLLOn={pll_on}", "CHMode / CHMode=1", "CHModeZoff / CHModeZoff=-120.0",
        "ActDriveDir=H:\\Createc\\STMDATA\\x\\", extra,
    ]
    text = "\r\n".join(lines).encode("latin-1")
    text = text + b" " * max(0, header_pad - len(text))
    payload = np.concatenate([np.asarray(p, dtype="<f4").ravel() for p in planes] + [np.zeros(4 * nx + 32, "<f4")])
    path.write_bytes(text + b"DATA" + zlib.compress(payload.tobytes()))
    return path


def write_stack_sxm(stack, folder: Path, prefix: str = "scan") -> list[Path]:
    """Write each height of an AFMStack as one Nanonis .sxm file (Δf forward only), as a microscope would.

    Returns the files in measurement order (closest height first), named ``<prefix>_001.sxm`` ….
    """
    folder.mkdir(parents=True, exist_ok=True)
    heights = stack.heights if stack.heights is not None else np.arange(stack.n_heights) * 0.1
    height_m, width_m = (v * 1e-10 for v in stack.extent)
    return [write_sxm(folder / f"{prefix}_{k + 1:03d}.sxm", {"Frequency_Shift": (frame, None)},
                      width_m=width_m, height_m=height_m, z_m=-3.2e-9 + float(h) * 1e-10)
            for k, (frame, h) in enumerate(zip(stack.data, heights))]


def slow_write(path: Path, data: bytes, rng: np.random.Generator, *, chunks: int = 3,
               pause: tuple[float, float] = (0.005, 0.05), long_pause: float = 0.0, p_long: float = 0.0) -> float:
    """Write ``data`` in ``chunks`` random pieces with random pauses, as a slow instrument or network share does.

    With probability ``p_long`` a pause lasts ``long_pause`` seconds (make it longer than the
    watcher's settle time: the file then looks finished while it is not). Returns ``time.time()``
    at the moment the file is complete.
    """
    import time

    cuts = sorted(int(c) for c in rng.choice(np.arange(1, len(data)), size=chunks - 1, replace=False))
    with open(path, "wb") as fh:
        start = 0
        for end in [*cuts, len(data)]:
            fh.write(data[start:end])
            fh.flush()
            start = end
            if end < len(data):
                time.sleep(long_pause if rng.random() < p_long else rng.uniform(*pause))
    return time.time()


def replay(files: list[Path], folder: Path, seed: int = 0, gap: float = 0.05, **slow) -> dict[str, float]:
    """Copy ``files`` into ``folder`` one at a time with :func:`slow_write`; ``{name: time complete}``."""
    import time

    rng = np.random.default_rng(seed)
    done = {}
    for f in files:
        done[f.name] = slow_write(folder / f.name, f.read_bytes(), rng, **slow)
        time.sleep(gap)
    return done
