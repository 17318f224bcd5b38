"""torchvision ImageNet classifiers of the paper's Table 4, with the paper's IMAGENET1K_V1 weights.

``torchvision:<name>`` for AlexNet, VGG11/13/16/19 (± ``_bn``), ResNet18–152, SqueezeNet 1.0/1.1,
DenseNet121/161/169/201 and Inception v3. The module is torchvision's own (built with
``weights=None``, then filled strictly from a local file), so its state-dict names are those of the
published ``.pth`` files. The default weights are ``IMAGENET1K_V1`` — the 2019 weights the paper
used — even where torchvision's ``DEFAULT`` is newer (ResNet50/101/152 ``IMAGENET1K_V2``);
``weights:`` picks another enum member of the same model.

Weights are never downloaded: ``model.checkpoint`` names a file, or else the file must already be
in torch's hub cache (``$TORCH_HOME/hub/checkpoints/<file>``); otherwise the error says which file
to put where. Labels are torchvision's ImageNet category names (``weights.meta["categories"]``,
shipped with torchvision).

x0 is the *normalised* image ``(v − mean) / std`` (ImageNet mean/std), shape (1, 3, H, W): the
interpreter is the network exactly as torchvision runs it. Preprocessing (``preprocess``):

* ``"auto"`` (default): the weights' resize + centre crop (256/224; Inception 342/299) when the
  image is larger than the crop size in either side, else the image as it is. LinearScope users
  often analyse small crops (e.g. 64×64), which this keeps at their own size and pixels;
* ``"imagenet"``: always resize + crop, as torchvision's ``weights.transforms()``;
* ``"none"``: never; only normalise (the image must be at least the model's minimum size).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from precompute.models.base import ModelError, ModelSpec, Prepared
from precompute.models.common import seeded
from precompute.models.checkpoint import load_strict, read_state_dict, sha256_file

DEFAULT_WEIGHTS = "IMAGENET1K_V1"
PREPROCESS = ("auto", "imagenet", "none")


@dataclass(frozen=True)
class Classifier:
    """A Table-4 classifier: torchvision builder name and its 2019-era V1 file name (if renamed)."""

    name: str
    legacy_file: str | None = None


_LEGACY = {
    "alexnet": "alexnet-owt-4df8aa71.pth",
    "vgg11": "vgg11-bbd30ac9.pth", "vgg13": "vgg13-c768596a.pth",
    "resnet18": "resnet18-5c106cde.pth", "resnet34": "resnet34-333f7ec4.pth",
    "resnet50": "resnet50-19c8e357.pth", "resnet101": "resnet101-5d3b4d8f.pth",
    "resnet152": "resnet152-b121ed2d.pth",
    "squeezenet1_0": "squeezenet1_0-a815701f.pth", "squeezenet1_1": "squeezenet1_1-f364aa15.pth",
    "inception_v3": "inception_v3_google-1a9a5a14.pth",
}
_NAMES = (
    ["alexnet"]
    + [f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")]
    + [f"resnet{d}" for d in (18, 34, 50, 101, 152)]
    + ["squeezenet1_0", "squeezenet1_1"]
    + [f"densenet{d}" for d in (121, 161, 169, 201)]
    + ["inception_v3"]
)
#: name -> Classifier, the paper's Table 4.
CLASSIFIERS: dict[str, Classifier] = {n: Classifier(n, _LEGACY.get(n)) for n in _NAMES}

# torchvision's DenseNet files use "norm.1" where the module has "norm1" (see its _load_state_dict).
_DENSENET_OLD = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$"
)


def rename_densenet_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old-style DenseNet keys (``denselayer1.norm.1.weight``) -> module names (``norm1.weight``)."""
    out = {}
    for k, v in sd.items():
        m = _DENSENET_OLD.match(k)
        out[m.group(1) + m.group(2) if m else k] = v
    return out


def _weights_enum(name: str, weights: str | None):
    import torchvision.models as tvm

    try:
        enum = tvm.get_model_weights(name)
    except Exception as e:
        raise ModelError(f"torchvision has no weights for {name}: {e}") from e
    wname = weights or DEFAULT_WEIGHTS
    wname = wname.split(".")[-1]  # accept "VGG19_Weights.IMAGENET1K_V1"
    if wname == "DEFAULT":
        wname = enum.DEFAULT.name
    try:
        return enum[wname]
    except KeyError:
        raise ModelError(
            f"torchvision:{name} has no weights {wname!r}; choose one of "
            f"{', '.join(m.name for m in enum)}"
        ) from None


def find_weights_file(name: str, w) -> Path | None:
    """The weights file in torch's hub cache (current or 2019-era name), or None."""
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = [Path(w.url).name]
    legacy = CLASSIFIERS[name].legacy_file
    if legacy and w.name == DEFAULT_WEIGHTS:
        candidates.append(legacy)
    for c in candidates:
        if (cache / c).is_file():
            return cache / c
    return None


