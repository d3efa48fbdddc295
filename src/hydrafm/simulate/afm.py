"""Constant-height Δf stacks of structures, simulated with ppafm's OpenCL ``AFMulator``.

The probe-particle model of Tang et al.: a CO-like tip (O probe particle, lateral
stiffness 0.5 N/m set explicitly, radial 20 N/m, monopole charge Q = −0.05 e), the
sample as Lennard-Jones atoms with point charges (SPC/E for water, +1 e for Na+/K+),
10 heights 0.1 Å apart, 128 × 128 pixels over 2.5 nm. The closest probe distance and
the tip tilt are drawn per stack from :class:`SimulationSettings` ranges.

The structure is not treated as periodic (a window cut from a larger film is not a
unit cell); the force-field box extends ``lateral_pad`` Å beyond the scan.

OpenCL runs on a GPU where there is one, otherwise on the CPU through apt's
``pocl-opencl-icd``. :func:`opencl_available` says whether a device exists.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ..stack import AFMStack
from ..structures.pool import BadStructureError, check_structure
from .settings import CHARGES, SampledTip, SimulationError, SimulationSettings

__all__ = ["SimulationSettings", "SampledTip", "AFMSimulator", "CHARGES", "opencl_available", "SimulationError"]

def opencl_platform() -> tuple[int, str]:
    """Index and device name of the OpenCL platform to use: a GPU if there is one, else the first."""
    import pyopencl as cl

    platforms = cl.get_platforms()
    best = None
    for i, p in enumerate(platforms):
        for d in p.get_devices():
            if d.type & cl.device_type.GPU:
                return i, d.name
            if best is None:
                best = (i, d.name)
    if best is None:
        raise SimulationError("no OpenCL device found")
    return best


def opencl_available() -> bool:
    """True when pyopencl finds at least one OpenCL device."""
    try:
        import pyopencl as cl

        return any(p.get_devices() for p in cl.get_platforms())
    except Exception:  # noqa: BLE001 - any failure means "not available"
        return False


class AFMSimulator:
    """Simulate Δf stacks of small structures; one instance reuses the compiled OpenCL kernels.

    Parameters
    ----------
    settings
        Tip and scan parameters.
    """

    #: the scan's top plane (tip apex) sits here; structures are shifted in z under it
    Z_TOP = 20.0

    def __init__(self, settings: SimulationSettings = SimulationSettings()) -> None:
        self.settings = s = settings
        try:
            from ppafm.ocl import AFMulator as afm_mod
            from ppafm.ocl import oclUtils
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise SimulationError("ppafm with OpenCL is not installed: pip install 'hydrafm[sim]'") from exc
        if not opencl_available():
            raise SimulationError(
                "no OpenCL device found; on a CPU install apt's pocl-opencl-icd (the PyPI pocl does not work)"
            )
        i_platform, self.device = opencl_platform()
        oclUtils.init_env(i_platform=i_platform)
        half = s.pixel_size / 2
        self.nz = s.n_heights + s.df_steps - 1
        z_hi = self.Z_TOP
        z_lo = z_hi - self.nz * s.dz
        scan_window = ((half, half, z_lo), (s.scan_size - half, s.scan_size - half, z_hi))
        lvec = afm_mod.get_lvec(
            scan_window,
            pad=(s.lateral_pad, s.lateral_pad, 5.0),
            tipR0=(0.0, 0.0, s.probe_length),
            pixPerAngstrome=s.pix_per_angstrom,
        )
        self._afm = afm_mod.AFMulator(
            pixPerAngstrome=s.pix_per_angstrom,
            lvec=lvec,
            scan_dim=(s.n_pixels, s.n_pixels, self.nz),
            scan_window=scan_window,
            iZPP=8,
            Qs=[s.tip_charge, 0.0, 0.0, 0.0],
            QZs=[0.0, 0.0, 0.0, 0.0],
            tipR0=[0.0, 0.0, s.probe_length],
            tipStiffness=[s.k_lateral, s.k_lateral, 0.0, s.k_radial],
            df_steps=s.df_steps,
            npbc=(0, 0, 0),
            f0Cantilever=s.f0,
            kCantilever=s.k_cantilever,
        )
        self.z_closest_tip = z_lo  # lowest tip-apex position of the scan
        self.ff_grid = tuple(int(v) for v in self._afm.forcefield.nDim[:3])

    def simulate(
        self,
        positions: np.ndarray,
        numbers: Sequence[int],
        tip: SampledTip | None = None,
        charges: np.ndarray | None = None,
        name: str = "structure",
    ) -> AFMStack:
        """Δf stack of one structure (positions in Å in the window frame).

        The structure is shifted in z so that the probe's rest position at the
        closest height is ``tip.distance`` Å above its highest atom. Returns an
        :class:`AFMStack` (frame 0 closest) whose metadata records the draw.
        """
        s = self.settings
        positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
        numbers = np.asarray(numbers, dtype=np.int32).reshape(-1)
        from ase import Atoms

        check_structure(Atoms(numbers=numbers, positions=positions), (s.scan_size, s.scan_size), name=name)
        tip = tip or SampledTip(float(np.mean(s.closest_distance)))
        if charges is None:
            charges = np.array([CHARGES[int(z)] for z in numbers], dtype=np.float64)
        z_top = positions[:, 2].max()
        probe_closest = self.z_closest_tip - s.probe_length
        shift = probe_closest - tip.distance - z_top
        xyz = positions + np.array([0.0, 0.0, shift])
        self._afm.tipR0 = [tip.tilt_xy[0], tip.tilt_xy[1], s.probe_length]
        k_lat = s.k_lateral if tip.k_lateral is None else tip.k_lateral
        self._afm.setStiffness([k_lat, k_lat, 0.0, s.k_radial])
        q = s.tip_charge if tip.charge is None else tip.charge
        if tip.quadrupole:
            from .engine import QUAD_D

            qd = tip.quadrupole / QUAD_D**2
            self._afm.setQs([q, qd, -2 * qd, qd], [0.0, QUAD_D, 0.0, -QUAD_D])
        else:
            self._afm.setQs([q, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*retrieved more than once.*")
            X = self._afm(xyz, numbers, charges)
        data = np.asarray(X).transpose(2, 1, 0)[::-1]
        return stack_from_frames(data, s, tip, shift, name, "ppafm")


def stack_from_frames(
    data: np.ndarray, settings: SimulationSettings, tip: SampledTip, shift: float, name: str, engine: str
) -> AFMStack:
    """Wrap simulated frames ``(n_heights, ny, nx)`` (frame 0 closest) as an :class:`AFMStack`.

    Raises :class:`BadStructureError` when the simulation diverged.
    """
    s = settings
    data = np.ascontiguousarray(data, dtype=np.float32)
    if not np.all(np.isfinite(data)) or np.abs(data).max() > 1e3:
        raise BadStructureError(f"{name}: the simulation diverged (probe too close to an atom?)")
    return AFMStack(
        data=data,
        pixel_size=(s.pixel_size, s.pixel_size),
        heights=np.arange(s.n_heights) * s.dz,
        origin=(s.pixel_size / 2, s.pixel_size / 2),
        metadata={
            "channel": "df",
            "units": "Hz",
            "format": f"{engine} simulation",
            "simulation": {
                **s.to_dict(),
                "engine": engine,
                "distance": tip.distance,
                "tilt_xy": list(tip.tilt_xy),
                "k_lateral": s.k_lateral if tip.k_lateral is None else tip.k_lateral,
                "tip_charge": s.tip_charge if tip.charge is None else tip.charge,
                "quadrupole": tip.quadrupole,
                "structure_z_shift": float(shift),
            },
        },
    )
