"""Refine molecules against the measured stack through the differentiable probe-particle engine.

:func:`iter_refine_atoms` (a generator yielding :class:`~hydrafm.progress.Progress` and
:class:`RefineSnapshot` records) and :func:`refine_atoms` (run to the end) return a
:class:`Refinement`: the refined molecules, a fit score per molecule, the fitted tip and
measurement nuisances, and the residual before and after. See ``docs/refine.md``.
"""

from .fit import RefineSettings, Refinement, RefineSnapshot, TipFit, iter_refine_atoms, refine_atoms

__all__ = ["RefineSettings", "Refinement", "RefineSnapshot", "TipFit", "iter_refine_atoms", "refine_atoms"]
