"""The `kofo` commands that go through the SDK, against the real server (CliRunner, 80
columns): ids and addresses printed whole, --json for scripts, exit codes."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from kofo.cli import app
from kofo.node.service import OfferSpec
from tests.api.conftest import Served
from tests.api.memservice import BTC_ADDRESS, NODE_ID
from tests.api.test_sdk import make_home

pytestmark = pytest.mark.timeout(60)
ENV = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}


@pytest.fixture
def home(served: Served, tmp_path: Path) -> Path:
    return make_home(tmp_path, served.url, served.token, served.readonly)


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args), env=ENV)
    return result.exit_code, result.stdout, result.stderr


def test_info_prints_whole_values_at_80_columns(home: Path) -> None:
    code, out, _ = run("info", "--home", str(home))
    assert code == 0, out
    assert BTC_ADDRESS in out and NODE_ID in out  # longer than the terminal, never cut
    code, out, _ = run("info", "--home", str(home), "--json")
    assert json.loads(out)["addresses"]["btc"] == BTC_ADDRESS


def test_swap_show_prints_addresses_and_txids_whole(served: Served, home: Path) -> None:
    swap = served.service.add_swap()
    code, out, _ = run("swaps", swap.swap_id, "--home", str(home))
    assert code == 0, out
    assert swap.swap_id in out and BTC_ADDRESS in out and BTC_ADDRESS[::-1] in out
    assert "aa" * 32 in out and "bb" * 32 in out
    code, out, _ = run("swaps", "--home", str(home), "--json")
    assert [s["swap_id"] for s in json.loads(out)] == [swap.swap_id]


def test_offer_add_list_withdraw(served: Served, home: Path) -> None:
    code, out, err = run(
        "offer",
        "add",
        "--buy",
        "BTC",
        "--sell",
        "ETH",
        "--price",
        "15",
        "--min-in",
        "0.001",
        "--max-in",
        "0.5",
        "--home",
        str(home),
        "--json",
    )
    assert code == 0, out + err
    offer = json.loads(out)
    assert offer["spec"]["price_num"] == 150_000_000_000 and offer["spec"]["price_den"] == 1
    assert offer["spec"]["min_in"] == 100_000 and offer["spec"]["max_in"] == 50_000_000
    code, out, _ = run("offer", "list", "--own", "--home", str(home))
    assert code == 0 and offer["offer_id"] in out and "15 ETH per BTC" in out
    code, out, _ = run("offer", "withdraw", offer["offer_id"], "--home", str(home))
    assert code == 0 and served.service.offers_by_id == {}
    code, _, err = run("offer", "withdraw", offer["offer_id"], "--home", str(home))
    assert code == 1 and "not_found" in err


def test_bad_amount_names_the_field(home: Path) -> None:
    code, _, err = run("trade", "--sell", "BTC:0.000000001", "--buy", "ETH", "--home", str(home))
    assert code == 1
    assert "invalid_input" in err and "body.amount" in err and "8" in err
    code, _, err = run("trade", "--sell", "BTC", "--buy", "ETH", "--home", str(home))
    assert code == 1 and "ASSET:AMOUNT" in err


def test_balances_trades_ledger_peers(served: Served, home: Path) -> None:
    code, out, _ = run("balances", "--home", str(home))
    assert code == 0 and "1.5 BTC" in out and "DUSD" in out
    code, out, _ = run("balances", "--home", str(home), "--json")
    assert {b["symbol"] for b in json.loads(out)} == {"BTC", "LTC", "ETH", "DUSD"}
    code, out, _ = run("peers", "--home", str(home))
    assert code == 0 and "cd" * 32 in out
    code, out, _ = run("ledger", "importance", "--home", str(home))
    assert code == 0 and NODE_ID in out
    code, out, _ = run("ledger", "orders", "--home", str(home), "--json")
    assert code == 0 and json.loads(out) == []
    code, out, _ = run("trades", "--home", str(home))
    assert code == 0 and "no trades" in out


def test_no_node_running_is_a_clear_error(tmp_path: Path) -> None:
    home = make_home(tmp_path, "http://127.0.0.1:9", "aa" * 32, "bb" * 32)
    code, _, err = run("balances", "--home", str(home))
    assert code == 1 and "unavailable" in err and "cannot reach the node" in err


def drive(served: Served, steps: list[tuple[str, dict[str, object]]]) -> threading.Thread:
    """Play the daemon: once the CLI's trade exists, move it through ``steps``."""

    def run_steps() -> None:
        for _ in range(500):  # bounded: 500 x 20 ms for the CLI to create its trade
            if served.service.trades_by_id:
                break
            time.sleep(0.02)
        (trade_id,) = served.service.trades_by_id
        for state, changes in steps:
            if state.startswith("phase:"):
                served.service.phase(trade_id, state[6:], **changes)
            else:
                served.service.advance(trade_id, state, **changes)

    thread = threading.Thread(target=run_steps, daemon=True)
    thread.start()
    return thread


