"""Ice-like structure pools: ice rules, geometry, labels, determinism, the held-out split."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from hydrafm.simulate.labels import atom_labels
from hydrafm.structures import ice
from hydrafm.structures.pool import check_structure


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def waters(pos: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    n_w = int(np.sum(numbers == 8))
    assert np.all(numbers[: 3 * n_w].reshape(-1, 3) == [8, 1, 1])
    return pos[: 3 * n_w].reshape(-1, 3, 3)


@pytest.fixture(scope="module")
def small_pool():
    from hydrafm.progress import drive

    return drive(ice.make_ice_pool(2, seed=3), show=False)


# ------------------------------------------------------------------ the ice-rule sampler
def test_sampler_meets_the_bounds_and_randomises():
    net, _ = ice._honeycomb_network(ice.SUBSTRATES["Cu111"][0], 0.95, rng(1))
    n, edges = len(net.oxygens), net.edges
    k = ice._degrees(n, edges)
    orders = []
    for seed in range(3):
        d = ice.sample_proton_order(n, edges, rng(seed))
        out = np.bincount(d[:, 0], minlength=n)
        acc = np.bincount(d[:, 1], minlength=n)
        assert np.all(out <= 2) and np.all(acc <= 2) and np.all(out + acc == k)
        assert {tuple(sorted(e)) for e in d.tolist()} == {tuple(sorted(e)) for e in edges.tolist()}
        orders.append(d)
    assert not np.array_equal(orders[0], orders[1])
    # square lattice, every O four-bonded: exactly two donated, two accepted
    sq = np.array([[i * 4 + j, ((i + 1) % 4) * 4 + j] for i in range(4) for j in range(4)]
                  + [[i * 4 + j, i * 4 + (j + 1) % 4] for i in range(4) for j in range(4)])
    d = ice.sample_proton_order(16, sq, rng(0))
    assert np.all(np.bincount(d[:, 0], minlength=16) == 2)
    # impossible bounds are reported, not violated
    chain = np.array([[0, 1], [1, 2]])
    assert ice.sample_proton_order(3, chain, rng(0), np.full(3, 2), np.full(3, 2)) is None


# ------------------------------------------------------------------ bilayers: ice rules and labels
@pytest.mark.parametrize("substrate", sorted(ice.SUBSTRATES))
def test_ideal_bilayer_obeys_the_ice_rules(substrate):
    pos, numbers, info = ice.hexagonal_bilayer(substrate, rng(2), "ideal", "H-up")
    assert info["family"] == f"bilayer-{substrate}" and info["dangling"] == "H-up"
    mol = waters(pos, numbers)
    o = mol[:, 0]
    # every H belongs to exactly one O: its own, at 0.96-1.0 Å; the next O is at least 1.45 Å away
    d, _ = cKDTree(o).query(mol[:, 1:].reshape(-1, 3), k=2)
    assert np.all((d[:, 0] > 0.955) & (d[:, 0] < 1.005)) and np.all(d[:, 1] > 1.45)
    # O-O: two sublattices 0.9-1.0 Å apart, bonds 2.7-3.0 Å
    zs = np.sort(np.unique(np.round(o[:, 2], 3)))
    assert len(zs) == 2 and 0.9 <= zs[1] - zs[0] <= 1.0
    nn = cKDTree(o).query(o, k=2)[0][:, 1]
    assert 2.7 <= nn.min() and nn.max() <= 3.0
    # interior O (all neighbours in the window): upper donates 1 + a dangling H up, lower donates 2;
    # each accepts at most 2
    hb = ice.hydrogen_bonds(pos, numbers)
    o_idx = np.flatnonzero(numbers == 8)
    donated = np.bincount(hb[:, 0], minlength=len(pos))[o_idx]
    accepted = np.bincount(hb[:, 1], minlength=len(pos))[o_idx]
    interior = np.all((o[:, :2] > 3.5) & (o[:, :2] < ice.WINDOW - 3.5), axis=1)
    upper = o[:, 2] > zs.mean()
    assert interior.sum() > 20
    assert np.all(accepted <= 2)
    assert np.all(donated[interior & upper] == 1) and np.all(donated[interior & ~upper] == 2)
    assert np.all(accepted[interior & upper] == 2) and np.all(accepted[interior & ~upper] == 1)
    # labels: the dangling H of every upper O is H_up; nothing points down; bonded H are flat
    labels = atom_labels(pos, numbers).reshape(-1, 3)
    assert np.sum(labels[:, 1:] == "H_up") == upper.sum()
    assert np.all(np.sum(labels[upper, 1:] == "H_up", axis=1) == 1)
    assert not np.any(labels == "H_down")
    assert np.sum(labels[:, 1:] == "H_flat") == 2 * len(o) - upper.sum()


def test_h_down_and_mixed_bilayers():
    pos, numbers, _ = ice.hexagonal_bilayer("Au111", rng(4), "ideal", "H-down")
    labels = atom_labels(pos, numbers).reshape(-1, 3)
    o = waters(pos, numbers)[:, 0]
    lower = o[:, 2] < o[:, 2].mean()
    assert np.sum(labels == "H_down") == lower.sum() and not np.any(labels == "H_up")
    pos, numbers, _ = ice.hexagonal_bilayer("Au111", rng(4), "ideal", "mixed")
    labels = atom_labels(pos, numbers)
    assert np.sum(labels == "H_up") > 5 and np.sum(labels == "H_down") > 5


@pytest.mark.parametrize("variant", ice.BILAYER_VARIANTS[1:])
def test_defective_bilayers_are_physical(variant):
    pos, numbers, info = ice.hexagonal_bilayer("Cu111", rng(5), variant, "mixed")
    assert info["variant"] == variant
    assert ice.geometry_problems(pos, numbers) == []
    check_structure(atoms_of(pos, numbers), (ice.WINDOW, ice.WINDOW))
    assert np.all(np.bincount(ice.hydrogen_bonds(pos, numbers)[:, 1], minlength=len(pos)) <= 2)
    if variant == "5-7":
        o = waters(pos, numbers)[:, 0]
        edges = ice._hbond_graph(o)
        rings = ice.ring_sizes(o, edges)
        assert 5 in rings and 7 in rings
    if variant.startswith("island"):
        assert info["n_waters"] < 0.9 * 60  # a full Cu(111) window holds ~65 molecules


def atoms_of(pos, numbers):
    from ase import Atoms

    return Atoms(numbers=numbers, positions=pos)


# ------------------------------------------------------------------ flat ice, amorphous, hydrates
def test_flat_ice_is_h_flat_rich():
    pos, numbers, info = ice.square_ice(rng(0))
    labels = atom_labels(pos, numbers)
    h = labels[numbers == 1]
    assert info["family"] == "2d-NaCl001" and np.mean(h == "H_flat") > 0.9
    nn = cKDTree(waters(pos, numbers)[:, 0]).query(waters(pos, numbers)[:, 0], k=2)[0][:, 1]
    assert np.all(np.abs(nn - 2.82) < 0.15)
    pos, numbers, info = ice.flat_hexagonal_ice(rng(0))
    h = atom_labels(pos, numbers)[numbers == 1]
    assert 0.6 < np.mean(h == "H_flat") < 0.85 and np.any(h == "H_up") and np.any(h == "H_down")


@pytest.mark.parametrize("rings", ["mixed", "4-8"])
def test_amorphous_networks(rings):
    sizes = []
    for seed in range(2):
        pos, numbers, info = ice.amorphous_network(rng(seed), rings)
        assert ice.geometry_problems(pos, numbers) == []
        o = waters(pos, numbers)[:, 0]
        edges = ice._hbond_graph(o)
        d = np.linalg.norm(o[edges[:, 0]] - o[edges[:, 1]], axis=1)
        assert d.min() >= 2.55 and d.max() <= 3.05
        r = ice.ring_sizes(o, edges)
        assert len(r) and r.min() >= 4 and r.max() <= 8
        sizes.append(info["rings_8"])
    if rings == "4-8":
        assert np.mean(sizes) > 0.15


@pytest.mark.parametrize("ion,n", [("Na", 4), ("K", 7)])
def test_hydrates_in_networks(ion, n):
    pos, numbers, info = ice.hydrates_in_network(ion, n, rng(1), n_ions=2)
    assert ice.geometry_problems(pos, numbers) == []
    z_ion = ice.IONS[ion][3]
    assert info["family"] == f"hydrate-in-network-{ion}" and info["hydration_number"] == n
    assert np.sum(numbers == z_ion) == info["n_ions"] == 2
    assert np.all(numbers[-2:] == z_ion)  # ions after the waters
    o = pos[numbers == 8]
    d = np.sort(np.linalg.norm(pos[numbers == z_ion][:, None] - o[None], axis=2), axis=1)
    expect = ice.ION_WATER[ion]
    assert np.all(np.abs(d[:, 0] - expect) < 0.2)
    assert np.all(np.sum(d < expect + 0.6, axis=1) == min(n, 5))  # the first shell, nothing displaced into it
    labels = atom_labels(pos, numbers)
    assert set(labels[numbers == 1]) <= {"H_up", "H_flat", "H_down"}


# ------------------------------------------------------------------ determinism, pool, split
def test_same_seed_same_structure():
    for family in ("bilayer-Au111", "amorphous", "hydrate-in-network-Na"):
        a = ice.make_structure(family, rng(11))
        b = ice.make_structure(family, rng(11))
        c = ice.make_structure(family, rng(12))
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]
        assert a[0].shape != c[0].shape or not np.allclose(a[0], c[0])


def test_pool_split_and_dataset_kind(small_pool, tmp_path):
    from hydrafm.simulate.dataset import KINDS, draw_structure
    from hydrafm.structures.pool import StructurePool

    pool = StructurePool.load(small_pool.save(tmp_path / "ice.npz"))
    family = pool.info["family"].astype(str)
    assert set(family) == set(ice.FAMILIES) and len(pool) == 2 * len(ice.FAMILIES)
    held = ice.held_out_mask(pool)
    train_families = set(family[~held])
    assert not train_families & {"bilayer-Pt111", "amorphous-8ring"}
    assert {"bilayer-Pt111", "amorphous-8ring"} <= set(family[held])
    hydrate = np.char.startswith(family, "hydrate")
    assert np.all(held[hydrate] == (pool.info["hydration_number"][hydrate] == 5))
    assert not set(pool.info["base"].astype(str)) & set(ice.DEFAULT_HELD_OUT.families)
    assert "ice" in KINDS
    for seed in range(4):
        pos, numbers, i = draw_structure("ice", pool, rng(seed))
        assert 0 <= i < len(pool) and len(pos) == len(numbers)
        check_structure(atoms_of(pos, numbers), pool.window[:2])
        assert ice.geometry_problems(pos, numbers) == []


def test_shipped_pool():
    from hydrafm.paths import pool_path
    from hydrafm.structures.pool import StructurePool

    path = pool_path("ice")
    assert path.stat().st_size < 5e6
    pool = StructurePool.load(path)
    family = pool.info["family"].astype(str)
    assert set(family) == set(ice.FAMILIES)
    assert 0.1 < ice.held_out_mask(pool).mean() < 0.4
    for i in np.random.default_rng(0).choice(len(pool), 5, replace=False):
        pos, numbers = pool.arrays(int(i))
        assert ice.geometry_problems(pos, numbers, min_oo=2.39) == []  # 0.01 Å rounding in the pool
