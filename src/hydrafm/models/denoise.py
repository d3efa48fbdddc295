"""The denoiser: takes experiment-like noise off a stack before the structure network sees it.

A residual 2D U-Net (:class:`~hydrafm.models.unet.StructureUNet` with the heights as channels, one
output per height): normalised stack in, normalised stack out, ``x + f(x)``. Its last layer starts
at zero, so an untrained denoiser changes nothing. It is trained
(:mod:`hydrafm.training.denoise`) on clean simulated stacks of training structures against a
noise family broader than the robustness test's (white, 1/k^α with α 0.5–1.5, background
planes, scan-line offsets and jumps, drift, per-frame contrast): the structure networks, trained
mostly on clean stacks, then see stacks that look clean. Checkpoint format
``hydrafm-denoiser/1`` (:func:`save_denoiser`, :func:`load_denoiser`).
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
from .preprocess import normalize_stack
from .unet import StructureUNet, UNetConfig

__all__ = ["DENOISER_FORMAT", "SHIPPED_DENOISER", "Denoiser", "DenoiserInfo", "denoise_normalized",
           "load_denoiser", "save_denoiser", "shipped_denoiser_path"]

DENOISER_FORMAT = "hydrafm-denoiser/1"
#: the denoiser the package ships (``hydrafm/models/weights/denoise.pt``); see docs/structure-network.md
SHIPPED_DENOISER = "denoise"


@dataclass
class DenoiserInfo:
    """What a denoiser expects: heights, their spacing, pixel size, normalisation; and where it came from."""

    n_heights: int = 10
    dz: float = 0.1
    pixel_size: float = 25.0 / 128
    base_channels: int = 16
    levels: int = 3
    normalization: str = "stack-zscore"
    #: the change it makes (RMS of ``f(x)``, normalised units) below which a stack is left alone and above
    #: which it is denoised in full, linear in between: clean stacks pass unchanged (docs/structure-network.md)
    switch: tuple[float, float] = (0.05, 0.10)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.switch = (float(self.switch[0]), float(self.switch[1]))
        if not 0 <= self.switch[0] < self.switch[1]:
            raise ValueError(f"the denoiser's switch needs 0 <= low < high, got {self.switch}")

    def to_dict(self) -> dict[str, Any]:
        return {**vars(self), "switch": list(self.switch)}


class Denoiser(torch.nn.Module):
    """Normalised stack ``(B, Z, H, W)`` → its clean estimate ``(B, Z, H, W)`` (``x + f(x)``)."""

    def __init__(self, info: DenoiserInfo | None = None) -> None:
        super().__init__()
        self.info = info or DenoiserInfo()
        i = self.info
        self.net = StructureUNet(UNetConfig(n_heights=i.n_heights, n_labels=i.n_heights,
                                            base_channels=i.base_channels, levels=i.levels, encoder="2d"))
        torch.nn.init.zeros_(self.net.head.weight)  # starts as the identity
        torch.nn.init.zeros_(self.net.head.bias)

    @property
    def multiple(self) -> int:
        """Sides must be a multiple of this (the U-Net's pooling)."""
        return 2**self.info.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x[:, None])


def save_denoiser(path: str | os.PathLike, model: Denoiser) -> Path:
    """Write a denoiser atomically (``hydrafm-denoiser/1``)."""
    return write_payload(path, DENOISER_FORMAT, model.info.to_dict(), model)


def load_denoiser(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Denoiser:
    """Read a denoiser (eval mode); :class:`CheckpointError` naming the file when it is not one."""
    return load_stack_net(path, DENOISER_FORMAT, "denoiser", lambda info: Denoiser(DenoiserInfo(**info)),
                          map_location)


def shipped_denoiser_path() -> Path:
    """The shipped denoiser's file (it may be missing in a development checkout)."""
    return weights_file(SHIPPED_DENOISER)


def denoise_normalized(x: np.ndarray, model: Denoiser, with_strength: bool = False):
    """Denoise a normalised stack ``(Z, H, W)`` of any lateral size (edge-padded to the U-Net's multiple;
    on the model's device): ``x + w f(x)``, with the strength ``w`` from the size of the change the
    denoiser proposes (``model.info.switch``): 0 for a stack that looks clean, 1 for a noisy one.

    The result is normalised again (``model.info.normalization``), as the structure network expects;
    ``with_strength`` returns ``(result, w)``.
    """
    x = np.asarray(x, np.float32)
    change = run_padded(x, lambda t: model.net(t[:, None]), model.info.n_heights, model.multiple, "denoiser",
                        model)
    lo, hi = model.info.switch
    strength = float(np.clip((np.sqrt(np.mean(change.astype(np.float64) ** 2)) - lo) / (hi - lo), 0.0, 1.0))
    out = normalize_stack(x + strength * change, model.info.normalization)
    return (out, strength) if with_strength else out
