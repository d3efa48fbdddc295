"""Nanonis ``.sxm`` scan images (one file per tip height).

Format: a text header of ``:KEY:`` lines, ``:SCANIT_END:``, then the marker
``0x1A 0x04`` and big-endian float32 planes ordered [channel][fwd, bwd][row][col].
Row 0 is the first line scanned: the bottom of the frame for ``SCAN_DIR up``,
the top for ``down``; backward lines are stored right to left. The reader flips
``down`` frames and mirrors backward frames so that every frame is in the
:class:`~hydrafm.stack.AFMStack` convention (row 0 = bottom, column 0 = left).

Tip height: ``Z-Controller>Z (m)``. A *more negative* Z is *closer* to the
sample (Nanonis reports a withdrawn tip as the most positive Z). Checked on the
public h-BN/Cu(111) stack: the tunnelling current rises from 1.5 pA to 12 pA and
the Δf contrast from 0.42 to 1.67 Hz (std) as Z goes from −3.215 to −3.355 nm,
and on the public Z-sweep grid (.3ds) the current rises to the abort threshold
as Z becomes more negative.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ._common import (
    Frame,
    check_direction,
    check_pixels,
    check_scan_size,
    choose_channel,
    clean_frame,
    number_or_none,
    read_bytes,
)
from .errors import CorruptFileError, UnsupportedFormatError

MAGIC = b":NANONIS_VERSION:"
DATA_MARKER = b"\x1a\x04"
M_TO_A = 1e10


def parse_header(text: str) -> dict[str, str]:
    """Split an .sxm header into ``{KEY: raw value text}`` (values stripped)."""
    header: dict[str, str] = {}
    key: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if len(line) > 2 and line.startswith(":") and line.endswith(":") and "\t" not in line:
            if key is not None:
                header[key] = "\n".join(lines).strip("\n")
            key, lines = line[1:-1], []
        else:
            lines.append(line)
    if key is not None:
        header[key] = "\n".join(lines).strip("\n")
    return header


def _floats(value: str, n: int, key: str, path: Path) -> list[float]:
    try:
        vals = [float(v) for v in value.split()]
    except ValueError:
        raise CorruptFileError(path, f"header value {key} is not numeric: {value.strip()!r}") from None
    if len(vals) < n:
        raise CorruptFileError(path, f"header value {key} needs {n} numbers, got {value.strip()!r}")
    return vals[:n]


def _table(value: str) -> list[dict[str, str]]:
    rows = [r.strip().split("\t") for r in value.splitlines() if r.strip()]
    if not rows:
        return []
    head = rows[0]
    return [dict(zip(head, r)) for r in rows[1:]]


def read_header(path: Path, raw: bytes | None = None) -> tuple[dict[str, str], int]:
    """Read the header of an .sxm file.

    Returns
    -------
    header, data_offset
        The parsed header and the byte offset of the first data value.
    """
    raw = read_bytes(path) if raw is None else raw
    if not raw.startswith(MAGIC):
        raise UnsupportedFormatError(path, "not a Nanonis .sxm file (missing ':NANONIS_VERSION:' header)")
    end = raw.find(b":SCANIT_END:")
    if end < 0:
        raise CorruptFileError(path, "truncated header (no ':SCANIT_END:')")
    marker = raw.find(DATA_MARKER, end)
    if marker < 0:
        raise CorruptFileError(path, "no data marker 0x1A04 after the header")
    header = parse_header(raw[:end].decode("latin-1"))
    return header, marker + len(DATA_MARKER)


def read_sxm(path: str | Path, channel: str | int | None = None, direction: str = "forward") -> Frame:
    """Read one frame of one channel from a Nanonis .sxm file.

    Parameters
    ----------
    path
        The .sxm file.
    channel
        Channel name (e.g. ``"Frequency_Shift"``, ``"Current"``) or index;
        ``None`` = Δf, found by keyword whatever the Nanonis version calls it.
    direction
        ``"forward"`` or ``"backward"`` (backward frames are mirrored back).
    """
    path = Path(path)
    direction = check_direction(direction, path)
    raw = read_bytes(path)
    header, offset = read_header(path, raw)

    if "SCAN_PIXELS" not in header or "DATA_INFO" not in header:
        raise CorruptFileError(path, "header lacks SCAN_PIXELS or DATA_INFO")
    nx, ny = (int(v) for v in _floats(header["SCAN_PIXELS"], 2, "SCAN_PIXELS", path))
    check_pixels(nx, ny, path)
    width, height = (v * M_TO_A for v in _floats(header.get("SCAN_RANGE", ""), 2, "SCAN_RANGE", path))
    check_scan_size(width, height, path)
    angle = number_or_none(header.get("SCAN_ANGLE")) or 0.0
    if not np.isfinite(angle) or abs(angle) > 360:
        raise CorruptFileError(path, f"implausible SCAN_ANGLE {angle}")
    scan_dir = header.get("SCAN_DIR", "up").strip().lower()
    if scan_dir not in ("up", "down"):
        raise CorruptFileError(path, f"unknown SCAN_DIR {scan_dir!r}")
    scanit = header.get("SCANIT_TYPE", "FLOAT MSBFIRST").split()
    if scanit and scanit[0].upper() != "FLOAT":
        raise CorruptFileError(path, f"unsupported SCANIT_TYPE {' '.join(scanit)!r}")
    dtype = ">f4" if "LSBFIRST" not in (s.upper() for s in scanit) else "<f4"

    channels = _table(header["DATA_INFO"])
    if not channels or any("Name" not in c for c in channels):
        raise CorruptFileError(path, "DATA_INFO table is empty or malformed")
    names = [c["Name"] for c in channels]
    idx = choose_channel(names, channel, path)

    # Planes per channel: 'both' = fwd + bwd; 'fwd'/'bwd' = one plane.
    plane = nx * ny
    start = 0
    plane_index: int | None = None
    for i, c in enumerate(channels):
        dirs = c.get("Direction", "both").strip().lower()
        stored = ["forward", "backward"] if dirs == "both" else (["backward"] if dirs == "bwd" else ["forward"])
        if i == idx:
            if direction not in stored:
                raise CorruptFileError(
                    path, f"channel {names[idx]!r} has no {direction} data (stored: {dirs})"
                )
            plane_index = start + stored.index(direction)
        start += len(stored)
    assert plane_index is not None
    n_values = (len(raw) - offset) // 4
    if n_values < start * plane:
        raise CorruptFileError(
            path,
            f"truncated data: {n_values} values after the header, expected {start * plane} "
            f"({start} planes of {nx}×{ny})",
        )
    a = np.frombuffer(raw, dtype=dtype, count=plane, offset=offset + plane_index * plane * 4)
    frame = a.reshape(ny, nx).astype(np.float32)

    # Crop unrecorded lines (stored in acquisition order), then orient.
    frame, n_cropped = clean_frame(frame, path, f"channel {names[idx]!r} ({direction})")
    if direction == "backward":
        frame = frame[:, ::-1]
    dy, dx = height / ny, width / nx
    if scan_dir == "down":
        frame = frame[::-1]
        origin_y = n_cropped * dy  # the unrecorded lines are at the bottom
    else:
        origin_y = 0.0

    z_m = number_or_none(header.get("Z-Controller>Z (m)"))
    if z_m is None:  # fall back to the mean of the Z channel, when there is one
        z_names = [i for i, n in enumerate(names) if n.strip().lower() == "z"]
        if z_names:
            zi = sum(2 if c.get("Direction", "both") == "both" else 1 for c in channels[: z_names[0]])
            z_plane = np.frombuffer(raw, dtype=dtype, count=plane, offset=offset + zi * plane * 4)
            if np.isfinite(z_plane).any():
                z_m = float(np.nanmean(z_plane))
    if z_m is not None and not (np.isfinite(z_m) and abs(z_m) < 1e-3):
        raise CorruptFileError(path, f"implausible Z-Controller>Z value {z_m} m")
    controller_on = _controller_on(header)

    try:
        ox, oy = (float(v) * M_TO_A for v in header.get("SCAN_OFFSET", "").split()[:2])
        center: list[float] | None = [oy, ox]
    except ValueError:
        center = None
    metadata: dict[str, Any] = {
        "format": "Nanonis SXM",
        "channel": names[idx],
        "units": channels[idx].get("Unit", "a.u."),
        "direction": direction,
        "scan_direction": scan_dir,
        "scan_angle_deg": float(angle),
        "scan_range_angstrom": [height, width],
        "scan_center_angstrom": center,
        "z_m": z_m,
        "constant_height": None if controller_on is None else not controller_on,
        "bias_v": number_or_none(header.get("BIAS")),
        "rec_time": f"{header.get('REC_DATE', '').strip()} {header.get('REC_TIME', '').strip()}".strip(),
        "comment": header.get("COMMENT", "").strip(),
        "software": header.get("NanonisMain>SW Version", "").strip(),
        "f0_hz": number_or_none(header.get("Oscillation Control>Center Frequency (Hz)")),
        "amplitude_m": number_or_none(header.get("Oscillation Control>Amplitude Setpoint (m)")),
        "available_channels": names,
        "cropped_lines": n_cropped,
    }
    return Frame(
        data=np.ascontiguousarray(frame),
        pixel_size=(dy, dx),
        origin=(origin_y, 0.0),
        path=path,
        channel=names[idx],
        units=metadata["units"],
        z=None if z_m is None else z_m * M_TO_A,
        metadata=metadata,
    )


def _controller_on(header: dict[str, str]) -> bool | None:
    status = header.get("Z-Controller>Controller status")
    if status is not None:
        return status.strip().upper() == "ON"
    rows = _table(header.get("Z-CONTROLLER", ""))
    if rows and "on" in rows[0]:
        return rows[0]["on"].strip() not in ("0", "")
    return None
