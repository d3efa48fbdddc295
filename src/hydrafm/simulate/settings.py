"""Parameters of the probe-particle simulation, shared by both engines (no heavy imports).

:class:`SimulationSettings` holds the tip, scan and randomisation parameters of Tang et
al.'s probe-particle model (CO-like tip, 10 heights 0.1 Å apart, 128 × 128 px over
2.5 nm); :class:`SampledTip` is one per-stack random draw; :class:`TipRanges` draws tips and
scans like an experiment (stiffness, charge, quadrupole, amplitude and true height step vary per
stack). Both the torch engine
(:mod:`hydrafm.simulate.engine`) and ppafm's OpenCL ``AFMulator``
(:mod:`hydrafm.simulate.afm`) take them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

__all__ = ["SimulationSettings", "SampledTip", "TipRanges", "scan_settings", "CHARGES", "SimulationError",
           "ENGINES"]

#: simulation engines: our torch port of the probe-particle model (default) and ppafm's OpenCL reference
ENGINES = ("torch", "ppafm")

#: Point charges (e) by atomic number: SPC/E water, monovalent cations.
CHARGES = {1: 0.4238, 8: -0.8476, 11: 1.0, 19: 1.0}


class SimulationError(RuntimeError):
    """The simulator cannot run (no OpenCL device, ppafm missing)."""


@dataclass(frozen=True)
class SimulationSettings:
    """Tip, scan and randomisation parameters of the AFM simulation (Å, N/m, e, Hz)."""

    n_pixels: int = 128
    scan_size: float = 25.0
    n_heights: int = 10
    dz: float = 0.1
    df_steps: int = 10  # oscillation amplitude = df_steps × dz = 1 Å
    pix_per_angstrom: int = 5  # force-field grid density
    lateral_pad: float = 0.3  # FF box beyond the scan; 3 Å gives the same images (corr 1 - 1e-9) at 2.25× the cost
    tip_charge: float = -0.05
    k_lateral: float = 0.5
    k_radial: float = 20.0
    probe_length: float = 3.0  # tipR0: probe below the tip apex
    closest_distance: tuple[float, float] = (2.3, 2.9)  # probe above the highest atom, closest height
    max_tilt_deg: float = 8.0  # rest tilt of the CO probe, uniform in [0, max] with random azimuth
    f0: float = 30300.0
    k_cantilever: float = 1800.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SimulationSettings":
        d = dict(d)
        if "closest_distance" in d:
            d["closest_distance"] = tuple(d["closest_distance"])
        return cls(**d)

    @property
    def pixel_size(self) -> float:
        return self.scan_size / self.n_pixels


@dataclass
class SampledTip:
    """Per-stack random draws: closest probe distance above the top atom, tip rest offset and,
    when set, this stack's lateral stiffness (N/m), tip monopole (e) and d_z² quadrupole
    (e·Å²); ``None`` means the settings' value."""

    distance: float
    tilt_xy: tuple[float, float] = field(default=(0.0, 0.0))
    k_lateral: float | None = None
    charge: float | None = None
    quadrupole: float = 0.0

    @classmethod
    def draw(cls, settings: SimulationSettings, rng: np.random.Generator) -> "SampledTip":
        lo, hi = settings.closest_distance
        distance = float(rng.uniform(lo, hi))
        return cls(distance, _rest_offset(rng, settings.max_tilt_deg, settings.probe_length))


def _rest_offset(rng: np.random.Generator, max_tilt_deg: float, probe_length: float) -> tuple[float, float]:
    """A probe's rest offset (Å, x and y): tilted by up to ``max_tilt_deg`` in a random direction."""
    tilt = math.radians(float(rng.uniform(0.0, max_tilt_deg)))
    phi = float(rng.uniform(0.0, 2 * math.pi))
    r = probe_length * math.tan(tilt)
    return r * math.cos(phi), r * math.sin(phi)


@dataclass(frozen=True)
class TipRanges:
    """Experiment-like per-stack tip and scan draws (uniform in each range).

    What on-the-fly training draws, and ``hydrafm simulate --random-tips`` / fine-tuning from
    structures with ``--random-tips`` (``make_dataset`` / ``simulate_structures`` with ``tips``): the closest probe anywhere from the attractive to the
    repulsive regime, a soft or stiff CO, a charged tip (sometimes with a quadrupole), and an
    amplitude and a true height step the model does not know (it assumes its own).
    """

    distance: tuple[float, float] = (2.3, 3.8)  # closest probe height above the top atom (Å)
    k_lateral: tuple[float, float] = (0.25, 0.8)  # N/m
    charge: tuple[float, float] = (-0.2, 0.1)  # monopole (e)
    quadrupole_fraction: float = 0.3  # share of stacks with a d_z² quadrupole as well
    quadrupole: tuple[float, float] = (-0.1, 0.05)  # e·Å²
    max_tilt_deg: float = 8.0
    amplitudes: tuple[float, ...] = (0.6, 1.0, 1.4)  # Å peak-to-peak, one per batch
    dz: tuple[float, ...] = (0.08, 0.1, 0.12)  # true height step (the model assumes its own), one per batch

    def draw(self, rng: np.random.Generator, probe_length: float) -> SampledTip:
        """One tip: distance, rest tilt, stiffness, charge and (on a share of draws) a quadrupole."""
        offset = _rest_offset(rng, self.max_tilt_deg, probe_length)
        quad = float(rng.uniform(*self.quadrupole)) if rng.random() < self.quadrupole_fraction else 0.0
        return SampledTip(float(rng.uniform(*self.distance)), offset,
                          k_lateral=float(rng.uniform(*self.k_lateral)),
                          charge=float(rng.uniform(*self.charge)), quadrupole=quad)

    def draw_scan(self, rng: np.random.Generator) -> tuple[float, float]:
        """One scan: ``(amplitude Å peak-to-peak, true height step Å)``."""
        return float(rng.choice(self.amplitudes)), float(rng.choice(self.dz))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TipRanges":
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def scan_settings(settings: SimulationSettings, amplitude: float, dz: float) -> SimulationSettings:
    """``settings`` scanned with another amplitude (Å peak-to-peak) and true height step (Å)."""
    return replace(settings, dz=dz, df_steps=max(2, int(round(amplitude / dz))))
