"""HydrAFM: atoms from multi-height nc-AFM stacks of interfacial water, in napari.

The public entry points:

* :func:`load_stack` reads instrument files (Nanonis, Createc, PNG/TIFF, ml-spm
  .npz, Gwyddion) into an :class:`AFMStack`.
* :func:`predict_atoms` turns a stack into whole molecules (``ase.Atoms`` with ``label``,
  ``confidence``, ``mol`` and ``shell``) with a shipped or fine-tuned structure network.
* ``hydrafm`` on the command line (``hydrafm info | predict | train | ...``).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from .io import AFMFileError, load_stack, save_npz
from .stack import AFMStack

try:
    __version__ = version("hydrafm")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

__all__ = ["AFMStack", "AFMFileError", "load_stack", "predict_atoms", "save_npz", "__version__"]


def __getattr__(name: str):
    # torch is imported only when prediction is asked for
    if name == "predict_atoms":
        from .predict.predictor import predict_atoms

        return predict_atoms
    raise AttributeError(f"module 'hydrafm' has no attribute {name!r}")
