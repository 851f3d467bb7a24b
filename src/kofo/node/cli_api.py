"""The ``kofo`` commands that talk to a running node through its API (the SDK), as ``lncli``
talks to ``lnd``: ``kofo trade``, ``kofo offer add|list|withdraw``, ``kofo balances``,
``kofo trades``, ``kofo swaps [ID]``, ``kofo ledger orders|order|fees|importance``,
``kofo peers``, ``kofo info``. Each takes ``--home`` (where the node's config and API token
are) and ``--json`` (machine output). (``kofo dashboard`` lives with the dashboard.)

Every value a person may copy (ids, txids, addresses, keys) is printed whole on its own line,
never cut to the terminal's width: records are ``key value`` lines printed with soft wrap (the
terminal wraps them visually; a copy gets the whole value), tables only hold short values.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import time
from collections.abc import Callable, Iterator, Sequence
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from kofo.errors import KofoError
from kofo.node.service import (
    BalanceView,
    LedgerOrderView,
    OfferView,
    PhaseView,
    SwapView,
    TradeView,
)

HomeOption = Annotated[
    Path,
    typer.Option(
        "--home",
        envvar="KOFO_HOME",
        help="the node home (its config.toml has \\[api] bind; api.token is the token)",
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON for scripts")]
_DEFAULT_HOME = Path.home() / ".kofo"

FAILED_STATES = ("refunded", "failed", "cancelled")
_PHASE_TEXT = {
    # trade states
    "quoting": "claim sent, collecting quotes",
    "ordering": "quote chosen, the route is co-signing the order",
    "submitted": "order sent to the ledger",
    "committed": "order committed",
    "settling": "swap legs in progress",
    "redeemed": "both legs redeemed",
    "refunded": "refunded: this node's funds are back",
    "failed": "failed",
    "cancelled": "cancelled",
    # the daemon's finer steps
    "claim_sent": "claim sent to the network",
    "quotes": "quotes in",
    "swap_started": "swap started from the committed order",
    "swap": "swap step",
    "confirms": "transaction confirmations",
    "evidence": "evidence filed against the counterparty",
    "evidence_committed": "evidence committed",
    "evidence_refused": "evidence refused by the ledger",
}


def _console() -> Console:
    # Made per command: Rich reads COLUMNS when a Console is created.
    return Console(highlight=False, soft_wrap=True)


def _err_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _fail(exc: KofoError) -> typer.Exit:
    err = _err_console()
    err.print(Text.assemble(("error ", "bold red"), str(exc)))
    fields = getattr(exc, "fields", [])
    for field in fields:
        err.print(Text(f"  field: {field}"))
    return typer.Exit(1)


@contextlib.contextmanager
def _client(home: Path) -> Iterator[Any]:
    from kofo.sdk import Client

    try:
        with Client.from_home(home.expanduser()) as client:
            yield client
    except KofoError as exc:
        raise _fail(exc) from None


def _print_json(value: Any) -> None:
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return dataclasses.asdict(v)
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    typer.echo(json.dumps(plain(value), indent=2, sort_keys=True))


class _Units:
    """Display amounts in their asset's unit (from the node's balances)."""

    def __init__(self, balances: Sequence[BalanceView]) -> None:
        self.by_asset = {b.asset: b for b in balances}
        for b in balances:
            self.by_asset.setdefault(b.symbol.lower(), b)

    def symbol(self, asset: str) -> str:
        b = self.by_asset.get(asset) or self.by_asset.get(asset.lower())
        return b.symbol if b else asset

    def show(self, amount: int | None, asset: str) -> str:
        if amount is None:
            return "-"
        b = self.by_asset.get(asset) or self.by_asset.get(asset.lower())
        if b is None:
            return f"{amount} {asset} (base units)"
        from kofo.money import Amount, Asset

        return Amount(Asset(b.asset, b.symbol, b.decimals), amount).display()


def _units(client: Any) -> _Units:
    try:
        return _Units(client.balances())
    except KofoError:
        return _Units([])


def _record(console: Console, title: str, rows: Sequence[tuple[str, Any]]) -> None:
    """A title line, then one ``key value`` line per row, each value whole."""
    console.print(Text(title, style="bold"))
    width = max((len(k) for k, _ in rows), default=0)
    for key, value in rows:
        console.print(Text(f"  {key.ljust(width)}  {value}"))


def _when(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def _detail(detail: dict[str, Any]) -> str:
    return "  ".join(f"{k}={v}" for k, v in detail.items())


# -- read-only commands -----------------------------------------------------------------------


def info_command(home: HomeOption = _DEFAULT_HOME, as_json: JsonOption = False) -> None:
    """The node: id, version, ledger and chain heights, peers, addresses."""
    with _client(home) as client:
        info = client.info()
    if as_json:
        _print_json(info)
        return
    rows: list[tuple[str, Any]] = [
        ("node id", info.node_id),
        ("version", info.version),
        ("p2p", info.p2p),
        ("ledger", f"{info.ledger_url} height {info.ledger_height}"),
    ]
    if info.ledger_error:
        rows.append(("ledger error", info.ledger_error))
    for c in info.chains:
        rows.append((f"{c.chain} height", c.height if c.height is not None else c.error))
    rows.append(("peers", info.peers))
    for chain, address in info.addresses.items():
        rows.append((f"{chain} address", address))
    bond = info.bond
    if bond is not None and (bond.configured or bond.min_bond):
        rows.append(
            (
                "bond (wei)",
                f"{bond.configured} configured, vault {bond.vault}, "
                f"ledger {bond.attested}" + ("" if bond.quoting else ", NOT QUOTING"),
            )
        )
        if bond.error:
            rows.append(("bond error", bond.error))
    _record(_console(), f"node {info.name}", rows)


def balances_command(home: HomeOption = _DEFAULT_HOME, as_json: JsonOption = False) -> None:
    """Wallet balances per asset: available and reserved (open quotes and swaps)."""
    with _client(home) as client:
        balances = client.balances()
    if as_json:
        _print_json(balances)
        return
    units = _Units(balances)
    table = Table(title="balances")
    for col in ("asset", "available", "reserved"):
        table.add_column(col, overflow="fold")
    for b in balances:
        table.add_row(b.symbol, units.show(b.available, b.asset), units.show(b.reserved, b.asset))
    _console().print(table)
    for b in balances:
        if ":" in b.asset:
            _console().print(Text(f"{b.symbol} is {b.asset}"))


def peers_command(home: HomeOption = _DEFAULT_HOME, as_json: JsonOption = False) -> None:
    """Peers this node is connected to."""
    with _client(home) as client:
        peers = client.peers()
    if as_json:
        _print_json(peers)
        return
    console = _console()
    if not peers:
        console.print("no peers")
    for p in peers:
        _record(
            console,
            f"peer {p.node_id}",
            [
                ("address", p.address),
                ("direction", "inbound" if p.inbound else "outbound"),
                ("score", p.score),
            ],
        )


def _trade_rows(t: TradeView, units: _Units) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("state", t.state),
        ("role", t.role),
        ("sell", units.show(t.amount, t.sell)),
        ("buy", units.symbol(t.buy)),
        ("receive", units.show(t.receive, t.buy)),
    ]
    if t.order_id:
        rows.append(("order", t.order_id))
    if t.height is not None:
        rows.append(("committed at", f"height {t.height}"))
    if t.hops is not None:
        rows.append(("hops", t.hops))
    if t.error:
        rows.append(("error", t.error))
    rows.append(("created", _when(t.created_at)))
    return rows


def trades_command(
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 20,
) -> None:
    """This node's trades, newest first."""
    with _client(home) as client:
        trades = client.trades(limit=limit)
        units = _units(client) if not as_json else _Units([])
    if as_json:
        _print_json(trades)
        return
    console = _console()
    if not trades:
        console.print("no trades")
    for t in trades:
        _record(console, f"trade {t.trade_id}", _trade_rows(t, units))


