"""train.logger=mlflow and train.logger=wandb: each tracker holds the numbers the run directory
holds (losses, AP, gradient statistics with the displaced/clean split), the configuration and the
code version. Both are optional extras (the dev extra installs them); a test skips without its
package. W&B runs offline here and is read back from its own run file."""

from __future__ import annotations

import importlib.util
import json
import struct
import time
from pathlib import Path

import pytest

from detector.engine import config as config_lib
from detector.engine.io import read_csv_rows
from detector.engine.trainers import MLFLOW_STORE
from detector.engine.training import train
from detector.engine.versions import describe

TINY_NOISY_SHAPES = [
    "data.name=shapes", "data.shapes_image_size=64", "data.shapes_num_train=16", "data.shapes_num_val=8",
    "data.batch_size=8", "data.num_workers=0", "data.train_box_noise=0.4", "train.epochs=2", "train.warmup_steps=2",
    "train.progress=false", "train.log_every_n_steps=1", "train.val_every_n_epochs=1", "loss.name=l1",
]


def tiny_run(tmp_path: Path, logger: str) -> Path:
    cfg = config_lib.load(overrides=TINY_NOISY_SHAPES + [f"data.root={tmp_path / 'shapes'}", f"train.logger={logger}",
                                                         f"train.out_dir={tmp_path / 'runs'}", "train.run_name=tiny"])
    return train(cfg)


def expected_series(run_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from metrics.csv and gradients.csv, the tags the trackers get."""
    series: dict[str, dict[int, float]] = {}
    for row in read_csv_rows(run_dir / "metrics.csv"):
        for tag in ("train/loss", "train/loss_box_reg", "val/AP", "val/AP90"):
            if row.get(tag):
                series.setdefault(tag, {})[int(row["step"])] = float(row[tag])
    for row in read_csv_rows(run_dir / "gradients.csv"):
        boxes = "" if row["boxes"] == "all" else f"{row['boxes']}/"
        series.setdefault(f"gradients/{row['head']}/{boxes}median", {})[int(row["step"])] = float(row["median"])
    return series


def check_series(logged: dict[str, dict[int, float]], run_dir: Path) -> None:
    expected = expected_series(run_dir)
    assert len(expected["val/AP"]) == 2  # one validation per epoch
    assert any("displaced" in tag for tag in expected)  # the noisy run splits displaced from clean boxes
    for tag, values in expected.items():
        assert logged.get(tag) == pytest.approx(values, rel=1e-6), tag


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason='mlflow is not installed (pip install -e ".[mlflow]")')
def test_mlflow_store_beside_the_runs_holds_the_run(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run_dir = tiny_run(tmp_path, "mlflow")
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / MLFLOW_STORE}")
    (run,) = client.search_runs([client.get_experiment_by_name("detector").experiment_id])
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    logged = {tag: {m.step: m.value for m in client.get_metric_history(run.info.run_id, tag)} for tag in run.data.metrics}
    check_series(logged, run_dir)
    params = run.data.params
    assert params["config/loss/name"] == "l1" and params["config/data/train_box_noise"] == "0.4"
    assert params["code"] == describe(json.loads((run_dir / "metrics.json").read_text())["code"])


def wandb_records(run_file: Path):
    """The records of a W&B offline run file: a 7-byte header, then LevelDB-log blocks of 32 KiB
    whose chunks (crc32, length, type: 1 whole, 2 first, 3 middle, 4 last) carry protobuf Records.
    The wandb package has no public reader for offline runs, hence these lines."""
    from wandb.proto import wandb_internal_pb2

    data, pos, block, pending = run_file.read_bytes(), 7, 32768, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


@pytest.mark.skipif(importlib.util.find_spec("wandb") is None, reason='wandb is not installed (pip install -e ".[wandb]")')
def test_wandb_offline_run_holds_the_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run_dir = tiny_run(tmp_path, "wandb")
    (run_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    # W&B's service process writes the file; on a loaded machine its last records (the final
    # validation's, then "exit") can land a moment after finish() has returned.
    deadline = time.time() + 60
    while (records := list(wandb_records(run_file)))[-1].WhichOneof("record_type") != "exit":
        assert time.time() < deadline, "the offline run file has no exit record"
        time.sleep(0.5)
    logged: dict[str, dict[int, float]] = {}
    config: dict[str, object] = {}
    for record in records:
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            for tag, value in items.items():
                logged.setdefault(tag, {})[items["trainer/global_step"]] = value
        elif kind == "config":
            config.update({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.config.update})
        elif kind == "run":
            assert record.run.display_name == "tiny" and record.run.project == "detector"
    check_series(logged, run_dir)
    assert config["config"]["loss"]["name"] == "l1" and config["config"]["data"]["train_box_noise"] == 0.4
    assert config["code"] == describe(json.loads((run_dir / "metrics.json").read_text())["code"])


def test_wandb_stays_offline_without_a_key(tmp_path, monkeypatch):
    from detector.engine import trainers

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setattr(trainers.socket, "create_connection", lambda *a, **k: pytest.fail("no key: no network"))
    assert trainers._wandb_can_sync() is False
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    (tmp_path / ".netrc").chmod(0o600)  # netrc refuses a password file that others can read
    connected = []
    monkeypatch.setattr(trainers.socket, "create_connection", lambda *a, **k: connected.append(a) or _Closeable())
    assert trainers._wandb_can_sync() is True and connected == [(("api.wandb.ai", 443),)]


class _Closeable:
    def close(self):
        pass
