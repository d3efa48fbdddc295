"""The probe-particle model in PyTorch: batched, differentiable, on any torch device.

A port of ppafm's OpenCL point-charge path (``AFMulator`` with ``method='point-charge'``),
written from its kernels (``ppafm/ocl/cl/FF.cl``: ``evalLJC_QZs_noPos``, ``getLJ``,
``getCoulomb``; ``ppafm/ocl/cl/relax.cl``: ``relaxStrokesTilted``, ``update_FIRE``,
``tipForce``, ``convolveZ``; ``ppafm/common.py``: ``getAtomsREA``, ``REA2LJ``,
``get_simple_df_weight``; ``ppafm/ocl/AFMulator.py``: ``get_lvec``):

1. **Force field on a grid.** Lennard-Jones between the probe (O, ``iZPP = 8``) and every
   atom with ppafm's mixing rule (R = R_probe + R_atom, E = √(E_probe E_atom),
   C6 = 2 E R⁶, C12 = E R¹²), plus the Coulomb force of the atoms' point charges on the
   tip charge(s) (``Qs`` at ``QZs`` along z). The grid is ppafm's: the scan window padded
   by ``lateral_pad`` Å, ``pix_per_angstrom`` points per Å rounded up to ppafm's valid
   sizes, origin shifted down by the probe length. Only the z planes the probe can
   reach are evaluated (ppafm computes the whole 12.8 Å box).
2. **Relaxation.** At every pixel the tip approaches from the top in steps of ``dz``;
   at each height the probe relaxes under the sample force (trilinear interpolation of
   the grid, periodic laterally as ppafm's ``CLK_ADDRESS_REPEAT`` sampler) plus the
   lateral and radial springs (``tipForce``), by FIRE with ppafm's constants
   (dt 0.5, damping 0.1, ≤ 128 steps, stop at |F|² < 1e-8 eV²/Å²; dt and damping carry over
   from one height to the next; the velocity is reset).
3. **Δf.** The sample's F_z at the relaxed probe, convolved along z with ppafm's
   finite-amplitude weights (``df_steps`` points, peak-to-peak amplitude = df_steps × dz),
   scaled by f0 / k_cantilever.

Everything is batched over structures (padded atom lists) and pixels. Gradients of any
loss on the Δf stack with respect to atom positions, charges and tip parameters flow by
implicit differentiation at the relaxed equilibrium (one Newton step on detached relaxed
positions), so memory does not grow with the number of relaxation steps. The force field's own
backward is written out (:class:`_ForceField`: the analytic derivatives of its central pair
forces), chunk by chunk, instead of autograd through a recompute.
"""

from __future__ import annotations

import math
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .settings import CHARGES, SampledTip, SimulationSettings

__all__ = ["TorchSimulator", "LJ_PARAMS", "lj_coefficients", "df_weights", "ff_box", "TipBatch"]

#: ppafm's default atom types (``ppafm/defaults/atomtypes.ini``): Z → (R_min Å, E_min eV)
LJ_PARAMS = {
    1: (1.4870, 0.000681),
    6: (1.9080, 0.003729),
    7: (1.7800, 0.007372),
    8: (1.6612, 0.009106),
    9: (1.7500, 0.002645),
    11: (2.7700, 0.010000),
    17: (1.9480, 0.011491),
    19: (3.0200, 0.010000),
    20: (2.7800, 0.010000),
}
COULOMB_CONST = 14.399644  # eV Å / e²
EVA_NM = 16.0217662  # (eV/Å²) per (N/m)
R2SAFE = 1e-6  # FF.cl
F2CONV = 1e-8  # relax.cl: stop when |F|² < F2CONV (eV²/Å²)
N_RELAX_STEP_MAX = 128
DT, DAMP = 0.5, 0.1  # AFMulator.relaxParams
FTDEC, FTINC, FDAMP, F2SAFE = 0.5, 1.1, 0.99, 1e-8
PROBE_Z = 8  # the probe particle is an O (CO tip)
VALID_SIZES = (16, 32, 64, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)


def lj_coefficients(numbers: Sequence[int] | np.ndarray, probe: int = PROBE_Z) -> np.ndarray:
    """``(n, 2)`` Lennard-Jones ``(C6, C12)`` of each atom with the probe (ppafm's mixing rule)."""
    numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
    missing = sorted({int(z) for z in numbers} - set(LJ_PARAMS))
    if missing:
        raise ValueError(f"no Lennard-Jones parameters for atomic numbers {missing}")
    rp, ep = LJ_PARAMS[probe]
    r = np.array([LJ_PARAMS[int(z)][0] for z in numbers]) + rp
    e = np.sqrt(np.array([LJ_PARAMS[int(z)][1] for z in numbers]) * ep)
    r6 = r**6
    return np.stack([2 * e * r6, e * r6 * r6], axis=1)


def df_weights(n: int, dz: float) -> np.ndarray:
    """ppafm's ``get_simple_df_weight``: F_z → Δf weights over ``n`` heights (1/Å units)."""
    n = max(int(n), 2)
    t = np.linspace(-1 + 0.5 / n, 1 - 0.5 / n, n - 1)
    f = np.sqrt(1 - t * t)
    w = np.zeros(n)
    w[:-1] = f
    w[1:] -= f
    t = np.linspace(-1, 1, n)
    return w / (np.sum(t * w) * n * dz)


@dataclass(frozen=True)
class FFBox:
    """ppafm's force-field box for a scan: origin (Å), grid step (Å) and points per axis."""

    origin: tuple[float, float, float]
    step: tuple[float, float, float]
    shape: tuple[int, int, int]  # (nx, ny, nz)


def ff_box(settings: SimulationSettings, z_top: float, z_pad: float = 5.0, ppafm_sizes: bool = True) -> FFBox:
    """The box of ``ppafm.ocl.AFMulator.get_lvec`` for the scan window of ``settings``.

    ppafm rounds the number of grid points up to its ``VALID_SIZES`` (a 13 Å box gets 128
    points at 5/Å, i.e. 25.6 Å); with ``ppafm_sizes=False`` the box just covers the padded
    scan (same grid step), which is much cheaper for small windows.
    """
    s = settings
    half = s.pixel_size / 2
    nz = s.n_heights + s.df_steps - 1
    lo = np.array([half, half, z_top - nz * s.dz])
    hi = np.array([s.scan_size - half, s.scan_size - half, z_top])
    pad = np.array([s.lateral_pad, s.lateral_pad, z_pad])
    center = (lo + hi) / 2
    box = (hi - lo) + 2 * pad
    n = (s.pix_per_angstrom * box).round().astype(np.int64)
    if ppafm_sizes:
        n = np.array([next(v for v in VALID_SIZES if v >= d) for d in n])
    box = n / s.pix_per_angstrom
    origin = center - box / 2 - np.array([0.0, 0.0, s.probe_length])
    return FFBox(tuple(float(v) for v in origin), tuple(float(v) for v in box / n), tuple(int(v) for v in n))


