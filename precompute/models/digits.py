"""``digits``: the small trained classifier LinearScope ships (scikit-learn's handwritten digits).

A CNN with everything the paper's Case 1 looks at — convolutions with biases, eval batch norm,
ReLU, max pooling, a skip connection and fully connected layers — trained by
``examples/train_digits.py`` on scikit-learn's bundled 8×8 digits upsampled to 32×32, so that the
classifier analyses run offline in seconds. Weights: ``examples/weights/digits.pt`` (a plain
state_dict; used when no ``checkpoint`` is given).

x0 is the gray image in [0, 1] (PIL ``L`` / 255), shape (1, 1, 32, 32): white digit on black, as
scikit-learn's data. The scores are the 10 logits (no softmax), labels ``"0"`` … ``"9"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from precompute.models.base import ModelError, ModelSpec, Prepared
from precompute.models.checkpoint import load_strict, read_state_dict, sha256_file
from precompute.models.common import seeded

SIZE = 32
LABELS = [str(k) for k in range(10)]
#: Where this repository ships the weights trained by examples/train_digits.py.
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "examples" / "weights" / "digits.pt"


class DigitsNet(nn.Module):
    """32×32 gray → 10 scores. Module names are the state-dict names of the shipped weights.

    conv1·bn1·ReLU·pool1 (16×16) → [conv2·bn2·ReLU·conv3·bn3] + skip, ReLU, pool2 (8×8) →
    conv4·bn4·ReLU·pool3 (4×4) → fc1·ReLU → fc2. Each ReLU is its own module.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(16)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv2d(16, 16, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(16)
        self.relu3 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn4 = nn.BatchNorm2d(32)
        self.relu4 = nn.ReLU()
        self.pool3 = nn.MaxPool2d(2)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu5 = nn.ReLU()
        self.fc2 = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.bn1(self.conv1(x))))
        y = self.bn3(self.conv3(self.relu2(self.bn2(self.conv2(x)))))
        x = self.pool2(self.relu3(x + y))  # the skip connection
        x = self.pool3(self.relu4(self.bn4(self.conv4(x))))
        return self.fc2(self.relu5(self.fc1(torch.flatten(x, 1))))


def prepare(image) -> Prepared:
    """A 32×32 image → x0 = gray / 255, (1, 1, 32, 32)."""
    gray = image.convert("L")
    if gray.size != (SIZE, SIZE):
        raise ModelError(f"digits takes {SIZE}×{SIZE} images (white digit on black, like "
                         f"examples/images/digits/), got {gray.size[1]}×{gray.size[0]}")
    arr = np.asarray(gray, dtype=np.float32) / 255.0
    return Prepared(torch.from_numpy(arr)[None, None].contiguous())


def build_spec(module: DigitsNet, *, checkpoint: str | None = None,
               sha: str | None = None) -> ModelSpec:
    return ModelSpec(
        module=module.eval(), model_id="digits", arch="digits", kind="vector", in_channels=1,
        scale=None, offset=0.0, size_multiple=1, min_size=SIZE, value_range=(0.0, 1.0),
        labels=list(LABELS), checkpoint=checkpoint, checkpoint_sha256=sha,
        pixel_norm=((0.0,), (1.0,)),
        description=(
            "LinearScope's digits classifier (conv, batch norm, ReLU, max pooling, a skip "
            "connection; trained by examples/train_digits.py on scikit-learn's 8×8 digits "
            "upsampled to 32×32). x0 is the gray image in [0, 1], shape (1, 1, 32, 32); 10 "
            "scores without softmax."),
        prepare_fn=prepare,
    )


def load(*, checkpoint: str | Path | None = None, random_weights: bool = False) -> ModelSpec:
    """The digits network with the shipped weights, another checkpoint, or seeded random ones."""
    if random_weights and checkpoint is None:
        with seeded():
            return build_spec(DigitsNet())
    path = Path(checkpoint) if checkpoint is not None else SHIPPED_WEIGHTS
    sd = read_state_dict(path)
    with torch.device("meta"):
        module = DigitsNet()
    load_strict(module, sd, source=str(path), model_name="digits", assign=True)
    return build_spec(module, checkpoint=str(path), sha=sha256_file(path))
