"""Inputs of a run: the device, the model and the image x0, loaded and checked before any work.

Everything the sweep, `verify` and `audit` need about one (model, image) pair: the resolved
device and its precision settings, the model spec, x0 exactly as fed to the network, and the
provenance recorded in the store. Every problem a user can fix (unknown model, bad checkpoint,
unreadable image, crop outside the image, a size the model cannot take) raises
:class:`~precompute.config.UserError` with one clear line, before anything is written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from precompute.environment import env_int
from precompute.errors import UserError
from precompute.text import first_line, regular_file, say, sha256_file  # noqa: F401  (re-exported)






def resolve_device(device: str) -> torch.device:
    if not isinstance(device, str) or not re.fullmatch(r"auto|cpu|cuda|cuda:\d+", device):
        raise UserError(f"device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", env_int("LOCAL_RANK", 0))
        return torch.device("cpu")
    d = torch.device(device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        d = torch.device("cuda", env_int("LOCAL_RANK", 0))  # torchrun: one GPU per process
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {device} requested but CUDA is not available here (use cpu or auto)")
        if (d.index or 0) >= torch.cuda.device_count():
            raise UserError(f"device {device} does not exist ({torch.cuda.device_count()} CUDA devices)")
    return d


def set_precision(device: torch.device, precision: str) -> None:
    """Exact float32 by default: PyTorch would otherwise run convolutions in TF32 on NVIDIA GPUs
    (~1e-3 relative error, performance notes).

    Also deterministic kernels on CUDA: a resumed store must equal an uninterrupted one bitwise,
    and some cuDNN/cuBLAS algorithms (atomic adds in backward passes) vary from run to run. Ops
    without a deterministic CUDA kernel only warn (``warn_only``).
    """
    if device.type == "cuda":
        mode = "ieee" if precision == "ieee" else "tf32"
        torch.backends.cudnn.conv.fp32_precision = mode
        torch.backends.cuda.matmul.fp32_precision = mode
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
        torch.use_deterministic_algorithms(True, warn_only=True)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return "cpu"


@dataclass
class RunInput:
    """Everything about (model, image) that the run and `verify` need: the model's spec, the
    image as the model prepared it (``prepared``, a :class:`precompute.models.base.Prepared`),
    x0 on the run's device and dtype, and the attributes recorded in the store."""

    spec: object
    prepared: object  # models.base.Prepared
    x0: torch.Tensor  # (1, C, H, W) on device, dtype
    device: torch.device
    dtype: torch.dtype
    model_attrs: dict
    image_attrs: dict
    memory: object = None  # precompute.memory.Estimate of one forward, once estimated




def input_size(cfg: dict) -> tuple[int, int] | None:
    """(height, width) of the run's input: the crop's, else the image's (read from its header
    only); None when unknown (reading the image reports the problem later)."""
    crop = cfg.get("crop")
    if crop is not None:
        return int(crop[2]), int(crop[3])
    try:
        from PIL import Image

        regular_file(cfg["image"], "image")  # never open a FIFO or a device (it would block)
        with Image.open(cfg["image"]) as im:
            # orientations 5–8 turn the image a quarter: read_image applies them (EXIF)
            turned = im.getexif().get(0x0112) in (5, 6, 7, 8)
            return (im.width, im.height) if turned else (im.height, im.width)
    except Exception:  # noqa: BLE001 — read_image reports unreadable images in one line
        return None


def load_spec(cfg: dict, base_dir: Path | None, random_weights: bool = False):
    """The ModelSpec of a resolved config dict (on the CPU, float32); UserError if unusable."""
    from precompute.models import ModelError, load_model

    m = cfg["model"]
    try:
        kw = {"random_weights": True} if random_weights else {}  # benchmarks only
        return load_model(m["arch"], scale=m.get("scale"), checkpoint=m.get("checkpoint"),
                          weights=m.get("weights"), base_dir=base_dir,
                          preprocess=m.get("preprocess", "auto"), input_size=input_size(cfg),
                          **kw)
    except ModelError as e:
        raise UserError(str(e)) from None


#: Modes every model's preprocessing converts to RGB correctly (8 bits per channel).
EIGHT_BIT_MODES = {"1", "L", "P", "LA", "PA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr"}


#: EXIF tag of the orientation (1: as stored; 2–8: mirrored and/or turned by 90° steps)
EXIF_ORIENTATION = 0x0112


