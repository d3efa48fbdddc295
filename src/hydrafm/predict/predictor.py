"""Whole-scan prediction: an AFMStack of any size and pixel size → label maps → atoms.

1. Choose the model's number of heights from the stack: the closest frames at the
   model's height step when heights are known, the first frames otherwise.
2. Resample every frame to the model's pixel size from the scan's physical size.
3. Normalise the whole stack (and, when asked or the model's card says so, take experiment-like
   noise off it with the denoiser, :mod:`hydrafm.models.denoise`), run the network on overlapping tiles (fully
   convolutional; tiles of ``tile`` px with ``overlap`` px, blended with a smooth
   window) so scans of any size fit in memory, and merge the tiles' maps; the depth network
   (:mod:`hydrafm.models.depth`) makes a depth map of the same stack.
4. Peaks → atoms (:func:`~hydrafm.predict.atoms.maps_to_atoms`), in the input's
   physical frame, assembled into whole molecules
   (:func:`~hydrafm.predict.molecules.maps_to_molecules`) unless loose atoms are asked for, each
   molecule placed at its depth (:func:`~hydrafm.predict.depth.place_at_depth`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Generator

import numpy as np
import torch
from ase import Atoms

from ..models.bond_ends import BondEndNet, load_bond_ends, shipped_bond_ends_path
from ..models.o_check import OCheckNet, load_o_check, shipped_o_check_path
from ..models.checkpoint import ModelInfo, load_checkpoint
from ..models.denoise import Denoiser, denoise_normalized, load_denoiser, shipped_denoiser_path
from ..models.registry import SHIPPED_MODELS, model_path
from ..models.preprocess import normalize_stack
from ..models.unet import StructureUNet
from ..progress import Progress, drive
from ..stack import AFMStack
from ..models.depth import DepthNet, depth_map
from .atoms import label_threshold, maps_to_atoms
from .bond_ends import put_level_h_on_donor_ends
from .o_check import check_o_peaks
from .depth import place_at_depth, resolve_depth
from .molecules import ion_identity, maps_to_molecules

__all__ = ["predict_atoms", "predict_maps", "iter_predict_maps", "Prediction", "model_path", "resolve_model",
           "default_flips", "default_denoise", "resolve_denoiser", "reports_ions",
           "select_heights", "SHIPPED_MODELS", "default_threshold", "label_margins",
           "assembly_prior", "default_bond_ends", "resolve_bond_ends", "default_o_check", "resolve_o_check"]

def resolve_model(model: str | Path | tuple[StructureUNet, ModelInfo], device: str | torch.device = "cpu"):
    """A model name (shipped), a checkpoint path, or an already loaded ``(model, info)``."""
    if isinstance(model, tuple):
        net, info = model
        return net.to(device).eval(), info
    net, info, _ = load_checkpoint(model_path(model), map_location=device)
    return net.to(device).eval(), info


def select_heights(stack: AFMStack, n: int, dz: float) -> np.ndarray:
    """``n`` frames ``(n, ny, nx)`` for a model trained on ``n`` heights ``dz`` apart."""
    if stack.n_heights < 2:
        raise ValueError(f"prediction needs a multi-height stack; this one has {stack.n_heights} frame")
    data = stack.data
    if stack.heights is not None and stack.n_heights >= 2:
        want = np.arange(n) * dz
        h = np.asarray(stack.heights)
        if h[-1] >= want[-1] - 1e-6:  # enough range: interpolate each wanted height
            out = np.empty((n,) + data.shape[1:], np.float32)
            for k, z in enumerate(want):
                j = int(np.clip(np.searchsorted(h, z) - 1, 0, len(h) - 2))
                t = 0.0 if h[j + 1] == h[j] else float(np.clip((z - h[j]) / (h[j + 1] - h[j]), 0, 1))
                out[k] = (1 - t) * data[j] + t * data[j + 1]
            return out
    # Unknown or too short height range: spread the available frames over n (nearest frame).
    idx = np.round(np.linspace(0, stack.n_heights - 1, n)).astype(int) if stack.n_heights < n else np.arange(n)
    return data[idx].astype(np.float32)


def _resample(frames: np.ndarray, src: tuple[float, float], dst: float) -> tuple[np.ndarray, tuple[float, float]]:
    from scipy.ndimage import zoom

    ny, nx = frames.shape[1:]
    new = (max(8, round(ny * src[0] / dst)), max(8, round(nx * src[1] / dst)))
    if new == (ny, nx):
        return frames, src
    out = zoom(frames, (1, new[0] / ny, new[1] / nx), order=1)
    return out.astype(np.float32), (ny * src[0] / out.shape[1], nx * src[1] / out.shape[2])


@dataclass
class Prediction:
    """The network's label maps for one scan; :meth:`atoms` turns them into atoms at any threshold."""

    maps: np.ndarray  # (n_labels, ny, nx) 0–1, on the model's pixel grid
    pixel_size: tuple[float, float]  # Å (y, x) of the maps
    origin: tuple[float, float]  # Å (y, x) of the maps' first pixel centre, in the stack's frame
    info: ModelInfo
    model: str = "in-memory"
    denoised: float | None = None  # the denoiser's strength (0: left alone … 1: in full); None: not run
    depth: np.ndarray | None = None  # (ny, nx) Å below the closest probe (the depth network); None: not run
    # (Z, ny, nx) the stack on the maps' grid before normalisation (for the O and bond-end checks); None: not kept
    frames: np.ndarray | None = None
    device: str = "cpu"  # the torch device the structure network ran on: the checks run there too

    def atoms(self, threshold: float | None = None, molecules: bool = True,
              bond_ends: bool | str | Path | BondEndNet | None = None,
              o_check: bool | str | Path | OCheckNet | None = None) -> Atoms:
        """Peaks above ``threshold`` as whole molecules (or loose atoms), Å in the stack's frame.

        ``None`` uses the model's recommended threshold (:func:`default_threshold`).
        ``molecules`` (default) makes every O an H2O with two H and gives ions their
        shell (arrays ``label``, ``confidence``, ``mol``, ``shell``); ``False`` returns
        the peaks as they are (``label``, ``confidence``). A model that does not report
        ions (:func:`reports_ions`) gives none: its Na/K maps are left out. Labels the model
        records a margin for (:func:`label_margins`) need that much more confidence than
        ``threshold``, whichever threshold is given; the H-class tie-breakers it records
        (:func:`assembly_prior`) go to the assembly. Both outputs pass through
        :func:`~hydrafm.predict.molecules.ion_identity` (naming an ion both ion maps show by its
        hydration shell; off by default). With a depth map
        (the depth network), every molecule sits at its depth below the shallowest O/ion (z = 0);
        without one, every O and ion at z = 0. ``bond_ends`` puts level H peaks on the donor end of
        their H-bond before the assembly (:func:`~hydrafm.predict.bond_ends.put_level_h_on_donor_ends`):
        ``None`` as the model's card says (:func:`default_bond_ends`), ``True`` the shipped classifier,
        a path another, ``False`` none; asked for, it needs :attr:`frames` (kept by :func:`iter_predict_maps`).
        ``o_check`` first checks every O peak (:func:`~hydrafm.predict.o_check.check_o_peaks`: unlikely
        O dropped, the others moved where the check reads them), with the same choices and needs.
        """
        threshold = default_threshold(self.info) if threshold is None else threshold
        maps = self.maps
        ions = [i for i, name in enumerate(self.info.labels) if name in ("Na", "K")]
        if ions and not reports_ions(self.info):
            maps = maps.copy()
            maps[ions] = 0.0
        margins = label_margins(self.info)
        for name, asked in (("bond-end", bond_ends), ("O", o_check)):
            if asked not in (None, False) and molecules and self.frames is None:
                raise ValueError(f"the {name} check needs the stack's frames, which this prediction did not keep "
                                 "(make it with iter_predict_maps or predict_atoms)")
        kept = molecules and self.frames is not None
        ends = resolve_bond_ends(bond_ends, self.info, self.device) if kept else None
        o_net = resolve_o_check(o_check, self.info, device=self.device) if kept else None
        if o_net is not None:
            _warn_if_made_for_another_model(o_net, self.model)
        counts: dict[str, int] = {}
        o_counts: dict[str, int] = {}

        def check(loose: Atoms) -> Atoms:
            if o_net is not None:
                loose, found = check_o_peaks(loose, self.frames, maps, list(self.info.labels), self.pixel_size,
                                             self.origin, o_net)
                o_counts.update(found)
            if ends is not None:
                loose, found = put_level_h_on_donor_ends(loose, self.frames, self.pixel_size, self.origin, ends)
                counts.update(found)
            return loose

        if molecules:
            atoms = maps_to_molecules(maps, self.pixel_size, self.origin, threshold, self.info.labels, margins,
                                      prior=assembly_prior(self.info),
                                      peaks=check if ends is not None or o_net is not None else None)
        else:
            atoms = maps_to_atoms(maps, self.pixel_size, self.origin, threshold, self.info.labels, margins)
            atoms = ion_identity(atoms, maps, self.pixel_size, self.origin, threshold, self.info.labels, margins)
        atoms.info["model"] = self.model
        atoms.info["threshold"] = float(threshold)
        for name in margins:
            atoms.info[f"threshold_{name}"] = label_threshold(threshold, name, margins)
        if self.denoised is not None:
            atoms.info["denoised"] = round(float(self.denoised), 3)
        if counts:
            atoms.info["bond_ends"] = f"{counts['moved']} moved, {counts['dropped']} dropped of {counts['checked']}"
        if o_counts:
            views = int(o_net.info.views)
            atoms.info["o_check"] = (f"{o_counts['moved']} moved, {o_counts['dropped']} dropped of {o_counts['checked']}"
                                     + (f" ({views} views)" if views > 1 else ""))
        if self.depth is not None:
            place_at_depth(atoms, self.depth, self.pixel_size, self.origin)
        return atoms