def test_trade_follows_to_redeemed(served: Served, home: Path) -> None:
    served.service.add_foreign_offer(OfferSpec("btc", "eth", 150_000_000_000, 1, 1, 10**9))
    order_id = "c4" * 32
    thread = drive(
        served,
        [
            ("phase:claim_sent", {"sell": "btc", "amount": 1_000_000}),
            ("phase:quotes", {"count": 3, "best": 15 * 10**16}),
            ("ordering", {"receive": 15 * 10**16, "hops": 2}),
            ("submitted", {"order_id": order_id}),
            ("committed", {"height": 1204}),
            ("phase:swap_started", {"order_id": order_id}),
            ("settling", {}),
            ("phase:swap", {"state": "locked", "reason": "own lock is buried", "txid": "ab" * 32}),
            ("redeemed", {}),
        ],
    )
    code, out, err = run(
        "trade", "--sell", "BTC:0.01", "--buy", "ETH", "--min-receive", "0.1", "--home", str(home)
    )
    thread.join(10)
    assert code == 0, out + err
    for text in (
        "claim sent",
        "3 quote(s) in, best 0.15 ETH",
        "receive 0.15 ETH over 2 hop(s)",
        "order committed at height 1204",
        "swap locked: own lock is buried",
        "both legs redeemed",
    ):
        assert text in out, text
    assert "ab" * 32 in out  # a txid, whole at 80 columns
    assert order_id in out  # the phase detail, whole
    assert "received 0.15 ETH" in out
    (trade,) = served.service.trades_by_id.values()
    assert trade.amount == 1_000_000


def test_trade_shows_each_lock_and_redeem_with_its_confirmations(
    served: Served, home: Path
) -> None:
    served.service.add_foreign_offer(OfferSpec("btc", "eth", 150_000_000_000, 1, 1, 10**9))
    lock, redeem = "ab" * 32, "0x" + "cd" * 32

    def confirms(by: str, tx: str, chain: str, txid: str, n: int) -> tuple[str, dict[str, object]]:
        detail = {"tx": tx, "by": by, "chain": chain, "txid": txid, "required": 2}
        return ("phase:confirms", {**detail, "confirmations": n})

    thread = drive(
        served,
        [
            ("ordering", {"receive": 15 * 10**16, "hops": 2}),
            ("committed", {"height": 1204}),
            ("settling", {}),
            confirms("taker", "lock", "btc", lock, 0),
            confirms("taker", "lock", "btc", lock, 1),
            confirms("taker", "lock", "btc", lock, 2),
            confirms("taker", "redeem", "eth", redeem, 2),
            ("redeemed", {}),
        ],
    )
    code, out, err = run(
        "trade", "--sell", "BTC:0.01", "--buy", "ETH", "--min-receive", "0.1", "--home", str(home)
    )
    thread.join(10)
    assert code == 0, out + err
    lines = out.splitlines()
    for text in (
        "taker lock btc tx abababab… 0/2 confirmations",
        "taker lock btc tx abababab… 1/2 confirmations",
        "taker lock btc tx abababab… 2/2 confirmations",
        "taker redeem eth tx cdcdcdcd… 2/2 confirmations",
    ):
        (line,) = [x for x in lines if text in x]  # one line each, not wrapped
        assert "confirms" in line and len(line) <= 80, line
    assert "txid=" not in out and lock not in out  # the detail is all in the words
    assert "received 0.15 ETH" in out


def test_trade_that_fails_exits_non_zero(served: Served, home: Path) -> None:
    thread = drive(served, [("failed", {"error": "no quote"})])
    code, out, _ = run(
        "trade", "--sell", "BTC:0.01", "--buy", "ETH", "--min-receive", "0.1", "--home", str(home)
    )
    thread.join(10)
    assert code == 1
    assert "trade ended failed: no quote" in out


def test_trade_without_a_floor_and_without_quotes_says_so_and_starts_nothing(
    served: Served, home: Path
) -> None:
    # The node refuses a trade without a price floor; the CLI takes the best quote less the
    # slippage, and with no quote at all it says so before creating anything.
    code, _, err = run("trade", "--sell", "BTC:0.01", "--buy", "ETH", "--home", str(home))
    assert code == 1
    assert "no_quote" in err and "--min-receive" in err
    assert not served.service.trades_by_id


def test_trade_without_a_floor_takes_none_from_a_quote_for_part_of_the_amount(
    served: Served, home: Path
) -> None:
    # A maker good for 0.1 BTC quotes 1.5 ETH for 0.1 of the 1 BTC asked: that quote less the
    # slippage as the floor of the whole 1 BTC would let any maker take it all for ~1.5 ETH.
    served.service.add_foreign_offer(OfferSpec("btc", "eth", 150_000_000_000, 1, 1, 10**7))
    code, _, err = run("trade", "--sell", "BTC:1", "--buy", "ETH", "--home", str(home))
    assert code == 1, err
    assert "no_quote" in err and "fill only 0.1 BTC of 1 BTC" in err and "--min-receive" in err
    assert not served.service.trades_by_id


def test_trade_no_wait_json(served: Served, home: Path) -> None:
    code, out, _ = run(
        "trade",
        "--sell",
        "ETH:1.5",
        "--buy",
        "DUSD",
        "--min-receive",
        "1",
        "--no-wait",
        "--json",
        "--home",
        str(home),
    )
    assert code == 0
    trade = json.loads(out)
    assert trade["state"] == "quoting" and trade["amount"] == 15 * 10**17
    assert trade["buy"] == "eth:0x" + "11" * 20


def test_ledger_order_prints_each_leg_with_addresses_whole(served: Served, home: Path) -> None:
    from kofo.node.service import LedgerOrderView

    order_id = "ae" * 16
    leg = {  # the shape the daemon serves (the ledger's Leg.as_map)
        "chain": "btc",
        "token": None,
        "amount": 1_000_000,
        "expiry": {"unit": "height", "value": 8619},
        "sender": "9e" * 32,
        "recipient": "6b" * 32,
        "sender_address": BTC_ADDRESS,
        "recipient_address": BTC_ADDRESS[::-1],
        "lock_by": 1796613430,
        "expiry_time": 1796621230,
    }
    served.service.orders[order_id] = LedgerOrderView(
        order_id, "settled", 4, (leg,), {"0": "redeemed"}
    )
    code, out, _ = run("ledger", "order", order_id, "--home", str(home))
    assert code == 0, out
    for text in (
        f"order {order_id}",
        "0.01 BTC on btc",
        BTC_ADDRESS,
        BTC_ADDRESS[::-1],
        "9e" * 32,
        "height 8619",
        "redeemed",
    ):
        assert text in out, text
    code, out, _ = run("ledger", "orders", "--home", str(home), "--json")
    assert json.loads(out)[0]["legs"][0]["sender_address"] == BTC_ADDRESS


def test_ledger_fees_shows_the_daemons_per_asset_balance(served: Served, home: Path) -> None:
    """The daemon answers one decrypted balance per asset (the ledger keeps no per-order
    split: order_id "", role "fees"); the command printed it as ``order `` with an empty id
    and ``role fees``."""
    from kofo.node.service import FeeShareView

    async def balances() -> list[FeeShareView]:
        return [FeeShareView("", "fees", "btc", 900)]

    served.service.fee_shares = balances  # type: ignore[method-assign]
    code, out, _ = run("ledger", "fees", "--home", str(home))
    assert code == 0, out
    lines = [line.split() for line in out.splitlines() if line.strip()]
    assert lines == [["fee", "balance", "BTC"], ["amount", "0.000009", "BTC"]], out


def test_ledger_withdraw_takes_the_whole_fee_balance_once(served: Served, home: Path) -> None:
    """Issue 14 item 8: the node decrypts and withdraws its own share. The daemon could
    (``Node.withdraw_fees``) but no route, SDK call or command reached it."""
    from kofo.node.service import LedgerOrderView

    for oid in ("c4" * 32, "c5" * 32):  # two orders: a 300 sat share each
        served.service.orders[oid] = LedgerOrderView(oid, "settled", 4, (), {})
    code, out, err = run("ledger", "withdraw", "BTC", "--to", BTC_ADDRESS, "--home", str(home))
    assert code == 0, out + err
    assert "withdrew fees in BTC" in out and "0.000006 BTC" in out and BTC_ADDRESS in out
    # nothing left: a clear conflict, exit 1
    code, out, err = run("ledger", "withdraw", "BTC", "--to", BTC_ADDRESS, "--home", str(home))
    assert code == 1 and "conflict" in err and "no fee balance" in err, out + err
    code, _, err = run("ledger", "withdraw", "XYZ", "--to", BTC_ADDRESS, "--home", str(home))
    assert code == 1 and "body.asset" in err
    code, _, err = run("ledger", "withdraw", "BTC", "--to", "", "--home", str(home))
    assert code == 1 and "body.payout_address" in err
