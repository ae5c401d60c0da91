"""Old import paths of the modules that moved into :mod:`geviso.mock` and :mod:`geviso.capture`.

``import geviso.mockhost`` or ``from geviso.rules import RuleSet`` still works and gives
the moved module itself (not a copy), so classes, ``isinstance`` checks, monkeypatching
and pickles are the same through either path. A finder on ``sys.meta_path`` answers for
the old paths only, and imports nothing until a program asks for one of them.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Optional

#: Each old module path, and the module it moved to.
MOVED = {
    "geviso.mockhost": "geviso.mock.host",
    "geviso.mockcontrol": "geviso.mock.control",
    "geviso.journal": "geviso.mock.journal",
    "geviso.scenarios": "geviso.mock.scenarios",
    "geviso.nearmiss": "geviso.mock.nearmiss",
    "geviso.rules": "geviso.mock.rules",
    "geviso.admin": "geviso.mock.admin",
    "geviso.adminclient": "geviso.mock.adminclient",
    "geviso.proxy": "geviso.mock.proxy",
    "geviso.playback": "geviso.mock.playback",
    "geviso.pcap": "geviso.capture.pcap",
    "geviso.replay": "geviso.capture.replay",
    "geviso.refresh": "geviso.capture.refresh",
    "geviso.locust_replay": "geviso.capture.locust",
}


class MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path in :data:`MOVED`; importing it imports the new one instead."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        """A spec for an old path, None for anything else."""
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def exec_module(self, module: ModuleType) -> None:
        """Put the moved module under the old name: the import statement returns that one."""
        sys.modules[module.__name__] = importlib.import_module(MOVED[module.__name__])


def install() -> None:
    """Make the old paths importable (once per process)."""
    if not any(isinstance(finder, MovedFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedFinder())


__all__ = ["MOVED", "MovedFinder", "install"]
