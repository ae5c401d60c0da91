"""pyiso8583 specs by name, for the CLI and config files.

``default`` and ``default_ascii`` are pyiso8583's bundled specs; anything else is a
Python path ``package.module:NAME`` (``NAME`` may be dotted) to a spec of your own.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from iso8583 import specs as _bundled

from .codec import Spec
from .errors import ConfigurationError

#: The bundled specs by name.
BUNDLED: dict[str, Spec] = {"default": _bundled.default, "default_ascii": _bundled.default_ascii}


def by_name(name: str) -> Spec:
    """The spec called ``name``: ``default``, ``default_ascii`` or ``package.module:NAME``."""
    if name in BUNDLED:
        return BUNDLED[name]
    module_name, sep, attr = name.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"unknown spec {name!r}; use {', '.join(BUNDLED)} or package.module:NAME")
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"spec {name!r}: cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigurationError(f"spec {name!r}: {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, Mapping) or "t" not in obj or "p" not in obj:
        raise ConfigurationError(f"spec {name!r} is not a pyiso8583 spec (a dict with 't', 'p' and the fields)")
    return obj


__all__ = ["BUNDLED", "by_name"]
