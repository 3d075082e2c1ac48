"""Small target architectures for the synthetic world (64 x 64 RGB inputs).

- ``synth_resnet``: a tiny ResNet. Named layers ``conv1`` (stem, 32 x 32), ``layer1`` (32 x 32),
  ``layer2`` (16 x 16), ``layer3`` (8 x 8), ``fc``. Each ``layerN`` is one basic block whose
  output (after the residual sum and ReLU) is what a dissection records.
- ``synth_convnet``: an AlexNet-style plain conv net. Named layers ``conv1`` (32 x 32),
  ``conv2`` (16 x 16), ``conv3`` (8 x 8), ``conv4`` (8 x 8), ``fc``; each ``convN`` ends in its
  ReLU (pooling sits at the start of the next layer, so a layer's output is its rectified map).

Both end in global *max* pooling and a linear ``fc``: with average pooling, shape evidence
(a corner, a point of a star) is diluted over the map and these small nets barely learn shapes
in a few epochs; with max pooling they do.
"""

from __future__ import annotations

import torch
from torch import nn

from bench.errors import UsageError

ARCHS: tuple[str, ...] = ("synth_resnet", "synth_convnet")


def _conv_bn_relu(cin: int, cout: int, k: int = 3, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=False),
    ]


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (He et al. 2016)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.downsample: nn.Module | None = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.relu_out = nn.ReLU(inplace=False)  # its own module: training reads its input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + identity)


class TinyResNet(nn.Module):
    """float32 [B, 3, 64, 64] -> logits [B, num_classes]."""

    def __init__(self, num_classes: int, widths: tuple[int, int, int, int] = (16, 16, 32, 64)):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.conv1 = nn.Sequential(*_conv_bn_relu(3, w0, 3, stride=2))
        self.layer1 = nn.Sequential(BasicBlock(w0, w1, 1))
        self.layer2 = nn.Sequential(BasicBlock(w1, w2, 2))
        self.layer3 = nn.Sequential(BasicBlock(w2, w3, 2))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(w3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class PlainConvNet(nn.Module):
    """AlexNet-style: convolutions and max-pooling, no shortcuts. [B, 3, 64, 64] -> [B, K]."""

    def __init__(self, num_classes: int, widths: tuple[int, int, int, int] = (32, 48, 64, 64)):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.conv1 = nn.Sequential(*_conv_bn_relu(3, w1, 5, stride=2))
        self.conv2 = nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(w1, w2, 3))
        self.conv3 = nn.Sequential(nn.MaxPool2d(2), *_conv_bn_relu(w2, w3, 3))
        self.conv4 = nn.Sequential(*_conv_bn_relu(w3, w4, 3))
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(w4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv4(self.conv3(self.conv2(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def output_relu(model: nn.Module, layer: str) -> nn.Module:
    """The ReLU whose output is ``layer``'s output; its input is the layer's pre-activation.

    Planting trains on pre-activations, so a unit pushed below zero on non-concepts still gets
    gradients (a rectified unit pushed to zero everywhere would die).
    """
    module = dict(model.named_modules())[layer]
    last = module
    while True:
        if isinstance(last, nn.ReLU):
            return last
        if isinstance(last, BasicBlock):
            return last.relu_out
        children = list(last.children())
        if not isinstance(last, nn.Sequential) or not children:
            raise UsageError(
                f"Expected layer '{layer}' to end in a ReLU or a basic block, got "
                f"{type(last).__name__}."
            )
        last = children[-1]


def build_model(arch: str, num_classes: int) -> nn.Module:
    """A freshly initialised model of ``arch`` (see :data:`ARCHS`)."""
    if arch == "synth_resnet":
        return TinyResNet(num_classes)
    if arch == "synth_convnet":
        return PlainConvNet(num_classes)
    from bench.errors import UnknownNameError

    if not isinstance(arch, str):
        raise UsageError(f"Expected an architecture name, got {arch!r}.")
    raise UnknownNameError("synthetic architecture", arch, ARCHS)
