"""Createc STMAFM ``.dat`` images (``[Paramco32]``: zlib-compressed float32).

Format: CRLF ``Internal / Display=value`` header lines, then the text ``DATA``
immediately followed by a zlib stream. The marker is *searched for* (genuine
files have it at byte 16380, sanitised ones elsewhere; the word ``DATA`` may
also appear inside header values, so the marker must be followed by a valid zlib
header). The stream holds ``Channels`` planes of Num.Y × Num.X little-endian
float32 (forward planes of each recorded channel, then the backward ones; both
stored left to right), then a tail of about ``4·Num.X`` floats that is ignored.

Orientation: row 0 of a Createc plane is the top of the frame, so rows are
flipped into the :class:`~hydrafm.stack.AFMStack` convention (row 0 = bottom),
as ppafm's ExpShifter does. Column 0 is a fly-back artefact and is replaced by
column 1. ``Rotation`` is kept in ``metadata["scan_angle_deg"]``.

Channels are not named in the file: bit 0 of ``Channelselectval`` is Z, bit 1
the current, higher bits auxiliary ADC signals (named ``Aux<bit>``), in raw
units. With the PLL on, the first auxiliary channel is taken as Δf (flagged in
the metadata, units ``a.u.``).
"""

from __future__ import annotations

import re
import warnings
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._common import (
    Frame,
    check_direction,
    check_pixels,
    check_scan_size,
    choose_channel,
    number_or_none,
    read_bytes,
)
from .errors import ChannelNotFoundError, CorruptFileError, UnsupportedFormatError

MAGIC_COMPRESSED = b"[Paramco32]"
OTHER_VERSIONS = (b"[Parameter]", b"[Paramet32]")


def parse_header(text: str) -> dict[str, str]:
    """``{key: value}`` with each ``Internal / Display`` key stored under both names."""
    header: dict[str, str] = {}
    for line in text.splitlines():
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        value = value.strip()
        for k in {key.strip(), *(p.strip() for p in key.split(" / "))}:
            if k and k not in header:
                header[k] = value
    return header


def _find_data(raw: bytes, path: Path) -> int:
    """Offset of the zlib stream: ``DATA`` followed by a valid zlib header."""
    for m in re.finditer(b"DATA", raw):
        j = m.end()
        if j + 2 <= len(raw):
            cmf, flg = raw[j], raw[j + 1]
            if cmf & 0x0F == 8 and (cmf * 256 + flg) % 31 == 0:
                return j
    raise CorruptFileError(path, "no 'DATA' marker followed by a zlib stream")


def _get(header: dict[str, str], keys: tuple[str, ...], path: Path, cast=float):
    for k in keys:
        if k in header:
            try:
                return cast(float(header[k].split()[0]))
            except (ValueError, IndexError):
                raise CorruptFileError(path, f"header value {k!r} is not numeric: {header[k]!r}") from None
    raise CorruptFileError(path, f"header lacks {keys[0]!r}")


def _opt(header: dict[str, str], key: str) -> float | None:
    return number_or_none(header.get(key))


def channel_names(select: int, n_per_direction: int) -> list[str]:
    """Names for the recorded channels from the ``Channelselectval`` bitmask."""
    bits = [b for b in range(32) if select >> b & 1]
    if len(bits) != n_per_direction:
        return [f"Channel{i}" for i in range(n_per_direction)]
    return ["Z" if b == 0 else "Current" if b == 1 else f"Aux{b}" for b in bits]


