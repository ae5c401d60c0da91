"""The admin live page in a real browser: Debian's headless Chromium driven by Selenium
through Debian's chromedriver. Skipped, with a printed line saying so, where they are not
installed (``apt-get install chromium chromium-driver``; ``.ci/run`` installs them).

Selenium's calls block, so each runs in gevent's thread pool while the mock host, its
admin server and a client sending requests keep running in this process's hub.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import gevent
import pytest
from iso8583.specs import default as spec

import geviso
from geviso.admin import AdminServer
from geviso.mockhost import MockHost

CHROMIUM = os.environ.get("GEVISO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("GEVISO_CHROMEDRIVER", "/usr/bin/chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
#: Seconds the page gets to show a change (it polls every second; the machine may be busy).
WAIT = 20.0


def blocking(func: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking Selenium call in a thread so the hub keeps serving the page."""
    return gevent.get_hub().threadpool.apply(func, args)


def in_page(func: Callable[[], Any]) -> Any:
    """``func`` (Selenium calls) in a thread; None when the page re-rendered the element
    under it (it rebuilds the rules table when the rules change)."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException

    def call() -> Any:
        try:
            return func()
        except (StaleElementReferenceException, NoSuchElementException):
            return None

    return blocking(call)


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    with gevent.Timeout(timeout, AssertionError(f"the page never showed {what}")):
        while True:
            value = predicate()
            if value:
                return value
            gevent.sleep(0.2)


def click(browser: Any, selector: str, what: str) -> None:
    """Click the element at ``selector``, again if the page replaced it meanwhile."""
    from selenium.webdriver.common.by import By

    wait_for(lambda: in_page(lambda: browser.find_element(By.CSS_SELECTOR, selector).click() or True), what)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    webdriver = None
    if not missing:
        try:
            from selenium import webdriver
        except ImportError:
            missing = ["the selenium package"]
    if missing or webdriver is None:
        reason = f"admin page browser test skipped: no {', '.join(missing)} (apt-get install chromium chromium-driver)"
        print(reason, file=sys.__stderr__, flush=True)
        pytest.skip(reason)
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium Manager fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = blocking(lambda: webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options))
    try:
        yield driver
    finally:
        blocking(driver.quit)


def test_the_live_page_updates_while_a_client_sends_and_disabling_a_rule_changes_the_answer(browser, tmp_path):
    from selenium.webdriver.common.by import By

    rules = [
        {"name": "terminal 7 declined", "match": {"fields": {"41": "TERM0007"}}, "code": "51"},
        {"name": "refunds", "match": {"mti": "0200", "fields": {"3": "200000"}}, "code": "05"},
        {"name": "login flow", "scenario": "sign-on", "new_state": "signed on", "match": {"mti": "0800"}},
    ]
    host = MockHost(("127.0.0.1", 0), rules=rules)
    host.start()
    admin = AdminServer(host, ("127.0.0.1", 0)).start()
    conn = geviso.Connection(("127.0.0.1", host.server_port), spec, send_timeout=5.0).connect()
    request = {"t": "0100", "2": "4111111111111111", "3": "000000", "4": "000000002500", "41": "TERM0007"}
    answers: list[str] = []

    def keep_sending() -> None:
        while True:
            answers.append(conn.send(request)["39"])
            gevent.sleep(0.05)

    sender = gevent.spawn(keep_sending)
    try:
        blocking(browser.get, admin.url + "/")

        def text(element_id: str) -> str:
            return str(in_page(lambda: browser.find_element(By.ID, element_id).text) or "")

        def received() -> int:
            value = text("received")
            return int(value) if value.isdigit() else 0

        first = wait_for(received, "a received count")
        wait_for(lambda: received() > first + 5, "the received count going up")
        wait_for(lambda: "411111******1111" in text("journal"), "the masked PAN in the journal")
        assert "4111111111111111" not in blocking(lambda: browser.page_source)
        wait_for(lambda: text("links-count") == "1", "one link")
        wait_for(lambda: text("rate") not in ("", "–") and float(text("rate")) > 0, "a message rate")
        assert answers[-1] == "51"

        shot = os.environ.get("GEVISO_ADMIN_SCREENSHOT") or str(tmp_path / "admin-page.png")
        assert blocking(browser.save_screenshot, shot)

        click(browser, 'tr[data-rule-index="0"] .rule-enabled', "the first rule's checkbox")
        wait_for(lambda: not host.rules.rules[0].enabled, "the rule disabled on the host")
        assert conn.send(request)["39"] == "00"  # the next answer: no longer declined

        def row_class() -> str:
            return str(browser.find_element(By.CSS_SELECTOR, 'tr[data-rule-index="0"]').get_attribute("class"))

        wait_for(lambda: "disabled" in str(in_page(row_class)), "the rule shown disabled")

        click(browser, 'tr[data-rule-index="0"] .rule-down', "the first rule's down arrow")
        wait_for(lambda: host.rules.rules[1].name == "terminal 7 declined", "the rule moved down")
    finally:
        sender.kill()
        conn.close(timeout=1)
        admin.stop()
        host.stop(timeout=2)
