"""Inputs of a run: the device, the model and the image x0, loaded and checked before any work.

Everything the sweep, `verify` and `audit` need about one (model, image) pair: the resolved
device and its precision settings, the model spec, x0 exactly as fed to the network, and the
provenance recorded in the store. Every problem a user can fix (unknown model, bad checkpoint,
unreadable image, crop outside the image, a size the model cannot take) raises
:class:`~precompute.config.UserError` with one clear line, before anything is written.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from precompute.config import UserError


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)




def resolve_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    d = torch.device(device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        d = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # torchrun: one GPU per process
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
class Prepared:
    """Everything about (model, image) that the run and `verify` need."""

    spec: object
    prepared: object  # models.base.Prepared
    x0: torch.Tensor  # (1, C, H, W) on device, dtype
    device: torch.device
    dtype: torch.dtype
    model_attrs: dict
    image_attrs: dict


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def prepare(cfg: dict, base_dir: Path | None, device: torch.device,
            random_weights: bool = False) -> Prepared:
    """Load the model and the (cropped) image of a resolved config dict (as stored in a store).

    Every problem (unknown model, bad checkpoint, unreadable image, crop outside the image, a
    size or channel count the model cannot take) raises UserError before any work.
    """
    from PIL import Image

    from precompute.models import ModelError, load_model

    m = cfg["model"]
    dtype = torch.float64 if cfg["dtype"] == "float64" else torch.float32
    try:
        kw = {"random_weights": True} if random_weights else {}  # benchmarks only
        spec = load_model(m["arch"], scale=m.get("scale"), checkpoint=m.get("checkpoint"),
                          weights=m.get("weights"), base_dir=base_dir,
                          preprocess=m.get("preprocess", "auto"), **kw)
    except ModelError as e:
        raise UserError(str(e)) from None
    image_path = Path(cfg["image"])
    try:
        with Image.open(image_path) as im:
            im.load()
            image = im.copy()
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read image {image_path}: {first_line(e)}") from None
    crop = cfg.get("crop")
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
    }
    return Prepared(spec, prepared, x0, device, dtype, model_attrs, image_attrs)


def forward_checked(prep: Prepared) -> torch.Tensor:
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


