"""The dashboard in a real browser (headless Debian Chromium driven by selenium) against the real server with API
keys on: the page asks for a key once, shows a streaming request running with a growing token count and then
completed without a reload, and its Cancel button ends a running stream. A screenshot is saved in the test's
temporary folder. Skipped, saying why, only where no browser or driver is installed."""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer
from tests.system_tools import require_tool

pytestmark = pytest.mark.integration

KEY = "sk-dashboard-test"
AUTH = {"Authorization": f"Bearer {KEY}"}
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
NO_EOS = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation ids: the streams run their full length
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--window-size=1400,1600"]
WAIT = 60.0
TOKENS = 150  # the watched stream: long enough for several progress ticks on a fast machine
LONG = 1500  # the cancelled stream: only the cancel ends it in reasonable time (the test context is 2048)


def browser_paths() -> tuple[str, str]:
    """Debian's chromium and chromium-driver (`.ci/run` installs both); selenium must not try to download one."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    require_tool(chromium and driver,
                 "no browser: install Debian's `chromium` and `chromium-driver` to run the dashboard test")
    return chromium, driver


@pytest.fixture(scope="module")
def server_config() -> dict[str, Any]:
    return {**DEFAULT_CONFIG, "api_keys": [KEY]}


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """Headless Chromium through selenium with its own profile folder, quit at the end of the block."""
    binary, driver_path = browser_paths()
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (requirements-dev.txt)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in [*CHROMIUM_FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def browser(server: GatewayServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(tmp_path_factory.mktemp("chromium-profile")) as driver:
        yield driver


@pytest.fixture(scope="module")
def dashboard(browser: Any, server: GatewayServer) -> Any:
    """The page, opened once and connected with the key typed into its form; no test reloads it."""
    from selenium.webdriver.common.by import By

    browser.get(server.url + "/dashboard")
    key_input = wait_until(browser, lambda: browser.find_element(By.ID, "key-input").is_displayed()
                           and browser.find_element(By.ID, "key-input"), "the page to ask for the API key")
    key_input.send_keys(KEY)
    browser.find_element(By.ID, "key-submit").click()
    wait_until(browser, lambda: text(browser, "#connection") == "live", "the event stream to connect")
    browser.execute_script("window.loadedOnce = true")
    return browser


# -- helpers ----------------------------------------------------------------------------------------------------


def wait_until(browser: Any, check: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # an element not there yet, or replaced while read
            value = None
        if value:
            return value
        time.sleep(0.05)
    logs = browser.get_log("browser") if hasattr(browser, "get_log") else []
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}; browser log: {logs[-5:]}")


def text(browser: Any, selector: str) -> str:
    from selenium.webdriver.common.by import By

    return browser.find_element(By.CSS_SELECTOR, selector).text


class Stream:
    """A streaming chat request read to its end on a thread: its id, when it ended and its last line."""

    def __init__(self, server: GatewayServer, max_tokens: int):
        body = {"model": MODEL, "messages": STORY, "max_tokens": max_tokens, "stream": True, "temperature": 0,
                "logit_bias": NO_EOS}
        self.response = requests.post(server.url + "/v1/chat/completions", json=body, headers=AUTH, stream=True,
                                      timeout=(10, 120))
        assert self.response.status_code == 200, self.response.text
        self.id = self.response.headers["X-Request-Id"]
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with self.response:
            self.lines = [line for line in self.response.iter_lines(decode_unicode=True) if line]

    def ended(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


def active_tokens(browser: Any, rid: str) -> int:
    return int(text(browser, f'#active tr[data-id="{rid}"] td.tokens'))


# -- tests --------------------------------------------------------------------------------------------------------


def test_the_api_needs_the_key_the_page_does_not(server: GatewayServer) -> None:
    assert requests.get(server.url + "/dashboard", timeout=10).status_code == 200
    assert requests.get(server.url + "/api/requests", timeout=10).status_code == 401
    assert requests.get(server.url + "/api/requests", headers=AUTH, timeout=10).status_code == 200


def test_a_stream_shows_running_with_a_growing_count_then_completed(dashboard: Any, server: GatewayServer,
                                                                    tmp_path: Path) -> None:
    wait_until(dashboard, lambda: text(dashboard, f'#models tr[data-id="{MODEL}"] td.name') == MODEL,
               "the loaded model to be listed")
    stream = Stream(server, max_tokens=TOKENS)
    rid = stream.id
    wait_until(dashboard, lambda: text(dashboard, f'#active tr[data-id="{rid}"] td.phase') == "generating",
               "the request to show as generating")
    first = active_tokens(dashboard, rid)
    wait_until(dashboard, lambda: active_tokens(dashboard, rid) > first, "the token count to grow")
    dashboard.save_screenshot(str(tmp_path / "dashboard-running.png"))
    assert stream.ended(WAIT), "the stream did not end"
    status = f'#recent tr[data-id="{rid}"] td.status'
    wait_until(dashboard, lambda: text(dashboard, status) == "completed", "the request to show as completed")
    assert text(dashboard, f'#recent tr[data-id="{rid}"] td.tokens') == str(TOKENS)
    assert not dashboard.find_elements("css selector", f'#active tr[data-id="{rid}"]')
    assert dashboard.execute_script("return window.loadedOnce") is True, "the page was reloaded"
    screenshot = tmp_path / "dashboard.png"
    dashboard.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 0
    print(f"dashboard screenshot: {screenshot}")


def test_the_cancel_button_ends_a_running_stream(dashboard: Any, server: GatewayServer, tmp_path: Path) -> None:
    stream = Stream(server, max_tokens=LONG)
    rid = stream.id
    wait_until(dashboard, lambda: active_tokens(dashboard, rid) > 0, "the long request to show tokens")
    dashboard.find_element("css selector", f'#active tr[data-id="{rid}"] button[data-action="cancel"]').click()
    assert stream.ended(30), "the stream went on after Cancel was clicked"
    assert stream.lines[-1] == "data: [DONE]", stream.lines[-3:]
    status = f'#recent tr[data-id="{rid}"] td.status'
    wait_until(dashboard, lambda: text(dashboard, status) == "cancelled", "the request to show as cancelled")
    assert int(text(dashboard, f'#recent tr[data-id="{rid}"] td.tokens')) < LONG
    assert dashboard.execute_script("return window.loadedOnce") is True, "the page was reloaded"
    dashboard.save_screenshot(str(tmp_path / "dashboard-cancelled.png"))
