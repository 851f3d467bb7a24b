"""A take's payment hash squatted from the mempool (issue 17, review 6 open list, item 2).

A take tx carries its order, payment hash included, and is in the mempool before it is
recorded. The ledger made a payment hash serve one order ever, so a proposer (or the provider's
better-connected sybil) that saw the take committed another order with that hash first: the
taken order was uncommittable, the take refused, and the taker retried with a fresh hash until
the quote expired. Now an HTLC (payment hash, chain, token and both keys, each proven by its
key) serves one order leg ever: another order with the hash blocks nothing, since its legs are
its own keys' HTLCs. Real ledger app, in process; the last test on the embedded EVM with the
real chain observer.
"""

import dataclasses
import hashlib

import pytest

from kofo.wire.orders import (
    CommitOrder,
    OrderKind,
    Quote,
    derive_quote_id,
    sign_tx,
    with_derived_id,
)

from .helpers import (
    Ledger,
    Party,
    commit_tx,
    leg_address,
    make_order,
    prove_legs,
    take_evidence,
    take_order,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def net():
    ledger = Ledger()
    m1, alice, s1, s2 = Party.make(1), Party.make(2), Party.make(4), Party.make(5)
    ledger.ok(*(p.register_tx() for p in (m1, alice, s1, s2)))
    ledger.bonded(m1, alice, s1, s2)
    return ledger, m1, alice, s1, s2


def _codes(result):
    return [r.error for r in result.results]


def _quote(ledger, provider, *, taker=bytes(32)):
    quote = Quote(bytes(16), provider.id, "btc", 1_000, "eth", 50_000, ledger.time + 100, taker)
    return dataclasses.replace(quote, quote_id=derive_quote_id(quote))


def _squat(route, payment_hash, *, keys=None):
    """A direct order of ``route`` with a payment hash seen in the mempool; ``keys`` labels
    its own leg keys (default: the helper's, shared by every order's same leg)."""
    order = make_order(route, kind=OrderKind.DIRECT, amount=777)
    legs = order.legs
    if keys is not None:
        n = len(legs)
        legs = tuple(
            dataclasses.replace(
                leg,
                sender_address=leg_address(leg.chain, f"{keys}-{i}"),
                recipient_address=leg_address(leg.chain, f"{keys}-{(i + 1) % n}"),
            )
            for i, leg in enumerate(legs)
        )
    order = with_derived_id(dataclasses.replace(order, payment_hash=payment_hash, legs=legs))
    return commit_tx(order, route, route[0])


@pytest.mark.parametrize("taker", ["named", "open"])
def test_an_order_with_a_takes_payment_hash_ahead_of_it_does_not_block_the_take(net, taker):
    ledger, m1, alice, s1, s2 = net
    quote = _quote(ledger, m1, taker=alice.id if taker == "named" else bytes(32))
    taken = take_order(quote, m1, alice)
    ev = take_evidence(quote, m1, alice, order=taken)
    h = taken.order.payment_hash
    # the provider's sybils, and the provider itself with one, put orders with the take's
    # payment hash ahead of the take in the same block (a proposer, or better connections)
    result = ledger.block(_squat([s1, s2], h), _squat([m1, s1], h, keys="m1-squat"), ev)
    # old code: ["", "already_exists", "already_exists"]: the take was refused
    assert _codes(result) == ["", "", ""]
    # the provider does not honour it: after the grace, the taker's evidence slashes
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    assert _codes(ledger.block(ev, time=late)) == [""]
    assert ledger.app.node(m1.id)["penalty_points"] == 50


def test_the_provider_can_still_commit_a_take_whose_hash_another_order_uses(net):
    ledger, m1, alice, s1, s2 = net
    quote = _quote(ledger, m1, taker=alice.id)
    taken = take_order(quote, m1, alice)
    ev = take_evidence(quote, m1, alice, order=taken)
    ledger.ok(_squat([s1, s2], taken.order.payment_hash), ev)  # old code: the take refused
    full = CommitOrder(taken.order, (*taken.signatures, taken.order.sign(m1.key)))
    ledger.ok(sign_tx(m1.key, prove_legs(full)))
    assert ledger.app.order(taken.order.order_id)["status"] == "committed"
    late = quote.valid_until + ledger.app.params.honour_grace + 1
    result = ledger.block(ev, time=late)
    assert _codes(result) == ["evidence_invalid"]
    assert "honoured" in result.results[0].log


def test_a_recorded_take_still_reserves_its_orders_htlcs(net):
    """The one squat left to the parties of a taken order: a leg both of whose keys they hold
    (here the taker's sybil on the route). Recording the take reserves its order's HTLCs, so
    another order with one of them is refused and the provider can commit the taken order."""
    ledger, m1, alice, s1, _ = net
    quote = _quote(ledger, m1, taker=alice.id)
    taken = take_order(quote, m1, alice, route=[alice, s1, m1])
    ev = take_evidence(quote, m1, alice, order=taken)
    ledger.ok(ev)
    # legs[0] alice -> s1, with the same keys and payment hash as the taken order's
    blocker = _squat([alice, s1], taken.order.payment_hash)
    assert _codes(ledger.block(blocker)) == ["already_exists"]
    full = CommitOrder(taken.order, (*taken.signatures, taken.order.sign(m1.key)))
    ledger.ok(sign_tx(m1.key, prove_legs(full)))
    assert ledger.app.order(taken.order.order_id)["status"] == "committed"


def test_two_legs_of_one_order_cannot_be_one_htlc(net):
    ledger, m1, alice, s1, s2 = net
    order = make_order([alice, s1, s2, m1], amount=1_000)
    legs = list(order.legs)
    legs[2] = dataclasses.replace(
        legs[2],
        sender_address=legs[0].sender_address,
        recipient_address=legs[0].recipient_address,
    )
    order = with_derived_id(dataclasses.replace(order, legs=tuple(legs)))
    result = ledger.block(commit_tx(order, [alice, s1, s2, m1], alice))
    assert _codes(result) == ["order_invalid"]
    assert "one HTLC" in result.results[0].log


def test_a_sham_order_sharing_an_honest_orders_hash_is_settled_only_by_its_own_htlcs():
    """Sybils commit an order with an honest order's payment hash and their own keys (allowed
    now). The honest swap runs on the chain: the real observer matches legs by their full
    terms, so the honest order settles and the sham gets nothing from its locks and redeems.
    Once the preimage is public the sham's parties could settle it only with HTLCs of their
    own: their own money, moved on the chain."""
    from kofo.settlement.chain import HtlcTerms
    from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
    from kofo.settlement.chains.ethereum.contract import deploy
    from kofo.settlement.observer import AdapterObserver
    from kofo.wire.expiry import UnixTime
    from kofo.wire.orders import Leg, SettlementOrder
    from tests.ethereum.conftest import EmbeddedChain

    from .helpers import LEG_KEYS

    chain = EmbeddedChain()
    htlc = deploy(chain.w3, "HTLC", chain.new_account(10**18))
    a, b, c, d = (EthereumAdapter(chain.w3, chain.new_account(5 * 10**18), htlc) for _ in range(4))
    alice, bob, s1, s2 = (Party.make(i) for i in (0, 1, 7, 8))
    now = a.expiry_now().value
    preimage = hashlib.sha256(b"alice's secret").digest()
    payment_hash = hashlib.sha256(preimage).digest()
    for adapter in (a, b, c, d):
        LEG_KEYS[adapter.address()] = bytes(adapter.account.key)

    def leg(sender, recipient, s_adapter, r_adapter, amount, expiry, lock_by):
        return Leg(
            "eth",
            None,
            sender.id,
            recipient.id,
            s_adapter.address(),
            r_adapter.address(),
            amount,
            UnixTime(expiry),
            expiry,
            lock_by,
        )

    def order_of(x, y, xa, ya):
        return with_derived_id(
            SettlementOrder(
                order_id=bytes(16),
                kind=OrderKind.DIRECT,
                payment_hash=payment_hash,
                legs=(
                    leg(x, y, xa, ya, 10**17, now + 7_200, now + 600),
                    leg(y, x, ya, xa, 2 * 10**17, now + 3_600, now + 660),
                ),
            )
        )

    honest, sham = order_of(alice, bob, a, b), order_of(s1, s2, c, d)
    ledger = Ledger(chains=AdapterObserver({"eth": a}))
    ledger.time = now
    ledger.ok(*(p.register_tx() for p in (alice, bob, s1, s2)))
    ledger.ok(commit_tx(sham, [s1, s2], s1))  # first, from the mempool
    ledger.ok(commit_tx(honest, [alice, bob], alice))  # old code: already_exists
    refs = []
    for adapter, lg in ((a, honest.legs[0]), (b, honest.legs[1])):
        terms = HtlcTerms(
            "eth", payment_hash, lg.amount, lg.sender_address, lg.recipient_address, lg.expiry
        )
        refs.append(adapter.lock(terms))
    ledger.attested()
    for adapter, ref in ((a, refs[1]), (b, refs[0])):
        tx = adapter.prepare_redeem(ref, preimage)
        adapter.broadcast(tx)
        adapter.wait(tx.txid)
    ledger.attested()
    assert ledger.app.order(honest.order_id)["status"] == "settled"
    rec = ledger.app.order(sham.order_id)
    assert rec["status"] == "committed"
    assert [x["outcome"] for x in rec["legs"]] == [None, None]
    assert ledger.app.node(s1.id)["settled"] == ledger.app.node(s2.id)["settled"] == 0


def _mint(chain, token, to, amount):
    abi = [
        {
            "name": "mint",
            "type": "function",
            "stateMutability": "nonpayable",
            "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
            "outputs": [],
        }
    ]
    tok = chain.w3.eth.contract(address=token, abi=abi)
    chain.send(tok.functions.mint(to, amount), chain.new_account(10**17))


def test_one_token_swap_never_settles_two_orders_through_token_spellings():
    """Self-dealing sybils (they hold both keys of every leg, so they prove them) commit one
    ERC-20 swap several times, the token address spelled differently each time: checksummed,
    lower case, upper case, without its 0x. The chain (and the observer, through the adapter)
    reads all of them as one token, so one real lock and redeem per leg settled every copy
    (volume, settled count and importance several times for one swap). On the old code all
    four committed and all four settled; now an HTLC's token is compared as the chain reads
    it, and the copies are one HTLC (``already_exists``)."""
    from kofo.settlement.chain import HtlcTerms
    from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
    from kofo.settlement.chains.ethereum.contract import deploy
    from kofo.settlement.observer import AdapterObserver
    from kofo.wire.expiry import UnixTime
    from kofo.wire.orders import Leg, SettlementOrder
    from tests.ethereum.conftest import EmbeddedChain

    from .helpers import LEG_KEYS

    chain = EmbeddedChain()
    deployer = chain.new_account(10**18)
    htlc = deploy(chain.w3, "HTLC", deployer)
    token = deploy(chain.w3, "TestToken", deployer, "Test", "TST", 6)
    c, d = (EthereumAdapter(chain.w3, chain.new_account(5 * 10**18), htlc) for _ in range(2))
    for adapter in (c, d):
        LEG_KEYS[adapter.address()] = bytes(adapter.account.key)
        _mint(chain, token, adapter.address(), 10**9)
    s1, s2 = Party.make(7), Party.make(8)
    now = c.expiry_now().value
    preimage = hashlib.sha256(b"sybil's secret").digest()
    payment_hash = hashlib.sha256(preimage).digest()
    spellings = [str(token), str(token).lower(), "0x" + str(token)[2:].upper(), str(token)[2:]]

    def order_of(tok):
        def leg(x, y, xa, ya, amount, expiry, lock_by):
            return Leg("eth", tok, x.id, y.id, xa.address(), ya.address(), amount,
                       UnixTime(expiry), expiry, lock_by)  # fmt: skip

        return with_derived_id(
            SettlementOrder(
                order_id=bytes(16),
                kind=OrderKind.DIRECT,
                payment_hash=payment_hash,
                legs=(
                    leg(s1, s2, c, d, 10**6, now + 7_200, now + 600),
                    leg(s2, s1, d, c, 2 * 10**6, now + 3_600, now + 660),
                ),
            )
        )

    orders = [order_of(t) for t in spellings]
    ledger = Ledger(chains=AdapterObserver({"eth": c}))
    ledger.time = now
    ledger.ok(*(p.register_tx() for p in (s1, s2)))
    result = ledger.block(*(commit_tx(o, [s1, s2], s1) for o in orders))
    # old code: ["", "", "", ""]
    assert _codes(result) == ["", "already_exists", "already_exists", "already_exists"]
    refs = []
    for adapter, lg in ((c, orders[0].legs[0]), (d, orders[0].legs[1])):
        terms = HtlcTerms(
            "eth", payment_hash, lg.amount, lg.sender_address, lg.recipient_address, lg.expiry,
            token=lg.token,
        )  # fmt: skip
        refs.append(adapter.lock(terms))
    ledger.attested()
    for adapter, ref in ((c, refs[1]), (d, refs[0])):
        tx = adapter.prepare_redeem(ref, preimage)
        adapter.broadcast(tx)
        adapter.wait(tx.txid)
    ledger.attested()
    assert ledger.app.order(orders[0].order_id)["status"] == "settled"
    assert ledger.app.node(s1.id)["settled"] == 1  # old code: 4


def test_one_taker_can_take_two_quotes_of_a_provider_under_one_payment_hash(net):
    """What the maker's engine must then serve (docs/swap.md §6): a taker takes two of the
    provider's quotes with one payment hash and its own other keys in the second order. The
    ledger records both takes and the provider can commit both orders: both are its duty, so
    its engine refusing the second swap (one initiator node) got it slashed."""
    ledger, m1, alice, _, _ = net
    q1 = _quote(ledger, m1, taker=alice.id)
    q2 = dataclasses.replace(q1, valid_until=q1.valid_until + 1)
    q2 = dataclasses.replace(q2, quote_id=derive_quote_id(q2))
    first = take_order(q1, m1, alice)
    base = take_order(q2, m1, alice).order

    def own(leg, i, field, node):  # alice's second set of keys, proven as the first
        value = getattr(leg, field)
        return leg_address(leg.chain, f"alice-second-{i}-{field}") if node == alice.id else value

    legs = tuple(
        dataclasses.replace(
            leg,
            sender_address=own(leg, i, "sender_address", leg.sender),
            recipient_address=own(leg, i, "recipient_address", leg.recipient),
        )
        for i, leg in enumerate(base.legs)
    )
    order = with_derived_id(
        dataclasses.replace(base, payment_hash=first.order.payment_hash, legs=legs)
    )
    second = prove_legs(CommitOrder(order, (order.sign(alice.key),)), skip=m1.id)
    ev1 = take_evidence(q1, m1, alice, order=first)
    ev2 = take_evidence(q2, m1, alice, order=second)
    assert _codes(ledger.block(ev1, ev2)) == ["", ""]  # both takes recorded
    for taken in (first, second):
        full = CommitOrder(taken.order, (*taken.signatures, taken.order.sign(m1.key)))
        ledger.ok(sign_tx(m1.key, prove_legs(full)))
        assert ledger.app.order(taken.order.order_id)["status"] == "committed"
