"""EDSR and EDSR-baseline super-resolution (Lim et al. 2017), as released in EDSR-PyTorch.

Module tree and state-dict names of ``sanghyun-son/EDSR-PyTorch`` (``src/model/edsr.py``), so
the official files (``edsr_baseline_x{2,3,4}-*.pt``: 16 blocks × 64 features, res_scale 1;
``edsr_x{2,3,4}-*.pt``: 32 blocks × 256 features, res_scale 0.1) load with ``strict=True``:

    sub_mean → head.0 → body.0..R−1 (ResBlocks) → body.R (+ global skip) → tail.0 (upsampler)
    → tail.1 → add_mean

Input and output are RGB in 0..255 (``rgb_range`` 255), the mean shift being part of the network
(``sub_mean`` / ``add_mean``, taken from the checkpoint). Unlike upstream's loader, a checkpoint of
another scale or size is an error, not a silently random tail.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from precompute.models.base import ModelError, ModelSpec, Prepared
from precompute.models.checkpoint import load_strict, read_state_dict, sha256_file
from precompute.models.common import positive_int_scale, rgb_tensor, seeded

#: (n_resblocks, n_feats, res_scale) of each released variant.
VARIANTS = {"edsr-baseline": (16, 64, 1.0), "edsr": (32, 256, 0.1)}
SCALES = (2, 3, 4)
#: DIV2K RGB mean of EDSR-PyTorch (``rgb_mean``), std 1.
RGB_MEAN = (0.4488, 0.4371, 0.4040)
#: Official release file names (https://cv.snu.ac.kr/research/EDSR/models/).
RELEASES = {
    ("edsr-baseline", 2): "edsr_baseline_x2-1bc95232.pt",
    ("edsr-baseline", 3): "edsr_baseline_x3-abf2a44e.pt",
    ("edsr-baseline", 4): "edsr_baseline_x4-6b446fab.pt",
    ("edsr", 2): "edsr_x2-0edfb8a3.pt",
    ("edsr", 3): "edsr_x3-ea3ef2c6.pt",
    ("edsr", 4): "edsr_x4-4f62e9ef.pt",
}


def _conv(cin: int, cout: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=True)


class MeanShift(nn.Conv2d):
    """1×1 convolution adding ``sign · rgb_range · mean / std`` per channel (EDSR's MeanShift).

    Its weight and bias are state-dict entries (``sub_mean.*``, ``add_mean.*``) and are always
    taken from the checkpoint.
    """

    def __init__(self, rgb_range: float = 255.0, mean=RGB_MEAN, std=(1.0, 1.0, 1.0), sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        std_t = torch.tensor(std, dtype=torch.float32)
        with torch.no_grad():
            self.weight.copy_(torch.eye(3).view(3, 3, 1, 1) / std_t.view(3, 1, 1, 1))
            self.bias.copy_(sign * rgb_range * torch.tensor(mean, dtype=torch.float32) / std_t)
        for p in self.parameters():
            p.requires_grad_(False)


class ResBlock(nn.Module):
    """conv · ReLU · conv, scaled by ``res_scale`` and added to the input (no batch norm)."""

    def __init__(self, n_feats: int, act: nn.Module, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(_conv(n_feats, n_feats), act, _conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x).mul(self.res_scale) + x


class Upsampler(nn.Sequential):
    """×2^k: k × [conv F→4F, PixelShuffle(2)]; ×3: [conv F→9F, PixelShuffle(3)]."""

    def __init__(self, scale: int, n_feats: int):
        layers: list[nn.Module] = []
        if scale == 3:
            layers += [_conv(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        elif scale & (scale - 1) == 0:
            for _ in range(scale.bit_length() - 1):
                layers += [_conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        else:
            raise ModelError(f"EDSR upsamples by 2, 3, 4 (powers of 2), not {scale}")
        super().__init__(*layers)


class EDSR(nn.Module):
    """EDSR super-resolution network (upstream module tree and key names).

    As upstream, a single in-place ``nn.ReLU`` object is shared by every ResBlock: it appears once
    in ``named_modules()`` (as ``body.0.body.1``) and a hook on it fires ``n_resblocks`` times.
    """

    def __init__(self, scale: int = 4, n_resblocks: int = 16, n_feats: int = 64,
                 res_scale: float = 1.0, rgb_range: float = 255.0):
        super().__init__()
        self.scale = scale
        self.n_resblocks, self.n_feats, self.res_scale = n_resblocks, n_feats, res_scale
        act = nn.ReLU(True)
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(_conv(3, n_feats))
        self.body = nn.Sequential(
            *[ResBlock(n_feats, act, res_scale) for _ in range(n_resblocks)], _conv(n_feats, n_feats)
        )
        self.tail = nn.Sequential(Upsampler(scale, n_feats), _conv(n_feats, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x  # global skip
        return self.add_mean(self.tail(x))


def expected_keys(scale: int, n_resblocks: int, n_feats: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape table of an EDSR-PyTorch checkpoint (from the documented layout)."""
    F = n_feats
    t: dict[str, tuple[int, ...]] = {}
    for m in ("sub_mean", "add_mean"):
        t[f"{m}.weight"], t[f"{m}.bias"] = (3, 3, 1, 1), (3,)
    t["head.0.weight"], t["head.0.bias"] = (F, 3, 3, 3), (F,)
    for i in range(n_resblocks):
        for j in (0, 2):
            t[f"body.{i}.body.{j}.weight"], t[f"body.{i}.body.{j}.bias"] = (F, F, 3, 3), (F,)
    t[f"body.{n_resblocks}.weight"], t[f"body.{n_resblocks}.bias"] = (F, F, 3, 3), (F,)
    if scale == 3:
        t["tail.0.0.weight"], t["tail.0.0.bias"] = (9 * F, F, 3, 3), (9 * F,)
    else:
        for k in range(scale.bit_length() - 1):
            t[f"tail.0.{2 * k}.weight"], t[f"tail.0.{2 * k}.bias"] = (4 * F, F, 3, 3), (4 * F,)
    t["tail.1.weight"], t["tail.1.bias"] = (3, F, 3, 3), (3,)
    return t


def inspect_state_dict(sd: dict[str, torch.Tensor]) -> dict | None:
    """Guess (scale, n_resblocks, n_feats) of an EDSR-like state_dict, or None."""
    head = sd.get("head.0.weight")
    up = sd.get("tail.0.0.weight")
    if head is None or up is None or head.dim() != 4 or up.dim() != 4:
        return None
    F = head.shape[0]
    blocks = {int(m.group(1)) for k in sd if (m := re.match(r"body\.(\d+)\.body\.0\.weight$", k))}
    n = len(blocks)
    ratio = up.shape[0] // max(F, 1)
    if ratio == 9:
        scale = 3
    elif ratio == 4:
        scale = 2 ** sum(1 for k in sd if re.match(r"tail\.0\.\d+\.weight$", k))
    else:
        return None
    return {"scale": scale, "n_resblocks": n, "n_feats": F}


def _name(n_resblocks: int, n_feats: int) -> str:
    for arch, (r, f, _) in VARIANTS.items():
        if (r, f) == (n_resblocks, n_feats):
            return "EDSR-baseline" if arch == "edsr-baseline" else "EDSR"
    return f"an EDSR-like network ({n_resblocks} blocks, {n_feats} features)"


def build_spec(module: EDSR, arch: str, *, checkpoint: str | None = None, sha: str | None = None) -> ModelSpec:
    """The ModelSpec of an EDSR module: RGB 0..255 in and out, ×scale, offset 0."""
    s = module.scale
    label = "EDSR-baseline" if arch == "edsr-baseline" else "EDSR"
    return ModelSpec(
        module=module.eval(),
        model_id=arch,
        arch=arch,
        kind="image",
        in_channels=3,
        scale=float(s),
        offset=0.0,
        value_range=(0.0, 255.0),
        checkpoint=checkpoint,
        checkpoint_sha256=sha,
        description=(
            f"{label} ×{s} ({module.n_resblocks} residual blocks, {module.n_feats} features, "
            f"res_scale {module.res_scale:g}; EDSR-PyTorch). x0 is RGB in 0..255 (not normalised; "
            "the DIV2K mean is subtracted and added back inside the network by sub_mean/add_mean), "
            f"shape (1, 3, H, W), any size. Output RGB 0..255 at ×{s}, clipped and rounded for display only."
        ),
        prepare_fn=lambda image: Prepared(rgb_tensor(image, 0.0, 255.0)),
    )


def load(arch: str, *, scale: int | None = None, checkpoint: str | Path | None = None,
         random_weights: bool = False) -> ModelSpec:
    """Load ``edsr`` / ``edsr-baseline`` from an EDSR-PyTorch state_dict (strict)."""
    n_resblocks, n_feats, res_scale = VARIANTS[arch]
    label = _name(n_resblocks, n_feats)
    if checkpoint is None:
        if not random_weights:
            s = scale if scale in SCALES else 4
            raise ModelError(
                f"{arch} needs a checkpoint: download {RELEASES[(arch, s)]} from "
                "https://cv.snu.ac.kr/research/EDSR/models/ and set model.checkpoint to its path"
            )
        s = positive_int_scale(arch, 4 if scale is None else scale, SCALES)
        with seeded():
            return build_spec(EDSR(s, n_resblocks, n_feats, res_scale), arch)
    sd = read_state_dict(checkpoint)
    found = inspect_state_dict(sd)
    if scale is not None:
        s = positive_int_scale(arch, scale, SCALES)
    elif found is not None and found["scale"] in SCALES:
        s = found["scale"]
    else:
        first = ", ".join(f'"{k}"' for k in list(sd)[:4]) + (", …" if len(sd) > 4 else "")
        raise ModelError(f"{checkpoint} is not an EDSR checkpoint: it has no 'head.0.weight' and "
                         f"'tail.0.0.weight' (its keys: {first or 'none'})")
    if found is not None:
        what = f"{_name(found['n_resblocks'], found['n_feats'])} ×{found['scale']}"
        if (found["n_resblocks"], found["n_feats"]) != (n_resblocks, n_feats):
            other = [a for a, v in VARIANTS.items() if v[:2] == (found["n_resblocks"], found["n_feats"])]
            fix = f" (use arch: {other[0]})" if other else ""
            raise ModelError(
                f"{checkpoint} holds {what} ({found['n_resblocks']} blocks, {found['n_feats']} "
                f"features), not {label} ({n_resblocks} blocks, {n_feats} features){fix}"
            )
        if found["scale"] != s:
            raise ModelError(
                f"{checkpoint} is a ×{found['scale']} checkpoint but scale {s} was asked; set "
                f"scale: {found['scale']} or use {RELEASES[(arch, s)]}"
            )
    with torch.device("meta"):  # no random initialisation of weights the file replaces
        module = EDSR(s, n_resblocks, n_feats, res_scale)
    load_strict(module, sd, source=str(checkpoint), model_name=f"{label} ×{s}", assign=True)
    return build_spec(module, arch, checkpoint=str(checkpoint), sha=sha256_file(checkpoint))
