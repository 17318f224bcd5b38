"""Integer settings read from environment variables, refused in one line when malformed.

``LINEARSCOPE_BLOCK_BYTES`` (memory of one block of compressed probing), ``LINEARSCOPE_MEMORY_BYTES``
(available memory), ``LINEARSCOPE_FREE_BYTES`` (free disk) override measurements; ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` come from torchrun. A value that is not a whole number in range would
otherwise be a traceback (``int('abc')``) or, worse, silently accepted (``-5`` bytes).
"""

from __future__ import annotations

import os

from precompute.config import UserError


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
        raise UserError(f"environment variable {name}={text!r} must be a whole number ≥ "
                        f"{minimum}{' (bytes)' if name.endswith('_BYTES') else ''}; fix or unset it")
    return value