def read_createc(path: str | Path, channel: str | int | None = None, direction: str = "forward") -> Frame:
    """Read one frame of one channel from a Createc ``.dat`` file.

    Parameters
    ----------
    path
        The .dat file.
    channel
        ``"Z"``, ``"Current"``, ``"Aux<bit>"`` or an index; ``None`` = Δf, i.e.
        the first auxiliary channel of a file recorded with the PLL on.
    direction
        ``"forward"`` or ``"backward"``.
    """
    path = Path(path)
    direction = check_direction(direction, path)
    raw = read_bytes(path)
    if raw.startswith(OTHER_VERSIONS):
        raise UnsupportedFormatError(
            path, f"Createc version {raw[:11].decode('latin-1')} (uncompressed) is not supported yet; "
            "only [Paramco32] files are"
        )
    if not raw.startswith(MAGIC_COMPRESSED):
        raise UnsupportedFormatError(path, "not a Createc .dat file (missing '[Paramco32]' header)")
    start = _find_data(raw, path)
    header = parse_header(raw[: start - 4].decode("latin-1"))

    nx = _get(header, ("Num.X",), path, int)
    ny = _get(header, ("Num.Y",), path, int)
    check_pixels(nx, ny, path)
    width = _get(header, ("Length x[A]",), path)
    height = _get(header, ("Length y[A]",), path)
    check_scan_size(width, height, path)
    n_planes = _get(header, ("Channels",), path, int)
    if not 1 <= n_planes <= 64:
        raise CorruptFileError(path, f"implausible Channels={n_planes}")
    n_dir = 2 if n_planes % 2 == 0 else 1
    per_dir = n_planes // n_dir
    select = int(_opt(header, "Channelselectval") or 0)
    names = channel_names(select, per_dir)
    pll_on = bool(_opt(header, "PLLOn") or 0)

    guessed_df = False
    if channel is None:
        aux = [i for i, n in enumerate(names) if n.startswith("Aux")]
        if not (pll_on and aux):
            raise ChannelNotFoundError(
                path,
                "no frequency-shift (Δf) channel: the PLL was off or no auxiliary channel was "
                f"recorded; available: {', '.join(names)}. Pass channel=<name> to read another one.",
            )
        idx, guessed_df = aux[0], True
    else:
        idx = choose_channel(names, channel, path)
    if direction == "backward" and n_dir == 1:
        raise CorruptFileError(path, "the file holds forward planes only")
    plane_index = idx + (per_dir if direction == "backward" else 0)

    try:
        payload = zlib.decompressobj().decompress(raw[start:], (n_planes * nx * ny + 1) * 4)
    except zlib.error as exc:
        raise CorruptFileError(path, f"compressed data is corrupt ({exc})") from None
    n_values = len(payload) // 4
    if n_values < n_planes * nx * ny:
        raise CorruptFileError(
            path, f"truncated data: {n_values} values, expected {n_planes} planes of {nx}×{ny}"
        )
    values = np.frombuffer(payload, dtype="<f4", count=n_planes * nx * ny)
    frame = values[plane_index * nx * ny : (plane_index + 1) * nx * ny].reshape(ny, nx).astype(np.float32)
    frame[:, 0] = frame[:, 1]  # fly-back artefact

    # Partial scans: ImageYPosMax = Num.Y + 1 when complete.
    ymax = _opt(header, "ImageYPosMax")
    n_rec = ny if ymax is None or not 1 < ymax <= ny else int(ymax) - 1
    if n_rec < 2:
        raise CorruptFileError(path, "fewer than 2 recorded lines")
    if n_rec < ny:
        warnings.warn(f"{path}: incomplete scan, {ny - n_rec} unrecorded line(s) cropped", stacklevel=2)
    frame = frame[:n_rec]
    if not np.isfinite(frame).all():
        raise CorruptFileError(path, f"channel {names[idx]!r} contains NaN or infinite values")
    frame = frame[::-1]  # row 0 = bottom
    dy, dx = height / ny, width / nx

    angle = _opt(header, "Rotation") or 0.0
    ch_mode = _opt(header, "CHMode")
    units = "a.u."
    if names[idx] == "Z":
        units = "DAC"
    metadata: dict[str, Any] = {
        "format": "Createc DAT",
        "channel": names[idx],
        "units": units,
        "direction": direction,
        "scan_direction": "down",
        "scan_angle_deg": float(angle),
        "scan_range_angstrom": [height, width],
        "scan_offset_dac": [_opt(header, "OffsetX"), _opt(header, "OffsetY")],
        "df_channel_guessed": guessed_df,
        "constant_height": None if ch_mode is None else bool(ch_mode),
        "ch_mode_zoff": _opt(header, "CHModeZoff"),
        "pll_on": pll_on,
        "pll_center_freq_hz": _opt(header, "PLLCenterFreq"),
        "bias_v": None if _opt(header, "Biasvolt[mV]") is None else _opt(header, "Biasvolt[mV]") / 1000,
        "title": header.get("Titel", header.get("Titel(File)", "")),
        "memo": header.get("MEMO_STMAFM", ""),
        "available_channels": names,
        "cropped_lines": ny - n_rec,
    }
    if guessed_df:
        warnings.warn(
            f"{path}: Createc does not name its channels; using {names[idx]} as Δf (raw units). "
            "Pass channel=... to choose another.",
            stacklevel=2,
        )
    return Frame(
        data=np.ascontiguousarray(frame),
        pixel_size=(dy, dx),
        origin=((ny - n_rec) * dy, 0.0),
        path=path,
        channel=names[idx],
        units=units,
        z=None,
        metadata=metadata,
    )
