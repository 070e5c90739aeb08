"""Nothing the user made is removed or rewritten: datasets given to any script, finished runs
under a reused name, outputs of another checkpoint; and the exit status says how a run ended."""

from __future__ import annotations

import json
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exports import PHOTOS, tree_digest, voc_xml, write_coco_export, write_voc_folder, write_yolo_export

from detector.data import DataError, ensure_shapes
from detector.engine import config as config_lib
from detector.engine.training import train

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=shapes", "data.shapes_image_size=64", "data.shapes_num_train=24", "data.shapes_num_val=8", "data.batch_size=8",
        "data.num_workers=0", "train.epochs=2", "train.warmup_steps=1", "train.progress=false",
        "train.log_every_n_steps=1", "train.val_every_n_epochs=1"]
# Options that keep a run on a user's folder short, whatever the format the script reads it as.
SHORT = ["--max-steps", "1", "--set", "data.num_workers=0", "train.progress=false", "data.batch_size=2"]
EXPORTS = {"coco": write_coco_export, "voc": write_voc_folder, "yolo": write_yolo_export}


def run_script(script: str, *args, cwd: Path, monkeypatch, capsys) -> tuple[int, str]:
    """A script as its command line runs it (run_main included), in this process: (exit status,
    stderr)."""
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(REPO / "scripts" / script), run_name="__main__")
    return exit_info.value.code, capsys.readouterr().err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny trained shapes run's best checkpoint."""
    root = tmp_path_factory.mktemp("trained")
    cfg = config_lib.load(overrides=TINY + [f"data.root={root / 'shapes'}", f"train.out_dir={root / 'runs'}",
                                            "train.run_name=tiny"])
    return train(cfg) / "checkpoints" / "best.ckpt"


