"""What the interpreter sees of a model: the one description the pipeline and the site use.

Every model family (`edsr.py`, `pixelshuffle.py`, `cyclegan.py`, ...) returns a :class:`ModelSpec`.
The sweep (`precompute run`) and the site generator use only this description, never
model-specific branches: how an image becomes x0, how an output becomes a displayable image,
and how input and output pixels relate geometrically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image


class ModelError(ValueError):
    """A model or checkpoint that cannot be used; the message is shown to the user as is."""


@dataclass
class Prepared:
    """An image made ready for a model.

    ``x0`` is the network input, shape (1, C, H, W), float32, exactly as fed to the model;
    ``extra`` carries what display needs besides x0 (e.g. the bicubic Cb/Cr of a Y-channel model).
    """

    x0: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


def _default_prepare(image: Image.Image) -> Prepared:
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return Prepared(torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0).contiguous())


def _to_uint8_rgb(t: torch.Tensor, lo: float, hi: float) -> np.ndarray:
    """(1|C, H, W) tensor in [lo, hi] -> (H, W, 3) uint8, as docs/FORMAT.md defines ``display/*``:
    gray is repeated; two channels show as red and green (blue at the range's bottom); channels
    beyond the third are not shown."""
    if t.dim() == 4:
        t = t[0]
    # one float64 copy of the shown channels, scaled in place (an output may be gigabytes)
    t = t.detach()[:3].to("cpu", torch.float64, copy=True)
    t.sub_(lo).div_(hi - lo).mul_(255.0).round_().clamp_(0, 255)
    u = t.to(torch.uint8)
    del t
    if u.shape[0] == 1:
        u = u.expand(3, -1, -1)
    elif u.shape[0] == 2:
        u = torch.cat([u, torch.zeros_like(u[:1])])  # blue at the range's bottom: (lo − lo) → 0
    return u.permute(1, 2, 0).contiguous().numpy()


@dataclass
class ModelSpec:
    """A model as the interpreter sees it.

    Attributes:
        module: the network, in eval mode; maps x0 (1, C, H, W) to (1, C', H', W') or (1, K).
        model_id: the id of the config (``edsr``, ``torchvision:vgg19``, ``python:FILE.py:FUNC``).
        kind: ``"image"`` (image output) or ``"vector"`` (classifier scores).
        in_channels: C.
        scale: output pixels per input pixel (``None`` for vector models).
        offset: output coordinate of input pixel i's centre is ``scale*(i + 0.5) + offset``.
        size_multiple: input height and width must be multiples of this.
        min_size: smallest input side the network accepts.
        value_range: (lo, hi) of x0 and of image outputs, for display.
        labels: class names of a vector model.
        checkpoint: the checkpoint path used, or None; checkpoint_sha256 its digest.
        description: one paragraph for humans (range, channels, constraints).
        prepare: image -> Prepared (default: RGB in [0, 1]).
        display_input / display_output: tensors -> (H, W, 3) uint8.
        arch: the family id without options (``edsr``, ``torchvision``, ``python``); "" if unset.
        options: family-specific settings as loaded (e.g. ``{"preprocess": "auto"}`` for
            classifiers, ``{"weights": "IMAGENET1K_V1"}``); JSON-serialisable, for provenance.
        pixel_norm: ``(mean, std)`` per channel such that ``x0 = (v − mean)/std`` for the image
            v in [0, 1] (e.g. ImageNet's for torchvision classifiers); the FGSM step of the
            classifier analyses is taken on v. None: not declared (see :meth:`image_norm`).
    """

    module: torch.nn.Module
    model_id: str
    kind: str = "image"
    in_channels: int = 3
    scale: float | None = 1.0
    offset: float = 0.0
    size_multiple: int = 1
    min_size: int = 1
    value_range: tuple[float, float] = (0.0, 1.0)
    labels: list[str] | None = None
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    description: str = ""
    prepare_fn: Callable[[Image.Image], Prepared] | None = None
    display_input_fn: Callable[[Prepared], np.ndarray] | None = None
    display_output_fn: Callable[[torch.Tensor, Prepared], np.ndarray] | None = None
    arch: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    pixel_norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None

    def image_norm(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """``(mean, std)`` relating x0 to the image in [0, 1]: ``pixel_norm``, or the identity
        for the default preparation (RGB in [0, 1]); None when a custom ``prepare_fn`` did not
        declare it."""
        if self.pixel_norm is not None:
            return self.pixel_norm
        return ((0.0,), (1.0,)) if self.prepare_fn is None else None

    def prepare(self, image: Image.Image) -> Prepared:
        """Turn a PIL image into the network input x0 (1, C, H, W) float32."""
        return (self.prepare_fn or _default_prepare)(image)

    def display_input(self, prepared: Prepared) -> np.ndarray:
        """x0 as an (H, W, 3) uint8 RGB image."""
        if self.display_input_fn is not None:
            return self.display_input_fn(prepared)
        return _to_uint8_rgb(prepared.x0, *self.value_range)

    def display_output(self, y: torch.Tensor, prepared: Prepared) -> np.ndarray:
        """An image output (1, C', H', W') as an (H', W', 3) uint8 RGB image."""
        if self.kind != "image":
            raise ModelError(f"{self.model_id} has no image output to display")
        if self.display_output_fn is not None:
            return self.display_output_fn(y, prepared)
        return _to_uint8_rgb(y, *self.value_range)

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ModelError (one clear sentence) when the network cannot take this input size."""
        if height < self.min_size or width < self.min_size:
            raise ModelError(
                f"{self.model_id} needs inputs of at least {self.min_size}×{self.min_size} pixels, "
                f"got {height}×{width}"
            )
        m = self.size_multiple
        if m > 1 and (height % m or width % m):
            raise ModelError(
                f"{self.model_id} needs input height and width that are multiples of {m}, "
                f"got {height}×{width} (crop to {height - height % m}×{width - width % m})"
            )
