"""The Ethereum ChainAdapter against the embedded EVM and a real geth --dev node."""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any

import pytest
import rlp
from eth_account.hdaccount import seed_from_mnemonic
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from hexbytes import HexBytes
from web3 import Web3
from web3.middleware import Web3Middleware

from kofo.errors import AuditFailed, ChainError, InsufficientFunds, InvalidInput, TxRejected
from kofo.settlement.chain import (
    BlockHeight,
    ChainAdapter,
    FeeEstimate,
    HtlcRef,
    HtlcState,
    HtlcTerms,
    SignedTx,
    TxKind,
    UnixTime,
)
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter, embedded_web3
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.keys import account_from_seed
from tests.ethereum.conftest import GethChain

ETHER = 10**18


@pytest.fixture
def env(eth_chain):
    """A deployed HTLC + test token and two funded parties with adapters."""
    return _make_env(eth_chain)


@pytest.fixture
def geth_env(geth):
    """``env`` on the geth --dev node only (for what only a node with a pending pool shows)."""
    return _make_env(GethChain(geth.rpc_url, geth.dev_account))


def _make_env(eth_chain):
    deployer = eth_chain.new_account(ETHER)
    htlc = deploy(eth_chain.w3, "HTLC", deployer)
    token = deploy(eth_chain.w3, "TestToken", deployer, "Test", "TST", 6)
    alice = eth_chain.new_account(5 * ETHER)
    bob = eth_chain.new_account(5 * ETHER)

    class Env:
        pass

    e = Env()
    e.chain = eth_chain
    e.w3 = eth_chain.w3
    e.htlc = htlc
    e.token = token
    e.alice = EthereumAdapter(eth_chain.w3, alice, htlc)
    e.bob = EthereumAdapter(eth_chain.w3, bob, htlc)
    return e