def _warn_if_made_for_another_model(net: OCheckNet, model: str) -> None:
    """Warn when an O check learnt from one shipped model's peaks is asked to judge another shipped model's."""
    made_for = net.info.provenance.get("model")
    if made_for and model in SHIPPED_MODELS and model != made_for:
        warnings.warn(f"the O check learnt from the {made_for!r} model's peaks, not {model!r}'s: it may lower "
                      "H F1 (docs/predict.md, 'The O check')", UserWarning, stacklevel=3)


def default_threshold(info: ModelInfo) -> float:
    """The confidence threshold recorded with the model (best F1 on its validation data), else 0.5."""
    return float(info.provenance.get("threshold", 0.5))


def label_margins(info: ModelInfo) -> dict[str, float]:
    """Extra confidence the peaks of some labels need above the threshold (recorded with the model as
    ``label_margins``, chosen on held-out data like the threshold; e.g. ``{"Na": 0.2}``); empty if none."""
    return {str(k): float(v) for k, v in (info.provenance.get("label_margins") or {}).items()}


def assembly_prior(info: ModelInfo) -> dict[str, float] | None:
    """The model's own tie-breakers for the H classes the assembly infers without evidence (recorded with the
    model as ``assembly_prior``, chosen on held-out data like the threshold; e.g. ``{"H_down": 0.4}``); None:
    the assembly's default (:data:`hydrafm.predict.molecules.PRIOR`)."""
    prior = info.provenance.get("assembly_prior")
    return {str(k): float(v) for k, v in prior.items()} if prior else None


