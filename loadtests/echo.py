"""Network management: one echo test (0800, field 70 = 301) every few seconds."""

from __future__ import annotations

from locust import constant_pacing, task

from geviso.locust import ECHO, ISO8583User, network_message


class EchoUser(ISO8583User):
    """The acquirer's link monitor: a single user for the whole run, however many workers."""

    fixed_count = 1
    wait_time = constant_pacing(2.0)

    @task
    def echo(self) -> None:
        self.client.send(network_message(ECHO, self.client.stan()), name="0800 echo")
