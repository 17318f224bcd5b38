"""The `precompute run` configuration: a YAML file, validated before any work is done.

Validation uses pydantic v2 models with ``extra="forbid"`` rather than hand-written checks: the
schema is declared once, unknown keys and wrong types are caught uniformly at every depth, and
each error carries its location, which :func:`format_validation_error` turns into one sentence
for a human (with a difflib suggestion for a mistyped key).

Input paths (image(s), checkpoint, a ``python:FILE.py:FUNC`` model file) are relative to the
config file and ``~`` expands; ``output`` is relative to the current directory.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from precompute.yaml_limits import DepthLimited


from precompute.errors import UserError  # noqa: E402  (re-exported: defined in precompute.errors)


# --------------------------------------------------------------------------------------------
# Field parsers: each accepts the YAML value and raises ValueError with what was expected, so
# that a union such as "integer or 'full'" gives one message instead of one per union member.


def _short(v: Any, limit: int = 80) -> str:
    """repr of a config value for a one-line message, cut at ``limit`` characters."""
    text = repr(v)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _window(v: Any) -> int | str:
    if v == "full":
        return "full"
    if _is_int(v) and v >= 1:
        return v
    raise ValueError(f"expected a window side in pixels (an integer ≥ 1) or 'full', got {_short(v)}")


def _tile(v: Any) -> int | str:
    if v == "auto":
        return "auto"
    if _is_int(v) and 1 <= v <= 256:
        return v
    raise ValueError(f"expected a tile side in pixels (an integer 1…256) or 'auto', got {_short(v)}")


def _batch(v: Any) -> int | str:
    if v == "auto":
        return "auto"
    if _is_int(v) and v >= 1:
        return v
    raise ValueError(f"expected a number of probes per pass (an integer ≥ 1) or 'auto', got {_short(v)}")


def _device(v: Any) -> str:
    if isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda|cuda:\d+", v):
        return v
    raise ValueError(f"expected auto, cpu, cuda or cuda:N, got {_short(v)}")


def _box(what: str):
    def parse(v: Any) -> tuple[int, int, int, int]:
        if (
            isinstance(v, (list, tuple))
            and len(v) == 4
            and all(_is_int(x) for x in v)
            and v[0] >= 0
            and v[1] >= 0
            and v[2] >= 1
            and v[3] >= 1
        ):
            return tuple(v)
        raise ValueError(
            f"expected {what} as [top, left, height, width] (integers, top/left ≥ 0, "
            f"height/width ≥ 1), got {_short(v)}"
        )

    return parse


def _analysis(v: Any) -> Any:
    # `columns: true` means the defaults, `columns: false` (or null) means not computed.
    if v is True:
        return {}
    if v is False:
        return None
    return v


Window = Annotated[int | str, BeforeValidator(_window)]
Tile = Annotated[int | str, BeforeValidator(_tile)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class PixelsConfig(_Strict):
    """Which pixels to compute: a region [top, left, height, width] and a stride inside it."""

    region: Annotated[tuple[int, int, int, int] | None, BeforeValidator(
        lambda v: None if v is None else _box("a pixel region")(v))] = None
    stride: Annotated[int, Field(ge=1)] = 1


class WindowedConfig(_Strict):
    """One windowed analysis (columns or rows)."""

    window: Window = "full"
    tile: Tile = "auto"
    # Per-analysis override of the top-level `pixels` (rows: in output pixels).
    pixels: PixelsConfig | None = None


def _positive_float(what: str):
    def parse(v: Any) -> float:
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0:
            return float(v)
        raise ValueError(f"expected {what} (a number > 0), got {_short(v)}")

    return parse


class SvdConfig(_Strict):
    """Top-k SVD of F(x0) (eigen-inputs/outputs, paper Algorithm 1 and block Krylov)."""

    k: Annotated[int, Field(ge=1)] = 16
    method: Literal["auto", "block", "power", "dense"] = "auto"
    # relative residual ‖F v − σ u‖/σ at which a triplet counts as converged (None: dtype default)
    tol: Annotated[float | None, BeforeValidator(
        lambda v: None if v is None else _positive_float("a tolerance")(v))] = None
    max_calls: Annotated[int, Field(ge=1)] | None = None  # operator calls (F·V or Fᵀ·U passes)
    seed: int = 0
    block: Annotated[int | str, BeforeValidator(_batch)] = "auto"  # vectors per block
    # where F·V and Fᵀ·U come from: the sparse F of the stored columns/rows when the store holds
    # all of F (`store`), network passes (`network`), or `auto` (store when it can)
    operator: Literal["auto", "store", "network"] = "auto"


class AdversarialConfig(_Strict):
    """FGSM copy of x0 (paper §8.A, Figure 10): ε in the image's [0, 1] range."""

    fgsm_eps: Annotated[float, BeforeValidator(_positive_float("an FGSM step ε in [0, 1] units"))]
    label: Annotated[int, Field(ge=0)] | None = None  # true label (default: the clean top-1)


