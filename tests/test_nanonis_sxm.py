"""Nanonis .sxm: orientation, heights, channels and bad input, on synthetic and real files."""

from __future__ import annotations

import numpy as np
import pytest

from hydrafm import load_stack
from hydrafm.io import ChannelNotFoundError, CorruptFileError, StackMismatchError, UnsupportedFormatError
from hydrafm.io.nanonis_sxm import read_sxm

from synth import write_sxm


def ramp(ny: int, nx: int) -> np.ndarray:
    """A frame whose value encodes its (row, col): 1000 * row + col."""
    return (1000.0 * np.arange(ny)[:, None] + np.arange(nx)[None, :]).astype(np.float32)


def test_up_scan_keeps_rows_and_non_square_geometry(tmp_path):
    a = ramp(6, 10)
    p = write_sxm(tmp_path / "a.sxm", {"Z": (a * 0, a * 0), "Frequency_Shift": (a, a[:, ::-1])},
                  width_m=4e-9, height_m=2e-9, angle=59.0)
    s = load_stack(p)
    assert s.shape == (1, 6, 10)
    assert s.scan_angle == 59.0  # kept, not applied
    np.testing.assert_array_equal(s.data[0], a)
    assert s.pixel_size == pytest.approx((2e-9 / 6 * 1e10, 4e-9 / 10 * 1e10))
    assert s.extent == pytest.approx((20.0, 40.0))
    assert s.channel == "Frequency_Shift" and s.units == "Hz"


def test_down_scan_is_flipped_and_backward_is_mirrored(tmp_path):
    a = ramp(5, 7)
    stored = a[::-1]  # a 'down' scan stores the top line first
    p = write_sxm(tmp_path / "d.sxm", {"Frequency_Shift": (stored, stored[:, ::-1])}, scan_dir="down")
    np.testing.assert_array_equal(load_stack(p).data[0], a)
    np.testing.assert_array_equal(load_stack(p, direction="backward").data[0], a)


def test_generation5_channel_name_and_forward_only(tmp_path):
    a = ramp(4, 4)
    p = write_sxm(tmp_path / "g5.sxm", {"Z": (a, a), "OC_M1_Freq._Shift": (a + 1, None), "Current": (a + 2, a + 2)})
    s = load_stack(p)
    assert s.channel == "OC_M1_Freq._Shift"
    np.testing.assert_array_equal(s.data[0], a + 1)
    np.testing.assert_array_equal(load_stack(p, channel="current").data[0], a + 2)
    with pytest.raises(CorruptFileError, match="no backward data"):
        load_stack(p, direction="backward")


def test_missing_df_channel_names_the_file_and_the_choices(tmp_path):
    a = ramp(4, 4)
    p = write_sxm(tmp_path / "stm.sxm", {"Z": (a, a), "Current": (a, a)})
    with pytest.raises(ChannelNotFoundError, match=r"stm\.sxm.*Z, Current"):
        load_stack(p)


def test_incomplete_scan_rows_are_cropped(tmp_path):
    a = ramp(6, 4)
    stored = a.copy()
    stored[4:] = np.nan  # last two lines never recorded (an 'up' scan: the top)
    p = write_sxm(tmp_path / "inc.sxm", {"Frequency_Shift": (stored, stored)})
    with pytest.warns(UserWarning, match="incomplete scan"):
        s = load_stack(p)
    assert s.shape == (1, 4, 4)
    np.testing.assert_array_equal(s.data[0], a[:4])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_bad_values_are_errors(tmp_path, bad):
    a = ramp(4, 4)
    a[:] = bad
    p = write_sxm(tmp_path / "nan.sxm", {"Frequency_Shift": (a, a)})
    with pytest.raises(CorruptFileError, match="nan.sxm"):
        load_stack(p)


def test_several_files_sorted_by_height_more_negative_z_is_closer(tmp_path):
    a = ramp(4, 4)
    for name, z, v in [("b", -3.10e-9, 2.0), ("a", -3.30e-9, 0.0), ("c", -3.20e-9, 1.0)]:
        write_sxm(tmp_path / f"{name}.sxm", {"Frequency_Shift": (a * 0 + v, a * 0 + v)}, z_m=z)
    s = load_stack(tmp_path)
    np.testing.assert_allclose(s.heights, [0.0, 1.0, 2.0], atol=1e-6)
    np.testing.assert_array_equal(s.data[:, 0, 0], [0.0, 1.0, 2.0])
    assert [p.split("/")[-1] for p in s.metadata["sources"]] == ["a.sxm", "c.sxm", "b.sxm"]


