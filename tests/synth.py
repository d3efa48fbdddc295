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
        ":SCAN_OFFSET:", "             1.0E-8         2.0E-8",
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
