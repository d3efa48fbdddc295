"""Nanonis ``.3ds`` grid spectroscopy with a Z sweep: constant-height Δf slices.

Format: ``key=value`` header lines up to ``:HEADER_END:``, then per grid point
(x fastest) the point's parameters followed by each channel's sweep values, all
big-endian float32. Grids stopped early simply end after the last measured
point; sweeps aborted at a threshold are padded with NaN.

Z convention as in :mod:`hydrafm.io.nanonis_sxm`: a more negative Z is closer to
the sample (on the public test grid the tunnelling current rises from 0 to the
~200 pA abort threshold as the sweep makes Z more negative).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..stack import AFMStack
from ._common import (
    check_direction,
    check_pixels,
    check_scan_size,
    choose_channel,
    number_or_none,
    read_bytes,
)
from .errors import CorruptFileError, UnsupportedFormatError

END = b":HEADER_END:"
M_TO_A = 1e10


def _split_list(value: str) -> list[str]:
    return [v for v in value.strip().strip('"').split(";") if v != ""]


def parse_header(raw: bytes, path: Path) -> tuple[dict[str, str], int]:
    """Parse the header; returns it and the offset of the binary data."""
    end = raw.find(END)
    if end < 0:
        if raw[:40].lstrip().startswith(b"Grid dim"):
            raise CorruptFileError(path, "truncated header (no ':HEADER_END:')")
        raise UnsupportedFormatError(path, "not a Nanonis .3ds grid (no 'Grid dim' header)")
    header: dict[str, str] = {}
    for line in raw[:end].decode("latin-1").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            header[k.strip()] = v.strip()
    if "Grid dim" not in header:
        raise UnsupportedFormatError(path, "not a Nanonis .3ds grid (no 'Grid dim' header)")
    start = end + len(END)
    while start < len(raw) and raw[start : start + 1] in (b"\r", b"\n"):
        start += 1
        if start - end - len(END) >= 2:
            break
    return header, start


def _num(header: dict[str, str], key: str, path: Path) -> float:
    try:
        return float(header[key].strip('"'))
    except KeyError:
        raise CorruptFileError(path, f"header lacks {key!r}") from None
    except ValueError:
        raise CorruptFileError(path, f"header value {key!r} is not numeric: {header[key]!r}") from None


def read_3ds(
    path: str | Path,
    channel: str | int | None = None,
    direction: str = "forward",
    heights: Sequence[float] | None = None,
) -> AFMStack:
    """Read constant-height slices from a Z-sweep grid.

    Parameters
    ----------
    path
        The .3ds file.
    channel
        Channel name or index; ``None`` = Δf (``Frequency Shift`` / ``OC M1 Freq. Shift``).
    direction
        ``"forward"`` or ``"backward"`` sweep (``[bwd]`` channels).
    heights
        Tip heights in Å, relative to the closest usable sweep sample, at which to
        cut slices (the nearest sweep sample is taken). ``None`` = every sweep
        sample that is valid at all measured grid points.

    Notes
    -----
    Grid points that were never measured (grid stopped early) are NaN; their
    count is in ``metadata["measured_points"]``. Sweep samples aborted at some
    measured point (threshold stop close to the surface) are dropped, with a
    warning.
    """
    path = Path(path)
    direction = check_direction(direction, path)
    raw = read_bytes(path)
    header, offset = parse_header(raw, path)

    try:
        nx, ny = (int(v) for v in header["Grid dim"].strip('"').lower().split("x"))
    except (ValueError, KeyError):
        raise CorruptFileError(path, f"bad 'Grid dim' value {header.get('Grid dim')!r}") from None
    check_pixels(nx, ny, path)
    settings = header.get("Grid settings", "").split(";")
    try:
        cx, cy, w, h, angle = (float(v) for v in settings[:5])
    except ValueError:
        raise CorruptFileError(path, f"bad 'Grid settings' value {header.get('Grid settings')!r}") from None
    width, height = w * M_TO_A, h * M_TO_A
    check_scan_size(width, height, path)
    sweep = header.get("Sweep Signal", "").strip('"')
    if not sweep.lower().startswith("z"):
        raise CorruptFileError(
            path, f"sweep signal is {sweep!r}, not Z: this grid holds no constant-height slices"
        )
    n_points = int(_num(header, "Points", path))
    n_params = int(_num(header, "# Parameters (4 byte)", path))
    if not (2 <= n_points <= 100_000 and 0 <= n_params <= 10_000):
        raise CorruptFileError(path, f"implausible Points={n_points} or # Parameters={n_params}")
    names = _split_list(header.get("Channels", ""))
    if not names:
        raise CorruptFileError(path, "header lists no channels")
    param_names = _split_list(header.get("Fixed parameters", "")) + _split_list(
        header.get("Experiment parameters", "")
    )

    wanted_bwd = direction == "backward"
    candidates = [i for i, n in enumerate(names) if ("[bwd]" in n) == wanted_bwd]
    sub = [names[i].replace(" [bwd]", "") for i in candidates]
    if not candidates:
        raise CorruptFileError(path, f"no {direction} channels in this grid")
    ci = candidates[choose_channel(sub, channel, path)]

    record = n_params + len(names) * n_points
    n_floats = (len(raw) - offset) // 4
    measured = min(n_floats // record, nx * ny)
    if measured < 1:
        raise CorruptFileError(path, "truncated: no complete grid point after the header")
    data = np.frombuffer(raw, dtype=">f4", count=measured * record, offset=offset).reshape(measured, record)
    params = data[:, :n_params].astype(np.float64)
    curves = data[:, n_params + ci * n_points : n_params + (ci + 1) * n_points].astype(np.float32)
    if np.isinf(curves).any():
        raise CorruptFileError(path, f"channel {names[ci]!r} contains infinite values")

    # Sweep values (relative Z in m). Per-point Sweep Start/End are the first params.
    try:
        z0, z1 = float(params[0, 0]), float(params[0, 1])
    except IndexError:
        raise CorruptFileError(path, "grid points carry no sweep start/end parameters") from None
    if not (np.isfinite(z0) and np.isfinite(z1) and z0 != z1 and abs(z0) < 1e-6 and abs(z1) < 1e-6):
        raise CorruptFileError(path, f"implausible Z sweep {z0} → {z1} m")
    z = np.linspace(z0, z1, n_points) * M_TO_A  # Å; larger = farther

    valid = np.isfinite(curves).all(axis=0)
    if not valid.any():
        raise CorruptFileError(path, f"channel {names[ci]!r} has no sweep sample valid at every measured point")
    n_dropped = int((~valid).sum())
    if n_dropped:
        warnings.warn(
            f"{path}: {n_dropped} of {n_points} sweep samples were aborted or missing at some "
            "grid points and are left out",
            stacklevel=2,
        )
    idx = np.nonzero(valid)[0]
    idx = idx[np.argsort(z[idx], kind="stable")]  # closest first
    rel = z[idx] - z[idx[0]]
    if heights is not None:
        want = np.asarray(list(heights), dtype=np.float64)
        if want.size == 0 or not np.isfinite(want).all():
            raise ValueError("heights must be a non-empty list of finite numbers (Å)")
        if (want < -1e-6).any() or (want > rel[-1] + 1e-6).any():
            raise ValueError(
                f"requested heights must lie within 0–{rel[-1]:.3f} Å of the closest valid sweep sample"
            )
        pick = np.abs(rel[None, :] - want[:, None]).argmin(axis=1)
        idx, rel = idx[pick], rel[pick]

    cube = np.full((len(idx), ny * nx), np.nan, dtype=np.float32)
    cube[:, :measured] = curves[:, idx].T
    cube = cube.reshape(len(idx), ny, nx)

    # Orientation from the recorded point positions: rows must go along +y, columns along +x.
    names_lower = [p.lower() for p in param_names]
    flip_rows = flip_cols = False
    if "x (m)" in names_lower and "y (m)" in names_lower and len(param_names) == n_params:
        px = params[:, names_lower.index("x (m)")]
        py = params[:, names_lower.index("y (m)")]
        th = np.deg2rad(angle)
        u = px * np.cos(th) + py * np.sin(th)
        v = -px * np.sin(th) + py * np.cos(th)
        if measured >= 2 and nx >= 2:
            flip_cols = u[min(nx, measured) - 1] < u[0]
        if measured > nx:
            flip_rows = v[nx] < v[0]
    if flip_rows:
        cube = cube[:, ::-1]
    if flip_cols:
        cube = cube[:, :, ::-1]

    units = names[ci].rsplit("(", 1)[-1].rstrip(")") if "(" in names[ci] else "a.u."
    metadata: dict[str, Any] = {
        "format": "Nanonis 3DS grid",
        "channel": names[ci].replace(" [bwd]", ""),
        "units": units,
        "direction": direction,
        "scan_angle_deg": float(angle),
        "scan_range_angstrom": [height, width],
        "scan_center_angstrom": [cy * M_TO_A, cx * M_TO_A],
        "sweep_signal": sweep,
        "sweep_angstrom": [z0 * M_TO_A, z1 * M_TO_A],
        "sweep_indices": idx.tolist(),
        "measured_points": int(measured),
        "grid_points": nx * ny,
        "dropped_sweep_samples": n_dropped,
        "software": header.get("NanonisMain>SW Version", "").strip('"'),
        "f0_hz": number_or_none(header.get("Oscillation Control>Center Frequency (Hz)")),
        "amplitude_m": number_or_none(header.get("Oscillation Control>Amplitude Setpoint (m)")),
        "sources": [str(path)],
        "available_channels": sub,
    }
    return AFMStack(data=cube, pixel_size=(height / ny, width / nx), heights=rel, metadata=metadata)
