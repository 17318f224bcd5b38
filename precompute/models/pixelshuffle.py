"""The 4-layer PixelShuffle super-resolution network of the PyTorch examples (Shi et al., ESPCN).

Architecture of ``pytorch/examples`` ``super_resolution/model.py`` (the "4-layer PixelShuffle"
of the paper's Fig. 11): conv1 5×5 (1→64) · ReLU · conv2 3×3 (64→64) · ReLU · conv3 3×3
(64→32) · ReLU · conv4 3×3 (32→r²) · PixelShuffle(r), working on the Y channel in [0, 1].
State-dict keys ``conv{1..4}.weight|bias`` as upstream, so the ONNX-tutorial weights
(``superres_epoch100-44c6958e.pth``, r = 3) and LinearScope's own ``examples/weights`` load
strictly. The interpreter sees the Y→Y system; Cb/Cr are upscaled bicubically for display only.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from precompute.models.base import ModelError, ModelSpec
from precompute.models.checkpoint import load_strict, read_state_dict, sha256_file
from precompute.models.common import positive_int_scale, prepare_y, y_to_rgb, seeded

#: Where this repository ships weights trained by examples/train_pixelshuffle.py.
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "examples" / "weights" / "pixelshuffle_x3.pt"


class PixelShuffleSR(nn.Module):
    """ESPCN-style ×r upscaler of one channel, as in the PyTorch super-resolution example.

    As upstream, a single non-in-place ``relu`` module is applied three times (after conv1..3),
    so a forward hook on it fires three times per forward; there is no ReLU after conv4.
    """

    def __init__(self, upscale_factor: int = 3):
        super().__init__()
        r = upscale_factor
        self.upscale_factor = r
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(1, 64, 5, padding=2)
        self.conv2 = nn.Conv2d(64, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 32, 3, padding=1)
        self.conv4 = nn.Conv2d(32, r * r, 3, padding=1)
        self.pixel_shuffle = nn.PixelShuffle(r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = self.relu(self.conv2(x))
        x = self.relu(self.conv3(x))
        return self.pixel_shuffle(self.conv4(x))


#: Published files with these keys, by sha256 (recorded in the description for provenance).
KNOWN_FILES = {
    "53372085bef8930982eb6be7d932fd7bea8f845e4b181f5be7e23321b75426cc": (
        "LinearScope's examples/weights/pixelshuffle_x3.pt (×3, trained by "
        "examples/train_pixelshuffle.py on public-domain/CC0 scikit-image images)"
    ),
    "44c6958ea9df3886ef120bad1fc827ffb913e4e6f667b24dc7aea9b032b6df75": (
        "PyTorch ONNX-tutorial weights superres_epoch100-44c6958e.pth (×3; 'not trained fully … "
        "for demonstration purposes only')"
    ),
}


def expected_keys(r: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape table of the upstream state_dict for upscale factor r."""
    return {
        "conv1.weight": (64, 1, 5, 5), "conv1.bias": (64,),
        "conv2.weight": (64, 64, 3, 3), "conv2.bias": (64,),
        "conv3.weight": (32, 64, 3, 3), "conv3.bias": (32,),
        "conv4.weight": (r * r, 32, 3, 3), "conv4.bias": (r * r,),
    }


def _scale_of(sd: dict[str, torch.Tensor]) -> int | None:
    w = sd.get("conv4.weight")
    if w is None or w.dim() != 4:
        return None
    r = round(w.shape[0] ** 0.5)
    return r if r * r == w.shape[0] else None


def build_spec(module: PixelShuffleSR, *, checkpoint: str | None = None, sha: str | None = None) -> ModelSpec:
    """The ModelSpec of a PixelShuffleSR module (Y channel in [0, 1], scale r, offset 0)."""
    r = module.upscale_factor
    known = f" Weights: {KNOWN_FILES[sha]}." if sha in KNOWN_FILES else ""
    return ModelSpec(
        module=module.eval(),
        model_id="pixelshuffle",
        arch="pixelshuffle",
        kind="image",
        in_channels=1,
        scale=float(r),
        offset=0.0,
        size_multiple=1,
        min_size=1,
        value_range=(0.0, 1.0),
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
        description=(
            f"4-layer PixelShuffle ×{r} super-resolution (PyTorch example). x0 is the Y channel "
            "(PIL YCbCr, BT.601 full range) in [0, 1], shape (1, 1, H, W), any size. The output is "
            f"Y at ×{r}; for display it is clipped and merged with bicubically upscaled Cb/Cr, "
            "which are not part of the interpreted system." + known
        ),
        prepare_fn=lambda image: prepare_y(image, r),
        display_input_fn=lambda p: y_to_rgb(p.x0, p.extra.get("cbcr")),
        display_output_fn=lambda y, p: y_to_rgb(y, p.extra.get("cbcr_up")),
    )


def load(
    *, scale: int | None = None, checkpoint: str | Path | None = None, random_weights: bool = False
) -> ModelSpec:
    """Load the PixelShuffle network from a plain state_dict (scale inferred from conv4 if None)."""
    if checkpoint is None:
        if not random_weights:
            raise ModelError(
                "pixelshuffle needs a checkpoint (a plain state_dict with keys conv1..conv4); "
                f"LinearScope ships trained ×3 weights: {SHIPPED_WEIGHTS}"
            )
        r = positive_int_scale("pixelshuffle", 3 if scale is None else scale)
        with seeded():
            return build_spec(PixelShuffleSR(r))
    sd = read_state_dict(checkpoint)
    found = _scale_of(sd)
    if scale is not None:
        r = positive_int_scale("pixelshuffle", scale)
        if found is not None and found != r:
            raise ModelError(
                f"{checkpoint} is a ×{found} PixelShuffle checkpoint (conv4 has {found * found} "
                f"output channels) but scale {r} was asked; set scale: {found} or use a ×{r} file"
            )
    elif found is not None:
        r = found
    else:
        raise ModelError(
            f"{checkpoint} is not a PixelShuffle checkpoint: no usable 'conv4.weight' "
            f"(keys: {', '.join(list(sd)[:8])}{' …' if len(sd) > 8 else ''})"
        )
    with torch.device("meta"):
        module = PixelShuffleSR(r)
    load_strict(module, sd, source=str(checkpoint), model_name=f"pixelshuffle ×{r} (conv1..conv4)",
                assign=True)
    return build_spec(module, checkpoint=str(checkpoint), sha=sha256_file(checkpoint))
