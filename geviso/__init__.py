"""geviso: gevent ISO 8583 links, pools, a server and a mock card host.

``conn.send(msg)`` looks synchronous inside any greenlet while one TCP/TLS link carries
many interleaved requests, each matched to its response by key (STAN by default).
"""

from __future__ import annotations

import logging

from . import _moved, codec, errors, framing, keepalive, keys, masking, metrics, saf, stan, tls, tracing
from .connection import Connection
from .errors import (
    ConfigurationError,
    ConnectErrors,
    ConnectFailed,
    ConnectionClosed,
    DecodeError,
    DuplicateKey,
    EncodeError,
    FramingError,
    GevisoError,
    NoConnections,
    NotConnected,
    PoolClosed,
    Rejected,
    SafeError,
    SendTimeout,
    StoreError,
    StoreRefused,
    WrongThread,
)
from .mock.host import MockHost
from .pool import Pool
from .saf import StoreAndForward
from .server import Server
from .stan import StanGenerator

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
_moved.install()  # geviso.mockhost, geviso.rules...: the modules' paths before geviso.mock/capture

__all__ = [
    "ConfigurationError",
    "ConnectErrors",
    "ConnectFailed",
    "Connection",
    "ConnectionClosed",
    "DecodeError",
    "DuplicateKey",
    "EncodeError",
    "FramingError",
    "GevisoError",
    "MockHost",
    "NoConnections",
    "NotConnected",
    "Pool",
    "PoolClosed",
    "Rejected",
    "SafeError",
    "SendTimeout",
    "Server",
    "StanGenerator",
    "StoreAndForward",
    "StoreError",
    "StoreRefused",
    "WrongThread",
    "codec",
    "errors",
    "framing",
    "keepalive",
    "keys",
    "masking",
    "metrics",
    "saf",
    "stan",
    "tls",
    "tracing",
]