def test_frames_of_different_size_are_an_error_not_a_resize(tmp_path):
    write_sxm(tmp_path / "a.sxm", {"Frequency_Shift": (ramp(4, 4), None)})
    write_sxm(tmp_path / "b.sxm", {"Frequency_Shift": (ramp(4, 5), None)}, z_m=-3.1e-9)
    with pytest.raises(StackMismatchError, match="b.sxm"):
        load_stack(tmp_path)


def test_different_pixel_size_is_an_error(tmp_path):
    write_sxm(tmp_path / "a.sxm", {"Frequency_Shift": (ramp(4, 4), None)})
    write_sxm(tmp_path / "b.sxm", {"Frequency_Shift": (ramp(4, 4), None)}, z_m=-3.1e-9, width_m=3e-9)
    with pytest.raises(StackMismatchError, match="pixel size"):
        load_stack(tmp_path)


def test_truncated_and_wrong_magic(tmp_path):
    p = write_sxm(tmp_path / "t.sxm", {"Frequency_Shift": (ramp(8, 8), ramp(8, 8))})
    raw = p.read_bytes()
    p.write_bytes(raw[:-100])
    with pytest.raises(CorruptFileError, match="truncated data"):
        read_sxm(p)
    p.write_bytes(b"XXXX" + raw)
    with pytest.raises(UnsupportedFormatError, match="not a Nanonis"):
        read_sxm(p)


def test_absurd_header_values(tmp_path):
    p = write_sxm(tmp_path / "big.sxm", {"Frequency_Shift": (ramp(4, 4), None)}, width_m=5.0)
    with pytest.raises(CorruptFileError, match="implausible scan width"):
        load_stack(p)


# ----------------------------------------------------------------- real files
def test_real_stack_orientation_heights_and_z_sign(testdata):
    folder = testdata / "nanonis_stack_borazine_Cu111"
    s = load_stack(folder)
    assert s.shape == (31, 48, 48)
    assert s.extent == pytest.approx((9.999931, 9.999931), abs=1e-4)
    assert s.scan_angle == pytest.approx(-41.0)
    # Z −3.36489 nm (00409) is the closest, −3.21489 nm (00393, 00394) the farthest, in 10 pm steps:
    # 16 distinct heights (the MANIFEST says 17, but 00393 and 00394 share one Z).
    assert s.metadata["sources"][0].endswith("00409.sxm")
    assert s.heights[0] == 0 and s.heights[-1] == pytest.approx(1.5, abs=1e-6)
    assert len(np.unique(np.round(s.heights, 4))) == 16
    np.testing.assert_allclose(np.unique(np.round(np.diff(s.heights), 4)), [0.0, 0.1], atol=1e-4)
    # Physics check of the sign: the tunnelling current rises towards the closest frame.
    current = load_stack(folder, channel="Current").data.mean(axis=(1, 2))
    assert current[0] > 5 * max(abs(current[-1]), 1e-12)
    # 00393 was scanned 'down', 00394 'up' at the same Z: once flipped they agree.
    down = read_sxm(folder / "A170315.172707-00393.sxm").data
    up = read_sxm(folder / "A170315.172917-00394.sxm").data
    raw_down = down[::-1]
    corr = lambda a, b: np.corrcoef(a.ravel(), b.ravel())[0, 1]  # noqa: E731
    assert corr(down, up) > 0.5 and corr(down, up) > corr(raw_down, up) + 0.3  # measured 0.71 vs 0.04


def test_real_backward_matches_forward(testdata):
    f = testdata / "SpmImages_01514_Au111_ncAFM.sxm"
    fwd, bwd = load_stack(f).data[0], load_stack(f, direction="backward").data[0]
    c = np.corrcoef(fwd[:, 4:-4].ravel(), bwd[:, 4:-4].ravel())[0, 1]
    c_unmirrored = np.corrcoef(fwd[:, 4:-4].ravel(), bwd[:, ::-1][:, 4:-4].ravel())[0, 1]
    assert c > 0.9 and c > c_unmirrored + 0.1


def test_real_pair_two_heights(testdata):
    s = load_stack([testdata / "SpmImages_01514_Au111_ncAFM.sxm", testdata / "SpmImages_01516_Au111_ncAFM.sxm"])
    assert s.shape == (2, 160, 160)
    np.testing.assert_allclose(s.heights, [0.0, 0.4], atol=1e-6)
    assert s.metadata["sources"][0].endswith("01516_Au111_ncAFM.sxm")
