"""A module that is also its main function: ``surgery.fold(net)`` calls ``surgery.fold.fold``.

The public API (``surgery/__init__.py``) names each surgery by the name of its module
(``surgery.fold``, ``surgery.share``, ``surgery.onion.split``...). Python sets a package's
attribute to the submodule once it is imported, so the name cannot also be bound to the
function: instead the module's class becomes a ``ModuleType`` subclass with ``__call__``
(the mechanism PEP 549's discussion settled on; ``sys.modules[__name__].__class__`` is
assignable since Python 3.5). Everything else about the module is unchanged.
"""

from __future__ import annotations

import functools
import sys
import types
from typing import Callable


def make_callable(module_name: str, fn: Callable) -> None:
    """Make ``sys.modules[module_name](...)`` call ``fn(...)``."""

    class CallableModule(types.ModuleType):
        @functools.wraps(fn)
        def __call__(self, *args, **kwargs):
            return fn(*args, **kwargs)

    sys.modules[module_name].__class__ = CallableModule