def build_module(name: str, num_classes: int = 1000) -> torch.nn.Module:
    """torchvision's module for ``name`` with untrained weights, ready for a strict load."""
    import torchvision.models as tvm

    kwargs: dict = {"weights": None, "num_classes": num_classes}
    if name == "inception_v3":
        # As torchvision's builder with weights: the file has AuxLogits and expects transform_input.
        kwargs.update(aux_logits=True, init_weights=False, transform_input=True)
    return tvm.get_model(name, **kwargs)


def _finish(name: str, module: torch.nn.Module) -> torch.nn.Module:
    if name == "inception_v3":
        # AuxLogits only run in training; drop them as torchvision does for aux_logits=False.
        module.aux_logits = False
        module.AuxLogits = None
    return module.eval()


def _make_prepare(transform, preprocess: str):
    from torchvision.transforms import functional as TF

    crop = transform.crop_size[0]
    mean = torch.tensor(transform.mean, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(transform.std, dtype=torch.float32).view(3, 1, 1)

    def prepare(image) -> Prepared:
        image = image.convert("RGB")
        w, h = image.size
        resized = preprocess == "imagenet" or (preprocess == "auto" and (h > crop or w > crop))
        if resized:
            x = transform(image)  # resize (bilinear, antialias) -> centre crop -> [0,1] -> normalise
        else:
            x = (TF.pil_to_tensor(image).to(torch.float32) / 255.0 - mean) / std
        return Prepared(x.unsqueeze(0).contiguous().to(torch.float32), {"imagenet_resized": resized})

    def display_input(p: Prepared) -> np.ndarray:
        t = (p.x0[0].detach().to("cpu", torch.float64) * std.double() + mean.double()) * 255.0
        return t.round().clamp(0, 255).permute(1, 2, 0).to(torch.uint8).numpy().copy()

    return prepare, display_input, mean, std


def load(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    weights: str | None = None,
    preprocess: str = "auto",
    random_weights: bool = False,
) -> ModelSpec:
    """Load ``torchvision:<name>`` with strictly-checked weights from a file or the hub cache."""
    if name not in CLASSIFIERS:
        raise ModelError(
            f"torchvision:{name} is not one of the supported classifiers: {', '.join(CLASSIFIERS)}"
        )
    if preprocess not in PREPROCESS:
        raise ModelError(f"preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")
    w = _weights_enum(name, weights)
    if not w.meta.get("categories"):
        # VGG16 IMAGENET1K_FEATURES: a feature extractor without a trained classifier head.
        raise ModelError(
            f"torchvision:{name} weights {w.name} have no ImageNet classifier (no category names); "
            f"use {DEFAULT_WEIGHTS}"
        )
    categories = list(w.meta["categories"])
    transform = w.transforms()
    sha = None
    if checkpoint is None and not random_weights:
        checkpoint = find_weights_file(name, w)
        if checkpoint is None:
            cache = Path(torch.hub.get_dir()) / "checkpoints"
            raise ModelError(
                f"no weights for torchvision:{name} ({w.name}): LinearScope does not download. "
                f"Put {Path(w.url).name} (from {w.url}) in {cache}/, or set model.checkpoint "
                "to the file's path"
            )
    if checkpoint is not None:
        sd = read_state_dict(checkpoint)
        if name.startswith("densenet"):
            sd = rename_densenet_keys(sd)
        # Built on the meta device: VGG19's random initialisation alone takes seconds on a CPU.
        with torch.device("meta"):
            module = build_module(name, len(categories))
        load_strict(module, sd, source=str(checkpoint), model_name=f"torchvision {name}", assign=True)
        sha = sha256_file(checkpoint)
    else:
        with seeded():
            module = build_module(name, len(categories))
    module = _finish(name, module)
    prepare, display_input, mean, std = _make_prepare(transform, preprocess)
    lo = float(((0 - mean) / std).min())
    hi = float(((1 - mean) / std).max())
    min_size = int(max(w.meta.get("min_size", (1, 1))))
    crop = transform.crop_size[0]
    resize = transform.resize_size[0]
    return ModelSpec(
        module=module,
        model_id=f"torchvision:{name}",
        arch="torchvision",
        kind="vector",
        in_channels=3,
        scale=None,
        offset=0.0,
        size_multiple=1,
        min_size=min_size,
        value_range=(lo, hi),
        labels=categories,
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=sha,
        options={"weights": w.name, "preprocess": preprocess},
        description=(
            f"torchvision {name}, {w.name} weights ({len(categories)} ImageNet classes, scores "
            f"without softmax). x0 = (RGB/255 − mean)/std with ImageNet mean/std, shape "
            f"(1, 3, H, W), H, W ≥ {min_size}. Preprocessing '{preprocess}': "
            + {
                "auto": f"resize {resize} + centre crop {crop} only for images larger than {crop}.",
                "imagenet": f"resize {resize} + centre crop {crop}.",
                "none": "none (normalisation only).",
            }[preprocess]
        ),
        prepare_fn=prepare,
        display_input_fn=display_input,
        pixel_norm=(tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)),
    )