def _terms(e, amount=ETHER // 10, lifetime=3600, token=None, preimage=None):
    preimage = preimage or os.urandom(32)
    expiry = UnixTime(e.alice.expiry_now().value + lifetime)
    terms = HtlcTerms(
        "eth",
        hashlib.sha256(preimage).digest(),
        amount,
        e.alice.address(),
        e.bob.address(),
        expiry,
        token=token,
    )
    return terms, preimage


def _mint(e, to, amount):
    tok = e.w3.eth.contract(
        address=e.token,
        abi=[
            {
                "name": "mint",
                "type": "function",
                "stateMutability": "nonpayable",
                "inputs": [
                    {"name": "to", "type": "address"},
                    {"name": "amount", "type": "uint256"},
                ],
                "outputs": [],
            }
        ],
    )
    e.chain.send(tok.functions.mint(to, amount), e.chain.new_account(ETHER // 10))


def _gas_paid(w3, txid):
    r = w3.eth.get_transaction_receipt(txid)
    return r["gasUsed"] * r["effectiveGasPrice"]


def test_adapter_satisfies_the_chain_adapter_protocol(env):
    assert isinstance(env.alice, ChainAdapter)


def test_eth_lock_then_redeem_pays_recipient_and_reveals_preimage(env):
    terms, preimage = _terms(env)
    bob_before = env.bob.balance()
    ref = env.alice.lock(terms)
    assert env.bob.audit(ref, terms, min_confirmations=1).state is HtlcState.LOCKED
    redeem = env.bob.prepare_redeem(ref, preimage)
    assert redeem.kind is TxKind.REDEEM
    env.bob.broadcast(redeem)
    env.bob.wait(redeem.txid)
    assert env.bob.balance() == bob_before + terms.amount - _gas_paid(env.w3, redeem.txid)
    status = env.alice.status(ref)
    assert status.state is HtlcState.REDEEMED
    assert status.preimage == preimage
    assert status.spend_txid == redeem.txid
    assert status.spend_confirmations >= 1


def test_eth_refund_before_expiry_is_refused_then_succeeds_after(env):
    terms, _ = _terms(env, lifetime=4)
    ref = env.alice.lock(terms)
    with pytest.raises(TxRejected) as err:
        env.alice.prepare_refund(ref)
    assert err.value.code == "tx_rejected"
    env.chain.advance_time(5)
    before = env.alice.balance()
    tx = env.alice.prepare_refund(ref)
    env.alice.broadcast(tx)
    env.alice.wait(tx.txid)
    assert env.alice.balance() == before + terms.amount - _gas_paid(env.w3, tx.txid)
    assert env.bob.status(ref).state is HtlcState.REFUNDED


def test_erc20_lock_approves_exactly_and_redeem_moves_tokens(env):
    _mint(env, env.alice.address(), 1_000_000)
    terms, preimage = _terms(env, amount=400_000, token=env.token)
    txs = env.alice.prepare_lock(terms)
    assert [t.kind for t in txs] == [TxKind.APPROVE, TxKind.LOCK]
    for tx in txs:
        env.alice.broadcast(tx)
        env.alice.wait(tx.txid)
    ref = env.alice.htlc_ref(terms, txs[-1])
    assert env.alice.balance(env.token) == 600_000
    assert env.alice.balance(env.token, owner=env.htlc) == 400_000
    env.bob.audit(ref, terms, 1)
    tx = env.bob.prepare_redeem(ref, preimage)
    env.bob.broadcast(tx)
    env.bob.wait(tx.txid)
    assert env.bob.balance(env.token) == 400_000
    assert env.alice.balance(env.token, owner=env.htlc) == 0


@pytest.mark.parametrize(
    ("field", "change"),
    [
        ("amount", lambda t: {"amount": t.amount + 1}),
        ("payment_hash", lambda t: {"payment_hash": hashlib.sha256(b"other").digest()}),
        ("expiry", lambda t: {"expiry": UnixTime(t.expiry.value + 1)}),
        ("recipient", lambda t: {"recipient": "0x" + "11" * 20}),
    ],
)
def test_audit_names_the_field_that_differs(env, field, change):
    terms, _ = _terms(env)
    ref = env.alice.lock(terms)
    expected = HtlcTerms(**{**{f: getattr(terms, f) for f in terms.__slots__}, **change(terms)})
    with pytest.raises(AuditFailed) as err:
        env.bob.audit(ref, expected, min_confirmations=1)
    assert err.value.code == f"audit_{field}"


def test_audit_requires_confirmations_and_a_live_lock(env):
    terms, preimage = _terms(env)
    ref = env.alice.lock(terms)
    with pytest.raises(AuditFailed) as err:
        env.bob.audit(ref, terms, min_confirmations=1000)
    assert err.value.code == "audit_confirmations"
    tx = env.bob.prepare_redeem(ref, preimage)
    env.bob.broadcast(tx)
    env.bob.wait(tx.txid)
    with pytest.raises(AuditFailed) as err:
        env.bob.audit(ref, terms, min_confirmations=1)
    assert err.value.code == "audit_state"


def test_find_htlc_locates_the_counterpartys_lock_by_terms(env):
    terms, _ = _terms(env)
    assert env.bob.find_htlc(terms) is None
    ref = env.alice.lock(terms)
    found = env.bob.find_htlc(terms)
    assert found is not None
    assert (found.locator, found.lock_txid) == (ref.locator, ref.lock_txid)


def test_broadcast_is_idempotent(env):
    terms, _ = _terms(env)
    (tx,) = env.alice.prepare_lock(terms)
    assert env.alice.broadcast(tx) == tx.txid
    env.alice.wait(tx.txid)
    assert env.alice.broadcast(tx) == tx.txid
    assert env.alice.tx_confirmations(tx.txid) >= 1


def test_bad_terms_are_refused_with_a_clear_error(env):
    terms, _ = _terms(env)
    with pytest.raises(InvalidInput, match="unix time"):
        env.alice.prepare_lock(
            HtlcTerms("eth", terms.payment_hash, 1, terms.sender, terms.recipient, BlockHeight(9))
        )
    with pytest.raises(InvalidInput, match="recipient"):
        env.alice.prepare_lock(
            HtlcTerms("eth", terms.payment_hash, 1, terms.sender, "bob", terms.expiry)
        )
    with pytest.raises(InvalidInput, match="not in the future"):
        env.alice.prepare_lock(
            HtlcTerms("eth", terms.payment_hash, 1, terms.sender, terms.recipient, UnixTime(1))
        )
    with pytest.raises(InvalidInput, match="preimage must be exactly 32 bytes, got 33"):
        env.bob.prepare_redeem(env.alice.htlc_ref(terms, _fake_tx()), b"\x00" * 33)


def test_the_zero_address_is_refused_as_a_token(env):
    # On chain an ETH swap is keyed by token = address(0): terms naming that "token" would
    # share the ETH lock's id and be audited against it while claiming another asset.
    terms, _ = _terms(env)
    ref = env.alice.lock(terms)
    zero = HtlcTerms(
        **{**{f: getattr(terms, f) for f in terms.__slots__}, "token": "0x" + "00" * 20}
    )
    for call in (
        lambda: env.bob.find_htlc(zero),
        lambda: env.bob.audit(ref, zero, min_confirmations=0),
        lambda: env.alice.prepare_lock(zero),
    ):
        with pytest.raises(InvalidInput, match="zero address") as err:
            call()
        assert err.value.code == "bad_token"


def test_confirmations_come_from_the_transaction_that_emitted_the_lock(env):
    # An old transaction (the funding of a party, deep in the chain) named as the lock's must
    # not lend the fresh lock its depth.
    old = env.w3.eth.get_block(1, full_transactions=False)["transactions"][0]
    for _ in range(5):
        env.chain.advance_time(1)
    terms, _ = _terms(env)
    ref = env.alice.lock(terms)
    assert env.bob.status(ref).confirmations == 1
    borrowed = HtlcRef(terms, ref.locator, "0x" + bytes(old).hex())
    assert env.w3.eth.get_transaction_receipt(borrowed.lock_txid)["blockNumber"] == 1
    bob = EthereumAdapter(env.w3, env.bob.account, env.htlc)  # a fresh index: the chain path
    for adapter in (env.bob, bob):
        status = adapter.status(borrowed)
        assert status.state is HtlcState.LOCKED and status.confirmations == 0
        with pytest.raises(AuditFailed) as err:
            adapter.audit(borrowed, terms, min_confirmations=2)
        assert err.value.code == "audit_lock_txid"
        assert adapter.audit(ref, terms, min_confirmations=1).confirmations == 1


def _fake_tx():
    from kofo.settlement.chain import SignedTx

    return SignedTx("eth", TxKind.LOCK, "0x" + "00" * 32, b"")


def test_lock_more_than_the_wallet_holds_is_insufficient_funds(env):
    terms, _ = _terms(env, amount=10**30)
    with pytest.raises(InsufficientFunds, match="wallet has"):
        env.alice.prepare_lock(terms)
    terms, _ = _terms(env, amount=5, token=env.token)
    with pytest.raises(InsufficientFunds, match="token units"):
        env.alice.prepare_lock(terms)


def test_concurrent_locks_get_distinct_nonces_and_all_confirm(env):
    results: list = []
    errors: list = []

    def worker():
        try:
            terms, _ = _terms(env, amount=1000)
            results.extend(env.alice.prepare_lock(terms))
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    nonces = sorted(_nonce(tx) for tx in results)
    assert nonces == list(range(nonces[0], nonces[0] + 8))
    for tx in sorted(results, key=_nonce):
        env.alice.broadcast(tx)
    for tx in results:
        env.alice.wait(tx.txid)


def _nonce(tx):
    # An EIP-1559 transaction is 0x02 || rlp([chain_id, nonce, ...]).
    assert tx.raw[0] == 2
    return int.from_bytes(rlp.decode(tx.raw[1:])[1], "big")


def test_nonces_survive_a_restart_without_reuse(tmp_path):
    w3 = embedded_web3()
    acct = account_from_seed(os.urandom(32))
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": acct.address, "value": ETHER})
    )
    htlc = deploy(w3, "HTLC", acct)
    db = tmp_path / "nonces.sqlite"
    first = EthereumAdapter(w3, acct, htlc, nonce_db=db)
    a = first.nonces.allocate()
    b = first.nonces.allocate()  # signed, never broadcast: must not be reused after a crash
    second = EthereumAdapter(w3, acct, htlc, nonce_db=db)
    assert second.nonces.allocate() == b + 1 == a + 2


def test_a_reorged_lock_loses_its_confirmations():
    w3 = embedded_web3()
    tester = w3.provider.ethereum_tester
    alice, bob = (account_from_seed(os.urandom(32)) for _ in range(2))
    for acct in (alice, bob):
        w3.eth.wait_for_transaction_receipt(
            w3.eth.send_transaction(
                {"from": w3.eth.accounts[0], "to": acct.address, "value": ETHER}
            )
        )
    htlc = deploy(w3, "HTLC", alice)
    adapter = EthereumAdapter(w3, alice, htlc)
    snapshot = tester.take_snapshot()
    preimage = os.urandom(32)
    terms = HtlcTerms(
        "eth",
        hashlib.sha256(preimage).digest(),
        1000,
        alice.address,
        bob.address,
        UnixTime(adapter.expiry_now().value + 3600),
    )
    ref = adapter.lock(terms)
    assert adapter.status(ref).confirmations == 1
    tester.revert_to_snapshot(snapshot)
    tester.mine_blocks(3)
    assert adapter.tx_confirmations(ref.lock_txid) == 0
    assert adapter.status(ref).state is HtlcState.ABSENT


def test_keys_follow_the_standard_bip44_path():
    # The well-known development mnemonic: every Ethereum wallet derives this first address.
    seed = seed_from_mnemonic("test test test test test test test test test test test junk", "")
    assert account_from_seed(seed).address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert account_from_seed(seed, 1).address == "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"


def _fees(tx) -> tuple[int, int, int]:
    fields = TypedTransaction.from_bytes(HexBytes(tx.raw)).as_dict()
    return fields["nonce"], fields["maxFeePerGas"], fields["maxPriorityFeePerGas"]


def test_a_redeem_replacement_keeps_the_nonce_and_call_and_raises_both_fees(env):
    terms, preimage = _terms(env)
    ref = env.alice.lock(terms)
    first = env.bob.prepare_redeem(ref, preimage)
    nonce, cap, tip = _fees(first)
    bumped = env.bob.prepare_replacement(ref, first, preimage)
    n2, cap2, tip2 = _fees(bumped)
    assert n2 == nonce and bumped.txid != first.txid and bumped.kind is TxKind.REDEEM
    assert cap2 >= cap * 5 // 4 and tip2 >= tip * 5 // 4 and tip2 > tip
    with pytest.raises(InvalidInput, match="not the redeem of"):
        env.bob.prepare_replacement(ref, first, os.urandom(32))  # another call's data
    env.bob.broadcast(bumped)
    env.bob.wait(bumped.txid)
    status = env.alice.status(ref)
    assert status.state is HtlcState.REDEEMED and status.spend_txid == bumped.txid


def test_the_recipients_own_redeem_leaves_the_recipient_out_and_either_form_is_replaced(env):
    # The contract pays msg.sender when the recipient is left out: 4 words after the selector
    # instead of 5 (368 gas of calldata). A redeem signed with the recipient named (a watchtower's
    # form, or one signed before this change) is still recognised as the same call.
    terms, preimage = _terms(env)
    ref = env.alice.lock(terms)
    own = env.bob.prepare_redeem(ref, preimage)
    data = bytes(TypedTransaction.from_bytes(HexBytes(own.raw)).as_dict()["data"])
    assert len(data) == 4 + 4 * 32
    name, args = env.bob._spend_call(ref, preimage)
    named = env.bob._sign(TxKind.REDEEM, env.bob.htlc.functions[name](*args), None)
    assert len(bytes(TypedTransaction.from_bytes(HexBytes(named.raw)).as_dict()["data"])) == 164
    assert _fees(env.bob.prepare_replacement(ref, named, preimage))[0] == _fees(named)[0]
    bumped = env.bob.prepare_replacement(ref, own, preimage)
    assert _fees(bumped)[0] == _fees(own)[0]
    bob_before = env.bob.balance()
    env.bob.broadcast(bumped)
    env.bob.wait(bumped.txid)
    assert env.bob.balance() == bob_before + terms.amount - _gas_paid(env.w3, bumped.txid)
    assert env.alice.status(ref).state is HtlcState.REDEEMED


@pytest.mark.realnode
def test_a_redeem_priced_under_the_base_fee_waits_until_its_replacement_is_mined(geth_env):
    """A node keeps a transaction whose fee cap is under the base fee pending; the replacement
    takes its nonce and is mined. eth-tester refuses such a transaction outright (it has no
    pending pool), so this runs on geth only."""
    env = geth_env
    terms, preimage = _terms(env)
    ref = env.alice.lock(terms)
    fields = TypedTransaction.from_bytes(HexBytes(env.bob.prepare_redeem(ref, preimage).raw))
    unsigned = {k: v for k, v in fields.as_dict().items() if k not in ("v", "r", "s")}
    # 1 wei: under any base fee (EIP-1559 never lets it fall below 7 wei once it is that low).
    signed = env.bob.account.sign_transaction(
        {**unsigned, "maxFeePerGas": 1, "maxPriorityFeePerGas": 1}
    )
    low = SignedTx("eth", TxKind.REDEEM, Web3.to_hex(signed.hash), bytes(signed.raw_transaction))
    env.bob.broadcast(low)
    env.chain.advance_time(1)  # blocks come; the redeem stays pending
    assert env.alice.status(ref).state is HtlcState.LOCKED
    bumped = env.bob.prepare_replacement(ref, low, preimage)
    env.bob.broadcast(bumped)
    env.bob.wait(bumped.txid)
    status = env.alice.status(ref)
    assert status.state is HtlcState.REDEEMED and status.spend_txid == bumped.txid


def _fee_answers(w3: Web3, priority: Any, base: Any = None) -> None:
    """Make ``w3``'s node answer ``eth_maxPriorityFeePerGas`` with ``priority`` (and, unless
    None, every block's ``baseFeePerGas`` with ``base``): a lying or broken RPC node."""

    class _LyingFees(Web3Middleware):
        def wrap_make_request(self, make_request: Any) -> Any:
            def middleware(method: Any, params: Any) -> Any:
                response = make_request(method, params)
                if method == "eth_maxPriorityFeePerGas":
                    return {**response, "result": priority}
                if (
                    base is not None
                    and method.startswith("eth_getBlockBy")
                    and response.get("result")
                ):
                    return {**response, "result": {**response["result"], "baseFeePerGas": base}}
                return response

            return middleware

    w3.middleware_onion.add(_LyingFees)


def test_a_node_answering_a_huge_fee_cannot_make_a_redeem_pay_it_to_miners(env):
    """Review attack (lying RPC node): the fee estimate was taken as the node gave it, so a node
    answering eth_maxPriorityFeePerGas with 20,000 gwei had a 0.1 ETH redeem carry ~1.1 ETH of
    tip, all of it the miner's, and every replacement raised it by a quarter again. The estimate
    is now lowered to the adapter's ceiling (max_fee_per_gas) and no transaction is signed above
    it; a replacement that cannot rise within it is refused (the engine resends the newest)."""
    terms, preimage = _terms(env)
    ref = env.alice.lock(terms)
    _fee_answers(env.w3, hex(20_000 * 10**9))
    redeem = env.bob.prepare_redeem(ref, preimage)
    _, cap, tip = _fees(redeem)
    ceiling = 1_000 * 10**9  # the default ceiling: 1,000 gwei
    assert cap <= ceiling and tip <= ceiling  # before: 20,000 gwei of tip
    assert env.bob.max_fee_per_gas == ceiling
    estimate = env.bob.estimate_fee()
    assert estimate.rate <= ceiling and estimate.priority <= estimate.rate
    with pytest.raises(ChainError, match="ceiling"):
        env.bob.prepare_replacement(ref, redeem, preimage)  # already at the ceiling
    with pytest.raises(InvalidInput, match="ceiling"):
        env.bob.prepare_redeem(ref, preimage, FeeEstimate(rate=ceiling + 1, priority=1))
    env.bob.broadcast(redeem)
    env.bob.wait(redeem.txid)
    assert env.alice.status(ref).state is HtlcState.REDEEMED


@pytest.mark.parametrize(
    "priority, base",
    [("NaN", None), ("0xzz", None), ({"fee": 1}, None), (hex(10**9), "NaN"), (-1, None)],
)
def test_a_fee_answer_that_is_no_number_leaves_the_adapter_usable(env, priority, base):
    """Review (broken RPC node): a fee answer that is no number escaped estimate_fee as whatever
    web3 raised (TypeError, a formatter's error), which no caller expects from a chain: it is
    now a ChainError for the base fee and the minimum tip for the tip."""
    terms, preimage = _terms(env)
    ref = env.alice.lock(terms)
    _fee_answers(env.w3, priority, base)
    try:
        estimate = env.bob.estimate_fee()
    except ChainError:
        assert base is not None  # no base fee: nothing sensible to sign with
        return
    assert 0 < estimate.priority <= estimate.rate <= env.bob.max_fee_per_gas
    redeem = env.bob.prepare_redeem(ref, preimage, estimate)
    env.bob.broadcast(redeem)
    env.bob.wait(redeem.txid)


def test_an_earlier_transaction_priced_under_the_base_fee_is_repriced_to_fill_its_nonce(env):
    """Review (nonce gap, follow-up): a transaction of this wallet that never reached the chain
    and is priced under the base fee (signed when fees were lower) was sent again as it was and
    refused, so the gap stayed and every later transaction waited behind it. It is now signed
    again with the same call and nonce at the current estimate before the later one goes out."""
    t1, s1 = _terms(env)
    t2, s2 = _terms(env)
    r1, r2 = env.alice.lock(t1), env.alice.lock(t2)
    base = int(env.w3.eth.get_block("latest")["baseFeePerGas"])
    assert base > 1
    cheap = env.bob.prepare_redeem(r1, s1, FeeEstimate(rate=base // 2, priority=1))  # unsent
    later = env.bob.prepare_redeem(r2, s2)
    env.bob.broadcast(later)  # before: refused, nonce gap (the cheap one re-sent and refused)
    env.bob.wait(later.txid)
    assert env.alice.status(r2).state is HtlcState.REDEEMED
    assert env.alice.status(r1).state is HtlcState.REDEEMED  # by the repriced version
    assert env.alice.status(r1).spend_txid != cheap.txid


@pytest.mark.timeout(300)
def test_a_token_lock_prepared_while_another_is_in_flight_never_reverts_for_allowance(env):
    """Issue 16 (allowance race): the adapter skipped the approve when the chain's allowance
    covered the amount, but that allowance could be one already spoken for by an earlier lock
    not yet mined (its approve mined, its lock pending or not sent yet): both locks went out
    and the second reverted, its swap aborted and its gas spent. A token lock now approves
    exactly its amount whenever one of the wallet's transactions is in flight (set, not added,
    right before its own lock in nonce order), and the approve's gas covers a zero allowance:
    the earlier lock empties the slot first, and a new storage slot costs 20,000 on Prague but
    ~98,000 more than a rewrite on geth --dev's fork (the first fix ran out of gas there)."""
    _mint(env, env.alice.address(), 1_000_000)
    t1, _ = _terms(env, amount=400_000, token=env.token)
    t2, _ = _terms(env, amount=300_000, token=env.token)
    approve1, lock1 = env.alice.prepare_lock(t1)
    env.alice.broadcast(approve1)
    env.alice.wait(approve1.txid)  # mined; lock1 not sent yet (dropped, or waiting)
    txs2 = env.alice.prepare_lock(t2)
    assert [t.kind for t in txs2] == [TxKind.APPROVE, TxKind.LOCK]  # before: only a lock
    for tx in (lock1, *txs2):
        env.alice.broadcast(tx)
        env.alice.wait(tx.txid)  # before: the second lock reverted
    assert env.alice.balance(env.token, owner=env.htlc) == 700_000
    for t, tx in ((t1, lock1), (t2, txs2[-1])):
        assert env.alice.status(env.alice.htlc_ref(t, tx)).state is HtlcState.LOCKED
    # Nothing is left approved: each approve was exactly its own lock's amount.
    token = env.w3.eth.contract(address=env.token, abi=_ALLOWANCE_ABI)
    assert token.functions.allowance(env.alice.address(), env.htlc).call() == 0


_ALLOWANCE_ABI = [
    {
        "name": "allowance",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    }
]
