"""LinearScope's model zoo: ids -> :class:`ModelSpec` (what the interpreter sees of a model).

Model ids (``model.arch`` in a config):

============================  ==============================================================
``bicubic``                   bicubic ×scale upscaler, RGB [0, 1] (the linear reference)
``pixelshuffle``              4-layer PixelShuffle (PyTorch example), Y channel [0, 1]
``edsr`` / ``edsr-baseline``  EDSR ×2/×3/×4 (EDSR-PyTorch releases), RGB 0..255
``cyclegan``                  CycleGAN ``ResnetGenerator`` (any width/depth), RGB [−1, 1]
``digits``                    the shipped digits classifier, 32×32 gray [0, 1], 10 scores
``digits-vgg``, ``-vgg-bn``,  the digits architecture zoo (same task and input; shipped weights;
``-resnet``, ``-densenet``    :mod:`precompute.models.digits_zoo`)
``torchvision:<name>``        ImageNet classifiers of the paper's Table 4 (``weights``,
                              default ``IMAGENET1K_V1``)
``python:FILE.py:FUNC``       your own model (see :mod:`precompute.models.custom`)
``python:pkg.mod:FUNC``
============================  ==============================================================

Each family lives in its own module and builds plain ``nn.Module`` trees whose state-dict names
are those of the official releases, so published checkpoints load with ``strict=True``.
Checkpoints are read with ``torch.load(weights_only=True)``; any problem raises
:class:`ModelError` with one readable message.
"""

from __future__ import annotations

from pathlib import Path

from precompute.models.base import ModelError, ModelSpec, Prepared

#: Fixed model ids (plus the ``torchvision:<name>`` and ``python:...`` families).
ARCHS: dict[str, str] = {
    "bicubic": "bicubic upscaler (linear reference), RGB in [0, 1]; needs scale",
    "pixelshuffle": "4-layer PixelShuffle super-resolution (PyTorch example), Y channel in [0, 1]",
    "edsr": "EDSR ×2/×3/×4 (r32f256, EDSR-PyTorch), RGB 0..255",
    "edsr-baseline": "EDSR-baseline ×2/×3/×4 (r16f64, EDSR-PyTorch), RGB 0..255",
    "cyclegan": "CycleGAN ResnetGenerator (official pretrained .pth, or the shipped toon.pt), RGB in [−1, 1]",
    "digits": "LinearScope's trained digits classifier (shipped weights), 32×32 gray in [0, 1]",
    "digits-vgg": "digits zoo: VGG-like without batch norm (shipped weights), 32×32 gray in [0, 1]",
    "digits-vgg-bn": "digits zoo: VGG-like with batch norm (shipped weights), 32×32 gray in [0, 1]",
    "digits-resnet": "digits zoo: ResNet-like (shipped weights), 32×32 gray in [0, 1]",
    "digits-densenet": "digits zoo: DenseNet-like (shipped weights), 32×32 gray in [0, 1]",
}

#: Prefixes of the open families.
PREFIXES: dict[str, str] = {
    "torchvision:": "torchvision ImageNet classifier, e.g. torchvision:vgg19",
    "python:": "your own builder: python:path/to/file.py:FUNC or python:package.module:FUNC",
}


def _classifier_names() -> list[str]:
    from precompute.models.classifiers import CLASSIFIERS

    return sorted(CLASSIFIERS)


def known_archs() -> list[str]:
    """Every concrete model id (the open ``python:`` family is not listed)."""
    return sorted(ARCHS) + [f"torchvision:{n}" for n in _classifier_names()]


def load_model(
    arch: str,
    *,
    scale: int | None = None,
    checkpoint: str | Path | None = None,
    weights: str | None = None,
    base_dir: Path | None = None,
    preprocess: str = "auto",
    random_weights: bool = False,
    input_size: tuple[int, int] | None = None,
) -> ModelSpec:
    """Build the model ``arch`` and return its ModelSpec (module in eval mode, float32, CPU).

    Args:
        arch: a model id (see the module docstring).
        scale: upscaling factor of SR models; inferred from the checkpoint when None, and an
            error when it disagrees with the checkpoint.
        checkpoint: weights file (already resolved by the config loader), read safely.
        weights: torchvision weights enum name (default ``IMAGENET1K_V1``, the paper's weights).
        base_dir: directory that a relative ``python:FILE.py`` path is relative to.
        preprocess: classifiers only: ``"auto"`` (ImageNet resize/centre-crop unless the image
            already fits the crop size), ``"imagenet"`` (always) or ``"none"`` (normalise only).
        random_weights: build untrained (seeded) weights instead of reading a checkpoint — for
            tests and demos of the machinery only.
        input_size: (height, width) of the run's input, where known: a bare ``nn.Module`` of a
            ``python:`` id is probed at this size (models with a fixed input size, e.g. a
            ``Linear`` head after ``flatten``).

    Raises:
        ModelError: unknown id, bad scale, missing/corrupt/incompatible checkpoint.
    """
    if not isinstance(arch, str) or not arch:
        raise ModelError(f"model id must be a non-empty string, got {arch!r}")
    if checkpoint is not None:
        checkpoint = Path(checkpoint).expanduser()
    if weights is not None and not arch.startswith(("torchvision:", "python:")):
        raise ModelError(f"'weights' applies to torchvision classifiers only, not to {arch}")
    if arch.startswith("python:"):
        from precompute.models import custom

        return custom.load(arch, scale=scale, checkpoint=checkpoint, weights=weights,
                           base_dir=base_dir, input_size=input_size)
    if arch.startswith("torchvision:"):
        from precompute.models import classifiers

        if scale is not None:
            raise ModelError(f"{arch} is a classifier: remove 'scale' from the model section")
        return classifiers.load(
            arch[len("torchvision:"):], checkpoint=checkpoint, weights=weights,
            preprocess=preprocess, random_weights=random_weights,
        )
    if arch == "bicubic":
        from precompute.models import bicubic

        return bicubic.load(scale=scale, checkpoint=checkpoint)
    if arch == "pixelshuffle":
        from precompute.models import pixelshuffle

        return pixelshuffle.load(scale=scale, checkpoint=checkpoint, random_weights=random_weights)
    if arch in ("edsr", "edsr-baseline"):
        from precompute.models import edsr

        return edsr.load(arch, scale=scale, checkpoint=checkpoint, random_weights=random_weights)
    if arch == "cyclegan":
        from precompute.models import cyclegan

        if scale not in (None, 1):
            raise ModelError("cyclegan keeps the image size: remove 'scale' (or set it to 1)")
        return cyclegan.load(checkpoint=checkpoint, random_weights=random_weights)
    if arch == "digits":
        from precompute.models import digits

        if scale is not None:
            raise ModelError("digits is a classifier: remove 'scale' from the model section")
        return digits.load(checkpoint=checkpoint, random_weights=random_weights)
    if arch.startswith("digits-") and arch in ARCHS:
        from precompute.models import digits_zoo

        if scale is not None:
            raise ModelError(f"{arch} is a classifier: remove 'scale' from the model section")
        return digits_zoo.load(arch, checkpoint=checkpoint, random_weights=random_weights)
    raise ModelError(
        f"unknown model id {arch!r}; known: {', '.join(sorted(ARCHS))}, "
        "torchvision:<name> (e.g. torchvision:vgg19), python:FILE.py:FUNC"
    )


__all__ = [
    "ARCHS", "PREFIXES", "ModelError", "ModelSpec", "Prepared", "known_archs", "load_model",
]
