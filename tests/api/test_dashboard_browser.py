"""The dashboard in a real browser: Debian's chromium, driven by Selenium through chromedriver.

The main test runs over the real thing: the embedded devnet and three real daemons (taker ->
relay -> maker, ``tests/api/daemon_net.py``, one network for the module), the taker's own
``kofo.node.api`` app and dashboard on 127.0.0.1. It opens every view, places a trade from the
form, and watches the swap timeline reach "redeemed" on both legs as the node's events arrive
on the WebSocket. Screenshots of each view, desktop (1280x800) and phone (390x844), light and
dark, go to ``tests/artifacts/`` (``double-*`` for those of the double).

The double (``tests/api/dashboard_fixture.py``) stays only for what a live devnet does not
produce on demand; each such test says why.

Install the browser with ``scripts/install-nodes.sh chromium``; without it the test skips
(and fails in CI, like every real-binary test).
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
TOKEN = "7f" * 32
READONLY_TOKEN = "3c" * 32
WAIT = 30  # seconds any one thing may take to show up in the page (a bound, not a goal)
TRADE_WAIT = 240  # seconds a real routed trade may take to commit, or to settle (a bound)

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    reason = "chromium/chromedriver not installed (scripts/install-nodes.sh chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason, allow_module_level=True)

uvicorn = pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import (  # noqa: E402
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from kofo.node.service import OfferSpec, TradeRequest  # noqa: E402
from tests.api.daemon_net import DaemonNet  # noqa: E402
from tests.api.dashboard_fixture import (  # noqa: E402
    BTC,
    ETH,
    JOURNAL_SWAP,
    ME,
    MY_BTC,
    OLD_SWAP,
    FixtureNode,
    fixture_app,
    hexid,
)

pytestmark = [pytest.mark.timeout(600)]


class _Server:
    """uvicorn serving ``app`` on a loopback socket, in a thread, stopped at exit."""

    def __init__(self, app: Any, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart, same port
        self.sock.bind(("127.0.0.1", port))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", ws="websockets-sansio", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> _Server:
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(WAIT)
        self.sock.close()


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonNet]:
    """The real daemons on the embedded devnet, the taker's real API app on 127.0.0.1: one
    network for the module (it takes most of its time)."""
    with DaemonNet(tmp_path_factory.mktemp("daemons")) as n:
        yield n


# The double (tests/api/dashboard_fixture.py), served by the real kofo.node.api app where the
# test needs no knob of the double's own app: only for what a live devnet does not produce.
@pytest.fixture
def node(tmp_path: Path) -> Iterator[FixtureNode]:
    n = FixtureNode(tmp_path)
    yield n
    n.log.close()


@pytest.fixture
def app(node: FixtureNode) -> Any:
    from kofo.node.api import create_app

    return create_app(node, token=TOKEN, readonly_token=READONLY_TOKEN)  # type: ignore[arg-type]


@pytest.fixture
def server(app: Any) -> Iterator[_Server]:
    with _Server(app) as s:
        yield s


@pytest.fixture
def browser() -> Iterator[Any]:
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1280,800",
        "--force-device-scale-factor=1",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT)
    viewport(driver, 1280, 800, mobile=False)
    try:
        yield driver
    finally:
        driver.quit()


# -- helpers ---------------------------------------------------------------------------------


def wait_for(driver: Any, what: str, predicate: Any, wait: float = WAIT) -> Any:
    try:
        # the page re-renders live: an element read while replaced is read again next poll
        return WebDriverWait(
            driver, wait, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(lambda d: predicate(d))
    except TimeoutException:
        shot(driver, f"FAILED-{what}")
        raise AssertionError(f"the page never showed {what}") from None


def text(driver: Any, css: str) -> str:
    """The rendered text of every match, read in one step (the page re-renders live)."""
    return str(
        driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(e => e.innerText.trim()).join(' ')",
            css,
        )
    )


def shot(driver: Any, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"dashboard-{name}.png"
    # the whole page, not only the viewport: set the window to the document's height
    driver.save_screenshot(str(path))
    return path


def viewport(driver: Any, width: int, height: int, *, mobile: bool, dark: bool = False) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {
            "width": width,
            "height": height,
            "deviceScaleFactor": 1,
            "mobile": mobile,
        },
    )
    driver.execute_cdp_cmd(
        "Emulation.setEmulatedMedia",
        {
            "features": [{"name": "prefers-color-scheme", "value": "dark" if dark else "light"}],
        },
    )


def go(driver: Any, view: str, ready_css: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'#tabs a[data-view="{view}"]').click()
    wait_for(driver, f"the {view} view", lambda d: d.find_elements(By.CSS_SELECTOR, ready_css))
    wait_for(
        driver,
        f"the {view} view loaded",
        lambda d: not d.find_elements(By.CSS_SELECTOR, ".loading"),
    )


def no_horizontal_overflow(driver: Any) -> bool:
    return bool(
        driver.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1"
        )
    )


def leg_states(driver: Any, swap_id: str) -> list[str]:
    return list(
        driver.execute_script(
            "return Array.from(document.querySelectorAll(arguments[0]))"
            ".map(e => e.dataset.legState)",
            f"#swap-{swap_id} .leg",
        )
    )


def severe_console_errors(driver: Any) -> list[str]:
    """Script errors the page logged (the browser's own network lines, for a 4xx or a refused
    WebSocket the test provoked, are not errors of the page: it shows them)."""
    return [
        e["message"]
        for e in driver.get_log("browser")
        if e["level"] == "SEVERE"
        and "Failed to load resource" not in e["message"]
        and "WebSocket connection to" not in e["message"]
    ]


def place_and_cancel(driver: Any) -> str:
    """Place a 0.01 trade from the trade view's form and cancel it (the double holds it before
    commit, in "quoting"); returns its id."""
    d = driver
    d.find_element(By.ID, "trade-amount").clear()
    d.find_element(By.ID, "trade-amount").send_keys("0.01")
    wait_for(d, "quotes", lambda d: d.find_elements(By.ID, "chosen-quote"))
    place = d.find_element(By.ID, "place-trade")
    wait_for(d, "the trade button enabled", lambda d, p=place: p.is_enabled())
    place.click()
    wait_for(d, "the new trade", lambda d: text(d, "#current-trade .badge").lower() == "quoting")
    trade_id = str(d.execute_script("return decodeURIComponent(location.hash.split('/')[2])"))
    d.execute_script("document.querySelector('#current-trade button.danger').click()")
    wait_for(d, "cancelled", lambda d: "cancelled" in text(d, "#current-trade .badge").lower())
    return trade_id


def listed_trades(driver: Any) -> list[str]:
    """The trade ids in the trade view's list, top to bottom, read in one step."""
    return list(
        driver.execute_script(
            "return Array.from(document.querySelectorAll('#trades tbody tr a'))"
            ".map(a => a.textContent.trim())"
        )
    )


