"""Annealed ice-like windows: the built networks relaxed by MD on a substrate (tiny anneals here)."""

from __future__ import annotations

import numpy as np
import pytest

from hydrafm.progress import drive
from hydrafm.structures.ice import FAMILIES, WINDOW, geometry_problems, make_structure
from hydrafm.structures.ice_md import OH, SUBSTRATE_OF, Anneal, _substrate, anneal_window, make_ice_md_pool

SHORT = Anneal(hot_ps=0.2, cool_ps=0.2)


def _window(family: str, i: int = 0):
    rng = np.random.default_rng(np.random.SeedSequence([0, list(FAMILIES).index(family), i]))
    return make_structure(family, rng)[:2]


def test_an_annealed_window_keeps_its_waters_whole_and_holds_the_cut_sides():
    pytest.importorskip("openmm")
    pos, numbers = _window("amorphous")
    new = anneal_window(pos, numbers, "Pt", seed=3, anneal=SHORT)
    assert new.shape == pos.shape
    mol = new.reshape(-1, 3, 3)
    assert np.allclose(np.linalg.norm(mol[:, 1:] - mol[:, :1], axis=2), OH, atol=1e-3)
    assert not geometry_problems(np.round(new / 0.01) * 0.01, numbers)
    assert np.isclose(mol[:, 0, 2].min(), 1.0)
    moved = np.hypot(*(mol[:, 0, :2] - pos[0::3, :2]).T)
    o_xy = pos[0::3, :2]
    side = np.any((o_xy < SHORT.edge) | (o_xy > WINDOW - SHORT.edge), axis=1)
    assert side.any() and (~side).any()
    assert moved[side].max() < 0.6  # held by their springs where the network was cut
    assert moved[~side].max() > moved[side].max()  # the rest relax freely
    with pytest.raises(ValueError, match="waters only"):
        anneal_window(pos[:-1], numbers[:-1], "Pt", seed=3, anneal=SHORT)


def test_substrates_cover_the_window_and_nacl_alternates_its_ions():
    for name in ("Au", "Pt", "Cu", "NaCl"):
        xyz, params = _substrate(name, -5.0, WINDOW + 5.0)
        assert len(xyz) == len(params)
        assert xyz[:, 0].min() <= -4.0 and xyz[:, 0].max() >= WINDOW + 4.0
        assert np.isclose(xyz[:, 2].max(), 0.0)
    with pytest.raises(ValueError, match="unknown substrate 'Ag'"):
        _substrate("Ag", 0.0, WINDOW)
    xyz, params = _substrate("NaCl", -5.0, WINDOW + 5.0)
    charges = np.array([q for q, _, _ in params])
    top = np.isclose(xyz[:, 2], 0.0)
    assert abs(charges[top].sum()) <= 1.0  # as many Na as Cl on the surface
    d = np.linalg.norm(xyz[top][:, None, :2] - xyz[top][None, :, :2], axis=2)
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(1)
    assert np.all(charges[top] * charges[top][nearest] < 0)  # every ion's nearest neighbour has the other sign


def test_the_pool_keeps_the_family_names_so_the_same_families_are_held_out():
    pytest.importorskip("openmm")
    from hydrafm.structures.ice import held_out_mask

    pool = drive(make_ice_md_pool(1, families=["bilayer-Au111", "bilayer-Pt111"], anneal=SHORT), show=False)
    assert len(pool) + sum(pool.attrs["dropped"].values()) == 2
    family = np.asarray(pool.info["family"]).astype(str)
    assert set(family) <= {"bilayer-Au111", "bilayer-Pt111"}
    assert np.array_equal(held_out_mask(pool), family == "bilayer-Pt111")
    with pytest.raises(ValueError, match="no substrate"):
        drive(make_ice_md_pool(1, families=["hydrate-in-network-Na"], anneal=SHORT), show=False)


def test_the_shipped_annealed_pool_is_registered_and_split_by_family():
    from hydrafm.paths import pool_path
    from hydrafm.training.onthefly import default_split

    if not pool_path("ice-md").is_file():
        pytest.skip("no shipped ice-md pool")
    train, held = default_split("ice-md")
    family = np.asarray(train.pool.info["family"]).astype(str)
    assert set(family[held.indices]) == {"bilayer-Pt111", "amorphous-8ring"}
    assert set(family[train.indices]) == set(SUBSTRATE_OF) - {"bilayer-Pt111", "amorphous-8ring"}
    for i in (0, len(train.pool) - 1):
        pos, numbers = train.pool.arrays(i)
        assert not geometry_problems(pos, numbers)
    from hydrafm.simulate.dataset import KINDS, draw_structure

    assert "ice-md" in KINDS  # hydrafm simulate ice-md draws its windows like the ice pool's
    pos, numbers, source = draw_structure("ice-md", train.pool, np.random.default_rng(0))
    assert 0 <= source < len(train.pool) and len(pos) == len(numbers) == len(train.pool.arrays(source)[1])
    assert pos[:, :2].min() > -1.0 and pos[:, :2].max() < WINDOW + 1.0  # the window under a symmetry of the square