def reports_ions(info: ModelInfo) -> bool:
    """Whether the model's Na/K peaks become atoms (recorded with the model as ``ions``; default
    yes). ``water`` does not: it learnt the ions only to see past them, and the ion model is
    ``na-hydrate``."""
    return bool(info.provenance.get("ions", True))


def default_flips(info: ModelInfo) -> bool:
    """Whether the model's held-out scores were measured averaging the four mirror images (then
    Predict does the same by default), as recorded with the model."""
    return bool(info.provenance.get("flips", False))


def default_bond_ends(info: ModelInfo) -> bool | str:
    """Whether the model's card recommends the bond-end check (recorded as ``bond_ends``: ``True`` for the
    shipped classifier, or the path of another)."""
    value = info.provenance.get("bond_ends", False)
    return value if isinstance(value, str) else bool(value)


def default_o_check(info: ModelInfo) -> bool | str:
    """Whether the model's card recommends the O check (recorded as ``o_check``: ``True`` for the shipped
    check, or the path of another)."""
    value = info.provenance.get("o_check", False)
    return value if isinstance(value, str) else bool(value)


_CHECKS: dict[str, torch.nn.Module] = {}


def _resolve_check(value, default, cls, shipped, load, what: str, info: ModelInfo,
                   device: str | torch.device = "cpu"):
    """A stack check to use: ``None`` → ``default`` (the card's word); ``False`` → none; ``True`` → the shipped
    one; a path → that file (loaded once per device, onto ``device``); or a loaded ``cls`` (used where it is).
    Its heights must be the model's."""
    if value is None:
        value = default
    if value is False:
        return None
    if isinstance(value, cls):
        return value.eval()
    path = shipped() if value is True else Path(value)
    key = f"{what}:{path.resolve()}:{torch.device(device)}"
    if key not in _CHECKS:
        _CHECKS[key] = load(path).to(device)
    net = _CHECKS[key]
    if net.info.n_heights != info.config.n_heights:
        raise ValueError(f"{path}: the {what} takes {net.info.n_heights} heights, the model {info.config.n_heights}")
    return net


