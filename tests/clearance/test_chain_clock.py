"""Issue 17, open case (a) of the height-expiry review: a provider's own leg on a height chain
expiring far LATER than the leg paying it. The ledger compared legs only by the parties'
declared ``expiry_time``; a height cannot be related to time without the chain's clock, so a
taker could write a take's order whose provider leg (LTC height, or BTC height against an ETH
unix leg) expires long after the leg paying the provider: the taker could refund its own leg
and then redeem the provider's. The provider, right not to lock, was slashed 5 % (2 % if it
refused to commit). Now validators attest each chain's tip in their vote extensions, the
ledger keeps the attested height (> 2/3 of the power at least that high) and (1) refuses such
an order at commit, (2) excuses the sender when judged on the clocks of the paying lock.
Real ledger app in process (solo attestations; four validators for the tally).
"""

import dataclasses

import pytest

from kofo.clearance import attest, clocks
from kofo.wire.attest import (
    MAX_TIPS,
    ChainTip,
    decode_extension_every,
    encode_extension,
)
from kofo.wire.codec import encode
from kofo.wire.envelope import BadMessage
from kofo.wire.expiry import BlockHeight, UnixTime
from kofo.wire.orders import (
    CommitOrder,
    EvidenceKind,
    FileEvidence,
    LegOutcome,
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
from .test_vote_extensions import Validators

pytestmark = pytest.mark.timeout(300)

BTC_SAFE = 799_000
"""The btc tip validators attest (at 6 confirmations): the tip is ~799,005."""
LTC_SAFE = 2_000_000
"""The ltc tip validators attest (at 12 confirmations): the tip is ~2,000,011."""
BTC_TIP, LTC_TIP = BTC_SAFE + 5, LTC_SAFE + 11


@pytest.fixture
def net():
    ledger = Ledger()
    ledger.chains.tips.update(btc=BTC_SAFE, ltc=LTC_SAFE)
    m1, alice = Party.make(1), Party.make(2)  # the provider, the taker
    ledger.ok(*(p.register_tx() for p in (m1, alice)))
    ledger.bonded(m1, alice)
    assert ledger.app.chain_clock("btc") == {
        "height": BTC_SAFE,
        "since": ledger.time,
        "time": ledger.time,
    }
    return ledger, m1, alice


def _codes(result):
    return [r.error for r in result.results]


def _quote(ledger, m1, alice, give, take):
    q = Quote(bytes(16), m1.id, give, 50_000, take, 1_000, ledger.time + 100, alice.id)
    return dataclasses.replace(q, quote_id=derive_quote_id(q))


def _with_expiries(commit, parties, *expiries):
    """The taken order with its legs' expiries replaced (the declared ``expiry_time`` kept:
    legs[0] still "expires" an hour after legs[1] in the parties' words), signed again by every
    party but the provider (``parties[0]``)."""
    legs = [
        dataclasses.replace(leg, expiry=e) if e is not None else leg
        for leg, e in zip(commit.order.legs, expiries, strict=True)
    ]
    order = with_derived_id(dataclasses.replace(commit.order, legs=tuple(legs)))
    keys = {p.id: p for p in parties}
    return prove_legs(
        CommitOrder(order, tuple(order.sign(keys[s.signer].key) for s in commit.signatures)),
        skip=parties[0].id,
    )


# (give, take, the provider's own leg's expiry: far later than the leg paying it)
FAR_LATER = {
    # btc pays the provider in 100 blocks (~60,000 s); its ltc leg expires in 2,000 (~300,000 s)
    "btc-ltc": ("ltc", "btc", None, BlockHeight(LTC_TIP + 2_000)),
    # eth pays it at a unix time ~17,000 s away; its btc leg expires in 200 blocks (~120,000 s)
    "eth-btc": ("btc", "eth", None, BlockHeight(BTC_TIP + 200)),
}


def _take(ledger, m1, alice, give, take, pay_expiry, own_expiry):
    quote = _quote(ledger, m1, alice, give, take)
    honest = take_order(quote, m1, alice)
    assert honest.order.legs[0].recipient == m1.id and honest.order.legs[0].chain == take
    pay = pay_expiry or (
        BlockHeight(BTC_TIP + 100)
        if take == "btc"
        else UnixTime(honest.order.legs[0].expiry.value)  # eth: its expiry_time
    )
    return quote, _with_expiries(honest, [m1, alice], pay, own_expiry)


@pytest.mark.parametrize("case", list(FAR_LATER))
def test_an_order_whose_provider_leg_expires_far_later_is_refused_at_commit(net, case):
    ledger, m1, alice = net
    give, take, pay, own = FAR_LATER[case]
    quote, taken = _take(ledger, m1, alice, give, take, pay, own)
    # the take is not recorded: the provider could not fill its order safely (old code: "",
    # then the provider was slashed 2 % for refusing to commit it, or 5 % for not locking)
    result = ledger.block(take_evidence(quote, m1, alice, order=taken))
    assert _codes(result) == ["evidence_invalid"]
    assert "could not fill it safely" in result.results[0].log
    # ...nor can anyone commit the order: wrong whatever the blocks do
    full = CommitOrder(taken.order, (*taken.signatures, taken.order.sign(m1.key)))
    result = ledger.block(sign_tx(m1.key, prove_legs(full)))
    assert _codes(result) == ["order_invalid"]
    assert "attested chain clocks" in result.results[0].log
    assert ledger.app.order(taken.order.order_id) is None


def _commit_take(ledger, m1, alice, quote, taken):
    assert _codes(ledger.block(take_evidence(quote, m1, alice, order=taken))) == [""]
    full = CommitOrder(taken.order, (*taken.signatures, taken.order.sign(m1.key)))
    ledger.ok(sign_tx(m1.key, prove_legs(full)))
    assert ledger.app.order(taken.order.order_id)["status"] == "committed"
    return taken.order


def _routed(ledger, alice, m1, ltc_blocks):
    """alice -> m1 -> alice, both signing: alice pays btc (100 blocks out), m1 pays ltc
    (``ltc_blocks`` out on ltc's clock)."""
    order = make_order([alice, m1], t0=ledger.time)
    legs = list(order.legs)
    legs[0] = dataclasses.replace(legs[0], expiry=BlockHeight(BTC_TIP + 100))
    legs[1] = dataclasses.replace(
        legs[1],
        chain="ltc",
        sender_address=leg_address("ltc", "m1-ltc"),
        recipient_address=leg_address("ltc", "alice-ltc"),
        expiry=BlockHeight(LTC_TIP + ltc_blocks),
    )
    order = with_derived_id(dataclasses.replace(order, legs=tuple(legs)))
    ledger.ok(commit_tx(order, [alice, m1], alice, ts=ledger.time))
    return order


def _judge(ledger, m1, alice, order, lock_height):
    """The taker locks legs[0] in time (at ``lock_height`` of a height chain), the provider does
    not lock legs[1], the taker files ``leg_not_locked``."""
    ledger.chains.see(order, 0, LegOutcome.LOCKED, height=lock_height)
    ledger.attested(time=order.legs[0].lock_by)
    assert ledger.app.order(order.order_id)["legs"][0]["outcome"] == "locked"
    ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    late = order.legs[1].lock_by + ledger.app.params.attest_grace + 1
    return ledger.block(ev, time=max(late, ledger.time + 1))


@pytest.mark.parametrize("blocks", [300, 800])
def test_a_take_the_provider_could_not_fill_safely_is_not_recorded(net, blocks):
    # An ltc leg 300 or 800 blocks out against 100 btc blocks passes commit_order's reading
    # (in the order's favour) but, read strictly (btc as fast and ltc as slow as the 40 %
    # tolerance lets them), may expire less than notice(ltc) + settle(btc) = 7,260 s before the
    # leg paying the provider: its engine refuses it (terms_margin_too_small), so the take is
    # not recorded (old code: recorded; the provider slashed 2 % for not honouring it).
    ledger, m1, alice = net
    quote, taken = _take(ledger, m1, alice, "ltc", "btc", None, BlockHeight(LTC_TIP + blocks))
    result = ledger.block(take_evidence(quote, m1, alice, order=taken))
    assert _codes(result) == ["evidence_invalid"]
    assert "notice + settle" in result.results[0].log


@pytest.mark.parametrize("blocks", [300, 800])
def test_a_sender_whose_leg_is_too_close_on_the_clocks_of_the_paying_lock_is_excused(net, blocks):
    # The same legs in an order both parties signed: committed (not wrong whatever the blocks
    # do), but judged strictly on the clocks of the paying lock the provider was right not to
    # lock: excused (old code: slashed 5 % and 100 points).
    ledger, m1, alice = net
    order = _routed(ledger, alice, m1, blocks)
    result = _judge(ledger, m1, alice, order, BTC_SAFE)
    assert _codes(result) == ["evidence_invalid"]
    log = result.results[0].log
    assert "right not to lock" in log and "notice + settle" in log
    assert ledger.app.node(m1.id)["penalty_points"] == 0
    assert ledger.app.bond(m1.id) == m1.bond


def test_the_clocks_at_the_paying_lock_count_not_the_takes():
    # A take whose provider leg (ltc, 100 blocks) is safe on the clocks when it is recorded;
    # by the taker's lock btc has run 40 blocks on while ltc stalled: the provider's leg may
    # now expire after the leg paying it. Judged on the clocks of the paying lock: excused.
    ledger = Ledger()
    ledger.chains.tips.update(btc=BTC_SAFE, ltc=LTC_SAFE)
    m1, alice = Party.make(1), Party.make(2)
    ledger.ok(*(p.register_tx() for p in (m1, alice)))
    ledger.bonded(m1, alice)
    quote, taken = _take(ledger, m1, alice, "ltc", "btc", None, BlockHeight(LTC_TIP + 100))
    order = _commit_take(ledger, m1, alice, quote, taken)
    # (65 blocks still left on the paying leg: the height margin, 47, does not excuse it)
    ledger.chains.tips["btc"] = BTC_SAFE + 40
    result = _judge(ledger, m1, alice, order, BTC_SAFE + 40)
    assert _codes(result) == ["evidence_invalid"]
    assert "right not to lock" in result.results[0].log
    assert ledger.app.node(m1.id)["penalty_points"] == 0


def test_without_a_clock_an_order_is_accepted_and_its_sender_never_slashed():
    # No ltc clock when the order is committed (validators not watching ltc yet): accepted
    # (the ledger cannot say it is wrong). If ltc's clock is attested by the paying lock, it
    # judges (here: far later, excused); if not, the ledger cannot say the provider's leg was
    # safe: excused as well. A take needs the clocks: refused without one.
    for attested_by_lock in (True, False):
        ledger = Ledger()
        ledger.chains.tips.update(btc=BTC_SAFE)
        m1, alice = Party.make(1), Party.make(2)
        ledger.ok(*(p.register_tx() for p in (m1, alice)))
        ledger.bonded(m1, alice)
        quote, taken = _take(ledger, m1, alice, "ltc", "btc", None, BlockHeight(LTC_TIP + 100))
        result = ledger.block(take_evidence(quote, m1, alice, order=taken))
        assert _codes(result) == ["evidence_invalid"] and "no clock" in result.results[0].log
        order = _routed(ledger, alice, m1, 2_000)
        if attested_by_lock:
            ledger.chains.tips["ltc"] = LTC_SAFE
            ledger.attested()
            assert ledger.app.chain_clock("ltc")["height"] == LTC_SAFE
        result = _judge(ledger, m1, alice, order, BTC_SAFE)
        assert _codes(result) == ["evidence_invalid"]
        log = result.results[0].log
        assert ("notice + settle" if attested_by_lock else "no clock of ltc") in log
        assert ledger.app.node(m1.id)["penalty_points"] == 0


@pytest.mark.parametrize(
    "give,take,own",
    [
        # ltc leg 100 blocks out (~15,000 s) against 100 btc blocks (~60,000 s)
        ("ltc", "btc", BlockHeight(LTC_TIP + 100)),
        # btc leg 10 blocks out (~6,000 s) against an eth leg expiring ~17,000 s away
        ("btc", "eth", BlockHeight(BTC_TIP + 10)),
    ],
)
def test_an_honest_cross_chain_order_is_accepted_and_a_real_default_still_slashed(
    net, give, take, own
):
    ledger, m1, alice = net
    quote, taken = _take(ledger, m1, alice, give, take, None, own)
    order = _commit_take(ledger, m1, alice, quote, taken)
    result = _judge(ledger, m1, alice, order, BTC_SAFE)
    assert _codes(result) == [""]
    assert ledger.app.node(m1.id)["penalty_points"] == 100
    assert ledger.app.bond(m1.id) == m1.bond - m1.bond * 500 // 10_000


def test_a_routed_order_is_checked_on_every_pair_of_legs(net):
    # alice -> m1 -> bob -> alice: legs[1] (m1's, btc) far later than legs[0] (eth) paying m1
    ledger, m1, alice = net
    bob = Party.make(3)
    ledger.ok(bob.register_tx())
    route = [alice, m1, bob]

    def routed(bob_blocks):
        order = make_order(route, t0=ledger.time)
        assert [leg.chain for leg in order.legs] == ["btc", "eth", "btc"]
        legs = list(order.legs)
        legs[0] = dataclasses.replace(legs[0], expiry=BlockHeight(BTC_TIP + 60))
        legs[2] = dataclasses.replace(legs[2], expiry=BlockHeight(BTC_TIP + bob_blocks))
        return with_derived_id(dataclasses.replace(order, legs=tuple(legs)))

    ledger.ok(commit_tx(routed(40), route, alice, ts=ledger.time))
    # bob's btc leg 500 blocks out, after the eth leg (~13,600 s) paying bob: refused
    result = ledger.block(commit_tx(routed(500), route, alice, ts=ledger.time))
    assert _codes(result) == ["order_invalid"] and "legs[2]" in result.results[0].log


# -- the tally -------------------------------------------------------------------------------


def test_a_lying_minority_cannot_move_the_attested_clock():
    vals = Validators()  # four validators of power 10: a liar holds a quarter
    honest = [BTC_SAFE, BTC_SAFE + 1, BTC_SAFE + 2]
    for c, h in zip(vals.chains, [*honest, BTC_SAFE], strict=True):
        c.tips["btc"] = h
    for lie in (10**12, 0, BTC_SAFE + 3):
        vals.lies[3] = encode_extension([], tips=[ChainTip("btc", lie)])
        vals.step()  # extensions of this height carry the tips
        vals.step()  # ...tallied in this block
        clock = [a.app.chain_clock("btc") for a in vals.apps]
        assert len({c["height"] for c in clock}) == 1  # every validator the same
        # within the honest range, whatever the liar says (and never lowered)
        assert BTC_SAFE <= clock[0]["height"] <= max(honest)
    assert clock[0]["height"] == BTC_SAFE + 1  # three of four report at least that
    assert len({a.app.app_hash for a in vals.apps}) == 1


def test_the_attested_height_is_the_highest_more_than_two_thirds_reach():
    assert attest.attested_height([(10, 5), (10, 6), (10, 7), (10, 10**9)], 40) == 6
    assert attest.attested_height([(10, 5), (10, 6), (10, 7), (10, 0)], 40) == 5
    assert attest.attested_height([(30, 5), (10, 10**9)], 40) == 5
    # no more than two thirds present: no clock
    assert attest.attested_height([(10, 5), (10, 6)], 40) is None
    assert attest.attested_height([], 40) is None
    # exhaustive over small honest/liar mixes: never outside the honest range
    import itertools

    for honest in itertools.product([3, 4, 5], repeat=3):
        for lie in (0, 1, 4, 99):
            h = attest.attested_height([(10, x) for x in honest] + [(9, lie)], 39)
            assert min(honest) <= h <= max(honest)


def test_tips_in_a_vote_extension_are_bounded_canonical_and_sorted():
    ext = encode_extension([], tips=[ChainTip("ltc", 7), ChainTip("btc", 5), ChainTip("btc", 9)])
    assert ext.hex() == "a3617601636f62738064746970738282636274630982636c746307"
    assert decode_extension_every(ext)[3] == [ChainTip("btc", 9), ChainTip("ltc", 7)]
    many = [ChainTip(f"c{i:02d}", i) for i in range(MAX_TIPS + 4)]
    assert len(decode_extension_every(encode_extension([], tips=many))[3]) == MAX_TIPS
    for bad in (
        {"v": 1, "obs": [], "tips": [["ltc", 7], ["btc", 5]]},  # unsorted
        {"v": 1, "obs": [], "tips": [["btc", 5], ["btc", 6]]},  # twice
        {"v": 1, "obs": [], "tips": []},  # empty: left out instead
        {"v": 1, "obs": [], "tips": [["BTC!", 5]]},
        {"v": 1, "obs": [], "tips": [["btc", -1]]},
        {"v": 1, "obs": [], "tips": [["btc", 2**63]]},
        {"v": 1, "obs": [], "tips": [[f"c{i:02d}", i] for i in range(MAX_TIPS + 1)]},
    ):
        with pytest.raises(BadMessage):
            decode_extension_every(encode(bad))


def test_the_conversion_arithmetic():
    p = Ledger().app.params
    pay = make_order([Party.make(1), Party.make(2)]).legs[0]  # btc
    pay = dataclasses.replace(pay, expiry=BlockHeight(1_000 + 5 + 100))
    own = dataclasses.replace(pay, chain="ltc", expiry=BlockHeight(50_000 + 11 + 100))
    tips = {"btc": 1_000, "ltc": 50_000}
    # strict: btc (100 - 1) blocks x 600 x 60 % = 35,640 (the tip may be a block further on);
    # ltc 100 x 150 x 140 % = 21,000 (the attested tip is a lower bound)
    assert clocks.expiry_gap(pay, own, 0, tips, p, strict=True) == 35_640 - 21_000
    # lenient: btc 100 x 600 x 140 % = 84,000; ltc (100 - 1) x 150 x 60 % = 8,910
    assert clocks.expiry_gap(pay, own, 0, tips, p, strict=False) == 84_000 - 8_910
    assert clocks.margin(pay, own, p) == 60 + 7_200
    assert clocks.expiry_gap(pay, own, 0, {"btc": 1_000}, p, strict=True) is None


def test_a_block_with_clocks_and_a_lock_re_executes_to_the_same_app_hash():
    # FinalizeBlock run again on the same block (a CometBFT restart) and a fresh replica
    # replaying the blocks reach the same app hash: the clocks, the lock's clock snapshot and
    # the commit check are functions of the committed state and the block.
    from kofo.clearance.app import Block

    def replica():
        ledger = Ledger()
        ledger.chains.tips.update(btc=BTC_SAFE, ltc=LTC_SAFE)
        return ledger

    first = replica()
    m1, alice = Party.make(1), Party.make(2)
    blocks = [Block(1, first.time, (m1.register_tx(), alice.register_tx()))]
    first.app.apply_block(blocks[0])
    order = make_order([alice, m1], t0=first.time)
    first.chains.see(order, 0, LegOutcome.LOCKED, height=BTC_SAFE)
    for height, txs in ((2, (commit_tx(order, [alice, m1], alice),)), (3, ()), (4, ())):
        att = first.app.solo_attestation(height)
        blk = Block(height, first.time + height, (att, *txs))
        once = first.app.finalize_block(blk)
        again = first.app.finalize_block(blk)
        assert once.app_hash == again.app_hash
        assert [r.code for r in once.results] == [0] * len(blk.txs)
        first.app.commit()
        blocks.append(blk)
    leg = first.app.order(order.order_id)["legs"][0]
    assert leg["outcome"] == "locked" and leg["clocks"] == {"btc": BTC_SAFE}
    fresh = replica()
    for blk in blocks:
        fresh.app.apply_block(blk)
    assert fresh.app.app_hash == first.app.app_hash
    # (attested since block 2, refreshed by block 4)
    assert fresh.app.chain_clock("ltc") == {
        "height": LTC_SAFE,
        "since": first.time + 2,
        "time": first.time + 4,
    }
