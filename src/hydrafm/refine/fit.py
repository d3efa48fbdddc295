"""Refine molecules against a measured stack through the differentiable probe-particle engine.

The predicted (or hand-made) molecules are rigid bodies — a water is its O and two H,
an ion one atom — each with a translation and a rotation. With them, the measurement's
nuisances are fitted too: the tip–sample distance, the tip's rest tilt, lateral
stiffness and charge, a linear lateral drift between frames and, per frame, a Δf scale
and offset (solved in closed form at every step, so the fit does not depend on the
stack's units). The height step is chosen by a search when the stack has no heights.

Loss = image mismatch over all heights (per frame: the squared residual after the
best scale and offset, divided by the frame's variance; mean over frames, so 1 = no
better than a flat image) + priors: heavy atoms of different molecules no closer
than 2.4 Å (O–O; 2.2 Å O–ion, 3 Å ion–ion), an H no closer than 1.55 Å to another
molecule's O (1.6 Å to its H, 2 Å to an ion), and weak pulls keeping molecules near
where they started and the tip near the training tip; with the H-bond turns (ice-like
layers), also an H-bond prior: a reward for every water H 1.8 Å from another molecule's O
with the two O 2.75 Å apart. Molecules stay whole (rigid).

The schedule: overlapping molecules pushed apart (no simulation); the tip distance (and
height step) by a short search; H-bond turns or H flips when asked (a water turned the wrong
way would otherwise be dragged sideways by the gradient); L-BFGS steps on
a coarse pixel grid (0.4 Å); all moves; more coarse steps; optionally a few steps on the
fine grid (0.2 Å; ``fine_share``, off by default: the same time in coarse steps fits better).
The image mismatch before and after is always measured on the fine grid. (Adam, the alternative, keeps wandering near the optimum: every parameter moves
by its learning rate whatever its gradient.) The moves the gradient cannot make are judged on small crops around the
molecule, all candidates of a round in batches: turn a water so that one of its H
changes class (up / flat / down), add a water where the residual is largest, remove a
molecule the data does not support. A move is kept when it lowers the loss of its crop
(adding and removing by a margin). Finally each molecule's fit score is how much of its
crop's mismatch it explains: (loss without it − loss with it) / loss without it, 0–1.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field, replace
from typing import Generator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from ase import Atoms

from ..io.xyz import ELEMENT
from ..progress import Progress
from ..simulate.engine import TipBatch, TorchSimulator
from ..simulate.settings import SimulationSettings
from ..simulate.verify import frame_similarity, on_scan_grid, scan_window
from ..stack import AFMStack
from .bodies import (Bodies, flip_orientations, group_atoms, h_class_of_bodies, hbond_consistent,
                     hbond_orientations, rotation_matrices, turned_orientations, water_orientations)

__all__ = ["RefineSettings", "Refinement", "RefineSnapshot", "TipFit", "iter_refine_atoms", "refine_atoms"]

#: H-bond prior (Å): the O···O distance of an H bond between waters, the H···O distance when it is straight, the
#: width of both wells and how far apart an H and another molecule's O may start to count as a pair
HBOND_OO, HBOND_LENGTH, HBOND_WIDTH, HBOND_REACH = 2.75, 1.8, 0.25, 3.0
#: its weight with the H-bond turns (chosen on training windows: docs/refine.md, "H-bond prior")
HBOND_WEIGHT = 0.3
#: Å, spacing of the tip distances searched around Predict's closest-probe estimate (``probe_estimate``)
PROBE_ESTIMATE_STEP = 0.2
#: Å, width of the pull of the fitted tip distance towards Predict's closest-probe estimate (its held-out
#: error is 0.14–0.23 Å, p90 0.25–0.39 Å)
PROBE_ESTIMATE_WIDTH = 0.3
#: closest allowed distance (Å) between atoms of different molecules, by element pair
MIN_DISTANCE = {(8, 8): 2.4, (8, 11): 2.2, (8, 19): 2.5, (11, 11): 3.0, (11, 19): 3.0, (19, 19): 3.0,
                (1, 8): 1.55, (1, 1): 1.6, (1, 11): 2.0, (1, 19): 2.0}


@dataclass
class RefineSettings:
    """How to refine (defaults: ~30 s for a 25 × 25 Å, 10-height stack on 2 CPU cores)."""

    steps: int = 60  # simulations with gradients in all (coarse; with moves 40 % before, 60 % after them)
    coarse_pixel: float = 0.4  # Å, pixel of the coarse grid (early steps and the moves)
    fine_pixel: float = 0.2  # Å, pixel of the fine grid (never finer than the scan's)
    coarse_grid: int = 3  # force-field points per Å on the coarse grid
    fine_grid: int = 5
    orient_steps: int = 0  # first coarse steps with the molecules' positions frozen (only turns and the tip)
    # of the steps on the fine grid at the end: 0 by default — a fine step costs 3.5-4x a coarse one and the
    # same CPU time spent on more coarse steps ends lower on the fine grid's loss (docs/benchmarks.md)
    fine_share: float = 0.0
    fine_fit_grid: int | None = None  # force-field points per Å of the fine fit steps (None: fine_grid)
    # Å, closest-probe distances to start from: the range training draws (issue 14), since 2026-11-28; up to 3.2 Å
    # before, which left the water/Au(111) fit at 2.6 Å (docs/refine.md)
    distances: tuple[float, ...] = (2.3, 2.6, 2.9, 3.2, 3.5, 3.8)
    # Å: where the atoms carry Predict's closest-probe estimate (``atoms.info["closest_probe"]``, from the
    # depth network), the distances searched are the estimate −/0/+ this spacing instead of ``distances``,
    # and the fitted distance is pulled towards the estimate (:data:`PROBE_ESTIMATE_WIDTH`). None (the
    # default): the estimate is ignored — on the benchmarks it lowered the image mismatch but not the
    # atoms' errors (docs/refine.md); :data:`PROBE_ESTIMATE_STEP` turns it on
    probe_estimate: float | None = None
    height_step_scales: tuple[float, ...] | None = None  # None: (0.8, 1, 1.25) for stacks without heights
    move_rounds: int = 2
    flips: bool = False  # off by default: on realistic structures they hurt so far (docs/refine.md)
    turns: bool = False  # with flips: besides one-H flips, try every other pair of H classes (larger turns)
    # turn a water whose H neither point at neighbouring O nor dangle straight up / down into the orientations
    # that do (the ice rules: H bonds along O–O, one H per bond)
    hbond_turns: bool = False
    max_turns: int = 12  # H-bond orientations tried per water (two H bonds first, then the nearest turn)
    # Å (with ``hbond_turns``; 0: off): in the move rounds after the first fit, a water whose O the fit has moved
    # further than this sideways since the fit began is also offered its starting place, in its starting
    # orientation and in each H-bond orientation there (a wrongly turned water is dragged to fit its H)
    drag_turns: float = 0.0
    declash: bool = True  # first move overlapping molecules apart (rigidly, as little as needed; no simulation)
    declash_turn_cost: float = 1.0  # cost of turning a molecule in the declash, relative to moving it sideways
    add: bool = False  # experimental: new waters are often put in the wrong place (docs/refine.md)
    remove: bool = False  # off by default: it also removed real molecules that were still misplaced
    max_add: int = 3  # new waters per round at most
    crop_half: float = 2.5  # Å: a move is judged on the pixels within this of its centre
    crop_margin: float = 1.5  # Å simulated around the judged pixels
    atom_margin: float = 4.0  # Å: atoms this far beyond a crop still take part in its simulation
    exclusion: float = 3.5  # Å between the centres of moves accepted in one round
    add_gain: float = 0.1  # a new water must lower its crop's loss by this fraction
    remove_gain: float = 0.05  # removing a molecule must lower its crop's loss by this fraction
    optimizer: str = "lbfgs"  # or "adam"
    lr_position: float = 0.04  # Adam only: Å per step
    lr_rotation: float = 0.08  # Adam only: rad per step
    lr_tip: float = 0.03
    fit_tip: bool = True  # distance, lateral stiffness, charge
    # e: the tip charge is fitted in these units (the optimiser's scale; 1 e made L-BFGS's first steps all charge
    # on the water/Au(111) stack, docs/refine.md)
    charge_unit: float = 1.0
    fit_tilt: bool = False  # the tip's rest tilt: off by default (it trades with a shift of every molecule)
    fit_drift: bool = True
    scale_tie: float | None = None  # None: 3 for stacks in Hz, 0 (every frame free) for arbitrary units
    sigma_position: float = 1.0  # Å, weak pull of each molecule back to where it started (lateral)
    sigma_height: float = 0.7  # Å, the same in z
    pull: float = 1e-3  # weight of that pull (per molecule; the image loss is ~0.1–1 at the start)
    # weight of the H-bond prior (per molecule): rewards each water H ~1.8 Å from another molecule's O, 2.75 Å O···O
    # (0: off); None: HBOND_WEIGHT with the H-bond turns (ice-like layers), off otherwise (docs/refine.md)
    hbond: float | None = None
    flips_first: bool = True  # a round of H flips before the first fit
    batch: int = 16  # crops simulated at once
    # a fit stage stops when its last 5 L-BFGS steps lowered the loss by less than this fraction of what the
    # stage has gained so far (0: never); the steps a coarse stage leaves go to the fine grid (its floor is
    # lower: the coarse force field is approximate)
    stall: float = 0.005
    polish_evals: int = 5  # local L-BFGS evaluations given to each candidate of a move before it is judged
    snapshot_every: int = 5
    base: SimulationSettings = field(default_factory=SimulationSettings)


@dataclass
class TipFit:
    """The fitted tip and measurement nuisances."""

    distance: float  # Å, probe above the highest starting atom at the closest height
    tilt_xy: tuple[float, float]  # Å, rest offset of the probe
    k_lateral: float  # N/m
    charge: float  # e
    height_step: float  # Å between frames
    drift: tuple[float, float]  # Å per frame (x, y): frame k is shifted by k × drift
    scale: np.ndarray  # (n_heights,) Δf scale per frame (experiment units per simulated Hz)
    offset: np.ndarray  # (n_heights,) Δf offset per frame (experiment units)


@dataclass
class Refinement:
    """Refined molecules, how well each is supported, the fitted nuisances and the residuals."""

    atoms: Atoms  # label (H re-classed from the geometry), confidence, mol, shell, fit
    fit_score: dict[int, float]  # molecule id → 0–1 (how much of its crop's mismatch it explains)
    tip: TipFit
    loss: list[float]  # total loss per gradient step
    image_loss: tuple[float, float]  # image mismatch before and after (fine grid)
    residual_before: np.ndarray  # (n, ny, nx) on the scan's grid, in units of each frame's std
    residual: np.ndarray
    similarity_before: np.ndarray  # (n,) per-frame correlation of simulation and experiment
    similarity: np.ndarray
    simulated: AFMStack  # the refined structure's stack with the fitted scale and offset
    moves: dict[str, int]  # flips, added, removed
    seconds: float


@dataclass(frozen=True)
class RefineSnapshot:
    """Yielded every few steps: the loss and the residual on the scan's grid (to show it shrinking)."""

    step: int
    total: int
    loss: float
    residual: np.ndarray


