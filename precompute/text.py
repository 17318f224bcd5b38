"""Small text and file helpers every layer may use (bottom layer: imports only precompute.errors)."""

from __future__ import annotations

import hashlib
import os
import stat
import sys
from pathlib import Path

from precompute.errors import UserError


def say(msg: str) -> None:
    """A progress or plan line for the user, on standard error (standard output stays data)."""
    print(msg, file=sys.stderr, flush=True)


def fmt_bytes(n: float) -> str:
    """Decimal units, as disks and ``df -H`` count them: 1.5 GB = 1.5e9 bytes."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def fmt_time(s: float) -> str:
    """A duration as a person reads it in a plan: seconds, minutes, then hours."""
    if s < 1:
        return "under a second"
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def first_line(e: BaseException) -> str:
    """``Type: first line of the message``, for one-line reports of foreign exceptions."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def regular_file(path: str | Path, what: str) -> Path:
    """``path`` when it is a regular file (links followed), else a one-line UserError: a FIFO
    would block the read forever, a device (``/dev/zero``) never end. ``run`` checks its config's
    files when it loads the config; a stored config (``verify``) names files nobody checked."""
    try:
        mode = os.stat(path).st_mode
    except OSError as e:
        raise UserError(f"cannot read {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a directory" if stat.S_ISDIR(mode)
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket"
                if stat.S_ISSOCK(mode) else "not a regular file")
        raise UserError(f"{what} {path} is {kind}, not a regular file")
    return Path(path)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 digest of a regular file's bytes (recorded as provenance in every store)."""
    regular_file(path, "file")
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
