"""The adapter's contract-event index: answers from memory, follows reorgs of any depth."""

from __future__ import annotations

import hashlib
import os
from dataclasses import replace
from typing import Any

import pytest
from web3 import EthereumTesterProvider, Web3
from web3.middleware import Web3Middleware

from kofo.errors import AuditFailed, ChainError
from kofo.settlement.chain import HtlcState, HtlcTerms, UnixTime
from kofo.settlement.chains.ethereum import event_index
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter, embedded_web3
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.devnet import indexed_tester
from kofo.settlement.chains.ethereum.keys import account_from_seed

ETHER = 10**18


class _World:
    def __init__(self) -> None:
        self.w3 = embedded_web3()
        self.tester: Any = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
        self.alice, self.bob = (account_from_seed(os.urandom(32)) for _ in range(2))
        for acct in (self.alice, self.bob):
            self.w3.eth.wait_for_transaction_receipt(
                self.w3.eth.send_transaction(
                    {"from": self.w3.eth.accounts[0], "to": acct.address, "value": ETHER}
                )
            )
        htlc = deploy(self.w3, "HTLC", self.alice)
        self.a = EthereumAdapter(self.w3, self.alice, htlc)
        self.b = EthereumAdapter(self.w3, self.bob, htlc)

    def terms(self, preimage: bytes, amount: int = 1000) -> HtlcTerms:
        return HtlcTerms(
            "eth",
            hashlib.sha256(preimage).digest(),
            amount,
            self.alice.address,
            self.bob.address,
            UnixTime(self.a.expiry_now().value + 3600),
        )


def test_a_reorged_redeem_turns_back_into_a_live_lock_and_the_preimage_is_gone():
    w = _World()
    secret = os.urandom(32)
    ref = w.a.lock(w.terms(secret))
    snapshot = w.tester.take_snapshot()
    w.b.broadcast(w.b.prepare_redeem(ref, secret))
    seen = w.a.status(ref)
    assert seen.state is HtlcState.REDEEMED and seen.preimage == secret
    assert seen.spend_confirmations == 1
    w.tester.revert_to_snapshot(snapshot)
    w.tester.mine_blocks(2)  # the other branch grows past the redeem's height
    again = w.a.status(ref)
    assert again.state is HtlcState.LOCKED and again.preimage is None
    assert again.confirmations == 3  # the lock's block and the two mined on top of it
    assert w.b.find_htlc(ref.terms) == ref


def test_a_reorg_deeper_than_every_remembered_tip_rebuilds_the_index():
    w = _World()
    secret = os.urandom(32)
    snapshot = w.tester.take_snapshot()
    ref = w.a.lock(w.terms(secret))
    for _ in range(event_index.REMEMBERED_TIPS + 5):  # more indexed tips than it remembers
        w.tester.mine_blocks(1)
        assert w.a.status(ref).state is HtlcState.LOCKED
    w.tester.revert_to_snapshot(snapshot)
    w.tester.mine_blocks(event_index.REMEMBERED_TIPS + 10)
    assert w.a.status(ref).state is HtlcState.ABSENT
    assert w.b.find_htlc(ref.terms) is None


def test_a_pass_over_many_swaps_costs_one_head_query_and_no_log_query(monkeypatch):
    w = _World()
    refs = [w.a.lock(w.terms(os.urandom(32), 1000 + i)) for i in range(20)]
    w.a.status(refs[0])  # index everything mined so far
    reads: list[tuple[int, int]] = []
    heads: list[str] = []
    real_read = event_index.HtlcEventIndex._read
    real_get_block = w.w3.eth.get_block

    def counting_read(self: event_index.HtlcEventIndex, first: int, last: int) -> Any:
        reads.append((first, last))
        return real_read(self, first, last)

    def counting_get_block(ident: Any, *args: Any, **kwargs: Any) -> Any:
        heads.append(str(ident))
        return real_get_block(ident, *args, **kwargs)

    monkeypatch.setattr(event_index.HtlcEventIndex, "_read", counting_read)
    monkeypatch.setattr(w.w3.eth, "get_block", counting_get_block)
    with w.a.observe():
        states = [w.a.status(r).state for r in refs]
        found = [w.a.find_htlc(r.terms) for r in refs]
        now = w.a.expiry_now()
    assert states == [HtlcState.LOCKED] * 20
    assert found == refs
    assert now.value > 0
    assert heads == ["latest"] and reads == []


