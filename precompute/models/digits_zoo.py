"""The digits architecture zoo: four more small classifiers of different families for the
paper's architecture comparison (Table 3 / Table 4: residual share per architecture; Figure 8:
VGG with and without batch normalisation).

Same task, data, input and labels as :mod:`precompute.models.digits` (32×32 gray in [0, 1], 10
logits), trained by ``examples/train_digits.py --arch <id>``; weights in
``examples/weights/<id>.pt`` (plain state_dicts, used when no ``checkpoint`` is given).

=====================  ====================================================================
``digits-vgg``         VGG-like, sequential: 5 convolutions (biases) + ReLU, max pooling,
                       2 fully connected layers; no batch norm
``digits-vgg-bn``      the same with eval batch norm after every convolution (torchvision's
                       ``vgg*_bn`` layout: conv · BN · ReLU)
``digits-resnet``      ResNet-like: stem, two basic blocks (identity and 1×1 projection
                       shortcut), global average pooling, fc — torchvision ``resnet`` names
``digits-densenet``    DenseNet-like: two dense blocks (BN · ReLU · conv, concatenation) and a
                       transition (1×1 conv, average pooling) — torchvision ``densenet`` names
=====================  ====================================================================

The modules are plain ``nn.Module`` trees whose names follow torchvision's families, so the
contribution terms of the classifier analyses (Theorem 1) read like the paper's (``features.3``,
``layer2.0.downsample.1``, ``features.denseblock1.denselayer2.norm1``).
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from precompute.models.base import ModelError, ModelSpec
from precompute.models.checkpoint import load_strict, read_state_dict, sha256_file
from precompute.models.common import seeded
from precompute.models.digits import LABELS, SIZE, prepare

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "examples" / "weights"


def _vgg_features(bn: bool) -> nn.Sequential:
    """torchvision's ``make_layers`` for the config [8, M, 16, 16, M, 32, 32, M] on 1 channel."""
    layers: list[nn.Module] = []
    c = 1
    for v in (8, "M", 16, 16, "M", 32, 32, "M"):
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        layers.append(nn.Conv2d(c, v, 3, padding=1))
        if bn:
            layers.append(nn.BatchNorm2d(v))
        layers.append(nn.ReLU())
        c = v
    return nn.Sequential(*layers)


class DigitsVGG(nn.Module):
    """VGG-like: ``features`` (convs at 32, 16, 8 px; 3 max pools) → flatten (32·4·4) →
    ``classifier`` (fc 512→64 · ReLU · fc 64→10). A sequential network (paper eq. 7)."""

    def __init__(self, bn: bool = False):
        super().__init__()
        self.features = _vgg_features(bn)
        self.classifier = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


class BasicBlock(nn.Module):
    """torchvision's ResNet ``BasicBlock``: conv·BN·ReLU·conv·BN + shortcut, ReLU. The one
    ``relu`` module is called twice, as upstream."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                            nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)


class DigitsResNet(nn.Module):
    """ResNet-like: conv1·bn1·relu·maxpool (16 px, 16 ch) → layer1 (identity block, 16 ch) →
    layer2 (stride-2 block with 1×1 projection, 8 px, 32 ch) → global average pool → fc."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(16, 16))
        self.layer2 = nn.Sequential(BasicBlock(16, 32, stride=2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class DenseLayer(nn.Module):
    """torchvision's ``_DenseLayer`` without the bottleneck: BN·ReLU·conv 3×3 (growth
    channels), concatenated to its input."""

    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv1(self.relu1(self.norm1(x)))], 1)


def _dense_block(cin: int, layers: int, growth: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(
        (f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth)) for i in range(layers)))