# -- the tests -------------------------------------------------------------------------------


def test_the_dashboard_trades_on_a_real_daemon_and_follows_the_swap_to_redeemed(browser, net):
    """The real thing: the taker daemon's own API app and dashboard, its trade routed through
    the relay to the maker on the embedded devnet's chains and ledger."""
    d = browser
    info = net.run(net.taker.info())
    # the wallet's own addresses (not the per-order HTLC key) and block heights (not the
    # Ethereum leg's time clock)
    assert info.addresses["btc"].startswith("bcrt1") and info.addresses["eth"].startswith("0x")
    heights = {c.chain: c.height for c in info.chains}
    eth_tip = net.run(asyncio.to_thread(net.taker.chains.adapters["eth"].tip))
    assert heights["eth"] is not None and 0 < heights["eth"] <= eth_tip.height, heights
    relay_id = net.nodes["relay"].node_id.hex()
    viewport(d, 1280, 800, mobile=False)

    # The CLI's link: / redirects to the page, the token rides in the fragment and is then
    # removed from the address bar.
    d.get(f"{net.url}/#token={net.token}")
    wait_for(d, "the node's name", lambda d: text(d, "#node-name") == "taker")
    assert net.token not in d.current_url
    assert d.current_url.startswith(f"{net.url}/dashboard/")
    wait_for(d, "the live event stream", lambda d: text(d, "#live") == "live")

    # Node: identity and addresses whole, balances per asset, the ledger's height.
    go(d, "node", "dl.facts")
    wanted = (info.node_id, *info.addresses.values(), "BTC", "ETH")
    wait_for(d, "identity and balances", lambda d: all(w in text(d, "#view-node") for w in wanted))
    assert "unreachable" not in text(d, "#view-node")
    shot(d, "desktop-node")

    # Order book: the maker's offer (1 ETH per BTC) as heard over the relay, and its depth.
    go(d, "book", "canvas#depth")
    wait_for(
        d, "the maker's offer", lambda d: d.find_elements(By.CSS_SELECTOR, "#view-book tbody tr")
    )
    assert "1" in text(d, ".book-summary strong")
    painted = d.execute_script(
        "const c = document.getElementById('depth');"
        "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n;"
    )
    assert painted > 5_000, f"the depth chart drew only {painted} pixels"
    shot(d, "desktop-book")

    # Trade: too many decimals is refused in the form; more than the balance by the node.
    go(d, "trade", "#trade-form")
    Select(d.find_element(By.ID, "trade-sell")).select_by_value(BTC)
    Select(d.find_element(By.ID, "trade-buy")).select_by_value(ETH)
    amount = d.find_element(By.ID, "trade-amount")
    amount.send_keys("0.123456789")
    wait_for(
        d, "the precision error", lambda d: "at most 8 decimal places" in text(d, ".form-error")
    )
    amount.clear()
    amount.send_keys("5000")
    wait_for(d, "the balance error", lambda d: "available" in text(d, ".form-error"))
    assert "You pay: more than the 50 BTC available" in text(d, ".form-error")
    # 1 BTC: the maker takes at most 0.1 BTC. The quote says it fills only part, priced on
    # what it fills; an empty floor is not taken from it (1 % less than a part's price would
    # floor the whole amount at nothing).
    amount.clear()
    amount.send_keys("1")
    wait_for(d, "the partial quote", lambda d: d.find_elements(By.ID, "chosen-quote"))
    assert "for 0.1 BTC (only part of the 1 BTC asked)" in text(d, "#chosen-quote")
    assert "ETH per BTC" in text(d, "#chosen-quote")
    place = d.find_element(By.ID, "place-trade")
    wait_for(d, "the trade button enabled", lambda d: place.is_enabled())
    place.click()
    wait_for(d, "the floor refused", lambda d: "fills only 0.1 BTC of" in text(d, ".form-error"))
    assert "/trade/" not in d.current_url
    shot(d, "desktop-trade-partial")
    # 0.01 BTC: live quotes from the network, the chosen route (via the relay), then the trade.
    amount.clear()
    amount.send_keys("0.01")
    wait_for(d, "quotes", lambda d: d.find_elements(By.ID, "chosen-quote"))
    assert " ETH" in text(d, "#chosen-quote")
    assert "hop" in text(d, "#chosen-hops")
    shot(d, "desktop-trade-quotes")
    place = d.find_element(By.ID, "place-trade")
    wait_for(d, "the trade button enabled", lambda d: place.is_enabled())
    marker = d.execute_script("window.__same_page = 1; return 1;")
    place.click()
    wait_for(d, "the new trade", lambda d: "/trade/" in d.current_url)
    trade_id = d.current_url.rsplit("/trade/", 1)[1].split("&")[0]
    wait_for(
        d,
        "the order committed",
        lambda d: "committed at ledger height" in text(d, "#current-trade"),
        wait=TRADE_WAIT,
    )
    trade = net.run(net.taker.trade(trade_id))
    assert trade.order_id, trade

    # The swap's timeline, live from the event stream, to both legs redeemed.
    # (the engine starts the swap a moment after the commit: the card appears live)
    d.find_element(By.CSS_SELECTOR, '#tabs a[data-view="swaps"]').click()
    card = f"#swap-{trade.order_id}"
    wait_for(
        d, "the swap's card", lambda d: d.find_elements(By.CSS_SELECTOR, card), wait=TRADE_WAIT
    )
    d.execute_script(
        "document.querySelector(arguments[0]).click()", f"{card} details.history summary"
    )

    def redeemed(d: Any) -> bool:
        ended = d.find_element(By.CSS_SELECTOR, card).get_attribute("data-swap-state")
        if ended in ("rejected", "aborted", "refunded", "lost"):  # fail now, saying why
            raise AssertionError(f"the swap ended {ended}: {text(d, f'{card} details.history')}")
        return leg_states(d, trade.order_id) == ["redeemed", "redeemed"]

    wait_for(d, "both legs redeemed", redeemed, wait=TRADE_WAIT)
    wait_for(
        d,
        "the swap redeemed",
        lambda d: (
            d.find_element(By.CSS_SELECTOR, card).get_attribute("data-swap-state") == "redeemed"
        ),
    )
    assert d.execute_script("return window.__same_page") == marker, "the page was reloaded"
    swap = net.run(net.taker.swap(trade.order_id))
    card_text = text(d, card)
    txids = [t for leg in swap.legs for t in (leg.lock_txid, leg.spend_txid) if t]
    assert txids and all(t in card_text for t in txids), "every txid shown whole"
    assert len(txids) == 4, "both legs' locks and redeems, read from their chains"
    assert "you pay" in card_text and "you receive" in card_text
    shot(d, "desktop-swaps")
    go(d, "trade", "#trade-form")
    wait_for(d, "the trade redeemed", lambda d: "redeemed" in text(d, "#trades").lower())
    shot(d, "desktop-trade")

    # Ledger: the committed order; peers: the relay, our only link.
    go(d, "ledger", "#view-ledger table")
    wait_for(d, "the order in the ledger", lambda d: trade.order_id in text(d, "#view-ledger"))
    shot(d, "desktop-ledger")
    go(d, "peers", "#view-peers table")
    wait_for(d, "the relay", lambda d: relay_id in text(d, "#view-peers"))
    shot(d, "desktop-peers")

    # Nothing came from anywhere but the node, and the page logged no error.
    foreign = d.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => !n.startsWith(location.origin) && !n.startsWith('ws://' + location.host))"
    )
    assert foreign == []
    assert severe_console_errors(d) == []

    # Phone width (390x844), light and dark: every view fits without sideways scrolling.
    for dark in (False, True):
        viewport(d, 390, 844, mobile=True, dark=dark)
        for view, ready in VIEWS:
            go(d, view, ready)
            time.sleep(0.2)  # let the depth chart redraw at the new size before the picture
            assert no_horizontal_overflow(d), f"{view} scrolls sideways at phone width"
            shot(d, f"phone-{'dark' if dark else 'light'}-{view}")
    viewport(d, 1280, 800, mobile=False, dark=True)
    for view, ready in (("book", "canvas#depth"), ("swaps", "article.swap")):
        go(d, view, ready)
        time.sleep(0.2)
        shot(d, f"desktop-dark-{view}")
    assert severe_console_errors(d) == []


