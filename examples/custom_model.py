"""Bring your own model: a worked example for ``model.arch: python:custom_model.py:build``.

LinearScope imports this file and calls ``build`` with the keyword arguments it declares among
``scale``, ``checkpoint`` and ``weights`` (those that the config sets). ``build`` returns

* an ``nn.Module`` (``build`` below): LinearScope then uses the default description — x0 is the
  image as RGB in [0, 1], shape (1, 3, H, W); a probe forward tells it whether the output is an
  image (and at which scale) or a vector of scores; or
* a ``ModelSpec`` (``build_gray`` below): you decide how an image becomes x0, how outputs are
  shown and what the geometry and size constraints are.

Both networks here are small and have hand-set weights (no file needed): bicubic ×scale upscaling
followed by a ReLU-gated, asymmetric sharpening — non-linear, so its linear interpreter changes
from image to image (compare its columns with those of ``bicubic.yaml``).

Run it with ``precompute run examples/custom.yaml``, or from Python::

    from precompute.models import load_model
    spec = load_model("python:custom_model.py:build", scale=2, base_dir=Path("examples"))
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from precompute.models import ModelSpec, Prepared
from precompute.models.checkpoint import read_state_dict


class SharpenUpscaler(nn.Module):
    """Bicubic ×scale, then add ``gain·ReLU(d) − 0.5·gain·ReLU(−d)`` of the detail ``d = up − blur(up)``."""

    def __init__(self, channels: int = 3, scale: int = 2, gain: float = 0.8):
        super().__init__()
        self.scale = scale
        self.blur = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False)
        self.gain = nn.Parameter(torch.tensor(float(gain)))
        with torch.no_grad():
            k = torch.tensor([1.0, 2.0, 1.0])
            self.blur.weight.copy_((k[:, None] * k[None, :] / 16).expand(channels, 1, 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)
        d = up - self.blur(F.pad(up, (1, 1, 1, 1), mode="replicate"))[..., 1:-1, 1:-1]
        return up + self.gain * F.relu(d) - 0.5 * self.gain * F.relu(-d)


def build(scale: int = 2, checkpoint: str | None = None) -> nn.Module:
    """Plain-module form: RGB in [0, 1] by default; weights optional (a plain state_dict)."""
    model = SharpenUpscaler(3, scale)
    if checkpoint is not None:
        # read_state_dict never unpickles code (torch.load(weights_only=True)).
        model.load_state_dict(read_state_dict(checkpoint), strict=True)
    return model


def build_gray(scale: int = 2) -> ModelSpec:
    """ModelSpec form: the same network on the gray level in 0..255, shown as gray."""

    def prepare(image) -> Prepared:
        g = np.asarray(image.convert("L"), dtype=np.float32)
        return Prepared(torch.from_numpy(g)[None, None].contiguous())

    return ModelSpec(
        module=SharpenUpscaler(1, scale),
        model_id="python:custom_model.py:build_gray",  # LinearScope replaces it with the full path
        kind="image",
        in_channels=1,
        scale=float(scale),        # output pixels per input pixel
        offset=0.0,                # half-pixel aligned: input pixel i's centre at scale·(i + ½)
        size_multiple=1,
        min_size=2,
        value_range=(0.0, 255.0),  # x0 and outputs, for display (clipped)
        description=f"Sharpening ×{scale} upscaler on the gray level (0..255), hand-set weights.",
        prepare_fn=prepare,        # display_input / display_output default to value_range
    )