def test_find_htlc_asks_the_chain_only_when_the_index_may_not_cover_the_lock(monkeypatch):
    w = _World()
    terms = w.terms(os.urandom(32))
    tip = w.a.tip().height
    asked: list[bytes] = []
    real_logs = EthereumAdapter._swap_logs

    def counting_logs(self: EthereumAdapter, sid: bytes, lo: int, hi: int) -> list:
        asked.append(sid)
        return real_logs(self, sid, lo, hi)

    monkeypatch.setattr(EthereumAdapter, "_swap_logs", counting_logs)
    # The payment hash is new at ``tip``: the index (which starts below it) has every block a
    # lock could be in, so an absent lock is answered without a contract call.
    assert w.b.find_htlc(terms, not_before=tip) is None
    assert asked == []
    # Without that bound the lock could predate the index: the chain's logs are searched.
    assert w.b.find_htlc(terms) is None
    assert asked and set(asked) == {asked[0]}


def test_a_live_lock_older_than_the_index_is_still_found_with_spent_since():
    w = _World()
    ref = w.a.lock(w.terms(os.urandom(32)))
    w.tester.mine_blocks(event_index.START_BACK_BLOCKS + 10)
    late = EthereumAdapter(w.w3, w.bob, w.a.htlc.address)  # its index starts above the lock
    tip = late.tip().height
    lock_block = w.w3.eth.get_transaction_receipt(ref.lock_txid)["blockNumber"]  # type: ignore[arg-type]
    assert late._index.start is not None and late._index.start > lock_block
    # spent_since bounds only the search for spent locks: a live one is always found.
    assert late.find_htlc(ref.terms, spent_since=tip) == ref


class _TwoViewProvider(EthereumTesterProvider):
    """The real embedded chain behind a provider whose backends disagree: it records what one
    branch answered to an ``eth_getLogs`` and, once, answers the same query with it after the
    chain has moved to another branch (a load-balanced RPC whose backend is on another fork,
    or a reorg that flips back and forth between the head read and the log query)."""

    def __init__(self) -> None:
        super().__init__(indexed_tester())
        self.recording = False
        self.recorded: dict[tuple[int, int], Any] = {}
        self.replayed = 0

    @staticmethod
    def _range(params: Any) -> tuple[int, int] | None:
        query = params[0] if params else {}
        lo = query.get("from_block", query.get("fromBlock"))
        hi = query.get("to_block", query.get("toBlock"))
        if isinstance(lo, str):
            lo, hi = int(lo, 16), int(str(hi), 16)
        return None if lo is None or hi is None else (int(lo), int(hi))

    def make_request(self, method: Any, params: Any) -> Any:
        key = self._range(params) if method == "eth_getLogs" else None
        if key is not None and not self.recording and key in self.recorded:
            self.replayed += 1
            return self.recorded.pop(key)  # answered once from the other branch
        response = super().make_request(method, params)
        if key is not None and self.recording:
            self.recorded[key] = response
        return response


class _TwoViewWorld(_World):
    def __init__(self) -> None:
        self.provider = _TwoViewProvider()
        self.w3 = Web3(self.provider)
        self.tester = self.provider.ethereum_tester
        self.alice, self.bob = (account_from_seed(os.urandom(32)) for _ in range(2))
        for acct in (self.alice, self.bob):
            self.w3.eth.wait_for_transaction_receipt(
                self.w3.eth.send_transaction(
                    {"from": self.w3.eth.accounts[0], "to": acct.address, "value": ETHER}
                )
            )
        htlc = deploy(self.w3, "HTLC", self.alice)
        self.a = EthereumAdapter(self.w3, self.alice, htlc)
        self.b = EthereumAdapter(self.w3, self.bob, htlc)

    def record_logs(self, adapter: EthereumAdapter, first: int, last: int) -> None:
        """What a backend on the current branch answers to the index's query of the range."""
        self.provider.recording = True
        try:
            adapter._index._read(first, last)
        finally:
            self.provider.recording = False


