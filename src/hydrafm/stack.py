"""The one data type every part of HydrAFM passes around: a multi-height AFM stack.

Conventions (see ``docs/file-formats.md``):

* ``data`` is float32 with shape ``(n_heights, ny, nx)``; frame 0 is the frame
  recorded closest to the sample.
* Rows are y and columns are x: pixel ``(row, col)`` sits at physical
  ``(origin_y + row * dy, origin_x + col * dx)`` in Å, so row 0 is the *bottom*
  of the scan frame (the instrument software shows it at the bottom, too).
* ``heights`` are tip heights in Å relative to the closest frame (``heights[0]
  == 0``), increasing away from the sample, or ``None`` when the file carries no
  height information.
* The scan angle is kept in ``metadata["scan_angle_deg"]`` and never applied to
  the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["AFMStack"]


@dataclass
class AFMStack:
    """A constant-height AFM stack: one 2D frame per tip height.

    Parameters
    ----------
    data
        Frames, shape ``(n_heights, ny, nx)``; frame 0 closest to the sample.
    pixel_size
        ``(dy, dx)`` in Å.
    heights
        Tip heights in Å relative to the closest frame, increasing = farther,
        or ``None`` when unknown.
    origin
        ``(y0, x0)`` in Å: physical position of pixel ``(0, 0)`` (the bottom-left
        pixel centre).
    metadata
        Source paths, channel name, units, scan direction, scan angle and
        instrument header excerpts.
    """

    data: np.ndarray
    pixel_size: tuple[float, float]
    heights: np.ndarray | None = None
    origin: tuple[float, float] = (0.0, 0.0)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        data = np.asarray(self.data)
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ValueError(f"AFMStack data must be (n_heights, ny, nx), got shape {data.shape}")
        self.data = np.ascontiguousarray(data, dtype=np.float32)
        dy, dx = (float(v) for v in self.pixel_size)
        if not (np.isfinite(dy) and np.isfinite(dx) and dy > 0 and dx > 0):
            raise ValueError(f"pixel_size must be two positive numbers in Å, got {self.pixel_size}")
        self.pixel_size = (dy, dx)
        self.origin = tuple(float(v) for v in self.origin)  # type: ignore[assignment]
        if self.heights is not None:
            heights = np.asarray(self.heights, dtype=np.float64).reshape(-1)
            if heights.size != self.data.shape[0]:
                raise ValueError(
                    f"{heights.size} heights given for {self.data.shape[0]} frames"
                )
            self.heights = heights
        self.metadata = dict(self.metadata)
        self.metadata.setdefault("units", "Hz")
        self.metadata.setdefault("channel", None)
        self.metadata.setdefault("scan_angle_deg", 0.0)
        self.metadata.setdefault("sources", [])

    # ------------------------------------------------------------------ shape
    @property
    def n_heights(self) -> int:
        """Number of frames (tip heights)."""
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(n_heights, ny, nx)``."""
        return tuple(int(v) for v in self.data.shape)  # type: ignore[return-value]

    @property
    def extent(self) -> tuple[float, float]:
        """Scan size ``(height_y, width_x)`` in Å (pixel count × pixel size)."""
        ny, nx = self.data.shape[1:]
        return (ny * self.pixel_size[0], nx * self.pixel_size[1])

    @property
    def channel(self) -> str | None:
        """Name of the recorded channel, e.g. ``"Frequency_Shift"``."""
        return self.metadata.get("channel")

    @property
    def units(self) -> str:
        """Units of ``data`` (``"Hz"`` for Δf, ``"a.u."`` when uncalibrated)."""
        return str(self.metadata.get("units", "a.u."))

    @property
    def scan_angle(self) -> float:
        """Scan frame rotation in degrees (kept, never applied to the pixels)."""
        return float(self.metadata.get("scan_angle_deg", 0.0))

    # --------------------------------------------------------------- helpers
    def xy_coordinates(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical pixel-centre coordinates ``(y, x)`` in Å along rows and columns."""
        ny, nx = self.data.shape[1:]
        y = self.origin[0] + np.arange(ny) * self.pixel_size[0]
        x = self.origin[1] + np.arange(nx) * self.pixel_size[1]
        return y, x

    def with_data(self, data: np.ndarray, **changes: Any) -> AFMStack:
        """A copy with new frames (and optionally other fields changed)."""
        return replace(self, data=data, **changes)

    def summary(self) -> dict[str, Any]:
        """The JSON-able description printed by ``hydrafm info``."""
        return {
            "shape": list(self.shape),
            "pixel_size_angstrom": [round(v, 6) for v in self.pixel_size],
            "extent_angstrom": [round(v, 6) for v in self.extent],
            "heights_angstrom": None
            if self.heights is None
            else [round(float(h), 6) for h in self.heights],
            "channel": self.channel,
            "units": self.units,
            "scan_angle_deg": round(self.scan_angle, 6),
            "source": [str(s) for s in self.metadata.get("sources", [])],
        }

    def __repr__(self) -> str:  # keep the arrays out of reprs in logs
        h = "None" if self.heights is None else f"[{self.heights[0]:.2f} … {self.heights[-1]:.2f}] Å"
        return (
            f"AFMStack(shape={self.shape}, pixel_size={self.pixel_size} Å, heights={h}, "
            f"channel={self.channel!r}, units={self.units!r})"
        )
