"""Integer settings read from environment variables, refused in one line when malformed.

``LINEARSCOPE_BLOCK_BYTES`` (memory of one block of compressed probing), ``LINEARSCOPE_MEMORY_BYTES``
(available memory), ``LINEARSCOPE_FREE_BYTES`` (free disk) override measurements; ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` come from torchrun and are checked like the flag that stands for them
(``--shard I/N``). A value that is not a whole number in range would otherwise be a traceback
(``int('abc')``), silently accepted (``-5`` bytes), or a run that computes nothing ("done (0
tiles)" for ``RANK=5 WORLD_SIZE=2``).
"""

from __future__ import annotations

import os

from precompute.errors import UserError


def env_int(name: str, default: int | None = None, minimum: int = 0) -> int | None:
    """The whole number ``name`` holds (``default`` when unset or empty); UserError when it is
    not a whole number ≥ ``minimum``."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise UserError(f"environment variable {name}={text[:40]!r}: expected a whole number ≥ "
                        f"{minimum}{' (bytes)' if name.endswith('_BYTES') else ''}; fix or unset it")
    return value


def env_shard() -> tuple[int, int]:
    """(I, N) from ``RANK`` / ``WORLD_SIZE`` (torchrun), (0, 1) when neither is set."""
    n = env_int("WORLD_SIZE", 1, minimum=1)
    i = env_int("RANK", 0)
    if i >= n:
        raise UserError(f"environment variables RANK={i} and WORLD_SIZE={n}: expected "
                        "0 ≤ RANK < WORLD_SIZE (as for --shard I/N)")
    return (i, n)
