"""The mock card host: a :class:`~geviso.Server` that answers like an issuer, steered by tests.

Parts: :mod:`~geviso.mock.host` (the host: default answers, applying rules),
:mod:`~geviso.mock.rules` (which request gets which treatment; no I/O),
:mod:`~geviso.mock.scenarios` (rule states, as WireMock's scenarios; no I/O),
:mod:`~geviso.mock.journal` (what it received and answered, masked; no I/O),
:mod:`~geviso.mock.nearmiss` (why no rule matched; no I/O),
:mod:`~geviso.mock.control` (the operations that steer and read a running host),
:mod:`~geviso.mock.admin` (those operations over HTTP, and the live page in
``admin_static``), :mod:`~geviso.mock.adminclient` (a client of that API, for tests),
and the fronts asked before the rules: :mod:`~geviso.mock.proxy` (forward to a real
host and record) and :mod:`~geviso.mock.playback` (answer from a recorded capture).
:mod:`~geviso.mock.cli` is the ``geviso mock-host`` command.
"""

from __future__ import annotations

from .adminclient import AdminClient
from .host import MockHost

__all__ = ["AdminClient", "MockHost"]
