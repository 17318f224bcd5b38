"""LinearScope precompute: freeze a CNN at an image x0 and read its linear interpreter.

``y = F(x0)·x + r(x0)`` (paper eq. 5). Start with :class:`LinearInterpreter`; the hooking layer
itself is :class:`LinearScope` (eq. 2) and the freeze rules live in :mod:`precompute.rules`.

The names below are imported on first use (PEP 562), so that the torch-free modules of this
package (:mod:`precompute.store_format`, shared with ``sitegen``) can be imported without torch.
"""

__all__ = ["IdentityError", "LinearInterpreter", "LinearScope", "ScopeError", "UnknownOpError",
           "open_store"]
__version__ = "0.1.0"

_LAZY = {"IdentityError": "precompute.interpreter", "LinearInterpreter": "precompute.interpreter",
         "LinearScope": "precompute.scope", "ScopeError": "precompute.scope",
         "UnknownOpError": "precompute.scope"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'precompute' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))


def open_store(path):
    """Open a store written by ``precompute run`` read-only (see docs/FORMAT.md)."""
    from precompute.store import open_store as _open_store

    return _open_store(path)
