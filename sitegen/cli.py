"""`sitegen build`: make the static LinearScope site from stores (see sitegen/build.py)."""

from __future__ import annotations

import logging
import sys
import threading
import warnings
from pathlib import Path

import click

from sitegen.build import BuildError, Options, build
from sitegen.reader import StoreError
from sitegen.tiles import MODES, PRECISIONS

SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024 ** 2, "MB": 1024 ** 2,
              "G": 1024 ** 3, "GB": 1024 ** 3}


def fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    # A failed zarr read can leave zarr's own event loop with pending tasks, whose teardown at
    # interpreter exit logs pages of asyncio noise after our one line: silence that logger.
    _drain_zarr_loop()
    logging.getLogger("asyncio").setLevel(logging.CRITICAL + 1)
    warnings.simplefilter("ignore")  # "coroutine ... was never awaited" from the same teardown
    sys.unraisablehook = lambda *_: None  # "Exception ignored in ...": event loop closed
    threading.excepthook = lambda *_: None
    sys.exit(2)


def _drain_zarr_loop(timeout: float = 2.0) -> None:
    """Let the reads zarr still has in flight after a failed one finish, so that nothing is
    pending when the interpreter shuts its event loop down."""
    try:
        import asyncio

        from zarr.core import sync as zsync

        loop = zsync.loop[0] if isinstance(zsync.loop, list) else None
        if loop is None or loop.is_closed():
            return

        async def settle():
            me = asyncio.current_task()
            pending = [t for t in asyncio.all_tasks() if t is not me and not t.done()]
            if pending:
                await asyncio.wait(pending, timeout=timeout)
            for t in pending:
                if t.done() and not t.cancelled():
                    t.exception()  # retrieved: no "never retrieved" report at exit

        asyncio.run_coroutine_threadsafe(settle(), loop).result(timeout + 1)
    except Exception:
        pass


def parse_size(text: str) -> int | None:
    t = str(text).strip().upper().replace(" ", "")
    if t in ("NONE", "0", "UNLIMITED"):
        return None
    num = t.rstrip("KMGB")
    unit = t[len(num):]
    try:
        n = int(float(num) * SIZE_UNITS[unit])
    except (ValueError, KeyError, OverflowError):
        raise BuildError(f"cannot read size '{text}' (examples: 500MB, 2GB, none)") from None
    if n <= 0:
        raise BuildError(f"--max-size must be a positive size or 'none', got '{text}'")
    return n


