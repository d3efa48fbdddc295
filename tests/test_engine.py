"""The torch probe-particle engine: physics against ppafm, solvers, batching, gradients."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from hydrafm.simulate.engine import TipBatch, TorchSimulator, df_weights, lj_coefficients
from hydrafm.simulate.settings import SampledTip, SimulationSettings

SMALL = dict(n_pixels=32, scan_size=6.4, n_heights=4, dz=0.1, df_steps=4)


def water(center=(3.2, 3.2, 0.0), angle=0.3):
    """One flat-lying H2O (O–H 0.96 Å, 104.5°) at ``center``."""
    c = np.asarray(center, float)
    a = np.radians(104.5) / 2
    h1 = np.array([np.cos(angle + a), np.sin(angle + a), 0.0]) * 0.96
    h2 = np.array([np.cos(angle - a), np.sin(angle - a), 0.0]) * 0.96
    return np.array([c, c + h1, c + h2]), np.array([8, 1, 1])


def pair():
    """Two molecules; no two atoms share the highest z (the top atom sets the tip distance, and
    a tie there makes the stack non-differentiable in z)."""
    p1, z1 = water((2.4, 3.0, 0.0), 0.2)
    p1[1:, 2] -= [0.15, 0.25]
    p2, z2 = water((4.9, 3.9, -0.4), 2.4)
    return np.concatenate([p1, p2]), np.concatenate([z1, z2])


def test_mixing_rule_and_df_weights_follow_ppafm():
    c6, c12 = lj_coefficients([8])[0]
    r, e = 2 * 1.6612, 0.009106  # O probe with an O atom
    assert c6 == pytest.approx(2 * e * r**6) and c12 == pytest.approx(e * r**12)
    w = df_weights(10, 0.1)
    assert w.shape == (10,) and abs(w.sum()) < 1e-12  # a constant force gives no Δf
    assert np.sum(w * np.linspace(-1, 1, 10)) == pytest.approx(1 / (10 * 0.1))
    common = pytest.importorskip("ppafm.common")
    for n, dz in [(10, 0.1), (4, 0.1), (7, 0.05)]:
        assert np.allclose(df_weights(n, dz), common.get_simple_df_weight(n, dz))
    with pytest.raises(ValueError, match="no Lennard-Jones parameters"):
        lj_coefficients([92])


def test_stack_shape_contrast_and_mirror_symmetry():
    s = SimulationSettings(**SMALL)
    sim = TorchSimulator(s, dtype=torch.float64)
    pos, z = water(angle=0.0)  # symmetric under y → −y about the O
    st = sim.simulate(pos, z, SampledTip(2.6))
    assert st.data.shape == (4, 32, 32) and np.isfinite(st.data).all()
    assert st.metadata["simulation"]["engine"] == "torch"
    assert np.ptp(st.data[0]) > 1.0  # Hz: the molecule is seen
    # the molecule is mirror-symmetric about its axis y = 3.2 Å (between rows 15 and 16)
    assert np.allclose(st.data, st.data[:, ::-1, :], atol=1e-6 * np.abs(st.data).max())


def test_newton_and_fire_reach_the_same_equilibrium_and_batching_is_exact():
    s = SimulationSettings(**SMALL)
    sim = TorchSimulator(s, dtype=torch.float64)
    pos, z = pair()
    tips = [SampledTip(2.5, (0.2, 0.1)), SampledTip(2.9, (-0.3, 0.0), k_lateral=0.3, charge=0.05)]
    tb = TipBatch.from_tips(tips, s, dtype=torch.float64)
    both = sim([pos, pos[:3]], [z, z[:3]], tb, solver="newton")
    fire = sim([pos, pos[:3]], [z, z[:3]], tb, solver="fire")
    for b in range(2):
        r = np.corrcoef(both[b].numpy().ravel(), fire[b].numpy().ravel())[0, 1]
        assert r > 0.9999
    one = sim([pos[:3]], [z[:3]], TipBatch.from_tips(tips[1:], s, dtype=torch.float64))
    assert torch.allclose(one[0], both[1], atol=1e-5 * float(both[1].abs().max()))


def test_batches_of_different_sizes_and_tips_match_single_structures():
    """Without gradients each sample's force field uses only its own atoms and tip charges."""
    s = SimulationSettings(**SMALL)
    sim = TorchSimulator(s, dtype=torch.float64)
    pos, z = pair()
    big = np.concatenate([pos + [dx, dy, 0.0] for dx, dy in ((0, 0), (2.5, 0), (0, 2.5), (2.5, 2.5))])
    tips = [SampledTip(2.7, charge=-0.1), SampledTip(2.9, charge=0.05, quadrupole=-0.05)]
    with torch.no_grad():
        both = sim([big, pos[:3]], [np.tile(z, 4), z[:3]], TipBatch.from_tips(tips, s, dtype=torch.float64))
        for b, (p, n) in enumerate(((big, np.tile(z, 4)), (pos[:3], z[:3]))):
            one = sim([p], [n], TipBatch.from_tips(tips[b : b + 1], s, dtype=torch.float64))
            assert torch.allclose(one[0], both[b], rtol=0, atol=1e-9 * float(both[b].abs().max()))