def upright(im):
    """A copy of a loaded PIL image turned as its EXIF orientation says, which is how every
    viewer shows it (a phone's portrait JPEG is stored sideways with orientation 6), by Pillow's
    ``ImageOps.exif_transpose``; ``info["orientation"]`` is the orientation applied (1 when the
    file has none, or a value outside 1–8, which viewers ignore too)."""
    from PIL import ImageOps

    try:
        value = int(im.getexif().get(EXIF_ORIENTATION, 1))
    except (TypeError, ValueError, OSError, SyntaxError):  # a damaged EXIF block: as stored
        value = 1
    value = value if 1 <= value <= 8 else 1
    image = ImageOps.exif_transpose(im) if value != 1 else im.copy()
    image.info["orientation"] = value
    return image


def read_image(path: Path):
    """Decode an image file into a PIL image of an 8-bit mode (see EIGHT_BIT_MODES), turned
    upright by its EXIF orientation (:func:`upright`).

    Pillow keeps 16-bit greyscale as ``I;16`` and float TIFFs as ``F``, which a plain
    ``convert("RGB")`` clips to white or black; here they are scaled instead: 16-bit values
    (``I;16*``, or ``I`` within 0…65535) by 255/65535, floats (``F``) read as [0, 1] by 255, both
    rounded to 8 bits, the precision every model's preprocessing takes. Floats outside [0, 1] or
    not finite, and other modes, are refused. Pillow's decompression-bomb limit (images claiming
    more than ``2·Image.MAX_IMAGE_PIXELS`` pixels) is a one-line error.
    """
    import numpy as np
    from PIL import Image

    regular_file(path, "image")
    try:
        with Image.open(path) as im:
            im.load()
            image = upright(im)
    except Image.DecompressionBombError as e:
        raise UserError(f"cannot read image {path}: {e} (Pillow's decompression-bomb limit)") from None
    except (OSError, ValueError, SyntaxError) as e:  # SyntaxError: some Pillow header parsers
        raise UserError(f"cannot read image {path}: {first_line(e)}") from None
    mode = image.mode
    if mode in EIGHT_BIT_MODES:
        return image
    a = np.asarray(image)
    if mode.startswith("I;16") or (mode == "I" and a.size and 0 <= a.min() and a.max() <= 65535):
        scaled = a.astype(np.float64) * (255 / 65535)
    elif mode == "F":
        if not np.isfinite(a).all() or (a.size and (a.min() < 0 or a.max() > 1)):
            lo, hi = (float(np.nanmin(a)), float(np.nanmax(a))) if np.isfinite(a).any() else (0, 0)
            raise UserError(
                f"image {path} holds floating-point values in [{lo:.4g}, {hi:.4g}]"
                f"{'' if np.isfinite(a).all() else ' and NaN/Inf'}; LinearScope reads float images "
                "as [0, 1]: rescale it or save it as an 8- or 16-bit PNG")
        scaled = a.astype(np.float64) * 255
    else:
        raise UserError(f"image {path} has the pixel mode {mode!r}, which LinearScope does not "
                        "read; save it as an 8- or 16-bit PNG")
    return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L")


def read_x0(spec, cfg: dict):
    """The (cropped) image of a config dict made ready for ``spec``: (models.base.Prepared, crop,
    the EXIF orientation applied).

    Checks that the crop fits, that the model takes the size, and the channel count of x0."""
    from precompute.models import ModelError

    image_path = Path(cfg["image"])
    image = read_image(image_path)
    orientation = image.info.get("orientation", 1)
    crop = cfg.get("crop")  # in pixels of the upright image
    if crop is not None:
        top, left, h, w = crop
        if top + h > image.height or left + w > image.width:
            raise UserError(
                f"crop {list(crop)} ([top, left, height, width]) does not fit in {image_path.name}, "
                f"which is {image.height}×{image.width} (height×width)"
            )
        image = image.crop((left, top, left + w, top + h))
    try:
        spec.check_input_size(image.height, image.width)
    except ModelError as e:
        raise UserError(f"{image_path.name}: {e}") from None
    try:
        prepared = spec.prepare(image)
    except (ModelError, ValueError, OSError) as e:
        raise UserError(f"{spec.model_id} cannot prepare {image_path.name}: {first_line(e)}") from None
    x0 = prepared.x0
    if x0.dim() != 4 or x0.shape[0] != 1 or x0.shape[1] != spec.in_channels:
        raise UserError(
            f"{spec.model_id} expects {spec.in_channels}-channel input, but {image_path.name} gave "
            f"an input of shape {tuple(x0.shape)}"
        )
    return prepared, crop, orientation


