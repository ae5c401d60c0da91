"""Tracing: one span per send() through the listener hook, with no tracing dependency.

With the OpenTelemetry API installed (``pip install opentelemetry-api``) the spans go
to its global tracer; otherwise a small recorder keeps them and prints them.

Run: python examples/tracing.py
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Optional

import gevent
from iso8583.specs import default as spec

import geviso
from geviso import masking


@dataclass
class Span:
    """What a tracer would record for one request."""

    name: str
    attributes: dict[str, str]
    start: float = field(default_factory=time.monotonic)
    end: Optional[float] = None
    error: Optional[str] = None

    @property
    def ms(self) -> float:
        return 1000.0 * ((self.end or self.start) - self.start)


class SpanRecorder:
    """A tracing listener that keeps spans in a list (a stand-in for a real tracer)."""

    def __init__(self) -> None:
        self.spans: list[Span] = []

    def request_start(self, conn: geviso.Connection, request: Mapping[str, str]) -> Span:
        host, port = conn.address
        # Only safe attributes: the MTI, the masked PAN, the peer. Never raw fields.
        attributes = {"iso8583.mti": request.get("t", "?"), "net.peer": f"{host}:{port}"}
        if "2" in request:
            attributes["iso8583.pan"] = masking.mask_pan(request["2"])
        return Span(f"ISO8583 {request.get('t', '?')}", attributes)

    def request_end(self, span: Span, response: Optional[dict[str, str]], error: Optional[BaseException]) -> None:
        span.end = time.monotonic()
        if response is not None:
            span.attributes["iso8583.stan"] = response.get("11", "")
            span.attributes["iso8583.response_code"] = response.get("39", "")
        else:
            span.error = type(error).__name__
        self.spans.append(span)


class OpenTelemetryListener:
    """The same hook feeding OpenTelemetry: a CLIENT span per request."""

    def __init__(self) -> None:
        from opentelemetry import trace

        self.trace = trace
        self.tracer = trace.get_tracer("geviso")

    def request_start(self, conn: geviso.Connection, request: Mapping[str, str]) -> Any:
        return self.tracer.start_span(
            f"ISO8583 {request.get('t', '?')}",
            kind=self.trace.SpanKind.CLIENT,
            attributes={"iso8583.mti": request.get("t", "?")},
        )

    def request_end(self, span: Any, response: Optional[dict[str, str]], error: Optional[BaseException]) -> None:
        if error is not None:
            span.record_exception(error)
            span.set_status(self.trace.Status(self.trace.StatusCode.ERROR, type(error).__name__))
        elif response is not None:
            span.set_attribute("iso8583.response_code", response.get("39", ""))
        span.end()


def main() -> None:
    try:
        otel: Optional[OpenTelemetryListener] = OpenTelemetryListener()
    except ImportError:
        otel = None
    recorder = SpanRecorder()
    listeners: list[Any] = [recorder] + ([otel] if otel is not None else [])
    rules = [
        {"name": "decline big amounts", "match": {"amount_above": 100000}, "code": "51"},
        {"name": "lose one terminal", "match": {"fields": {"41": "LOSTTERM"}}, "action": "drop"},
    ]
    with geviso.MockHost(("127.0.0.1", 0), spec, rules=rules) as host:
        with geviso.Connection(host.address, spec, send_timeout=2.0, listeners=listeners) as conn:
            requests = [
                {"t": "0800", "70": "301"},
                {"t": "0200", "2": "4111111111111111", "3": "000000", "4": "000000002500", "41": "TERM0001"},
                {"t": "0200", "2": "5500000000000004", "3": "000000", "4": "000000250000", "41": "TERM0001"},
            ]

            def send(request: dict[str, str]) -> None:
                # Catch inside the greenlet: one that raises makes gevent print its
                # arguments, and these carry a PAN. The span records the error anyway.
                try:
                    conn.send(request)
                except geviso.GevisoError:
                    pass

            gevent.joinall([gevent.spawn(send, r) for r in requests])
            try:
                conn.send({"t": "0100", "3": "000000", "4": "000000000100", "41": "LOSTTERM"}, timeout=0.2)
            except geviso.SendTimeout:
                pass
    print(f"{len(recorder.spans)} spans" + (" (also sent to OpenTelemetry)" if otel else ""))
    for span in sorted(recorder.spans, key=lambda s: s.start):
        outcome = f"error={span.error}" if span.error else f"code={span.attributes.get('iso8583.response_code')}"
        extras = " ".join(f"{k}={v}" for k, v in span.attributes.items() if k != "iso8583.response_code")
        print(f"  {span.name:<14} {span.ms:7.2f} ms  {outcome:<17} {extras}")


if __name__ == "__main__":
    main()