def _swap_rows(s: SwapView, units: _Units, full: bool) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("state", s.state), ("role", s.role)]
    for i, leg in enumerate(s.legs):
        asset = leg.chain if leg.token is None else f"{leg.chain}:{leg.token}"
        rows.append((f"leg {i}", f"{units.show(leg.amount, asset)} on {leg.chain}"))
        if full:
            rows += [
                (f"leg {i} sender", leg.sender),
                (f"leg {i} recipient", leg.recipient),
                (f"leg {i} expiry", f"{leg.expiry.get('unit')} {leg.expiry.get('value')}"),
            ]
            if leg.lock_txid:
                rows.append((f"leg {i} lock tx", leg.lock_txid))
            if leg.spend_txid:
                rows.append((f"leg {i} spend tx", leg.spend_txid))
            if leg.confirmations is not None:
                rows.append((f"leg {i} confirmations", leg.confirmations))
    rows.append(("updated", _when(s.updated_at)))
    if full:
        for e in s.events:
            text = f"{e.state} {e.reason}".strip() + (f" tx {e.txid}" if e.txid else "")
            rows.append((f"event {_when(e.at)}", text))
    return rows


def swaps_command(
    swap_id: Annotated[str | None, typer.Argument(help="show this swap in full")] = None,
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 20,
) -> None:
    """Swaps (most recent first), or one swap with its legs, txids and every event."""
    with _client(home) as client:
        swaps = [client.swap(swap_id)] if swap_id else client.swaps(limit=limit)
        units = _units(client) if not as_json else _Units([])
    if as_json:
        _print_json(swaps[0] if swap_id else swaps)
        return
    console = _console()
    if not swaps:
        console.print("no swaps")
    for s in swaps:
        _record(console, f"swap {s.swap_id}", _swap_rows(s, units, full=swap_id is not None))


