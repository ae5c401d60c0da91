"""Every exception geviso raises derives from :class:`GevisoError`.

Texts never carry message data: an error that wraps a codec failure shows a safe
summary (field and position) and keeps the original reachable as ``__cause__``.
"""

from __future__ import annotations

from typing import Any

from .masking import mask_text


class GevisoError(Exception):
    """Base class of every geviso error."""


class ConfigurationError(GevisoError, ValueError):
    """An option, spec, framing or rules file is not usable."""


class ConnectionError(GevisoError):  # noqa: A001 - deliberately mirrors the builtin
    """A link could not be used (base of the link-level errors)."""


class ConnectFailed(ConnectionError):
    """Dialling, the TLS handshake or ``on_connect`` failed."""


class NotConnected(ConnectionError):
    """The connection was used before :meth:`Connection.connect`."""


class TooManyConnections(ConnectionError):
    """A server refused a link because ``max_connections`` links were open."""


class ConnectionClosed(ConnectionError):
    """The link is closed or closing; a pending request will get no answer on it.

    ``sent`` is True when the request had been handed to the socket, so it may have
    reached the host: never resend such a request blindly (send a reversal instead).
    """

    def __init__(self, message: str = "link closed", *, sent: bool = False) -> None:
        self.sent = sent
        super().__init__(message)


class SendTimeout(GevisoError, TimeoutError):
    """No response arrived within the send timeout."""


class DuplicateKey(GevisoError):
    """A request with the same key is already in flight on this connection."""


class Rejected(GevisoError):
    """The pending request was rejected (for example by a 0620 reject advice)."""

    def __init__(self, reason: Any = None) -> None:
        self.reason = reason
        # The reason may be (or quote) a message, such as the 0620 itself: its text is masked.
        shown = f"request rejected: {mask_text(str(reason))}" if reason is not None else "request rejected"
        super().__init__(shown)


class Declined(GevisoError):
    """The host answered with a response code (field 39) that is not an approval; raised
    where a decline counts as a failure (sign-on, Locust users that ask for it)."""

    def __init__(self, code: str) -> None:
        self.code = code
        super().__init__(f"declined with response code {code or 'missing'}")


class ProtocolError(GevisoError):
    """Bytes on the link do not follow the protocol (framing or message format)."""


class LocalProtocolError(ProtocolError):
    """We were asked to send something that cannot be sent (bad message, bad key)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something we cannot read."""


class FramingError(ProtocolError):
    """A length header is garbage or over the maximum frame length; the link is failed."""


class SafeError(GevisoError):
    """An error whose text holds no message data; the cause stays in ``__cause__``."""


class EncodeError(SafeError, LocalProtocolError):
    """A message could not be encoded; only that caller fails, the link stays up."""


class DecodeError(SafeError, RemoteProtocolError):
    """An incoming frame could not be decoded; reading goes on."""


class NotFound(GevisoError, LookupError):
    """No rule, link or scenario by that name or position (on a mock host)."""


class AdminError(GevisoError):
    """A mock host's admin API refused a request; ``status`` is its HTTP status (400 bad
    input, 401 no token, 404 no such rule or link...) and the text its one-line reason."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)
class CaptureError(GevisoError, ValueError):
    """A capture (or a packet capture to import) cannot be read, written or used."""


class PoolError(GevisoError):
    """Base of the pool errors."""


class PoolClosed(PoolError):
    """The pool is closed."""


class NoConnections(PoolError):
    """The pool has no usable connection right now."""


class ConnectErrors(PoolError):
    """Fewer than ``min_connections`` links came up; ``errors`` holds each failure."""

    def __init__(self, message: str, errors: list[BaseException]) -> None:
        self.errors = errors
        super().__init__(f"{message}: " + "; ".join(type(e).__name__ + ": " + str(e) for e in errors))


class StoreError(GevisoError):
    """A store and forward store failed (disk full, database down...): what was being
    done did not happen (a ``put`` that raises stored nothing)."""


class StoreRefused(StoreError, ConfigurationError):
    """A store cannot be opened as it is (not a store, damaged, or of a newer schema);
    it is left untouched."""


class WrongThread(GevisoError, RuntimeError):
    """A link, pool, server or store was used from a thread other than the one it
    belongs to: gevent objects work within the thread whose hub runs them."""


__all__ = [
    "AdminError",
    "CaptureError",
    "ConfigurationError",
    "ConnectErrors",
    "ConnectFailed",
    "ConnectionClosed",
    "ConnectionError",
    "DecodeError",
    "Declined",
    "DuplicateKey",
    "EncodeError",
    "FramingError",
    "GevisoError",
    "LocalProtocolError",
    "NoConnections",
    "NotConnected",
    "NotFound",
    "PoolClosed",
    "PoolError",
    "ProtocolError",
    "Rejected",
    "RemoteProtocolError",
    "SafeError",
    "SendTimeout",
    "StoreError",
    "StoreRefused",
    "TooManyConnections",
    "WrongThread",
]
