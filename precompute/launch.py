"""The launcher's environment (torchrun's ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``), read with the
same checks as the command-line flags that stand for them (``--shard I/N``): a value that is not
a whole number, or a rank outside the world, is one line naming the variable, never a traceback
or a run that silently computes nothing ("done (0 tiles)" for ``RANK=5 WORLD_SIZE=2``)."""

from __future__ import annotations

import os

from precompute.errors import UserError


def env_int(name: str, default: int, low: int = 0) -> int:
    """Environment variable ``name`` as a whole number ≥ ``low`` (``default`` when unset)."""
    text = os.environ.get(name)
    if text is None or text.strip() == "":
        return default
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or value < low:
        raise UserError(f"environment variable {name}={text[:40]!r}: expected a whole number "
                        f"≥ {low} (set by torchrun; unset it to run one process)")
    return value


def env_shard() -> tuple[int, int]:
    """(I, N) from ``RANK`` / ``WORLD_SIZE`` (torchrun), (0, 1) when neither is set."""
    n = env_int("WORLD_SIZE", 1, low=1)
    i = env_int("RANK", 0)
    if i >= n:
        raise UserError(f"environment variables RANK={i} and WORLD_SIZE={n}: expected "
                        "0 ≤ RANK < WORLD_SIZE (as for --shard I/N)")
    return (i, n)