def test_size_groups_of_a_gpu_batch_give_the_same_force_field():
    """On a GPU the samples are grouped by size (launches are the cost there), not computed one by one."""
    from hydrafm.simulate import engine

    assert engine._size_groups([5, 5, 5], [False] * 3, per_sample=True) == [[0], [1], [2]]
    assert engine._size_groups([3, 40, 4, 38], [False] * 4, per_sample=False) == [[0, 2], [3, 1]]
    assert engine._size_groups([3, 4, 5], [False, True, False], per_sample=False) == [[0, 2], [1]]
    s = SimulationSettings(**SMALL)
    sim = TorchSimulator(s, dtype=torch.float64)
    pos, z = pair()
    big = np.concatenate([pos + [dx, 0.0, 0.0] for dx in (0.0, 2.5, 5.0)])
    items = [(big, np.tile(z, 3)), (pos[:3], z[:3]), (big[:9], np.tile(z, 3)[:9]), (pos, z)]
    tips = [SampledTip(2.7), SampledTip(2.9, quadrupole=-0.05), SampledTip(2.8), SampledTip(2.6, charge=0.1)]
    tb = TipBatch.from_tips(tips, s, dtype=torch.float64)
    with torch.no_grad():
        p, c, q = sim.prepare([a for a, _ in items], [b for _, b in items], tb)
        each = sim.force_field(p, c, q, sim.tip_charges(tb))
        sim.compact = False
        grouped = sim.force_field(p, c, q, sim.tip_charges(tb))
    assert torch.allclose(grouped, each, rtol=0, atol=1e-12 * float(each.abs().max()))


@pytest.mark.parametrize("fused", [False, pytest.param(True, marks=pytest.mark.skipif(
    shutil.which("cc") is None, reason="torch.compile on a CPU needs a C compiler"))])
def test_masked_relaxation_of_a_gpu_gives_the_compact_result(fused):
    """The GPU's relaxation (all points, finished ones masked; optionally compiled) = the CPU's."""
    s = SimulationSettings(**SMALL)
    sim = TorchSimulator(s, dtype=torch.float64)
    pos, z = pair()
    tips = [SampledTip(2.3, (0.2, 0.1)), SampledTip(2.9, (-0.3, 0.0), k_lateral=0.25, charge=-0.2)]
    tb = TipBatch.from_tips(tips, s, dtype=torch.float64)
    p, c, q = sim.prepare([pos, pos[:3]], [z, z[:3]], tb)
    grid = sim.force_field(p, c, q, sim.tip_charges(tb))
    for solver in ("newton", "fire"):
        ref = sim.relax(grid, tb, solver=solver, return_fz=True)
        sim.compact, sim.fused = False, fused
        got = sim.relax(grid, tb, solver=solver, return_fz=True)
        sim.compact, sim.fused = True, False
        tol = 1e-9 if fused else 0.0  # compiled kernels may order the arithmetic differently
        assert float((got[0] - ref[0]).abs().max()) <= tol
        assert float((got[2] - ref[2]).abs().max()) <= tol * float(ref[2].abs().max())