def resolve_bond_ends(bond_ends: bool | str | Path | BondEndNet | None, info: ModelInfo,
                      device: str | torch.device = "cpu") -> BondEndNet | None:
    """The bond-end classifier to use: ``None`` → as the model's card says; ``False`` → none; ``True`` → the
    shipped one; a path → that file; or a loaded :class:`~hydrafm.models.bond_ends.BondEndNet`. A file is
    loaded onto ``device`` (Predict's: the structure network's)."""
    return _resolve_check(bond_ends, default_bond_ends(info), BondEndNet,
                          shipped_bond_ends_path, load_bond_ends, "bond-end classifier", info, device)


def resolve_o_check(o_check: bool | str | Path | OCheckNet | None, info: ModelInfo,
                    views: int | None = None, device: str | torch.device = "cpu") -> OCheckNet | None:
    """The O check to use: ``None`` → as the model's card says; ``False`` → none; ``True`` → the shipped
    one; a path → that file; or a loaded :class:`~hydrafm.models.o_check.OCheckNet`. ``views`` (1, 4 or 8;
    None: the check's own) has it read each peak in that many views; asked of no check, a ValueError. A
    file is loaded onto ``device`` (Predict's: the structure network's)."""
    net = _resolve_check(o_check, default_o_check(info), OCheckNet,
                         shipped_o_check_path, load_o_check, "O check", info, device)
    if views is None:
        return net
    if net is None:
        raise ValueError("O check views were asked for, but the O check is off here (ask for it with "
                         "--o-check / o_check=True)")
    return net.with_views(views)


def default_denoise(info: ModelInfo) -> bool | str:
    """Whether the model's card recommends the shipped denoiser before it (recorded as ``denoise``:
    ``True``, or the path of another denoiser file)."""
    value = info.provenance.get("denoise", False)
    return value if isinstance(value, str) else bool(value)


_DENOISERS: dict[tuple[str, str], Denoiser] = {}


def resolve_denoiser(denoise: bool | str | Path | Denoiser | None, info: ModelInfo,
                     device: str | torch.device = "cpu") -> Denoiser | None:
    """The denoiser to use: ``None`` → as the model's card says (:func:`default_denoise`); ``False`` →
    none; ``True`` → the shipped one; a path → that file; or a loaded :class:`Denoiser`."""
    if denoise is None:
        denoise = default_denoise(info)
    if denoise is False:
        return None
    if isinstance(denoise, Denoiser):
        return denoise.to(device).eval()
    path = shipped_denoiser_path() if denoise is True else Path(denoise)
    key = (str(path.resolve()), str(device))
    if key not in _DENOISERS:
        _DENOISERS[key] = load_denoiser(path, map_location=device)
    den = _DENOISERS[key]
    if den.info.n_heights != info.config.n_heights:
        raise ValueError(f"{path}: the denoiser takes {den.info.n_heights} heights, the model "
                         f"{info.config.n_heights}")
    return den


def predict_maps(
    stack: AFMStack,
    model: str | Path | tuple[StructureUNet, ModelInfo] = "water",
    device: str | torch.device = "cpu",
    tile: int = 128,
    overlap: int = 32,
    flips: bool | None = None,
    denoise: bool | str | Path | Denoiser | None = None,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float], ModelInfo]:
    """Label maps (0–1) for a whole scan: ``(maps, pixel size, origin, info)`` of the maps' grid."""
    p = drive(iter_predict_maps(stack, model, device, tile, overlap, flips, denoise, depth=False), show=False)
    return p.maps, p.pixel_size, p.origin, p.info