# -- offers -----------------------------------------------------------------------------------

offer_app = typer.Typer(help="This node's standing offers (maker).", no_args_is_help=True)


def _offer_rows(o: OfferView, units: _Units) -> list[tuple[str, Any]]:
    s = o.spec
    price = Fraction(s.price_num, s.price_den)
    buy_b, sell_b = units.by_asset.get(s.buy), units.by_asset.get(s.sell)
    if buy_b is not None and sell_b is not None:
        shown = price * Fraction(10**buy_b.decimals, 10**sell_b.decimals)
        price_text = f"{float(shown):.8g} {sell_b.symbol} per {buy_b.symbol}"
    else:
        price_text = f"{s.price_num}/{s.price_den} base units"
    return [
        ("maker", o.maker + (" (this node)" if o.own else "")),
        ("buys", f"{units.show(s.min_in, s.buy)} .. {units.show(s.max_in, s.buy)}"),
        ("sells", units.symbol(s.sell)),
        ("price", f"{price_text} (price_num {s.price_num} / price_den {s.price_den})"),
        ("fee", units.show(s.fee, s.sell)),
        ("partial", s.partial),
        ("expires", _when(o.expires_at)),
    ]


@offer_app.command("list")
def offer_list(
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
    own: Annotated[bool, typer.Option("--own", help="only this node's offers")] = False,
) -> None:
    """Offers this node knows (or only its own)."""
    with _client(home) as client:
        offers = client.offers(own=own)
        units = _units(client) if not as_json else _Units([])
    if as_json:
        _print_json(offers)
        return
    console = _console()
    if not offers:
        console.print("no offers")
    for o in offers:
        _record(console, f"offer {o.offer_id}", _offer_rows(o, units))


def _price_fraction(price: str, buy: BalanceView, sell: BalanceView) -> Fraction:
    """A display price (``sell`` per ``buy``, e.g. ``15`` ETH per BTC) as base units of sell per
    base unit of buy, exactly."""
    from kofo.money import parse_decimal

    units = parse_decimal(price, 30)
    value = Fraction(units, 10**30) * Fraction(10**sell.decimals, 10**buy.decimals)
    if value <= 0:
        raise KofoError(f"--price must be > 0, got {price!r}", code="invalid_input")
    return value