def test_relaxation_returns_the_force_that_forces_at_samples():
    s = SimulationSettings(**SMALL)
    sim = TorchSimulator(s, dtype=torch.float64)
    pos, z = pair()
    tb = TipBatch.from_tips([SampledTip(2.4, (0.2, -0.1))], s, dtype=torch.float64)
    p, c, q = sim.prepare([pos], [z], tb)
    grid = sim.force_field(p, c, q, sim.tip_charges(tb))
    for solver in ("newton", "fire"):
        relaxed, apex, fz = sim.relax(grid, tb, solver=solver, return_fz=True)
        assert fz.shape == relaxed.shape[:3]
        # Newton's last step is taken to first order (no new evaluation): F_z agrees to second order
        # (to ~1e-4 of the range where the step crosses a cell of the trilinear field)
        ref = sim.forces_at(grid, relaxed, apex, tb)
        err = (fz - ref).abs() / float(ref.abs().max())
        assert float(err.max()) < 1e-3 and float(err.median()) < 1e-8
    # Newton, started from the equilibrium predicted along the stroke, finds FIRE's equilibria
    # (within the force tolerance; a few points near an instability end on the other branch)
    newton, _ = sim.relax(grid, tb, solver="newton")
    fire, _ = sim.relax(grid, tb, solver="fire")
    d = (newton - fire).norm(dim=-1)
    assert float(d.median()) < 0.003 and float((d > 0.02).double().mean()) < 0.005


def test_gradients_match_finite_differences():
    s = SimulationSettings(**SMALL)
    sim = TorchSimulator(s, dtype=torch.float64)
    pos0, z = pair()
    weights = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 4, 32, 32)))
    tips = TipBatch.from_tips([SampledTip(2.7, (0.1, 0.0))], s, dtype=torch.float64)
    q0 = np.array([-0.8476, 0.4238, 0.4238] * 2)

    def loss(pos, q, k_lat=None):
        tb = TipBatch(**{**tips.__dict__})
        if k_lat is not None:
            tb.k_lateral = k_lat
        out = sim(pos[None], [z], tb, charges=q[None], f2conv=1e-24, newton_iters=30)
        return (out * weights).sum()

    pos = torch.tensor(pos0, requires_grad=True)
    q = torch.tensor(q0, requires_grad=True)
    k = tips.k_lateral.clone().requires_grad_(True)
    g_pos, g_q, g_k = torch.autograd.grad(loss(pos, q, k), (pos, q, k))
    h = 1e-5
    for i, c in [(0, 0), (0, 2), (1, 1), (4, 2), (3, 0)]:
        dp = np.zeros_like(pos0)
        dp[i, c] = h
        with torch.no_grad():
            fd = (loss(torch.tensor(pos0 + dp), torch.tensor(q0)) - loss(torch.tensor(pos0 - dp), torch.tensor(q0))) / (2 * h)
        # moving the highest atom in z also moves the whole structure under the tip (the distance is fixed)
        assert float(g_pos[i, c]) == pytest.approx(float(fd), rel=1e-4, abs=1e-7 * float(fd.abs()) + 1e-9)
    # the probe crosses trilinear cell faces as the charges change: a smaller step keeps clear of the kinks
    h = 1e-6
    for i in (0, 1):
        dq = np.zeros_like(q0)
        dq[i] = h
        with torch.no_grad():
            fd = (loss(torch.tensor(pos0), torch.tensor(q0 + dq)) - loss(torch.tensor(pos0), torch.tensor(q0 - dq))) / (2 * h)
        assert float(g_q[i]) == pytest.approx(float(fd), rel=1e-4)
    with torch.no_grad():
        fd = (loss(torch.tensor(pos0), torch.tensor(q0), tips.k_lateral + h)
              - loss(torch.tensor(pos0), torch.tensor(q0), tips.k_lateral - h)) / (2 * h)
    assert float(g_k[0]) == pytest.approx(float(fd), rel=1e-4)


