"""Safe checkpoint reading and strict state-dict loading with one clear error message.

Checkpoints are read with ``torch.load(path, weights_only=True, map_location="cpu")`` (or
``safetensors`` for ``.safetensors`` files when that package is installed): tensors and plain
containers only, never arbitrary unpickling. Every failure becomes a
:class:`~precompute.models.base.ModelError` whose message names the file and what is wrong
(missing file, corrupt bytes, a pickled whole module, missing / unexpected keys, mismatched shapes).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from precompute.models.base import ModelError

#: How many key names an error message lists before summarising the rest.
MAX_LISTED = 8

CONVERT_HINT = (
    "LinearScope never unpickles code. If you trust this file, convert it once into a plain "
    "state_dict (see examples/README.md, 'Converting a pickled model'):\n"
    '    python -c "import torch; m = torch.load(\'IN.pth\', weights_only=False); '
    "torch.save(m.state_dict(), 'OUT.pt')\"\n"
    "(run it where the model's classes are importable, e.g. inside the project that trained it)."
)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 digest of a file's bytes (recorded as provenance in every store)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _list(names: Iterable[str], limit: int = MAX_LISTED) -> str:
    names = list(names)
    shown = ", ".join(f'"{n}"' for n in names[:limit])
    if len(names) > limit:
        shown += f", … and {len(names) - limit} more"
    return shown


def read_state_dict(path: str | Path, what: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Read a state_dict (name -> tensor) from ``path`` without executing pickled code.

    Accepts a plain state_dict, or a dict wrapping one under ``state_dict`` / ``model`` /
    ``params`` / ``params_ema`` (common training-script layouts), and strips a ``module.`` prefix
    that ``nn.DataParallel`` leaves on every key. Raises ModelError otherwise.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelError(f"{what} file not found: {path}")
    if not path.is_file():
        raise ModelError(f"{what} path is not a file: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError as e:  # optional dependency
            raise ModelError(
                f"{path} is a .safetensors file but the 'safetensors' package is not installed "
                "(pip install safetensors)"
            ) from e
        try:
            obj = load_file(str(path), device="cpu")
        except Exception as e:
            raise ModelError(f"cannot read {what} {path}: not a valid safetensors file ({e})") from e
    else:
        try:
            obj = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            msg = str(e)
            if "Unsupported global" in msg or "GLOBAL" in msg:
                # The file pickles Python objects (a whole nn.Module, an optimizer, ...).
                glob = msg.split("Unsupported global:", 1)[-1].strip().split(" was ")[0]
                raise ModelError(
                    f"{what} {path} contains pickled Python objects ({glob}), not a plain "
                    f"state_dict of tensors.\n{CONVERT_HINT}"
                ) from e
            raise ModelError(
                f"cannot read {what} {path}: the file is corrupt or not a PyTorch checkpoint"
            ) from e
        except Exception as e:  # RuntimeError from the zip reader, EOFError, ...
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ModelError(
                f"cannot read {what} {path}: the file is corrupt or not a PyTorch checkpoint "
                f"({first[:160]})"
            ) from e
    return _as_state_dict(obj, path, what)


def _as_state_dict(obj, path: Path, what: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, torch.nn.Module):  # only reachable through safe globals; still refuse
        raise ModelError(f"{what} {path} is a pickled module, not a state_dict.\n{CONVERT_HINT}")
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "params_ema", "params"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping) and inner and all(
                isinstance(v, torch.Tensor) for v in inner.values()
            ):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise ModelError(
            f"{what} {path} holds a {type(obj).__name__}, not a state_dict (a dict of tensors)"
        )
    bad = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(
            f"{what} {path} is not a state_dict: entries {_list(bad)} are not tensors"
        )
    sd = {str(k): v for k, v in obj.items()}
    if sd and all(k.startswith("module.") for k in sd):  # saved from nn.DataParallel
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def describe_mismatch(
    module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """Missing keys, unexpected keys, and ``"key: file [..] vs model [..]"`` shape mismatches."""
    expected = module.state_dict()
    # Batch norm fills a missing num_batches_tracked itself (pre-1.0 files, e.g. the 2017
    # torchvision ResNet/VGG-BN/DenseNet weights, lack it), so it is not a missing key.
    missing = [k for k in expected
               if k not in state_dict and not k.endswith(".num_batches_tracked")]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {list(state_dict[k].shape)} vs model {list(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, shapes


def load_strict(
    module: torch.nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    *,
    source: str,
    model_name: str,
    hint: str = "",
    assign: bool = False,
) -> None:
    """``module.load_state_dict(state_dict, strict=True)`` with one readable ModelError.

    With ``assign=True`` the module may live on the ``meta`` device (built without initialising
    weights that the file replaces anyway): the file's tensors become its parameters, as float32
    on the CPU, and buffers the file lacks (``num_batches_tracked``) are materialised as zeros.

    The message names the source file and the expected model, lists missing and unexpected keys
    and mismatched shapes (long lists truncated), and ends with ``hint`` (e.g. "this looks like an
    EDSR-baseline ×2 checkpoint").
    """
    missing, unexpected, shapes = describe_mismatch(module, state_dict)
    if missing or unexpected or shapes:
        lines = [f"{source} does not match {model_name}:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if shapes:
            shown = "; ".join(shapes[:MAX_LISTED])
            more = f"; … and {len(shapes) - MAX_LISTED} more" if len(shapes) > MAX_LISTED else ""
            lines.append(f"  mismatched shapes ({len(shapes)}): {shown}{more}")
        if hint:
            lines.append(hint)
        raise ModelError("\n".join(lines))
    if not assign:
        # Cast to the module's dtype (files may hold float16/float64); strict load cannot fail now.
        module.load_state_dict(dict(state_dict), strict=True)
        return
    sd = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    module.load_state_dict(sd, strict=True, assign=True)
    for owner in module.modules():
        for name, buf in list(owner.named_buffers(recurse=False)):
            if buf is not None and buf.is_meta:
                owner.register_buffer(name, torch.zeros(buf.shape, dtype=buf.dtype),
                                      persistent=name not in owner._non_persistent_buffers_set)
    left = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if left:  # every parameter must have come from the file
        raise ModelError(f"{source}: no values for {_list(left)} of {model_name}")