@offer_app.command("add")
def offer_add(
    buy: Annotated[str, typer.Option(help="the asset the node receives (BTC, ETH, ...)")],
    sell: Annotated[str, typer.Option(help="the asset the node pays")],
    min_in: Annotated[str, typer.Option(help="smallest fill, in the buy asset (decimal)")],
    max_in: Annotated[str, typer.Option(help="largest fill, in the buy asset (decimal)")],
    price: Annotated[
        str | None, typer.Option(help="sell paid per 1 buy, decimal (15 = 15 ETH per BTC)")
    ] = None,
    price_num: Annotated[int | None, typer.Option(help="exact price: sell base units ...")] = None,
    price_den: Annotated[int | None, typer.Option(help="... per price_den buy base units")] = None,
    fee: Annotated[str, typer.Option(help="flat fee, in the sell asset (decimal)")] = "0",
    partial: Annotated[bool, typer.Option(help="allow partial fills")] = True,
    ttl: Annotated[int, typer.Option(min=1, help="seconds the offer stays valid")] = 3_600,
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
) -> None:
    """Publish a standing offer: for n of BUY in, pay n x price of SELL (minus the fee)."""
    with _client(home) as client:
        try:
            if price is not None:
                if price_num is not None or price_den is not None:
                    raise KofoError(
                        "give --price or --price-num/--price-den, not both", code="invalid_input"
                    )
                units = _Units(client.balances())
                b, s = units.by_asset.get(buy.lower()), units.by_asset.get(sell.lower())
                if b is None or s is None:
                    raise KofoError(
                        f"unknown asset {buy if b is None else sell!r}", code="invalid_input"
                    )
                frac = _price_fraction(price, b, s)
                price_num, price_den = frac.numerator, frac.denominator
            if price_num is None or price_den is None:
                raise KofoError(
                    "give --price, or --price-num and --price-den", code="invalid_input"
                )
            offer = client.add_offer(
                buy=buy,
                sell=sell,
                price_num=price_num,
                price_den=price_den,
                min_in=min_in,
                max_in=max_in,
                fee=fee,
                partial=partial,
                ttl=ttl,
            )
        except KofoError as exc:
            raise _fail(exc) from None
        units = _units(client) if not as_json else _Units([])
    if as_json:
        _print_json(offer)
        return
    _record(_console(), f"offer {offer.offer_id} added", _offer_rows(offer, units))


@offer_app.command("withdraw")
def offer_withdraw(
    offer_id: Annotated[str, typer.Argument(help="the offer's id (`kofo offer list --own`)")],
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
) -> None:
    """Withdraw one of this node's offers."""
    with _client(home) as client:
        try:
            client.withdraw_offer(offer_id)
        except KofoError as exc:
            raise _fail(exc) from None
    if as_json:
        _print_json({"offer_id": offer_id, "withdrawn": True})
    else:
        _console().print(Text(f"withdrew offer {offer_id}"))


# -- ledger -----------------------------------------------------------------------------------

ledger_app = typer.Typer(help="The clearance ledger, as this node sees it.", no_args_is_help=True)


def _order_rows(o: LedgerOrderView, units: _Units) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [("status", o.status), ("height", o.height)]
    for i, raw in enumerate(o.legs):
        leg = dict(raw)
        chain, token, amount = (
            leg.pop("chain", "?"),
            leg.pop("token", None),
            leg.pop("amount", None),
        )
        asset = str(chain) if not token else f"{chain}:{token}"
        shown = units.show(amount, asset) if isinstance(amount, int) else str(amount)
        rows.append((f"leg {i}", f"{shown} on {chain}"))
        for key, label in (
            ("sender_address", "from"),
            ("recipient_address", "to"),
            ("sender", "sender node"),
            ("recipient", "recipient node"),
        ):
            if key in leg:
                rows.append((f"leg {i} {label}", leg.pop(key)))
        expiry = leg.pop("expiry", None)
        if isinstance(expiry, dict):
            rows.append((f"leg {i} expiry", f"{expiry.get('unit')} {expiry.get('value')}"))
        for key, value in leg.items():
            rows.append((f"leg {i} {key}", value))
        if str(i) in o.outcomes:
            rows.append((f"leg {i} outcome", o.outcomes[str(i)]))
    return rows


@ledger_app.command("orders")
def ledger_orders(
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 20,
) -> None:
    """Settlement orders this node is a party to, newest first."""
    with _client(home) as client:
        orders = client.ledger_orders(limit=limit)
        units = _units(client) if not as_json else _Units([])
    if as_json:
        _print_json(orders)
        return
    console = _console()
    if not orders:
        console.print("no orders")
    for o in orders:
        _record(console, f"order {o.order_id}", _order_rows(o, units))


