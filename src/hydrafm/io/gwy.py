"""Gwyddion ``.gwy`` files (one channel = one frame), through ``gwyfile``.

Gwyddion data fields store row 0 at the top of the picture; rows are flipped
into the AFMStack convention. The channel *title* is the only label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._common import Frame, check_pixels, check_scan_size, choose_channel, read_bytes
from .errors import CorruptFileError, UnsupportedFormatError

MAGIC = b"GWYP"
M_TO_A = 1e10


def read_gwy(path: str | Path, channel: str | int | None = None) -> Frame:
    """Read one channel of a .gwy file (``None`` = the Δf channel, matched by title)."""
    import gwyfile
    from gwyfile.util import get_datafields

    path = Path(path)
    raw = read_bytes(path)
    if not raw.startswith(MAGIC):
        raise UnsupportedFormatError(path, "not a Gwyddion .gwy file (missing 'GWYP' magic)")
    try:
        fields = get_datafields(gwyfile.load(str(path)))
    except Exception as exc:  # gwyfile raises bare Exceptions and struct errors
        raise CorruptFileError(path, f"unreadable .gwy ({type(exc).__name__}: {exc})") from None
    titles = list(fields)
    if not titles:
        raise CorruptFileError(path, "no data channels in this .gwy file")
    idx = choose_channel(titles, channel, path)
    field = fields[titles[idx]]
    try:
        data = np.asarray(field.data, dtype=np.float32)
        xreal, yreal = float(field.xreal) * M_TO_A, float(field.yreal) * M_TO_A
    except (AttributeError, TypeError, ValueError) as exc:
        raise CorruptFileError(path, f"malformed data field {titles[idx]!r} ({exc})") from None
    if data.ndim != 2:
        raise CorruptFileError(path, f"data field {titles[idx]!r} is not 2D")
    ny, nx = data.shape
    check_pixels(nx, ny, path)
    check_scan_size(xreal, yreal, path)
    if not np.isfinite(data).all():
        raise CorruptFileError(path, f"channel {titles[idx]!r} contains NaN or infinite values")
    unit = getattr(getattr(field, "si_unit_z", None), "unitstr", None) or "a.u."
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
