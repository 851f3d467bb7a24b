"""Transaction building without a chain: coin selection, fee bounds, the smallest HTLC.

Every spend built here is also checked by Bitcoin Core's consensus code (py-bitcoinkernel)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from functools import partial

import pytest
from bitcointx.core import CBitcoinTransaction as CTransaction

from kofo.errors import InsufficientFunds, InvalidInput
from kofo.settlement.chain import BlockHeight
from kofo.settlement.chains.bitcoin.kernel import SpentOutput, verify_input
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.script import build_htlc_script, p2wsh_script_pubkey
from kofo.settlement.chains.bitcoin.taproot import build_taproot_htlc, build_taproot_spend
from kofo.settlement.chains.bitcoin.tx import (
    MAX_HTLC_SPEND_VBYTES,
    Utxo,
    build_funding_tx,
    build_htlc_spend,
    dust_limit,
    effective_fee_rate,
    min_htlc_amount,
    p2wpkh_script_pubkey,
    vsize,
)
from tests.bitcoin.helpers import new_key, pub

BTC = chain_params("btc", "regtest")
EXPIRY = BlockHeight(900_000)


def _coin(amount: int, owner_spk: bytes) -> Utxo:
    return Utxo(os.urandom(32).hex(), 0, amount, owner_spk)


def _fee(tx: CTransaction, inputs: int) -> int:
    return inputs - sum(int(o.nValue) for o in tx.vout)


def test_coin_selection_takes_coins_that_pay_without_change():
    """The coins cover the amount and the fee but not a change output as well: the lock is
    built without change (what is left goes to the fee), not refused as "insufficient"."""
    key = new_key()
    spk = p2wpkh_script_pubkey(pub(key))
    target = (p2wsh_script_pubkey(b"\x51"), 100_000)
    rate = 2
    probe = build_funding_tx([_coin(10**8, spk)], lambda _s: key, [target], spk, rate, BTC)
    no_change_fee = rate * (vsize(probe) - 31)  # the probe has a 31-vbyte change output
    coin = _coin(100_000 + no_change_fee + 10, spk)
    tx = build_funding_tx([coin], lambda _s: key, [target], spk, rate, BTC)
    assert len(tx.vout) == 1 and tx.vout[0].nValue == 100_000
    assert _fee(tx, coin.amount) == no_change_fee + 10
    assert _fee(tx, coin.amount) >= rate * vsize(tx)
    with pytest.raises(InsufficientFunds, match="plus fee about"):
        build_funding_tx(
            [_coin(100_000 + no_change_fee - 50, spk)], lambda _s: key, [target], spk, rate, BTC
        )


def test_a_rate_above_the_chains_ceiling_is_refused_by_name():
    assert effective_fee_rate(BTC.max_fee_rate, BTC) == BTC.max_fee_rate
    with pytest.raises(InvalidInput, match="fee rate 10001 sat/vB is above") as err:
        effective_fee_rate(BTC.max_fee_rate + 1, BTC)
    assert err.value.code == "fee_rate_too_high"


def _all_spends(amount: int, rate: int) -> dict[str, tuple[CTransaction, bytes]]:
    """The claim and the refund of a P2WSH and of a Taproot HTLC worth ``amount`` at ``rate``,
    each with the scriptPubKey it spends."""
    out: dict[str, tuple[CTransaction, bytes]] = {}
    for form in ("p2wsh", "p2tr"):
        recipient, refunder = new_key(), new_key()
        preimage = os.urandom(32)
        payment_hash = hashlib.sha256(preimage).digest()
        build: Callable[..., CTransaction]
        if form == "p2wsh":
            script = build_htlc_script(payment_hash, pub(recipient), pub(refunder), EXPIRY)
            build = partial(build_htlc_spend, witness_script=script)
            spk, refund_how = p2wsh_script_pubkey(script), {"refund_expiry": EXPIRY}
        else:
            htlc = build_taproot_htlc(payment_hash, pub(recipient), pub(refunder), EXPIRY)
            build = partial(build_taproot_spend, htlc=htlc)
            spk, refund_how = htlc.script_pubkey, {"refund": True}
        common = {
            "txid": os.urandom(32).hex(),
            "vout": 0,
            "amount": amount,
            "fee_rate": rate,
            "params": BTC,
        }
        claim = build(
            **common,
            key=recipient,
            destination_script_pubkey=p2wpkh_script_pubkey(pub(recipient)),
            preimage=preimage,
        )
        refund = build(
            **common,
            key=refunder,
            destination_script_pubkey=p2wpkh_script_pubkey(pub(refunder)),
            **refund_how,
        )
        out[f"{form} claim"], out[f"{form} refund"] = (claim, spk), (refund, spk)
    return out


def test_the_largest_spend_the_builders_size_is_what_the_smallest_htlc_is_priced_with():
    """At 1 sat/vB the fee is the size the builder charged for: the largest, the Taproot claim
    leaf, is MAX_HTLC_SPEND_VBYTES minus at most one."""
    fees = {name: _fee(tx, 10**6) for name, (tx, _spk) in _all_spends(10**6, 1).items()}
    assert max(fees.values()) <= MAX_HTLC_SPEND_VBYTES
    assert max(fees.values()) >= MAX_HTLC_SPEND_VBYTES - 1
    for tx, spk in _all_spends(10**6, 1).values():
        verify_input(tx.serialize(), 0, [SpentOutput(spk, 10**6)])


@pytest.mark.parametrize("rate", [1, 2, 40, 500])
def test_the_smallest_htlc_can_be_claimed_and_refunded_and_one_sat_less_may_not(rate):
    smallest = min_htlc_amount(rate, BTC)
    for name, (tx, spk) in _all_spends(smallest, rate).items():
        out = int(tx.vout[0].nValue)
        assert out >= dust_limit(bytes(tx.vout[0].scriptPubKey), BTC), name
        verify_input(tx.serialize(), 0, [SpentOutput(spk, smallest)])
    # The bound is tight for the largest spend: two vbytes' fee less and the Taproot claim
    # leaf would leave dust.
    with pytest.raises(InsufficientFunds, match="below the dust limit"):
        _all_spends(smallest - rate * 2, rate)


def test_a_claim_or_refund_pays_the_rate_asked_up_to_the_ceiling():
    """No share-of-amount cap on a first claim or refund (a claim that does not confirm in time
    loses the whole leg): at 3,000 sat/vB a 500,000-sat HTLC pays what the rate asks. Above
    the ceiling nothing is signed."""
    amount = 500_000
    for name, (tx, spk) in _all_spends(amount, 3_000).items():
        fee = _fee(tx, amount)
        assert fee % 3_000 == 0 and 3_000 * vsize(tx) <= fee <= 3_000 * (vsize(tx) + 1), name
        verify_input(tx.serialize(), 0, [SpentOutput(spk, amount)])
    with pytest.raises(InvalidInput, match="above this chain's ceiling"):
        _all_spends(10**8, BTC.max_fee_rate + 1)
