"""Bring your own model: ``python:path/to/file.py:FUNC`` or ``python:package.module:FUNC``.

``FUNC`` is called with the keyword arguments it declares among ``scale``, ``checkpoint`` and
``weights`` (those the config gives; others keep FUNC's defaults) and returns either

* an ``nn.Module`` — LinearScope then assumes the default description: x0 is the image as RGB in
  [0, 1], shape (1, 3, H, W); it runs one probe forward on a zero image of the run's input size
  (32×32 where unknown) to learn whether the
  output is an image (4-D: ``kind="image"``, ``scale`` = output height / input height, offset 0,
  shown as RGB clipped to [0, 1] — 1-channel outputs as gray) or a vector (2-D: ``kind="vector"``);
* or a :class:`~precompute.models.base.ModelSpec` — full control of pre/post-processing, value
  range, geometry and size constraints (see ``examples/custom_model.py``).

The file is imported as ordinary Python code: only name files you trust. Weights are the model's
own business; use :func:`precompute.models.checkpoint.read_state_dict` to read them safely.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

import torch
from torch import nn

from precompute.models.base import ModelError, ModelSpec
from precompute.models.checkpoint import sha256_file


def parse(model_id: str) -> tuple[str, str]:
    """``python:TARGET:FUNC`` -> (TARGET, FUNC); TARGET is a ``.py`` path or a dotted module."""
    body = model_id[len("python:"):] if model_id.startswith("python:") else model_id
    target, sep, func = body.rpartition(":")
    if not sep or not target or not func.isidentifier():
        raise ModelError(
            f"bad model id {model_id!r}: expected python:path/to/file.py:FUNC or "
            "python:package.module:FUNC"
        )
    return target, func


def _import(target: str, base_dir: Path | None):
    if target.endswith(".py"):
        path = Path(target).expanduser()
        if not path.is_absolute():
            path = (Path(base_dir) if base_dir is not None else Path.cwd()) / path
        path = path.resolve()
        if not path.is_file():
            raise ModelError(f"model file not found: {path}")
        name = f"linearscope_user_{abs(hash(str(path)))}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look the module up by name
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(name, None)
            raise ModelError(f"importing {path} failed: {type(e).__name__}: {e}") from e
        return module, str(path)
    try:
        return importlib.import_module(target), target
    except ImportError as e:
        raise ModelError(f"cannot import module {target!r}: {e}") from e


def probe(module: nn.Module, model_id: str,
          size: int | tuple[int, int] | None = None) -> tuple[str, float | None]:
    """Run a zero RGB image of ``size`` (height, width: the run's input size; 32×32 when
    unknown) through ``module``: ("image", scale) or ("vector", None)."""
    h, w = (32, 32) if size is None else (size, size) if isinstance(size, int) else size
    p = next(iter(module.parameters()), None)
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    device = p.device if p is not None else torch.device("cpu")
    with torch.no_grad():
        try:
            y = module(torch.zeros(1, 3, h, w, dtype=dtype, device=device))
        except Exception as e:
            if size is not None:  # the run's own input: the same words as the run's forward
                text = str(e).strip().splitlines()
                raise ModelError(
                    f"{model_id} cannot take this image (input shape (1, 3, {h}, {w})): "
                    f"{type(e).__name__}" + (f": {text[0]}" if text else "")) from e
            raise ModelError(
                f"{model_id}: a probe forward on a (1, 3, {h}, {w}) RGB image failed "
                f"({type(e).__name__}: {e}); return a ModelSpec to describe the input instead"
            ) from e
    if not isinstance(y, torch.Tensor):
        raise ModelError(f"{model_id}: the module must return one tensor, got {type(y).__name__}")
    if y.dim() == 4:
        return "image", y.shape[-2] / h
    if y.dim() == 2:
        return "vector", None
    raise ModelError(f"{model_id}: output shape {tuple(y.shape)} is neither (1, C, H, W) nor (1, K)")


def load(
    model_id: str,
    *,
    scale: int | None = None,
    checkpoint: str | Path | None = None,
    weights: str | None = None,
    base_dir: Path | None = None,
    input_size: tuple[int, int] | None = None,
) -> ModelSpec:
    """Import and call the user's builder; return its ModelSpec (module in eval mode). A bare
    ``nn.Module`` is probed at ``input_size`` (height, width of the run's x0) to learn its kind."""
    target, func_name = parse(model_id)
    mod, where = _import(target, base_dir)
    func = getattr(mod, func_name, None)
    if not callable(func):
        raise ModelError(f"{where} has no function {func_name!r}")
    given = {"scale": scale, "checkpoint": None if checkpoint is None else str(checkpoint),
             "weights": weights}
    params = inspect.signature(func).parameters
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in given.items() if v is not None and (takes_all or k in params)}
    ignored = [k for k, v in given.items() if v is not None and k not in kwargs]
    if ignored:
        raise ModelError(
            f"{where}:{func_name} does not take {', '.join(ignored)}, which the config sets"
        )
    try:
        built = func(**kwargs)
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{where}:{func_name} failed: {type(e).__name__}: {e}") from e
    canonical = f"python:{where}:{func_name}"
    sha = sha256_file(checkpoint) if checkpoint is not None and Path(checkpoint).is_file() else None
    if isinstance(built, ModelSpec):
        built.module.eval()
        built.model_id = canonical
        built.arch = built.arch or "python"
        if built.checkpoint is None and checkpoint is not None:
            built.checkpoint, built.checkpoint_sha256 = str(checkpoint), sha
        return built
    if not isinstance(built, nn.Module):
        raise ModelError(
            f"{where}:{func_name} must return an nn.Module or a ModelSpec, got {type(built).__name__}"
        )
    built.eval()
    kind, s = probe(built, canonical, input_size)
    return ModelSpec(
        module=built,
        model_id=canonical,
        arch="python",
        kind=kind,
        in_channels=3,
        scale=s,
        offset=0.0,
        value_range=(0.0, 1.0),
        checkpoint=None if checkpoint is None else str(checkpoint),
        checkpoint_sha256=sha,
        description=(
            f"User model {func_name} from {where}: x0 = RGB in [0, 1], shape (1, 3, H, W)"
            + (f"; image output at ×{s:g}." if kind == "image" else "; vector output.")
        ),
    )
