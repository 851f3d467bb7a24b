"""Two-party MuSig2 (BIP327) for the Taproot HTLC's cooperative key path.

The cryptography is libsecp256k1's own ``musig`` module (upstream, BIP327), reached through the
cffi binding that ships inside coincurve's wheel -- coincurve has no Python wrapper for it, and no
maintained pure-Python MuSig2 exists on PyPI. This module only moves bytes in and out of it.

Protocol for one signature over a 32-byte message ``msg`` by the holders of ``pubkeys``:

1. every signer makes a :class:`MusigSigner` and sends ``signer.public_nonce(msg)`` (66 bytes);
2. each signer, holding every public nonce, sends ``signer.partial_sign(msg, nonces)``
   (32 bytes) -- its secret nonce is then destroyed, so it can never sign twice with it;
3. anyone calls :func:`aggregate_signature` to get the 64-byte BIP340 signature valid for
   :func:`aggregate_key` (after the same ``tweak``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from coincurve import GLOBAL_CONTEXT
from coincurve._libsecp256k1 import ffi, lib

from kofo.errors import InvalidInput

_CTX: Any = GLOBAL_CONTEXT.ctx
_PUBNONCE_SIZE = 66
_PARTIAL_SIG_SIZE = 32


class MusigError(InvalidInput):
    """A MuSig2 input is malformed or a step failed (bad nonce, bad partial signature)."""

    code = "musig_failed"


def _pubkey(raw: bytes) -> Any:
    if not isinstance(raw, bytes) or len(raw) != 33:
        raise MusigError(f"pubkeys must be 33-byte compressed keys, got {raw!r}")
    out = ffi.new("secp256k1_pubkey *")
    if not lib.secp256k1_ec_pubkey_parse(_CTX, out, raw, len(raw)):
        raise MusigError(f"pubkey {raw.hex()} is not a point on secp256k1")
    return out


def sort_pubkeys(pubkeys: Sequence[bytes]) -> list[bytes]:
    """BIP327 KeySort: lexicographic order of the 33-byte encodings, so both parties aggregate
    the same key whatever order they learnt the keys in."""
    return sorted(pubkeys)


def _keyagg(pubkeys: Sequence[bytes], tweak: bytes | None) -> tuple[Any, bytes]:
    if len(pubkeys) < 2 or len(set(pubkeys)) != len(pubkeys):
        raise MusigError(f"need at least two distinct pubkeys, got {len(pubkeys)}")
    points = [_pubkey(p) for p in sort_pubkeys(pubkeys)]
    array = ffi.new("secp256k1_pubkey *[]", points)
    cache = ffi.new("secp256k1_musig_keyagg_cache *")
    agg = ffi.new("secp256k1_xonly_pubkey *")
    if not lib.secp256k1_musig_pubkey_agg(_CTX, agg, cache, array, len(points)):
        raise MusigError("key aggregation failed")
    if tweak is not None:
        if len(tweak) != 32:
            raise MusigError(f"tweak must be 32 bytes, got {len(tweak)}")
        tweaked = ffi.new("secp256k1_pubkey *")
        if not lib.secp256k1_musig_pubkey_xonly_tweak_add(_CTX, tweaked, cache, tweak):
            raise MusigError("the tweak makes an invalid key")
        if not lib.secp256k1_xonly_pubkey_from_pubkey(_CTX, agg, ffi.NULL, tweaked):
            raise MusigError("the tweaked key has no x-only form")
    out = ffi.new("unsigned char[32]")
    lib.secp256k1_xonly_pubkey_serialize(_CTX, out, agg)
    return cache, bytes(ffi.buffer(out, 32))


def aggregate_key(pubkeys: Sequence[bytes], tweak: bytes | None = None) -> bytes:
    """The 32-byte x-only MuSig2 key of ``pubkeys`` (with an x-only ``tweak`` applied, e.g. the
    BIP341 TapTweak: then it is the Taproot output key)."""
    return _keyagg(pubkeys, tweak)[1]


def _session(cache: Any, msg: bytes, pubnonces: Sequence[bytes]) -> Any:
    if len(msg) != 32:
        raise MusigError(f"message must be 32 bytes, got {len(msg)}")
    parsed = []
    for index, raw in enumerate(pubnonces):
        nonce = ffi.new("secp256k1_musig_pubnonce *")
        if len(raw) != _PUBNONCE_SIZE or not lib.secp256k1_musig_pubnonce_parse(_CTX, nonce, raw):
            raise MusigError(f"public nonce {index} is not a valid 66-byte MuSig2 nonce")
        parsed.append(nonce)
    aggnonce = ffi.new("secp256k1_musig_aggnonce *")
    array = ffi.new("secp256k1_musig_pubnonce *[]", parsed)
    if not lib.secp256k1_musig_nonce_agg(_CTX, aggnonce, array, len(parsed)):
        raise MusigError("nonce aggregation failed")
    session = ffi.new("secp256k1_musig_session *")
    if not lib.secp256k1_musig_nonce_process(_CTX, session, aggnonce, msg, cache):
        raise MusigError("nonce processing failed")
    return session


class MusigSigner:
    """One party's side of a MuSig2 signature. Holds a secret key; never shows it."""

    def __init__(self, seckey: bytes, pubkeys: Sequence[bytes], tweak: bytes | None = None) -> None:
        self._keypair = ffi.new("secp256k1_keypair *")
        if len(seckey) != 32 or not lib.secp256k1_keypair_create(_CTX, self._keypair, seckey):
            raise MusigError("signer secret key is not a valid 32-byte secp256k1 key")
        pub = ffi.new("secp256k1_pubkey *")
        lib.secp256k1_keypair_pub(_CTX, pub, self._keypair)
        out = ffi.new("unsigned char[33]")
        size = ffi.new("size_t *", 33)
        lib.secp256k1_ec_pubkey_serialize(_CTX, out, size, pub, lib.SECP256K1_EC_COMPRESSED)
        self.pubkey = bytes(ffi.buffer(out, 33))
        if self.pubkey not in pubkeys:
            raise MusigError(f"signer key {self.pubkey.hex()} is not one of the aggregated keys")
        self._pub = pub
        self._cache, self.aggregate_key = _keyagg(pubkeys, tweak)
        self._secnonce: Any = None

    def __repr__(self) -> str:
        return f"MusigSigner(pubkey={self.pubkey.hex()})"

    def public_nonce(self, msg: bytes) -> bytes:
        """A fresh 66-byte public nonce for signing ``msg`` (the secret half stays here)."""
        secnonce = ffi.new("secp256k1_musig_secnonce *")
        pubnonce = ffi.new("secp256k1_musig_pubnonce *")
        # session_secrand must be fresh randomness per call (BIP327 NonceGen's rand'); libsecp
        # also mixes in the secret key and message, so a weak RNG alone cannot leak the key.
        secrand = ffi.new("unsigned char[32]", os.urandom(32))
        seckey = ffi.new("unsigned char[32]")
        lib.secp256k1_keypair_sec(_CTX, seckey, self._keypair)
        ok = lib.secp256k1_musig_nonce_gen(
            _CTX, secnonce, pubnonce, secrand, seckey, self._pub, msg, self._cache, ffi.NULL
        )
        ffi.memmove(seckey, b"\x00" * 32, 32)
        if not ok:
            raise MusigError("nonce generation failed")
        out = ffi.new("unsigned char[66]")
        lib.secp256k1_musig_pubnonce_serialize(_CTX, out, pubnonce)
        self._secnonce = secnonce
        return bytes(ffi.buffer(out, _PUBNONCE_SIZE))

    def partial_sign(self, msg: bytes, pubnonces: Sequence[bytes]) -> bytes:
        """This party's 32-byte partial signature. Uses up the secret nonce."""
        if self._secnonce is None:
            raise MusigError("no unused nonce: call public_nonce(msg) first")
        session = _session(self._cache, msg, pubnonces)
        partial = ffi.new("secp256k1_musig_partial_sig *")
        secnonce, self._secnonce = self._secnonce, None
        if not lib.secp256k1_musig_partial_sign(
            _CTX, partial, secnonce, self._keypair, self._cache, session
        ):
            raise MusigError("partial signing failed")
        out = ffi.new("unsigned char[32]")
        lib.secp256k1_musig_partial_sig_serialize(_CTX, out, partial)
        return bytes(ffi.buffer(out, _PARTIAL_SIG_SIZE))


