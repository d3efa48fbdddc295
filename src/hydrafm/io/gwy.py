"""Gwyddion ``.gwy`` files (one channel = one frame), with a small bounds-checked parser.

Format: ``GWYP`` then one serialised object: a NUL-terminated type name, a
uint32 byte size, then components (NUL-terminated name, a type character, the
value; upper-case types are arrays with a uint32 count). A ``GwyContainer`` holds
channels as ``/N/data`` (``GwyDataField``: ``xres``, ``yres``, ``xreal``,
``yreal`` in m, ``data`` doubles) with titles in ``/N/data/title``.

Every length is checked against the remaining bytes, so damaged files fail fast
with a clear error (the ``gwyfile`` package can hang on them). Gwyddion stores
row 0 at the top of the picture; rows are flipped into the AFMStack convention.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ._common import Frame, check_pixels, check_scan_size, choose_channel, read_bytes
from .errors import CorruptFileError, UnsupportedFormatError

MAGIC = b"GWYP"
M_TO_A = 1e10
_SCALAR = {"b": ("<?", 1), "c": ("<c", 1), "i": ("<i", 4), "q": ("<q", 8), "d": ("<d", 8)}
_ARRAY = {"C": ("u1", 1), "I": ("<i4", 4), "Q": ("<i8", 8), "D": ("<f8", 8)}
MAX_DEPTH = 32


class _Parser:
    def __init__(self, buf: bytes, path: Path) -> None:
        self.buf, self.path = buf, path

    def fail(self, what: str) -> CorruptFileError:
        return CorruptFileError(self.path, f"malformed .gwy data ({what})")

    def cstring(self, pos: int, end: int) -> tuple[str, int]:
        nul = self.buf.find(b"\0", pos, end)
        if nul < 0:
            raise self.fail("unterminated string")
        return self.buf[pos:nul].decode("utf-8", "replace"), nul + 1

    def obj(self, pos: int, end: int, depth: int = 0) -> tuple[dict[str, Any], int]:
        if depth > MAX_DEPTH:
            raise self.fail("objects nested too deeply")
        name, pos = self.cstring(pos, end)
        if pos + 4 > end:
            raise self.fail("object size missing")
        (size,) = struct.unpack_from("<I", self.buf, pos)
        pos += 4
        stop = pos + size
        if stop > end:
            raise self.fail(f"object {name!r} runs past the end of the file")
        out: dict[str, Any] = {"__type__": name}
        while pos < stop:
            key, pos = self.cstring(pos, stop)
            if pos >= stop:
                raise self.fail(f"component {key!r} has no type")
            t = chr(self.buf[pos])
            pos += 1
            out[key], pos = self.value(t, pos, stop, depth)
        return out, stop

    def value(self, t: str, pos: int, end: int, depth: int) -> tuple[Any, int]:
        if t in _SCALAR:
            fmt, n = _SCALAR[t]
            if pos + n > end:
                raise self.fail("value runs past its object")
            return struct.unpack_from(fmt, self.buf, pos)[0], pos + n
        if t == "s":
            return self.cstring(pos, end)
        if t == "o":
            return self.obj(pos, end, depth + 1)
        if pos + 4 > end:
            raise self.fail("array length missing")
        (count,) = struct.unpack_from("<I", self.buf, pos)
        pos += 4
        if t in _ARRAY:
            dtype, n = _ARRAY[t]
            if pos + count * n > end:
                raise self.fail("array runs past its object")
            return np.frombuffer(self.buf, dtype=dtype, count=count, offset=pos), pos + count * n
        if t in ("S", "O"):
            items = []
            for _ in range(count):
                if pos >= end:
                    raise self.fail("array runs past its object")
                item, pos = self.cstring(pos, end) if t == "S" else self.obj(pos, end, depth + 1)
                items.append(item)
            return items, pos
        raise self.fail(f"unknown component type {t!r}")


def read_datafields(path: Path) -> dict[str, dict[str, Any]]:
    """``{title: GwyDataField components}`` for every channel of a .gwy file."""
    raw = read_bytes(path)
    if not raw.startswith(MAGIC):
        raise UnsupportedFormatError(path, "not a Gwyddion .gwy file (missing 'GWYP' magic)")
    top, _ = _Parser(raw, path).obj(len(MAGIC), len(raw))
    fields: dict[str, dict[str, Any]] = {}
    for key, val in top.items():
        m = re.fullmatch(r"/(\d+)/data", key)
        if m and isinstance(val, dict) and val.get("__type__") == "GwyDataField":
            title = top.get(f"/{m.group(1)}/data/title", f"Channel {m.group(1)}")
            fields[str(title)] = val
    return fields


def read_gwy(path: str | Path, channel: str | int | None = None) -> Frame:
    """Read one channel of a .gwy file (``None`` = the Δf channel, matched by title)."""
    path = Path(path)
    fields = read_datafields(path)
    titles = list(fields)
    if not titles:
        raise CorruptFileError(path, "no data channels in this .gwy file")
    idx = choose_channel(titles, channel, path)
    field = fields[titles[idx]]
    try:
        nx, ny = int(field["xres"]), int(field["yres"])
        xreal, yreal = float(field["xreal"]) * M_TO_A, float(field["yreal"]) * M_TO_A
        values = np.asarray(field["data"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptFileError(path, f"data field {titles[idx]!r} lacks {exc}") from None
    check_pixels(nx, ny, path)
    if values.size != nx * ny:
        raise CorruptFileError(path, f"data field {titles[idx]!r} holds {values.size} values, expected {nx}×{ny}")
    check_scan_size(xreal, yreal, path)
    data = values.reshape(ny, nx).astype(np.float32)
    if not np.isfinite(data).all():
        raise CorruptFileError(path, f"channel {titles[idx]!r} contains NaN or infinite values")
    unit_obj = field.get("si_unit_z")
    unit = unit_obj.get("unitstr") if isinstance(unit_obj, dict) else None
    unit = unit or "a.u."
    meta = {
        "format": "Gwyddion GWY",
        "channel": titles[idx],
        "units": unit,
        "available_channels": titles,
        "scan_angle_deg": 0.0,
    }
    return Frame(
        data=np.ascontiguousarray(data[::-1]),
        pixel_size=(yreal / ny, xreal / nx),
        origin=(0.0, 0.0),
        path=path,
        channel=titles[idx],
        units=unit,
        metadata=meta,
    )