# ---------------------------------------------------------------------------------------- grids
class _Level:
    """One simulation grid over the scan window with the experiment resampled onto it."""

    def __init__(self, stack: AFMStack, window, pixel: float, grid: int, dz_scale: float, device, dtype,
                 tie: float = 0.0) -> None:
        size = window.settings.scan_size
        n = max(8, int(round(size / pixel)))
        n += n % 2
        self.n, self.d = n, size / n
        s = replace(window.settings, n_pixels=n, pix_per_angstrom=int(grid), dz=window.settings.dz * dz_scale,
                    lateral_pad=max(window.settings.lateral_pad, 1.0))
        self.settings = s
        self.device, self.dtype = torch.device(device), dtype
        self.sim = TorchSimulator(s, self.device, dtype, ppafm_grid=False)
        self.crop_sims: dict[tuple, TorchSimulator] = {}
        kw = dict(device=self.device, dtype=dtype)
        # experiment heights as fractional indices into the simulated frames (same step in both)
        idx = np.asarray(window.heights, float) / window.settings.dz
        W = np.zeros((len(idx), s.n_heights))
        for k, f in enumerate(idx):
            j = int(min(max(math.floor(f), 0), s.n_heights - 1))
            j1 = min(j + 1, s.n_heights - 1)
            w = float(np.clip(f - j, 0.0, 1.0))
            W[k, j] += 1 - w
            W[k, j1] += w
        self.W = torch.as_tensor(W, **kw)
        from scipy.ndimage import map_coordinates

        ny, nx = stack.data.shape[1:]
        py, px = stack.pixel_size
        c = (np.arange(n) + 0.5) * self.d
        rows, cols = c / py - 0.5, c / px - 0.5
        R, C = np.meshgrid(rows, cols, indexing="ij")
        data = np.nan_to_num(np.asarray(stack.data, dtype=np.float64))
        target = np.stack([map_coordinates(f, [R, C], order=1, mode="nearest") for f in data])
        mask = (R >= -0.5) & (R <= ny - 0.5) & (C >= -0.5) & (C <= nx - 0.5)
        self.target = torch.as_tensor(target, **kw)
        self.mask = torch.as_tensor(mask, **kw)
        m = self.mask
        mean = (self.target * m).sum((-2, -1)) / m.sum()
        self.norm = (((self.target - mean[:, None, None]) * m) ** 2).sum((-2, -1)).clamp_min(1e-12)  # (K,)
        self.tie = float(tie)  # how strongly the per-frame Δf scales are tied together (see _mismatch)

    def crop_sim(self, nc: int, grid: int | None = None) -> TorchSimulator:
        """A simulator for ``nc`` × ``nc`` crops of this grid (force field ``grid`` points per Å)."""
        key = (nc, grid)
        if key not in self.crop_sims:
            s = replace(self.settings, n_pixels=nc, scan_size=nc * self.d,
                        pix_per_angstrom=int(grid or self.settings.pix_per_angstrom))
            self.crop_sims[key] = TorchSimulator(s, self.device, self.dtype, ppafm_grid=False)
        return self.crop_sims[key]


class _Tip(torch.nn.Module):
    """Tip parameters (distance, tilt, log stiffness, charge) and the lateral drift as tensors."""

    def __init__(self, settings: SimulationSettings, distance: float, device, dtype,
                 estimate: tuple[float, float] | None = None, charge_unit: float = 1.0) -> None:
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.base = settings
        self.estimate = estimate  # (distance, width) Å: an estimate of the distance the fit is pulled to
        self.charge_unit = float(charge_unit)  # e per unit of the fitted variable (its scale for the optimiser)
        self.distance = torch.nn.Parameter(torch.tensor(float(distance), **kw))
        self.tilt = torch.nn.Parameter(torch.zeros(2, **kw))
        self.log_k = torch.nn.Parameter(torch.tensor(math.log(settings.k_lateral), **kw))
        self.charge_u = torch.nn.Parameter(torch.tensor(float(settings.tip_charge) / self.charge_unit, **kw))
        self.drift = torch.nn.Parameter(torch.zeros(2, **kw))

    @property
    def charge(self) -> torch.Tensor:
        """The tip's monopole (e)."""
        return self.charge_u * self.charge_unit

    def batch(self, distance: torch.Tensor) -> TipBatch:
        """A TipBatch for ``len(distance)`` structures (``distance`` = what the engine takes, ``(B,)``)."""
        B = distance.shape[0]
        one = torch.ones(B, dtype=distance.dtype, device=distance.device)
        return TipBatch(distance=distance, tilt_xy=self.tilt[None].expand(B, 2), k_lateral=one * self.log_k.exp(),
                        k_radial=one * self.base.k_radial, charge=one * self.charge, quadrupole=one * 0.0)

    def prior(self) -> torch.Tensor:
        out = (((self.log_k - math.log(self.base.k_lateral)) / 0.7) ** 2 + ((self.charge - self.base.tip_charge)
               / 0.15) ** 2 + (self.tilt ** 2).sum() / 0.5 ** 2 + (self.drift ** 2).sum() / 0.2 ** 2)
        if self.estimate is not None:
            out = out + ((self.distance - self.estimate[0]) / self.estimate[1]) ** 2
        return out

    def fitted(self) -> dict:
        return {"distance": float(self.distance.detach()), "tilt_xy": tuple(float(v) for v in self.tilt.detach()),
                "k_lateral": float(self.log_k.detach().exp()), "charge": float(self.charge.detach()),
                "drift": tuple(float(v) for v in self.drift.detach())}


