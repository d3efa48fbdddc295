"""Reading instrument files into one :class:`~hydrafm.stack.AFMStack`.

>>> from hydrafm.io import load_stack
>>> stack = load_stack("scans/")                 # a folder of .sxm files, one per height
>>> stack = load_stack(["a.sxm", "b.sxm"], direction="backward")
>>> stack = load_stack("grid.3ds", heights=[0, 0.5, 1.0])

Every failure is an :class:`AFMFileError` that names the file and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..stack import AFMStack
from ._common import Frame, stack_frames
from .createc import read_createc
from .errors import (
    AFMFileError,
    ChannelNotFoundError,
    CorruptFileError,
    StackMismatchError,
    UnsupportedFormatError,
)
from .gwy import read_gwy
from .images import png_frame_paths, read_png, read_png_folder, read_tiff
from .nanonis_3ds import read_3ds
from .nanonis_sxm import read_sxm
from .npz import closest_first_from_contrast, read_npz, save_npz

__all__ = [
    "AFMFileError",
    "ChannelNotFoundError",
    "CorruptFileError",
    "StackMismatchError",
    "UnsupportedFormatError",
    "FORMATS",
    "detect_format",
    "list_channels",
    "load_stack",
    "read_frame",
    "save_npz",
    "stack_from_frames",
]

#: File kinds by extension. ``frame`` kinds hold one height per file.
FORMATS: dict[str, str] = {
    ".sxm": "sxm",
    ".3ds": "3ds",
    ".dat": "createc",
    ".npz": "npz",
    ".tif": "tiff",
    ".tiff": "tiff",
    ".png": "png",
    ".gwy": "gwy",
}
FRAME_KINDS = ("sxm", "createc", "gwy")
_MAGIC = {
    "sxm": (b":NANONIS_VERSION:",),
    "3ds": (b"Grid dim",),
    "createc": (b"[Paramco32]", b"[Parameter]", b"[Paramet32]"),
    "npz": (b"PK",),
    "tiff": (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"),
    "png": (b"\x89PNG",),
    "gwy": (b"GWYP",),
}


def detect_format(path: str | Path) -> str | None:
    """The kind of an AFM file or folder, or ``None`` when HydrAFM does not read it.

    Cheap and never raises (used by napari's reader hook): files by extension
    and first bytes, folders by their contents.
    """
    try:
        p = Path(path)
        if p.is_dir():
            kinds = _folder_kinds(p)
            return "folder" if kinds else None
        kind = FORMATS.get(p.suffix.lower())
        if kind is None:
            return None
        with open(p, "rb") as fh:
            head = fh.read(32)
        if not head.lstrip().startswith(_MAGIC[kind]):
            return None
        return kind
    except OSError:
        return None


def _folder_kinds(folder: Path) -> dict[str, list[Path]]:
    kinds: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        kind = FORMATS.get(p.suffix.lower())
        if kind == "png" and not p.stem.isdigit():
            continue
        if kind is not None:
            kinds.setdefault(kind, []).append(p)
    return kinds


def _as_paths(paths: str | Path | Iterable[str | Path]) -> list[Path]:
    if isinstance(paths, (str, Path)):
        return [Path(paths)]
    out = [Path(p) for p in paths]
    if not out:
        raise AFMFileError(None, "no files given")
    return out


def load_stack(
    paths: str | Path | Sequence[str | Path],
    channel: str | int | None = None,
    direction: str = "forward",
    *,
    scan_size: float | Sequence[float] | None = None,
    heights: Sequence[float] | None = None,
    z_order: str = "auto",
) -> AFMStack:
    """Read one AFM stack from instrument files.

    Parameters
    ----------
    paths
        One file, several files (one per height: Nanonis .sxm, Createc .dat,
        .gwy) or a folder. Formats: Nanonis ``.sxm`` and ``.3ds``, Createc
        ``.dat``, a folder of ``0.png … N.png`` with ``cell.txt``, multi-page
        TIFF, ml-spm ``.npz`` and Gwyddion ``.gwy``.
    channel
        Channel name or index; ``None`` = frequency shift Δf, found by keyword.
    direction
        ``"forward"`` or ``"backward"`` scan lines (backward ones are mirrored back).
    scan_size
        Scan size in Å, one number or ``(height_y, width_x)``, for files that do
        not store it (PNG, TIFF).
    heights
        For a .3ds grid: the tip heights (Å above the closest usable sweep
        sample) at which to cut slices. For other formats: heights (Å, closest
        frame first) to assign to the frames, e.g. to images that carry none.
    z_order
        For files without heights: ``"auto"`` (infer from the contrast, which
        rises towards the sample), ``"closest_first"`` or ``"closest_last"``.

    Returns
    -------
    AFMStack
        Frames sorted from the closest to the farthest tip height.

    Raises
    ------
    AFMFileError
        With the offending file and the reason, for anything that cannot be read.
    """
    plist = _as_paths(paths)
    for p in plist:
        if not p.exists():
            raise CorruptFileError(p, "file or folder not found")
    if len(plist) == 1 and plist[0].is_dir():
        stack = _read_folder(plist[0], channel, direction, scan_size, heights, z_order)
    elif len(plist) == 1:
        stack = _read_file(plist[0], channel, direction, scan_size, heights, z_order)
    else:
        dirs = [p for p in plist if p.is_dir()]
        if dirs:
            raise AFMFileError(dirs[0], "give either one folder or several files, not a mix")
        kinds = {_kind(p) for p in plist}
        if len(kinds) > 1:
            raise StackMismatchError(plist[0], f"files of different formats ({', '.join(sorted(kinds))}) in one stack")
        kind = kinds.pop()
        if kind not in FRAME_KINDS:
            raise AFMFileError(plist[0], f"{kind} files each hold a whole stack; open them one at a time")
        stack = _stack_files(kind, plist, channel, direction, z_order)
    if heights is not None and stack.metadata.get("format") != "Nanonis 3DS grid":
        h = np.asarray(list(heights), dtype=np.float64)
        if h.shape != (stack.n_heights,) or not np.isfinite(h).all():
            raise ValueError(f"heights must be {stack.n_heights} finite values (Å), got {list(heights)}")
        stack.heights = h
    return stack


def _kind(p: Path) -> str:
    kind = FORMATS.get(p.suffix.lower())
    if kind is None:
        known = ", ".join(sorted(FORMATS))
        raise UnsupportedFormatError(p, f"unknown file type {p.suffix or '(no extension)'!r}; HydrAFM reads {known}")
    return kind


def _read_frame(kind: str, p: Path, channel, direction) -> Frame:
    if kind == "sxm":
        return read_sxm(p, channel, direction)
    if kind == "createc":
        return read_createc(p, channel, direction)
    return read_gwy(p, channel)


def read_frame(path: str | Path, channel: str | int | None = None, direction: str = "forward") -> Frame:
    """Read the one frame (one height) of a Nanonis .sxm, Createc .dat or Gwyddion .gwy file.

    Raises
    ------
    AFMFileError
        Naming the file, when it cannot be read or holds a whole stack.
    """
    p = Path(path)
    kind = _kind(p)
    if kind not in FRAME_KINDS:
        raise UnsupportedFormatError(p, f"{kind} files hold a whole stack, not one frame")
    return _read_frame(kind, p, channel, direction)


def stack_from_frames(frames: Sequence[Frame], source: Path | None = None, z_order: str = "auto") -> AFMStack:
    """One stack from frames read one file each, exactly as :func:`load_stack` stacks a folder.

    Frames are sorted by height (ties keep the given order); without heights they keep
    file-name order, and ``z_order`` says which end is the closest.
    """
    frames = list(frames)
    if any(f.z is None for f in frames):
        frames.sort(key=lambda f: f.path.name)
    stack = stack_frames(frames, source)
    if stack.heights is None and stack.n_heights > 1:
        stack = _apply_z_order(stack, z_order, "file name order")
    return stack


def _stack_files(kind: str, files: list[Path], channel, direction, z_order: str) -> AFMStack:
    frames = [_read_frame(kind, p, channel, direction) for p in files]
    return stack_from_frames(frames, files[0].parent, z_order)


def _apply_z_order(stack: AFMStack, z_order: str, what: str) -> AFMStack:
    if z_order not in ("auto", "closest_first", "closest_last"):
        raise ValueError(f"z_order must be 'auto', 'closest_first' or 'closest_last', got {z_order!r}")
    if z_order == "auto":
        first, evidence = closest_first_from_contrast(stack.data)
        stack.metadata.update(evidence)
        how = "inferred from contrast"
    else:
        first, how = z_order == "closest_first", "given"
    if not first:
        stack.data = np.ascontiguousarray(stack.data[::-1])
        stack.metadata["sources"] = list(stack.metadata.get("sources", []))[::-1]
    stack.metadata["z_order"] = f"{what}: {'closest first' if first else 'closest last'} ({how})"
    return stack


def _read_file(p: Path, channel, direction, scan_size, heights, z_order) -> AFMStack:
    kind = _kind(p)
    if kind in FRAME_KINDS:
        return stack_frames([_read_frame(kind, p, channel, direction)], p.parent)
    if kind == "3ds":
        return read_3ds(p, channel, direction, heights)
    if kind == "npz":
        return read_npz(p, z_order)
    if kind == "tiff":
        return read_tiff(p, scan_size, "closest_last" if z_order == "closest_last" else "closest_first")
    return read_png(p, scan_size)


def _read_folder(folder: Path, channel, direction, scan_size, heights, z_order) -> AFMStack:
    kinds = _folder_kinds(folder)
    if not kinds:
        raise CorruptFileError(
            folder, "no AFM files in this folder (expected .sxm, .dat, .gwy, 0.png … N.png, .npz, .tif or .3ds)"
        )
    frame_kinds = [k for k in FRAME_KINDS if k in kinds]
    if len(frame_kinds) > 1:
        raise StackMismatchError(folder, f"folder mixes {' and '.join(frame_kinds)} files; keep one stack per folder")
    if frame_kinds:
        return _stack_files(frame_kinds[0], kinds[frame_kinds[0]], channel, direction, z_order)
    if "png" in kinds:
        png_frame_paths(folder)  # raises on gaps
        stack = read_png_folder(folder, scan_size)
        if z_order == "closest_last":
            stack.data = np.ascontiguousarray(stack.data[::-1])
        return stack
    whole = [p for k in ("npz", "tiff", "3ds") for p in kinds.get(k, [])]
    if len(whole) > 1:
        raise AFMFileError(folder, f"folder holds {len(whole)} stack files ({', '.join(p.name for p in whole[:4])}); open one")
    return _read_file(whole[0], channel, direction, scan_size, heights, z_order)


def list_channels(path: str | Path) -> list[str]:
    """Channel names in a file (or the first AFM file of a folder); ``[]`` when unnamed or unreadable.

    Cheap: reads headers only where the format allows. Never raises.
    """
    try:
        p = Path(path)
        if p.is_dir():
            kinds = _folder_kinds(p)
            firsts = [v[0] for k, v in kinds.items() if k in FRAME_KINDS or k == "3ds"]
            if not firsts:
                return []
            p = firsts[0]
        kind = FORMATS.get(p.suffix.lower())
        if kind == "sxm":
            from .nanonis_sxm import _table, read_header

            header, _ = read_header(p)
            return [row["Name"] for row in _table(header.get("DATA_INFO", "")) if "Name" in row]
        if kind == "3ds":
            from .nanonis_3ds import _split_list, parse_header

            with open(p, "rb") as fh:
                header, _ = parse_header(fh.read(200_000), p)
            names = [n.replace(" [bwd]", "") for n in _split_list(header.get("Channels", ""))]
            return list(dict.fromkeys(names))
        if kind in ("createc", "gwy"):
            frame = _read_frame(kind, p, 0, "forward")
            return list(frame.metadata.get("available_channels", []))
    except (AFMFileError, OSError, ValueError):
        return []
    return []
