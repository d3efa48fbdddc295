"""Predict the water-O density above a CaCO3 slab with a trained density network.

The network works on a slab's whole periodic cell at once: :func:`slab_grid` picks a
grid of about 0.2 Å whose x and y voxel counts are multiples of 8 (so the periodic
U-Net needs no windows and leaves no seams), from ``Z_MIN`` = −3.2 Å (the top
surface layer and the one below it are seen) to 16 Å above the top Ca plane.

    from hydrafm.hydration.density import predict_density
    dens = predict_density(slab, "hydration-calcite")   # a HydrationDensity (Å⁻³)

Checkpoints (:func:`save_density_model`, :func:`load_density_model`) hold the weights,
the architecture, the grid settings and the provenance (data, command, test MAE).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Generator

import numpy as np
import torch
from ase import Atoms

from ..progress import Progress
from .md import HydrationDensity
from .model import GATE_CAP, DensityConfig, DensityUNet
from .voxels import VoxelGrid, slab_channels, slab_distances

__all__ = ["DensityModelInfo", "save_density_model", "load_density_model", "slab_grid", "slab_input",
           "iter_predict_density", "predict_density", "density_model_path", "SHIPPED_DENSITY_MODELS",
           "DensityModelError"]

FORMAT = "hydrafm-density-net/1"
Z_MIN, HEIGHT, SPACING, SIGMA = -3.2, 19.2, 0.2, 0.3
SHIPPED_DENSITY_MODELS = ("hydration-calcite", "hydration-calcite-attention")
WEIGHTS = Path(__file__).resolve().parent.parent / "models" / "weights"


class DensityModelError(ValueError):
    """A file that is not a usable density-network checkpoint (the message names it)."""


@dataclass
class DensityModelInfo:
    """Everything needed to use a density network besides its weights."""

    config: DensityConfig = field(default_factory=DensityConfig)
    z_min: float = Z_MIN
    height: float = HEIGHT
    spacing: float = SPACING
    sigma: float = SIGMA  # Å, the Gaussian of each slab atom in the input channels
    provenance: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["config"] = self.config.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DensityModelInfo":
        d = dict(d)
        d["config"] = DensityConfig(**d["config"])
        return cls(**d)


def save_density_model(path: str | os.PathLike, model: DensityUNet, info: DensityModelInfo) -> Path:
    """Write the network and its info atomically."""
    from ..models.checkpoint import write_payload

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    return write_payload(path, FORMAT, info.to_dict(), model)


def density_model_path(model: str | os.PathLike) -> Path:
    """A shipped model's name (e.g. ``hydration-calcite``), a user model's name, or a file."""
    from ..models.registry import user_models_dir

    p = Path(model)
    if p.suffix or len(p.parts) > 1:
        return p
    for folder in (WEIGHTS, user_models_dir()):
        if (folder / f"{model}.pt").is_file():
            return folder / f"{model}.pt"
    raise DensityModelError(f"no density model named {str(model)!r}; shipped: {', '.join(SHIPPED_DENSITY_MODELS)}")


def load_density_model(model: str | os.PathLike) -> tuple[DensityUNet, DensityModelInfo]:
    """``(network in eval mode, info)`` from a name or a file."""
    from ..models.checkpoint import read_payload

    path = density_model_path(model)
    payload = read_payload(path, FORMAT, "density-network", DensityModelError)
    try:
        info = DensityModelInfo.from_dict(payload["info"])
        net = DensityUNet(info.config)
        net.load_state_dict(payload["state_dict"])
    except Exception as exc:  # noqa: BLE001
        raise DensityModelError(f"{path}: damaged checkpoint ({exc})") from None
    net.eval()
    return net, info


def slab_grid(slab: Atoms, spacing: float = SPACING, z_min: float = Z_MIN, height: float = HEIGHT,
              multiple: int = 8) -> VoxelGrid:
    """The prediction grid of a slab: ~``spacing`` Å, x and y counts multiples of ``multiple``."""
    lx, ly = float(slab.cell[0, 0]), float(slab.cell[1, 1])
    nx = max(multiple, multiple * round(lx / (spacing * multiple)))
    ny = max(multiple, multiple * round(ly / (spacing * multiple)))
    nz = multiple * round(height / (spacing * multiple))
    dx, dy = lx / nx, ly / ny
    return VoxelGrid((nx, ny, nz), (dx, dy, spacing), (dx / 2, dy / 2, z_min + spacing / 2))


def slab_input(slab: Atoms, info: DensityModelInfo | None = None) -> tuple[np.ndarray, VoxelGrid]:
    """The network input of a slab on :func:`slab_grid`: C, O and Ca densities ``(3, nx, ny, nz)``.

    For a network with the exclusion gate, the distances to the nearest C, O and Ca atom
    follow (6 channels).
    """
    info = info or DensityModelInfo()
    grid = slab_grid(slab, info.spacing, info.z_min, info.height, 2 ** info.config.levels)
    channels, _ = slab_channels(slab, spacing=info.spacing, z_min=info.z_min, height=info.height,
                                sigma=info.sigma, shape_xy=grid.shape[:2])
    if info.config.gate:
        channels = np.concatenate([channels, slab_distances(slab, grid, GATE_CAP)])
    return channels, grid


def iter_predict_density(
    slab: Atoms, model: str | os.PathLike | tuple[DensityUNet, DensityModelInfo] = "hydration-calcite",
    device: str | torch.device = "cpu", attention: bool = False,
) -> Generator[Progress, None, HydrationDensity]:
    """Predict the water-O density (Å⁻³) over the slab's cell; yields progress, returns the density.

    With ``attention=True`` and an attention network, the gates' maps (upsampled to the
    grid) are in the result's ``attention`` attribute.
    """
    _check_slab(slab)
    yield Progress("voxelising the slab", 0, 3)
    net, info = model if isinstance(model, tuple) else load_density_model(model)
    x, grid = slab_input(slab, info)
    yield Progress("predicting the density", 1, 3)
    net = net.to(device)
    with torch.no_grad():
        rho = net(torch.from_numpy(x)[None].to(device))[0].cpu().numpy()
        maps = [m.cpu().numpy()[0, 0] for m in net.attention_maps()] if attention else []
    yield Progress("done", 3, 3)
    out = HydrationDensity(rho.astype(np.float32), grid.spacing, grid.origin, 0, 0.0)  # ≥ 0 by construction
    if maps:
        from scipy.ndimage import zoom

        out.attention = [zoom(m, np.array(grid.shape) / np.array(m.shape), order=1) for m in maps]
    return out


def predict_density(slab: Atoms, model: Any = "hydration-calcite", device: str = "cpu") -> HydrationDensity:
    """:func:`iter_predict_density` without progress."""
    from ..progress import drive

    return drive(iter_predict_density(slab, model, device), show=False)


def _check_slab(slab: Atoms) -> None:
    from .surfaces import SurfaceError

    missing = [e for e, z in (("Ca", 20), ("C", 6), ("O", 8)) if not np.any(slab.numbers == z)]
    if missing:
        raise SurfaceError(f"the slab has no {', '.join(missing)} atoms; a CaCO3 slab needs Ca, C and O")
    cell = slab.cell.array
    if abs(cell[0] @ cell[1]) + abs(cell[0] @ cell[2]) + abs(cell[1] @ cell[2]) > 1e-3:
        raise SurfaceError("the slab's cell is not orthogonal; rebuild it with an orthogonal surface cell")
    top = slab.positions[:, 2].max()
    if top > 3.0:
        raise SurfaceError(f"atoms {top:.1f} Å above the top Ca plane: adsorbates or a wrong surface plane "
                           "(z = 0 must be the top Ca plane, as load_surface/build_surface make it)")