@dataclass
class TipBatch:
    """Per-stack tip parameters of a batch, as tensors of shape ``(B,)`` (``(B, 2)`` for tilt)."""

    distance: torch.Tensor  # probe above the highest atom at the closest height (Å)
    tilt_xy: torch.Tensor  # rest offset of the probe (Å)
    k_lateral: torch.Tensor  # N/m
    k_radial: torch.Tensor  # N/m
    charge: torch.Tensor  # monopole (e)
    quadrupole: torch.Tensor  # d_z² quadrupole (e·Å², as ppafm's Qs = q/d²·[1, −2, 1] at QZs ±d)

    @classmethod
    def from_tips(
        cls, tips: Sequence[SampledTip], settings: SimulationSettings, device=None, dtype=torch.float32
    ) -> "TipBatch":
        def t(values):
            return torch.as_tensor(np.asarray(values, dtype=np.float64), device=device, dtype=dtype)

        return cls(
            distance=t([tp.distance for tp in tips]),
            tilt_xy=t([tp.tilt_xy for tp in tips]).reshape(-1, 2),
            k_lateral=t([settings.k_lateral if tp.k_lateral is None else tp.k_lateral for tp in tips]),
            k_radial=t([settings.k_radial for _ in tips]),
            charge=t([settings.tip_charge if tp.charge is None else tp.charge for tp in tips]),
            quadrupole=t([tp.quadrupole for tp in tips]),
        )


#: separation of the quadrupole's point charges along z (Å), as in ppafm's examples (QZs ±0.1)
QUAD_D = 0.1