class ClassifyConfig(_Strict):
    """Classifier analyses (paper §4 Case 1, §8.A): shares, contributions, discussions, votes."""

    top_k: Annotated[int, Field(ge=1)] = 5
    adversarial: AdversarialConfig | None = None


AUTO = "auto"


class AnalysesConfig(_Strict):
    residual: bool = True
    # default `auto` (not validated, pydantic keeps defaults as given): computed for image models,
    # not for vector models (classifiers); see `resolved`
    columns: Annotated[WindowedConfig | None, BeforeValidator(_analysis)] = AUTO
    rows: Annotated[WindowedConfig | None, BeforeValidator(_analysis)] = AUTO
    svd: Annotated[SvdConfig | None, BeforeValidator(_analysis)] = None
    classify: Annotated[ClassifyConfig | None, BeforeValidator(_analysis)] = None

    @model_validator(mode="before")
    @classmethod
    def _auto_means_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if not (k in ("columns", "rows") and v == AUTO)}
        return data

    def resolved(self, vector: bool) -> "AnalysesConfig":
        """The analyses of a model of this kind: `auto` columns/rows become on (image models,
        default windows) or off (vector models)."""
        upd = {k: (None if vector else WindowedConfig()) for k in ("columns", "rows")
               if getattr(self, k) == AUTO}
        return self.model_copy(update=upd)


class ModelConfig(_Strict):
    arch: str
    scale: Annotated[int, Field(ge=1)] | None = None
    checkpoint: str | None = None
    weights: str | None = None
    # Classifiers: "auto" applies the ImageNet resize/centre-crop only to images larger than the
    # crop, "imagenet" always, "none" only normalises (see precompute.models.load_model).
    preprocess: Literal["auto", "imagenet", "none"] = "auto"


class RunConfig(_Strict):
    """The whole `precompute run` configuration (see the issue / README for the example)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$", max_length=200)]
    model: ModelConfig
    image: str | None = None
    # a list of image files, or a dataset: a folder (its image files) or a glob pattern; list
    # entries may be folders or patterns too (see `load_config`)
    images: Annotated[list[str], Field(min_length=1)] | str | None = None
    crop: Annotated[tuple[int, int, int, int] | None, BeforeValidator(
        lambda v: None if v is None else _box("a crop")(v))] = None
    pixels: PixelsConfig = PixelsConfig()
    interpreter: Literal["freeze", "taylor"] = "freeze"
    analyses: AnalysesConfig = AnalysesConfig()
    device: Annotated[str, BeforeValidator(_device)] = "auto"
    dtype: Literal["float32", "float64"] = "float32"
    # ieee: no TF32 on CUDA (exact float32); tf32: faster, ~1e-3 relative error.
    precision: Literal["ieee", "tf32"] = "ieee"
    batch: Annotated[int | str, BeforeValidator(_batch)] = "auto"
    # auto: one probe carries many impulses when the network's structural support allows it
    # (exact); single: one impulse per probe (the paper's method, batched). Like `batch`, it may
    # change between a run and its resumption.
    probing: Literal["auto", "single"] = "auto"
    output: str = "runs"

    @model_validator(mode="after")
    def _one_image_key(self) -> "RunConfig":
        if (self.image is None) == (self.images is None):
            raise ValueError("give exactly one of `image: FILE` or `images: [FILE, ...]`")
        return self


# --------------------------------------------------------------------------------------------
# Turning pydantic errors into one human sentence.

_TYPE_WORDS = {
    "string_type": "a string",
    "int_type": "an integer",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping (key: value)",
    "model_type": "a mapping (key: value)",
    "model_attributes_type": "a mapping (key: value)",
    "tuple_type": "a list",
}


def _submodel_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class that holds the field at ``loc[:-1]``."""
    model: Any = RunConfig
    for part in loc[:-1]:
        if not isinstance(part, str):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        nxt = None
        for cand in _model_classes(field.annotation):
            nxt = cand
        if nxt is None:
            return None
        model = nxt
    return model