@ledger_app.command("order")
def ledger_order(
    order_id: Annotated[str, typer.Argument(help="the order's id")],
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
) -> None:
    """One settlement order: legs, status, each leg's outcome."""
    with _client(home) as client:
        order = client.ledger_order(order_id)
        units = _units(client) if not as_json else _Units([])
    if as_json:
        _print_json(order)
        return
    _record(_console(), f"order {order.order_id}", _order_rows(order, units))


@ledger_app.command("fees")
def ledger_fees(home: HomeOption = _DEFAULT_HOME, as_json: JsonOption = False) -> None:
    """This node's fee shares (decrypted with its key)."""
    with _client(home) as client:
        shares = client.fee_shares()
        units = _units(client) if not as_json else _Units([])
    if as_json:
        _print_json(shares)
        return
    console = _console()
    if not shares:
        console.print("no fee shares")
    for f in shares:
        if f.order_id:
            _record(
                console,
                f"order {f.order_id}",
                [("role", f.role), ("amount", units.show(f.amount, f.asset))],
            )
        else:  # the daemon's answer: one balance per asset (the ledger keeps no per-order split)
            _record(
                console,
                f"fee balance {units.symbol(f.asset)}",
                [("amount", units.show(f.amount, f.asset))],
            )


@ledger_app.command("withdraw")
def ledger_withdraw(
    asset: Annotated[str, typer.Argument(help="the asset of the fee balance (BTC, ETH, ...)")],
    to: Annotated[str, typer.Option("--to", help="the payout address for the ledger's record")],
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
) -> None:
    """Withdraw this node's whole fee balance in ASSET (`kofo ledger fees`): revealed to the
    ledger with a proof, recorded once, to be paid to --to."""
    with _client(home) as client:
        done = client.withdraw_fees(asset, to)
        units = _units(client) if not as_json else _Units([])
    if as_json:
        _print_json(done)
        return
    _record(
        _console(),
        f"withdrew fees in {units.symbol(done.asset)}",
        [("amount", units.show(done.amount, done.asset)), ("payout", done.payout_address)],
    )


@ledger_app.command("importance")
def ledger_importance(
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="how many")] = 20,
) -> None:
    """Nodes by importance (points, penalties, bond), highest first."""
    with _client(home) as client:
        ranking = client.importance(limit=limit)
    if as_json:
        _print_json(ranking)
        return
    console = _console()
    for rank, r in enumerate(ranking, 1):
        _record(
            console,
            f"#{rank} node {r.node_id}",
            [
                ("importance", r.importance),
                ("points", r.points),
                ("penalties", r.penalties),
                ("bond", r.bond),
            ],
        )


# -- trade ------------------------------------------------------------------------------------


def _base_units(units: _Units, asset: str, amount: str) -> int:
    """``amount`` (a decimal in the asset's unit, as ``--sell`` takes it) in base units."""
    from kofo.money import parse_decimal

    b = units.by_asset.get(asset) or units.by_asset.get(asset.lower())
    if b is None:
        raise KofoError(f"--sell: unknown asset {asset!r}", code="invalid_input")
    return parse_decimal(amount, b.decimals)


def _split_side(text: str, option: str) -> tuple[str, str]:
    asset, sep, amount = text.partition(":")
    if not sep or not asset or not amount:
        raise KofoError(
            f"{option} must be ASSET:AMOUNT (e.g. BTC:0.01), got {text!r}", code="invalid_input"
        )
    return asset, amount


async def _follow(
    client: Any,
    trade: TradeView,
    after: int,
    on_phase: Callable[[PhaseView, TradeView], None],
    poll: float = 2.0,
) -> TradeView:
    """Follow a trade to its end: every event about it (and a slow poll, in case an event is
    missed) re-reads the trade and reports its new phases."""
    from kofo.sdk import TERMINAL_TRADE_STATES

    queue: asyncio.Queue[Any] = asyncio.Queue()

    async def pump() -> None:
        async for event in client.events(after=after, kinds=("trade", "swap", "order")):
            await queue.put(event)

    pumper = asyncio.ensure_future(pump())
    shown = 0
    try:
        while True:
            for phase in trade.phases[shown:]:
                on_phase(phase, trade)
            shown = max(shown, len(trade.phases))
            if trade.state in TERMINAL_TRADE_STATES:
                return trade
            if pumper.done():
                pumper.result()  # raises what stopped the stream
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(queue.get(), poll)
                while not queue.empty():
                    queue.get_nowait()
            trade = await client.trade(trade.trade_id)
    finally:
        pumper.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await pumper


def _confirms_text(d: dict[str, Any]) -> str:
    """``taker lock btc tx ab12cd34… 1/2 confirmations`` from a ``confirms`` phase's detail
    (its keys popped); the txid shortened so the line stays under 80 columns."""
    by, tx, chain = d.pop("by", "?"), d.pop("tx", "tx"), d.pop("chain", "?")
    txid = str(d.pop("txid", ""))
    count, required = d.pop("confirmations"), d.pop("required", "?")
    short = txid.removeprefix("0x")[:8] + ("…" if len(txid) > 8 else "")
    return f"{by} {tx} {str(chain)[:12]} tx {short} {count}/{required} confirmations"


def _phase_line(phase: PhaseView, t: TradeView, units: _Units) -> tuple[str, str]:
    """One progress line for a trade phase: the words, then the rest of its detail (whole)."""
    d = dict(phase.detail)
    text = _PHASE_TEXT.get(phase.phase, phase.phase)
    if phase.phase == "committed":
        height = d.pop("height", t.height)
        if height is not None:
            text += f" at height {height}"
    elif phase.phase == "quotes":
        count, best = d.pop("count", None), d.pop("best", None)
        text = f"{count} quote(s) in" if count is not None else text
        if isinstance(best, int):
            text += f", best {units.show(best, t.buy)}"
    elif phase.phase == "ordering":
        receive = d.pop("receive", t.receive)
        if isinstance(receive, int):
            text += f": receive {units.show(receive, t.buy)}"
        if "hops" in d:
            text += f" over {d.pop('hops')} hop(s)"
    elif phase.phase == "swap" and "state" in d:
        state, reason = d.pop("state"), d.pop("reason", "")
        text = f"swap {state}" + (f": {reason}" if reason and reason != state else "")
    elif phase.phase == "confirms" and "confirmations" in d:
        text = _confirms_text(d)
    elif phase.phase in ("redeemed", "refunded"):
        d.pop("state", None)
        reason = d.pop("reason", "")
        for key in ("received", "refunded"):
            asset = d.pop(f"{key}_asset", None)
            amount = d.pop(key, None)
            if isinstance(amount, int) and isinstance(asset, str):
                text += f": {key} {units.show(amount, asset)}"
        if reason:
            text += f" ({reason})"
    elif phase.phase == "failed" and "reason" in d:
        text += f": {d.pop('reason')}"
    return text, _detail(d)


