"""Helpers shared by the readers: frames, channel matching, sanity checks, stacking."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..stack import AFMStack
from .errors import ChannelNotFoundError, CorruptFileError, StackMismatchError

#: Largest frame side we accept (pixels); larger header values are treated as corrupt.
MAX_PIXELS = 16384
#: Largest scan size we accept (Å): 100 µm.
MAX_SCAN_SIZE_ANGSTROM = 1.0e6

DF_UNITS = "Hz"


@dataclass
class Frame:
    """One frame read from one file, before frames are combined into a stack.

    ``z`` is the instrument's tip Z in Å with the sign convention already turned
    into *distance*: a larger ``z`` is farther from the sample. ``None`` when the
    file has no usable height.
    """

    data: np.ndarray
    pixel_size: tuple[float, float]
    origin: tuple[float, float]
    path: Path
    channel: str | None
    units: str
    z: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def number_or_none(value: str | None) -> float | None:
    """The first number in a header value (quotes ignored), or ``None`` when there is none."""
    if value is None:
        return None
    try:
        return float(value.strip().strip('"').split()[0])
    except (ValueError, IndexError):
        return None


def normalise_name(name: str) -> str:
    """Lower-case a channel name and reduce punctuation to single spaces."""
    return re.sub(r"[^a-z0-9]+", " ", name.lower()).strip()


def is_df_name(name: str) -> bool:
    """Whether a channel name means the frequency shift Δf, whatever the software calls it.

    Matches ``Frequency_Shift`` (Nanonis Generic 4), ``OC_M1_Freq._Shift``
    (Generic 5), ``Frequency Shift (Hz)`` / ``OC M1 Freq. Shift [bwd] (Hz)`` (.3ds),
    ``df``, ``Δf`` and ``delta f``.
    """
    n = normalise_name(name.replace("Δ", "delta "))
    words = n.split()
    if "freq" in n and "shift" in n:
        return True
    return "df" in words or n.startswith("delta f") or "frequency shift" in n


def choose_channel(
    names: Sequence[str],
    channel: str | int | None,
    path: Path,
    *,
    what: str = "channel",
) -> int:
    """Index of the requested channel among ``names``.

    ``channel=None`` asks for Δf (matched by keyword); a string is matched
    case-insensitively ignoring punctuation (exact first, then as a substring); an
    int is an index.
    """
    listing = ", ".join(names) if names else "none"
    if channel is None:
        hits = [i for i, n in enumerate(names) if is_df_name(n)]
        if not hits:
            raise ChannelNotFoundError(
                path, f"no frequency-shift (Δf) {what} found; available: {listing}. "
                "Pass channel=<name> to read another one."
            )
        return hits[0]
    if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
        if not 0 <= int(channel) < len(names):
            raise ChannelNotFoundError(path, f"{what} index {channel} out of range; available: {listing}")
        return int(channel)
    want = normalise_name(str(channel))
    if want in {"df", "delta f", "frequency shift", "dfreq"}:
        return choose_channel(names, None, path, what=what)
    normed = [normalise_name(n) for n in names]
    for i, n in enumerate(normed):
        if n == want:
            return i
    hits = [i for i, n in enumerate(normed) if want and want in n]
    if len(hits) == 1:
        return hits[0]
    reason = "is ambiguous" if hits else "not found"
    raise ChannelNotFoundError(path, f"{what} {channel!r} {reason}; available: {listing}")


def check_direction(direction: str, path: Path) -> str:
    """Validate a scan direction argument (``forward`` or ``backward``)."""
    d = str(direction).lower()
    aliases = {"forward": "forward", "fwd": "forward", "backward": "backward", "bwd": "backward"}
    if d not in aliases:
        raise ValueError(f"direction must be 'forward' or 'backward', got {direction!r} (reading {path})")
    return aliases[d]


def check_pixels(nx: int, ny: int, path: Path) -> None:
    """Reject absurd or degenerate frame sizes from a header."""
    for name, n in (("x", nx), ("y", ny)):
        if not 2 <= n <= MAX_PIXELS:
            raise CorruptFileError(
                path, f"implausible number of pixels along {name}: {n} (expected 2–{MAX_PIXELS})"
            )


def check_scan_size(width: float, height: float, path: Path) -> None:
    """Reject absurd scan sizes (Å) from a header."""
    for name, v in (("width", width), ("height", height)):
        if not (np.isfinite(v) and 0 < v <= MAX_SCAN_SIZE_ANGSTROM):
            raise CorruptFileError(path, f"implausible scan {name}: {v!r} Å")


def clean_frame(frame: np.ndarray, path: Path, label: str = "frame") -> tuple[np.ndarray, int]:
    """Check a frame's values; crop trailing rows of an incomplete scan.

    Incomplete scans are padded with NaN after the last recorded line. Rows that
    are entirely NaN at the end (in storage order, i.e. after orientation the
    caller passes rows in acquisition order) are cropped.

    Returns
    -------
    frame, n_cropped
        The (possibly cropped) frame and how many rows were dropped.

    Raises
    ------
    CorruptFileError
        If the frame holds infinities, is entirely NaN, or has NaN inside the
        recorded part.
    """
    if np.isinf(frame).any():
        raise CorruptFileError(path, f"{label} contains infinite values")
    finite_rows = np.isfinite(frame).all(axis=1)
    if not finite_rows.any():
        raise CorruptFileError(path, f"{label} contains no valid data (all NaN)")
    last = int(np.nonzero(finite_rows)[0][-1])
    n_cropped = frame.shape[0] - 1 - last
    body = frame[: last + 1]
    if not np.isfinite(body).all():
        raise CorruptFileError(path, f"{label} contains NaN values inside the recorded area")
    if body.shape[0] < 2:
        raise CorruptFileError(path, f"{label} has fewer than 2 recorded lines")
    if n_cropped:
        warnings.warn(
            f"{path}: incomplete scan, {n_cropped} unrecorded line(s) cropped", stacklevel=3
        )
    return body, n_cropped


def stack_frames(frames: list[Frame], source: Path | None = None) -> AFMStack:
    """Combine frames (one per file) into one stack sorted from closest to farthest.

    Frames must share shape, pixel size (to 0.1 %) and channel; otherwise a
    :class:`StackMismatchError` names the first odd file. Frames are sorted by
    ``z`` (ties keep file order); when any frame lacks a height the file order
    is kept and ``heights`` is ``None``.
    """
    if not frames:
        raise CorruptFileError(source, "no frames to stack")
    ref = frames[0]
    for f in frames[1:]:
        if f.data.shape != ref.data.shape:
            raise StackMismatchError(
                f.path,
                f"frame size {f.data.shape[1]}×{f.data.shape[0]} px differs from "
                f"{ref.data.shape[1]}×{ref.data.shape[0]} px in {ref.path.name}; "
                "frames of one stack must have the same size (no silent resize)",
            )
        if not np.allclose(f.pixel_size, ref.pixel_size, rtol=1e-3, atol=0):
            raise StackMismatchError(
                f.path,
                f"pixel size {tuple(round(v, 5) for v in f.pixel_size)} Å differs from "
                f"{tuple(round(v, 5) for v in ref.pixel_size)} Å in {ref.path.name}",
            )
        if f.channel != ref.channel:
            raise StackMismatchError(
                f.path, f"channel {f.channel!r} differs from {ref.channel!r} in {ref.path.name}"
            )
    if all(f.z is not None for f in frames):
        order = sorted(range(len(frames)), key=lambda i: (frames[i].z, i))
        frames = [frames[i] for i in order]
        z = np.array([f.z for f in frames], dtype=np.float64)
        heights: np.ndarray | None = z - z[0]
    else:
        heights = None
    data = np.stack([f.data for f in frames]).astype(np.float32)
    meta: dict[str, Any] = dict(ref.metadata)
    meta["sources"] = [str(f.path) for f in frames]
    meta["channel"] = ref.channel
    meta["units"] = ref.units
    if len(frames) > 1:
        meta["frames"] = [
            {k: f.metadata.get(k) for k in ("scan_direction", "z_m", "bias_v", "rec_time")}
            | {"path": str(f.path)}
            for f in frames
        ]
        angles = {round(float(f.metadata.get("scan_angle_deg", 0.0)), 6) for f in frames}
        if len(angles) > 1:
            raise StackMismatchError(
                frames[0].path, f"frames have different scan angles {sorted(angles)} °"
            )
    return AFMStack(
        data=data,
        pixel_size=ref.pixel_size,
        heights=heights,
        origin=ref.origin,
        metadata=meta,
    )


def read_bytes(path: Path) -> bytes:
    """Read a whole file, turning OS errors into :class:`AFMFileError` subclasses."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise CorruptFileError(path, "file not found") from None
    except IsADirectoryError:
        raise CorruptFileError(path, "is a folder, expected a file") from None
    except OSError as exc:
        raise CorruptFileError(path, f"cannot be read ({exc.strerror or exc})") from None