VIEWS = (
    ("node", "dl.facts"),
    ("book", "canvas#depth"),
    ("trade", "#trade-form"),
    ("swaps", "article.swap"),
    ("ledger", "#view-ledger table"),
    ("peers", "#view-peers table"),
)


def test_each_step_of_a_swap_and_what_a_devnet_never_shows_render_live(browser, server, node):
    """Over the double (served by the real API app): a trade that moves one step each time the
    test says, so every intermediate state (locked legs with their confirmations and deadline
    countdowns) can be looked at; and what a fresh devnet does not produce: yesterday's refunded
    swap, a swap known only from the engine's journal, fee shares beyond 2^53, evidence, a
    peer whose name is markup."""
    d = browser
    base = f"http://127.0.0.1:{server.port}"
    viewport(d, 1280, 800, mobile=False)

    # The CLI's link: / redirects to the page, the token rides in the fragment and is then
    # removed from the address bar.
    d.get(f"{base}/#token={TOKEN}")
    wait_for(d, "the node's name", lambda d: text(d, "#node-name") == "alice")
    assert TOKEN not in d.current_url
    assert d.current_url.startswith(f"{base}/dashboard/")
    wait_for(d, "the live event stream", lambda d: text(d, "#live") == "live")

    # Node: identity whole, balances in units, addresses whole.
    go(d, "node", "dl.facts")
    wanted = (ME, MY_BTC, "5.25", "1.2", "BTC")  # the node id and an address whole
    wait_for(d, "identity and balances", lambda d: all(w in text(d, "#view-node") for w in wanted))
    shot(d, "double-desktop-node")

    # Order book: both sides and a drawn depth chart.
    go(d, "book", "canvas#depth")
    wait_for(
        d,
        "bids and asks",
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#view-book tbody tr")) == 5,
    )
    assert text(d, ".stat.good strong") == "31.23456789", "the best bid, ETH per BTC"
    assert text(d, ".stat.bad strong") == "31.4", "the best ask: 1 / the maker's BTC per ETH"
    assert "31.65" in text(d, "#view-book"), "the second ask"
    painted = d.execute_script(
        "const c = document.getElementById('depth');"
        "const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "let n = 0; for (let i = 3; i < px.length; i += 4) if (px[i]) n++; return n;"
    )
    assert painted > 5_000, f"the depth chart drew only {painted} pixels"
    shot(d, "double-desktop-book")
    # the crosshair: price and depth under the pointer (left of the middle: the bid side)
    ActionChains(d).move_to_element_with_offset(d.find_element(By.ID, "depth"), -300, 0).perform()
    shot(d, "double-desktop-book-hover")

    # Trade: an amount with too many decimals is refused in the form, naming the field.
    go(d, "trade", "#trade-form")
    Select(d.find_element(By.ID, "trade-sell")).select_by_value(BTC)
    Select(d.find_element(By.ID, "trade-buy")).select_by_value(ETH)
    amount = d.find_element(By.ID, "trade-amount")
    amount.send_keys("0.123456789")
    wait_for(
        d, "the precision error", lambda d: "at most 8 decimal places" in text(d, ".form-error")
    )
    # More than the balance: refused in the form, naming the field and the balance.
    amount.clear()
    amount.send_keys("7")
    wanted = "You pay: more than the 1.2 BTC available"
    wait_for(d, "the balance error", lambda d: wanted in text(d, ".form-error"))
    # A good amount: live quotes, the chosen route, then the trade.
    amount.clear()
    amount.send_keys("0.01")
    wait_for(d, "quotes", lambda d: d.find_elements(By.ID, "chosen-quote"))
    # 312345678901234567 wei: beyond 2^53, shown to the last wei
    assert "0.312345678901234567 ETH" in text(d, "#chosen-quote")
    assert text(d, "#chosen-hops") == "direct · 1 hop"
    assert "2" in text(d, "#quotes tbody"), "the two-hop route is listed too"
    shot(d, "double-desktop-trade-quotes")
    place = d.find_element(By.ID, "place-trade")
    wait_for(d, "the trade button enabled", lambda d: place.is_enabled())
    place.click()
    wait_for(d, "the new trade", lambda d: "quoting" in text(d, "#current-trade").lower())
    assert "/trade/" in d.current_url

    # The trade moves on as the node publishes events; the page follows without reloading.
    marker = d.execute_script("window.__same_page = 1; return 1;")
    for expected in ("ordering", "submitted", "committed"):
        assert node.advance() == expected
        wait_for(
            d,
            f"the trade {expected}",
            lambda d, e=expected: e in text(d, "#current-trade .badge").lower(),
        )
    assert "committed at ledger height 8813" in text(d, "#current-trade")
    assert "1 hop" in text(d, "#current-trade")
    shot(d, "double-desktop-trade")

    assert node.advance() == "settling"
    go(d, "swaps", "article.swap")
    sid = node.last_swap_id
    card = f"#swap-{sid}"
    # yesterday's swap: our leg refunded (read from its history: the legs carry no state)
    assert leg_states(d, OLD_SWAP) == ["refunded", "pending"]
    assert "Refunded" in text(d, f"#swap-{OLD_SWAP} .leg .timeline")
    # a swap whose legs carry no txids (only the engine's journal): read from its history
    assert leg_states(d, JOURNAL_SWAP) == ["redeemed", "redeemed"]
    journal_card = text(d, f"#swap-{JOURNAL_SWAP}")
    assert hexid("journal-redeem") in journal_card and hexid("journal-lock") in journal_card
    assert "by the counterparty" in journal_card
    assert leg_states(d, sid) == ["pending", "pending"]
    assert node.advance() == "own_lock"
    wait_for(d, "our leg locked", lambda d: leg_states(d, sid) == ["locked", "pending"])
    assert node.advance() == "counter_lock"
    wait_for(d, "both legs locked", lambda d: leg_states(d, sid) == ["locked", "locked"])
    swap_text = text(d, card)
    assert "2 confirmations" in swap_text
    assert "blocks to go" in swap_text and "refundable in" in swap_text, "both deadlines shown"
    lock_txids = text(d, f"{card} .leg .timeline li.done code").split()
    assert len(lock_txids) == 2 and all(len(t) == 64 for t in lock_txids), "txids whole"
    # open the history (in one step: the card re-renders on each event)
    d.execute_script(
        "document.querySelector(arguments[0]).click()", f"{card} details.history summary"
    )
    shot(d, "double-desktop-swaps-locked")
    assert node.advance() == "redeem_counter"
    wait_for(d, "the counter leg redeemed", lambda d: leg_states(d, sid) == ["locked", "redeemed"])
    assert node.advance() == "done"
    wait_for(d, "both legs redeemed", lambda d: leg_states(d, sid) == ["redeemed", "redeemed"])
    wait_for(
        d,
        "the swap redeemed",
        lambda d: (
            d.find_element(By.CSS_SELECTOR, card).get_attribute("data-swap-state") == "redeemed"
        ),
    )
    assert d.execute_script("return window.__same_page") == marker, "the page was reloaded"
    wait_for(
        d, "the whole history", lambda d: "(5 events)" in text(d, f"{card} details.history summary")
    )
    assert (
        d.find_element(By.CSS_SELECTOR, f"{card} details.history").get_attribute("open") is not None
    ), "a fold the user opened stays open through live updates"
    assert "both buried" in text(d, f"{card} details.history")
    shot(d, "double-desktop-swaps")

    # Ledger: the committed order with its outcomes, fee shares (beyond 2^53: exact), ranking.
    go(d, "ledger", "#view-ledger table")
    wanted = (
        "redeemed",  # the order's outcomes
        "1.234567890123456789 eth",  # a fee share beyond 2^53, exact
        "you",  # this node in the ranking
        "late lock",  # the evidence
    )
    wait_for(d, "the ledger", lambda d: all(w in text(d, "#view-ledger").lower() for w in wanted))
    shot(d, "double-desktop-ledger")

    # Peers: a peer-chosen string is text, not markup.
    go(d, "peers", "#view-peers table")
    assert "<img src=x onerror=alert(1)>:9743" in text(d, "#view-peers")
    assert not d.find_elements(By.CSS_SELECTOR, "#view-peers img")
    shot(d, "double-desktop-peers")

    # Nothing came from anywhere but the node, and the page logged no error.
    foreign = d.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name)"
        ".filter(n => !n.startsWith(location.origin) && !n.startsWith('ws://' + location.host))"
    )
    assert foreign == []
    assert severe_console_errors(d) == []

    # Phone width (390x844), light and dark: every view fits without sideways scrolling.
    for dark in (False, True):
        viewport(d, 390, 844, mobile=True, dark=dark)
        for view, ready in (
            ("node", "dl.facts"),
            ("book", "canvas#depth"),
            ("trade", "#trade-form"),
            ("swaps", "article.swap"),
            ("ledger", "#view-ledger table"),
            ("peers", "#view-peers table"),
        ):
            go(d, view, ready)
            time.sleep(0.2)  # let the depth chart redraw at the new size before the picture
            assert no_horizontal_overflow(d), f"{view} scrolls sideways at phone width"
            shot(d, f"double-phone-{'dark' if dark else 'light'}-{view}")
    viewport(d, 1280, 800, mobile=False, dark=True)
    for view, ready in (("book", "canvas#depth"), ("swaps", "article.swap")):
        go(d, view, ready)
        time.sleep(0.2)
        shot(d, f"double-desktop-dark-{view}")
    assert severe_console_errors(d) == []


def test_a_wrong_token_is_refused_with_the_nodes_reason_and_a_login_form(browser, net):
    d = browser
    d.get(f"{net.url}/dashboard/#token={'00' * 32}")
    wait_for(d, "the login form", lambda d: d.find_element(By.ID, "login").is_displayed())
    wait_for(d, "the refusal", lambda d: "wrong bearer token" in text(d, "#banner"))
    d.find_element(By.ID, "token-input").send_keys(net.token)
    d.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(d, "the node after login", lambda d: text(d, "#node-name") == "taker")
    assert not d.find_element(By.ID, "login").is_displayed()


def feed_ids(driver: Any) -> list[str]:
    """The offer ids in the Node view's activity feed, oldest first."""
    return [i for i in text(driver, "#view-node ol.feed li code").split()][::-1]


def test_events_are_neither_lost_nor_repeated_across_a_dropped_socket_and_polling(browser, node):
    # the double's own app: its WebSocket can be dropped (kick) and refused on demand, which a
    # real node's API does not do on request
    with _Server(fixture_app(node, TOKEN, READONLY_TOKEN)) as server:
        _drop_and_poll(browser, server, node)


def _drop_and_poll(browser: Any, server: _Server, node: FixtureNode) -> None:
    d = browser
    d.get(f"http://127.0.0.1:{server.port}/#token={TOKEN}")
    wait_for(d, "the live event stream", lambda d: text(d, "#live") == "live")
    go(d, "node", "dl.facts")
    node.log.append("offer", {"offer_id": "o1", "state": "added"})
    wait_for(d, "the first event", lambda d: feed_ids(d) == ["o1"])

    # The node drops the socket; events appended meanwhile arrive once the page is back
    # (polling while the socket is down, then the socket again with after=<last seq>).
    assert node.kick() == 1
    for i in (2, 3, 4):
        node.log.append("offer", {"offer_id": f"o{i}", "state": "added"})
    wait_for(d, "the events sent while down", lambda d: feed_ids(d) == ["o1", "o2", "o3", "o4"])
    wait_for(d, "the socket back", lambda d: text(d, "#live") == "live" and node.sockets)
    node.log.append("offer", {"offer_id": "o5", "state": "added"})
    wait_for(d, "the next event", lambda d: feed_ids(d) == ["o1", "o2", "o3", "o4", "o5"])

    # A node behind something that refuses WebSockets: the page polls, says so, and still
    # gets every event once.
    node.refuse_sockets = True
    assert node.kick() == 1
    wait_for(d, "the polling state", lambda d: text(d, "#live") == "polling")
    for i in (6, 7):
        node.log.append("offer", {"offer_id": f"o{i}", "state": "added"})
    expected = [f"o{i}" for i in range(1, 8)]
    wait_for(d, "the polled events", lambda d: feed_ids(d) == expected)
    assert text(d, "#live") == "polling" and not node.sockets
    assert severe_console_errors(d) == []


def test_the_page_rides_out_a_node_restart_and_gets_what_happened_meanwhile(browser, net):
    """The daemon's API goes down and comes back on the same port while the daemon runs on;
    an offer the node published meanwhile reaches the page once, from the event log."""
    d = browser
    d.get(f"{net.url}/#token={net.token}")
    wait_for(d, "the live event stream", lambda d: text(d, "#live") == "live")
    go(d, "node", "dl.facts")
    net.stop_api()
    try:
        wait_for(d, "the node offline", lambda d: text(d, "#live") == "offline")
        spec = OfferSpec(BTC, ETH, 10**10, 1, 10_000, 20_000)  # published while the API is down
        offer = net.run(net.taker.add_offer(spec))
    finally:
        net.start_api()
    try:
        wait_for(d, "the event from the downtime", lambda d: offer.offer_id in feed_ids(d))
        assert feed_ids(d).count(offer.offer_id) == 1
        wait_for(d, "the stream back", lambda d: text(d, "#live") in ("live", "polling"))
        assert not d.find_element(By.ID, "banner").is_displayed()
        assert "taker" in text(d, "#view-node")
    finally:
        net.run(net.taker.withdraw_offer(offer.offer_id))


def test_a_failing_node_is_explained_and_the_page_recovers_by_itself(browser, server, node):
    """Over the double: a ledger that stops answering and comes back on cue (the module's real
    ledger serves every other test)."""
    d = browser
    node.info_fails = True
    d.get(f"http://127.0.0.1:{server.port}/#token={TOKEN}")
    wanted = "the ledger at http://127.0.0.1:26657 does not answer (unavailable)"
    wait_for(d, "the node's reason", lambda d: wanted in text(d, "#banner"))
    wait_for(d, "the reason in the view", lambda d: "does not answer" in text(d, "#view-node"))
    wait_for(d, "the balances all the same", lambda d: "5.25" in text(d, "#view-node"))
    shot(d, "double-desktop-node-unavailable")
    node.info_fails = False
    wait_for(d, "the node after recovery", lambda d: text(d, "#node-name") == "alice")
    wait_for(d, "the banner gone", lambda d: not d.find_element(By.ID, "banner").is_displayed())
    wait_for(d, "the view recovered", lambda d: ME in text(d, "#view-node"))


def test_a_trade_cancelled_from_the_page_before_commit_frees_its_funds(browser, server, node):
    """Over the double: a trade held before its commit (a real one commits within a second or
    two, so a cancel from the page would race it)."""
    d = browser
    d.get(f"http://127.0.0.1:{server.port}/#token={TOKEN}")
    wait_for(d, "the live event stream", lambda d: text(d, "#live") == "live")
    go(d, "trade", "#trade-form")
    d.find_element(By.ID, "trade-amount").send_keys("0.5")
    wait_for(d, "quotes", lambda d: d.find_elements(By.ID, "chosen-quote"))
    place = d.find_element(By.ID, "place-trade")
    wait_for(d, "the trade button enabled", lambda d: place.is_enabled())
    place.click()
    wait_for(d, "the new trade", lambda d: "quoting" in text(d, "#current-trade").lower())
    wait_for(d, "the reserve", lambda d: "Available: 0.7 BTC" in text(d, "#trade-available"))
    # the panel re-renders on each event: click whatever button is there now, in one step
    d.execute_script("document.querySelector('#current-trade button.danger').click()")
    wait_for(
        d, "the trade cancelled", lambda d: "cancelled" in text(d, "#current-trade .badge").lower()
    )
    assert "cancelled by the user before commit" in text(d, "#current-trade")
    assert not d.find_elements(By.CSS_SELECTOR, "#current-trade button.danger")
    wait_for(d, "the funds back", lambda d: "Available: 1.2 BTC" in text(d, "#trade-available"))
    assert node.balances_["btc"] == [120_000_000, 0]


