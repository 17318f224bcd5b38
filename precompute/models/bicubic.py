"""The bicubic upscaler: the linear reference of the paper's super-resolution demos (§8.B).

``F.interpolate(x, scale_factor=s, mode="bicubic", align_corners=False)`` on RGB in [0, 1]
(PyTorch's Keys cubic, a = −0.75, half-pixel centres, replicated borders, no clamping). It is
linear, so its interpreter has F = the interpolation matrix (independent of x0) and r = 0: a check
of the interpreter itself and a space-invariant reference to compare learned upscalers against.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from precompute.models.base import ModelError, ModelSpec
from precompute.models.common import positive_int_scale


class Bicubic(nn.Module):
    """×scale bicubic upscaling of every channel, half-pixel aligned (align_corners=False)."""

    def __init__(self, scale: int):
        super().__init__()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale, mode="bicubic", align_corners=False)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def load(*, scale: int | None = None, checkpoint=None, random_weights: bool = False) -> ModelSpec:
    """A ModelSpec of the ×scale bicubic upscaler (RGB in [0, 1]); it takes no checkpoint."""
    if scale is None:
        raise ModelError("bicubic needs a scale (e.g. scale: 4)")
    if checkpoint is not None:
        raise ModelError("bicubic has no weights: remove 'checkpoint' from the model section")
    s = positive_int_scale("bicubic", scale)
    return ModelSpec(
        module=Bicubic(s).eval(),
        model_id="bicubic",
        arch="bicubic",
        kind="image",
        in_channels=3,
        scale=float(s),
        offset=0.0,
        value_range=(0.0, 1.0),
        description=(
            f"Bicubic ×{s} upscaler (F.interpolate, align_corners=False) on RGB in [0, 1], any "
            "size. Linear: F is the interpolation matrix, the same for every image, and r = 0."
        ),
    )
