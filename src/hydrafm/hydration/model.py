"""Density networks: surface atoms (C, O, Ca channels) → water-O density, after Ranawat et al. 2021.

:class:`DensityUNet` is a 3D U-Net over (x, y, z) voxel windows; with ``attention=True``
its skip connections pass through additive attention gates (Oktay et al. 2018), the
"attention U-Net" variant of the paper, and :meth:`DensityUNet.attention_maps` returns
the gates' maps for display. The output is a non-negative density (softplus) in
Å⁻³ × ``scale``.

With ``periodic=True`` (the default) every convolution wraps around in x and y and
pads with zeros in z: a whole periodic slab cell goes through in one pass, with no
window seams, as long as its x and y voxel counts are multiples of 2**levels
(:func:`hydrafm.hydration.density.slab_grid` chooses them so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["DensityConfig", "DensityUNet"]


@dataclass(frozen=True)
class DensityConfig:
    """Architecture of the density network."""

    in_channels: int = 3
    base_channels: int = 8
    levels: int = 3
    attention: bool = False
    scale: float = 30.0  # the network predicts density × scale (bulk water ≈ 1)
    periodic: bool = True  # wrap around in x and y
    full_res_convs: int = 1  # convolutions per block at the finest level (2 elsewhere); 1 halves the cost


    def to_dict(self) -> dict:
        return asdict(self)


class _Conv(nn.Module):
    """3×3×3 convolution, wrapping around in x and y (periodic) or zero-padded everywhere."""

    def __init__(self, cin: int, cout: int, periodic: bool) -> None:
        super().__init__()
        self.periodic = periodic
        self.conv = nn.Conv3d(cin, cout, 3, padding=(0, 0, 1) if periodic else 1)  # z: zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.periodic:
            x = nn.functional.pad(x, (0, 0, 1, 1, 1, 1), mode="circular")  # y and x wrap
        return self.conv(x)


def _block(cin: int, cout: int, periodic: bool = False, convs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(convs):
        layers += [_Conv(cin if k == 0 else cout, cout, periodic), nn.GroupNorm(min(4, cout), cout),
                   nn.LeakyReLU(0.1, inplace=True)]
    return nn.Sequential(*layers)


def _pointwise(conv: nn.Conv3d, x: torch.Tensor) -> torch.Tensor:
    """A 1×1×1 convolution as a channel matrix product (oneDNN runs these few-channel ones ~5× slower)."""
    w = conv.weight[:, :, 0, 0, 0]
    y = torch.einsum("bcxyz,oc->boxyz", x, w)
    return y + conv.bias.view(1, -1, 1, 1, 1) if conv.bias is not None else y


class _Gate(nn.Module):
    """Additive attention gate: the decoder signal weights the skip features voxel by voxel."""

    def __init__(self, skip: int, gate: int, inner: int) -> None:
        super().__init__()
        self.ws = nn.Conv3d(skip, inner, 1)
        self.wg = nn.Conv3d(gate, inner, 1)
        self.psi = nn.Conv3d(inner, 1, 1)

    def forward(self, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = torch.sigmoid(_pointwise(self.psi, torch.relu(_pointwise(self.ws, x) + _pointwise(self.wg, g))))
        return x * a, a


class DensityUNet(nn.Module):
    """3D U-Net (optionally with attention gates) from slab channels to water density."""

    def __init__(self, config: DensityConfig = DensityConfig()) -> None:
        super().__init__()
        self.config = c = config
        chans = [c.base_channels * 2**k for k in range(c.levels + 1)]
        self.enc = nn.ModuleList()
        cin = c.in_channels
        for k in range(c.levels):
            self.enc.append(_block(cin, chans[k], c.periodic, c.full_res_convs if k == 0 else 2))
            cin = chans[k]
        self.bottom = _block(cin, chans[c.levels], c.periodic)
        self.ups = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.dec = nn.ModuleList()
        for k in reversed(range(c.levels)):
            self.ups.append(nn.ConvTranspose3d(chans[k + 1], chans[k], 2, stride=2))
            self.gates.append(_Gate(chans[k], chans[k], max(1, chans[k] // 2)) if c.attention else nn.Identity())
            self.dec.append(_block(2 * chans[k], chans[k], c.periodic, c.full_res_convs if k == 0 else 2))
        self.head = nn.Conv3d(chans[0], 1, 1)
        self._attention: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, X, Y, Z)`` → ``(B, X, Y, Z)`` density (Å⁻³); X, Y, Z multiples of 2**levels."""
        skips = []
        for block in self.enc:
            x = block(x)
            skips.append(x)
            x = nn.functional.max_pool3d(x, 2)
        x = self.bottom(x)
        self._attention = []
        for up, gate, block, skip in zip(self.ups, self.gates, self.dec, reversed(skips)):
            x = up(x)
            if self.config.attention:
                skip, a = gate(skip, x)
                self._attention.append(a.detach())
            x = block(torch.cat([x, skip], dim=1))
        return nn.functional.softplus(_pointwise(self.head, x)[:, 0]) / self.config.scale

    def attention_maps(self) -> list[torch.Tensor]:
        """The attention gates' maps of the last forward pass, coarse to fine (empty without attention)."""
        return list(self._attention)