class DigitsDenseNet(nn.Module):
    """DenseNet-like: ``features`` = conv0·norm0·relu0·pool0 (16 px, 16 ch) → denseblock1
    (3 layers, growth 8 → 40 ch) → transition1 (BN·ReLU·1×1 conv to 20 ch · 2×2 average pool,
    8 px) → denseblock2 (3 layers → 44 ch) → norm5; then ReLU, global average pool, classifier."""

    def __init__(self, growth: int = 8):
        super().__init__()
        c1 = 16 + 3 * growth
        c2 = c1 // 2
        self.features = nn.Sequential(OrderedDict([
            ("conv0", nn.Conv2d(1, 16, 3, 1, 1, bias=False)),
            ("norm0", nn.BatchNorm2d(16)),
            ("relu0", nn.ReLU()),
            ("pool0", nn.MaxPool2d(2)),
            ("denseblock1", _dense_block(16, 3, growth)),
            ("transition1", nn.Sequential(OrderedDict([
                ("norm", nn.BatchNorm2d(c1)), ("relu", nn.ReLU()),
                ("conv", nn.Conv2d(c1, c2, 1, bias=False)), ("pool", nn.AvgPool2d(2))]))),
            ("denseblock2", _dense_block(c2, 3, growth)),
            ("norm5", nn.BatchNorm2d(c2 + 3 * growth)),
        ]))
        self.relu = nn.ReLU()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c2 + 3 * growth, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.relu(self.features(x)))
        return self.classifier(torch.flatten(x, 1))


#: model id → (constructor, one-line description). ``digits`` itself lives in models/digits.py.
MODELS: dict[str, tuple] = {
    "digits-vgg": (lambda: DigitsVGG(bn=False),
                   "VGG-like digits classifier without batch norm (5 conv + 2 fc, max pooling)"),
    "digits-vgg-bn": (lambda: DigitsVGG(bn=True),
                      "VGG-like digits classifier with batch norm after every convolution"),
    "digits-resnet": (DigitsResNet,
                      "ResNet-like digits classifier (two basic blocks, projection shortcut, "
                      "global average pooling)"),
    "digits-densenet": (DigitsDenseNet,
                        "DenseNet-like digits classifier (two dense blocks of 3 layers, growth 8, "
                        "a transition with average pooling)"),
}


def build(arch: str) -> nn.Module:
    """A fresh (default-initialised, train-mode) module of the zoo model ``arch``."""
    if arch not in MODELS:
        raise ModelError(f"unknown digits model {arch!r}; known: {', '.join(MODELS)}")
    return MODELS[arch][0]()


def shipped_weights(arch: str) -> Path:
    return WEIGHTS_DIR / f"{arch}.pt"


def _spec(arch: str, module: nn.Module, checkpoint: str | None, sha: str | None) -> ModelSpec:
    return ModelSpec(
        module=module.eval(), model_id=arch, arch=arch, kind="vector", in_channels=1,
        scale=None, offset=0.0, size_multiple=1, min_size=SIZE, value_range=(0.0, 1.0),
        labels=list(LABELS), checkpoint=checkpoint, checkpoint_sha256=sha,
        pixel_norm=((0.0,), (1.0,)),
        description=(f"{MODELS[arch][1]}; trained by examples/train_digits.py --arch {arch} on "
                     "scikit-learn's 8×8 digits upsampled to 32×32. x0 is the gray image in "
                     "[0, 1], shape (1, 1, 32, 32); 10 scores without softmax."),
        prepare_fn=prepare,
    )


def load(arch: str, *, checkpoint: str | Path | None = None,
         random_weights: bool = False) -> ModelSpec:
    """The zoo model ``arch`` with its shipped weights, another checkpoint, or seeded random ones."""
    if random_weights and checkpoint is None:
        with seeded():
            return _spec(arch, build(arch), None, None)
    path = Path(checkpoint) if checkpoint is not None else shipped_weights(arch)
    sd = read_state_dict(path)
    with torch.device("meta"):
        module = build(arch)
    load_strict(module, sd, source=str(path), model_name=arch, assign=True)
    return _spec(arch, module, str(path), sha256_file(path))
