"""LinearScope precompute: freeze a CNN at an image x0 and read its linear interpreter.

``y = F(x0)·x + r(x0)`` (paper eq. 5). Start with :class:`LinearInterpreter`; the hooking layer
itself is :class:`LinearScope` (eq. 2) and the freeze rules live in :mod:`precompute.rules`.
"""

from precompute.interpreter import IdentityError, LinearInterpreter
from precompute.scope import LinearScope, ScopeError, UnknownOpError

__all__ = ["IdentityError", "LinearInterpreter", "LinearScope", "ScopeError", "UnknownOpError",
           "open_store"]
__version__ = "0.1.0"


def open_store(path):
    """Open a store written by ``precompute run`` read-only (see docs/FORMAT.md)."""
    from precompute.store import open_store as _open_store

    return _open_store(path)
