"""Pick a simulation engine: the torch probe-particle engine (default) or ppafm's OpenCL reference.

Both have the same ``simulate(positions, numbers, tip, charges, name) -> AFMStack`` method.
OpenCL compiles its kernels with LLVM inside the calling process; inside napari (which also
runs LLVM for software OpenGL) that has crashed the viewer. So the ppafm engine runs in a
separate process whenever napari is loaded (or ``isolate=True``): OpenCL is then never
loaded into the viewer's process, and a crash there is reported as an error, not a dead
viewer.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

from .settings import ENGINES, SampledTip, SimulationError, SimulationSettings

__all__ = ["make_simulator", "PpafmProcess", "ENGINES"]


def make_simulator(
    settings: SimulationSettings = SimulationSettings(),
    engine: str = "torch",
    device: str = "cpu",
    isolate: bool | None = None,
):
    """A simulator of ``engine`` (``'torch'`` or ``'ppafm'``) for ``settings``.

    ``isolate`` (ppafm only): run OpenCL in a child process; default: when napari is loaded.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown simulation engine {engine!r}; choose one of {ENGINES}")
    if engine == "torch":
        from .engine import TorchSimulator

        return TorchSimulator(settings, device=device)
    if isolate is None:
        isolate = "napari" in sys.modules
    if isolate:
        return PpafmProcess(settings)
    from .afm import AFMSimulator

    return AFMSimulator(settings)


def _child_simulate(settings_dict: dict, jobs: list) -> list:
    """Runs in the child process: simulate every job with one AFMSimulator."""
    from .afm import AFMSimulator
    from .settings import SimulationSettings

    sim = AFMSimulator(SimulationSettings.from_dict(settings_dict))
    out = []
    for positions, numbers, tip, charges, name in jobs:
        try:
            st = sim.simulate(positions, numbers, tip, charges, name)
            out.append(("ok", st.data, st.metadata))
        except Exception as exc:  # noqa: BLE001 - sent back and re-raised in the parent
            out.append(("error", type(exc).__name__, str(exc)))
    return out


class PpafmProcess:
    """ppafm's ``AFMulator`` in a child process (spawned: no Qt, no OpenGL there).

    One child serves every call of this object, so its OpenCL kernels are built once.
    """

    def __init__(self, settings: SimulationSettings = SimulationSettings()) -> None:
        import concurrent.futures
        import multiprocessing as mp

        self.settings = settings
        self._pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn"))

    def simulate(
        self,
        positions: np.ndarray,
        numbers: Sequence[int],
        tip: SampledTip | None = None,
        charges: np.ndarray | None = None,
        name: str = "structure",
    ):
        """Δf stack of one structure, simulated in the child process."""
        from ..stack import AFMStack
        from ..structures.pool import BadStructureError

        job = (np.asarray(positions, float), np.asarray(numbers, int), tip, charges, name)
        try:
            (res,) = self._pool.submit(_child_simulate, self.settings.to_dict(), [job]).result()
        except Exception as exc:  # noqa: BLE001 - a crashed child (e.g. OpenCL) must not crash the caller
            raise SimulationError(f"the ppafm simulation process failed ({type(exc).__name__}: {exc})") from None
        if res[0] == "error":
            kind, msg = res[1], res[2]
            if kind == "BadStructureError":
                raise BadStructureError(msg)
            raise SimulationError(f"ppafm: {msg}")
        s = self.settings
        return AFMStack(res[1], (s.pixel_size, s.pixel_size), np.arange(s.n_heights) * s.dz,
                        (s.pixel_size / 2, s.pixel_size / 2), res[2])

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass
