"""The depot status page in a real headless Chromium, and the Prometheus exposition, on a live bus terminal.

The terminal is the real daemon on the vpcd bench with its API on loopback; cards are tapped
while the page is open, and what the page shows is checked against the daemon's own queue
and committed records. Debian's chromium and chromium-driver drive the browser; nothing is
downloaded.
"""

from __future__ import annotations

import collections
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from reader.config import read_secret
from sscard_sim.tearing import TearingCard
from tests.daemon.bench import TAP_DAY, ManualClock, Terminal, free_loopback_port, terminal_config
from tests.daemon.scenarios import NEXT_RIDE, cards
from tests.support.waiting import wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1400",
)
TAPPED = ("sichuan", "chongqing", "expired", "low-balance", "elderly", "no-transport", "cloned", "sichuan")
"""Accepted and refused cards, and one card twice (a ride later), for several reasons on the page."""


class LiveTerminal:
    """A bus terminal on the bench with its API on loopback, and a tap helper that moves the clock on."""

    def __init__(self, workdir: Path) -> None:
        self.listen = f"127.0.0.1:{free_loopback_port()}"
        self.config = terminal_config("bus", workdir, api_listen=self.listen)
        assert self.config.api is not None
        self.token = read_secret(self.config.api.token).decode()
        self.terminal = Terminal(self.config, ManualClock(TAP_DAY))
        self.deck = cards()

    @property
    def base(self) -> str:
        return f"http://{self.listen}"

    def tap(self, names: tuple[str, ...]) -> None:
        for name in names:
            self.terminal.clock.advance(NEXT_RIDE)
            self.terminal.tap(self.deck[name])

    def depth(self) -> int:
        daemon = self.terminal.daemon
        assert daemon is not None and daemon.services is not None
        return daemon.services.queue.status().depth

    def names(self) -> tuple[str, str]:
        """The tap reader's and the PSAM's names, as the daemon reports them."""
        daemon = self.terminal.daemon
        assert daemon is not None and daemon.services is not None and daemon.services.psam is not None
        return daemon.loops[0].reader.name, daemon.services.psam.name

    def settled(self) -> bool:
        """Whether the reader is back to waiting for the next card."""
        daemon = self.terminal.daemon
        assert daemon is not None
        return daemon.loops[0].state.value == "waiting"

    def records(self) -> list[dict[str, Any]]:
        self.terminal.collect()
        return list(self.terminal.records)


@pytest.fixture(scope="module")
def live(psam: TearingCard, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveTerminal]:
    terminal = LiveTerminal(tmp_path_factory.mktemp("live"))
    terminal.terminal.start()
    yield terminal
    terminal.terminal.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("Debian's chromium and chromium-driver are needed (make debs installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in BROWSER_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


def _text(driver: WebDriver, element_id: str) -> str:
    return str(driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id))


def _cells(driver: WebDriver, table_id: str) -> list[list[str]]:
    """The rows of a table in one read (the page redraws every poll, so elements go stale)."""
    rows: list[list[str]] = driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} tbody tr`)]"
        ".map(row => [...row.cells].map(cell => cell.textContent))",
        table_id,
    )
    return rows


def _attributes(driver: WebDriver, selector: str, *names: str) -> list[list[str | None]]:
    """Attributes of every element `selector` matches, in one read."""
    found: list[list[str | None]] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(node => arguments[1].map(n => node.getAttribute(n)))",
        selector,
        list(names),
    )
    return found


def test_status_page_shows_the_terminal_while_cards_are_tapped(
    live: LiveTerminal, browser: WebDriver, tmp_path: Path
) -> None:
    already = len(live.records())
    browser.get(f"{live.base}/v1/page#token={live.token}")
    wait = WebDriverWait(browser, 20, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    wait.until(lambda d: d.find_element(By.ID, "board").is_displayed())
    assert "token" not in browser.current_url, "the token stayed in the address bar"
    assert _text(browser, "taps-total") == str(already)

    tapping = threading.Thread(target=live.tap, args=(TAPPED,))
    tapping.start()
    # The page follows the taps as they come, not only at the end.
    wait.until(lambda d: int(_text(d, "taps-total") or 0) > already)
    tapping.join(120)
    assert not tapping.is_alive()

    records = live.records()
    total = len(records)
    wait.until(lambda d: _text(d, "taps-total") == str(total))
    assert total == already + len(TAPPED)
    wait.until(lambda d: _text(d, "queue-depth") == str(live.depth()))
    assert live.depth() == total, "no uplink: every committed record waits in the queue"

    drawn = _attributes(browser, "#reason-chart rect", "data-reason", "data-count")
    bars = {reason: int(count or -1) for reason, count in drawn}
    assert bars == collections.Counter(record["reason"] for record in records)
    ((plotted,),) = _attributes(browser, "#minute-chart", "data-total")
    assert plotted == str(total)
    assert sum(int(count or 0) for (count,) in _attributes(browser, "#minute-chart circle", "data-count")) == total

    shown = _cells(browser, "recent")
    newest = list(reversed(records))[:20]
    assert len(shown) == len(newest)
    for row, record in zip(shown, newest, strict=True):
        assert row[2:4] == [record["result"], record["reason"]]
        token = record["card_token"]
        assert row[6] == (f"{token[:8]}…" if token else "–")
    page = browser.page_source
    for record in records:
        if record["card_token"]:
            assert record["card_token"] not in page, "a whole card token is on the page"

    reader, psam_reader = live.names()
    wait.until(
        lambda d: _cells(d, "readers")[0][:3] == [reader, "waiting", "yes"]
    )
    assert _text(browser, "psam").startswith(f"{psam_reader}: open")
    screenshot = tmp_path / "status-page.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000


def test_status_page_asks_for_the_token(live: LiveTerminal, browser: WebDriver) -> None:
    browser.get(f"{live.base}/v1/page")
    wait = WebDriverWait(browser, 10, poll_frequency=0.2, ignored_exceptions=[StaleElementReferenceException])
    wait.until(lambda d: d.find_element(By.ID, "login").is_displayed())
    browser.find_element(By.ID, "token").send_keys("wrong")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait.until(lambda d: "refused" in _text(d, "problem"))
    assert not browser.find_element(By.ID, "board").is_displayed()
    browser.find_element(By.ID, "token").clear()
    browser.find_element(By.ID, "token").send_keys(live.token)
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait.until(lambda d: d.find_element(By.ID, "board").is_displayed())


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Every sample of the exposition by sample name, as Prometheus's own parser reads it."""
    found: dict[str, list[tuple[dict[str, str], float]]] = collections.defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[sample.name].append((dict(sample.labels), sample.value))
    return found


def test_metrics_expose_taps_queue_uplink_readers_and_psam(live: LiveTerminal) -> None:
    live.tap(("sichuan", "expired", "no-transport"))
    records = live.records()
    assert wait_until(live.settled, 5)
    headers = {"Authorization": f"Bearer {live.token}"}
    response = httpx.get(f"{live.base}/metrics", headers=headers, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    samples = _samples(response.text)

    expected = collections.Counter((r["profile"], r["result"], r["reason"]) for r in records)
    counted = {(s["kind"], s["result"], s["reason"]): v for s, v in samples["sscard_taps_total"]}
    assert counted == expected

    (count,) = [v for s, v in samples["sscard_tap_duration_seconds_count"] if s == {"kind": "bus"}]
    assert count == len(records), "every tap of the live terminal has a duration"
    buckets = sorted(
        ((float(s["le"]), v) for s, v in samples["sscard_tap_duration_seconds_bucket"]), key=lambda bucket: bucket[0]
    )
    assert buckets[-1] == (float("inf"), count)
    assert [v for _, v in buckets] == sorted(v for _, v in buckets), "buckets are cumulative"
    (total,) = [v for _, v in samples["sscard_tap_duration_seconds_sum"]]
    assert 0 < total / count < 5

    assert samples["sscard_queue_depth"] == [({}, float(live.depth()))]
    (age,) = [v for _, v in samples["sscard_queue_oldest_undelivered_age_seconds"]]
    assert age > 0
    assert samples["sscard_queue_out_of_service"] == [({}, 0.0)]
    reader, psam_reader = live.names()
    assert samples["sscard_reader_up"] == [({"reader": reader}, 1.0)]
    states = {s["state"]: v for s, v in samples["sscard_reader_state"]}
    assert sum(states.values()) == 1 and states["waiting"] == 1
    assert samples["sscard_psam_up"] == [({"reader": psam_reader}, 1.0)]
    assert samples["sscard_hotlist_loaded"] == [({}, 0.0)]
    assert samples["sscard_pending_debits"] == [({}, 0.0)]
    assert samples["sscard_healthy"] == [({}, 1.0)]
    assert httpx.get(f"{live.base}/metrics", timeout=10).status_code == 401
