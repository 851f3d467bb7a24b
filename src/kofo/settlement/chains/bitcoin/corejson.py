"""Bitcoin Core's JSON for chain data, for the embedded chain's RPC server (:mod:`.rpcserver`).

What Core's ``core_write.cpp`` / ``blockchain.cpp`` compute and write (headers themselves are
parsed by :func:`.blocks.parse_header`): block proof and chain work from the compact ``bits``,
difficulty, output script types (``Solver``), amounts as exact eight-place decimals
(``ValueFromAmount``), and a JSON writer that writes those decimals as numbers with their exact
digits. Pure functions; no chain access.
"""

from __future__ import annotations

import json
import re
import secrets
from decimal import Decimal
from typing import Any

from bitcointx.core.script import CScript, CScriptInvalidError


def _compact_target(bits: int) -> int | None:
    """arith_uint256::SetCompact; None when negative or overflowing."""
    size = bits >> 24
    word = bits & 0x007FFFFF
    target = word >> 8 * (3 - size) if size <= 3 else word << 8 * (size - 3)
    negative = word != 0 and bits & 0x00800000 != 0
    overflow = word != 0 and (
        size > 34 or (word > 0xFF and size > 33) or (word > 0xFFFF and size > 32)
    )
    return None if negative or overflow else target


def block_proof(bits: int) -> int:
    """Core's GetBlockProof: 2**256 / (target + 1), computed as ~target / (target + 1) + 1."""
    target = _compact_target(bits)
    if not target:
        return 0
    return ((~target) & (2**256 - 1)) // (target + 1) + 1


def target_fields(bits: int) -> dict[str, Any]:
    """``target`` (64 hex digits) and ``difficulty`` of a header's bits, as Core writes them."""
    fields: dict[str, Any] = {}
    target = _compact_target(bits)
    if target:
        fields["target"] = f"{target:064x}"
    mantissa = bits & 0x00FFFFFF
    if mantissa:
        # Core's GetDifficulty, in doubles as there, written with UniValue's 16 digits.
        shift = (bits >> 24) & 0xFF
        difficulty = 0xFFFF / mantissa
        while shift < 29:
            difficulty *= 256.0
            shift += 1
        while shift > 29:
            difficulty /= 256.0
            shift -= 1
        fields["difficulty"] = Decimal(f"{difficulty:.16g}")
    return fields


def coin_amount(sats: int) -> Decimal:
    """Core's ValueFromAmount: coins, exactly eight decimals."""
    return Decimal(sats).scaleb(-8)


def output_type(script_pubkey: bytes) -> str:
    """Core's Solver (script/solver.cpp) -> GetTxnOutputType."""
    script = CScript(script_pubkey)
    if script.is_p2sh():
        return "scripthash"
    if script.is_witness_scriptpubkey():
        version = script.witness_version()
        size = len(script_pubkey) - 2
        if version == 0 and size == 20:
            return "witness_v0_keyhash"
        if version == 0 and size == 32:
            return "witness_v0_scripthash"
        if version == 1 and size == 32:
            return "witness_v1_taproot"
        if script_pubkey == b"\x51\x02\x4e\x73":
            return "anchor"
        return "witness_unknown" if version != 0 else "nonstandard"
    if script_pubkey[:1] == b"\x6a" and CScript(script_pubkey[1:]).is_push_only():
        return "nulldata"
    for size in (65, 33):
        if (
            len(script_pubkey) == size + 2
            and script_pubkey[0] == size
            and script_pubkey[-1] == 0xAC
            and _valid_pubkey_size(script_pubkey[1 : size + 1])
        ):
            return "pubkey"
    if script.is_p2pkh():
        return "pubkeyhash"
    if _is_multisig(script):
        return "multisig"
    return "nonstandard"


def _valid_pubkey_size(data: bytes) -> bool:
    """CPubKey::ValidSize: the length the first byte announces."""
    if not data:
        return False
    expected = {2: 33, 3: 33, 4: 65, 6: 65, 7: 65}.get(data[0], 0)
    return len(data) == expected


def _is_multisig(script: CScript) -> bool:
    """Core's MatchMultisig: m <keys> n OP_CHECKMULTISIG with 1 <= m <= n <= 20 keys."""
    if not script or script[-1] != 0xAE:
        return False
    try:
        ops = list(script.raw_iter())
    except CScriptInvalidError:
        return False
    if len(ops) < 3:
        return False
    required = _script_number(ops[0][0], ops[0][1], 1, 20)
    if required is None:
        return False
    keys = 0
    index = 1
    while index < len(ops):
        data = ops[index][1]
        if data is None or not _valid_pubkey_size(data):
            break
        keys += 1
        index += 1
    if index >= len(ops):
        return False
    total = _script_number(ops[index][0], ops[index][1], required, 20)
    return total is not None and total == keys and index + 2 == len(ops)


def _script_number(opcode: int, data: bytes | None, low: int, high: int) -> int | None:
    """Core's GetScriptNumber (OP_1..OP_16, or a minimal push of a minimal number)."""
    if 0x51 <= opcode <= 0x60:
        count = opcode - 0x50
    elif 0 < opcode <= 0x4E and data is not None:
        minimal_push = (
            (len(data) != 1 or not (1 <= data[0] <= 16 or data[0] == 0x81))
            and (len(data) > 75 or opcode == len(data))
            and (len(data) <= 75 or len(data) > 255 or opcode == 0x4C)
            and (len(data) <= 255 or opcode == 0x4D)
        )
        if not minimal_push or len(data) > 4:
            return None
        if data and data[-1] & 0x7F == 0 and (len(data) <= 1 or data[-2] & 0x80 == 0):
            return None  # not minimally encoded
        count = int.from_bytes(data, "little") if data else 0
        if data and data[-1] & 0x80:
            count = -(count & ~(0x80 << 8 * (len(data) - 1)))
    else:
        return None
    return count if low <= count <= high else None


def dumps(body: object) -> str:
    """JSON with every Decimal written as a number with its exact digits, as Core writes
    amounts (``json`` itself can only write a Decimal through a float or as a string). The
    placeholder carries a fresh random tag, so no string in ``body`` (a client's ``id``) can
    pass for one."""
    tag = secrets.token_hex(16)

    def default(value: object) -> Any:
        if isinstance(value, Decimal):
            return f"\x00{tag}:{value:f}"
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")

    text = json.dumps(body, default=default)
    return re.sub(rf'"\\u0000{tag}:(-?[0-9]+(?:\.[0-9]+)?)"', r"\1", text)