def iter_predict_maps(
    stack: AFMStack,
    model: str | Path | tuple[StructureUNet, ModelInfo] = "water",
    device: str | torch.device = "cpu",
    tile: int = 128,
    overlap: int = 32,
    flips: bool | None = None,
    denoise: bool | str | Path | Denoiser | None = None,
    depth: bool | str | Path | DepthNet | None = None,
) -> Generator[Progress, None, Prediction]:
    """:func:`predict_maps` as a generator: yields :class:`Progress` per tile, returns a :class:`Prediction`.

    ``flips`` averages the maps over the four mirror images of each tile (test-time
    augmentation: about 4× the network time); ``None`` does what the model recommends
    (:func:`default_flips`). ``denoise`` takes experiment-like noise off the normalised stack
    first (:func:`resolve_denoiser`; ``None``: as the model's card says). ``depth`` makes a depth
    map with the depth network (:func:`~hydrafm.predict.depth.resolve_depth`; ``None``: the
    shipped one, unless the card says otherwise). Closing the generator between tiles cancels the
    prediction.
    """
    name = "in-memory" if isinstance(model, tuple) else str(model)
    yield Progress("loading model", 0, 1)
    net, info = resolve_model(model, device)
    flips = default_flips(info) if flips is None else bool(flips)
    frames = select_heights(stack, info.config.n_heights, info.dz)
    frames, px = _resample(frames, stack.pixel_size, info.pixel_size)
    # pixel centres of the resampled grid, in the stack's physical frame
    y0 = stack.origin[0] - stack.pixel_size[0] / 2 + px[0] / 2
    x0 = stack.origin[1] - stack.pixel_size[1] / 2 + px[1] / 2
    x = normalize_stack(frames, info.normalization)
    den, strength = resolve_denoiser(denoise, info, device), None
    if den is not None:
        yield Progress("denoising", 0, 1)
        x, strength = denoise_normalized(x, den, with_strength=True)
    mult = 2**info.config.levels
    z, h, w = x.shape
    tile = max(mult, tile - tile % mult)
    th, tw = min(tile, -(-h // mult) * mult), min(tile, -(-w // mult) * mult)
    ph, pw = max(h, th), max(w, tw)
    xp = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w)), mode="edge")
    acc = np.zeros((info.config.n_labels, ph, pw), np.float32)
    wsum = np.zeros((ph, pw), np.float32)
    win = np.outer(np.hanning(th + 2)[1:-1], np.hanning(tw + 2)[1:-1]).astype(np.float32) + 1e-3
    step_y, step_x = max(1, th - overlap), max(1, tw - overlap)
    rows = sorted({*range(0, ph - th + 1, step_y), ph - th})
    cols = sorted({*range(0, pw - tw + 1, step_x), pw - tw})
    tiles = [(r, c) for r in rows for c in cols]
    yield Progress("predicting", 0, len(tiles))
    for k, (r, c) in enumerate(tiles):
        t = torch.from_numpy(np.ascontiguousarray(xp[:, r : r + th, c : c + tw]))[None, None].to(device)
        with torch.no_grad():
            if flips:
                views = [(), (-1,), (-2,), (-2, -1)]
                batch = torch.cat([t.flip(v) if v else t for v in views])
                out = net.probabilities(batch).float()
                m = torch.stack([o.flip(v) if v else o for o, v in zip(out, views)]).mean(0).cpu().numpy()
            else:
                m = net.probabilities(t)[0].float().cpu().numpy()
        acc[:, r : r + th, c : c + tw] += m * win
        wsum[r : r + th, c : c + tw] += win
        yield Progress("predicting", k + 1, len(tiles))
    maps = (acc / wsum)[:, :h, :w]
    dnet, depth_m = resolve_depth(depth, info, device), None
    if dnet is not None:
        yield Progress("depth", 0, 1)
        depth_m = depth_map(x, dnet)
    return Prediction(maps, px, (y0, x0), info, name, strength, depth_m, frames, str(torch.device(device)))


def predict_atoms(
    stack: AFMStack,
    model: str | Path | tuple[StructureUNet, ModelInfo] = "water",
    device: str | torch.device = "cpu",
    threshold: float | None = None,
    flips: bool | None = None,
    molecules: bool = True,
    denoise: bool | str | Path | Denoiser | None = None,
    depth: bool | str | Path | DepthNet | None = None,
    bond_ends: bool | str | Path | BondEndNet | None = None,
    o_check: bool | str | Path | OCheckNet | None = None,
) -> Atoms:
    """Whole molecules of a stack (``label``, ``confidence``, ``mol``, ``shell``), Å in the stack's frame.

    ``molecules=False`` returns the loose atoms (``label``, ``confidence``) instead. ``depth``: see
    :func:`iter_predict_maps`; ``bond_ends``, ``o_check``: see :meth:`Prediction.atoms`.
    """
    return drive(iter_predict_maps(stack, model, device, flips=flips, denoise=denoise, depth=depth),
                 show=False).atoms(threshold, molecules, bond_ends, o_check)
