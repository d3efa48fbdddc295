"""Image exports: a folder of ``0.png … N.png`` with ``cell.txt``, and multi-page TIFF.

PNG folders are the format of the group behind Tang et al. (AmorAFM): frame
``0.png`` is the closest, ``cell.txt`` holds the scan size in nm. Image row 0 is
the top of the picture, so rows are flipped into the AFMStack convention.
Neither format carries Δf units or tip heights: ``units`` is ``"a.u."`` and
``heights`` is ``None``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..stack import AFMStack
from ._common import Frame, check_pixels, check_scan_size, read_bytes
from .errors import CorruptFileError, StackMismatchError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def parse_scan_size(scan_size: float | Sequence[float] | None, path: Path) -> tuple[float, float] | None:
    """``(height_y, width_x)`` in Å from a number or a pair; ``None`` passes through."""
    if scan_size is None:
        return None
    vals = [float(scan_size)] * 2 if np.isscalar(scan_size) else [float(v) for v in scan_size]  # type: ignore[arg-type]
    if len(vals) != 2:
        raise ValueError(f"scan_size must be one number or (height_y, width_x) in Å, got {scan_size!r}")
    check_scan_size(vals[1], vals[0], path)
    return vals[0], vals[1]


def png_frame_paths(folder: Path) -> list[Path]:
    """``0.png … N.png`` in a folder, sorted by number; gaps are an error."""
    pngs = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.stem.isdigit()]
    pngs.sort(key=lambda p: int(p.stem))
    numbers = [int(p.stem) for p in pngs]
    if numbers and numbers != list(range(len(numbers))):
        missing = sorted(set(range(max(numbers) + 1)) - set(numbers))
        raise CorruptFileError(folder, f"PNG frames are not numbered 0…N without gaps (missing {missing[:5]})")
    return pngs


def read_cell(path: Path, shape: tuple[int, int]) -> tuple[float, float]:
    """Scan size ``(height_y, width_x)`` in Å from a ``cell.txt`` (nm).

    The file holds a label line and then ``Ly Lx`` in nm (the AmorAFM
    convention). One number means a square scan. For non-square images, the
    assignment that gives the most nearly square pixels is used.
    """
    try:
        text = read_bytes(path).decode("utf-8", "replace")
    except CorruptFileError:
        raise
    nums: list[float] = []
    for line in text.splitlines():
        found = [float(v) for v in re.findall(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", line)]
        if found:
            nums = found  # the last line with numbers wins
    if not nums:
        raise CorruptFileError(path, "no scan size (nm) found in cell.txt")
    if len(nums) == 1:
        ly = lx = nums[0]
    else:
        ly, lx = nums[0], nums[1]
        ny, nx = shape
        if ny != nx:
            aspect = lambda a, b: abs(np.log((a / ny) / (b / nx)))  # noqa: E731
            if aspect(lx, ly) < aspect(ly, lx):
                ly, lx = lx, ly
    size = (ly * 10.0, lx * 10.0)
    check_scan_size(size[1], size[0], path)
    return size


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    raw = read_bytes(path)
    if not raw.startswith(PNG_MAGIC):
        raise CorruptFileError(path, "not a PNG image (wrong magic bytes)")
    try:
        import io

        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return np.asarray(im.convert("F"), dtype=np.float32)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise CorruptFileError(path, f"unreadable PNG ({exc})") from None


def read_png_folder(
    folder: str | Path, scan_size: float | Sequence[float] | None = None
) -> AFMStack:
    """Read a ``0.png … N.png`` folder (0 = closest) with ``cell.txt`` (nm)."""
    folder = Path(folder)
    paths = png_frame_paths(folder)
    if not paths:
        raise CorruptFileError(folder, "no 0.png … N.png frames in this folder")
    frames = [_read_png(p) for p in paths]
    for p, f in zip(paths[1:], frames[1:]):
        if f.shape != frames[0].shape:
            raise StackMismatchError(
                p, f"frame size {f.shape[1]}×{f.shape[0]} px differs from "
                f"{frames[0].shape[1]}×{frames[0].shape[0]} px in {paths[0].name}"
            )
    ny, nx = frames[0].shape
    check_pixels(nx, ny, paths[0])
    size = parse_scan_size(scan_size, folder)
    if size is None:
        cell = folder / "cell.txt"
        if not cell.exists():
            raise CorruptFileError(
                folder, "no cell.txt with the scan size (nm); pass scan_size=<Å> to give it"
            )
        size = read_cell(cell, (ny, nx))
    data = np.stack(frames)[:, ::-1]
    meta: dict[str, Any] = {
        "format": "PNG folder",
        "channel": "image",
        "units": "a.u.",
        "sources": [str(p) for p in paths],
        "z_order": "0.png closest",
    }
    return AFMStack(data=data, pixel_size=(size[0] / ny, size[1] / nx), heights=None, metadata=meta)


def _png_and_size(path: Path, scan_size: float | Sequence[float] | None) -> tuple[np.ndarray, tuple | None]:
    """A checked PNG image and the scan size given for it (``None`` when none was)."""
    frame = _read_png(path)
    ny, nx = frame.shape
    check_pixels(nx, ny, path)
    return frame, parse_scan_size(scan_size, path)


def read_png_frame(path: str | Path, scan_size: float | Sequence[float] | None = None) -> Frame:
    """One numbered frame ``N.png`` of a PNG folder, its scan size from ``cell.txt`` beside it.

    The frame is oriented like :func:`read_png_folder`'s (row 0 = bottom); it has no
    height (``N`` is its place in the stack, 0 = closest).
    """
    path = Path(path)
    frame, size = _png_and_size(path, scan_size)
    ny, nx = frame.shape
    if size is None:
        cell = path.parent / "cell.txt"
        if not cell.exists():
            raise CorruptFileError(path, "no cell.txt with the scan size (nm) beside this image")
        size = read_cell(cell, (ny, nx))
    meta = {"format": "PNG folder", "channel": "image", "units": "a.u.", "z_order": "0.png closest",
            "scan_range_angstrom": [size[0], size[1]]}
    return Frame(data=np.ascontiguousarray(frame[::-1]), pixel_size=(size[0] / ny, size[1] / nx),
                 origin=(0.0, 0.0), path=path, channel="image", units="a.u.", metadata=meta)


def read_png(path: str | Path, scan_size: float | Sequence[float] | None = None) -> AFMStack:
    """Read one PNG image as a one-frame stack (needs ``scan_size``)."""
    path = Path(path)
    frame, size = _png_and_size(path, scan_size)
    if size is None:
        raise CorruptFileError(path, "a PNG image has no scan size; pass scan_size=<Å>")
    ny, nx = frame.shape
    meta = {"format": "PNG", "channel": "image", "units": "a.u.", "sources": [str(path)]}
    return AFMStack(data=frame[::-1], pixel_size=(size[0] / ny, size[1] / nx), metadata=meta)


_LENGTH_UNITS = {"nm": 10.0, "nanometer": 10.0, "å": 1.0, "angstrom": 1.0, "a": 1.0,
                 "um": 1e4, "µm": 1e4, "micron": 1e4, "pm": 0.01}


def read_tiff(
    path: str | Path,
    scan_size: float | Sequence[float] | None = None,
    z_order: str = "closest_first",
) -> AFMStack:
    """Read a (multi-page) TIFF: page 0 is the closest frame unless ``z_order="closest_last"``.

    The scan size comes from ``scan_size`` (Å) or, failing that, from ImageJ
    resolution tags with a length unit; otherwise it is an error.
    """
    import tifffile

    path = Path(path)
    read_bytes(path)  # clear error for missing/unreadable files
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.asarray()
            ij = tif.imagej_metadata or {}
            page = tif.pages[0]
            xres = page.tags.get("XResolution")
            yres = page.tags.get("YResolution")
            desc = page.description or ""
    except (tifffile.TiffFileError, ValueError, OSError, IndexError, KeyError) as exc:
        raise CorruptFileError(path, f"unreadable TIFF ({exc})") from None
    data = np.asarray(data)
    if data.ndim == 4 and data.shape[-1] in (3, 4):
        data = data[..., :3].mean(axis=-1)
    if data.ndim == 3 and data.shape[-1] in (3, 4) and data.shape[0] > 4:
        data = data[..., :3].mean(axis=-1)
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3:
        raise CorruptFileError(path, f"expected frames of (height, y, x), got an array of shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise CorruptFileError(path, f"unsupported pixel type {data.dtype}")
    data = data.astype(np.float32)
    n, ny, nx = data.shape
    check_pixels(nx, ny, path)
    if not np.isfinite(data).all():
        raise CorruptFileError(path, "contains NaN or infinite values")
    size = parse_scan_size(scan_size, path)
    if size is None:
        unit = str(ij.get("unit", "")).strip().lower().replace("\\u00c5", "å")
        if unit in _LENGTH_UNITS and xres is not None and yres is not None:
            px_per_unit_x = xres.value[0] / xres.value[1]
            px_per_unit_y = yres.value[0] / yres.value[1]
            if px_per_unit_x > 0 and px_per_unit_y > 0:
                f = _LENGTH_UNITS[unit]
                size = (ny / px_per_unit_y * f, nx / px_per_unit_x * f)
                check_scan_size(size[1], size[0], path)
    if size is None:
        raise CorruptFileError(path, "the TIFF has no scan size in a length unit; pass scan_size=<Å>")
    if z_order not in ("closest_first", "closest_last"):
        raise ValueError(f"z_order must be 'closest_first' or 'closest_last', got {z_order!r}")
    if z_order == "closest_last":
        data = data[::-1]
    meta = {
        "format": "TIFF",
        "channel": str(ij.get("channel", "image")),
        "units": str(ij.get("df_units", "a.u.")),
        "sources": [str(path)],
        "z_order": f"page 0 {'closest' if z_order == 'closest_first' else 'farthest'}",
        "description": desc[:500],
    }
    # TIFF rows: row 0 is the top of the picture
    return AFMStack(data=data[:, ::-1], pixel_size=(size[0] / ny, size[1] / nx), metadata=meta)