def _model_classes(annotation: Any) -> list[type[BaseModel]]:
    out = []
    stack = [annotation]
    while stack:
        a = stack.pop()
        if isinstance(a, type) and issubclass(a, BaseModel):
            out.append(a)
        stack.extend(getattr(a, "__args__", ()) or ())
        meta = getattr(a, "__origin__", None)
        if meta is not None and meta is not a:
            stack.append(meta)
    return out


def _where(loc: tuple) -> str:
    parts = [str(p) for p in loc if isinstance(p, (str, int))]
    return ".".join(parts) if parts else "the config"


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One sentence for the first problem of a pydantic ValidationError (plus how many more)."""
    errors = err.errors(include_url=False)
    first = errors[0]
    loc, typ = tuple(first["loc"]), first["type"]
    if typ == "extra_forbidden":
        key = str(loc[-1])[:80]
        model = _submodel_at(loc)
        allowed = sorted(model.model_fields) if model is not None else []
        parent = _where(loc[:-1])
        where = f" in `{parent}`" if loc[:-1] else ""
        msg = f"{source}: unknown key `{key}`{where}"
        close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.5)
        if close:
            msg += f"; did you mean `{close[0]}`?"
        elif allowed:
            msg += f"; allowed keys: {', '.join(allowed)}"
    elif typ == "missing":
        msg = f"{source}: missing key `{_where(loc)}`"
    else:
        text = first["msg"]
        if text.startswith("Value error, "):
            text = text[len("Value error, "):]
        elif typ in _TYPE_WORDS:
            text = f"expected {_TYPE_WORDS[typ]}, got {_short(first.get('input'))}"
        elif text.startswith("Input should be "):
            text = f"expected {text[len('Input should be '):]}, got {_short(first.get('input'))}"
        elif typ == "string_pattern_mismatch" and loc == ("name",):
            text = ("expected a file-name-safe name (letters, digits, . _ + -), "
                    f"got {_short(first.get('input'))}")
        msg = f"{source}: `{_where(loc)}`: {text}" if loc else f"{source}: {text}"
    if len(errors) > 1:
        msg += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return msg


# --------------------------------------------------------------------------------------------
# Reading YAML safely: bounded size and alias expansion, duplicate keys refused, UTF-8 only.

#: Largest config file read (a config is a few hundred bytes; a list of images a few KB).
MAX_CONFIG_BYTES = 1 << 20
#: Most values a config may hold once its YAML aliases are expanded ("billion laughs" guard).
MAX_CONFIG_NODES = 100_000


class _StrictLoader(DepthLimited, yaml.SafeLoader):
    """PyYAML's safe loader (plain data only) that refuses a mapping with a key given twice
    (YAML's last-wins would silently drop the first value). Merge keys (``<<``) still override."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = key_node.value
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key `{key}` (first given on line {seen[key] + 1})",
                        key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node, limit: int) -> int:
    """Number of values of a composed YAML document with every alias expanded, stopping early
    past ``limit``. Aliases are shared node objects, so sizes are memoised per node; a node that
    contains itself (a recursive alias) counts as unbounded."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(n) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in active:
            return limit + 1
        active.add(key)
        total = 1
        if isinstance(n, yaml.SequenceNode):
            children = n.value
        elif isinstance(n, yaml.MappingNode):
            children = [c for pair in n.value for c in pair]
        else:
            children = []
        for c in children:
            total += size(c)
            if total > limit:
                break
        active.discard(key)
        sizes[key] = total
        return total

    return size(node)


def load_yaml(path: Path, what: str = "config") -> Any:
    """Plain data of a YAML file with every limit a received file needs, or one-line UserError."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise UserError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KB; not a LinearScope {what}")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                        f"save the {what} as UTF-8") from None
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_CONFIG_NODES) > MAX_CONFIG_NODES:
            raise UserError(f"{path}: its YAML aliases expand to more than {MAX_CONFIG_NODES} "
                            "values (recursive or exponential aliases); refusing to expand them")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------------------------
# Loading and resolving paths.

#: Longest file name most file systems take (bytes); a store also needs `.<name>.lock` beside it.
NAME_MAX = 255


def _is_file(p: Path, what: str) -> bool:
    """``p.is_file()``, with the OS errors that are the user's to fix as one line."""
    try:
        return p.is_file()
    except OSError as e:
        raise UserError(f"{what} {p}: {e.strerror or e}") from None


