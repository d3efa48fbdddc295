"""Live mode without a GUI: the folder watcher, the live workflow, edits kept across predictions,
and ``hydrafm watch`` on the public stack replayed with slow, partial writes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from synth import replay, write_createc, write_stack_sxm, write_sxm

from hydrafm.cli import main
from hydrafm.io import load_stack
from hydrafm.io.images import read_png_folder
from hydrafm.io.watch import FileProblem, FolderWatcher, StackChanged
from hydrafm.io.xyz import read_xyz
from hydrafm.predict.live import AtomsPredicted, PredictionCancelled, keep_edits, watch_and_predict
from hydrafm.stack import AFMStack


def _frame(seed: int, ny: int = 16, nx: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).normal(-5, 1, (ny, nx)).astype(np.float32)


def _sxm(path: Path, seed: int = 0, z_m: float = -3.2e-9, **kw) -> Path:
    shape = kw.pop("shape", (16, 16))
    return write_sxm(path, {"Frequency_Shift": (_frame(seed, *shape), None)}, z_m=z_m, **kw)


def _poll(watcher: FolderWatcher, until, timeout: float = 5.0) -> list:
    """Poll until ``until(records so far)`` holds; the records."""
    records: list = []
    end = time.time() + timeout
    while time.time() < end:
        records += watcher.poll()
        if until(records):
            return records
        time.sleep(0.02)
    raise AssertionError(f"timed out; records: {records}")


# ---------------------------------------------------------------- watcher
def test_a_file_cut_short_is_waited_for_and_read_once_complete(tmp_path):
    whole = _sxm(tmp_path / "whole.sxm").read_bytes()
    folder = tmp_path / "watched"
    folder.mkdir()
    watcher = FolderWatcher(folder, settle=0.05, retry=0.0)
    target = folder / "a.sxm"
    target.write_bytes(whole[:-100])  # the writer pauses longer than the settle time
    time.sleep(0.1)
    assert watcher.poll() == [] and watcher.poll() == []
    assert watcher.stats["cut_short"] == 1 and watcher.waiting == [target]
    with open(target, "ab") as fh:
        fh.write(whole[-100:])
    (rec,) = _poll(watcher, lambda r: r)
    assert isinstance(rec, StackChanged) and rec.new and rec.paths == (target,) and rec.name == "a"
    np.testing.assert_array_equal(rec.stack.data, load_stack(tmp_path / "whole.sxm").data)
    assert watcher.waiting == [] and watcher.stats["read"] == 1
    assert watcher.poll() == []  # read once


def test_a_growing_file_is_not_read_before_it_stops_changing(tmp_path):
    whole = _sxm(tmp_path / "whole.sxm").read_bytes()
    folder = tmp_path / "watched"
    folder.mkdir()
    watcher = FolderWatcher(folder, settle=0.3)
    target = folder / "a.sxm"
    with open(target, "wb") as fh:
        fh.write(whole)  # complete, but just modified: not read before it has been still for 0.3 s
    assert watcher.poll() == []
    records = _poll(watcher, lambda r: r)
    assert [type(r) for r in records] == [StackChanged]


def test_frames_are_grouped_by_scan_frame_and_ordered_by_height(tmp_path):
    folder = tmp_path / "watched"
    folder.mkdir()
    watcher = FolderWatcher(folder, settle=0.0)
    _sxm(folder / "a1.sxm", 1, z_m=-3.20e-9)
    _sxm(folder / "a2.sxm", 2, z_m=-3.19e-9)
    _sxm(folder / "b1.sxm", 3, width_m=3e-9)            # another scan range
    _sxm(folder / "c1.sxm", 4, angle=10.0)              # another angle
    _sxm(folder / "d1.sxm", 5, shape=(24, 24))          # other pixels
    _sxm(folder / "e1.sxm", 6, offset_m=(5e-8, 2e-8))   # another place
    first = watcher.poll()
    assert [(r.name, r.stack.n_heights, r.new) for r in first] == [
        ("a1", 2, True), ("b1", 1, True), ("c1", 1, True), ("d1", 1, True), ("e1", 1, True)]
    _sxm(folder / "a3.sxm", 7, z_m=-3.21e-9)            # closer than the others: becomes frame 0
    (rec,) = watcher.poll()
    assert (rec.name, rec.new, rec.paths) == ("a1", False, (folder / "a3.sxm",))
    ref = load_stack([folder / "a1.sxm", folder / "a2.sxm", folder / "a3.sxm"])
    np.testing.assert_array_equal(rec.stack.data, ref.data)
    np.testing.assert_allclose(rec.stack.heights, [0.0, 0.1, 0.2], atol=1e-6)
    assert [Path(s).name for s in rec.stack.metadata["sources"]] == ["a3.sxm", "a1.sxm", "a2.sxm"]
    assert rec.scan_frame.pixels == (16, 16) and rec.scan_frame.angle == 0.0
    assert "16 × 16 px, 20.0 × 20.0 Å" in rec.scan_frame.describe()


def test_an_incomplete_scan_is_cropped_and_left_out_of_its_stack(tmp_path):
    folder = tmp_path / "watched"
    folder.mkdir()
    watcher = FolderWatcher(folder, settle=0.0)
    _sxm(folder / "a1.sxm", 1)
    partial = _frame(2)
    partial[-3:] = np.nan  # the scan was stopped 3 lines before the end
    write_sxm(folder / "a2.sxm", {"Frequency_Shift": (partial, None)}, z_m=-3.19e-9)
    with pytest.warns(UserWarning, match="incomplete scan, 3 unrecorded line"):
        records = watcher.poll()
    problem, changed = records
    assert isinstance(problem, FileProblem) and problem.path.name == "a2.sxm"
    assert str(problem.path) in problem.message and "3 of 16 lines not recorded" in problem.message
    assert "\n" not in problem.message
    assert isinstance(changed, StackChanged) and changed.stack.n_heights == 1


def test_a_file_without_df_is_reported_once_and_not_stacked(tmp_path):
    folder = tmp_path / "watched"
    folder.mkdir()
    watcher = FolderWatcher(folder, settle=0.0, retry=0.0)
    write_sxm(folder / "topo.sxm", {"Current": (_frame(1), None)})
    (folder / "notes.txt").write_text("not a scan")
    records = _poll(watcher, lambda r: r)
    assert len(records) == 1 and isinstance(records[0], FileProblem)
    assert "topo.sxm" in records[0].message and "frequency-shift" in records[0].message
    for _ in range(3):
        assert watcher.poll() == []
    assert watcher.problems == [folder / "topo.sxm"] and watcher.stacks == {}


def test_createc_frames_stack_as_the_finished_folder_loads(tmp_path):
    folder = tmp_path / "watched"
    folder.mkdir()
    watcher = FolderWatcher(folder, settle=0.0)
    planes = lambda s: [_frame(s + k, 16, 16) * (1 + s) for k in range(5)]  # noqa: E731  (Z, I, 3 aux)
    for k in range(3):
        write_createc(folder / f"A{k}.dat", planes(k), length_a=(20.0, 20.0), extra="OffsetX / OffsetX=10.0")
    write_createc(folder / "B0.dat", planes(7), length_a=(20.0, 20.0), extra="OffsetX / OffsetX=99.0")
    with pytest.warns(UserWarning):
        records = watcher.poll()
    assert [(r.name, r.stack.n_heights) for r in records] == [("A0", 3), ("B0", 1)]
    (folder / "B0.dat").unlink()
    with pytest.warns(UserWarning):
        ref = load_stack(folder)
    np.testing.assert_array_equal(records[0].stack.data, ref.data)
    assert records[0].stack.metadata["z_order"] == ref.metadata["z_order"]


def test_png_frames_wait_for_their_cell_file(tmp_path):
    from PIL import Image

    folder = tmp_path / "watched"
    folder.mkdir()
    watcher = FolderWatcher(folder, settle=0.0, retry=0.0)
    for k in range(3):
        pixels = (np.random.default_rng(k).random((20, 30)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{k}.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(folder / "overview.png")  # not a numbered frame
    assert watcher.poll() == [] and len(watcher.waiting) == 3
    (folder / "cell.txt").write_text("Lx Ly (nm)\n2.0 3.0\n")
    (rec,) = _poll(watcher, lambda r: r)
    ref = read_png_folder(folder)
    np.testing.assert_array_equal(rec.stack.data, ref.data)
    np.testing.assert_allclose(rec.stack.pixel_size, ref.pixel_size)
    assert rec.name == "watched-0"


def test_watching_a_missing_folder_is_a_one_line_error(tmp_path):
    from hydrafm.io import AFMFileError

    with pytest.raises(AFMFileError, match="nope: not a folder"):
        FolderWatcher(tmp_path / "nope")


# --------------------------------------------------------------- workflow
def _atoms(rows) -> Atoms:
    from hydrafm.io.xyz import ELEMENT

    labels = [r[0] for r in rows]
    atoms = Atoms([ELEMENT[lab] for lab in labels], positions=[(x, y, 0.0) for _, x, y in rows])
    atoms.new_array("label", np.array(labels, dtype="<U6"))
    atoms.new_array("confidence", np.full(len(rows), 0.9))
    return atoms


def _rows(atoms: Atoms) -> list[tuple[str, float, float]]:
    return sorted((str(lab), round(float(p[0]), 3), round(float(p[1]), 3))
                  for lab, p in zip(atoms.arrays["label"], atoms.positions))


def test_keep_edits_keeps_the_users_edits_to_atoms_that_did_not_move():
    before = _atoms([("O", 0, 0), ("O", 5, 0), ("O", 10, 0), ("O", 15, 0), ("O", 20, 0), ("H_flat", 25, 0)])
    shown = _atoms([("O", 0, 0),                      # untouched
                    ("Na", 10, 0),                    # relabelled O → Na
                    ("O", 15, 0),                     # untouched (the network will drop it)
                    ("O", 21, 0),                     # moved by hand 20 → 21
                    ("H_up", 25, 0),                  # relabelled H_flat → H_up
                    ("K", 40, 40)])                   # added by hand; 5,0 deleted by hand
    after = _atoms([("O", 0.2, 0),                    # did not move: follows the network
                    ("O", 5.1, 0),                    # did not move, deleted by hand: stays deleted
                    ("O", 10, 0),                     # did not move, relabelled by hand: stays Na
                    ("O", 26, 0),                     # moved 20 → 26 by the network: comes in as new
                    ("H_flat", 25.1, 0),              # did not move, relabelled by hand: stays H_up
                    ("O", 30, 0)])                    # new
    merged = keep_edits(before, shown, after)
    assert _rows(merged) == sorted([("O", 0.2, 0), ("O", 26, 0), ("O", 30, 0), ("Na", 10, 0), ("O", 21, 0),
                                    ("H_up", 25, 0), ("K", 40, 40)])
    assert merged.arrays["confidence"][_rows(merged).index(("K", 40.0, 40.0))] > 0
    # nothing edited: the new prediction as it is
    assert _rows(keep_edits(before, before.copy(), after)) == _rows(after)


def test_keep_edits_gives_hand_placed_atoms_no_molecule():
    before = _atoms([("O", 0, 0)])
    after = _atoms([("O", 0, 0), ("O", 9, 9)])
    after.new_array("mol", np.array([0, 1]))
    shown = _atoms([("O", 0, 0), ("Na", 4, 4)])
    merged = keep_edits(before, shown, after)
    assert list(merged.arrays["mol"]) == [0, 1, -1]


@pytest.fixture
def tiny_model():
    import torch

    from hydrafm.models.checkpoint import ModelInfo
    from hydrafm.models.unet import StructureUNet, UNetConfig

    torch.manual_seed(0)
    cfg = UNetConfig(base_channels=4, levels=3)
    return StructureUNet(cfg).eval(), ModelInfo(config=cfg)


def test_a_newer_frame_cancels_the_running_prediction(tmp_path, tiny_model):
    # 256 px at the model's pixel size: 9 tiles, so the prediction can be cut between them
    frames = np.random.default_rng(0).normal(size=(3, 256, 256))
    stack = AFMStack(frames, (25 / 128, 25 / 128), np.arange(3) * 0.1)
    files = write_stack_sxm(stack, tmp_path / "made")
    folder = tmp_path / "watched"
    folder.mkdir()
    for f in files[:2]:
        (folder / f.name).write_bytes(f.read_bytes())
    records = watch_and_predict(folder, tiny_model, settle=0.0, interval=0.01)
    seen = []
    while True:
        rec = next(records)
        seen.append(rec)
        if getattr(rec, "stage", "") == "predicting" and 0 < rec.done < rec.total:
            break
    (folder / files[2].name).write_bytes(files[2].read_bytes())
    while not isinstance(rec, AtomsPredicted):
        rec = next(records)
        seen.append(rec)
    records.close()
    kinds = [(type(r).__name__, getattr(r, "n_heights", None)) for r in seen
             if isinstance(r, (PredictionCancelled, AtomsPredicted))]
    assert kinds == [("PredictionCancelled", 2), ("AtomsPredicted", 3)]
    assert rec.stack.n_heights == 3 and rec.seconds > 0 and rec.atoms.info["model"] == "in-memory"


def test_only_watching_never_predicts_and_ends_when_idle(tmp_path):
    folder = tmp_path / "watched"
    folder.mkdir()
    for k in range(3):
        _sxm(folder / f"a{k}.sxm", k, z_m=-3.2e-9 + k * 1e-11)
    records = watch_and_predict(folder, "no such model", predict=False, settle=0.0, until_idle=0.2)
    seen = []
    with pytest.raises(StopIteration) as end:
        while True:
            seen.append(next(records))
    assert [type(r) for r in seen] == [StackChanged]
    stack, atoms = end.value.value["a0"]
    assert stack.n_heights == 3 and atoms is None


# -------------------------------------------------------- replay (public)
def _replay_thread(files: list[Path], folder: Path, seed: int) -> threading.Thread:
    """Files copied one at a time in 3 pieces; 30 % of the files pause 0.15 s mid-way (longer
    than the 0.1 s settle time, so they look finished while they are not)."""
    folder.mkdir(parents=True, exist_ok=True)
    return threading.Thread(target=replay, args=(files, folder), daemon=True,
                            kwargs=dict(seed=seed, gap=0.02, chunks=3, pause=(0.005, 0.03), long_pause=0.15,
                                        p_long=0.3))


def test_cli_watch_ends_with_the_atoms_of_the_finished_folder(testdata, tmp_path, capsys):
    from hydrafm.predict.predictor import predict_atoms

    source = testdata / "nanonis_stack_borazine_Cu111"
    files = sorted(source.glob("*.sxm"))
    folder, out = tmp_path / "live", tmp_path / "out"
    writer = _replay_thread(files, folder, seed=1)
    writer.start()
    rc = main(["watch", str(folder), "-o", str(out), "--threshold", "0.05", "--device", "cpu",
               "--settle", "0.1", "--idle-exit", "2"])
    writer.join()
    assert rc == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    frames = [e for e in lines if e.get("event") == "frames"]
    atoms_lines = [e for e in lines if e.get("event") == "atoms"]
    assert sorted(f for e in frames for f in e["files"]) == [f.name for f in files]
    assert frames[-1]["heights"] == len(files) and atoms_lines[-1]["heights"] == len(files)
    assert frames[0]["new_stack"] and not any(e["new_stack"] for e in frames[1:])
    name = frames[0]["stack"]
    assert name == files[0].stem and {e["stack"] for e in lines if "stack" in e} == {name}
    assert any("output" in e for e in atoms_lines)
    finished = load_stack(source)
    expected = predict_atoms(finished, "water", threshold=0.05)
    written = read_xyz(out / f"{name}.xyz")
    assert len(expected) > 0 and list(written.arrays["label"]) == list(expected.arrays["label"])
    np.testing.assert_allclose(written.positions, expected.positions, atol=1e-6)
    assert not list(out.glob(".*")) and not list(out.glob("tmp*"))  # no temporary files left behind
    # every file was read whole: the replayed folder loads to the same stack
    np.testing.assert_array_equal(load_stack(folder).data, finished.data)


def test_half_written_benchmark_runs_at_small_scale():
    import runpy

    bench = runpy.run_path(str(Path(__file__).parents[1] / "benchmarks" / "bench_watch.py"))
    result = bench["bench_writes"](16, writers=2, settle=0.1, seed=3)
    assert result["accepted"] == 16 and result["half_written_reads"] == 0 and result["not_read"] == 0
    assert result["accepted_before_complete"] == 0


def test_cli_watch_of_a_missing_folder_is_a_one_line_error(tmp_path, capsys):
    assert main(["watch", str(tmp_path / "nope"), "--no-predict", "--idle-exit", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hydrafm: error:") and "nope: not a folder" in err[0]


def test_cli_watch_reports_unusable_files_and_keeps_watching(tmp_path, capsys):
    folder = tmp_path / "live"
    folder.mkdir()
    write_sxm(folder / "topo.sxm", {"Current": (_frame(1), None)})
    for k in range(2):
        _sxm(folder / f"a{k}.sxm", k, z_m=-3.2e-9 + k * 1e-11)
    assert main(["watch", str(folder), "--no-predict", "--settle", "0", "--idle-exit", "0.3"]) == 0
    out, err = capsys.readouterr()
    events = [json.loads(line) for line in out.splitlines()]
    assert events[0] == {"watching": str(folder), "out": None}
    assert events[1] == {"event": "frames", "stack": "a0", "new_stack": True, "heights": 2,
                         "files": ["a0.sxm", "a1.sxm"]}
    assert err.count("\n") == 1 and err.startswith("hydrafm: warning:") and "topo.sxm" in err
