"""napari reader hook: every AFM format HydrAFM reads, through :func:`hydrafm.load_stack`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ._layers import stack_layer_data
from .io import detect_format, load_stack

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | Path | list[str | Path]) -> Callable[[Any], list[LayerData]] | None:
    """Return a reader when HydrAFM can read ``path`` (cheap check, never raises)."""
    paths = path if isinstance(path, list) else [path]
    if not paths or any(detect_format(p) is None for p in paths):
        return None
    return read_stack


def read_stack(path: str | Path | list[str | Path]) -> list[LayerData]:
    """Read files (several .sxm/.dat = one stack) or a folder into one image layer.

    Errors are :class:`hydrafm.io.AFMFileError` naming the file and the reason;
    napari shows them as a notification.
    """
    return [stack_layer_data(load_stack(path))]