def trade_command(
    sell: Annotated[str, typer.Option(help="what to pay, ASSET:AMOUNT (BTC:0.01)")],
    buy: Annotated[str, typer.Option(help="what to receive: an asset (ETH)")],
    min_receive: Annotated[
        str | None, typer.Option(help="refuse quotes below this, in the buy asset (decimal)")
    ] = None,
    slippage_bps: Annotated[
        int,
        typer.Option(
            min=0,
            max=5_000,
            help="without --min-receive: accept down to the best quote less this many basis "
            "points (100 = 1 %)",
        ),
    ] = 100,
    deadline: Annotated[
        int, typer.Option(min=1, help="seconds to get the order committed, else give up")
    ] = 60,
    wait: Annotated[bool, typer.Option(help="follow the trade to its end")] = True,
    home: HomeOption = _DEFAULT_HOME,
    as_json: JsonOption = False,
) -> None:
    """Trade through the network: ask for quotes, take the best, commit the order on the
    ledger, then swap. Shows each step; exits non-zero unless the trade ends redeemed."""
    from kofo.sdk import AsyncClient

    try:
        sell_asset, amount = _split_side(sell, "--sell")
    except KofoError as exc:
        raise _fail(exc) from None
    console = _console()

    async def run(client: AsyncClient) -> TradeView:
        units = _Units(await client.balances())
        floor: str | int | None = min_receive
        if floor is None:
            # No floor given: the node refuses a trade without one (a lone maker could quote
            # one base unit), so take the best quote now less the slippage, and say so.
            quotes = await client.quotes(sell=sell_asset, amount=amount, buy=buy)
            if not quotes:
                raise KofoError(
                    f"no quote for {sell} -> {buy}: no maker answered (try a smaller amount, "
                    "or give --min-receive)",
                    code="no_quote",
                )
            # Only a quote for the whole amount may set the floor: one filling a part (a
            # maker's max_in) less the slippage would floor the whole amount at a part's
            # price, which any maker could then fill for almost nothing.
            full = [q for q in quotes if q.amount_in >= _base_units(units, sell_asset, amount)]
            if not full:
                most = max(quotes, key=lambda q: q.amount_in)
                raise KofoError(
                    f"the best quotes fill only {units.show(most.amount_in, most.sell)} of "
                    f"{amount} {units.symbol(sell_asset)}: sell less, or give --min-receive "
                    "for the whole amount",
                    code="no_quote",
                )
            best = max(q.receive for q in full)
            floor = best * (10_000 - slippage_bps) // 10_000
            if floor <= 0:
                raise KofoError(
                    f"the best quote ({units.show(best, quotes[0].buy)}) less "
                    f"{slippage_bps} bps leaves nothing: give --min-receive",
                    code="invalid_input",
                )
            if not as_json:
                console.print(
                    Text(
                        f"  no --min-receive: accepting at least {units.show(floor, quotes[0].buy)}"
                        f" (best quote {units.show(best, quotes[0].buy)} less {slippage_bps} bps)"
                    )
                )
        after = await client.last_event_seq()
        trade = await client.create_trade(
            sell=sell_asset,
            amount=amount,
            buy=buy,
            min_receive=floor,
            deadline_s=deadline,
        )
        if not as_json:
            console.print(Text(f"trade {trade.trade_id}", style="bold"))
            console.print(
                Text(
                    f"  selling {units.show(trade.amount, trade.sell)} for "
                    f"{units.symbol(trade.buy)}"
                )
            )
        if not wait:
            return trade

        def on_phase(phase: PhaseView, t: TradeView) -> None:
            if as_json:
                return
            text, extra = _phase_line(phase, t, units)
            style = "red" if phase.phase in FAILED_STATES else "green"
            console.print(
                Text.assemble(
                    (f"  {time.strftime('%H:%M:%S', time.localtime(phase.at))} ", "dim"),
                    (f"{phase.phase:<10} ", style),
                    text,
                    (f"  {extra}" if extra else "", "dim"),
                )
            )

        if as_json:
            trade = await _follow(client, trade, after, on_phase)
        else:
            with console.status("waiting for the trade's next step...", spinner="dots"):
                trade = await _follow(client, trade, after, on_phase)
        if not as_json:
            if trade.state == "redeemed":
                console.print(
                    Text(f"received {units.show(trade.receive, trade.buy)}", style="bold green")
                )
            else:
                console.print(
                    Text(
                        f"trade ended {trade.state}: {trade.error or 'see kofo trades'}",
                        style="bold red",
                    )
                )
        return trade

    async def main() -> TradeView:
        async with AsyncClient.from_home(home.expanduser()) as client:
            return await run(client)

    try:
        trade = asyncio.run(main())
    except KofoError as exc:
        raise _fail(exc) from None
    except KeyboardInterrupt:
        _err_console().print("stopped following; the node carries the trade on (kofo trades)")
        raise typer.Exit(130) from None
    if as_json:
        _print_json(trade)
    if wait and trade.state != "redeemed":
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("trade")(trade_command)
    app.add_typer(offer_app, name="offer")
    app.command("balances")(balances_command)
    app.command("trades")(trades_command)
    app.command("swaps")(swaps_command)
    app.add_typer(ledger_app, name="ledger")
    app.command("peers")(peers_command)
    app.command("info")(info_command)


__all__ = ["register"]
