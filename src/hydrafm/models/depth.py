"""The depth network: how far below the closest probe each O, Na and K of a stack lies.

The structure network says where atoms are in the plane, not how deep. A scan does carry their
heights: a molecule 1 Å lower appears only in the closer frames, fainter and sharper. This 2D
U-Net (:class:`~hydrafm.models.unet.StructureUNet` with the heights as channels, one output) maps
the normalised stack to a *depth map*: at every pixel near an O, Na or K, the height of the
closest probe above that atom (Å). Predict samples it under each heavy atom and places the
molecule that many Å below the shallowest one (:mod:`hydrafm.predict.depth`), so a bilayer's
lower half sits ~0.9 Å below its upper half instead of every O at z = 0.

Depth below the probe, not height above the substrate, because it is what the images show
locally (and it needs no window-wide "highest atom"); differences of depth are what Predict uses.
It is trained (:mod:`hydrafm.training.depth`) on clean simulated stacks of training structures
with random tips and fresh experiment-like noise each step. Checkpoint format
``hydrafm-depth/1`` (:func:`save_depth`, :func:`load_depth`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import write_payload
from .stacknet import load_stack_net, run_padded, weights_file
from .unet import StructureUNet, UNetConfig

__all__ = ["DEPTH_FORMAT", "SHIPPED_DEPTH", "DepthNet", "DepthInfo", "depth_map", "load_depth",
           "save_depth", "shipped_depth_path"]

DEPTH_FORMAT = "hydrafm-depth/1"
#: the depth network the package ships (``hydrafm/models/weights/depth.pt``); see docs/predict.md
SHIPPED_DEPTH = "depth"


@dataclass
class DepthInfo:
    """What a depth network expects (heights, spacing, pixel size, normalisation) and its targets."""

    n_heights: int = 10
    dz: float = 0.1
    pixel_size: float = 25.0 / 128
    base_channels: int = 16
    levels: int = 3
    normalization: str = "stack-zscore"
    offset: float = 3.0  # Å: the output is depth − offset (keeps the head's start near typical depths)
    sigma: float = 0.5  # Å: width of the patch around each atom that carries its depth in training
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class DepthNet(torch.nn.Module):
    """Normalised stack ``(B, Z, H, W)`` → depth map ``(B, H, W)`` (Å below the closest probe)."""

    def __init__(self, info: DepthInfo | None = None) -> None:
        super().__init__()
        self.info = info or DepthInfo()
        i = self.info
        self.net = StructureUNet(UNetConfig(n_heights=i.n_heights, n_labels=1, base_channels=i.base_channels,
                                            levels=i.levels, encoder="2d"))
        torch.nn.init.zeros_(self.net.head.weight)  # starts at depth = offset everywhere
        torch.nn.init.zeros_(self.net.head.bias)

    @property
    def multiple(self) -> int:
        """Sides must be a multiple of this (the U-Net's pooling)."""
        return 2**self.info.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x[:, None])[:, 0] + self.info.offset


def save_depth(path: str | os.PathLike, model: DepthNet) -> Path:
    """Write a depth network atomically (``hydrafm-depth/1``)."""
    return write_payload(path, DEPTH_FORMAT, model.info.to_dict(), model)


def load_depth(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> DepthNet:
    """Read a depth network (eval mode); :class:`CheckpointError` naming the file when it is not one."""
    return load_stack_net(path, DEPTH_FORMAT, "depth network", lambda info: DepthNet(DepthInfo(**info)),
                          map_location)


def shipped_depth_path() -> Path:
    """The shipped depth network's file (it may be missing in a development checkout)."""
    return weights_file(SHIPPED_DEPTH)


def depth_map(x: np.ndarray, model: DepthNet) -> np.ndarray:
    """Depth map ``(H, W)`` (Å below the closest probe) of a normalised stack ``(Z, H, W)`` of any
    lateral size (edge-padded to the U-Net's multiple; on the model's device)."""
    return run_padded(x, model, model.info.n_heights, model.multiple, "depth network", model)
