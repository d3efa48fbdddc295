"""Faster first draws of new layers: remember vispy's parse of each shader program's code.

Every new vispy visual (one per napari layer) parses the GLSL of its shader program
for uniforms, attributes and varyings. vispy does it with regular expressions whose
comment-stripping step backtracks on every line, about 25 ms per program on a laptop
CPU, on the main thread, when the layer is first drawn. The result depends only on the
code, and a new Points layer uses the same code as the last one, so it is kept by
code: :func:`install` wraps ``vispy.gloo.Program._parse_variables_from_code`` with a
dictionary lookup. Behaviour is unchanged (the same variables, pending variables
processed the same way); the patch is applied once and only by the widgets.
"""

from __future__ import annotations

from typing import Any

__all__ = ["install"]

_CACHE: dict[str, dict[str, Any]] = {}
_MAX = 256


def install() -> bool:
    """Wrap vispy's shader-variable parser with a cache (idempotent); False if vispy has changed."""
    try:
        from vispy.gloo.program import Program
    except ImportError:  # pragma: no cover - napari always brings vispy
        return False
    original = getattr(Program, "_parse_variables_from_code", None)
    if original is None or not hasattr(Program, "_process_pending_variables"):
        return False
    if getattr(original, "_hydrafm_cached", False):
        return True

    def parse(self: Any, update_variables: bool = True) -> None:
        code = "\n\n".join(sh.code for sh in self._shaders)
        known = _CACHE.get(code)
        if known is None:
            original(self, update_variables=False)
            if len(_CACHE) >= _MAX:
                _CACHE.clear()
            _CACHE[code] = dict(self._code_variables)
        else:
            self._code_variables = dict(known)
        if update_variables:
            self._process_pending_variables()

    parse._hydrafm_cached = True  # type: ignore[attr-defined]
    parse.__doc__ = original.__doc__
    Program._parse_variables_from_code = parse
    return True