def test_older_swaps_and_trades_page_in_on_demand(browser, node):
    """Over the double's own app: a node serving one item a page (the real API pages by the
    client's ``limit``; the page asks for 20 and 50)."""
    d = browser
    node.page_size = 1  # one swap per page: the two the node holds take two pages
    with _Server(fixture_app(node, TOKEN, READONLY_TOKEN)) as server:
        d.get(f"http://127.0.0.1:{server.port}/dashboard/#token={TOKEN}&view=swaps")
        wait_for(
            d,
            "the first page",
            lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.swap")) == 1,
        )
        assert d.find_elements(By.CSS_SELECTOR, f"#swap-{JOURNAL_SWAP}")
        d.find_element(By.ID, "older-swaps").click()
        wait_for(
            d, "the older page", lambda d: d.find_elements(By.CSS_SELECTOR, f"#swap-{OLD_SWAP}")
        )
        assert len(d.find_elements(By.CSS_SELECTOR, "article.swap")) == 2
        wait_for(d, "no more pages", lambda d: not d.find_elements(By.ID, "older-swaps"))
        # a live re-render (the cards replaced) keeps the older page it fetched
        d.execute_script("document.querySelector('article.swap').__before = 1")
        node.log.append("swap", {"swap_id": JOURNAL_SWAP, "state": "redeemed"})
        wait_for(
            d,
            "the re-render",
            lambda d: d.execute_script("return !document.querySelector('article.swap').__before"),
        )
        assert len(d.find_elements(By.CSS_SELECTOR, "article.swap")) == 2

        # the same for trades: two trades (one cancelled), one per page
        go(d, "trade", "#trade-form")
        place_and_cancel(d)
        second = place_and_cancel(d)
        # The list is re-read on the second trade's events, after its panel shows it: wait for
        # that read (its one row is the second trade; one row alone was the list of the first
        # trade too, with no older page yet). The same answer says there is an older page.
        wait_for(d, "the second trade listed", lambda d: listed_trades(d) == [second])
        d.find_element(By.ID, "older-trades").click()
        wait_for(d, "the older trade", lambda d: len(listed_trades(d)) == 2)
        wait_for(d, "no more pages", lambda d: not d.find_elements(By.ID, "older-trades"))


def test_a_list_read_that_ends_after_a_newer_one_does_not_replace_it(browser, node):
    """Over the double's own app (a read held on demand): a user's list re-read on an event can
    still be on its way when the next event's read starts and ends (a slow node, a busy
    browser). The older answer, landing last, must not replace the newer one: here it would
    drop the second trade and the *Show older trades* button, and no further event comes to
    put them back."""
    d = browser
    node.page_size = 1
    # count the page's newest-page trade list reads, started and answered (read in full)
    d.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {
            "source": """
            window.__listReads = { started: 0, ended: 0 };
            const fetch0 = window.fetch.bind(window);
            window.fetch = async (url, opts) => {
              if (!/^\\/v1\\/trades\\?limit=\\d+$/.test(String(url))) return fetch0(url, opts);
              window.__listReads.started += 1;
              let res;
              try { res = await fetch0(url, opts); }
              catch (err) { window.__listReads.ended += 1; throw err; }
              const body = res.text.bind(res);
              res.text = async () => {
                try { return await body(); } finally { window.__listReads.ended += 1; }
              };
              return res;
            };"""
        },
    )
    with _Server(fixture_app(node, TOKEN, READONLY_TOKEN)) as server:
        d.get(f"http://127.0.0.1:{server.port}/dashboard/#token={TOKEN}&view=trade")
        wait_for(d, "the live event stream", lambda d: text(d, "#live") == "live")
        go(d, "trade", "#trade-form")
        first = place_and_cancel(d)
        wait_for(d, "the first trade listed", lambda d: listed_trades(d) == [first])
        assert not d.find_elements(By.ID, "older-trades")
        # a re-read the node answers slowly: it read the list before the second trade existed
        release = threading.Event()
        node.hold_trade_list = release
        try:
            node.log.append("trade", {"trade_id": first, "state": "cancelled"})
            assert node.trade_list_held.wait(WAIT), "the page did not re-read the list"
            # meanwhile a second trade, placed by another client of the API (the CLI, the SDK):
            # its one event, one re-read, answered and shown
            second = asyncio.run(node.create_trade(TradeRequest(BTC, 1_000_000, ETH, 1))).trade_id
            wait_for(
                d,
                "the newer read shown",
                lambda d: listed_trades(d) == [second] and d.find_elements(By.ID, "older-trades"),
            )
            wait_for(
                d,
                "only the held read out",
                lambda d: d.execute_script(
                    "const r = window.__listReads; return r.ended === r.started - 1"
                ),
            )
            reads = d.execute_script("return window.__listReads")
        finally:
            release.set()
        # the held read answered and read, last (the page's handling of an answer runs to its
        # end before the browser runs this test's next script)
        wait_for(
            d,
            "the held read answered",
            lambda d: d.execute_script("return window.__listReads")["ended"] == reads["started"],
        )
        assert d.execute_script("return window.__listReads")["started"] == reads["started"], (
            "the page re-read the list after the held read: it cannot show what that read did"
        )
        assert listed_trades(d) == [second]
        assert d.find_elements(By.ID, "older-trades")
        d.find_element(By.ID, "older-trades").click()
        wait_for(d, "the older trade", lambda d: listed_trades(d) == [second, first])


