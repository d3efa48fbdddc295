"""The cache of vispy's shader-variable parse changes nothing but the time it takes."""

from __future__ import annotations

import pytest

pytest.importorskip("vispy")

VERT = """
uniform float u_size;  // a comment
attribute vec3 a_position;
attribute vec4 a_color;
varying vec4 v_color;
void main() { v_color = a_color; gl_Position = vec4(a_position, u_size); }
"""
FRAG = """
varying vec4 v_color;
uniform vec4 u_tint[2];
void main() { gl_FragColor = v_color * u_tint[0]; }
"""


def _variables(program_cls):
    p = program_cls(VERT, FRAG)
    p["u_size"] = 2.0  # set before and after parsing: pending variables are processed the same way
    return dict(p._code_variables), sorted(p._user_variables)


def test_cached_parse_gives_the_same_variables_and_is_reused(monkeypatch):
    from vispy.gloo.program import Program

    from hydrafm.widgets import _vispy_cache

    monkeypatch.setattr(Program, "_parse_variables_from_code", Program._parse_variables_from_code)
    monkeypatch.setattr(_vispy_cache, "_CACHE", {})
    plain = _variables(Program)
    assert _vispy_cache.install() and _vispy_cache.install()  # idempotent
    first = _variables(Program)
    assert len(_vispy_cache._CACHE) == 1
    second = _variables(Program)  # from the cache
    assert plain == first == second
    assert {"u_size", "a_position", "a_color", "v_color", "u_tint", "u_tint[0]"} <= set(first[0])
