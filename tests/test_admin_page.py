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
from geviso.mock.admin import AdminServer
from geviso.mock.host import MockHost

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


def console(browser: Any) -> str:
    """The page's console messages (JavaScript errors show up here), for a failure's message."""
    try:
        entries = blocking(browser.get_log, "browser")
    except Exception as exc:  # a driver without the log endpoint: say so rather than hide the failure
        return f"(no console log: {type(exc).__name__})"
    return "; ".join(str(e.get("message")) for e in entries) or "(empty)"


def until(browser: Any, condition: Callable[[Any], Any], what: str, timeout: float = WAIT) -> Any:
    """Selenium's explicit wait for ``condition(driver)`` (retried while it is falsy or the
    element is missing or was re-rendered), run in a thread; an AssertionError naming
    ``what``, with the page's console, when it never holds."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
        TimeoutException,
    )
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(
        browser,
        timeout,
        poll_frequency=0.2,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )
    try:
        return blocking(wait.until, condition)
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}; its console: {console(browser)}") from None


def text_of(element_id: str) -> Callable[[Any], str]:
    from selenium.webdriver.common.by import By

    return lambda driver: str(driver.find_element(By.ID, element_id).text)


def click(browser: Any, selector: str, what: str) -> None:
    """Click the element at ``selector`` once it is there, again if the page replaced it under
    the click (it rebuilds the rules table when the rules change)."""
    from selenium.webdriver.common.by import By

    until(browser, lambda driver: driver.find_element(By.CSS_SELECTOR, selector).click() or True, what)


def wait_on_host(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> None:
    """Wait in the hub for a change on the mock host (not the page) that a click caused."""
    with gevent.Timeout(timeout, AssertionError(f"the host never showed {what}")):
        while not predicate():
            gevent.sleep(0.1)


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
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for failures
    driver = blocking(lambda: webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options))
    try:
        yield driver
    finally:
        blocking(driver.quit)


def test_the_live_page_updates_while_a_client_sends_and_disabling_a_rule_changes_the_answer(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC

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
        until(browser, EC.title_is("geviso mock host"), "its title (is index.html in the package?)")
        until(browser, EC.text_to_be_present_in_element((By.ID, "status"), "live"), "a first overview")

        def received(driver: Any) -> int:
            value = text_of("received")(driver)
            return int(value) if value.isdigit() else 0

        first = until(browser, received, "a received count")
        until(browser, lambda driver: received(driver) > first + 5, "the received count going up")
        until(browser, EC.text_to_be_present_in_element((By.ID, "journal"), "411111******1111"), "the masked PAN")
        assert "4111111111111111" not in blocking(lambda: browser.page_source)
        until(browser, lambda driver: text_of("links-count")(driver) == "1", "one link")

        def rate(driver: Any) -> float:
            value = text_of("rate")(driver)
            return float(value) if value not in ("", "–") else 0.0

        until(browser, lambda driver: rate(driver) > 0, "a message rate")
        assert answers[-1] == "51"

        shot = os.environ.get("GEVISO_ADMIN_SCREENSHOT") or str(tmp_path / "admin-page.png")
        assert blocking(browser.save_screenshot, shot)

        first_row = 'tr[data-rule-index="0"]'
        click(browser, first_row + " .rule-enabled", "the first rule's checkbox")
        wait_on_host(lambda: not host.rules.rules[0].enabled, "the rule disabled")
        assert conn.send(request)["39"] == "00"  # the next answer: no longer declined
        until(
            browser,
            lambda driver: "disabled" in str(driver.find_element(By.CSS_SELECTOR, first_row).get_attribute("class")),
            "the rule shown disabled",
        )

        click(browser, first_row + " .rule-down", "the first rule's down arrow")
        wait_on_host(lambda: host.rules.rules[1].name == "terminal 7 declined", "the rule moved down")
        until(
            browser,
            EC.text_to_be_present_in_element((By.CSS_SELECTOR, 'tr[data-rule-index="1"]'), "terminal 7 declined"),
            "the rule shown moved down",
        )
    finally:
        sender.kill()
        conn.close(timeout=1)
        admin.stop()
        host.stop(timeout=2)
