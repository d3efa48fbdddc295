"""Nanonis .3ds, Createc .dat, PNG folders, TIFF, ml-spm .npz and .gwy."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from hydrafm import AFMStack, load_stack, save_npz
from hydrafm.io import AFMFileError, ChannelNotFoundError, CorruptFileError, StackMismatchError

from synth import write_createc


def ramp(ny: int, nx: int) -> np.ndarray:
    return (1000.0 * np.arange(ny)[:, None] + np.arange(nx)[None, :]).astype(np.float32)


# -------------------------------------------------------------------- .3ds
def test_3ds_real_grid_slices(testdata):
    f = testdata / "SpmGrids_Grid_Spectroscopy006_Zsweep_df.3ds"
    with pytest.warns(UserWarning, match="sweep samples"):
        s = load_stack(f)
    assert s.shape[1:] == (32, 32)
    assert s.extent == pytest.approx((30.0, 30.0))
    assert s.channel == "Frequency Shift (Hz)" and s.units == "Hz"
    step = 10.0 / 255  # 1 nm sweep over 256 samples
    np.testing.assert_allclose(np.diff(s.heights), step, rtol=1e-4)
    # The grid stopped after 88 of 1024 points: those are finite, the rest NaN.
    assert s.metadata["measured_points"] == 88
    assert np.isfinite(s.data.reshape(s.n_heights, -1)[:, :88]).all()
    assert np.isnan(s.data.reshape(s.n_heights, -1)[:, 88:]).all()
    # Closest slice first: Δf is most negative there (the attractive regime of this sweep).
    means = np.nanmean(s.data, axis=(1, 2))
    assert means[0] < means[-1] - 5
    picked = load_stack(f, heights=[0.0, 1.0, 2.0])
    np.testing.assert_allclose(picked.heights, [0.0, 1.0, 2.0], atol=step / 2 + 1e-6)
    with pytest.raises(ValueError, match="within"):
        load_stack(f, heights=[0.0, 99.0])


def test_3ds_truncated_header(testdata, tmp_path):
    raw = (testdata / "SpmGrids_Grid_Spectroscopy006_Zsweep_df.3ds").read_bytes()
    p = tmp_path / "cut.3ds"
    p.write_bytes(raw[:3000])
    with pytest.raises(CorruptFileError, match="cut.3ds.*truncated header"):
        load_stack(p)


# ------------------------------------------------------------------ Createc
@pytest.mark.parametrize("pad", [16380, 16266, 5000])
def test_createc_marker_is_searched_not_assumed(tmp_path, pad):
    planes = [ramp(6, 8) + k * 100000 for k in range(10)]
    p = write_createc(tmp_path / "A.dat", planes, header_pad=pad, extra="TitleDATA=DATA\\C")
    s = load_stack(p, channel="Aux7")
    expected = planes[2][::-1].copy()  # rows flipped: row 0 = bottom
    expected[:, 0] = expected[:, 1]  # fly-back column
    np.testing.assert_array_equal(s.data[0], expected)
    assert s.extent == pytest.approx((50.0, 50.0))
    bwd = load_stack(p, channel="Z", direction="backward")
    np.testing.assert_array_equal(bwd.data[0][:, 1:], planes[5][::-1][:, 1:])


def test_createc_default_channel_with_pll_and_without(tmp_path):
    planes = [ramp(4, 4) + k for k in range(10)]
    p = write_createc(tmp_path / "afm.dat", planes, rotation=45)
    with pytest.warns(UserWarning, match="Aux7 as Δf"):
        s = load_stack(p)
    assert s.channel == "Aux7" and s.units == "a.u." and s.scan_angle == 45
    stm = write_createc(tmp_path / "stm.dat", planes[:4], select=0b11, pll_on=0)
    with pytest.raises(ChannelNotFoundError, match="stm.dat"):
        load_stack(stm)
    assert load_stack(stm, channel="Current").channel == "Current"


def test_createc_real_files(testdata):
    with pytest.warns(UserWarning):
        pf = load_stack(testdata / "ProbeFlow_createc_afm.dat")
    assert pf.shape == (1, 256, 256) and pf.extent == pytest.approx((150.0046, 150.0046))
    assert -7.4 < pf.data.min() and pf.data.max() < -6.6  # the Δf-like plane 2 of the MANIFEST
    rot = load_stack(testdata / "py_createc_A200622.082616_rot45.dat", channel="Z")
    assert rot.shape == (1, 512, 512) and rot.scan_angle == 45
    assert rot.extent == pytest.approx((430.5131, 430.5131))
    z = load_stack(testdata / "py_createc_A200621.161352.dat", channel="Z")
    assert z.shape == (1, 256, 256) and z.extent == pytest.approx((215.2566, 215.2566))


def test_createc_truncated_stream(tmp_path):
    p = write_createc(tmp_path / "t.dat", [ramp(16, 16)] * 4, select=0b11)
    p.write_bytes(p.read_bytes()[:-200])
    with pytest.raises(CorruptFileError, match="t.dat"):
        load_stack(p, channel="Z")


# -------------------------------------------------------------- PNG / TIFF
def _png_folder(folder, n=3, size=(20, 30), cell="L_exp\n2.0 3.0\n"):
    folder.mkdir()
    for i in range(n):
        a = np.full(size, 10 * i, np.uint8)
        a[0, :] = 255  # the top row of the picture
        Image.fromarray(a).save(folder / f"{i}.png")
    if cell is not None:
        (folder / "cell.txt").write_text(cell)
    return folder


def test_png_folder(tmp_path):
    s = load_stack(_png_folder(tmp_path / "ss"))
    assert s.shape == (3, 20, 30)
    assert s.extent == pytest.approx((20.0, 30.0))  # Ly 2 nm, Lx 3 nm
    assert s.data[1, -1, 0] == 255 and s.data[1, 0, 0] == 10  # picture top = last row
    assert s.heights is None and s.units == "a.u."


def test_png_folder_errors(tmp_path):
    with pytest.raises(CorruptFileError, match="cell.txt"):
        load_stack(_png_folder(tmp_path / "nocell", cell=None))
    bad = _png_folder(tmp_path / "bad")
    (bad / "1.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
    with pytest.raises(CorruptFileError, match="1.png"):
        load_stack(bad)
    gap = _png_folder(tmp_path / "gap")
    (gap / "1.png").unlink()
    with pytest.raises(CorruptFileError, match="missing"):
        load_stack(gap)
    mism = _png_folder(tmp_path / "mism")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(mism / "2.png")
    with pytest.raises(StackMismatchError, match="2.png"):
        load_stack(mism)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CorruptFileError, match="no AFM files"):
        load_stack(empty)


def test_real_png_needs_scan_size(testdata):
    f = testdata / "jiang_lab_water_Au111" / "H2O_Au111-20210107-059.sxm.png"
    with pytest.raises(CorruptFileError, match="scan_size"):
        load_stack(f)
    s = load_stack(f, scan_size=30.0)
    assert s.shape == (1, 192, 192) and s.extent == pytest.approx((30.0, 30.0))


def test_tiff_with_and_without_scale(tmp_path):
    import tifffile

    data = np.stack([ramp(8, 12) + k for k in range(4)])
    p = tmp_path / "s.tif"
    tifffile.imwrite(p, data, imagej=True, resolution=(1 / 0.05, 1 / 0.05), metadata={"unit": "nm"})
    s = load_stack(p)
    assert s.shape == (4, 8, 12) and s.pixel_size == pytest.approx((0.5, 0.5))
    np.testing.assert_array_equal(s.data[0], data[0][::-1])
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, data)
    with pytest.raises(CorruptFileError, match="scan_size"):
        load_stack(bare)
    assert load_stack(bare, scan_size=(8, 24)).pixel_size == pytest.approx((1.0, 2.0))
    assert load_stack(bare, scan_size=8, z_order="closest_last").data[0, -1, 0] == data[3, 0, 0]


# --------------------------------------------------------------------- npz
def test_npz_roundtrip_and_ppafm_order(tmp_path):
    data = np.random.default_rng(0).normal(size=(5, 16, 24)).astype(np.float32)
    stack = AFMStack(data, pixel_size=(0.5, 0.25), heights=np.arange(5) * 0.1,
                     metadata={"channel": "df", "units": "Hz", "scan_angle_deg": 12.0})
    p = save_npz(stack, tmp_path / "s.npz")
    with np.load(p) as f:
        assert f["data"].shape == (24, 16, 5)  # (x, y, z)
        np.testing.assert_array_equal(f["data"][..., -1], data[0].T)  # closest last, as ppafm
        assert float(f["lengthX"]) == pytest.approx(6.0) and float(f["lengthY"]) == pytest.approx(8.0)
    back = load_stack(p)
    np.testing.assert_array_equal(back.data, data)
    np.testing.assert_allclose(back.heights, stack.heights)
    assert back.scan_angle == 12.0
    with pytest.raises(FileExistsError):
        save_npz(stack, p)


def test_npz_without_heights_infers_order_from_contrast(tmp_path):
    rng = np.random.default_rng(1)
    pattern = rng.normal(size=(32, 32))
    closest_first = np.stack([pattern * (5 - k) for k in range(5)]).astype(np.float32)
    x = closest_first.transpose(2, 1, 0)  # (x, y, z) closest first
    np.savez(tmp_path / "a.npz", data=x, lengthX=10.0, lengthY=10.0)
    np.savez(tmp_path / "b.npz", data=x[..., ::-1], lengthX=10.0, lengthY=10.0)
    for name in ("a.npz", "b.npz"):
        s = load_stack(tmp_path / name)
        np.testing.assert_allclose(s.data, closest_first)
        assert "inferred" in s.metadata["z_order"]
    forced = load_stack(tmp_path / "a.npz", z_order="closest_last")
    np.testing.assert_allclose(forced.data, closest_first[::-1])


def test_npz_real_jiang(testdata):
    s = load_stack(testdata / "jiang_lab_water_Au111" / "L1_20_L2_1Ying_Jiang_1.npz")
    assert s.shape == (12, 256, 256) and s.extent == pytest.approx((32.0, 32.0)) and s.heights is None


def test_npz_missing_keys(tmp_path):
    np.savez(tmp_path / "x.npz", foo=np.zeros(3))
    with pytest.raises(CorruptFileError, match="x.npz.*missing key"):
        load_stack(tmp_path / "x.npz")


# --------------------------------------------------------------------- gwy
def test_gwy_fixture_channel_and_absurd_size(testdata):
    f = testdata / "gwyfile_test.gwy"
    with pytest.raises(ChannelNotFoundError, match="Test"):
        load_stack(f)
    # The synthetic fixture claims a 128 m scan: an absurd header value, reported as such.
    with pytest.raises(CorruptFileError, match="implausible scan width"):
        load_stack(f, channel="Test")


def test_mixed_and_unknown_inputs(tmp_path, testdata):
    with pytest.raises(AFMFileError, match="different formats"):
        load_stack([testdata / "SpmImages_01514_Au111_ncAFM.sxm", testdata / "ProbeFlow_createc_afm.dat"])
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(AFMFileError, match="unknown file type"):
        load_stack(tmp_path / "notes.txt")


def test_z_order_of_frame_normalised_stacks_follows_the_detail(testdata):
    """Jiang lab water (ml-spm layout, farthest frame first, each frame normalised): the far frames carry a
    large smooth blob with more raw contrast than the close ones, so only the detail tells the order."""
    import numpy as np

    from hydrafm.io import load_stack

    path = testdata / "jiang_lab_water_Au111" / "L1_20_L2_1Ying_Jiang_1.npz"
    from hydrafm.io.npz import frame_contrast, frame_sharpness

    stack = load_stack(path)
    assert "closest last" in stack.metadata["z_order"]  # the file's last frame is now frame 0
    assert frame_sharpness(stack.data)[0] > frame_sharpness(stack.data)[-1]
    assert frame_contrast(stack.data)[0] < frame_contrast(stack.data)[-1]  # what fooled the old rule
