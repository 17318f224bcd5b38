"""The errors LinearScope raises on purpose, in one bottom-layer module (imports nothing of ours).

Every error here carries a message meant for the user as is; the CLIs print it as one ``error:``
line and exit non-zero. Where each is raised:

* :class:`UserError` — something the user can fix: a config, an input file, an environment value.
* :class:`StoreError` — a store that cannot be read or continued.
* :class:`ScopeError` — a model the LinearScope cannot interpret faithfully (paper §3, eq. 2);
  :class:`UnknownOpError` — an op touched the probe batch and has no rule (never a pass-through).
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad config, missing file, ...). The CLI prints it as one line."""


class StoreError(UserError):
    """A store that cannot be read or continued (message shown to the user as is)."""


class ScopeError(RuntimeError):
    """A model the LinearScope cannot interpret faithfully; the message says why and where."""


class UnknownOpError(ScopeError):
    """A non-linear (or unknown) op touched the probe batch and has no rule."""


class GlobalSupport(Exception):
    """The structural support analysis cannot bound which pixels reach which (global coupling, or
    an op it cannot prove): the sweep falls back to one impulse per probe. The message names the
    op and the module path. Not a user error: a reason shown in the plan."""
