"""The ppafm / ml-spm ``.npz`` layout, read and written.

Layout: ``data`` with axes **(x, y, z)**, ``lengthX`` and ``lengthY`` in Å; the
atom at physical ``(x, y)`` sits at ``data[x / dx, y / dy]``. ppafm's
``AFMulator`` puts the *closest* frame last; experimental files vary, so when a
file carries no heights the z order is inferred from the contrast (closer frames
have more contrast) unless ``z_order`` says otherwise.

Files written by :func:`save_npz` add ``heights`` (Å, in the order of the z axis),
``channel``, ``units`` and ``metadata_json``, and keep the ml-spm layout so
ml-spm and ppafm tools read them too.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..stack import AFMStack
from ._common import check_pixels, check_scan_size, read_bytes
from .errors import CorruptFileError, UnsupportedFormatError

Z_ORDERS = ("auto", "closest_first", "closest_last")


def frame_contrast(data: np.ndarray) -> np.ndarray:
    """Per-frame contrast: standard deviation after removing the mean plane."""
    n, ny, nx = data.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    basis = np.stack([np.ones(ny * nx), yy.ravel(), xx.ravel()], axis=1)
    flat = data.reshape(n, -1).T.astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, flat, rcond=None)
    return (flat - basis @ coef).std(axis=0)


def frame_sharpness(data: np.ndarray) -> np.ndarray:
    """Per-frame sharpness: mean |Laplacian| of the lightly smoothed frame over its standard deviation.

    Closer frames resolve finer detail (the CO tip's repulsive contrast), whatever the
    frames' scaling: unlike the raw contrast this holds for stacks normalised frame by
    frame, whose far frames can carry a large, smooth attractive blob.
    """
    from scipy.ndimage import gaussian_filter, laplace

    out = []
    for f in np.asarray(data, dtype=np.float64):
        sd = f.std()
        out.append(float(np.abs(laplace(gaussian_filter(f, 1.0))).mean() / sd) if sd > 0 else 0.0)
    return np.array(out)


def closest_first_from_contrast(data: np.ndarray) -> tuple[bool, dict[str, float]]:
    """Whether frame 0 is the closest, judged by the detail rising towards the sample.

    The frames' sharpness (:func:`frame_sharpness`) decides; when it does not differ
    between the first and last third of the frames (within 5 %), the raw contrast
    (:func:`frame_contrast`, larger when closer) does. Returns the decision and the evidence.
    """
    k = max(1, len(data) // 3)
    s = frame_sharpness(data)
    c = frame_contrast(data)
    s_first, s_last = float(s[:k].mean()), float(s[-k:].mean())
    c_first, c_last = float(c[:k].mean()), float(c[-k:].mean())
    evidence = {"sharpness_first": s_first, "sharpness_last": s_last, "contrast_first": c_first,
                "contrast_last": c_last}
    if abs(s_first - s_last) > 0.05 * max(s_first, s_last):
        return s_first > s_last, evidence
    return c_first >= c_last, evidence


def read_npz(path: str | Path, z_order: str = "auto") -> AFMStack:
    """Read an ml-spm / ppafm ``.npz`` stack (``data`` (x, y, z), ``lengthX``, ``lengthY`` Å)."""
    path = Path(path)
    if z_order not in Z_ORDERS:
        raise ValueError(f"z_order must be one of {Z_ORDERS}, got {z_order!r}")
    raw = read_bytes(path)
    if not raw.startswith(b"PK"):
        raise UnsupportedFormatError(path, "not an .npz archive (wrong magic bytes)")
    try:
        with np.load(path, allow_pickle=False) as f:
            files = set(f.files)
            missing = {"data", "lengthX", "lengthY"} - files
            if missing:
                raise CorruptFileError(
                    path, f"not an ml-spm stack: missing key(s) {sorted(missing)} (has {sorted(files)})"
                )
            data = np.asarray(f["data"])
            lx, ly = float(np.asarray(f["lengthX"]).reshape(-1)[0]), float(np.asarray(f["lengthY"]).reshape(-1)[0])
            heights = np.asarray(f["heights"], dtype=np.float64) if "heights" in files else None
            channel = str(f["channel"]) if "channel" in files else "df"
            units = str(f["units"]) if "units" in files else "a.u."
            extra = json.loads(str(f["metadata_json"])) if "metadata_json" in files else {}
    except CorruptFileError:
        raise
    except Exception as exc:  # numpy's header parser raises SyntaxError, TokenError, zlib errors…
        raise CorruptFileError(path, f"unreadable .npz ({type(exc).__name__}: {exc})") from None
    if data.ndim == 2:
        data = data[:, :, None]
    if data.ndim == 4 and data.shape[0] == 1:  # (batch, x, y, z)
        data = data[0]
    if data.ndim != 3:
        raise CorruptFileError(path, f"'data' must have axes (x, y, z), got shape {data.shape}")
    if not np.issubdtype(data.dtype, np.number) or np.iscomplexobj(data):
        raise CorruptFileError(path, f"'data' has unsupported type {data.dtype}")
    nx, ny, nz = data.shape
    check_pixels(nx, ny, path)
    check_scan_size(lx, ly, path)
    stack = np.ascontiguousarray(data.transpose(2, 1, 0), dtype=np.float32)  # (z, y, x)
    bad = ~np.isfinite(stack).all(axis=(1, 2))
    if bad.any():
        raise CorruptFileError(path, f"frame(s) {np.nonzero(bad)[0].tolist()} contain NaN or infinite values")

    evidence: dict[str, Any] = {}
    if heights is not None:
        if heights.shape != (nz,) or not np.isfinite(heights).all():
            raise CorruptFileError(path, f"'heights' must hold {nz} finite values")
        closest_first = bool(heights[0] <= heights[-1])
        how = "heights in file"
    elif z_order == "auto":
        closest_first, evidence = closest_first_from_contrast(stack) if nz > 1 else (True, {})
        how = "inferred from contrast" if nz > 1 else "single frame"
    else:
        closest_first = z_order == "closest_first"
        how = "given"
    if not closest_first:
        stack = stack[::-1]
        heights = None if heights is None else heights[::-1]
    if heights is not None:
        heights = heights - heights[0]
    meta: dict[str, Any] = {
        **extra,
        "format": "ml-spm npz",
        "channel": channel,
        "units": units,
        "sources": [str(path)],
        "z_order": f"{'closest first' if closest_first else 'closest last'} in file ({how})",
        **evidence,
    }
    meta.setdefault("scan_angle_deg", 0.0)
    return AFMStack(
        data=np.ascontiguousarray(stack), pixel_size=(ly / ny, lx / nx), heights=heights, metadata=meta
    )


def save_npz(stack: AFMStack, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a stack as ml-spm ``.npz`` (closest frame last, as ppafm does) plus HydrAFM keys.

    The write is atomic (temporary file, then rename) and refuses to replace an
    existing file unless ``overwrite=True``.
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_suffix(".npz")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    data = stack.data[::-1].transpose(2, 1, 0)  # (x, y, z), closest last
    ny, nx = stack.data.shape[1:]
    keep = {k: v for k, v in stack.metadata.items() if _jsonable(v)}
    arrays: dict[str, Any] = {
        "data": data,
        "lengthX": np.float64(nx * stack.pixel_size[1]),
        "lengthY": np.float64(ny * stack.pixel_size[0]),
        "channel": np.str_(stack.channel or "df"),
        "units": np.str_(stack.units),
        "metadata_json": np.str_(json.dumps(keep)),
    }
    if stack.heights is not None:
        arrays["heights"] = np.asarray(stack.heights, dtype=np.float64)[::-1]
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez_compressed(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
        return True
    except (TypeError, ValueError):
        return False