def _resolve_input(path: str, base: Path, what: str = "input") -> Path:
    p = Path(os.path.expanduser(path))
    if not p.is_absolute():
        p = base / p
    try:
        return p.resolve()
    except RuntimeError:  # Python 3.11 reports a symlink loop this way
        raise UserError(f"{what} {p}: symbolic link loop") from None
    except OSError as e:
        raise UserError(f"{what} {p}: {e.strerror or e}") from None


class Resolved(BaseModel):
    """A validated configuration with absolute paths (what the store records)."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    config: RunConfig
    config_path: Path
    images: list[Path]
    checkpoint: Path | None
    arch: str  # `python:FILE.py:FUNC` with FILE made absolute
    output_dir: Path
    dataset: bool = False  # `images:` named a folder or a glob pattern

    def store_path(self, image: Path) -> Path:
        """<output>/<name>.zarr, or <output>/<name>-<image stem>.zarr with several images or a
        dataset (a folder or glob, even if it holds one image)."""
        if self.dataset or (self.config.images is not None and len(self.images) > 1):
            return self.output_dir / f"{self.config.name}-{image.stem}.zarr"
        return self.output_dir / f"{self.config.name}.zarr"

    def analyses(self, vector: bool) -> AnalysesConfig:
        """The analyses to run for a model of this kind (`auto` columns/rows resolved)."""
        return self.config.analyses.resolved(vector)

    def as_dict(self, image: Path, vector: bool | None = None) -> dict:
        """The resolved config for one image, as stored in the store's `config` attribute.

        With ``vector`` known (after loading the model), `auto` columns/rows are resolved too.
        """
        d = self.config.model_dump(mode="json", warnings=False)  # unresolved `auto` is a str
        if vector is not None:
            d["analyses"] = self.analyses(vector).model_dump(mode="json")
        d.pop("images", None)
        d["image"] = str(image)
        d["model"]["arch"] = self.arch
        d["model"]["checkpoint"] = str(self.checkpoint) if self.checkpoint else None
        d["output"] = str(self.output_dir)
        return d


# Keys of the resolved config that change stored values; the others (batch, device, output)
# may change between a run and its resumption.
VALUE_KEYS = ("model", "image", "crop", "pixels", "interpreter", "analyses", "dtype", "precision")


#: Top-level key of a config that names several runs (see :func:`load_configs`).
RUNS_KEY = "runs"


def _read_mapping(path: Path) -> dict:
    if not _is_file(path, "config file"):
        raise UserError(f"config file not found: {path}")
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of keys (name, model, image, ...) at the top")
    return raw


def load_config(path: str | os.PathLike) -> Resolved:
    """Read, validate and resolve a YAML config of one run; raise UserError with one clear
    message (a config with ``runs:`` is refused: :func:`load_configs` reads it)."""
    path = Path(path)
    raw = _read_mapping(path)
    if RUNS_KEY in raw:
        raise UserError(f"{path}: names several runs (`{RUNS_KEY}:`); this command takes a "
                        "config of one run")
    return _resolve(raw, path, str(path))


def load_configs(path: str | os.PathLike) -> list[Resolved]:
    """The runs of a YAML config, each validated and resolved, all before any work.

    A config is one run, or several: a top-level ``runs:`` list of mappings, each merged over
    the other top-level keys (a key given in a run replaces the top-level key whole; no deep
    merge). Every run needs its own ``name`` (stores and summaries are named after it). This is
    how one config compares models on the same images (``examples/digits-zoo.yaml``).
    """
    path = Path(path)
    raw = _read_mapping(path)
    if RUNS_KEY not in raw:
        return [_resolve(raw, path, str(path))]
    runs = raw[RUNS_KEY]
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise UserError(f"{path}: `{RUNS_KEY}`: expected a non-empty list of mappings (name, "
                        f"model, ...), got {_short(runs)}")
    shared = {k: v for k, v in raw.items() if k != RUNS_KEY}
    out: list[Resolved] = []
    for i, run in enumerate(runs):
        if RUNS_KEY in run:
            raise UserError(f"{path}: `{RUNS_KEY}.{i}`: a run cannot hold `{RUNS_KEY}` itself")
        out.append(_resolve({**shared, **run}, path, f"{path} ({RUNS_KEY}.{i})"))
    seen: dict[str, int] = {}
    for i, res in enumerate(out):
        name = res.config.name
        if name in seen:
            raise UserError(f"{path}: `{RUNS_KEY}.{i}.name`: {name!r} is also the name of "
                            f"`{RUNS_KEY}.{seen[name]}`; each run needs its own name (its stores "
                            "are named after it)")
        seen[name] = i
    owner: dict[Path, int] = {}
    for i, res in enumerate(out):  # e.g. run `a` on image `b-c.png` and run `a-b` on `c.png`
        for store in {res.store_path(image) for image in res.images}:
            if store in owner:
                raise UserError(f"{path}: runs {owner[store]} and {i} would both write {store}; "
                                "rename one of them")
            owner[store] = i
    return out


def _resolve(raw: dict, path: Path, source: str) -> Resolved:
    """Validate one run's mapping and resolve its paths (relative to the config file)."""
    try:
        cfg = RunConfig.model_validate(raw)
    except ValidationError as e:
        raise UserError(format_validation_error(e, source=source)) from None
    base = path.resolve().parent

    images, dataset = _image_files(cfg, path, base)
    stems = [p.stem for p in images]
    if len(set(stems)) != len(stems):
        raise UserError(f"{path}: images must have distinct file names (stems): {_short(stems)}")

    checkpoint = None
    if cfg.model.checkpoint is not None:
        checkpoint = _resolve_input(cfg.model.checkpoint, base, "checkpoint")
        if not _is_file(checkpoint, "checkpoint"):
            raise UserError(
                f"{path}: checkpoint not found: {checkpoint} (paths are relative to the config file)"
            )

    arch = cfg.model.arch
    if arch.startswith("python:"):
        parts = arch.split(":")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise UserError(
                f"{path}: `model.arch`: expected python:FILE.py:FUNC or python:pkg.mod:FUNC, got {_short(arch)}"
            )
        if parts[1].endswith(".py"):
            f = _resolve_input(parts[1], base, "model file")
            if not _is_file(f, "model file"):
                raise UserError(f"{path}: model file not found: {f} (paths are relative to the config file)")
            arch = f"python:{f}:{parts[2]}"

    out = Path(os.path.expanduser(cfg.output))
    output_dir = _resolve_input(str(out), Path.cwd(), "output") if not out.is_absolute() else out
    res = Resolved(config=cfg, config_path=path.resolve(), images=images, checkpoint=checkpoint,
                   arch=arch, output_dir=output_dir, dataset=dataset)
    _check_store_names(res, path)
    return res


