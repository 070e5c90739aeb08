"""Tiny real trainings through the scripts: run directory, metrics, checkpoint evaluation."""

import contextlib
import importlib.util
import io
import json
import logging
import os
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from detector.data import DataError
from detector.engine import config as config_lib
from detector.engine import training
from detector.engine.io import read_csv_rows
from detector.engine.training import train

REPO = Path(__file__).resolve().parents[1]
TINY_COCO = REPO.parent / "shared" / "data" / "tiny_coco"

# TensorBoard is an optional extra (the dev extra installs it): the shared run logs to it when
# it is there, and the test of its event files skips when it is not.
TENSORBOARD = importlib.util.find_spec("tensorboard") is not None

TINY_SHAPES = [
    "data.name=shapes", "data.shapes_image_size=64", "data.shapes_num_train=24", "data.shapes_num_val=8", "data.batch_size=8",
    "data.num_workers=0", "train.epochs=2", "train.warmup_steps=2", "train.progress=false",
    "train.log_every_n_steps=2", "train.val_every_n_epochs=1",
]


def run_script(*args, cwd=REPO):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def run_in_process(script, *args, monkeypatch):
    """A script's main() in this process (no interpreter start, torch already loaded)."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, args)])
    return runpy.run_path(str(REPO / "scripts" / script))["main"]()


@pytest.fixture(scope="module")
def shapes_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    # Relative paths, as a user types them, from inside the output folder.
    cfg = config_lib.load(overrides=TINY_SHAPES + ["data.root=shapes", "train.out_dir=runs", "train.run_name=tiny",
                                                   "loss.name=l2", f"train.logger={'tensorboard' if TENSORBOARD else 'csv'}"])
    cwd = os.getcwd()
    os.chdir(out)
    try:
        return out / train(cfg)
    finally:
        os.chdir(cwd)


def test_training_writes_a_complete_run_directory(shapes_run):
    metrics = json.loads((shapes_run / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["steps"] == 6  # 24 images / batch 8 = 3 steps per epoch, 2 epochs
    assert metrics["checkpoints"] == {"best": "checkpoints/best.ckpt", "last": "checkpoints/last.ckpt"}
    assert metrics["loss"]["box_head"] == {"name": "l2", "space": "deltas", "params": {}, "weight": 1.0}
    stats = metrics["val"]["stats"]
    assert set(stats) >= {"AP", "AP50", "AP75", "AP_small", "AP_medium", "AP_large"}
    assert all(0.0 <= stats[k] <= 1.0 for k in ("AP", "AP50", "AP75"))
    assert list(metrics["val"]["ap_per_iou"]) == [f"{t / 100:.2f}" for t in range(50, 100, 5)]
    assert set(metrics["timings"]) == {"data_s", "train_s", "final_eval_s", "total_s"}
    saved = yaml.safe_load((shapes_run / "config.yaml").read_text())
    assert saved["loss"]["name"] == "l2" and saved["train"]["epochs"] == 2
    assert (shapes_run / "checkpoints" / "best.ckpt").is_file()
    assert (shapes_run / "results.png").read_bytes().startswith(b"\x89PNG")  # the run's own figure
    # last.ckpt is the final model even when the final validation was not the best
    last = torch.load(shapes_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == metrics["steps"]
    header = (shapes_run / "metrics.csv").read_text().splitlines()[0]
    assert "train/loss_box_reg" in header and "val/AP" in header
    detections = json.loads((shapes_run / "detections_val.json").read_text())
    assert all(set(d) == {"image_id", "category_id", "bbox", "score"} for d in detections)


def test_evaluate_script_reproduces_the_training_metrics(shapes_run, tmp_path):
    # last.ckpt is the final model, whose validation metrics.json recorded.
    # From the folder the run was made in: its configuration names the dataset relative to it.
    result = run_script(REPO / "scripts" / "evaluate.py", shapes_run / "checkpoints" / "last.ckpt", "--out", tmp_path,
                        "--num-workers", "0", cwd=shapes_run.parents[1])
    assert result.returncode == 0, result.stderr
    evaluated = json.loads((tmp_path / "metrics.json").read_text())["val"]
    trained = json.loads((shapes_run / "metrics.json").read_text())["val"]
    assert evaluated["stats"] == pytest.approx(trained["stats"])
    assert evaluated["num_detections"] == trained["num_detections"]
    assert "AP50" in result.stdout


def test_predict_equals_evaluate_on_the_validation_images(shapes_run, tmp_path, monkeypatch):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    monkeypatch.chdir(shapes_run.parents[1])  # the run's configuration names its data relative to here
    checkpoint = shapes_run / "checkpoints" / "last.ckpt"
    folder = tmp_path / "photos"
    shutil.copytree("shapes/val", folder)
    (folder / "broken.png").write_bytes(b"not an image")
    # Both enlarge the 64 px images to 96 px, so the shared resize and the mapping back to the
    # files' pixels are exercised.
    common = ["--num-workers", "0", "--min-size", "96", "--set", "train.progress=false"]
    run_in_process("evaluate.py", checkpoint, "--out", tmp_path / "eval", *common, monkeypatch=monkeypatch)
    run_in_process("predict.py", checkpoint, folder, "--out", tmp_path / "pred", "--skip-bad-images", *common,
                   monkeypatch=monkeypatch)
    evaluated = json.loads((tmp_path / "eval" / "detections.json").read_text())
    predicted = json.loads((tmp_path / "pred" / "detections.json").read_text())
    info = json.loads((tmp_path / "pred" / "image_info.json").read_text())
    truth = json.loads(Path("shapes/annotations/instances_val.json").read_text())
    # Prediction numbers the sorted files 1, 2, ...; the ground truth has its own ids: match by file name.
    truth_id = {image["file_name"]: image["id"] for image in truth["images"]}
    to_truth = {image["id"]: truth_id[image["file_name"]] for image in info["images"]}
    assert len(predicted) > 0 and sorted(to_truth) == list(range(1, 9))  # broken.png sorts last, as id 9
    assert [{**d, "image_id": to_truth[d["image_id"]]} for d in predicted] == evaluated
    assert [(s["file_name"], s["error"]) for s in info["skipped"]] == [
        ("broken.png", f"{folder / 'broken.png'}: cannot decode image: Unsupported image file. Only jpeg, png, webp "
                       "and gif are currently supported. For avif and heic format, please rely on `decode_avif` and "
                       "`decode_heic` directly.")]
    assert info["postprocessing"]["data.min_size"] == 96
    assert info["categories"] == [{"id": c["id"], "name": c["name"]} for c in truth["categories"]]
    assert sorted(p.name for p in (tmp_path / "pred" / "images").iterdir()) == sorted(truth_id)

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        # image_info.json is a ground truth without annotations: loadRes takes the detections ...
        assert len(COCO(str(tmp_path / "pred" / "image_info.json")).loadRes(str(tmp_path / "pred" / "detections.json"))
                   .getAnnIds()) == len(predicted)
        # ... and the ground truth of the same files, keyed by the prediction's ids, scores them as evaluate.py did.
        from_truth = {image_id: predicted_id for predicted_id, image_id in to_truth.items()}
        truth["images"] = [{**image, "id": from_truth[image["id"]]} for image in truth["images"]]
        truth["annotations"] = [{**a, "image_id": from_truth[a["image_id"]]} for a in truth["annotations"]]
        ground_truth = COCO()
        ground_truth.dataset = truth
        ground_truth.createIndex()
        scores = COCOeval(ground_truth, ground_truth.loadRes(str(tmp_path / "pred" / "detections.json")), "bbox")
        scores.evaluate()
        scores.accumulate()
        scores.summarize()
    assert scores.stats[0] == pytest.approx(json.loads((tmp_path / "eval" / "metrics.json").read_text())["val"]["stats"]["AP"])


def test_evaluate_applies_post_processing_and_records_it(shapes_run, tmp_path, monkeypatch):
    monkeypatch.chdir(shapes_run.parents[1])
    run_in_process("evaluate.py", shapes_run / "checkpoints" / "last.ckpt", "--out", tmp_path, "--num-workers", "0",
                   "--score-thresh", "0.3", "--max-detections", "2", "--set", "train.progress=false",
                   monkeypatch=monkeypatch)
    # A higher threshold removes only boxes NMS could not use to suppress better ones, so the
    # result is each image's best 2 of the training run's detections scoring above 0.3.
    trained = json.loads((shapes_run / "detections_val.json").read_text())
    expected = []
    for image_id in sorted({d["image_id"] for d in trained}):
        mine = [d for d in trained if d["image_id"] == image_id and d["score"] > 0.3]
        expected += sorted(mine, key=lambda d: -d["score"])[:2]
    evaluated = json.loads((tmp_path / "detections.json").read_text())
    key = lambda d: (d["image_id"], -d["score"])  # noqa: E731
    assert sorted(evaluated, key=key) == pytest.approx(sorted(expected, key=key))
    recorded = json.loads((tmp_path / "metrics.json").read_text())["postprocessing"]
    assert recorded["model.box_score_thresh"] == 0.3 and recorded["model.detections_per_image"] == 2
    assert recorded["model.box_nms_thresh"] == 0.5  # the checkpoint's own


@pytest.mark.parametrize("script, args, message", [
    ("evaluate.py", ["--set", "train.lr=0.1", "model.anchor_sizes=[8]"],
     "error: model.anchor_sizes, train.lr cannot apply to a trained model (training fixed them); evaluate.py "
     "applies: data.min_size, data.max_size, model.rpn_pre_nms_top_n_test, model.rpn_post_nms_top_n_test, "
     "model.box_score_thresh, "),
    ("predict.py", ["shapes/val", "--out", "predictions", "--data-root", "elsewhere"], "unrecognized arguments"),
    ("predict.py", ["shapes/val", "--out", "predictions", "--set", "data.val_split=train"],
     "error: data.val_split cannot apply to a trained model (training fixed it); predict.py applies: "),
    ("predict.py", ["shapes/val/000000.png", "shapes/nothing/*.png", "--out", "predictions"],
     "error: shapes/nothing/*.png: no image file matches this pattern"),
])
def test_options_training_fixed_are_refused_by_name(shapes_run, script, args, message):
    result = run_script(REPO / "scripts" / script, shapes_run, *args, cwd=shapes_run.parents[1])
    assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (shapes_run.parents[1] / "predictions").exists() and not (shapes_run / "eval-val").exists()


def test_predict_stops_at_a_bad_image_naming_it(shapes_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(shapes_run.parents[1] / "shapes" / "val" / "000000.png", folder)
    (folder / "empty.jpg").write_bytes(b"")
    result = run_script(REPO / "scripts" / "predict.py", shapes_run, folder, "--out", tmp_path / "out",
                        "--num-workers", "0", "--set", "train.progress=false", cwd=shapes_run.parents[1])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().endswith(f"error: {folder / 'empty.jpg'}: cannot decode image: the file is empty "
                                          "(set data.skip_bad_images=true, --skip-bad-images, to leave out such images)")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, message", [
    (["--loss", "l3"], "unknown regression loss 'l3'; valid losses:"),
    (["--loss-args", "gamma=2"], "no parameter 'gamma'"),
    (["--set", "train.optimiser=sgd"], "unknown option 'train.optimiser'"),
    (["--data", "kitti"], "valid choices: auto, shapes, coco, voc, yolo"),
    (["--data", "coco", "--data-root", "/nonexistent/coco"], "/nonexistent/coco"),
    (["--data", "coco"], "--data coco needs the dataset's folder: give --data-root DIR"),
    (["--set", "train.lrr=0.1"], "did you mean 'train.lr'?"),
])
def test_train_script_rejects_bad_options_with_status_2(args, message, tmp_path):
    result = run_script("scripts/train.py", *args, "--out-dir", tmp_path, "--set", "train.progress=false")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no run directory left behind


@pytest.mark.parametrize("overrides, error, message", [
    (["data.name=coco", "data.root={tmp}/cocoo"], FileNotFoundError, "COCO dataset folder not found: .*cocoo"),
    (["data.categories=[unicorn]"], DataError, "unknown category 'unicorn'"),
    (["model.weights={tmp}/weights.pth"], ValueError, "weights.pth"),  # a state dict of another network
])
def test_a_failed_start_leaves_no_run_directory(tmp_path, overrides, error, message):
    torch.save({"conv1.weight": torch.zeros(3)}, tmp_path / "weights.pth")
    cfg = config_lib.load(overrides=TINY_SHAPES + [f"data.root={tmp_path / 'shapes'}", f"train.out_dir={tmp_path / 'runs'}",
                                                   *(o.format(tmp=tmp_path) for o in overrides)])
    with pytest.raises(error, match=message):
        train(cfg)
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not TINY_COCO.is_dir(), reason="../shared/data/tiny_coco not present")
def test_tiny_coco_smoke_run(tmp_path):
    cfg = config_lib.load(REPO / "configs" / "tiny_coco.yaml", overrides=[
        f"data.root={TINY_COCO}", f"train.out_dir={tmp_path}", "train.run_name=coco", "train.max_steps=3",
        "data.batch_size=2", "data.num_workers=0", "train.progress=false", "data.max_val_images=10"])
    metrics = json.loads((train(cfg) / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["steps"] == 3
    assert metrics["num_train_images"] == 50 and metrics["val"]["num_images"] == 10
    # The classes are the categories with annotations in either split: 59 of COCO's 80 here.
    used = {ann["category_id"] for split in ("train2017", "val2017")
            for ann in json.loads((TINY_COCO / "annotations" / f"instances_{split}.json").read_text())["annotations"]}
    assert len(metrics["class_names"]) == len(used) == 59
    assert 0.0 <= metrics["val"]["stats"]["AP"] <= 1.0


def test_gradient_statistics_recorded_for_both_heads(shapes_run):
    import csv

    rows = list(csv.DictReader((shapes_run / "gradients.csv").open()))
    assert {r["head"] for r in rows} == {"box_head", "rpn"}
    assert {int(r["step"]) for r in rows} <= {0, 2, 4}  # log_every_n_steps=2 over 6 steps
    for row in rows:
        assert row["loss"] == "l2" and int(row["count"]) > 0
        assert 0 <= float(row["median"]) <= float(row["p99"]) <= float(row["max"])


def test_a_failing_run_is_marked_failed(tmp_path, monkeypatch):
    from detector.engine.module import DetectorModule

    def broken_step(self, batch, batch_idx):
        raise RuntimeError("boom")

    monkeypatch.setattr(DetectorModule, "training_step", broken_step)
    cfg = config_lib.load(overrides=TINY_SHAPES + [f"data.root={tmp_path / 'shapes'}", f"train.out_dir={tmp_path}",
                                                   "train.run_name=broken"])
    with pytest.raises(RuntimeError, match="boom"):
        train(cfg)
    metrics = json.loads((tmp_path / "broken" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "RuntimeError: boom"


def test_a_failure_after_training_is_marked_failed(tmp_path, monkeypatch):
    def broken_validation(*args):
        raise OSError("disk full")

    monkeypatch.setattr(training, "validate_final_model", broken_validation)
    cfg = config_lib.load(overrides=TINY_SHAPES + [f"data.root={tmp_path / 'shapes'}", f"train.out_dir={tmp_path}",
                                                   "train.run_name=late", "train.max_steps=1"])
    with pytest.raises(OSError, match="disk full"):
        train(cfg)
    metrics = json.loads((tmp_path / "late" / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"] == "OSError: disk full" and metrics["steps"] == 1


@pytest.mark.skipif(not TENSORBOARD, reason="tensorboard is not installed (pip install -e '.[tensorboard]')")
def test_tensorboard_event_files_hold_the_logged_numbers(shapes_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(shapes_run))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/loss_box_reg", "lr-AdamW/pg1", "val/AP", "val/AP90", "gradients/box_head/median",
            "gradients/rpn/p99"} <= tags
    # The same numbers as metrics.csv and gradients.csv (TensorBoard stores float32).
    csv_loss = {int(r["step"]): float(r["train/loss"]) for r in read_csv_rows(shapes_run / "metrics.csv")
                if r["train/loss"]}
    assert {e.step: e.value for e in events.Scalars("train/loss")} == pytest.approx(csv_loss, rel=1e-6)
    csv_ap = [float(r["val/AP"]) for r in read_csv_rows(shapes_run / "metrics.csv") if r["val/AP"]]
    assert [e.value for e in events.Scalars("val/AP")] == pytest.approx(csv_ap, rel=1e-6)
    assert len(csv_ap) == 2  # one validation per epoch
    medians = {int(r["step"]): float(r["median"]) for r in read_csv_rows(shapes_run / "gradients.csv")
               if r["head"] == "box_head"}
    assert {e.step: e.value for e in events.Scalars("gradients/box_head/median")} == pytest.approx(medians, rel=1e-6)


@pytest.mark.parametrize("tracker", ["tensorboard", "mlflow", "wandb"])
def test_a_tracker_without_its_package_is_one_clear_error(monkeypatch, tracker):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(config_lib.ConfigError, match=rf"'train.logger' is '{tracker}' but the {tracker} package is "
                                                     rf"not installed; install it with: pip install -e \"\.\[{tracker}\]\""):
        config_lib.load(overrides=[f"train.logger={tracker}"])


def test_voc_run_reports_voc_ap50_next_to_coco_ap(tmp_path, caplog):
    """A VOC-layout copy of a tiny shapes set (shape classes renamed to VOC classes) trains,
    records AP50 by the VOC rule, and the report shows it."""
    from PIL import Image

    from detector.data.shapes import ensure_shapes
    from detector.data.voc import VOC_CLASSES
    from detector.lab.report import write_report

    shapes = tmp_path / "shapes"
    ensure_shapes(shapes, image_size=64, num_train=16, num_val=8, seed=0)
    root = tmp_path / "VOC2007"
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / sub).mkdir(parents=True)
    for split in ("train", "val"):
        coco = json.loads((shapes / "annotations" / f"instances_{split}.json").read_text())
        names = {c["id"]: VOC_CLASSES[i] for i, c in enumerate(coco["categories"])}
        for image in coco["images"]:
            stem = f"{split}{image['id']:04d}"
            Image.open(shapes / split / image["file_name"]).convert("RGB").save(root / "JPEGImages" / f"{stem}.jpg",
                                                                                 quality=95)
            objects = "".join(
                f"<object><name>{names[a['category_id']]}</name><difficult>0</difficult><bndbox>"
                f"<xmin>{a['bbox'][0]}</xmin><ymin>{a['bbox'][1]}</ymin><xmax>{a['bbox'][0] + a['bbox'][2]}</xmax>"
                f"<ymax>{a['bbox'][1] + a['bbox'][3]}</ymax></bndbox></object>"
                for a in coco["annotations"] if a["image_id"] == image["id"])
            (root / "Annotations" / f"{stem}.xml").write_text(
                f"<annotation><size><width>{image['width']}</width><height>{image['height']}</height></size>"
                f"{objects}</annotation>")
            with open(root / "ImageSets" / "Main" / f"{split}.txt", "a") as handle:
                handle.write(stem + "\n")
    # A box of zero width, as BCCD has one: training says so once, the report's example figure not again.
    xml = sorted((root / "Annotations").glob("val*.xml"))[0]
    xml.write_text(xml.read_text().replace("</annotation>", f"<object><name>{VOC_CLASSES[0]}</name><bndbox><xmin>5"
                                           "</xmin><ymin>5</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object>"
                                           "</annotation>"))
    cfg = config_lib.load(overrides=TINY_SHAPES + [
        "data.name=voc", f"data.root={root}", "data.train_split=train", "data.val_split=val",
        f"train.out_dir={tmp_path}", "train.run_name=voc", "train.epochs=1"])
    with caplog.at_level(logging.WARNING):
        run_dir = train(cfg)
    assert [r.message for r in caplog.records].count(
        f"{root / 'ImageSets' / 'Main' / 'val.txt'}: left 1 boxes with zero or negative width or height (after "
        f"clipping to the image) out of the targets, in {xml.stem}.jpg; the ground truth keeps them") == 1
    val = json.loads((run_dir / "metrics.json").read_text())["val"]
    assert 0.0 <= val["voc_ap50"] <= 1.0 and val["stats"]["AP50"] >= 0.0
    caplog.clear()
    report = write_report([run_dir], tmp_path / "report", "cmd").read_text()
    assert "VOC_AP50" in report and f"{val['voc_ap50']:.3f}" in report
    assert "examples.png" in report and not [r for r in caplog.records if r.name.startswith("detector.data")]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
@pytest.mark.parametrize("fast_bf16", [True, False])
def test_precision_on_the_cpu_follows_its_bf16_support(caplog, monkeypatch, fast_bf16):
    from detector.engine import trainers

    monkeypatch.setattr(trainers, "cpu_has_fast_bf16", lambda: fast_bf16)
    expected = "bf16-mixed" if fast_bf16 else "32-true"
    cfg = config_lib.load(REPO / "configs" / "shapes_gpu.yaml", overrides=["train.accelerator=auto"])
    assert cfg.train.precision == "bf16-mixed"
    trainers.resolve_precision(cfg)
    assert cfg.train.precision == expected
    assert ("needs a GPU or a CPU with native bf16" in caplog.text) is not fast_bf16
    cfg = config_lib.load()  # the default preset: auto
    assert cfg.train.precision == "auto"
    trainers.resolve_precision(cfg)
    assert cfg.train.precision == expected
    cfg = config_lib.load(overrides=["train.precision=16-mixed"])
    trainers.resolve_precision(cfg)
    assert cfg.train.precision == "32-true"  # fp16 autocast is never used on a CPU


def test_a_mistyped_option_answers_in_one_line_before_torch_loads():
    import time

    started = time.perf_counter()
    result = run_script("scripts/train.py", "--set", "train.lrr=0.1")
    assert result.returncode == 2 and result.stderr.startswith("error: --set: unknown option 'train.lrr'; did you mean")
    assert result.stderr.count("\n") == 1
    usage = run_script("scripts/compare.py", "--losses", "l1", "--out", "report", "--lose", "l2")
    assert usage.returncode == 2 and usage.stderr == "error: unrecognized arguments: --lose l2 (see compare.py --help)\n"
    # The configuration is read without torch: its import alone takes seconds (the README has the time).
    probe = subprocess.run([sys.executable, "-c", "import sys, detector.engine.config, detector.engine.cli; "
                                                  "print('torch' in sys.modules)"], capture_output=True, text=True)
    assert probe.stdout.strip() == "False", probe.stderr
    assert time.perf_counter() - started < 60  # a loose bound on a loaded machine; the timing is in the README
