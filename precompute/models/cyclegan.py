"""The CycleGAN ``ResnetGenerator`` (Zhu et al. 2017), as in the official pretrained files.

Module tree and state-dict names of ``junyanz/pytorch-CycleGAN-and-pix2pix``
(``models/networks.py`` ``ResnetGenerator`` with ngf 64, instance norm, no dropout, reflection
padding), so the published generators (``style_ukiyoe.pth``, ``horse2zebra.pth``, …) load with
``strict=True`` into ``model.{0..27}``. Instance norm has no affine parameters and no running
statistics (``track_running_stats=False``): the running-stat keys that old files still carry are
dropped on load, exactly as upstream's ``__patch_instance_norm_state_dict`` does, and never used.

Input RGB in [−1, 1] (``Normalize(0.5, 0.5)``), output Tanh in [−1, 1]; sides a multiple of 4
(two stride-2 convolutions, then two ×2 transposed convolutions).

The width ``ngf`` and the number of residual blocks are read from the file (``model.1.weight`` has
ngf output channels; blocks are the ``model.<i>.conv_block.1.weight`` keys), so the same loader
serves the published ``resnet_9blocks`` (ngf 64) and LinearScope's small trained generator
``examples/weights/toon.pt`` (ngf 16, 4 blocks, made by ``examples/train_toon.py``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from precompute.models.base import ModelError, ModelSpec, Prepared
from precompute.models.checkpoint import load_strict, read_state_dict, sha256_file
from precompute.models.common import rgb_tensor, seeded

#: Generators published at http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/<name>.pth
PRETRAINED = (
    "apple2orange", "orange2apple", "summer2winter_yosemite", "winter2summer_yosemite",
    "horse2zebra", "zebra2horse", "monet2photo", "style_monet", "style_cezanne", "style_ukiyoe",
    "style_vangogh", "sat2map", "map2sat", "cityscapes_photo2label", "cityscapes_label2photo",
    "facades_photo2label", "facades_label2photo", "iphone2dslr_flower",
)
_STAT = re.compile(r"\.(running_mean|running_var|num_batches_tracked)$")
_BLOCK = re.compile(r"model\.(\d+)\.conv_block\.1\.weight$")

#: Where this repository ships the generator trained by examples/train_toon.py.
SHIPPED_WEIGHTS = Path(__file__).resolve().parents[2] / "examples" / "weights" / "toon.pt"


def _norm(c: int) -> nn.InstanceNorm2d:
    return nn.InstanceNorm2d(c, affine=False, track_running_stats=False)


class ResnetBlock(nn.Module):
    """``x + conv_block(x)``; conv_block = ReflPad(1), Conv 3×3, IN, ReLU, ReflPad(1), Conv 3×3, IN."""

    def __init__(self, dim: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), _norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, bias=True), _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN generator, ``self.model`` indices 0..27 as upstream (n_blocks = 9 by default)."""

    def __init__(self, input_nc: int = 3, output_nc: int = 3, ngf: int = 64, n_blocks: int = 9):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, 7, bias=True), _norm(ngf), nn.ReLU(True),
        ]
        for i in range(2):  # downsampling
            m = 2**i
            layers += [nn.Conv2d(ngf * m, ngf * m * 2, 3, stride=2, padding=1, bias=True),
                       _norm(ngf * m * 2), nn.ReLU(True)]
        layers += [ResnetBlock(ngf * 4) for _ in range(n_blocks)]
        for i in range(2):  # upsampling
            m = 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, stride=2, padding=1,
                                          output_padding=1, bias=True),
                       _norm(ngf * m // 2), nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, 7), nn.Tanh()]
        self.n_blocks = n_blocks
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def expected_keys(ngf: int = 64, n_blocks: int = 9) -> dict[str, tuple[int, ...]]:
    """Key -> shape table of the learnable entries of an official generator file."""
    g = ngf
    t = {
        "model.1.weight": (g, 3, 7, 7), "model.1.bias": (g,),
        "model.4.weight": (2 * g, g, 3, 3), "model.4.bias": (2 * g,),
        "model.7.weight": (4 * g, 2 * g, 3, 3), "model.7.bias": (4 * g,),
    }
    for b in range(10, 10 + n_blocks):
        for j in (1, 5):
            t[f"model.{b}.conv_block.{j}.weight"] = (4 * g, 4 * g, 3, 3)
            t[f"model.{b}.conv_block.{j}.bias"] = (4 * g,)
    u = 10 + n_blocks
    t[f"model.{u}.weight"], t[f"model.{u}.bias"] = (4 * g, 2 * g, 3, 3), (2 * g,)  # [in, out, k, k]
    t[f"model.{u + 3}.weight"], t[f"model.{u + 3}.bias"] = (2 * g, g, 3, 3), (g,)
    t[f"model.{u + 7}.weight"], t[f"model.{u + 7}.bias"] = (3, g, 7, 7), (3,)
    return t


def drop_instance_norm_stats(module: nn.Module, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove running_mean / running_var / num_batches_tracked keys that belong to InstanceNorm
    layers of ``module`` (left in old CycleGAN files by a ``track_running_stats=True`` version).

    Only keys whose owner is an InstanceNorm2d of the module are dropped, so a file of another
    architecture still fails the strict load with its real differences.
    """
    norms = {name for name, m in module.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    return {k: v for k, v in sd.items()
            if not (_STAT.search(k) and _STAT.sub("", k) in norms)}


def infer_size(sd: dict[str, torch.Tensor]) -> tuple[int, int]:
    """(ngf, n_blocks) of a generator state dict; upstream's (64, 9) where the file does not say.

    ngf is the output width of the first 7×7 convolution ``model.1``; the blocks are the
    ``model.<i>.conv_block.1`` convolutions, which must be numbered 10, 11, … without gaps. A file
    that does not fit keeps the defaults, so the strict load reports its real differences.
    """
    w = sd.get("model.1.weight")
    ngf = int(w.shape[0]) if isinstance(w, torch.Tensor) and w.dim() == 4 and w.shape[0] > 0 else 64
    blocks = sorted(int(m.group(1)) for k in sd if (m := _BLOCK.match(k)))
    n_blocks = len(blocks) if blocks and blocks == list(range(10, 10 + len(blocks))) else 9
    return ngf, n_blocks


def build_spec(module: ResnetGenerator, *, checkpoint: str | None = None, sha: str | None = None) -> ModelSpec:
    """ModelSpec of a generator: RGB [−1, 1] in and out, same size, sides multiples of 4."""
    name = Path(checkpoint).stem if checkpoint else "untrained"
    ngf = module.model[1].out_channels
    width = "" if ngf == 64 else f", ngf {ngf}"
    return ModelSpec(
        module=module.eval(),
        model_id="cyclegan",
        arch="cyclegan",
        kind="image",
        in_channels=3,
        scale=1.0,
        offset=0.0,
        size_multiple=4,
        min_size=8,  # after two stride-2 convs, ReflectionPad2d(1) needs sides ≥ 2
        value_range=(-1.0, 1.0),
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
        description=(
            f"CycleGAN resnet_{module.n_blocks}blocks generator{width} ({name}). x0 is RGB mapped to "
            "[−1, 1] ((v/255 − 0.5)/0.5), shape (1, 3, H, W) with H and W multiples of 4 (≥ 8). "
            "Output RGB in [−1, 1] (Tanh), same size, shown as (y + 1)/2·255."
        ),
        prepare_fn=lambda image: Prepared(rgb_tensor(image, -1.0, 1.0)),
    )


def load(*, checkpoint: str | Path | None = None, random_weights: bool = False) -> ModelSpec:
    """Load a CycleGAN generator from an official ``<name>.pth`` / ``latest_net_G.pth`` file, or
    from ``examples/weights/toon.pt``; its width and depth come from the file (:func:`infer_size`)."""
    if checkpoint is None:
        if not random_weights:
            raise ModelError(
                "cyclegan needs a checkpoint: download a generator such as style_ukiyoe.pth from "
                "http://efrosgans.eecs.berkeley.edu/cyclegan/pretrained_models/ and set "
                f"model.checkpoint to its path (LinearScope ships a small trained one: {SHIPPED_WEIGHTS})"
            )
        with seeded():
            return build_spec(ResnetGenerator())
    sd = read_state_dict(checkpoint)
    ngf, n_blocks = infer_size(sd)
    with torch.device("meta"):  # no random initialisation of weights the file replaces
        module = ResnetGenerator(ngf=ngf, n_blocks=n_blocks)
    sd = drop_instance_norm_stats(module, sd)
    hint = ""
    if any(re.match(r"model\.\d+\.conv_block\.6\.weight$", k) for k in sd):
        hint = ("This generator was trained with dropout (conv_block.6 is a conv), which the "
                "published CycleGAN models do not use.")
    elif any(k.startswith(("model.model.", "model.0.model")) for k in sd) or "model.1.model.0.weight" in sd:
        hint = "This looks like a U-Net (pix2pix) generator, not CycleGAN's ResnetGenerator."
    load_strict(module, sd, source=str(checkpoint),
                model_name=f"CycleGAN resnet_{n_blocks}blocks (ngf {ngf})", hint=hint, assign=True)
    return build_spec(module, checkpoint=str(checkpoint), sha=sha256_file(checkpoint))