#: File name suffixes taken from a folder named by `images:` (others, e.g. README files, are not).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm",
                  ".pgm")


def _image_files(cfg: RunConfig, path: Path, base: Path) -> tuple[list[Path], bool]:
    """The image files of `image:` / `images:` and whether they form a dataset.

    Each entry of `images:` (one string or a list) is a file, a folder (its files with an image
    suffix, sorted by name, not recursive) or a glob pattern (sorted matches), relative to the
    config file. A folder or pattern makes the run a dataset (one store per image and a summary).
    """
    import glob

    if cfg.image is not None:
        entries, single = [cfg.image], True
    else:
        entries, single = ([cfg.images] if isinstance(cfg.images, str) else list(cfg.images)), False
    images: list[Path] = []
    dataset = False
    for n in entries:
        p = _resolve_input(n, base, "image")
        if _is_file(p, "image"):
            images.append(p)
        elif p.is_dir() and not single:
            found = sorted(f for f in p.iterdir() if f.is_file()
                           and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UserError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in the "
                                f"folder {p}")
            images += found
            dataset = True
        elif not single and glob.has_magic(n):
            found = sorted(Path(f) for f in glob.glob(str(p)) if Path(f).is_file())
            if not found:
                raise UserError(f"{path}: no file matches the pattern {n!r} (relative to the "
                                "config file)")
            images += found
            dataset = True
        else:
            raise UserError(f"{path}: image not found: {p} (paths are relative to the config file)")
    return images, dataset


def _check_store_names(res: Resolved, path: Path) -> None:
    """Refuse store names too long for a file name (with the `.<name>.lock` file beside them)."""
    for image in res.images:
        name = res.store_path(image).name
        n = len(f".{name}.lock".encode())
        if n > NAME_MAX:
            raise UserError(
                f"{path}: the store name {name[:40]}… is too long for a file name ({n - 6} bytes "
                f"with `.zarr`, at most {NAME_MAX - 6}); shorten `name` or the image file names")