def test_the_read_only_token_looks_and_is_told_why_it_cannot_trade(browser, net):
    d = browser
    d.get(f"{net.url}/#token={net.readonly_token}")
    wait_for(d, "the node", lambda d: text(d, "#node-name") == "taker")
    wait_for(d, "the live event stream", lambda d: text(d, "#live") == "live")
    go(d, "trade", "#trade-form")
    d.find_element(By.ID, "trade-amount").send_keys("0.01")
    wait_for(d, "the refusal", lambda d: "the read-only token may only GET" in text(d, "#quotes"))
    assert not d.find_element(By.ID, "place-trade").is_enabled()


def test_amounts_beyond_two_to_the_53_survive_parsing_formatting_and_sending(browser, net):
    d = browser
    d.get(f"{net.url}/dashboard/")
    wait_for(d, "the login form", lambda d: d.find_element(By.ID, "login").is_displayed())
    got = d.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const text = arguments[0];
        Promise.all([import("./api.js"), import("./fmt.js")]).then(([api, fmt]) => {
          const out = {};
          for (const [name, parse] of [["source", api.parseJson],
                                       ["quoting", api.parseJsonQuoting]]) {
            const v = parse(text);
            out[name] = {
              wei: typeof v.wei + ":" + String(v.wei), small: typeof v.small, f: v.f,
              neg: String(v.neg), s: v.s, frac: typeof v.frac, max: String(v.list[0]),
              two: typeof v.list[1],
            };
          }
          out.eth = fmt.amount(api.parseJson(text).wei, "eth");
          out.units = fmt.units(10n ** 30n + 1n, 18);
          out.parsed = String(fmt.parseUnits("0.312345678901234567", 18, "amount"));
          try {
            fmt.parseUnits("0.1234567891", 8, "You pay");
          } catch (e) {
            out.refused = e.message;
          }
          const big = fmt.parseUnits("1000000000000.000000000000000001", 18, "a");
          out.sent = api.toJson({ amount: big, n: 3, s: "x" });
          done(out);
        }).catch((e) => done({ error: String(e) }));
        """,
        '{"wei": 312345678901234567, "small": 5, "f": 1.5, "neg": -12345678901234567890, '
        '"s": "12345678901234567890 \\" 98765432109876543210", "frac": 0.12345678901234567, '
        '"list": [18446744073709551615, 2]}',
    )
    assert "error" not in got, got["error"]
    for mode in ("source", "quoting"):
        assert got[mode] == {
            "wei": "bigint:312345678901234567",
            "small": "number",
            "f": 1.5,
            "neg": "-12345678901234567890",
            "s": '12345678901234567890 " 98765432109876543210',
            "frac": "number",
            "max": "18446744073709551615",
            "two": "number",
        }, mode
    assert got["eth"] == "0.312345678901234567 ETH"
    assert got["units"] == "1,000,000,000,000.000000000000000001"
    assert got["parsed"] == "312345678901234567"
    assert got["refused"] == "You pay: at most 8 decimal places (10 given)"
    assert got["sent"] == '{"amount":1000000000000000000000000000001,"n":3,"s":"x"}'


def test_the_dashboard_is_served_with_a_policy_that_forbids_anything_foreign(net):
    base = net.url
    with urllib.request.urlopen(f"{base}/dashboard/") as r:
        csp = r.headers["content-security-policy"]
        body = r.read().decode()
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert "http" not in body.replace('lang="en"', ""), "the page references no other origin"
    with urllib.request.urlopen(f"{base}/") as r:  # the root redirects to the page
        assert r.url == f"{base}/dashboard/"
    req = urllib.request.Request(f"{base}/v1/info")
    with pytest.raises(urllib.error.HTTPError) as err:  # data needs the token; the page does not
        urllib.request.urlopen(req)
    assert err.value.code == 401
