"""The checks a run makes of an existing store before any work (docs/RUN.md, "Resuming"):
is there one, is it ours and readable, was it made with the same value-affecting settings, is
anything outside its tiles damaged, can the output be written, is there disk space. Every
check goes through the store's :mod:`~precompute.tile_store` (the storage seam); none computes
anything.
"""

from __future__ import annotations

from pathlib import Path

from precompute import store as S
from precompute import store_format
from precompute.config import VALUE_KEYS
from precompute.errors import UserError
from precompute.inputs import RunInput
from precompute.text import fmt_bytes
from precompute.tile_store import open_tiles
from precompute.whole_f import REGISTRY

#: the whole-F analyses, compared on their own (adding or changing one keeps rows and columns)
WHOLE_F = tuple(REGISTRY)

#: settings added after stores were made: absent from an older store's config = this default
_LATER_KEYS = {"svd": {"operator": "auto"}}


def _value_diff(stored: dict, now: dict) -> list[str]:
    """The value-affecting keys in which a store's config and the config now differ — for the
    interpreter and the per-pixel sweep. The whole-F analyses (svd, classify) are compared on
    their own (:func:`whole_f_changes`): adding one to a finished store, or computing one again
    with other settings, must not throw away the rows and columns."""
    def norm(cfg: dict, k: str):
        v = cfg.get(k)
        if k == "analyses" and isinstance(v, dict):
            v = {name: a for name, a in v.items() if name not in WHOLE_F}
        return v

    return [k for k in VALUE_KEYS if norm(stored, k) != norm(now, k)]


def whole_f_changes(attrs: dict, cfg: dict) -> tuple[list[str], list[str]]:
    """(added, changed): whole-F analyses the config asks for that the store at ``attrs`` does
    not have, and those it has with other settings. One the config no longer asks for is kept
    (absent means "not asked this time", not "delete it")."""
    stored = (attrs.get("config") or {}).get("analyses") or {}
    now = cfg.get("analyses") or {}
    added = [n for n in WHOLE_F if now.get(n) is not None and stored.get(n) is None]
    changed = [n for n in WHOLE_F if now.get(n) is not None and stored.get(n) is not None
               and _LATER_KEYS.get(n, {}) | stored.get(n) != now.get(n)]
    return added, changed


def mismatch(attrs: dict, cfg: dict, prep: RunInput) -> list[str]:
    """Value-affecting differences between a store and the config now (batch, device and output
    may change between runs)."""
    diff = _value_diff(attrs.get("config", {}), cfg)
    if attrs.get("image", {}).get("sha256") != prep.image_attrs["sha256"]:
        diff.append("image (file contents)")
    if attrs.get("model", {}).get("checkpoint_sha256") != prep.model_attrs["checkpoint_sha256"]:
        diff.append("model.checkpoint (file contents)")
    return diff


def existing_attrs(path: Path) -> dict | None:
    """Attributes of a finished store at ``path``; None if there is none (or an interrupted
    creation); UserError if the directory is something else."""
    tiles = open_tiles(path)
    if not tiles.exists():
        return None
    if not tiles.has_group():
        if not tiles.is_empty():
            raise UserError(f"{path} exists and is not a LinearScope store; choose another name/output")
        return None
    try:
        attrs = tiles.read_attrs()
    except S.StoreError as e:
        raise UserError(f"{e}; delete it (or choose another name) to compute it again") from None
    if "format_version" not in attrs:
        if attrs.get(store_format.CREATING):
            return None  # our creation was interrupted before the attributes: nothing computed
        raise UserError(f"{path} is a Zarr group but not a LinearScope store; choose another "
                        "name/output (it is never deleted)")
    problem = store_format.version_problem(attrs, path)
    if problem:
        raise UserError(f"{problem}; choose another name/output (it is never deleted)")
    return attrs


def store_damage(path: Path, attrs: dict) -> list[str]:
    """Damage of an existing store outside its tiles (``TileStore.core_damage``); damaged tiles
    are not listed: they are simply computed again."""
    tiles = open_tiles(path)
    try:
        return tiles.core_damage(tiles.group("r"), attrs)
    except Exception as e:  # noqa: BLE001 — the group's metadata itself
        return [f"zarr.json ({type(e).__name__})"]


def check_writable(path: Path) -> None:
    """Refuse early (before any work, without creating anything) a store at ``path`` that its
    tile store cannot write (on local files: its output directory)."""
    open_tiles(path).check_writable()


def check_disk(needed: int, free: int, directory: Path) -> None:
    """Refuse a plan needing more than ``free`` bytes (``TileStore.free_bytes``)."""
    if needed > free:
        raise UserError(
            f"the plan needs {fmt_bytes(needed)} (before compression) but only "
            f"{fmt_bytes(free)} is free at {directory}; use smaller windows, a pixel region "
            "or stride, or free some space"
        )



