"""Builds ``SSLContext`` objects for geviso links (TLS 1.2 minimum), and nothing else."""

from __future__ import annotations

import ssl
from typing import Any, Optional

from gevent import ssl as gevent_ssl


class ClientContext(gevent_ssl.SSLContext):  # type: ignore[misc]
    """A client ``SSLContext`` that also remembers the name to verify the host by."""

    server_hostname: Optional[str] = None


def client_context(
    *,
    cafile: Optional[str] = None,
    certfile: Optional[str] = None,
    keyfile: Optional[str] = None,
    server_hostname: Optional[str] = None,
    check_hostname: bool = True,
) -> ClientContext:
    """A context that verifies the host against ``cafile`` (or the system CAs).

    Give ``certfile``/``keyfile`` to present a client certificate (mutual TLS).
    ``server_hostname`` is the name checked against the host's certificate; by
    default the host part of the connection's address.
    """
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cafile:
        ctx.load_verify_locations(cafile=cafile)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if certfile:
        ctx.load_cert_chain(certfile, keyfile)
    ctx.server_hostname = server_hostname
    return ctx


def server_context(
    *,
    certfile: str,
    keyfile: Optional[str] = None,
    client_cafile: Optional[str] = None,
) -> ssl.SSLContext:
    """A host's context; with ``client_cafile`` every client must present a certificate
    signed by that CA (mutual TLS)."""
    ctx: ssl.SSLContext = gevent_ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certfile, keyfile)
    if client_cafile:
        ctx.load_verify_locations(cafile=client_cafile)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def wrap(
    sock: Any,
    context: ssl.SSLContext,
    *,
    server_side: bool = False,
    server_hostname: Optional[str] = None,
    handshake: bool = True,
) -> Any:
    """Wrap a gevent socket cooperatively with any ``SSLContext``, stdlib or gevent,
    and complete the handshake (with ``handshake=False``, call ``do_handshake()`` on the
    result: the raw socket belongs to the result from now on, close that one)."""
    return gevent_ssl.SSLSocket(
        sock=sock,
        server_side=server_side,
        server_hostname=None if server_side else server_hostname,
        do_handshake_on_connect=handshake,
        _context=context,
    )