def _simulate(level: _Level, sim: TorchSimulator, positions, numbers: Sequence[Sequence[int]], tip: _Tip,
              z_ref: float) -> torch.Tensor:
    """Δf frames ``(B, n_exp, n, n)`` at the experiment's heights, drift applied.

    The engine puts the probe ``distance`` above each structure's highest atom; passing
    ``distance + z_ref − z_top`` keeps the tip at a fixed height above ``z_ref`` instead,
    whatever the atoms do (and whichever atoms a crop holds).
    """
    kw = dict(device=level.device, dtype=level.dtype)
    if isinstance(positions, torch.Tensor):
        ztop = positions[..., 2].amax(dim=1)
    else:
        ztop = torch.as_tensor([float(np.max(p[:, 2])) for p in positions], **kw)
    tb = tip.batch(tip.distance + z_ref - ztop)
    out = sim(positions, numbers, tb)  # (B, n_sim, n, n)
    out = torch.einsum("kj,bjyx->bkyx", level.W, out)
    return _drift(out, tip.drift, level.d)


def _drift(frames: torch.Tensor, drift: torch.Tensor, pixel: float) -> torch.Tensor:
    """Frame k shifted laterally by k × drift (Å), bilinear, edges repeated."""
    if not drift.requires_grad and not bool((drift != 0).any()):
        return frames
    B, K, ny, nx = frames.shape
    k = torch.arange(K, device=frames.device, dtype=frames.dtype)
    sx = (2.0 / nx) * k * drift[0] / pixel  # normalised units
    sy = (2.0 / ny) * k * drift[1] / pixel
    xs = (torch.arange(nx, device=frames.device, dtype=frames.dtype) + 0.5) * (2.0 / nx) - 1
    ys = (torch.arange(ny, device=frames.device, dtype=frames.dtype) + 0.5) * (2.0 / ny) - 1
    gx = (xs[None, None, :] - sx[:, None, None]).expand(K, ny, nx)
    gy = (ys[None, :, None] - sy[:, None, None]).expand(K, ny, nx)
    # a line search can try a non-finite drift: grid_sample's CPU backward crashes on NaN coordinates (a
    # segfault, not an error), and beyond ±1.5 every sample is the repeated edge anyway
    grid = torch.nan_to_num(torch.stack([gx, gy], dim=-1), nan=0.0).clamp(-1.5, 1.5)
    out = F.grid_sample(frames.permute(1, 0, 2, 3), grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.permute(1, 0, 2, 3)


def _mismatch(frames: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm: torch.Tensor,
              ab: tuple[torch.Tensor, torch.Tensor] | None = None, tie: float = 0.0):
    """Image loss ``(B,)`` and the per-frame scale and offset ``(B, K)`` (closed form unless ``ab`` is given).

    Each frame's scale ``a_k`` and offset ``b_k`` minimise its squared residual (divided by the
    frame's variance) plus ``tie`` × the same-units spread of the scales about their weighted
    mean: ``a_k = (ρ_k + tie · ā) / (1 + tie)`` with ``ρ_k`` the frame's own least-squares
    scale. ``tie`` 0 leaves every frame free (frames normalised one by one); large ties them.
    """
    m = mask
    if ab is None:
        cnt = m.sum()
        s_mean = (frames * m).sum((-2, -1)) / cnt
        e_mean = (target * m).sum((-2, -1)) / cnt
        ds = (frames - s_mean[..., None, None]) * m
        cov = (ds * (target - e_mean[:, None, None])).sum((-2, -1))
        var = (ds * ds).sum((-2, -1)) + 1e-20
        rho = cov / var
        w = var / norm
        a = rho
        if tie > 0:
            mean = (w * rho).sum(-1, keepdim=True) / w.sum(-1, keepdim=True)
            a = (rho + tie * mean) / (1 + tie)
        a = a.clamp_min(0.0)
        b = e_mean - a * s_mean
    else:
        a, b = ab
    r = (target - a[..., None, None] * frames - b[..., None, None]) * m
    loss = ((r * r).sum((-2, -1)) / norm).mean(-1)
    if ab is None and tie > 0:
        loss = loss + tie * (w * (a - mean) ** 2).mean(-1)
    return loss, a, b


# ---------------------------------------------------------------------------------------- structure
@dataclass
class _Structure:
    """The bodies being fitted and their per-atom bookkeeping (labels, confidence, mol, shell)."""

    bodies: Bodies
    label: np.ndarray
    confidence: np.ndarray
    mol: np.ndarray  # molecule id of each atom (unique per body; new ones for added waters)
    shell: np.ndarray

    @property
    def positions(self) -> np.ndarray:
        return self.bodies.positions

    def with_positions(self, positions: np.ndarray) -> "_Structure":
        return replace(self, bodies=self.bodies.baked(positions))

    def take(self, keep: np.ndarray) -> "_Structure":
        """Only the atoms in ``keep`` (bool), bodies renumbered."""
        _, body = np.unique(self.bodies.body[keep], return_inverse=True)
        b = Bodies.from_positions(self.positions[keep], self.bodies.numbers[keep], body.reshape(-1))
        return _Structure(b, self.label[keep], self.confidence[keep], self.mol[keep], self.shell[keep])

    def added(self, positions: np.ndarray, numbers: np.ndarray, labels: np.ndarray) -> "_Structure":
        """With one more molecule."""
        new_mol = int(self.mol.max(initial=-1)) + 1
        body = np.concatenate([self.bodies.body, np.full(len(numbers), self.bodies.n_bodies)])
        b = Bodies.from_positions(np.concatenate([self.positions, positions]),
                                  np.concatenate([self.bodies.numbers, numbers]), body)
        n = len(numbers)
        return _Structure(b, np.concatenate([self.label, labels]), np.concatenate([self.confidence, np.zeros(n)]),
                          np.concatenate([self.mol, np.full(n, new_mol)]), np.concatenate([self.shell, np.full(n, -1)]))


def _structure_of(atoms: Atoms, positions: np.ndarray) -> _Structure:
    body = group_atoms(atoms)
    n = len(atoms)
    b = Bodies.from_positions(positions, atoms.numbers, body)
    label = np.asarray(atoms.arrays.get("label", atoms.get_chemical_symbols())).astype("<U6")
    conf = np.asarray(atoms.arrays.get("confidence", np.ones(n)), dtype=float)
    mol = np.asarray(atoms.arrays.get("mol", np.full(n, -1)), dtype=int).copy()
    # every body gets a molecule id: its own where it has one, new ids for the rest; a lone H (an H
    # peak whose O Predict did not find) is not a molecule and keeps −1
    nxt = int(mol.max(initial=-1)) + 1
    for k in range(b.n_bodies):
        members = b.members(k)
        ids = mol[members][mol[members] >= 0]
        if len(ids):
            mol[members] = ids[0]
        elif len(members) == 1 and atoms.numbers[members[0]] == 1:
            mol[members] = -1
        else:
            mol[members] = nxt
            nxt += 1
    shell = np.asarray(atoms.arrays.get("shell", np.full(n, -1)), dtype=int)
    return _Structure(b, label, conf, mol, shell)


def _min_distances(za: np.ndarray, zb: np.ndarray) -> np.ndarray:
    """:data:`MIN_DISTANCE` for every pair of atoms with atomic numbers ``za`` × ``zb`` (0: no limit)."""
    za, zb = np.asarray(za)[:, None], np.asarray(zb)[None, :]
    out = np.zeros((za.shape[0], zb.shape[1]))
    for (a, b), v in MIN_DISTANCE.items():
        out[((za == a) & (zb == b)) | ((za == b) & (zb == a))] = v
    return out


class _Priors:
    """Clashes between molecules, the pull back to the start, the tip's prior."""

    def __init__(self, structure: _Structure, cfg: RefineSettings, device, dtype) -> None:
        numbers, body = structure.bodies.numbers, structure.bodies.body
        dmin = _min_distances(numbers, numbers)
        dmin[body[:, None] == body[None, :]] = 0.0
        dmin = np.triu(dmin, 1)
        kw = dict(device=device, dtype=dtype)
        self.i, self.j = (torch.as_tensor(v, device=device) for v in np.nonzero(dmin))
        self.dmin = torch.as_tensor(dmin[np.nonzero(dmin)], **kw)
        self.sigma = torch.as_tensor([cfg.sigma_position, cfg.sigma_position, cfg.sigma_height], **kw)
        self.n_bodies = max(1, structure.bodies.n_bodies)
        self.pull = cfg.pull
        # H bonds: each water H with the O of other molecules within reach at the start of the stage
        self.hbond = cfg.hbond if cfg.hbond is not None else (HBOND_WEIGHT if cfg.hbond_turns else 0.0)
        self.hi = self.hj = self.hd = torch.zeros(0, dtype=torch.long, device=device)
        if self.hbond > 0:
            pos = structure.positions
            h = np.flatnonzero(numbers == 1)
            o = np.flatnonzero(numbers == 8)
            if len(h) and len(o):
                d = np.linalg.norm(pos[h, None] - pos[None, o], axis=-1)
                near = (d < HBOND_REACH) & (body[h][:, None] != body[o][None, :])
                a, b = np.nonzero(near)
                donor = {int(body[k]): int(k) for k in o}  # the O of each water
                keep = np.array([int(body[h[k]]) in donor for k in a], bool)
                a, b = a[keep], b[keep]
                self.hi = torch.as_tensor(h[a], device=device)
                self.hj = torch.as_tensor(o[b], device=device)
                self.hd = torch.as_tensor([donor[int(body[h[k]])] for k in a], dtype=torch.long, device=device)

    def clash(self, pos: torch.Tensor) -> torch.Tensor:
        """Sum of squared overlaps (Å²) between atoms of different molecules."""
        d = torch.sqrt(((pos[self.i] - pos[self.j]) ** 2).sum(-1) + 1e-12)
        return (torch.relu(self.dmin - d) ** 2).sum()

    def hbonds(self, pos: torch.Tensor) -> torch.Tensor:
        """Minus the H-bond count: Gaussian wells in H···O and O···O of every donor H–acceptor O pair.

        Both distances at their values for a straight bond (1.8 and 2.75 Å): a bent bond shortens O···O.
        """
        if not len(self.hi):
            return pos.new_zeros(())
        dh = torch.sqrt(((pos[self.hi] - pos[self.hj]) ** 2).sum(-1) + 1e-12)
        do = torch.sqrt(((pos[self.hd] - pos[self.hj]) ** 2).sum(-1) + 1e-12)
        return -torch.exp(-0.5 * (((dh - HBOND_LENGTH) / HBOND_WIDTH) ** 2
                                  + ((do - HBOND_OO) / HBOND_WIDTH) ** 2)).sum()

    def __call__(self, pos: torch.Tensor, t: torch.Tensor, tip: _Tip | None) -> torch.Tensor:
        pull = ((t / self.sigma) ** 2).sum() / self.n_bodies
        out = self.clash(pos) + self.pull * pull
        if self.hbond > 0:
            out = out + self.hbond * self.hbonds(pos) / self.n_bodies
        if tip is not None:
            out = out + 1e-3 * tip.prior()
        return out


def _declash(structure: _Structure, cfg: RefineSettings, iters: int = 60) -> _Structure:
    """Move the molecules rigidly, as little as needed, until no two overlap (no simulation: cheap).

    A starting structure with overlapping molecules (a prediction, a hand-made model, a
    perturbed one) makes the first fit steps all about the overlaps and judges the moves
    on poses no fit would keep.
    """
    if structure.bodies.n_bodies < 2:
        return structure
    priors = _Priors(structure, cfg, "cpu", torch.float64)
    bodies = structure.bodies
    t = torch.zeros((bodies.n_bodies, 3), dtype=torch.float64, requires_grad=True)
    w = torch.zeros((bodies.n_bodies, 3), dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        if float(priors.clash(bodies.posed(t, w))) < 1e-6:
            return structure
    opt = torch.optim.LBFGS([t, w], lr=1.0, max_iter=iters, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        # the clashes, and a pull that keeps every molecule where it was (0.1 Å costs ~1 % of a 0.5 Å overlap);
        # moving up or down costs a tenth of moving sideways, heights being what a start knows least (where
        # molecules sit at one height, as Predict puts them, the overlap gives no vertical push: they move apart
        # sideways)
        loss = priors.clash(bodies.posed(t, w)) + 1e-3 * ((t[:, :2] ** 2).sum() + 0.1 * (t[:, 2] ** 2).sum()
                                                        + cfg.declash_turn_cost * (w**2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return structure.with_positions(bodies.posed(t, w).numpy())


# ---------------------------------------------------------------------------------------- moves
@dataclass
class _Candidate:
    centre: np.ndarray  # (x, y) Å: the crop is centred here
    positions: np.ndarray  # the whole structure with the move made
    numbers: np.ndarray
    kind: str  # base, flip, add, remove
    body: int = -1  # the body it concerns (−1 for an added water)
    key: int = -1  # which baseline it is compared with


def _crop_losses(level: _Level, cands: list[_Candidate], tip: _Tip, z_ref: float, ab, cfg: RefineSettings,
                 cancel_yield: bool = True) -> Generator[Progress, None, np.ndarray]:
    """Loss of every candidate on the crop around its centre (fixed per-frame scale and offset)."""
    n, d = level.n, level.d
    nc = min(n, int(round(2 * (cfg.crop_half + cfg.crop_margin) / d)))
    nc += nc % 2 if nc < n else 0
    sim = level.crop_sim(nc, cfg.fine_grid)  # small boxes: the fine force field costs little
    out = np.zeros(len(cands))
    a, b = (v.detach()[0] for v in ab)
    c = (np.arange(nc) + 0.5) * d
    for s0 in range(0, len(cands), cfg.batch):
        chunk = cands[s0:s0 + cfg.batch]
        pos_l, num_l, targets, masks, empty = [], [], [], [], []
        for cand in chunk:
            i0 = int(np.clip(round(cand.centre[1] / d - nc / 2), 0, n - nc))  # rows: y
            j0 = int(np.clip(round(cand.centre[0] / d - nc / 2), 0, n - nc))  # cols: x
            origin = np.array([j0 * d, i0 * d, 0.0])
            p = cand.positions - origin
            lo, hi = -cfg.atom_margin, nc * d + cfg.atom_margin
            sel = (p[:, 0] > lo) & (p[:, 0] < hi) & (p[:, 1] > lo) & (p[:, 1] < hi)
            empty.append(not sel.any())
            pos_l.append(p[sel] if sel.any() else np.array([[nc * d / 2, nc * d / 2, -50.0]]))
            num_l.append(cand.numbers[sel] if sel.any() else np.array([8]))
            yy, xx = np.meshgrid(c + i0 * d, c + j0 * d, indexing="ij")
            region = (np.abs(yy - cand.centre[1]) <= cfg.crop_half) & (np.abs(xx - cand.centre[0]) <= cfg.crop_half)
            targets.append(level.target[:, i0:i0 + nc, j0:j0 + nc])
            masks.append(level.mask[i0:i0 + nc, j0:j0 + nc] * torch.as_tensor(region, device=level.device,
                                                                                dtype=level.dtype))
        with torch.no_grad():
            frames = _simulate(level, sim, pos_l, num_l, tip, z_ref)
            frames = frames * torch.as_tensor([0.0 if e else 1.0 for e in empty], device=level.device,
                                              dtype=level.dtype)[:, None, None, None]
            tgt, msk = torch.stack(targets), torch.stack(masks)[:, None]
            r = (tgt - a[None, :, None, None] * frames - b[None, :, None, None]) * msk
            loss = ((r * r).sum((-2, -1)) / level.norm).mean(-1)
        out[s0:s0 + len(chunk)] = loss.cpu().numpy()
        if cancel_yield:
            yield Progress("refining: moves", min(s0 + cfg.batch, len(cands)), len(cands))
    return out


def _polish(level: _Level, cands: list[_Candidate], movers: list[np.ndarray], tip: _Tip, z_ref: float, ab,
            cfg: RefineSettings, evals: int = 10) -> Generator[Progress, None, np.ndarray]:
    """Fit the moved molecule of each candidate (rigidly, in its crop) by L-BFGS; update them, return their losses.

    A turned or new water is near, but rarely on, the pose the data shows, and a misplaced
    molecule can look worse than a wrong one that happens to sit right: every candidate a
    move is judged on, the unchanged structure included, gets the same few steps first.
    ``movers[i]`` are the indices (into the candidate's atoms) of the molecule that moves.
    """
    n, d = level.n, level.d
    nc = min(n, int(round(2 * (cfg.crop_half + cfg.crop_margin) / d)))
    nc += nc % 2 if nc < n else 0
    sim = level.crop_sim(nc, cfg.fine_grid)
    kw = dict(device=level.device, dtype=level.dtype)
    a, b = (v.detach()[0] for v in ab)
    c = (np.arange(nc) + 0.5) * d
    out = np.zeros(len(cands))
    for s0 in range(0, len(cands), cfg.batch):
        chunk, chunk_movers = cands[s0:s0 + cfg.batch], movers[s0:s0 + cfg.batch]
        B = len(chunk)
        fixed_l, move_l, num_l, targets, masks, origins = [], [], [], [], [], []
        for cand, mv in zip(chunk, chunk_movers):
            i0 = int(np.clip(round(cand.centre[1] / d - nc / 2), 0, n - nc))
            j0 = int(np.clip(round(cand.centre[0] / d - nc / 2), 0, n - nc))
            origin = np.array([j0 * d, i0 * d, 0.0])
            p = cand.positions - origin
            lo, hi = -cfg.atom_margin, nc * d + cfg.atom_margin
            sel = (p[:, 0] > lo) & (p[:, 0] < hi) & (p[:, 1] > lo) & (p[:, 1] < hi)
            sel[mv] = False
            fixed_l.append(p[sel])
            move_l.append(p[mv])
            num_l.append(list(cand.numbers[sel]) + list(cand.numbers[mv]))
            yy, xx = np.meshgrid(c + i0 * d, c + j0 * d, indexing="ij")
            region = (np.abs(yy - cand.centre[1]) <= cfg.crop_half) & (np.abs(xx - cand.centre[0]) <= cfg.crop_half)
            targets.append(level.target[:, i0:i0 + nc, j0:j0 + nc])
            masks.append(level.mask[i0:i0 + nc, j0:j0 + nc] * torch.as_tensor(region, **kw))
            origins.append(origin)
        n_fix = max(len(f) for f in fixed_l)
        n_mov = max(len(m) for m in move_l)
        fixed = torch.full((B, n_fix, 3), -50.0, **kw)  # padding: far below, never the top atom
        mov0 = torch.zeros((B, n_mov, 3), **kw)
        for k in range(B):
            fixed[k, :len(fixed_l[k])] = torch.as_tensor(fixed_l[k], **kw)
            mov0[k, :len(move_l[k])] = torch.as_tensor(move_l[k], **kw)
        # atoms in the order the numbers list them: this candidate's fixed atoms, then its movers
        order = torch.zeros((B, n_fix + n_mov), dtype=torch.long, device=level.device)
        for k in range(B):
            nf, nm = len(fixed_l[k]), len(move_l[k])
            order[k, :nf + nm] = torch.cat([torch.arange(nf), n_fix + torch.arange(nm)])
            order[k, nf + nm:] = torch.cat([torch.arange(nf, n_fix), n_fix + torch.arange(nm, n_mov)])
        piv = mov0[:, :1]
        t = torch.zeros((B, 3), **kw, requires_grad=True)
        w = torch.zeros((B, 3), **kw, requires_grad=True)
        target, mask = torch.stack(targets), torch.stack(masks)[:, None]

        def positions() -> torch.Tensor:
            moved = piv + t[:, None] + torch.einsum("bij,bnj->bni", rotation_matrices(w), mov0 - piv)
            allp = torch.cat([fixed, moved], dim=1)
            return torch.gather(allp, 1, order[..., None].expand(-1, -1, 3))

        def losses() -> torch.Tensor:
            frames = _simulate(level, sim, positions(), num_l, tip, z_ref)
            r = (target - a[None, :, None, None] * frames - b[None, :, None, None]) * mask
            return ((r * r).sum((-2, -1)) / level.norm).mean(-1)

        opt = torch.optim.LBFGS([t, w], lr=1.0, max_iter=evals, max_eval=evals, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            # stay near the pose tried: within ~0.4 Å in z, ~0.8 Å laterally
            loss = losses().sum() + 10 * (torch.relu(t[:, 2].abs() - 0.4) ** 2).sum() \
                + 10 * (torch.relu(t[:, :2].norm(dim=-1) - 0.8) ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            out[s0:s0 + B] = losses().cpu().numpy()
            moved = (piv + t[:, None] + torch.einsum("bij,bnj->bni", rotation_matrices(w), mov0 - piv)).cpu().numpy()
        for k, (cand, mv) in enumerate(zip(chunk, chunk_movers)):
            p = cand.positions.copy()
            p[mv] = moved[k, :len(mv)] + origins[k]
            cand.positions = p
        yield Progress("refining: moves", min(s0 + B, len(cands)), len(cands))
    return out


def _residual_peaks(level: _Level, frames: torch.Tensor, ab, structure: _Structure, k: int,
                    min_gap: float) -> list[np.ndarray]:
    """Up to ``k`` (x, y) where the residual is largest and no heavy atom is within 2.4 Å."""
    from scipy.ndimage import gaussian_filter

    a, b = (v.detach()[0] for v in ab)
    with torch.no_grad():
        r = (level.target - a[:, None, None] * frames[0] - b[:, None, None]) * level.mask
        # the signed residual, mean over the frames (a missing molecule keeps its sign through the stack)
        signed = (r / torch.sqrt(level.norm / level.mask.sum())[:, None, None]).mean(0).cpu().numpy()
    energy = np.abs(gaussian_filter(signed, 0.7 / level.d))
    c = (np.arange(level.n) + 0.5) * level.d
    yy, xx = np.meshgrid(c, c, indexing="ij")
    heavy = structure.positions[structure.bodies.numbers != 1]
    for p in heavy:
        energy[(yy - p[1]) ** 2 + (xx - p[0]) ** 2 < 2.4**2] = 0
    edge = 1.2
    energy[(yy < edge) | (xx < edge) | (yy > c[-1] + level.d / 2 - edge) | (xx > c[-1] + level.d / 2 - edge)] = 0
    peaks: list[np.ndarray] = []
    for _ in range(k):
        i = int(np.argmax(energy))
        if energy.flat[i] <= 0:
            break
        y, x = yy.flat[i], xx.flat[i]
        peaks.append(np.array([x, y]))
        energy[(yy - y) ** 2 + (xx - x) ** 2 < min_gap**2] = 0
    return peaks


def _clashes(positions: np.ndarray, numbers: np.ndarray, members: np.ndarray, slack: float = 0.1) -> bool:
    """True when an atom of the molecule ``members`` is closer to another molecule's than :data:`MIN_DISTANCE`."""
    rest = np.ones(len(positions), bool)
    rest[members] = False
    if not rest.any():
        return False
    d = np.linalg.norm(positions[members][:, None] - positions[rest][None], axis=-1)
    return bool((d < _min_distances(numbers[members], numbers[rest]) - slack).any())


def _move_round(level: _Level, structure: _Structure, tip: _Tip, z_ref: float, ab, frames: torch.Tensor,
                cfg: RefineSettings, score_only: bool = False, start: np.ndarray | None = None):
    """One round of discrete moves; returns ``(structure, counts, scores per body)``. ``start``: the
    positions when the fit began (for :attr:`RefineSettings.drag_turns`; None: not offered)."""
    bodies = structure.bodies
    pos, numbers = structure.positions, bodies.numbers
    if start is not None and start.shape != pos.shape:
        start = None  # molecules were added or removed since: no starting places to go back to
    cands: list[_Candidate] = []
    base_of_body: dict[int, int] = {}
    water_o = numbers == 8
    for m in range(bodies.n_bodies):
        members = bodies.members(m)
        centre = bodies.pivot[m, :2]
        o = members[numbers[members] == 8]
        h = members[numbers[members] == 1]
        turns: list = []
        if (cfg.flips or cfg.hbond_turns) and not score_only and len(o) == 1 and len(h) == 2:
            if cfg.hbond_turns:
                others = bodies.body != m
                if not hbond_consistent(pos[o[0]], pos[h], pos[others & water_o]):
                    turns = hbond_orientations(pos[o[0]], pos[h], pos[others & water_o],
                                               pos[others & (numbers == 1)])[:cfg.max_turns]
                turns += _dragged_back(start, pos, o[0], h, others & water_o, others & (numbers == 1), cfg)
            if cfg.flips:
                turns += flip_orientations(pos[o[0]], pos[h])
            if cfg.flips and cfg.turns:
                seen = {sig for sig, _ in turns}
                turns += [(sig, p) for sig, p in turned_orientations(pos[o[0]], pos[h], seed=m) if sig not in seen]
        judge_removal = score_only or cfg.remove
        if not turns and not judge_removal:
            continue  # nothing to compare with: the unchanged molecule need not be simulated
        base_of_body[m] = len(cands)
        cands.append(_Candidate(centre, pos, numbers, "base", m))
        if judge_removal:
            keep = np.ones(len(pos), bool)
            keep[members] = False
            cands.append(_Candidate(centre, pos[keep], numbers[keep], "remove", m, base_of_body[m]))
        if turns:
            for _, new in turns:
                p = pos.copy()
                if len(new) == 3:  # the whole water at another place (back where it started): O, then the H
                    p[o[0]], p[h] = new[0], new[1:]
                else:
                    p[h] = new
                cands.append(_Candidate(centre, p, numbers, "flip", m, base_of_body[m]))
    if cfg.add and not score_only:
        z_water = float(np.median(pos[numbers == 8, 2])) if (numbers == 8).any() else float(np.max(pos[:, 2]))
        for peak in _residual_peaks(level, frames, ab, structure, cfg.max_add, cfg.exclusion):
            key = len(cands)
            cands.append(_Candidate(peak, pos, numbers, "base"))
            # the residual's peak is near, not on, the missing molecule: a few places around it
            for dx, dy, dz in itertools.product((-1.2, 0, 1.2), (-1.2, 0, 1.2), (0.0, -0.4)):
                o = np.array([peak[0] + dx, peak[1] + dy, z_water + dz])
                for bonds in water_orientations(4)[:2]:
                    p = np.concatenate([pos, o[None], o + bonds])
                    cands.append(_Candidate(peak, p, np.concatenate([numbers, [8, 1, 1]]), "add", -1, key))
    losses = yield from _crop_losses(level, cands, tip, z_ref, ab, cfg)
    if not score_only and cfg.polish_evals > 0:
        # the unchanged molecule and its two best turns (or a new water's four best places) are fitted
        # locally, the same way, before they are compared
        chosen: list[int] = []
        for key in sorted({c.key for c in cands if c.kind in ("flip", "add")}):
            idx = [i for i, c in enumerate(cands) if c.kind in ("flip", "add") and c.key == key]
            keep = 4 if cands[idx[0]].kind == "add" else 2
            chosen += [idx[j] for j in np.argsort(losses[idx])[:keep]]
            if cands[key].body >= 0:
                chosen.append(key)
        chosen = sorted(set(chosen))
        movers = [np.arange(len(cands[i].positions) - 3, len(cands[i].positions)) if cands[i].kind == "add"
                  else bodies.members(cands[i].body) for i in chosen]
        for i in chosen:  # the base is shared with the removal candidate: polish a copy
            if cands[i].kind == "base":
                cands[i] = replace(cands[i])
        polished = yield from _polish(level, [cands[i] for i in chosen], movers, tip, z_ref, ab, cfg,
                                      cfg.polish_evals)
        losses[chosen] = polished
        for i, mv in zip(chosen, movers):  # a turned or new water that ran into a molecule is not taken
            if cands[i].kind in ("add", "flip") and _clashes(cands[i].positions, cands[i].numbers, mv):
                losses[i] = np.inf
    scores = np.zeros(bodies.n_bodies)
    best: list[tuple[float, int]] = []  # (gain, candidate)
    best_of: dict[int, tuple[float, int]] = {}
    for i, cand in enumerate(cands):
        if cand.kind == "base":
            continue
        base = losses[cand.key]
        gain = base - losses[i]
        if cand.kind == "remove":
            scores[cand.body] = float(np.clip(-gain / max(losses[i], 1e-12), 0.0, 1.0))
            ok = cfg.remove and gain > cfg.remove_gain * base
        elif cand.kind == "add":
            ok = gain > cfg.add_gain * base
        else:
            ok = gain > 1e-3 * base + 1e-9
        if ok and not score_only:
            slot = cand.key
            if slot not in best_of or gain > best_of[slot][0]:
                best_of[slot] = (gain, i)
    best = sorted(best_of.values(), reverse=True)
    accepted: list[int] = []
    centres: list[np.ndarray] = []
    for gain, i in best:
        c = cands[i].centre
        if all(np.hypot(*(c - o)) >= cfg.exclusion for o in centres):
            accepted.append(i)
            centres.append(c)
    counts = {"flips": 0, "added": 0, "removed": 0}
    new_pos = pos.copy()
    drop = np.zeros(len(pos), bool)
    adds = []
    for i in accepted:
        cand = cands[i]
        if cand.kind == "flip":
            members = bodies.members(cand.body)
            new_pos[members] = cand.positions[members]
            counts["flips"] += 1
        elif cand.kind == "remove":
            drop[bodies.members(cand.body)] = True
            counts["removed"] += 1
        else:
            adds.append(cand.positions[-3:])
            counts["added"] += 1
    out = structure.with_positions(new_pos)
    kept_scores = scores
    if drop.any():
        kept_bodies = np.unique(bodies.body[~drop])
        kept_scores = scores[kept_bodies]
        out = out.take(~drop)
    for p in adds:
        out = out.added(p, np.array([8, 1, 1]), np.array(["O", "H_flat", "H_flat"]))
        kept_scores = np.concatenate([kept_scores, [np.nan]])
    return out, counts, kept_scores


def _dragged_back(start: np.ndarray | None, pos: np.ndarray, o: int, h: np.ndarray,
                  other_o: np.ndarray, other_h: np.ndarray, cfg: RefineSettings) -> list:
    """A water the fit dragged sideways by more than ``cfg.drag_turns``: its starting place, as it started
    and in each H-bond orientation there, as ``(classes, (3, 3) O and H positions)``; else none."""
    if start is None or cfg.drag_turns <= 0 or np.hypot(*(pos[o, :2] - start[o, :2])) <= cfg.drag_turns:
        return []
    o0, h0 = start[o], start[h]
    back = [(("start",), np.concatenate([o0[None], h0]))]
    for sig, new_h in hbond_orientations(o0, h0, pos[other_o], pos[other_h])[:cfg.max_turns]:
        back.append((sig, np.concatenate([o0[None], new_h])))
    return back


# ---------------------------------------------------------------------------------------- fitting
def _fit(level: _Level, structure: _Structure, tip: _Tip, z_ref: float, steps: int, cfg: RefineSettings,
         counter: list[int], total: int, losses: list[float], stack: AFMStack, rotation_only: bool = False):
    """L-BFGS (or Adam) steps on molecule poses and tip parameters; returns ``(structure, frames, (a, b))``."""
    kw = dict(device=level.device, dtype=level.dtype)
    bodies = structure.bodies
    M = bodies.n_bodies
    t = torch.zeros((M, 3), **kw, requires_grad=True)
    w = torch.zeros((M, 3), **kw, requires_grad=True)
    groups = [{"params": [t], "lr": cfg.lr_position}, {"params": [w], "lr": cfg.lr_rotation}]
    if rotation_only:  # the molecules only turn (and the tip adapts): a wrong turn is not dragged sideways
        groups = groups[1:]
    tip_params = []
    if cfg.fit_tip:
        tip_params += [tip.distance, tip.log_k, tip.charge_u]
    if cfg.fit_tilt:
        tip_params.append(tip.tilt)
    if cfg.fit_drift and level.W.shape[0] > 1:
        tip_params.append(tip.drift)
    if tip_params:
        groups.append({"params": tip_params, "lr": cfg.lr_tip})
    priors = _Priors(structure, cfg, level.device, level.dtype)
    numbers = [bodies.numbers.tolist()]
    last: dict = {}
    best: dict = {}
    all_params = [p for g in groups for p in g["params"]]

    def closure() -> torch.Tensor:
        opt.zero_grad()
        pos = bodies.posed(t, w)
        frames = _simulate(level, level.sim, pos[None], numbers, tip, z_ref)
        img, a, b = _mismatch(frames, level.target, level.mask, level.norm, tie=level.tie)
        loss = img.sum() + priors(pos, t, tip if tip_params else None)
        if not bool(torch.isfinite(loss)):
            # a trial step took the probe where the engine cannot relax it (too close): a wall with no slope,
            # so the line search steps back instead of carrying NaN into every later step
            last["evals"] = last.get("evals", 0) + 1
            return torch.tensor(1e3 * (1.0 + best.get("loss", 1.0)), dtype=loss.dtype)
        loss.backward()
        last.update(frames=frames.detach(), ab=(a.detach(), b.detach()), img=float(img.detach().sum()),
                    loss=float(loss.detach()), evals=last.get("evals", 0) + 1)
        if float(loss.detach()) < best.get("loss", math.inf):  # the line search may end above it
            best.update(loss=float(loss.detach()), params=[p.detach().clone() for p in all_params])
        return loss

    if cfg.optimizer == "lbfgs":
        params = [p for g in groups for p in g["params"]]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=1, max_eval=4, history_size=20,
                                line_search_fn="strong_wolfe")
    else:
        opt = torch.optim.Adam(groups)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.25 + 0.75 * 0.5 * (1 + math.cos(math.pi * i / max(1, steps))))
    done = 0
    stage: list[float] = []
    while done < steps and not (cfg.stall > 0 and len(stage) > 5
                                and stage[-6] - stage[-1] < cfg.stall * (stage[0] - stage[-1])):
        if cfg.optimizer == "lbfgs":
            opt.param_groups[0]["max_eval"] = max(1, min(4, steps - done))
            before = last.get("evals", 0)
            opt.step(closure)
            if last.get("evals", 0) == before:  # converged: nothing left to do
                break
        else:
            closure()
            opt.step()
            sched.step()
        with torch.no_grad():
            tip.distance.clamp_(1.6, 4.5)
        new = last["evals"] - done
        done = last["evals"]
        losses.append(last["loss"])
        stage.append(last["loss"])
        counter[0] += new
        yield Progress("refining", min(counter[0], total), total)
        if cfg.snapshot_every and (len(losses) % cfg.snapshot_every == 1 or done >= steps):
            yield RefineSnapshot(counter[0], total, last["img"], _residual_on_scan(level, last["frames"],
                                                                                  last["ab"], stack))
    with torch.no_grad():
        if best:  # the lowest loss seen, not wherever the last step ended
            for p, v in zip(all_params, best["params"]):
                p.copy_(v)
        pos = bodies.posed(t, w).cpu().numpy().astype(np.float64)
    structure = structure.with_positions(pos)
    frames, ab = _evaluate(level, structure, tip, z_ref)
    return structure, frames, ab


def _evaluate(level: _Level, structure: _Structure, tip: _Tip, z_ref: float):
    with torch.no_grad():
        pos = torch.as_tensor(structure.positions, device=level.device, dtype=level.dtype)
        frames = _simulate(level, level.sim, pos[None], [structure.bodies.numbers.tolist()], tip, z_ref)
        _, a, b = _mismatch(frames, level.target, level.mask, level.norm, tie=level.tie)
    return frames, (a, b)


def _residual_on_scan(level: _Level, frames: torch.Tensor, ab, stack: AFMStack) -> np.ndarray:
    """(experiment − fitted simulation) / frame std on the scan's own grid."""
    a, b = ab
    with torch.no_grad():
        fitted = (a[0, :, None, None] * frames[0] + b[0, :, None, None]).cpu().numpy()
    return _scan_residual(stack, _to_scan(fitted, level, stack))


def _to_scan(frames: np.ndarray, level: _Level, stack: AFMStack) -> np.ndarray:
    """Frames ``(K, n, n)`` at the experiment's heights on the level's grid → the scan's grid."""
    k = np.arange(len(frames), dtype=float)
    sim = AFMStack(frames.astype(np.float32), (level.d, level.d), k, (level.d / 2, level.d / 2))
    return on_scan_grid(sim, stack, k)


def _scan_residual(stack: AFMStack, fitted: np.ndarray) -> np.ndarray:
    e = np.asarray(stack.data, dtype=np.float64)
    std = e.reshape(len(e), -1).std(axis=1)[:, None, None]
    return ((e - fitted) / np.maximum(std, 1e-12)).astype(np.float32)


def _fit_to_scan(stack: AFMStack, sim: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame least-squares scale (≥ 0) and offset of ``sim`` to the stack: ``(fitted, scale, offset)``."""
    e = np.asarray(stack.data, dtype=np.float64).reshape(len(sim), -1)
    s = sim.reshape(len(sim), -1).astype(np.float64)
    ds = s - s.mean(1, keepdims=True)
    a = np.clip((ds * (e - e.mean(1, keepdims=True))).sum(1) / np.maximum((ds * ds).sum(1), 1e-20), 0, None)
    b = e.mean(1) - a * s.mean(1)
    return (a[:, None] * s + b[:, None]).reshape(sim.shape), a, b


def _final(level: _Level, structure: _Structure, tip: _Tip, z_ref: float, stack: AFMStack):
    """Simulation of a structure on the scan's grid: ``(raw frames, fitted frames, scale, offset, loss)``."""
    frames, ab = _evaluate(level, structure, tip, z_ref)
    img, _, _ = _mismatch(frames, level.target, level.mask, level.norm, ab)
    raw = _to_scan(frames[0].cpu().numpy(), level, stack)
    fitted, a, b = _fit_to_scan(stack, raw)
    return raw, fitted, a, b, float(img[0])


def iter_refine_atoms(
    stack: AFMStack,
    atoms: Atoms,
    settings: RefineSettings | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Generator[Progress | RefineSnapshot, None, Refinement]:
    """Fit ``atoms`` (molecules in the scan's frame, Å) to ``stack``; yields progress, returns a :class:`Refinement`.

    Molecules whose O (ion) lies outside the scan are passed through unchanged (fit score NaN).
    """
    t0 = time.perf_counter()
    cfg = settings or RefineSettings()
    if len(atoms) == 0:
        raise ValueError("there are no atoms to refine")
    if stack.n_heights < 2:
        raise ValueError("refining needs a stack of at least two heights")
    if cfg.steps < 0:
        raise ValueError("the number of steps cannot be negative")
    unknown = sorted(set(atoms.get_chemical_symbols()) - {"H", "O", "Na", "K"})
    if unknown:
        raise ValueError(f"cannot refine element(s) {unknown}: H, O, Na and K only")
    window = scan_window(stack, cfg.base)
    pos_w, _ = window.atoms_inside(atoms.get_positions())
    whole = _structure_of(atoms, pos_w)
    size = window.settings.scan_size
    piv = whole.bodies.pivot
    inside_body = (piv[:, 0] > 0) & (piv[:, 0] < size) & (piv[:, 1] > 0) & (piv[:, 1] < size)
    inside = inside_body[whole.bodies.body]
    if not inside.any():
        raise ValueError("none of the molecules lies inside the scan")
    structure, outside = whole.take(inside), whole.take(~inside)
    if cfg.declash:
        structure = _declash(structure, cfg)
    z_ref = float(structure.positions[:, 2].max())
    scan_px = min(stack.pixel_size)
    fine_px = max(cfg.fine_pixel, scan_px)
    coarse_px = max(cfg.coarse_pixel, fine_px)
    tie = cfg.scale_tie if cfg.scale_tie is not None else (3.0 if stack.metadata.get("units") == "Hz" else 0.0)
    scales = cfg.height_step_scales or ((1.0,) if stack.heights is not None else (0.8, 1.0, 1.25))
    n_fine = int(round(cfg.steps * cfg.fine_share))
    n_steps = [int(round((cfg.steps - n_fine) * 0.4 / 0.75))]
    n_steps += [cfg.steps - n_fine - n_steps[0], n_fine]
    # with every move off, a round would only simulate crops to throw them away
    rounds = cfg.move_rounds if (cfg.flips or cfg.hbond_turns or cfg.add or cfg.remove) else 0
    total = cfg.steps + rounds + 2
    counter, losses = [0], []

    # 1. the tip distance (and the height step): the best of a few, on the coarse grid
    yield Progress("refining", 0, total)
    best = None
    distances, estimate = _start_distances(atoms, structure, z_ref, cfg)
    tip = _Tip(window.settings, distances[0], torch.device(device), dtype, estimate, cfg.charge_unit)
    numbers = structure.bodies.numbers.tolist()
    for scale in scales:
        level = _Level(stack, window, coarse_px, cfg.coarse_grid, scale, device, dtype, tie)
        with torch.no_grad():
            pos = torch.as_tensor(structure.positions, device=level.device, dtype=dtype)
            for d in distances:
                tip.distance.fill_(float(d))
                frames = _simulate(level, level.sim, pos[None], [numbers], tip, z_ref)
                img, _, _ = _mismatch(frames, level.target, level.mask, level.norm, tie=level.tie)
                if best is None or float(img[0]) < best[0]:
                    best = (float(img[0]), d, scale, level)
    _, d0, scale, coarse = best
    with torch.no_grad():
        tip.distance.fill_(float(d0))
    fine = _Level(stack, window, fine_px, cfg.fine_grid, scale, device, dtype, tie) if fine_px < coarse_px else coarse
    fit_grid = cfg.fine_fit_grid or cfg.fine_grid
    fine_fit = fine if fit_grid == cfg.fine_grid or fine is coarse else \
        _Level(stack, window, fine_px, fit_grid, scale, device, dtype, tie)
    raw0, fitted0, _, _, loss0 = _final(fine, structure, tip, z_ref, stack)
    residual0 = _scan_residual(stack, fitted0)
    counter[0] += 1
    yield Progress("refining", counter[0], total)
    yield RefineSnapshot(counter[0], total, loss0, residual0)

    # 2. coarse fit with moves in between, then the fine grid
    moves = {"flips": 0, "added": 0, "removed": 0}
    # a wrongly turned water gets dragged sideways by the gradient: the first moves come first
    plan: list = []
    n_orient = min(cfg.orient_steps, n_steps[0])
    if n_orient:
        plan.append((coarse, n_orient, True))
        n_steps[0] -= n_orient
    if rounds == 0:  # no moves: one coarse fit (the L-BFGS history is kept), then the fine grid
        plan.append((coarse, n_steps[0] + n_steps[1]))
    else:
        for r in range(2):
            if r < rounds and (r > 0 or cfg.flips_first):
                plan.append(("moves", r))
            plan.append((coarse, n_steps[r]))
            if r == 0 and rounds and not cfg.flips_first:
                plan.append(("moves", 1))
        plan += [("moves", r) for r in range(2, rounds)]
    plan.append((fine_fit, n_steps[2]))
    frames, ab = _evaluate(coarse, structure, tip, z_ref)
    start = structure.positions.copy() if cfg.hbond_turns and cfg.drag_turns > 0 else None
    left = 0  # steps the coarse stages did not use (their loss stalled): the fine grid gets them
    for level, steps, *rot in plan:
        if level == "moves":
            if structure.bodies.n_bodies:
                # nothing is removed before the first fit (a molecule a bit off may still look unsupported)
                round_cfg = replace(cfg, remove=False, add=False) if steps == 0 else cfg
                structure, counts, _ = yield from _move_round(coarse, structure, tip, z_ref, ab, frames, round_cfg,
                                                              start=start)
                for k, v in counts.items():
                    moves[k] += v
            frames, ab = _evaluate(coarse, structure, tip, z_ref)
            counter[0] += 1
            yield Progress("refining", counter[0], total)
            continue
        if level is fine_fit and fine_fit is not coarse:
            steps += left
        if steps > 0:
            used = counter[0]
            structure, frames, ab = yield from _fit(level, structure, tip, z_ref, steps, cfg, counter, total,
                                                    losses, stack, rotation_only=bool(rot and rot[0]))
            if level is not coarse:
                frames, ab = _evaluate(coarse, structure, tip, z_ref)
            elif cfg.stall > 0:
                left += max(0, steps - (counter[0] - used))

    # 3. fit scores (how much each molecule explains) and the result
    frames, ab = _evaluate(coarse, structure, tip, z_ref)
    _, _, scores = yield from _move_round(coarse, structure, tip, z_ref, ab, frames, cfg, score_only=True)
    raw, fitted, a, b, loss1 = _final(fine, structure, tip, z_ref, stack)
    counter[0] = total
    yield Progress("refining", total, total)
    residual = _scan_residual(stack, fitted)
    yield RefineSnapshot(total, total, loss1, residual)
    out_atoms, fit_score = _result_atoms(structure, scores, outside, window.corner)
    fitted_tip = tip.fitted()
    tip_fit = TipFit(distance=fitted_tip["distance"], tilt_xy=fitted_tip["tilt_xy"],
                     k_lateral=fitted_tip["k_lateral"], charge=fitted_tip["charge"],
                     height_step=float(coarse.settings.dz), drift=fitted_tip["drift"], scale=a, offset=b)
    simulated = AFMStack(fitted.astype(np.float32), stack.pixel_size, stack.heights, stack.origin,
                         {"channel": "df", "units": stack.metadata.get("units", "Hz"),
                          "format": "refined structure (torch simulation)", "scan_angle_deg": stack.scan_angle})
    return Refinement(out_atoms, fit_score, tip_fit, losses, (loss0, loss1), residual0, residual,
                      frame_similarity(stack.data, raw0), frame_similarity(stack.data, raw), simulated, moves,
                      time.perf_counter() - t0)


def _start_distances(atoms: Atoms, structure: _Structure, z_ref: float,
                     cfg: RefineSettings) -> tuple[tuple[float, ...], tuple[float, float] | None]:
    """The tip distances to search first and the estimate the fit is pulled to (or None).

    Predict's depth network writes the closest probe's height above the shallowest heavy atom
    (``atoms.info["closest_probe"]``; held-out error 0.14–0.23 Å, docs/refine.md); the fit counts the
    distance from ``z_ref``, the highest starting atom (an H may stand above the O).
    """
    est = atoms.info.get("closest_probe")
    step = cfg.probe_estimate
    heavy = structure.bodies.numbers != 1
    try:
        est = float(est) if est is not None else None
    except (TypeError, ValueError):
        est = None
    if not step or est is None or not np.isfinite(est) or not heavy.any():
        return tuple(cfg.distances), None
    d = est - (z_ref - float(structure.positions[heavy, 2].max()))
    return tuple(round(d + k * step, 4) for k in (-1, 0, 1)), (d, PROBE_ESTIMATE_WIDTH)


def _result_atoms(structure: _Structure, scores: np.ndarray, outside: _Structure,
                  corner: np.ndarray) -> tuple[Atoms, dict[int, float]]:
    """ase.Atoms in the scan's frame: H re-classed from the geometry, fit score per atom and per molecule."""
    labels = h_class_of_bodies(structure.bodies, structure.positions, structure.label)
    heavy = structure.bodies.numbers != 1
    labels[heavy] = structure.label[heavy]
    fit = scores[structure.bodies.body]
    conf = structure.confidence.copy()
    new = np.isnan(fit) | (conf <= 0)
    conf[new & ~np.isnan(fit)] = fit[new & ~np.isnan(fit)]
    pos = np.concatenate([structure.positions, outside.positions]) + corner
    labels = np.concatenate([labels, outside.label])
    atoms = Atoms(symbols=[ELEMENT.get(str(lab), "O") for lab in labels], positions=pos)
    atoms.new_array("label", labels.astype("<U6"))
    atoms.new_array("confidence", np.concatenate([conf, outside.confidence]).astype(float))
    atoms.new_array("mol", np.concatenate([structure.mol, outside.mol]).astype(int))
    atoms.new_array("shell", np.concatenate([structure.shell, outside.shell]).astype(int))
    atoms.new_array("fit", np.concatenate([fit, np.full(len(outside.mol), np.nan)]).astype(float))
    per_mol = {int(structure.mol[structure.bodies.members(b)[0]]): float(scores[b])
               for b in range(structure.bodies.n_bodies) if structure.mol[structure.bodies.members(b)[0]] >= 0}
    return atoms, per_mol


def refine_atoms(stack: AFMStack, atoms: Atoms, settings: RefineSettings | None = None,
                 device: str | torch.device = "cpu") -> Refinement:
    """:func:`iter_refine_atoms` run to the end."""
    from ..progress import drive

    return drive(iter_refine_atoms(stack, atoms, settings, device), show=False)