def test_force_field_backward_equals_autograd_with_a_quadrupole_tip():
    """The analytic backward of the force field (positions, tip charges) against autograd through the
    plain sums, for a monopole and a monopole + d_z² quadrupole tip."""
    from hydrafm.simulate.engine import COULOMB_CONST, _force_planes

    sim = TorchSimulator(SimulationSettings(**SMALL), dtype=torch.float64, ppafm_grid=False)
    gen = torch.Generator().manual_seed(0)
    pos = (torch.rand(2, 9, 3, generator=gen, dtype=torch.float64) * torch.tensor([5.0, 5.0, 1.5])
           + torch.tensor([1.0, 1.0, 9.0])).requires_grad_(True)
    cLJ = torch.rand(2, 9, 2, generator=gen, dtype=torch.float64) * torch.tensor([5.0, 500.0])
    charges = torch.randn(2, 9, generator=gen, dtype=torch.float64) * 0.4
    Q = torch.tensor([-0.1, 0.05], dtype=torch.float64, requires_grad=True)
    Qd = torch.tensor([0.0, -0.3], dtype=torch.float64, requires_grad=True)
    cx, cy = float(sim.gx.mean()), float(sim.gy.mean())
    for tcs in ([(Q, 0.0)], [(Q, 0.0), (Qd, 0.5), (-2 * Qd, 0.0), (Qd, -0.5)]):
        leaves = [pos, Q] + ([Qd] if len(tcs) > 1 else [])
        out = sim.force_field(pos, cLJ, charges, tcs)
        w = torch.randn(out.shape, generator=gen, dtype=torch.float64)
        got = torch.autograd.grad((out * w).sum(), leaves, retain_graph=True)
        qk = [((COULOMB_CONST * q)[:, None] * charges)[:, None, None, :] for q, _ in tcs]
        ref = _force_planes(tuple(z for _, z in tcs), 3, sim.gx - cx, sim.gy - cy, sim.gz,
                            pos - torch.tensor([cx, cy, 0.0], dtype=torch.float64),
                            (6 * cLJ[..., 0])[:, None, None, :], (12 * cLJ[..., 1])[:, None, None, :], *qk)
        assert torch.allclose(out, ref, rtol=1e-12, atol=1e-14)
        want = torch.autograd.grad((ref * w).sum(), leaves, retain_graph=True)
        for g, r in zip(got, want):
            assert torch.allclose(g, r, rtol=1e-9, atol=1e-12 * float(r.abs().max()))


def test_matches_ppafm_on_a_small_structure():
    from hydrafm.simulate.afm import opencl_available

    if not opencl_available():
        pytest.skip("no OpenCL device (apt install pocl-opencl-icd) to compare with ppafm")
    from hydrafm.simulate.simulators import make_simulator

    s = SimulationSettings(**SMALL)
    pos, z = pair()
    for tip in (SampledTip(2.5, (0.2, 0.1)), SampledTip(3.2, (0.0, -0.3), k_lateral=0.3, charge=-0.15,
                                                         quadrupole=-0.05)):
        ref = make_simulator(s, "ppafm", isolate=True).simulate(pos, z, tip).data
        out = TorchSimulator(s).simulate(pos, z, tip).data
        for k in range(s.n_heights):
            r = np.corrcoef(ref[k].ravel(), out[k].ravel())[0, 1]
            assert r > 0.995, (tip, k, r)
            assert np.sqrt(np.mean((ref[k] - out[k]) ** 2)) <= 0.03 * np.ptp(ref[k])