def aggregate_signature(
    pubkeys: Sequence[bytes],
    msg: bytes,
    pubnonces: Sequence[bytes],
    partial_sigs: Sequence[bytes],
    tweak: bytes | None = None,
) -> bytes:
    """Check every partial signature against its signer and combine them into one 64-byte
    BIP340 signature. ``pubnonces`` and ``partial_sigs`` are in the same (any) signer order as
    ``signer_pubkeys`` would be: the i-th nonce and partial signature belong to one signer."""
    if len(partial_sigs) != len(pubnonces):
        raise MusigError(f"{len(pubnonces)} nonces but {len(partial_sigs)} partial signatures")
    cache, _ = _keyagg(pubkeys, tweak)
    session = _session(cache, msg, pubnonces)
    parsed = []
    for index, raw in enumerate(partial_sigs):
        partial = ffi.new("secp256k1_musig_partial_sig *")
        if len(raw) != _PARTIAL_SIG_SIZE or not lib.secp256k1_musig_partial_sig_parse(
            _CTX, partial, raw
        ):
            raise MusigError(f"partial signature {index} is not a valid 32-byte scalar")
        parsed.append(partial)
    out = ffi.new("unsigned char[64]")
    array = ffi.new("secp256k1_musig_partial_sig *[]", parsed)
    if not lib.secp256k1_musig_partial_sig_agg(_CTX, out, session, array, len(parsed)):
        raise MusigError("partial signature aggregation failed")
    return bytes(ffi.buffer(out, 64))


def verify_partial(
    pubkeys: Sequence[bytes],
    signer_pubkey: bytes,
    msg: bytes,
    pubnonces: Sequence[bytes],
    signer_index: int,
    partial_sig: bytes,
    tweak: bytes | None = None,
) -> bool:
    """Whether ``partial_sig`` is the honest partial signature of ``signer_pubkey`` (whose nonce
    is ``pubnonces[signer_index]``) -- lets a party blame a cheating co-signer."""
    cache, _ = _keyagg(pubkeys, tweak)
    session = _session(cache, msg, pubnonces)
    partial = ffi.new("secp256k1_musig_partial_sig *")
    if len(partial_sig) != _PARTIAL_SIG_SIZE or not lib.secp256k1_musig_partial_sig_parse(
        _CTX, partial, partial_sig
    ):
        return False
    nonce = ffi.new("secp256k1_musig_pubnonce *")
    lib.secp256k1_musig_pubnonce_parse(_CTX, nonce, pubnonces[signer_index])
    return bool(
        lib.secp256k1_musig_partial_sig_verify(
            _CTX, partial, nonce, _pubkey(signer_pubkey), cache, session
        )
    )
