"""ResNet trunk with a one-step top-down merge into a single stride-8 feature map.

Shape letters as in the ``detector`` package docstring (H, W here: the padded input image).

Objects in this project's datasets are 8 to ~64 px on ~128 px inputs. A stride-16 C4 map
(torchvision's ResNet C4 Faster R-CNN) gives an 8 px object less than one cell; a stride-8
map (layer2) does not see enough context on its own. So layer3 (stride 16) is projected,
upsampled and added to layer2, as one level of an FPN would, and everything downstream runs
on that one map. layer4 is not used: at these input sizes it adds parameters, not accuracy.
"""

from __future__ import annotations

import re

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum, get_model_weights
from torchvision.ops.misc import FrozenBatchNorm2d

# (layer2 channels, layer3 channels) of each supported trunk.
TRUNK_CHANNELS = {"resnet18": (128, 256), "resnet34": (128, 256), "resnet50": (512, 1024)}
STRIDE = 8
# torchvision's order for trainable_backbone_layers: the first k of these train. layer4 is not
# part of this trunk, so k = 1 trains none of its stages and k = 5 trains all of them.
TRAINABLE_ORDER = ("layer4", "layer3", "layer2", "layer1", "conv1")
# A weights name: "imagenet", an enum member ("IMAGENET1K_V1") or "ResNet50_Weights.IMAGENET1K_V2".
_WEIGHTS_NAME = re.compile(r"^(imagenet|[A-Za-z0-9]+_Weights\.[A-Z0-9_]+|[A-Z0-9]+_[A-Z0-9_]+)$")


def named_weights(backbone: str, spec: str) -> WeightsEnum | None:
    """torchvision's weights for ``spec`` when it names some ("imagenet": the trunk's DEFAULT,
    else an enum member with or without its class), None when it is a file path. A name that
    is not one of the trunk's weights is a ValueError listing the valid names."""
    if not _WEIGHTS_NAME.match(spec):
        return None
    available = get_model_weights(backbone)
    if spec == "imagenet":
        return available.DEFAULT
    cls, _, member = spec.rpartition(".")
    if (cls and cls != available.__name__) or member not in available.__members__:
        valid = ", ".join(["imagenet", *(f"{available.__name__}.{m}" for m in available.__members__)])
        raise ValueError(f"'{spec}' names no weights of a torchvision {backbone}; valid names: {valid} "
                         "(or a local state dict file)")
    return available[member]


class Backbone(nn.Module):
    """images (N, 3, H, W), normalised, H and W multiples of 16 -> features (N, C, H/8, W/8)."""

    def __init__(self, *, name: str = "resnet18", out_channels: int = 128, pretrained: bool = False,
                 trainable_layers: int = 5, trunk_state: dict[str, Tensor] | None = None,
                 trunk_source: str = "trunk weights"):
        """``pretrained``: the trunk starts from pretrained weights, so, as torchvision's detection
        models do, its batch norms are frozen (FrozenBatchNorm2d: fixed statistics and affine
        parameters) and only the last ``trainable_layers`` stages of TRAINABLE_ORDER train.
        ``trunk_state``: those weights, a torchvision ResNet state dict (absent when a
        checkpoint will provide every weight); ``trunk_source`` names where they came from in
        errors. Without ``pretrained`` the trunk starts from random weights and trains whole,
        with ordinary batch norm."""
        super().__init__()
        if name not in TRUNK_CHANNELS:
            raise ValueError(f"unknown backbone '{name}'; valid: {', '.join(TRUNK_CHANNELS)}")
        resnet = getattr(torchvision.models, name)(weights=None, norm_layer=FrozenBatchNorm2d if pretrained else None)
        if trunk_state is not None:
            load_trunk_state(resnet, trunk_state, trunk_source)
        if pretrained:
            trainable = TRAINABLE_ORDER[:trainable_layers] + (("bn1",) if trainable_layers == 5 else ())
            for parameter_name, parameter in resnet.named_parameters():
                if not parameter_name.startswith(trainable):
                    parameter.requires_grad_(False)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1)
        self.layer2 = resnet.layer2
        self.layer3 = resnet.layer3
        c2, c3 = TRUNK_CHANNELS[name]
        self.lateral2 = nn.Conv2d(c2, out_channels, kernel_size=1)
        self.lateral3 = nn.Conv2d(c3, out_channels, kernel_size=1)
        self.smooth = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )
        self.out_channels = out_channels
        self.stride = STRIDE

    def forward(self, images: Tensor) -> Tensor:
        c2 = self.layer2(self.stem(images))  # (N, c2, H/8, W/8)
        c3 = self.layer3(c2)  # (N, c3, H/16, W/16)
        top_down = F.interpolate(self.lateral3(c3), size=c2.shape[-2:], mode="nearest")
        return self.smooth(self.lateral2(c2) + top_down)  # (N, C, H/8, W/8)


def load_trunk_state(resnet: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load a torchvision-format ResNet state dict into ``resnet``.

    The classifier (fc.*) and layer4 may be present or absent; any other missing or
    unexpected key, or a shape that does not fit, means the state is not of this ResNet and
    is reported naming ``source``.
    """
    try:
        result = resnet.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches, e.g. resnet50 weights for a resnet18
        problems = " ".join(str(exc).split()).split(":", 1)[-1].strip()  # one line, without torch's preamble
        raise ValueError(f"{source}: does not fit a torchvision {type(resnet).__name__}: {problems}") from None
    optional = ("fc.", "layer4.")
    missing = [k for k in result.missing_keys if not k.startswith(optional)]
    unexpected = [k for k in result.unexpected_keys if not k.startswith(optional)]
    if missing or unexpected:
        raise ValueError(
            f"{source}: not a torchvision {type(resnet).__name__} state dict "
            f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})"
        )
