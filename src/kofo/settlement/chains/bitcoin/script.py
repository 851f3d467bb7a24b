"""The KOFO HTLC script for Bitcoin-like chains: build it, and recognise it (audit).

The script, in a P2WSH output::

    OP_SIZE <32> OP_EQUAL
    OP_IF
        OP_HASH160 <RIPEMD160(payment_hash)> OP_EQUALVERIFY <recipient_pubkey>
    OP_ELSE
        <expiry> OP_CHECKLOCKTIMEVERIFY OP_DROP <refund_pubkey>
    OP_ENDIF
    OP_CHECKSIG

Why this shape and not the textbook ``OP_IF OP_SIZE 32 OP_EQUALVERIFY OP_SHA256 <H> ...``:

* ``HASH160(preimage) = RIPEMD160(SHA256(preimage)) = RIPEMD160(payment_hash)``, so locking to
  the 20-byte ``RIPEMD160(payment_hash)`` is opened by exactly the same 32-byte secret as the
  Ethereum contract's ``sha256(preimage) == payment_hash`` -- and saves 12 bytes of script.
* The preimage size test doubles as the branch selector. A claim pushes (sig, preimage): the
  top item is 32 bytes, so the claim branch runs. A refund pushes only (sig): a DER signature is
  never 32 bytes long, so the refund branch runs -- no dummy 0/1 witness item is needed. The size
  check itself is kept (a 33-byte "secret" could open this output but not the Ethereum leg).

Witnesses: claim ``[sig, preimage, script]``; refund ``[sig, script]`` with
``nLockTime >= expiry`` and a non-final ``nSequence``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from bitcointx.core.script import (
    OP_CHECKLOCKTIMEVERIFY,
    OP_CHECKSIG,
    OP_DROP,
    OP_ELSE,
    OP_ENDIF,
    OP_EQUAL,
    OP_EQUALVERIFY,
    OP_HASH160,
    OP_IF,
    OP_SIZE,
    CScript,
    CScriptInvalidError,
    CScriptOp,
)

from kofo.errors import InvalidInput
from kofo.settlement.chain import (
    PREIMAGE_SIZE,
    BlockHeight,
    Expiry,
    UnixTime,
    check_payment_hash,
)

LOCKTIME_THRESHOLD = 500_000_000
"""Bitcoin consensus: an nLockTime (and a CLTV argument) below this is a block height, at or
above it a unix time. CLTV fails when the script's expiry and the tx's nLockTime are of different
kinds, so a height expiry must stay below it and a time expiry at or above it."""

MAX_LOCKTIME = 0xFFFFFFFF
"""nLockTime is an unsigned 32-bit field; a larger expiry could never be satisfied."""

PUBKEY_SIZE = 33
"""P2WSH policy (WITNESS_PUBKEYTYPE) only relays compressed public keys."""


class HtlcScriptError(InvalidInput):
    """A script is not a KOFO HTLC; the message says which part differs."""

    code = "not_kofo_htlc"


@dataclass(frozen=True, slots=True)
class HtlcScript:
    """The fields of one KOFO HTLC script.

    ``hash160`` is ``RIPEMD160(payment_hash)``: the script commits to it, not to the payment
    hash itself, so a parsed script can only be *compared* with an expected payment hash
    (:meth:`matches_payment_hash`).
    """

    hash160: bytes
    recipient_pubkey: bytes
    refund_pubkey: bytes
    expiry: Expiry

    def matches_payment_hash(self, payment_hash: bytes) -> bool:
        return self.hash160 == payment_hash_to_hash160(check_payment_hash(payment_hash))

    @property
    def script(self) -> bytes:
        return _assemble(self.hash160, self.recipient_pubkey, self.refund_pubkey, self.expiry)


def payment_hash_to_hash160(payment_hash: bytes) -> bytes:
    """``RIPEMD160(payment_hash)``, which equals ``HASH160(preimage)`` for the matching secret."""
    check_payment_hash(payment_hash)
    return hashlib.new("ripemd160", payment_hash).digest()


def check_pubkey(field: str, pubkey: bytes) -> bytes:
    if not isinstance(pubkey, bytes) or len(pubkey) != PUBKEY_SIZE or pubkey[0] not in (2, 3):
        shown = pubkey.hex() if isinstance(pubkey, bytes) else repr(pubkey)
        raise InvalidInput(f"{field} must be a 33-byte compressed public key, got {shown}")
    return pubkey


def pubkey_from_hex(field: str, text: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except (ValueError, TypeError):
        raise InvalidInput(
            f"{field} must be hex of a compressed public key, got {text!r}"
        ) from None
    return check_pubkey(field, raw)


def expiry_to_locktime(expiry: Expiry) -> int:
    """The CLTV/nLockTime number for ``expiry``; rejects a value in the other unit's range."""
    if isinstance(expiry, BlockHeight):
        if not 0 < expiry.value < LOCKTIME_THRESHOLD:
            raise InvalidInput(
                f"expiry {expiry} is not a block height CLTV accepts "
                f"(must be 1..{LOCKTIME_THRESHOLD - 1})"
            )
        return expiry.value
    if isinstance(expiry, UnixTime):
        if not LOCKTIME_THRESHOLD <= expiry.value <= MAX_LOCKTIME:
            raise InvalidInput(
                f"expiry {expiry} is not a unix time CLTV accepts "
                f"(must be {LOCKTIME_THRESHOLD}..{MAX_LOCKTIME})"
            )
        return expiry.value
    raise InvalidInput(f"expiry must be BlockHeight or UnixTime, got {expiry!r}")


