"""Density networks: surface atoms (C, O, Ca channels) → water-O density, after Ranawat et al. 2021.

:class:`DensityUNet` is a 3D U-Net over (x, y, z) voxel windows; with ``attention=True``
its skip connections pass through additive attention gates (Oktay et al. 2018), the
"attention U-Net" variant of the paper, and :meth:`DensityUNet.attention_maps` returns
the gates' maps for display. The output is a non-negative density (softplus) in
Å⁻³ × ``scale``.

With ``gate=True`` the input carries, after the C, O and Ca densities, the distance (Å)
from each voxel to the nearest C, O and Ca atom
(:func:`hydrafm.hydration.voxels.slab_distances`), and the density is multiplied by an
:class:`ExclusionGate`: exactly 0 closer than a learned radius to an atom of each element
and everywhere below such a voxel in its column (inside the slab), rising smoothly to 1
over a learned width. Water inside the crystal or in the excluded gap above it is then
impossible by construction, not clamped after the fact.

With ``periodic=True`` (the default) every convolution wraps around in x and y and
pads with zeros in z: a whole periodic slab cell goes through in one pass, with no
window seams, as long as its x and y voxel counts are multiples of 2**levels
(:func:`hydrafm.hydration.density.slab_grid` chooses them so).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["DensityConfig", "DensityUNet", "ExclusionGate", "GATE_CAP", "CLOSEST_APPROACH"]

#: Å: distances are capped here; the gate's radius plus width never exceed it
GATE_CAP = 3.0
#: Å: the closest a water O comes to a C, O and Ca atom in the MD teacher campaign (all seven runs,
#: 36-40 ps each, on the network grid; ``teacher.closest_approach`` measures it): no water is nearer
CLOSEST_APPROACH = (2.13, 1.99, 1.93)


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
    gate: bool = False  # exclusion gate on 3 extra distance channels (C, O, Ca) after the densities
    gate_min_radii: tuple[float, float, float] = CLOSEST_APPROACH  # Å, C, O, Ca: the gate is 0 nearer

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


class ExclusionGate(nn.Module):
    """Where water may be, from the distances to the nearest C, O and Ca atom: 0 … 1.

    For element e with radius r_e and width w_e (both learned),
    ``g_e = smoothstep((d_e − r_e) / w_e)``: 0 for d_e ≤ r_e, 1 for d_e ≥ r_e + w_e. The gate
    is the product over the elements, then the minimum over the voxel and every voxel above
    it in its column (z is the last axis, up), so nothing under the slab's top atoms is open.
    Each radius is learned between ``min_radii`` (the closest approach of water O to that
    element in the MD teacher, :data:`CLOSEST_APPROACH`: the MD has no water nearer) and
    :data:`GATE_CAP`, and r_e + w_e ≤ :data:`GATE_CAP`.
    """

    def __init__(self, min_radii: tuple[float, float, float], start: float = 0.02, width: float = 0.5) -> None:
        super().__init__()
        self.register_buffer("min_radii", torch.tensor(min_radii, dtype=torch.float32))
        room = GATE_CAP - self.min_radii
        self.raw_radius = nn.Parameter(torch.logit(start / room))
        self.raw_width = nn.Parameter(torch.logit(width / (room - start)))

    def radii_widths(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(radius, width)`` per element (C, O, Ca), Å."""
        r = self.min_radii + (GATE_CAP - self.min_radii) * torch.sigmoid(self.raw_radius)
        return r, (GATE_CAP - r) * torch.sigmoid(self.raw_width)

    def forward(self, distance: torch.Tensor) -> torch.Tensor:
        """``(B, 3, X, Y, Z)`` distances (Å) → ``(B, X, Y, Z)`` gate."""
        r, w = self.radii_widths()
        t = ((distance - r.view(1, 3, 1, 1, 1)) / w.view(1, 3, 1, 1, 1)).clamp(0, 1)
        g = (t * t * (3 - 2 * t)).prod(dim=1)
        return torch.flip(torch.cummin(torch.flip(g, [-1]), dim=-1).values, [-1])


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
        self.gate = ExclusionGate(tuple(c.gate_min_radii)) if c.gate else None
        self._attention: list[torch.Tensor] = []

    @property
    def input_channels(self) -> int:
        """Channels the network takes: the densities, plus 3 distances with the gate."""
        return self.config.in_channels + (3 if self.gate is not None else 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, X, Y, Z)`` → ``(B, X, Y, Z)`` density (Å⁻³); X, Y, Z multiples of 2**levels.

        C is :attr:`input_channels`: the C, O, Ca densities, then (with the gate) the distances.
        """
        if x.shape[1] != self.input_channels:
            raise ValueError(f"the density network takes {self.input_channels} input channels, got {x.shape[1]}")
        distance = x[:, self.config.in_channels:]
        x = x[:, :self.config.in_channels]
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
        rho = nn.functional.softplus(_pointwise(self.head, x)[:, 0]) / self.config.scale
        return rho * self.gate(distance) if self.gate is not None else rho

    def attention_maps(self) -> list[torch.Tensor]:
        """The attention gates' maps of the last forward pass, coarse to fine (empty without attention)."""
        return list(self._attention)
