"""Safe checkpoint reading and strict state-dict loading with one clear error message.

Checkpoints are read with ``torch.load(path, weights_only=True, map_location="cpu")`` (or
``safetensors`` for ``.safetensors`` files when that package is installed): tensors and plain
containers only, never arbitrary unpickling; a zip archive declaring far more data than it
holds (a zip bomb) is refused before anything is inflated. Every failure becomes a
:class:`~precompute.models.base.ModelError` whose first line names the file and what is wrong
(missing file, corrupt bytes, a blocked global, a plain pickle, missing / unexpected keys,
mismatched shapes); the lines after it are detail (key lists, PyTorch's own message, how to
convert a pickled model), which the command line shows with ``--verbose``.
"""

from __future__ import annotations

import pickle
import pickletools
import re
import warnings
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from precompute.models.base import ModelError
from precompute.text import sha256_file  # noqa: F401  (re-exported to the model files)

#: How many key names an error message lists before summarising the rest.
MAX_LISTED = 8

CONVERT_HINT = (
    "LinearScope never unpickles code. If you trust this file, convert it once into a plain "
    "state_dict (see examples/README.md, 'Converting a pickled model'):\n"
    '    python -c "import torch; m = torch.load(\'IN.pth\', weights_only=False); '
    "torch.save(m.state_dict(), 'OUT.pt')\"\n"
    "(run it where the model's classes are importable, e.g. inside the project that trained it)."
)




def _first(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


#: An archive may declare at most this many times its own size of uncompressed data. PyTorch
#: writes checkpoints uncompressed (ZIP_STORED), so real files declare about their own size.
MAX_INFLATION = 4


def check_archive(path: Path, what: str = "checkpoint") -> None:
    """Refuse a zip checkpoint whose entries declare far more data than the file holds (a zip
    bomb) before PyTorch inflates any of it; the declared sizes are read from the central
    directory, nothing is decompressed."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as z:
            declared = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # torch.load reports the damage
    size = path.stat().st_size
    if declared > MAX_INFLATION * size + (1 << 20):
        raise ModelError(
            f"{what} {path} declares {declared / 1e6:.1f} MB of data in a {size / 1e6:.2f} MB archive "
            f"(compressed {declared / max(size, 1):.0f}:1; PyTorch writes checkpoints "
            "uncompressed): refusing to inflate it (a zip bomb?)")


def pickle_globals(path: Path, limit: int = 64 << 20) -> list[str] | None:
    """The globals (``module.name``) a plain pickle file refers to, read with ``pickletools``
    (opcodes only: nothing is imported or run); None if it is not a readable pickle."""
    names: list[str] = []
    strings: list[str] = []
    try:
        with open(path, "rb") as f:
            data = f.read(limit)
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
            elif isinstance(arg, str):
                strings.append(arg)
            if op.name == "STOP":
                break
    except Exception:  # noqa: BLE001 — not a pickle (or damaged): no names
        return None
    return list(dict.fromkeys(names))


def _unpickling_error(path: Path, what: str, e: pickle.UnpicklingError) -> ModelError:
    """One line for what PyTorch's weights-only unpickler refused, its paragraph as detail."""
    msg = str(e)
    m = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
    if m is None and not zipfile.is_zipfile(path):
        # a plain pickle (pickle.dump, not torch.save): the weights-only reader stops at its
        # first opcode, before any global; name them from the opcodes instead
        found = pickle_globals(path)
        if found is not None:
            blocked = [g for g in found if not g.startswith(("torch.", "collections.OrderedDict"))]
            why = (f" that refers to the blocked global(s) {', '.join(blocked[:3])} (LinearScope "
                   "never unpickles code)" if blocked else "")
            return ModelError(
                f"{what} {path} is a plain Python pickle (pickle.dump){why}, not a PyTorch "
                f"checkpoint: save a state_dict of tensors with torch.save (--verbose shows "
                f"how)\n{CONVERT_HINT}\nPyTorch: {msg}")
    if m is not None:
        return ModelError(
            f"{what} {path} contains pickled Python objects (blocked global {m.group(1)}), not a "
            f"plain state_dict of tensors; LinearScope never unpickles code (--verbose shows how "
            f"to convert a file you trust)\n{CONVERT_HINT}\nPyTorch: {msg}")
    return ModelError(
        f"cannot read {what} {path}: the file is corrupt or not a PyTorch checkpoint "
        f"(weights-only unpickler: {_first(e)[:120]})\nPyTorch: {msg}")


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
        check_archive(path, what)
        try:
            with warnings.catch_warnings():  # plain pickles: "Detected pickle protocol" noise
                warnings.simplefilter("ignore")
                obj = torch.load(path, weights_only=True, map_location="cpu")
        except pickle.UnpicklingError as e:
            raise _unpickling_error(path, what, e) from e
        except Exception as e:  # RuntimeError from the zip reader, EOFError, ...
            raise ModelError(
                f"cannot read {what} {path}: the file is corrupt or not a PyTorch checkpoint "
                f"({_first(e)[:120]})\nPyTorch: {e}"
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

    The first line names the source file and the expected model, counts missing and unexpected
    keys and mismatched shapes, and adds ``hint`` (one sentence, e.g. "This looks like a U-Net
    generator"); the lines after it list the keys and shapes (long lists truncated).
    """
    missing, unexpected, shapes = describe_mismatch(module, state_dict)
    if missing or unexpected or shapes:
        counts = [f"{len(v)} {w}{'s' if len(v) > 1 else ''}" for v, w in (
            (missing, "missing key"), (unexpected, "unexpected key"), (shapes, "mismatched shape"))
            if v]
        lines = [f"{source} does not match {model_name}: {', '.join(counts)}"
                 + (f". {hint}" if hint else "") + " (--verbose lists them)"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_list(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_list(unexpected)}")
        if shapes:
            shown = "; ".join(shapes[:MAX_LISTED])
            more = f"; … and {len(shapes) - MAX_LISTED} more" if len(shapes) > MAX_LISTED else ""
            lines.append(f"  mismatched shapes ({len(shapes)}): {shown}{more}")
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