def prepare(cfg: dict, base_dir: Path | None, device: torch.device,
            random_weights: bool = False) -> RunInput:
    """Load the model and the (cropped) image of a resolved config dict (as stored in a store).

    Every problem (unknown model, bad checkpoint, unreadable image, crop outside the image, a
    size or channel count the model cannot take) raises UserError before any work.
    """
    m = cfg["model"]
    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    spec = load_spec(cfg, base_dir, random_weights)
    image_path = Path(cfg["image"])
    prepared, crop, orientation = read_x0(spec, cfg)
    x0 = prepared.x0
    spec.module.to(device=device, dtype=dtype).eval()
    x0 = x0.to(device=device, dtype=dtype)
    model_attrs = {
        "id": spec.model_id,
        "arch": m["arch"],
        "scale": spec.scale,
        "checkpoint": m.get("checkpoint"),
        "checkpoint_sha256": getattr(spec, "checkpoint_sha256", None)
        or (sha256_file(Path(m["checkpoint"])) if m.get("checkpoint") else None),
        "kind": spec.kind,
        "labels": spec.labels,
        "description": spec.description,
    }
    image_attrs = {
        "path": str(image_path),
        "sha256": sha256_file(image_path),
        "crop": list(crop) if crop is not None else None,
        "size": [int(x0.shape[2]), int(x0.shape[3])],
        "orientation": orientation,  # EXIF orientation applied before the crop (FORMAT.md)
    }
    return RunInput(spec, prepared, x0, device, dtype, model_attrs, image_attrs)


def forward_checked(prep: RunInput) -> torch.Tensor:
    """f(x0), turning a crash of the network on this input into one clear UserError."""
    try:
        with torch.no_grad():
            y = prep.spec.module(prep.x0)
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 — any failure here means "this input does not fit"
        raise UserError(
            f"{prep.spec.model_id} cannot take this image (input shape {tuple(prep.x0.shape)}): "
            f"{first_line(e)}"
        ) from None
    if not torch.isfinite(y).all():
        raise UserError(f"{prep.spec.model_id} produced NaN/Inf on this image; nothing was stored")
    return y




def check_memory(prep: RunInput, res) -> bool:
    """Refuse, with the numbers, a run whose forward or smallest pass cannot fit in memory
    (:mod:`precompute.memory`); called before the first real forward. False when the model
    could not be estimated (it does not run on fake tensors): then the real forward decides."""
    from precompute import memory

    a = res.analyses(prep.spec.kind != "image")
    est = prep.memory = memory.estimate(prep.spec.module, prep.x0)
    what = f"{prep.spec.model_id} on x0 {'×'.join(map(str, prep.x0.shape[1:]))}"
    memory.check(est, what=what, device=prep.device, batch=res.config.batch,
                 rows=a.rows is not None or a.svd is not None or a.classify is not None,
                 columns=a.columns is not None or a.svd is not None)
    return est is not None


def check_images(res, always: bool = False) -> None:
    """Check every image of a run with several images (or of any run, ``always``: one of a
    config's several runs) before any work: readable, crop inside, a size and channel count the
    model takes, a forward that fits in memory. One model is loaded and reused (a dataset may
    have hundreds of images); nothing is kept per image."""
    if len(res.images) < 2 and not always:
        return
    c = res.config
    device = resolve_device(c.device)
    dtype = torch.float64 if c.dtype == "float64" else torch.float32
    spec = load_spec(res.as_dict(res.images[0]), res.config_path.parent)
    spec.module.to(dtype=dtype).eval()
    checked: set[tuple] = set()
    for image in res.images:
        prepared, crop, _ = read_x0(spec, res.as_dict(image))
        x0 = prepared.x0.to(dtype)
        if tuple(x0.shape) in checked:
            continue
        checked.add(tuple(x0.shape))
        prep = RunInput(spec, prepared, x0, device, dtype, {}, {})
        if not check_memory(prep, res):
            forward_checked(prep)  # the real forward names what is wrong with this size