def locktime_to_expiry(value: int) -> Expiry:
    if value < LOCKTIME_THRESHOLD:
        return BlockHeight(value)
    return UnixTime(value)


def build_htlc_script(
    payment_hash: bytes, recipient_pubkey: bytes, refund_pubkey: bytes, expiry: Expiry
) -> bytes:
    """The witness script locking to ``payment_hash``, payable to ``recipient_pubkey`` with the
    preimage, refundable to ``refund_pubkey`` once ``expiry`` is reached."""
    return _assemble(
        payment_hash_to_hash160(payment_hash),
        check_pubkey("recipient_pubkey", recipient_pubkey),
        check_pubkey("refund_pubkey", refund_pubkey),
        expiry,
    )


def _assemble(hash160: bytes, recipient: bytes, refund: bytes, expiry: Expiry) -> bytes:
    locktime = expiry_to_locktime(expiry)
    return bytes(
        CScript(
            [
                OP_SIZE,
                PREIMAGE_SIZE,
                OP_EQUAL,
                OP_IF,
                OP_HASH160,
                hash160,
                OP_EQUALVERIFY,
                recipient,
                OP_ELSE,
                locktime,
                OP_CHECKLOCKTIMEVERIFY,
                OP_DROP,
                refund,
                OP_ENDIF,
                OP_CHECKSIG,
            ]
        )
    )


def p2wsh_script_pubkey(witness_script: bytes) -> bytes:
    """``OP_0 <sha256(witness_script)>``: the funding output's scriptPubKey."""
    return b"\x00\x20" + hashlib.sha256(witness_script).digest()


def parse_htlc_script(witness_script: bytes, script_pubkey: bytes | None = None) -> HtlcScript:
    """Recognise a KOFO HTLC and return its fields; raise :class:`HtlcScriptError` otherwise.

    When ``script_pubkey`` (the funding output's) is given, it must be the P2WSH of
    ``witness_script``. The script is re-assembled from the parsed fields and compared byte for
    byte, so a non-minimal push or any extra opcode is refused, not just a wrong opcode.
    """
    if script_pubkey is not None and script_pubkey != p2wsh_script_pubkey(witness_script):
        raise HtlcScriptError(
            f"funding output script {script_pubkey.hex()} is not the P2WSH of the witness script"
        )
    try:
        items = list(CScript(witness_script))
    except CScriptInvalidError as exc:
        raise HtlcScriptError(f"witness script does not decode: {exc}") from None
    if len(items) != 15:
        raise HtlcScriptError(f"witness script has {len(items)} items, a KOFO HTLC has 15")
    hash160, recipient, locktime, refund = items[5], items[7], items[9], items[12]
    if not isinstance(hash160, bytes) or len(hash160) != 20:
        raise HtlcScriptError("witness script item 5 (hash lock) is not a 20-byte push")
    for index, name, value in ((7, "recipient_pubkey", recipient), (12, "refund_pubkey", refund)):
        if not isinstance(value, bytes) or len(value) != PUBKEY_SIZE or value[0] not in (2, 3):
            raise HtlcScriptError(f"witness script item {index} ({name}) is not a public key")
    number = _script_number(locktime)
    if number is None or number <= 0:
        raise HtlcScriptError("witness script item 9 (expiry) is not a positive number")
    assert isinstance(recipient, bytes) and isinstance(refund, bytes)
    fields = HtlcScript(hash160, recipient, refund, locktime_to_expiry(number))
    try:
        rebuilt = fields.script
    except InvalidInput as exc:
        raise HtlcScriptError(f"witness script expiry is unusable: {exc}") from None
    if rebuilt != witness_script:
        raise HtlcScriptError("witness script differs from the KOFO HTLC template")
    return fields


def _script_number(item: object) -> int | None:
    """A CLTV argument as an int; ``None`` if it is not a push CLTV could read."""
    if isinstance(item, CScriptOp):
        try:
            return item.decode_op_n()
        except ValueError:
            return None
    if isinstance(item, int):  # OP_1..OP_16 iterate as plain ints
        return item
    if isinstance(item, bytes) and 0 < len(item) <= 5:
        value = int.from_bytes(item, "little")
        if item[-1] & 0x80:  # sign bit: CLTV fails on a negative number
            return None
        return value
    return None
