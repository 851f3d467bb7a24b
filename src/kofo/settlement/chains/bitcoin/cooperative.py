"""The cooperative claim of a Taproot HTLC: one key-path signature made by both parties.

The recipient (claimer) and the sender (co-signer) make one MuSig2 signature (:mod:`.musig`)
over the BIP341 key-path sighash of a claim that spends only the HTLC output. One round trip:

1. the claimer builds the unsigned claim (:func:`begin_claim`) and sends it with its public
   nonce;
2. the co-signer rebuilds the sighash from that transaction and the amount it locked, makes its
   nonce and its partial signature at once (:func:`cosign_claim`; the last signer to make a nonce
   may sign straight away, BIP327) and sends both back;
3. the claimer checks the partial signature, adds its own and aggregates (:func:`finish_claim`).

The claim is 99 vB (1 input, 1 P2WPKH output) where the claim leaf takes 140 vB, and on chain it
looks like any other Taproot payment. It shows no preimage: the co-signer must already know it
(the swap protocol sends it along, see ``docs/swap.md``). The secret nonce lives only in this
process's memory; a restart starts a new session with a new nonce, never reusing one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bitcointx.core import CBitcoinTransaction as CTransaction
from bitcointx.core import lx

from kofo.errors import InvalidInput
from kofo.settlement.chains.bitcoin.musig import (
    MusigError,
    MusigSigner,
    aggregate_signature,
    verify_partial,
)
from kofo.settlement.chains.bitcoin.taproot import (
    TaprootHtlc,
    key_path_sighash,
    with_key_path_signature,
)

__all__ = ["CooperativeClaim", "begin_claim", "cosign_claim", "finish_claim"]


@dataclass
class CooperativeClaim:
    """The claimer's half of a key-path claim: the unsigned spend, the sighash both sign, and
    this node's MuSig2 signer (its secret nonce, used once)."""

    htlc: TaprootHtlc
    unsigned: CTransaction
    sighash: bytes
    nonce: bytes
    signer: MusigSigner = field(repr=False)

    @property
    def raw(self) -> bytes:
        """The unsigned claim as sent to the co-signer (64-byte placeholder witness)."""
        return bytes(self.unsigned.serialize())


def _pubkeys(htlc: TaprootHtlc) -> list[bytes]:
    return [htlc.recipient_pubkey, htlc.refund_pubkey]


def begin_claim(
    htlc: TaprootHtlc, unsigned: CTransaction, amount: int, recipient_seckey: bytes
) -> CooperativeClaim:
    """Start the claimer's side over ``unsigned`` (a key-path spend of the HTLC output worth
    ``amount``), signing as the recipient."""
    sighash = key_path_sighash(htlc, unsigned, amount)
    signer = MusigSigner(recipient_seckey, _pubkeys(htlc), htlc.tweak)
    if signer.pubkey != htlc.recipient_pubkey:
        raise InvalidInput("the claimer's key is not the HTLC's recipient key")
    return CooperativeClaim(htlc, unsigned, sighash, signer.public_nonce(sighash), signer)


def cosign_claim(
    htlc: TaprootHtlc,
    outpoint: tuple[str, int],
    unsigned_raw: bytes,
    amount: int,
    refund_seckey: bytes,
    claimer_nonce: bytes,
) -> tuple[bytes, bytes]:
    """The co-signer's side: check ``unsigned_raw`` spends the HTLC output at ``outpoint`` and
    nothing else, then return (its public nonce, its partial signature).

    It signs whatever outputs the claim pays: it gives up only its refund of this HTLC, which
    the claimer could take by the claim leaf anyway once it holds the preimage. A claim with
    other inputs is refused, so a co-signature never helps spend anything else."""
    try:
        tx = CTransaction.deserialize(unsigned_raw)
    except Exception as exc:  # python-bitcointx raises several types for malformed bytes
        raise InvalidInput(f"the claim to co-sign is not a transaction: {exc}") from None
    txid, vout = outpoint
    if len(tx.vin) != 1:
        raise InvalidInput(f"the claim to co-sign must have 1 input, it has {len(tx.vin)}")
    prevout = tx.vin[0].prevout
    if prevout.hash != lx(txid) or prevout.n != vout:
        raise InvalidInput(f"the claim to co-sign does not spend the HTLC output {txid}:{vout}")
    sighash = key_path_sighash(htlc, tx, amount)
    signer = MusigSigner(refund_seckey, _pubkeys(htlc), htlc.tweak)
    if signer.pubkey != htlc.refund_pubkey:
        raise InvalidInput("the co-signer's key is not the HTLC's refund key")
    nonce = signer.public_nonce(sighash)
    return nonce, signer.partial_sign(sighash, [claimer_nonce, nonce])


def finish_claim(claim: CooperativeClaim, cosigner_nonce: bytes, partial: bytes) -> CTransaction:
    """Check the co-signer's ``partial`` signature, add ours, and return the signed claim."""
    htlc, nonces = claim.htlc, [claim.nonce, cosigner_nonce]
    if not verify_partial(
        _pubkeys(htlc), htlc.refund_pubkey, claim.sighash, nonces, 1, partial, htlc.tweak
    ):
        raise MusigError("the co-signer's partial signature does not verify")
    ours = claim.signer.partial_sign(claim.sighash, nonces)
    sig = aggregate_signature(_pubkeys(htlc), claim.sighash, nonces, [ours, partial], htlc.tweak)
    return with_key_path_signature(claim.unsigned, sig)
