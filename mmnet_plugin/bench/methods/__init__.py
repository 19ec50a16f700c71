"""The methods of the benchmark harness, one file each; see :mod:`.base` for the API.

Methods of your own join without editing this package: name them on the command line as
``--methods mypkg.module:MyMethod`` (imported and registered by :func:`resolve_method`), or
publish them in the entry-point group ``mmnet_plugin.methods`` of your package's metadata
(``name = "mypkg.module:MyMethod"``), which makes ``--methods name`` work once it is
installed. A method is a subclass of :class:`Method` (``examples/custom_method.py`` is one).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Dict, Type

from .base import Method, MethodContext, MethodUnavailable
from .maml import FirstOrderMAMLMethod, MAMLMethod
from .matchingnet import MatchingNetMethod
from .mmnet import MMNetMethod
from .mmnet_mixed import MMNetMixedMethod, mixed_ranges
from .protonet import ProtoNetMethod

__all__ = [
    "METHODS",
    "ENTRY_POINT_GROUP",
    "Method",
    "MethodContext",
    "MethodUnavailable",
    "mixed_ranges",
    "register_method",
    "resolve_method",
]

#: command-line name -> method class, in leaderboard order (methods of your own are added
#: by :func:`register_method`)
METHODS: Dict[str, Type[Method]] = {
    cls.name: cls
    for cls in (MMNetMethod, MMNetMixedMethod, MAMLMethod, FirstOrderMAMLMethod, ProtoNetMethod, MatchingNetMethod)
}

#: the entry-point group where installed packages publish methods
ENTRY_POINT_GROUP = "mmnet_plugin.methods"


def register_method(cls: object, where: str = "") -> Type[Method]:
    """Add a method class to :data:`METHODS` under its ``name``.

    Args:
        cls: a subclass of :class:`Method` with a non-empty ``name``.
        where: where it came from, for messages (e.g. ``"mypkg.module:MyMethod"``).

    Returns:
        ``cls``.

    Raises:
        ValueError: if ``cls`` is not a :class:`Method` subclass, has no ``name``, or its
            name is taken by another class.
    """
    what = where or repr(cls)
    if not (inspect.isclass(cls) and issubclass(cls, Method)):
        raise ValueError(
            f"{what} is not a subclass of mmnet_plugin.bench.methods.Method; see examples/custom_method.py"
        )
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} has no `name`: set the class attribute `name` (its command-line name)")
    if name in METHODS and METHODS[name] is not cls:
        raise ValueError(
            f"{what} is named {name!r}, which is already {METHODS[name].__module__}."
            f"{METHODS[name].__qualname__}; give it another `name`"
        )
    METHODS[name] = cls
    return cls


def _entry_points() -> Dict[str, str]:
    from importlib import metadata

    try:
        eps = metadata.entry_points(group=ENTRY_POINT_GROUP)  # Python >= 3.10
    except TypeError:  # pragma: no cover - Python 3.9
        eps = metadata.entry_points().get(ENTRY_POINT_GROUP, [])
    return {ep.name: ep.value for ep in eps}


def resolve_method(spec: str) -> str:
    """The command-line name of a method, importing and registering it when needed.

    Args:
        spec: a registered name (``mmnet``), ``module:Class`` (imported), or the name of an
            entry point of the group :data:`ENTRY_POINT_GROUP`.

    Returns:
        The method's ``name`` in :data:`METHODS`.

    Raises:
        ValueError: an unknown name, a module that does not import, a missing class, or a
            class that is not a method; the message says which.
    """
    spec = spec.strip()
    if spec.lower() in METHODS:
        return spec.lower()
    target = spec if ":" in spec else _entry_points().get(spec)
    if target is None:
        raise ValueError(
            f"unknown method {spec!r}; choose from {', '.join(METHODS)}, or name your own as "
            f"module:Class (or publish it in the entry-point group {ENTRY_POINT_GROUP})"
        )
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"method {spec!r}: cannot import {module_name!r} ({exc}); is it on PYTHONPATH or installed?"
        ) from None
    except SyntaxError as exc:
        raise ValueError(
            f"method {spec!r}: module {module_name!r} has a syntax error ({exc.filename}, line {exc.lineno}: "
            f"{str(exc.msg)[:120]})"
        ) from None
    except Exception as exc:  # the module's own code raised while importing
        text = " ".join(str(exc).split())[:160]
        raise ValueError(
            f"method {spec!r}: importing module {module_name!r} raised {type(exc).__name__}: {text}"
        ) from None
    cls = getattr(module, attr, None)
    if cls is None:
        raise ValueError(f"method {spec!r}: module {module_name!r} has no {attr!r}")
    return register_method(cls, target).name
