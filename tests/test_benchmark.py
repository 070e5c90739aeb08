"""The benchmark script from a clean checkout: no dataset generated yet, every case in a process of its own."""

import argparse
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

from PIL import Image

from detector.lab.benchmark import SECTIONS

REPO = Path(__file__).resolve().parents[1]


def test_quick_sections_run_where_no_dataset_was_generated_yet(tmp_path):
    out = tmp_path / "benchmark.json"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "benchmark.py"), "--sections", "assignment",
                             "train-step", "--batch-sizes", "1", "--repeats", "1", "--steps", "3", "--batch-size", "2",
                             "--out", str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "data" / "shapes" / "meta.json").is_file()  # generated before the cases' processes
    written = json.loads(out.read_text())
    (row,) = written["assignment"]
    assert row["batch_size"] == 1 and row["ours_s"] > 0 and row["torchvision_s"] > 0
    assert row["speedup"] == row["torchvision_s"] / row["ours_s"]
    steps = written["train_step"]
    assert steps["ours"]["batch_size"] == 2 and steps["speedup"] == steps["ours"]["images_per_s"] / steps["torchvision"][
        "images_per_s"]
    assert "train-step" in result.stdout and "assignment" in result.stdout
    assert set(written) == {"machine", "assignment", "train_step"}


def test_every_section_names_its_json_key_and_the_script_lists_them_all():
    assert [section.key for section in SECTIONS.values()] == [name.replace("-", "_") for name in SECTIONS]
    script = runpy.run_path(str(REPO / "scripts" / "benchmark.py"))
    assert script["SECTIONS"] == tuple(SECTIONS)


def test_preflight_section_times_a_cold_and_a_cached_pass(tmp_path, monkeypatch):
    from detector.lab import benchmark

    monkeypatch.setattr(benchmark, "PREFLIGHT_PHOTOS", 6)
    monkeypatch.setenv("DETECTOR_CACHE", str(tmp_path / "users-cache"))
    folder = tmp_path / "mine"
    folder.mkdir()
    for name in ("a.jpg", "b.png"):
        Image.new("RGB", (20, 10)).save(folder / name)
    rows = benchmark.run_preflight(argparse.Namespace(preflight_root=str(folder)), {}, "cpu")
    assert [(row["images"], row["count"]) for row in rows] == [("generated 640x480 JPEGs", 6), (str(folder), 2)]
    assert all(row["cold_s"] > row["cached_s"] > 0 for row in rows)
    assert os.environ["DETECTOR_CACHE"] == str(tmp_path / "users-cache")  # the user's setting is back
    assert not (tmp_path / "users-cache").exists()  # and the benchmark's caches were its own