def test_shapes_generator_refuses_a_coco_export_and_says_what_it_is(tmp_path):
    root = write_coco_export(tmp_path / "my_coco")
    before = tree_digest(root)
    with pytest.raises(DataError, match=r"has annotations/instances_train.json.*a COCO dataset\? add --data coco"):
        ensure_shapes(root, image_size=32, num_train=2, num_val=1, num_workers=1)
    assert tree_digest(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["my_coco"]  # no temporary folder left


@pytest.mark.parametrize("fmt", EXPORTS)
def test_every_script_leaves_a_dataset_given_without_data_byte_for_byte(fmt, tmp_path, checkpoint, monkeypatch,
                                                                        capsys):
    root = EXPORTS[fmt](tmp_path / "export")
    before = tree_digest(root)
    work = tmp_path / "work"
    work.mkdir()
    commands = [
        ("train.py", "--data-root", root, *SHORT),
        ("inspect_data.py", "--data-root", root),
        ("compare.py", "--losses", "l1", "--seeds", "0", "--data-root", root, "--out", work / "report", *SHORT),
        ("evaluate.py", checkpoint, "--data-root", root, "--num-workers", "0"),
        ("predict.py", checkpoint, *sorted(root.rglob("*.jpg")), "--num-workers", "0"),
    ]
    for script, *args in commands:
        status, err = run_script(script, *args, cwd=work, monkeypatch=monkeypatch, capsys=capsys)
        assert tree_digest(root) == before, f"{script} changed {root}: {err[-2000:]}"
        assert status in (0, 2), f"{script}: {err[-2000:]}"
        if status == 2:  # refused in one line, never a traceback
            assert err.count("\nerror: ") + err.startswith("error: ") == 1 and "Traceback" not in err, err


def test_train_refuses_a_coco_export_as_shapes_in_one_line(tmp_path, monkeypatch, capsys):
    root = write_coco_export(tmp_path / "my_coco")
    status, err = run_script("train.py", "--data", "shapes", "--data-root", root, "--max-steps", "1", cwd=tmp_path,
                             monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2
    assert "error: data.root" in err and "a COCO dataset? add --data coco" in err
    assert not (tmp_path / "runs").exists()  # refused before a run directory


def test_a_reused_run_name_is_refused_and_the_first_run_stays_byte_for_byte(tmp_path, monkeypatch, capsys):
    args = ["--set", *TINY, f"data.root={tmp_path / 'shapes'}", "--out-dir", tmp_path / "runs", "--run-name", "first"]
    assert run_script("train.py", *args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    run_dir = tmp_path / "runs" / "first"
    before = tree_digest(run_dir)
    status, err = run_script("train.py", *args, "--lr", "0.01", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2
    assert f"run directory {run_dir} already exists (a completed run of 6 steps)" in err
    assert "choose another --run-name, or replace it with --overwrite" in err
    assert tree_digest(run_dir) == before


def test_overwrite_replaces_a_run_with_nothing_of_the_old_left(tmp_path, monkeypatch, capsys):
    args = ["--set", *TINY, f"data.root={tmp_path / 'shapes'}", "--out-dir", tmp_path / "runs", "--run-name", "run"]
    assert run_script("train.py", *args, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    run_dir = tmp_path / "runs" / "run"
    (run_dir / "eval-val").mkdir()
    (run_dir / "eval-val" / "metrics.json").write_text("{}")
    status, err = run_script("train.py", *args, "--max-steps", "3", "--overwrite", cwd=tmp_path,
                             monkeypatch=monkeypatch, capsys=capsys)
    assert status == 0, err[-2000:]
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 3
    assert not (run_dir / "eval-val").exists()


def test_a_folder_that_is_not_a_run_is_never_replaced(tmp_path, monkeypatch, capsys):
    mine = tmp_path / "runs" / "mine"
    mine.mkdir(parents=True)
    (mine / "notes.txt").write_text("keep me")
    for extra in ([], ["--overwrite"]):
        status, err = run_script("train.py", "--set", *TINY, f"data.root={tmp_path / 'shapes'}", "--out-dir",
                                 tmp_path / "runs", "--run-name", "mine", *extra, cwd=tmp_path,
                                 monkeypatch=monkeypatch, capsys=capsys)
        assert status == 2 and "is not a run directory (no metrics.json); it is left as it is" in err
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_evaluate_refuses_to_mix_its_results_with_another_checkpoints(tmp_path, checkpoint, monkeypatch, capsys):
    out = tmp_path / "eval"
    common = ["--out", out, "--num-workers", "0"]
    assert run_script("evaluate.py", checkpoint, *common, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    record = json.loads((out / "metrics.json").read_text())
    assert record["checkpoint"] == str(checkpoint) and len(record["checkpoint_sha256"]) == 64
    assert (out / "pr_curves.png").is_file() and (out / "confusion_matrix.png").is_file()
    assert record["confusion"]["labels"][-1] == "background" and "pr_curves" in record["val"]
    # The same evaluation again: the same detections and metrics (the timings aside).
    assert run_script("evaluate.py", checkpoint, *common, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    again = json.loads((out / "metrics.json").read_text())
    assert {**again, "timings": None} == {**record, "timings": None}
    first = tree_digest(out)
    other = checkpoint.with_name("last.ckpt")
    status, err = run_script("evaluate.py", other, *common, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and f"{out} holds the evaluation of another checkpoint" in err and "--overwrite" in err
    status, err = run_script("evaluate.py", checkpoint, *common, "--score-thresh", "0.9", cwd=tmp_path,
                             monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and "another postprocessing" in err
    assert tree_digest(out) == first
    assert run_script("evaluate.py", other, *common, "--overwrite", cwd=tmp_path, monkeypatch=monkeypatch,
                      capsys=capsys)[0] == 0
    assert json.loads((out / "metrics.json").read_text())["checkpoint"] == str(other)


def test_outputs_never_land_in_a_folder_the_project_did_not_make(tmp_path, checkpoint, monkeypatch, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    image = next((checkpoint.parents[3] / "shapes" / "val").glob("*.png"))
    for script, args in (("evaluate.py", [checkpoint, "--out", mine]), ("predict.py", [checkpoint, image, "--out", mine]),
                         ("inspect_data.py", ["--set", *TINY, f"data.root={tmp_path / 'shapes'}", "--out", mine]),
                         ("compare.py", ["--runs", checkpoint.parents[1], "--out", mine])):
        for extra in ([], ["--overwrite"]) if script in ("evaluate.py", "predict.py") else ([],):
            status, err = run_script(script, *args, *extra, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
            assert status == 2 and f"{mine} is not empty and holds no output of this project" in err, (script, err)
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


def test_a_figure_is_never_written_over_an_existing_file(tmp_path, monkeypatch, capsys):
    figure = tmp_path / "curves.png"
    figure.write_bytes(b"mine")
    status, err = run_script("plot_losses.py", "--out", figure, cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2 and f"{figure} exists; give another file name, or --overwrite to replace it" in err
    assert figure.read_bytes() == b"mine"
    assert run_script("plot_losses.py", "--out", figure, "--overwrite", cwd=tmp_path, monkeypatch=monkeypatch,
                      capsys=capsys)[0] == 0
    assert figure.read_bytes().startswith(b"\x89PNG")


def test_default_outputs_go_to_new_files_under_runs(tmp_path, monkeypatch, capsys):
    """plot_losses.py and inspect_data.py with their defaults, run in a folder: everything they
    write is new and under its runs/; twice gives two outputs, neither replacing the other."""
    for _ in range(2):
        assert run_script("plot_losses.py", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)[0] == 0
        assert run_script("inspect_data.py", "--set", *TINY, "data.root=shapes", cwd=tmp_path,
                          monkeypatch=monkeypatch, capsys=capsys)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "shapes"]
    made = sorted((tmp_path / "runs").iterdir())
    assert [p.name.startswith("inspect-shapes-") for p in made] == [True, True, False, False]
    assert all(p.name.startswith("loss_curves-") and p.suffix == ".png" for p in made[2:])
    assert all({f.name for f in p.iterdir()} == {"box_sizes.png", "class_counts.png", "report.txt", ".detector-output.json"}
               for p in made[:2])


def test_voc_classes_that_no_annotation_uses_are_refused(tmp_path, monkeypatch, capsys):
    root = write_voc_folder(tmp_path / "photos")
    status, err = run_script("train.py", "--data", "voc", "--data-root", root, "--set", "data.val_fraction=0.4",
                             "data.classes=[cat,dog,bird]", *SHORT[2:], "--max-steps", "1", cwd=tmp_path,
                             monkeypatch=monkeypatch, capsys=capsys)
    assert status == 2
    assert "option 'data.classes' names 'bird', which no annotation uses; the classes that occur: cat, dog" in err


def test_a_voc_folder_with_xml_is_named_as_such(tmp_path):
    root = tmp_path / "labelimg"
    root.mkdir()
    photo = PHOTOS["train"][0]
    (root / "a.xml").write_text(voc_xml(photo))
    with pytest.raises(DataError, match=r"has 1 XML file \(a.xml\): a VOC dataset\? add --data voc"):
        ensure_shapes(root, image_size=32, num_train=2, num_val=1, num_workers=1)


# ----------------------------------------------------------------------------- exit status


def test_a_diverged_run_exits_3(tmp_path, monkeypatch, capsys):
    status, _ = run_script("train.py", "--loss", "l2", "--lr", "1e4", "--set", *TINY, f"data.root={tmp_path / 's'}",
                           "--out-dir", tmp_path / "runs", cwd=tmp_path, monkeypatch=monkeypatch, capsys=capsys)
    assert status == 3
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_run_exits_128_plus_the_signal_and_says_how_to_resume(signum, status, tmp_path):
    run_dir = tmp_path / "runs" / "stopped"
    args = ["--set", *TINY, f"data.root={tmp_path / 'shapes'}", "train.epochs=50", "--out-dir", tmp_path / "runs",
            "--run-name", "stopped"]
    process = subprocess.Popen([sys.executable, "scripts/train.py", *map(str, args)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (run_dir / "gradients.csv").is_file():
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == status, stderr[-2000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "interrupted" and metrics["stopped_by"] == signal.Signals(signum).name
    assert f"continue it with: python scripts/train.py --resume {run_dir}" in stderr


def test_default_run_names_never_collide(tmp_path, monkeypatch):
    """Two runs started within the same second get two directories."""
    cfg = config_lib.load(overrides=TINY + [f"data.root={tmp_path / 'shapes'}", f"train.out_dir={tmp_path / 'runs'}",
                                            "train.max_steps=1"])
    monkeypatch.setattr("detector.engine.rundir.default_run_name", lambda cfg: "same-name")
    first = train(config_lib.from_dict(config_lib.to_dict(cfg)))
    second = train(config_lib.from_dict(config_lib.to_dict(cfg)))
    assert (first.name, second.name) == ("same-name", "same-name-2")
    assert os.environ.pop("DETECTOR_RUN_NAME") == "same-name-2"