def test_a_lock_on_a_branch_the_node_left_is_never_indexed_from_a_stale_log_answer():
    w = _TwoViewWorld()
    fork = w.b.tip().height  # bob's index is at the fork point
    snapshot = w.tester.take_snapshot()
    terms = w.terms(os.urandom(32))
    ref = w.a.lock(terms)  # only on the branch the chain is about to leave
    w.tester.mine_blocks(2)
    w.record_logs(w.b, fork + 1, fork + 3)
    w.tester.revert_to_snapshot(snapshot)
    w.tester.mine_blocks(3)  # the best branch: no lock
    assert w.b.tip().height == fork + 3
    assert w.provider.replayed == 1  # the other branch's answer was given
    assert w.b.find_htlc(terms) is None
    assert w.b.status(ref).state is HtlcState.ABSENT
    with pytest.raises(AuditFailed) as err:
        w.b.audit(ref, terms, 1)
    assert err.value.code == "audit_state"


def test_a_redeem_is_not_lost_to_a_log_answer_from_another_branch():
    w = _TwoViewWorld()
    secret = os.urandom(32)
    ref = w.a.lock(w.terms(secret))
    assert w.a.status(ref).state is HtlcState.LOCKED  # alice's index is at the fork point
    fork = w.a.tip().height
    snapshot = w.tester.take_snapshot()
    w.tester.mine_blocks(3)  # a branch without the redeem
    w.record_logs(w.a, fork + 1, fork + 3)
    w.tester.revert_to_snapshot(snapshot)
    w.b.broadcast(w.b.prepare_redeem(ref, secret))  # the best branch: bob redeems
    w.tester.mine_blocks(2)
    seen = w.a.status(ref)
    assert w.provider.replayed == 1
    assert seen.state is HtlcState.REDEEMED and seen.preimage == secret
    assert seen.spend_confirmations == 3


def _lagging_log_backend(w3: Web3) -> list[int]:
    """Make ``w3``'s node answer log queries by number with nothing, as many times as the
    returned counter says (a backend that has not seen the latest blocks' logs yet)."""
    drops = [0]

    class _Lagging(Web3Middleware):
        def wrap_make_request(self, make_request: Any) -> Any:
            def middleware(method: Any, params: Any) -> Any:
                response = make_request(method, params)
                if method == "eth_getLogs" and "blockHash" not in params[0] and drops[0]:
                    drops[0] -= 1
                    return {**response, "result": []}
                return response

            return middleware

    w3.middleware_onion.add(_Lagging)
    return drops


def test_a_redeem_left_out_of_a_log_answer_is_read_by_its_block_hash(eth_chain):
    # On geth the block is re-read with eth_getLogs by blockHash, on the embedded chain (which
    # lacks it) from the block's receipts.
    alice, bob = eth_chain.new_account(ETHER), eth_chain.new_account(ETHER)
    htlc = deploy(eth_chain.w3, "HTLC", alice)
    a, b = EthereumAdapter(eth_chain.w3, alice, htlc), EthereumAdapter(eth_chain.w3, bob, htlc)
    secret = os.urandom(32)
    terms = HtlcTerms(
        "eth",
        hashlib.sha256(secret).digest(),
        1000,
        alice.address,
        bob.address,
        UnixTime(a.expiry_now().value + 3600),
    )
    ref = a.lock(terms)
    assert a.status(ref).state is HtlcState.LOCKED
    redeem = b.prepare_redeem(ref, secret)
    b.broadcast(redeem)
    b.wait(redeem.txid)
    drops = _lagging_log_backend(eth_chain.w3)
    drops[0] = 1
    seen = a.status(ref)
    assert drops == [0]  # the lagging answer was given
    assert seen.state is HtlcState.REDEEMED and seen.preimage == secret
    assert a._index._by_hash is (eth_chain.backend == "geth")  # the path each node allows


def test_a_settled_lock_older_than_the_index_is_never_read_as_absent_for_a_missed_log():
    w = _World()
    secret = os.urandom(32)
    ref = w.a.lock(w.terms(secret))
    w.b.broadcast(w.b.prepare_redeem(ref, secret))
    w.tester.mine_blocks(event_index.START_BACK_BLOCKS + 10)
    late = EthereumAdapter(w.w3, w.alice, w.a.htlc.address)  # its index starts above both
    late.tip()
    drops = _lagging_log_backend(w.w3)
    drops[0] = 1000  # every window of the search for the redeem is answered with nothing
    with pytest.raises(ChainError) as err:
        late.status(ref)  # before: ABSENT, and a sender at expiry gave up on the swap
    assert err.value.code == "chain_inconsistent" and drops[0] < 1000
    drops[0] = 0
    seen = late.status(ref)
    assert seen.state is HtlcState.REDEEMED and seen.preimage == secret


