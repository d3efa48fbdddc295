"""The structure network: a U-Net over (heights, y, x) whose depth is folded into 2D label maps.

Encoder: 3D convolutions over the whole stack (heights × y × x), pooling in x, y at
every level and in z once (10 → 5 heights). Each skip connection is folded from 3D to
2D by a convolution spanning all its heights; the decoder is 2D and ends in one map per
label (logits; ``torch.sigmoid`` gives the 0–1 maps). Folding the depth at the skips
keeps the 3D context of Tang et al.'s 3D U-Net in the encoder while the decoder costs
2D convolutions, so a 10 × 128 × 128 stack runs in a fraction of a second on 2 CPU
cores.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["UNetConfig", "StructureUNet"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of :class:`StructureUNet` (stored in every checkpoint)."""

    n_heights: int = 10
    n_labels: int = 6
    base_channels: int = 16
    levels: int = 3  # number of 2× poolings in x, y
    z_pool_level: int = 1  # the level whose pooling also halves the heights (-1: never)
    encoder: str = "3d"  # "3d": 3D convolutions over the stack, depth folded at the skips; "2d": heights as channels
    head: str = "maps"  # "maps": one full-resolution map per label; "cells": a coarse grid (models/cells.py)
    cell: int = 4  # with head "cells": cell size in pixels (a power of 2, at most 2 ** levels)
    cell_sigma: float = 1.8  # with head "cells": width (px) of the blobs its maps are drawn with

    def to_dict(self) -> dict:
        return asdict(self)


def _block(conv: type[nn.Conv2d] | type[nn.Conv3d], cin: int, cout: int) -> nn.Sequential:
    """Two (3×3[×3] convolution, GroupNorm, LeakyReLU) in a row."""
    layers: list[nn.Module] = []
    for a in (cin, cout):
        layers += [conv(a, cout, 3, padding=1, padding_mode="replicate"), nn.GroupNorm(math.gcd(8, cout), cout),
                   nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


class StructureUNet(nn.Module):
    """Stack ``(B, 1, n_heights, H, W)`` → label logits ``(B, n_labels, H, W)``.

    ``H`` and ``W`` must be multiples of ``2 ** levels``. With ``head="cells"`` the output is
    the cell grid ``(B, 3·n_labels, H/cell, W/cell)`` instead (:mod:`hydrafm.models.cells`);
    :meth:`probabilities` gives 0–1 label maps from either head.
    """

    def __init__(self, config: UNetConfig = UNetConfig()) -> None:
        super().__init__()
        self.config = c = config
        chans = [c.base_channels * 2**i for i in range(c.levels + 1)]
        self.enc = nn.ModuleList()
        self.pools = nn.ModuleList()
        self.folds = nn.ModuleList()
        if c.encoder not in ("3d", "2d"):
            raise ValueError(f"unknown encoder {c.encoder!r}; choose '3d' or '2d'")
        depth = c.n_heights
        cin = 1 if c.encoder == "3d" else c.n_heights
        for i in range(c.levels):
            if c.encoder == "2d":  # the heights are the input channels: 2D all the way
                self.enc.append(_block(nn.Conv2d, cin, chans[i]))
                self.folds.append(nn.Identity())
                self.pools.append(nn.MaxPool2d(2))
                cin = chans[i]
                continue
            self.enc.append(_block(nn.Conv3d, cin, chans[i]))
            self.folds.append(nn.Conv3d(chans[i], chans[i], (depth, 1, 1)))
            pz = 2 if (i == c.z_pool_level and depth >= 2) else 1
            self.pools.append(nn.MaxPool3d((pz, 2, 2)))
            depth //= pz
            cin = chans[i]
        if c.encoder == "2d":
            self.bottom = _block(nn.Conv2d, cin, chans[c.levels])
            self.bottom_fold = nn.Identity()
        else:
            self.bottom = _block(nn.Conv3d, cin, chans[c.levels])
            self.bottom_fold = nn.Conv3d(chans[c.levels], chans[c.levels], (depth, 1, 1))
        self.ups = nn.ModuleList()
        self.dec = nn.ModuleList()
        # the cell head's decoder stops at the cell grid: log2(cell) levels above full resolution
        if c.head not in ("maps", "cells"):
            raise ValueError(f"unknown head {c.head!r}; choose 'maps' or 'cells'")
        stop = 0
        if c.head == "cells":
            stop = int(round(math.log2(c.cell)))
            if 2**stop != c.cell or not 1 <= stop <= c.levels:
                raise ValueError(f"cell {c.cell} px must be a power of 2 from 2 to {2 ** c.levels}")
        for i in reversed(range(stop, c.levels)):
            self.ups.append(nn.ConvTranspose2d(chans[i + 1], chans[i], 2, stride=2))
            self.dec.append(_block(nn.Conv2d, 2 * chans[i], chans[i]))
        self.stop = stop
        if c.head == "cells":
            # where inside its cell an atom sits is fine detail the pooled levels blur: the head also
            # sees the finer skips, unshuffled onto the cell grid (each cell's pixels as channels)
            fine = sum(chans[i] * (c.cell // 2**i) ** 2 for i in range(stop))
            self.cell_mix = nn.Sequential(nn.Conv2d(chans[stop] + fine, chans[stop], 1),
                                          nn.GroupNorm(math.gcd(8, chans[stop]), chans[stop]),
                                          nn.LeakyReLU(0.1, inplace=True))
        self.head = nn.Conv2d(chans[stop], c.n_labels * (3 if c.head == "cells" else 1), 1)
        # Atoms cover ~2 % of the pixels (of the cells: a few %): start the confidences near that
        # prior instead of 0.5, so training does not spend its first epochs pushing the background down.
        nn.init.constant_(self.head.bias, 0.0)
        nn.init.constant_(self.head.bias[: c.n_labels], -4.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 4:
            x = x[:, None]
        if self.config.encoder == "2d":
            x = x[:, 0]  # (B, heights, H, W)
            skips = []
            for enc, pool in zip(self.enc, self.pools):
                x = enc(x)
                skips.append(x)
                x = pool(x)
            y = self.bottom(x)
        else:
            skips = []
            for enc, fold, pool in zip(self.enc, self.folds, self.pools):
                x = enc(x)
                skips.append(fold(x)[:, :, 0])
                x = pool(x)
            y = self.bottom_fold(self.bottom(x))[:, :, 0]
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips)):
            y = dec(torch.cat([up(y), skip], dim=1))
        if self.config.head == "cells":
            cell = self.config.cell
            y = self.cell_mix(torch.cat([y] + [nn.functional.pixel_unshuffle(skips[i], cell // 2**i)
                                               for i in range(self.stop)], dim=1))
        return self.head(y)

    def probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """Label maps ``(B, n_labels, H, W)`` in 0–1, whatever the head: what Predict reads."""
        out = self(x)
        if self.config.head == "cells":
            from .cells import render_cells

            return render_cells(out, self.config.cell, self.config.cell_sigma)
        return torch.sigmoid(out)
