"""A pretrained trunk through torchvision's weights API and cache, tested without a network:
a state dict placed where the cache expects it is what the trunk starts from."""

import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.ops.misc import FrozenBatchNorm2d

from detector.engine import config as config_lib
from detector.engine.build import build_model, load_trunk_weights
from detector.engine.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
RESNET18_FILE = "resnet18-f37072fd.pth"  # the file name of ResNet18_Weights.IMAGENET1K_V1's URL


@pytest.fixture
def no_download(monkeypatch):
    """Any download attempt fails as it would offline."""
    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("no network in this test")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


@pytest.fixture
def cached_resnet18(tmp_path, monkeypatch, no_download):
    """A recognisable resnet18 state dict in an empty torch cache (TORCH_HOME)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    torch.manual_seed(123)
    resnet = torchvision.models.resnet18(weights=None)
    for module in resnet.modules():  # running statistics that no fresh model has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.5, 2)
    state = resnet.state_dict()
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(state, checkpoints / RESNET18_FILE)
    return state


def model_with(weights: str, *overrides: str):
    cfg = config_lib.load(overrides=[f"model.weights={weights}", *overrides])
    return build_model(cfg, num_classes=3, trunk_state=load_trunk_weights(cfg.model))


@pytest.mark.parametrize("name", ["imagenet", "ResNet18_Weights.IMAGENET1K_V1", "IMAGENET1K_V1"])
def test_named_weights_come_from_torchvisions_cache(cached_resnet18, name):
    model = model_with(name)
    trunk = model.backbone
    # stem = conv1, bn1, relu, maxpool, layer1; then layer2 and layer3 (layer4 is not used)
    trunk_state = {**{f"conv1.{k}": v for k, v in trunk.stem[0].state_dict().items()},
                   **{f"bn1.{k}": v for k, v in trunk.stem[1].state_dict().items()},
                   **{f"layer1.{k}": v for k, v in trunk.stem[4].state_dict().items()},
                   **{f"layer2.{k}": v for k, v in trunk.layer2.state_dict().items()},
                   **{f"layer3.{k}": v for k, v in trunk.layer3.state_dict().items()}}
    expected = {k for k in cached_resnet18 if not k.startswith(("layer4.", "fc.")) and "num_batches_tracked" not in k}
    assert set(trunk_state) == expected  # frozen batch norm keeps no num_batches_tracked
    for key, value in trunk_state.items():
        torch.testing.assert_close(value, cached_resnet18[key], rtol=0, atol=0, msg=key)


def test_pretrained_trunk_freezes_batch_norm_and_early_stages(cached_resnet18):
    trunk = model_with("imagenet", "model.trainable_layers=2").backbone  # layer4 (absent) and layer3 train
    norms = [m for m in trunk.modules() if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d))]
    assert all(isinstance(m, FrozenBatchNorm2d) for m in trunk.stem.modules() if m in norms)
    assert all(p.requires_grad for p in trunk.layer3.parameters())
    assert not any(p.requires_grad for p in [*trunk.stem.parameters(), *trunk.layer2.parameters()])
    assert all(p.requires_grad for p in trunk.lateral2.parameters())  # the merge is new: it trains
    everything = model_with("imagenet", "model.trainable_layers=5").backbone
    assert all(p.requires_grad for p in everything.parameters())
    random_init = build_model(config_lib.load(), num_classes=3).backbone  # no weights: plain BN, all train
    assert isinstance(random_init.stem[1], torch.nn.BatchNorm2d) and random_init.stem[1].training
    assert all(p.requires_grad for p in random_init.parameters())


def test_input_normalisation_is_the_weights_own(cached_resnet18):
    model = model_with("imagenet")
    transforms = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    torch.testing.assert_close(model.pixel_mean.flatten(), torch.tensor(transforms.mean) * 255)
    torch.testing.assert_close(model.pixel_std.flatten(), torch.tensor(transforms.std) * 255)


def test_offline_and_not_cached_is_one_line_naming_file_cache_and_alternative(tmp_path, monkeypatch, no_download):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    cfg = config_lib.load(overrides=["model.weights=imagenet"])
    with pytest.raises(ConfigError) as info:
        load_trunk_weights(cfg.model)
    message = str(info.value)
    assert "\n" not in message
    assert f"{RESNET18_FILE} is not in torchvision's cache and cannot be downloaded (no network in this test)" in message
    assert f"into {tmp_path / 'empty' / 'hub' / 'checkpoints'}/" in message
    assert "--weights PATH" in message


def test_a_missing_weights_file_is_refused_when_a_run_starts_not_when_a_checkpoint_is_used(tmp_path):
    cfg = config_lib.load(overrides=[f"model.weights={tmp_path / 'gone.pth'}"])  # evaluation never reads it
    with pytest.raises(FileNotFoundError, match=f"option 'model.weights': file not found: {tmp_path / 'gone.pth'}"):
        load_trunk_weights(cfg.model)


def test_weights_of_another_trunk_are_refused_by_name():
    with pytest.raises(ConfigError, match="'ResNet50_Weights.IMAGENET1K_V2' names no weights of a torchvision "
                                          "resnet18; valid names: imagenet, ResNet18_Weights.IMAGENET1K_V1"):
        config_lib.load(overrides=["model.weights=ResNet50_Weights.IMAGENET1K_V2"])


def test_a_local_file_that_does_not_fit_is_one_line(tmp_path):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(64, 64, 3, 3)  # resnet18's is (128, 64, 3, 3)
    torch.save(state, tmp_path / "wrong.pth")
    cfg = config_lib.load(overrides=[f"model.weights={tmp_path / 'wrong.pth'}"])
    with pytest.raises(ConfigError, match=r"wrong.pth: does not fit a torchvision ResNet: size mismatch for "
                                          r"layer2.0.conv1.weight: .*torch.Size\(\[64, 64, 3, 3\]\)") as info:
        load_trunk_weights(cfg.model)
    assert "\n" not in str(info.value)


def test_train_script_offline_exits_2_before_writing_anything(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TORCH_HOME": str(tmp_path / "empty"),
           # a proxy that refuses connections: the download fails as it does offline
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "scripts/train.py", "--weights", "imagenet", "--out-dir",
                             str(tmp_path / "runs")], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: option 'model.weights' is 'imagenet'")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()