class TorchSimulator:
    """Simulate Δf stacks with the probe-particle model in torch (ppafm's physics).

    Parameters
    ----------
    settings
        Tip and scan parameters (the same object the ppafm engine takes).
    device, dtype
        Where and in which precision to compute (float32 for data, float64 for tests).
    z_margin
        Å of force field computed below / above the probe's rest positions; the probe
        relaxes within it (beyond, the grid's edge value is used).
    chunk
        Grid points × atoms evaluated at once in the force field (memory vs speed).
    ppafm_grid
        Size the force-field grid as ppafm does (power-of-two-like point counts); ``False``
        covers just the padded scan with the same grid step (cheaper; used for training).
    """

    Z_TOP = 20.0  # tip apex at the farthest height, as in the ppafm engine

    def __init__(
        self,
        settings: SimulationSettings = SimulationSettings(),
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        z_margin: tuple[float, float] = (0.6, 0.4),
        chunk: int = 1 << 21,
        ppafm_grid: bool = True,
    ) -> None:
        self.settings = s = settings
        self.device = torch.device(device)
        self.dtype = dtype
        self.chunk = int(chunk)
        self.nz = s.n_heights + s.df_steps - 1
        self.box = box = ff_box(s, self.Z_TOP, ppafm_sizes=ppafm_grid)
        self.z_closest_tip = self.Z_TOP - self.nz * s.dz
        nx, ny, _ = box.shape
        dx, dy, dzg = box.step
        # the z planes the probe can reach: rest heights minus/plus a margin
        z_lo = self.z_closest_tip - s.probe_length - z_margin[0]
        z_hi = self.Z_TOP - s.probe_length * math.cos(math.radians(s.max_tilt_deg + 2)) + z_margin[1]
        k0 = max(0, int(math.floor((z_lo - box.origin[2]) / dzg)))
        k1 = min(box.shape[2] - 1, int(math.ceil((z_hi - box.origin[2]) / dzg)))
        self.k0, self.nk = k0, k1 - k0 + 1
        kw = dict(device=self.device, dtype=dtype)
        self.gx = box.origin[0] + dx * torch.arange(nx, **kw)
        self.gy = box.origin[1] + dy * torch.arange(ny, **kw)
        self.gz = box.origin[2] + dzg * torch.arange(k0, k1 + 1, **kw)
        half = s.pixel_size / 2
        xs = torch.linspace(half, s.scan_size - half, s.n_pixels, **kw)
        # tip apex positions of the strokes: (P, 2), x fastest? no: pixel p = ix * n + iy as ppafm's (nx, ny) scan
        X, Y = torch.meshgrid(xs, xs, indexing="ij")
        self.tip_xy = torch.stack([X.reshape(-1), Y.reshape(-1)], dim=1)
        w = df_weights(s.df_steps, s.dz) * EVA_NM * s.f0 / s.k_cantilever
        self.df_weight = torch.as_tensor(w, **kw)
        #: the relaxation computes only the points still moving and the force field each sample of a batch
        #: on its own atoms (True: fewer operations, for a CPU, where the arithmetic is the cost), or all
        #: points with the finished ones masked and the samples in a few groups by size (False: fewer
        #: kernel launches and host synchronisations, for a GPU, where they are the cost); the results
        #: are the same
        self.compact = self.device.type == "cpu"
        #: with ``compact`` False, fuse each step's operations with ``torch.compile`` (HYDRAFM_FUSED=1)
        self.fused = os.environ.get("HYDRAFM_FUSED", "0") == "1"

    # ------------------------------------------------------------------ force field
    def force_field(
        self,
        positions: torch.Tensor,
        cLJ: torch.Tensor,
        charges: torch.Tensor,
        tip_charges: Sequence[tuple[torch.Tensor, float]],
    ) -> torch.Tensor:
        """Sample force on the probe on the grid planes: ``(B, 3, nk, ny, nx)`` eV/Å.

        ``positions`` ``(B, N, 3)`` Å, ``cLJ`` ``(B, N, 2)`` (C6, C12), ``charges``
        ``(B, N)`` e (padding atoms have all-zero coefficients and charges);
        ``tip_charges`` a list of ``(Q (B,) e, z offset Å)``.
        """
        B, N, _ = positions.shape
        grads = torch.is_grad_enabled() and any(t.requires_grad for t in (positions, charges, *(Q for Q, _ in tip_charges)))
        if B > 1 and not grads:
            # structures of very different sizes: padding costs as much as atoms do, and a monopole-only
            # tip can skip the quadrupole's three charges
            real = (positions[..., 2] > -1e2).sum(dim=1).tolist()
            quad = ((torch.stack([Q for Q, _ in tip_charges[1:]]) != 0).any(0).tolist() if len(tip_charges) > 1
                    else [False] * B)
            extra = len(tip_charges) - 1
            if B * N * (1 + extra) > 1.25 * sum(n * (1 + extra * q) for n, q in zip(real, quad)):
                groups = _size_groups(real, quad, per_sample=self.compact)
                parts = []
                for g in groups:
                    n = max(1, max(real[b] for b in g))
                    q = any(quad[b] for b in g)
                    i = torch.as_tensor(g, device=positions.device)
                    parts.append(self._force_field_padded(
                        positions[i, :n], cLJ[i, :n], charges[i, :n],
                        [(Q[i], z) for Q, z in (tip_charges if q else tip_charges[:1])]))
                out = torch.cat(parts)
                order = [b for g in groups for b in g]
                if order == list(range(B)):
                    return out
                inv = torch.empty(B, dtype=torch.long)
                inv[torch.as_tensor(order)] = torch.arange(B)
                return out[inv.to(out.device)]
        return self._force_field_padded(positions, cLJ, charges, tip_charges)

    def _force_field_padded(self, positions, cLJ, charges, tip_charges) -> torch.Tensor:
        """:meth:`force_field` of the batch as it is (padding atoms computed like real ones)."""
        B, N, _ = positions.shape
        nx, ny = len(self.gx), len(self.gy)
        cx, cy = float(self.gx.mean()), float(self.gy.mean())
        gx, gy = self.gx - cx, self.gy - cy  # centred: the sums below lose less precision
        c6 = (6.0 * cLJ[..., 0])[:, None, None, :]
        c12 = (12.0 * cLJ[..., 1])[:, None, None, :]
        qk = [((COULOMB_CONST * Q)[:, None] * charges)[:, None, None, :] for Q, _ in tip_charges]
        zoffs = tuple(float(z) for _, z in tip_charges)
        rows = max(1, min(ny, self.chunk // max(1, nx * N)))
        if positions.device.type == "cuda":
            # on a GPU every operation is a kernel launch: as many rows at once as a quarter of the free
            # memory holds (~12 temporaries of B × rows × nx × N numbers)
            free, _ = torch.cuda.mem_get_info(positions.device)
            per_row = 12 * B * nx * N * positions.element_size()
            rows = max(rows, min(ny, int(free // 4 // max(per_row, 1))))
        centre = torch.tensor([cx, cy, 0.0], device=positions.device, dtype=positions.dtype)
        if torch.is_grad_enabled() and any(t.requires_grad for t in (positions, *qk)):
            if cLJ.requires_grad:
                raise NotImplementedError("the force field has no gradient with respect to the LJ coefficients")
            # the pair forces' analytic derivatives, chunk by chunk: ~2x cheaper than autograd through a
            # checkpointed recompute, and memory stays at one chunk
            return _ForceField.apply(zoffs, rows, gx, gy, self.gz, positions - centre, c6, c12, *qk)
        return _force_planes(zoffs, rows, gx, gy, self.gz, positions - centre, c6, c12, *qk)

    # ------------------------------------------------------------------ relaxation
    def field(self, grid: torch.Tensor) -> "_Field":
        """The trilinear sampler of a force-field grid ``(B, 3, nk, ny, nx)``."""
        return _Field(grid, self.box, self.k0)

    @staticmethod
    def _tip_force(dpos: torch.Tensor, k: torch.Tensor, d0: torch.Tensor, length: float) -> torch.Tensor:
        """ppafm's ``tipForce``: lateral springs to the rest offset plus a radial spring (eV/Å)."""
        r = torch.sqrt((dpos * dpos).sum(-1, keepdim=True))
        return (dpos - d0) * k[..., :3] + dpos * (k[..., 3:4] * (r - length) / r)

    @staticmethod
    def _tip_jacobian(dpos: torch.Tensor, k: torch.Tensor, length: float, add: torch.Tensor | None = None):
        """``∂ tipForce / ∂ dpos`` ``(..., 3, 3)`` (plus ``add``, e.g. the sample force's Jacobian)."""
        r2 = (dpos * dpos).sum(-1, keepdim=True)
        r = torch.sqrt(r2)
        kr = k[..., 3:4]
        J = (kr * length / (r2 * r))[..., None] * dpos[..., :, None] * dpos[..., None, :]
        if add is not None:
            J = J + add
        diag = k[..., :3] + kr * (1 - length / r)
        if J.requires_grad or diag.requires_grad:
            return J + torch.diag_embed(diag)
        J.diagonal(dim1=-2, dim2=-1).add_(diag)
        return J

    def _springs(self, tips: TipBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Spring constants ``(B, 1, 4)`` in eV/Å² (negative: restoring) and rest offsets ``(B, 1, 3)``."""
        L = self.settings.probe_length
        zero = torch.zeros_like(tips.k_lateral)
        k = torch.stack([tips.k_lateral, tips.k_lateral, zero, tips.k_radial], dim=-1) / -EVA_NM
        tx, ty = tips.tilt_xy[:, 0], tips.tilt_xy[:, 1]
        d0 = torch.stack([tx, ty, -torch.sqrt(L * L - tx * tx - ty * ty)], dim=-1)
        return k[:, None, :], d0[:, None, :]

    def relax(
        self,
        grid: torch.Tensor,
        tips: TipBatch,
        solver: str = "newton",
        steps: int = N_RELAX_STEP_MAX,
        f2conv: float = F2CONV,
        newton_iters: int = 5,
        return_fz: bool = False,
    ):
        """Relaxed probe positions ``(B, P, nz, 3)`` and the tip apexes ``(P, nz, 3)`` (no gradients).

        ``solver='fire'`` is ppafm's FIRE relaxation step by step; ``'newton'`` (default)
        solves the same equilibrium F_sample + F_spring = 0 by damped Newton steps and hands
        every pixel that is not converged to a stable equilibrium after a few steps to FIRE
        (from the previous height's position, as the stroke). Newton starts from the previous
        height's equilibrium followed to first order as the tip steps down (usually converged
        already, or after one step), and where that fails from the previous height's
        position moved with the tip.

        With ``return_fz`` also the sample's F_z ``(B, P, nz)`` at the relaxed probe, taken
        from the relaxation's last force evaluation (the same value :meth:`forces_at`
        samples, without its gradients).
        """
        if solver not in ("newton", "fire"):
            raise ValueError(f"unknown relaxation solver {solver!r}; choose 'newton' or 'fire'")
        with _one_cpu_thread(self.device):
            relaxed, apex, fz = self._relax(grid, tips, solver, steps, f2conv, newton_iters)
        return (relaxed, apex, fz) if return_fz else (relaxed, apex)

    #: largest difference (Å) between the predicted equilibrium at the next height and the
    #: previous one moved with the tip that the Newton start takes (beyond: near an instability)
    PREDICT_MAX = 0.1

    def _relax(self, grid, tips, solver, steps, f2conv, newton_iters):
        s = self.settings
        L = s.probe_length
        B = grid.shape[0]
        P = self.tip_xy.shape[0]
        M = B * P
        kw = dict(device=self.device, dtype=self.dtype)
        with torch.no_grad():
            fld = self.field(grid.detach())
            k, d0 = self._springs(tips)
            bidx = torch.arange(B, device=self.device).repeat_interleave(P)  # batch of each point
            kM, d0M = k.expand(B, P, 4).reshape(-1, 4), d0.expand(B, P, 3).reshape(-1, 3)
            tip = torch.cat([self.tip_xy, torch.full((P, 1), self.Z_TOP, **kw)], dim=1).repeat(B, 1)  # (M, 3)
            pos = tip + d0M
            dt = torch.full((M, 1), DT, **kw)
            damp = torch.full((M, 1), DAMP, **kw)
            out = torch.empty((M, self.nz, 3), **kw)
            fz = torch.empty((M, self.nz), **kw)
            step_z = torch.tensor([0.0, 0.0, s.dz], **kw)
            for iz in range(self.nz):
                todo = None
                if solver == "newton":
                    start, moved = pos, None
                    if iz >= 1:  # the previous equilibrium followed along the stroke to first order
                        jump = pred - pos
                        moved = ok & ((jump * jump).sum(-1) < self.PREDICT_MAX**2)
                        start = torch.where(moved[:, None], pred, pos)
                    pos_n, ok, f_n, pred = self._newton(fld, start, tip, kM, d0M, bidx, L, f2conv, newton_iters,
                                                        next_dz=s.dz)
                    redo = None if moved is None or bool(ok.all()) else (moved & ~ok).nonzero()[:, 0]
                    if redo is not None and len(redo):
                        # where the predicted start failed, Newton from the previous position
                        p2, ok2, f2, pr2 = self._newton(fld, pos[redo], tip[redo], kM[redo], d0M[redo], bidx[redo],
                                                        L, f2conv, newton_iters, next_dz=s.dz)
                        pos_n[redo], ok[redo], f_n[redo], pred[redo] = p2, ok2, f2, pr2
                    pos = torch.where(ok[:, None], pos_n, pos)
                    fz[:, iz] = f_n
                    if not bool(ok.all()):
                        todo = (~ok).nonzero()[:, 0]
                else:
                    todo = torch.arange(M, device=self.device)
                if todo is not None:
                    p, d, m = self._fire(fld, pos[todo], tip[todo], kM[todo], d0M[todo], bidx[todo], dt[todo],
                                         damp[todo], L, steps, f2conv)
                    pos[todo], dt[todo], damp[todo] = p, d, m
                    fz[todo, iz] = fld.sample(p, bidx[todo])[:, 2]
                out[:, iz] = pos
                tip = tip - step_z
                pos = pos - step_z
        tips_z = self.Z_TOP - s.dz * torch.arange(self.nz, **kw)
        apex = torch.cat(
            [self.tip_xy[:, None, :].expand(P, self.nz, 2), tips_z[None, :, None].expand(P, self.nz, 1)], dim=-1
        )
        return out.reshape(B, P, self.nz, 3), apex, fz.reshape(B, P, self.nz)

    def _newton(self, fld, pos, tip, k, d0, bidx, L, f2conv, iters: int = 5, max_step: float = 0.25,
                next_dz: float = 0.0):
        """Damped Newton steps on G(p) = F_sample + F_spring; ``(positions, converged & stable,
        sample F_z at the positions, predicted equilibria with the tip ``next_dz`` lower)``.

        Only points not yet converged are computed; converged points stay put, so a point's
        result does not depend on the rest of the batch. The prediction is the linearisation
        at the converged point: G + J δp + ∂G/∂tip δtip = 0 (∂G/∂tip = −J_spring), which also
        removes the residual G left within the tolerance.
        """
        if not self.compact:
            return self._newton_masked(fld, pos, tip, k, d0, bidx, L, f2conv, iters, max_step, next_dz)
        p = pos.clone()
        M = len(p)
        act = None  # None: all points
        pa, ta, ka, da, ba = p, tip, k, d0, bidx
        args = fld.args
        for it in range(iters + 1):
            conv, good, pr, step, fix, fz_a = _newton_core(args, pa, ta, ka, da, ba, L, f2conv, next_dz)
            last = it == iters or not bool((~conv).any())
            if act is None:
                ok, fz, pred = good, fz_a, pr
                p = torch.where(conv[:, None], pa - fix, p)
            else:
                ok[act], fz[act], pred[act] = good, fz_a, pr
                p[act] = torch.where(conv[:, None], pa - fix, p[act])
            if last:
                break
            keep = ~conv
            if not bool(keep.all()):
                idx = keep.nonzero()[:, 0]
                act = idx if act is None else act[idx]
                pa, step = pa[idx], step[idx]
                ta, ka, da, ba = tip[act], k[act], d0[act], bidx[act]
            elif act is None:
                act = torch.arange(M, device=p.device)
            n = torch.sqrt((step * step).sum(-1, keepdim=True))
            pa = pa - step * torch.clamp(max_step / (n + 1e-12), max=1.0)
            p[act] = pa
        return p, ok, fz, pred

    def _newton_masked(self, fld, pos, tip, k, d0, bidx, L, f2conv, iters, max_step, next_dz):
        """:meth:`_newton` on all points, the converged ones masked (one host synchronisation per step)."""
        evaluate, move, _ = _steps(self.fused)
        p, pa = pos.clone(), pos.clone()
        M = len(p)
        done = torch.zeros(M, dtype=torch.bool, device=p.device)
        ok, fz, pred = done.clone(), p.new_zeros(M), torch.zeros_like(p)
        args = fld.args
        if self.fused:  # a float argument would be compiled in as a constant: one compilation per value
            next_dz = torch.tensor(next_dz, dtype=p.dtype, device=p.device)
        for it in range(iters + 1):
            p, ok, fz, pred, done, step = evaluate(args, pa, p, ok, fz, pred, done, tip, k, d0, bidx, L, f2conv,
                                                   next_dz)
            if it == iters or bool(done.all()):
                break
            pa, p = move(pa, p, step, done, max_step)
        return p, ok, fz, pred

    def _fire(self, fld, pos, tip, k, d0, bidx, dt, damp, L, steps, f2conv):
        """ppafm's FIRE relaxation of the given points (only unconverged points are computed)."""
        if not self.compact:
            return self._fire_masked(fld, pos, tip, k, d0, bidx, dt, damp, L, steps, f2conv)
        pos, dt, damp = pos.clone(), dt.clone(), damp.clone()
        idx = torch.arange(len(pos), device=pos.device)
        # the working set: compacted only when points stop (few points: every operation counts)
        p, vi, dti, dmi = pos, torch.zeros_like(pos), dt, damp
        ti, ki, d0i, bi = tip, k, d0, bidx
        args = fld.args
        for _ in range(steps):
            p, vi, dti, dmi, ff = _fire_update(args, p, vi, dti, dmi, ti, ki, d0i, bi, L)
            go = ff[:, 0] >= f2conv  # ppafm stops a pixel after the step in which |F|² < F2CONV
            if not bool(go.all()):
                stop = ~go
                pos[idx[stop]], dt[idx[stop]], damp[idx[stop]] = p[stop], dti[stop], dmi[stop]
                sel = go.nonzero()[:, 0]
                idx = idx[sel]
                if len(idx) == 0:
                    break
                p, vi, dti, dmi = p[sel], vi[sel], dti[sel], dmi[sel]
                ti, ki, d0i, bi = ti[sel], ki[sel], d0i[sel], bi[sel]
        if len(idx):
            pos[idx], dt[idx], damp[idx] = p, dti, dmi
        return pos, dt, damp

    #: the masked FIRE looks whether every point has stopped after this many steps
    FIRE_CHECK = 8

    def _fire_masked(self, fld, pos, tip, k, d0, bidx, dt, damp, L, steps, f2conv):
        """:meth:`_fire` on all the given points, the stopped ones masked (a host synchronisation
        every :attr:`FIRE_CHECK` steps)."""
        fire = _steps(self.fused)[2]
        p, vi, dti, dmi = pos, torch.zeros_like(pos), dt, damp
        go = torch.ones((len(pos), 1), dtype=torch.bool, device=pos.device)
        args = fld.args
        for i in range(steps):
            p, vi, dti, dmi, go = fire(args, p, vi, dti, dmi, go, tip, k, d0, bidx, L, f2conv)
            if (i + 1) % self.FIRE_CHECK == 0 and not bool(go.any()):
                break
        return p, dti, dmi

    def forces_at(
        self, grid: torch.Tensor, relaxed: torch.Tensor, apex: torch.Tensor, tips: TipBatch
    ) -> torch.Tensor:
        """Sample F_z ``(B, P, nz)`` at the relaxed probe, differentiable by implicit differentiation.

        With ``p*`` the relaxed positions (detached) and ``G(p) = F_sample(p) + F_spring(p)``,
        ``p = p* − J⁻¹ G(p*)`` (``J = ∂G/∂p`` detached) has the value ``p*`` at equilibrium and
        the gradient of the equilibrium position; ``F_sample(p)`` is then exact to first order.
        """
        B, P, nz, _ = relaxed.shape
        fld = self.field(grid)
        ps = relaxed.reshape(B * P * nz, 3)
        bidx = torch.arange(B, device=self.device).repeat_interleave(P * nz)
        if not _needs_grad(grid, tips):
            return fld.sample(ps, bidx)[:, 2].reshape(B, P, nz)
        k, d0 = self._springs(tips)
        kM = k.expand(B, P * nz, 4).reshape(-1, 4)
        d0M = d0.expand(B, P * nz, 3).reshape(-1, 3)
        a = apex.reshape(1, P * nz, 3).expand(B, P * nz, 3).reshape(-1, 3)
        L = self.settings.probe_length
        p0 = ps.detach()
        with torch.no_grad():
            _, jac = self.field(grid.detach()).sample(p0, bidx, jacobian=True)
            J = self._tip_jacobian(p0 - a, kM.detach(), L, add=jac)
        G = fld.sample(p0, bidx) + self._tip_force(p0 - a, kM, d0M, L)
        p = p0 - _solve3(J, G)
        return fld.sample(p, bidx)[:, 2].reshape(B, P, nz)

    # ------------------------------------------------------------------ Δf
    def df(self, fz: torch.Tensor) -> torch.Tensor:
        """Δf stack ``(B, n_heights, ny, nx)`` (frame 0 closest) from F_z ``(B, P, nz)`` (top first)."""
        B = fz.shape[0]
        n = self.settings.n_pixels
        w = self.df_weight
        out = F.conv1d(fz.reshape(B * fz.shape[1], 1, -1), w[None, None])  # a correlation, as convolveZ
        out = out.reshape(B, n, n, -1)  # (B, ix, iy, izo): izo 0 = farthest
        return out.flip(-1).permute(0, 3, 2, 1)  # (B, heights closest first, y, x)

    # ------------------------------------------------------------------ whole pipeline
    def prepare(
        self,
        positions: Sequence[np.ndarray] | torch.Tensor,
        numbers: Sequence[Sequence[int]],
        tips: TipBatch,
        charges: Sequence[np.ndarray] | torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Padded ``(positions shifted under the tip, cLJ, charges)`` tensors of a batch.

        Positions may be a list of arrays or a ``(B, N, 3)`` tensor (then gradients flow
        to it); the structure is shifted in z so that the probe's rest position at the
        closest height is ``tips.distance`` above its highest atom (as the ppafm engine).
        """
        kw = dict(device=self.device, dtype=self.dtype)
        B = len(numbers)
        N = max(len(z) for z in numbers)
        # assembled in numpy, then one copy each to the device (per-sample copies are launches on a GPU)
        cLJ_np, mask_np = np.zeros((B, N, 2)), np.zeros((B, N), bool)
        q_np, pos_np = np.zeros((B, N)), np.zeros((B, N, 3))
        for b, z in enumerate(numbers):
            n = len(z)
            cLJ_np[b, :n] = lj_coefficients(z)
            mask_np[b, :n] = True
            if not isinstance(positions, torch.Tensor):
                pos_np[b, :n] = np.asarray(positions[b], dtype=np.float64).reshape(-1, 3)
            if charges is None:
                q_np[b, :n] = [CHARGES.get(int(a), 0.0) for a in z]
            elif not isinstance(charges, torch.Tensor):
                q_np[b, :n] = np.asarray(charges[b], dtype=np.float64)
        cLJ = torch.as_tensor(cLJ_np, **kw)
        mask = torch.as_tensor(mask_np, device=self.device)
        pos = positions.to(**kw) if isinstance(positions, torch.Tensor) else torch.as_tensor(pos_np, **kw)
        q = charges.to(**kw) * mask if isinstance(charges, torch.Tensor) else torch.as_tensor(q_np, **kw)
        ztop = torch.where(mask, pos[..., 2], torch.full_like(pos[..., 2], -1e9)).amax(dim=1)
        probe_closest = self.z_closest_tip - self.settings.probe_length
        shift = probe_closest - tips.distance - ztop  # (B,)
        pos = pos + torch.stack([torch.zeros_like(shift), torch.zeros_like(shift), shift], dim=-1)[:, None, :]
        pos = torch.where(mask[..., None], pos, torch.tensor([0.0, 0.0, -1e3], **kw))
        return pos, cLJ, q

    def tip_charges(self, tips: TipBatch) -> list[tuple[torch.Tensor, float]]:
        """The tip's point charges ``(Q, z offset)``: monopole, plus a d_z² quadrupole when set."""
        out = [(tips.charge, 0.0)]
        if bool((tips.quadrupole != 0).any()):
            qd = tips.quadrupole / (QUAD_D * QUAD_D)
            out += [(qd, QUAD_D), (-2 * qd, 0.0), (qd, -QUAD_D)]
        return out

    def __call__(
        self,
        positions: Sequence[np.ndarray] | torch.Tensor,
        numbers: Sequence[Sequence[int]],
        tips: TipBatch,
        charges: Sequence[np.ndarray] | torch.Tensor | None = None,
        solver: str = "newton",
        steps: int = N_RELAX_STEP_MAX,
        f2conv: float = F2CONV,
        newton_iters: int = 5,
    ) -> torch.Tensor:
        """Δf stacks ``(B, n_heights, ny, nx)`` in Hz, frame 0 closest (AFMStack convention)."""
        pos, cLJ, q = self.prepare(positions, numbers, tips, charges)
        grid = self.force_field(pos, cLJ, q, self.tip_charges(tips))
        relaxed, apex, fz = self.relax(grid, tips, solver=solver, steps=steps, f2conv=f2conv,
                                       newton_iters=newton_iters, return_fz=True)
        if _needs_grad(grid, tips):  # F_z again, differentiable at the equilibrium
            fz = self.forces_at(grid, relaxed, apex, tips)
        return self.df(fz)

    def simulate(
        self,
        positions: np.ndarray,
        numbers: Sequence[int],
        tip: SampledTip | None = None,
        charges: np.ndarray | None = None,
        name: str = "structure",
        solver: str = "newton",
    ):
        """One structure → :class:`~hydrafm.stack.AFMStack`, the same API as the ppafm engine."""
        from .afm import stack_from_frames

        s = self.settings
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        from ..structures.pool import check_structure_arrays

        check_structure_arrays(positions, numbers, (s.scan_size, s.scan_size), name=name)
        tip = tip or SampledTip(float(np.mean(s.closest_distance)))
        tb = TipBatch.from_tips([tip], s, self.device, self.dtype)
        with torch.no_grad():
            data = self([positions], [numbers], tb, None if charges is None else [charges], solver=solver)[0]
        shift = (self.z_closest_tip - s.probe_length) - tip.distance - positions[:, 2].max()
        return stack_from_frames(data.cpu().numpy().astype(np.float32), s, tip, shift, name, "torch")


def _size_groups(real: Sequence[int], quad: Sequence[bool], per_sample: bool) -> list[list[int]]:
    """Samples grouped for the force field: each on its own (``per_sample``: on a CPU, where the work is
    the cost), else at most two groups by size for each of monopole-only and quadrupole tips (on a GPU,
    where each call's kernel launches are the cost)."""
    if per_sample:
        return [[b] for b in range(len(real))]
    groups = []
    for q in (False, True):
        idx = sorted((b for b in range(len(real)) if quad[b] == q), key=lambda b: real[b])
        if not idx:
            continue
        sizes = [real[b] for b in idx]
        # one group, or split where the padded work (count × largest) is least
        one = len(idx) * sizes[-1]
        cost, cut = min(((c * sizes[c - 1] + (len(idx) - c) * sizes[-1], c) for c in range(1, len(idx))),
                        default=(one, 0))
        groups += [idx[:cut], idx[cut:]] if cost < 0.8 * one else [idx]
    return groups


def _force_planes(zoffs, rows, gx, gy, gz, pos, c6, c12, *qk) -> torch.Tensor:
    """Force ``(B, 3, nk, ny, nx)`` on the grid (centred coordinates ``gx``, ``gy``, ``pos``), ``rows`` at once."""
    ax, ay, az = pos[..., 0], pos[..., 1], pos[..., 2]
    dX2 = (gx[None, :, None] - ax[:, None, :]) ** 2  # (B, nx, N)
    dY2 = (gy[None, :, None] - ay[:, None, :]) ** 2  # (B, ny, N)
    parts = [_chunk_force(zoffs, gx, gy[j0:j0 + rows], dX2, dY2[:, j0:j0 + rows], ax, ay, az, gz, c6, c12, *qk)
             for j0 in range(0, len(gy), rows)]
    return torch.cat(parts, dim=3)


class _ForceField(torch.autograd.Function):
    """:func:`_force_planes` with the analytic backward of its central pair forces.

    Every term is ``F(g) = Σ_a f(s) r`` with ``r = g − a`` (shifted by the term's z offset),
    ``s = |r|² + R2SAFE``: LJ ``f = C12' s⁻⁷ − C6' s⁻⁴``, a tip charge ``f = q s^-3/2``. So
    ``∂L/∂a = −Σ_g [f G + 2 f'(s) (r·G) r]`` and ``∂L/∂q = Σ_g s^-3/2 (r·G)`` for the upstream
    gradient ``G(g)``; the sums over grid points are matrix products.
    """

    @staticmethod
    def forward(ctx, zoffs, rows, gx, gy, gz, pos, c6, c12, *qk):
        ctx.zoffs, ctx.rows = zoffs, rows
        ctx.save_for_backward(gx, gy, gz, pos, c6, c12, *qk)
        return _force_planes(zoffs, rows, gx, gy, gz, pos, c6, c12, *qk)

    @staticmethod
    def backward(ctx, grad):
        gx, gy, gz, pos, c6, c12, *qk = ctx.saved_tensors
        zoffs, rows = ctx.zoffs, ctx.rows
        assert zoffs[0] == 0.0, "the first tip charge (the monopole) sits at the apex"
        want_q = [ctx.needs_input_grad[8 + i] for i in range(len(qk))]
        B, N, _ = pos.shape
        nx = len(gx)
        ax, ay, az = pos[..., 0], pos[..., 1], pos[..., 2]
        dX2 = (gx[None, :, None] - ax[:, None, :]) ** 2
        dY2 = (gy[None, :, None] - ay[:, None, :]) ** 2
        g_pos = torch.zeros_like(pos)
        g_q = [torch.zeros(B, N, dtype=pos.dtype, device=pos.device) if w else None for w in want_q]
        a3 = pos.transpose(1, 2)  # (B, 3, N)
        for j0 in range(0, len(gy), rows):
            gyc = gy[j0:j0 + rows]
            nr = len(gyc)
            r2xy = dY2[:, j0:j0 + nr, None, :] + dX2[:, None, :, :]  # (B, rows, nx, N)
            gxb = gx.expand(nr, nx).reshape(1, -1, 1).expand(B, -1, 1)
            gyb = gyc[:, None].expand(nr, nx).reshape(1, -1, 1).expand(B, -1, 1)
            ones = torch.ones_like(gxb)
            for k in range(len(gz)):
                G = grad[:, :, k, j0:j0 + nr, :].reshape(B, 3, -1).transpose(1, 2)  # (B, grid, 3)
                if not bool(G.any()):
                    continue
                dZ = gz[k] - az  # (B, N)
                # r·G for every (grid point, atom) of the plane: g·G − a·G
                gG = gxb[..., 0] * G[..., 0] + gyb[..., 0] * G[..., 1] + gz[k] * G[..., 2]  # (B, grid)
                rG = (gG[..., None] - torch.bmm(G, a3)).reshape(B, nr, nx, N)
                wA = G
                wB = torch.cat([ones, gxb, gyb], dim=-1)  # (B, grid, 3)
                for t, (zoff, q) in enumerate(zip(zoffs, qk)):
                    dz = dZ if zoff == 0.0 else dZ + zoff
                    ir2 = (r2xy + (dz * dz + R2SAFE)[:, None, None, :]).reciprocal_()
                    h = ir2.sqrt().mul_(ir2)  # s^-3/2
                    rGt = rG if zoff == 0.0 else rG + zoff * G[..., 2].reshape(B, nr, nx, 1)
                    if g_q[t] is not None:
                        g_q[t] += (h * rGt).sum(dim=(1, 2))
                    if t == 0:
                        # LJ and the monopole share s: f = s⁻⁴ (C12' s⁻³ − C6') + q s^-3/2
                        ir6 = ir2 * ir2 * ir2
                        f = torch.addcmul(-c6, c12, ir6).mul_(ir6).mul_(ir2).addcmul_(q, h)
                        # 2 f' = 2 s⁻⁵ (4 C6' − 7 C12' s⁻³) − 3 q s^-5/2
                        d2 = torch.addcmul(4 * c6, -7 * c12, ir6).mul_(ir6).mul_(ir2).mul_(ir2).mul_(2.0)
                        d2 = d2.addcmul_(q, h * ir2, value=-3.0)
                    else:
                        f = q * h
                        d2 = (q * h).mul_(ir2).mul_(-3.0)
                    _accumulate(g_pos, f, d2.mul_(rGt), wA, wB, pos, dz)
        g_pos = -g_pos
        return (None, None, None, None, None, g_pos, None, None,
                *[None if g is None else g.reshape(B, 1, 1, N) for g in g_q])


def _accumulate(g_pos, f, bc, wA, wB, pos, dz) -> None:
    """Add ``Σ_g [f G + bc r]`` (``bc = 2 f' r·G``) to ``g_pos`` ``(B, N, 3)``."""
    B, N, _ = g_pos.shape
    f = f.reshape(B, -1, N).transpose(1, 2)
    bc = bc.reshape(B, -1, N).transpose(1, 2)
    MA = torch.bmm(f, wA)  # Σ f G
    MB = torch.bmm(bc, wB)  # Σ bc, Σ bc gx, Σ bc gy
    g_pos[..., 0] += MA[..., 0] + MB[..., 1] - pos[..., 0] * MB[..., 0]
    g_pos[..., 1] += MA[..., 1] + MB[..., 2] - pos[..., 1] * MB[..., 0]
    g_pos[..., 2] += MA[..., 2] + dz * MB[..., 0]


def _chunk_force(zoffs, gx, gy, dX2, dY2, ax, ay, az, gz, c6, c12, *qk) -> torch.Tensor:
    """Force ``(B, 3, nk, rows, nx)`` on grid rows ``gy`` (centred coordinates; see ``force_field``)."""
    B, N = ax.shape
    r2xy = dY2[:, :, None, :] + dX2[:, None, :, :]  # (B, rows, nx, N)
    ones = torch.ones_like(ax)
    planes = []
    fast = not torch.is_grad_enabled()  # in-place arithmetic (1.7× faster) where autograd does not watch
    for k in range(len(gz)):
        dZ = gz[k] - az  # (B, N)
        if fast:
            ir2 = (r2xy + (dZ * dZ + R2SAFE)[:, None, None, :]).reciprocal_()
            ir6 = (ir2 * ir2).mul_(ir2)
            coef = torch.addcmul(-c6, c12, ir6).mul_(ir6)
        else:
            ir2 = 1.0 / (r2xy + (dZ * dZ + R2SAFE)[:, None, None, :])
            ir6 = ir2 * ir2 * ir2
            coef = (c12 * ir6 - c6) * ir6
        fz_extra = 0.0
        for zoff, qq in zip(zoffs, qk):
            if zoff == 0.0:
                # LJ and the monopole share the 1/r² factor: coef = [ir6 (C12' ir6 − C6') + q ir] ir2
                coef = coef.addcmul_(qq, ir2.sqrt()) if fast else coef + qq * torch.sqrt(ir2)
            else:
                dZo = dZ + zoff
                i2 = 1.0 / (r2xy + (dZo * dZo + R2SAFE)[:, None, None, :])
                c = qq * i2 * torch.sqrt(i2)
                coef = coef + c / ir2
                fz_extra = fz_extra + zoff * c.sum(-1)
        coef = coef.mul_(ir2) if fast else coef * ir2
        # Σ_a c_a (g − a) = g Σ c_a − Σ c_a a: one matrix product with [1, x, y, z − plane] of the atoms
        A = torch.stack([ones, ax, ay, dZ], dim=-1)
        S = torch.matmul(coef.reshape(B, -1, N), A).reshape(B, len(gy), len(gx), 4)
        planes.append(torch.stack([gx * S[..., 0] - S[..., 1], gy[:, None] * S[..., 0] - S[..., 2],
                                   S[..., 3] + fz_extra], dim=1))
    return torch.stack(planes, dim=2)


def _needs_grad(grid: torch.Tensor, tips: TipBatch) -> bool:
    """Whether the Δf stack needs gradients (to the grid or the tip's springs)."""
    return torch.is_grad_enabled() and any(
        t.requires_grad for t in (grid, tips.k_lateral, tips.k_radial, tips.tilt_xy)
    )


@contextmanager
def _one_cpu_thread(device: torch.device):
    """Run the relaxation's many small operations on one CPU thread.

    Each step is a few dozen operations on ~10⁵ numbers: too small to gain from a second
    thread, and on a busy machine every fork/join waits for the other core — measured 30–38 s
    instead of 0.3–0.6 s for one 128 × 128 × 19 relaxation with 2 threads while another
    process used one of the 2 cores. (``torch.set_num_threads`` is process-wide; it is
    restored afterwards.)
    """
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


class _Field:
    """Trilinear interpolation of a force-field grid, laterally periodic (ppafm's REPEAT sampler),
    clamped at the computed z planes; value and optionally the Jacobian ``∂F/∂p``."""

    def __init__(self, grid: torch.Tensor, box: FFBox, k0: int) -> None:
        B, _, nk, ny, nx = grid.shape
        self.flat = grid.permute(0, 2, 3, 4, 1).contiguous().reshape(-1, 3)  # (B·nk·ny·nx, 3)
        self.n = (nx, ny, nk)
        kw = dict(device=grid.device, dtype=grid.dtype)
        o, st = box.origin, box.step
        self.origin = torch.tensor([o[0], o[1], o[2] + k0 * st[2]], **kw)  # of the first computed plane
        self.inv_step = 1.0 / torch.tensor(st, **kw)
        self.lo = torch.tensor([-math.inf, -math.inf, 0.0], **kw)
        self.hi = torch.tensor([math.inf, math.inf, nk - 1 - 1e-4], **kw)

    def sample(self, pos: torch.Tensor, bidx: torch.Tensor, jacobian: bool = False):
        return _sample(self.args, pos, bidx, jacobian)

    @property
    def args(self) -> tuple:
        """The sampler as plain arguments of :func:`_sample` (for compiled steps)."""
        return (self.flat, self.origin, self.inv_step, self.lo, self.hi, self.n)


def _sample(args: tuple, pos: torch.Tensor, bidx: torch.Tensor, jacobian: bool = False):
    """:meth:`_Field.sample` as a function of ``_Field.args``."""
    flat, origin, inv_step, lo, hi, (nx, ny, nk) = args
    f = (pos - origin) * inv_step  # grid coordinates
    fc = torch.clamp(f, lo, hi)  # z clamped to the computed planes
    i = torch.floor(fc)
    t = fc - i
    tx, ty, tz = t[:, 0:1], t[:, 1:2], t[:, 2:3]
    i = i.long()
    x0 = i[:, 0] % nx
    x1 = (x0 + 1) % nx
    y0 = (i[:, 1] % ny) * nx
    y1 = ((i[:, 1] + 1) % ny) * nx
    base = bidx * (nx * ny * nk) + i[:, 2] * (nx * ny)
    idx = torch.stack([y0 + x0, y0 + x1, y1 + x0, y1 + x1], dim=0) + base
    idx = torch.cat([idx, idx + nx * ny], dim=0).reshape(-1)
    c = flat.index_select(0, idx).reshape(2, 2, 2, -1, 3)  # [z][y][x] corners
    dX = c[:, :, 1] - c[:, :, 0]  # (z, y, M, 3)
    a = c[:, :, 0] + dX * tx
    dY = a[:, 1] - a[:, 0]  # (z, M, 3)
    b = a[:, 0] + dY * ty
    dZ = b[1] - b[0]
    val = b[0] + dZ * tz
    if not jacobian:
        return val
    gx = dX[:, 0] + (dX[:, 1] - dX[:, 0]) * ty  # ∂/∂x, interpolated in y, then z
    dx = (gx[0] + (gx[1] - gx[0]) * tz) * inv_step[0]
    dy = (dY[0] + (dY[1] - dY[0]) * tz) * inv_step[1]
    fz = f[:, 2:3]
    dz = dZ * (((fz > 0) & (fz < nk - 1)) * inv_step[2])
    return val, torch.stack([dx, dy, dz], dim=-1)  # (M, 3 components, 3 directions)


def _newton_core(args, pa, tip, k, d0, bidx, L: float, f2conv: float, next_dz):
    """One Newton evaluation at ``pa``: ``(converged, converged & stable, predicted equilibria once the
    tip is ``next_dz`` lower, the Newton step, the last step of the converged points, their F_z)``."""
    val, jac = _sample(args, pa, bidx, jacobian=True)
    d = pa - tip
    G = val + TorchSimulator._tip_force(d, k, d0, L)
    J = TorchSimulator._tip_jacobian(d, k, L, add=jac)
    conv = (G * G).sum(-1) < f2conv
    rows = _rows(J)
    good = conv & _stable(J, rows) & torch.isfinite(pa).all(-1)
    g_next = G + next_dz * (J[:, :, 2] - jac[:, :, 2])  # G once the tip moved (J − jac: the springs')
    # the Newton step and the prediction share J's cofactors
    X = _solve3(J, torch.stack([g_next, G], dim=-1), rows)
    pr = pa - X[..., 0]
    step = X[..., 1]
    # a converged point still takes its last Newton step, to first order and without another
    # evaluation: a start that is already within the tolerance (|G|² < f2conv) would otherwise
    # leave the probe up to |G|/k ≈ 0.006 Å from the equilibrium on a soft tip, a jitter that
    # depends on the path and makes fitted stacks (refine) a rough function of the atoms
    fix = torch.where(conv[:, None], step, torch.zeros_like(step))
    fz_a = val[:, 2] - (jac[:, 2, :] * fix).sum(-1)
    return conv, good, pr, step, fix, fz_a


def _newton_evaluate(args, pa, p, ok, fz, pred, done, tip, k, d0, bidx, L: float, f2conv: float,
                     next_dz: float):
    """One evaluation of the masked Newton relaxation (:meth:`TorchSimulator._newton_masked`):
    the points that converge now keep their result; ``(p, ok, fz, pred, done, step)``."""
    conv, good, pr, step, fix, fz_a = _newton_core(args, pa, tip, k, d0, bidx, L, f2conv, next_dz)
    ok = torch.where(done, ok, good)
    fz = torch.where(done, fz, fz_a)
    pred = torch.where(done[:, None], pred, pr)
    p = torch.where((conv & ~done)[:, None], pa - fix, p)
    return p, ok, fz, pred, done | conv, step


def _newton_move(pa, p, step, done, max_step: float):
    """The damped Newton step of the points not yet converged: ``(pa, p)``."""
    n = torch.sqrt((step * step).sum(-1, keepdim=True))
    pa = torch.where(done[:, None], pa, pa - step * torch.clamp(max_step / (n + 1e-12), max=1.0))
    return pa, torch.where(done[:, None], p, pa)


def _fire_update(args, p, vi, dti, dmi, tip, k, d0, bidx, L: float):
    """ppafm's FIRE step (relax.cl): ``(p, v, dt, damp, |F|² before the step)``."""
    f = _sample(args, p, bidx) + TorchSimulator._tip_force(p - tip, k, d0, L)
    ff = (f * f).sum(-1, keepdim=True)
    vv = (vi * vi).sum(-1, keepdim=True)
    vf = (vi * f).sum(-1, keepdim=True)
    back = vf < 0
    vi = torch.where(back, 0.0, vi * (1 - dmi) + f * (dmi * torch.sqrt(vv / (ff + F2SAFE))))
    dti = torch.where(back, torch.clamp(dti * FTDEC, min=DT * 0.1), torch.clamp(dti * FTINC, max=DT))
    dmi = torch.where(back, torch.full_like(dmi, DAMP), dmi * FDAMP)
    vi = vi + f * dti
    return p + vi * dti, vi, dti, dmi, ff


def _fire_step(args, p, vi, dti, dmi, go, tip, k, d0, bidx, L: float, f2conv: float):
    """One FIRE step of the points still going (``go``); ``(p, v, dt, damp, go)``."""
    p2, v2, dt2, dm2, ff = _fire_update(args, p, vi, dti, dmi, tip, k, d0, bidx, L)
    p = torch.where(go, p2, p)
    vi, dti, dmi = torch.where(go, v2, vi), torch.where(go, dt2, dti), torch.where(go, dm2, dmi)
    return p, vi, dti, dmi, go & (ff >= f2conv)  # ppafm stops a pixel after the step in which |F|² < F2CONV


_EAGER = (_newton_evaluate, _newton_move, _fire_step)
_COMPILED: tuple | None = None
_COMPILE_FAILED = False


def _steps(fused: bool) -> tuple:
    """The masked relaxation's steps: eager, or each fused into a few kernels by ``torch.compile``
    (where compiling fails, e.g. no Triton for the GPU, a warning and the eager steps)."""
    global _COMPILED
    if not fused or _COMPILE_FAILED:
        return _EAGER
    if _COMPILED is None:
        _COMPILED = tuple(_or_eager(torch.compile(f, dynamic=True), f) for f in _EAGER)
    return _COMPILED


def _or_eager(compiled, eager):
    def step(*args):
        global _COMPILE_FAILED
        if not _COMPILE_FAILED:
            try:
                return compiled(*args)
            except Exception as err:  # noqa: BLE001 - any compiler failure: the same step, uncompiled
                _COMPILE_FAILED = True
                warnings.warn(f"torch.compile of the relaxation failed ({type(err).__name__}: {err}); "
                              "running it uncompiled", RuntimeWarning, stacklevel=2)
        return eager(*args)

    return step


def _rows(J: torch.Tensor) -> torch.Tensor:
    """The entries of ``(M, 3, 3)`` matrices as 9 contiguous rows ``(9, M)`` (row-major order):
    the element-wise arithmetic below runs on contiguous memory."""
    return J.reshape(-1, 9).t().contiguous()


def _solve3(J: torch.Tensor, b: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """``J⁻¹ b`` for a batch of 3 × 3 matrices ``(M, 3, 3)`` by cofactors (fast for many small
    systems); ``b`` is ``(M, 3)`` or ``(M, 3, K)``; ``rows``: ``_rows(J)`` if at hand."""
    a, bb, c, d, e, f, g, h, i = _rows(J) if rows is None else rows
    A, Bc, C = e * i - f * h, -(d * i - f * g), d * h - e * g
    det = a * A + bb * Bc + c * C
    det = torch.where(det.abs() < 1e-30, torch.full_like(det, 1e-30), det)
    D, E, Fc = -(bb * i - c * h), a * i - c * g, -(a * h - bb * g)
    G, H, I = bb * f - c * e, -(a * f - c * d), a * e - bb * d
    if b.dim() == 3:  # several right-hand sides (M, 3, K)
        A, Bc, C, D, E, Fc, G, H, I, det = (v[:, None] for v in (A, Bc, C, D, E, Fc, G, H, I, det))
    x, y, z = b.movedim(1, 0).contiguous()
    return torch.stack([A * x + D * y + G * z, Bc * x + E * y + H * z, C * x + Fc * y + I * z], dim=1) / det[:, None]


def _stable(J: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """True where the symmetric part of −J is positive definite (a stable equilibrium)."""
    j = _rows(J) if rows is None else rows
    # S = −(J + Jᵀ) (twice the symmetric part of −J: the same signs of the leading minors)
    a, e, i = -2 * j[0], -2 * j[4], -2 * j[8]
    b, c, f = -(j[1] + j[3]), -(j[2] + j[6]), -(j[5] + j[7])
    m2 = a * e - b * b
    m3 = a * (e * i - f * f) - b * (b * i - f * c) + c * (b * f - e * c)  # det S (symmetric)
    return (a > 0) & (m2 > 0) & (m3 > 0)