def test_a_settled_lock_whose_receipt_is_not_answered_is_never_read_as_absent():
    """Review (a node without the lock's receipt: beyond its transaction index, or a lagging
    backend): a lock older than the index, redeemed, read as ABSENT because its receipt was
    null, so its sender gave the swap up without the preimage. The payout is now found from
    the index, or after the node places the lock transaction in a best-chain block."""
    w = _World()
    secret = os.urandom(32)
    ref = w.a.lock(w.terms(secret))
    w.b.broadcast(w.b.prepare_redeem(ref, secret))
    w.tester.mine_blocks(event_index.START_BACK_BLOCKS + 10)
    late = EthereumAdapter(w.w3, w.alice, w.a.htlc.address)  # its index starts above both
    late.tip()

    class _NoReceipt(Web3Middleware):
        def wrap_make_request(self, make_request: Any) -> Any:
            def middleware(method: Any, params: Any) -> Any:
                response = make_request(method, params)
                if method == "eth_getTransactionReceipt" and params[0] == ref.lock_txid:
                    return {**response, "result": None}
                return response

            return middleware

    w.w3.middleware_onion.add(_NoReceipt)
    seen = late.status(ref)  # before: ABSENT
    assert seen.state is HtlcState.REDEEMED and seen.preimage == secret
    assert seen.confirmations == event_index.START_BACK_BLOCKS + 12
    never = replace(ref, lock_txid="0x" + "11" * 32)  # a lock that never was: still ABSENT
    assert late.status(never).state is HtlcState.ABSENT


def test_a_batch_redeem_and_refund_are_each_indexed_per_swap_with_their_preimages():
    """Issue 20: one redeem_many (refund_many) emits one log per swap; the index files each
    under its swap id, with its own preimage, and an adapter without that index (a log search)
    reads the same. A fee replacement of a batch re-signs the same batch."""
    w = _World()
    secrets = [os.urandom(32) for _ in range(3)]
    refs = [w.a.lock(w.terms(s, 1000 + i)) for i, s in enumerate(secrets)]
    assert len({w.a.slot_of(r) for r in refs}) == 3  # three slots of Alice's, all taken
    batch = w.b.prepare_redeem_many(list(zip(refs[:2], secrets[:2], strict=True)))
    replacement = w.b.prepare_replacement(refs[1], batch, secrets[1])  # the same batch, fees up
    w.b.broadcast(replacement)
    w.b.wait(replacement.txid)
    for ref, secret in zip(refs[:2], secrets[:2], strict=True):
        status = w.a.status(ref)
        assert status.state is HtlcState.REDEEMED and status.preimage == secret
        assert status.spend_txid == replacement.txid
    assert w.a.status(refs[2]).state is HtlcState.LOCKED
    w.tester.time_travel(w.a.expiry_now().value + 3601)
    w.tester.mine_blocks(1)
    refund = w.a.prepare_refund_many([refs[2]])
    w.a.broadcast(refund)
    w.a.wait(refund.txid)
    late = EthereumAdapter(w.w3, w.bob, w.a.htlc.address)
    late._index = event_index.HtlcEventIndex(w.w3, w.a.htlc.address, start=10**9)  # sees none
    states = [late.status(r).state for r in refs]
    assert states == [HtlcState.REDEEMED, HtlcState.REDEEMED, HtlcState.REFUNDED]
    assert late.status(refs[0]).preimage == secrets[0]
    # Alice's slots are FREE again: her next lock reuses the first.
    assert w.a._choose_slot() == w.a.slot_of(refs[0])


def test_a_replacement_must_be_of_a_batch_holding_the_swap():
    w = _World()
    secrets = [os.urandom(32) for _ in range(2)]
    refs = [w.a.lock(w.terms(s, 1000 + i)) for i, s in enumerate(secrets)]
    batch = w.b.prepare_redeem_many([(refs[0], secrets[0])])
    with pytest.raises(Exception, match="is not the redeem"):
        w.b.prepare_replacement(refs[1], batch, secrets[1])