def parse_stride(value) -> int:
    """``--stride`` / ``stride:``: every STRIDE-th pixel, an integer ≥ 1 (0 is refused, not 1)."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise BuildError(f"--stride must be a whole number ≥ 1, got '{value}'") from None
    if n < 1 or n != value:
        raise BuildError(f"--stride must be a whole number ≥ 1, got '{value}'")
    return n


def parse_region(text) -> tuple[int, int, int, int] | None:
    if text is None:
        return None
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = str(text).split(",")
    try:
        vals = tuple(int(p) for p in parts)
    except ValueError:
        raise BuildError(f"region '{text}' must be TOP,LEFT,HEIGHT,WIDTH in input pixels") from None
    if len(vals) != 4:
        raise BuildError(f"region '{text}' must be TOP,LEFT,HEIGHT,WIDTH in input pixels")
    return vals


def parse_tile(value) -> int | None:
    if value is None or str(value).strip().lower() == "auto":
        return None
    try:
        t = int(value)
    except (TypeError, ValueError):
        raise BuildError(f"tile must be a number of pixels or 'auto', got '{value}'") from None
    if t < 1:
        raise BuildError("tile must be at least 1")
    return t


#: Largest site config read; a site config is a few lines.
MAX_CONFIG_BYTES = 1 << 20

#: The keys of a site config and the types each may have.
CONFIG_TYPES = {"stores": (str, list), "output": (str,), "channels": (str,), "precision": (str,),
                "region": (str, list), "stride": (int,), "tile": (int, str),
                "max_size": (str, int, float)}


def _short(v) -> str:
    text = repr(v) if not isinstance(v, (list, dict)) else type(v).__name__
    return text if len(text) <= 60 else text[:59] + "…"


def _yaml_loader():
    """PyYAML's safe loader refusing a key given twice (last-wins would hide the first).

    (precompute/config.py has the same rule; sitegen never imports precompute.)"""
    import yaml

    from precompute.yaml_limits import DepthLimited  # torch-free

    class Loader(DepthLimited, yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"duplicate key `{key_node.value}`", key_node.start_mark)
                    seen.add(key_node.value)
            return super().construct_mapping(node, deep=deep)

    return Loader


def load_config(path: Path) -> dict:
    """A site config: bounded size, UTF-8, no duplicate keys, every value of the right type
    (aliases are never expanded: values are type-checked as they come, shared or not)."""
    import yaml

    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES:
            raise BuildError(f"config {path} is larger than {MAX_CONFIG_BYTES // 1024} KB")
        cfg = yaml.load(data.decode("utf-8"), Loader=_yaml_loader()) or {}
    except UnicodeDecodeError as e:
        raise BuildError(f"config {path} is not UTF-8 text (byte at offset {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BuildError(f"config {path} is not valid YAML{where}: {problem}") from None
    except OSError as e:
        raise BuildError(f"cannot read config {path}: {e.strerror or e}") from None
    if not isinstance(cfg, dict):
        raise BuildError(f"config {path} must be a mapping")
    if "site" in cfg and isinstance(cfg["site"], dict):
        cfg = cfg["site"]
    known = set(CONFIG_TYPES)
    unknown = sorted(str(k)[:40] for k in set(cfg) - known)
    if unknown:
        raise BuildError(f"config {path}: unknown key(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(known))})")
    for key, value in cfg.items():
        if not isinstance(value, CONFIG_TYPES[key]) or isinstance(value, bool):
            raise BuildError(f"config {path}: `{key}` has the wrong type ({_short(value)})")
    base = path.parent
    stores = cfg.get("stores", ["runs"])
    if isinstance(stores, str):
        stores = [stores]
    if not all(isinstance(x, str) for x in stores):
        raise BuildError(f"config {path}: `stores` must be a path or a list of paths")
    if isinstance(cfg.get("region"), list) and not all(
            isinstance(x, int) and not isinstance(x, bool) for x in cfg["region"]):
        raise BuildError(f"config {path}: `region` must be [top, left, height, width] (integers)")
    cfg["stores"] = [str(base / s) for s in stores]
    if "output" in cfg:
        cfg["output"] = str(base / cfg["output"])
    return cfg


@click.group()
def main() -> None:
    """LinearScope site generator."""


@main.command("build")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="Output folder (default: site/).")
@click.option("--channels", type=click.Choice(MODES), default=None,
              help="full: every channel pair; rgb: composite over the pixel's own channels; "
                   "lum: one luminance map (default: full).")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None,
              help="float16 display copy (default) or exact float32.")
@click.option("--region", default=None, metavar="TOP,LEFT,H,W",
              help="Only pixels in this input-pixel rectangle (rows: its image in the output).")
@click.option("--stride", type=int, default=None, help="Only every STRIDE-th pixel (default 1).")
@click.option("--tile", default=None,
              help="Site tile side in pixels, or 'auto' (default: tile scripts of about 1 MB).")
@click.option("--max-size", default=None,
              help="Refuse to write a site estimated larger than this (default 2GB; 'none').")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def build_cmd(sources, output, channels, precision, region, stride, tile, max_size, quiet):
    """Build the static site from STORES (store folders or folders holding stores) or a YAML
    config; with no argument, every store under runs/ into site/.

    Open OUTPUT/index.html from disk or serve the folder with any static web server.

    \b
    A config is YAML with any of these keys (or the same under `site:`):
      stores: [runs/]   output: site   channels: full   precision: float16
      region: [top, left, h, w]   stride: 1   tile: auto   max_size: 2GB
    Store paths and output are relative to the config file; options given on
    the command line win over the config.
    """
    try:
        cfg: dict = {}
        if len(sources) == 1 and sources[0].suffix in (".yaml", ".yml") and sources[0].is_file():
            cfg = load_config(sources[0])
            srcs = cfg["stores"]
        elif sources:
            srcs = list(sources)
        else:
            if not Path("runs").is_dir():
                raise BuildError("no stores found: runs/ does not exist (run `precompute run` "
                                 "first, or pass store paths)")
            srcs = ["runs"]
        out = output or Path(cfg.get("output", "site"))
        opts = Options(
            mode=channels or cfg.get("channels", "full"),
            precision=precision or cfg.get("precision", "float16"),
            region=parse_region(region if region is not None else cfg.get("region")),
            stride=parse_stride(stride if stride is not None else cfg.get("stride", 1)),
            tile=parse_tile(tile if tile is not None else cfg.get("tile", "auto")),
            max_bytes=parse_size(max_size if max_size is not None else cfg.get("max_size", "2GB")),
            progress=not quiet,
        )
        build(srcs, out, opts, echo=lambda m: click.echo(m))
    except (BuildError, StoreError) as e:
        fail(str(e))
    except OSError as e:
        fail(f"{e.filename or ''}: {e.strerror or e}")


if __name__ == "__main__":
    main()
