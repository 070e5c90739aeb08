"""The trained detector from Python (load_detector) and exported (TorchScript, ONNX), each against
the checkpoint's own detections on the same images."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detector import load_detector
from detector.data import load_image
from detector.engine import config as config_lib
from detector.engine.api import export
from detector.engine.training import train

REPO = Path(__file__).resolve().parents[1]
TINY = ["data.name=shapes", "data.shapes_image_size=64", "data.shapes_num_train=24", "data.shapes_num_val=8",
        "data.batch_size=4", "data.num_workers=0", "train.epochs=2", "train.warmup_steps=1", "train.progress=false",
        "model.box_score_thresh=0.0"]  # an untrained head scores little: every box counts in the comparisons


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("api")
    cfg = config_lib.load(overrides=[*TINY, f"data.root={root / 'shapes'}", f"train.out_dir={root / 'runs'}",
                                     "train.run_name=tiny"])
    return train(cfg)


def _images(run):
    return sorted((run.parents[1] / "shapes" / "val").glob("*.png"))[:5]


def test_load_detector_gives_predict_pys_detections(run, tmp_path):
    images = _images(run)
    found = load_detector(run, batch_size=2)(images)
    assert len(found) == 5 and all(len(f["boxes"]) == len(f["scores"]) == len(f["labels"]) == len(f["names"])
                                   for f in found)
    assert found[0]["names"][0] in ("rectangle", "ellipse", "triangle", "cross", "ring", "star")
    out = tmp_path / "predictions"
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), str(run), *map(str, images), "--out",
                             str(out), "--batch-size", "2", "--num-workers", "0"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    predicted = json.loads((out / "detections.json").read_text())
    for image_id, detections in enumerate(found, start=1):
        theirs = [d for d in predicted if d["image_id"] == image_id]
        assert len(theirs) == len(detections["boxes"])
        ours = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in detections["boxes"].tolist()]
        torch.testing.assert_close(torch.tensor(ours), torch.tensor([d["bbox"] for d in theirs]), atol=1e-3, rtol=0)
        assert detections["scores"].tolist() == pytest.approx([d["score"] for d in theirs], abs=1e-5)
    # Tensors work as files do.
    tensors = load_detector(run, batch_size=2)([load_image(str(p)) for p in images])
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(tensors, found))


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_the_exported_model_gives_the_checkpoints_detections(run, tmp_path, fmt):
    if fmt == "onnx":
        onnxruntime = pytest.importorskip("onnxruntime")
    path, size = export(run, tmp_path / f"detector.{fmt}", fmt=fmt)
    assert size == (64, 64)
    reference = load_detector(run, precision="32-true")(_images(run))  # the export is fp32
    if fmt == "torchscript":
        model = torch.jit.load(str(path))
        outputs = [model(load_image(str(p))) for p in _images(run)]
    else:
        session = onnxruntime.InferenceSession(str(path))
        outputs = [[torch.from_numpy(o) for o in session.run(None, {"image": load_image(str(p)).numpy()})]
                   for p in _images(run)]
    for (boxes, scores, labels), expected in zip(outputs, reference):
        assert boxes.shape == expected["boxes"].shape
        # The same operations in another runtime: equal up to float rounding.
        torch.testing.assert_close(boxes, expected["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(scores, expected["scores"], atol=1e-4, rtol=0)
        assert torch.equal(labels.long(), expected["labels"].long())
