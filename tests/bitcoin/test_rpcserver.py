"""The embedded chain's JSON-RPC server answers as Bitcoin Core does, over real HTTP.

Decoded transactions and blocks are checked against what python-bitcointx says about the same
raw bytes; error codes against Core's (src/rpc/protocol.h) and the adapter's client still
classifies the server's refusals (rpc.py, backend.py).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import urllib.parse
from decimal import Decimal
from typing import Any

import pytest
from bitcointx.core import (
    CBitcoinMutableTransaction as CMutableTransaction,
)
from bitcointx.core import (
    CBitcoinMutableTxIn as CMutableTxIn,
)
from bitcointx.core import (
    CBitcoinMutableTxOut as CMutableTxOut,
)
from bitcointx.core import (
    CBitcoinOutPoint as COutPoint,
)
from bitcointx.core import (
    CBitcoinTransaction as CTransaction,
)
from bitcointx.core import (
    CBitcoinTxInWitness as CTxInWitness,
)
from bitcointx.core import (
    CBitcoinTxWitness as CTxWitness,
)
from bitcointx.core import Hash160, b2lx, lx
from bitcointx.core.key import CKey
from bitcointx.core.script import (
    OP_1,
    OP_2,
    OP_CHECKMULTISIG,
    OP_CHECKSIG,
    OP_DUP,
    OP_EQUALVERIFY,
    OP_HASH160,
    OP_RETURN,
    SIGHASH_ALL,
    SIGVERSION_WITNESS_V0,
    CScript,
    CScriptWitness,
    SignatureHash,
)
from bitcointx.core.serialize import VarIntSerializer
from bitcointx.segwit_addr import encode
from bitcointx.wallet import CBitcoinRegtestAddress, P2PKHBitcoinRegtestAddress

import kofo.settlement.chains.bitcoin  # noqa: F401  (loads libsecp256k1)
from kofo.errors import FeeTooLow, TxRejected
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.blocks import merkle_root, parse_block
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.rpc import RpcClient, RpcError
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer
from tests.bitcoin.conftest import RPC_PASSWORD, RPC_USER

KEY = CKey.from_secret_bytes(b"\x42" * 32)
PUB = bytes(KEY.pub)
P2WPKH = bytes([0, 20]) + Hash160(PUB)
RBF = 0xFFFFFFFD
NO_RBF = 0xFFFFFFFE
AMOUNT_TEXT = re.compile(r'"value": -?[0-9]+\.[0-9]{8}[,}]')


# ---- plumbing --------------------------------------------------------------------------------


def _client(server: RegtestRpcServer) -> RpcClient:
    return RpcClient(server.url, RPC_USER, RPC_PASSWORD)


def _post(server: RegtestRpcServer, payload: Any = None, *, raw: bytes | None = None):
    """POST one body; (HTTP status, reply parsed with Decimal numbers, reply text)."""
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    token = base64.b64encode(f"{RPC_USER}:{RPC_PASSWORD}".encode()).decode()
    body = raw if raw is not None else json.dumps(payload).encode()
    try:
        conn.request("POST", "/", body=body, headers={"Authorization": f"Basic {token}"})
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    text = data.decode()
    return response.status, (json.loads(text, parse_float=Decimal) if text else None), text


def _rpc_error(server: RegtestRpcServer, method: str, *params: Any) -> RpcError:
    with pytest.raises(RpcError) as err:
        _client(server).call(method, *params)
    return err.value


def _coins(chain: EmbeddedChain):
    """Mature coinbase outputs paying KEY, each handed out once."""
    first = chain.height() + 1
    chain.mine(120, P2WPKH)
    for height in range(first, first + 20):
        cb = parse_block(chain.block_raw(chain.block_hash(height))).txs[0]
        yield b2lx(cb.GetTxid()), 0, cb.vout[0].nValue


@pytest.fixture(scope="module")
def coins(chain: EmbeddedChain):
    return _coins(chain)


def _spend(
    inputs: list[tuple[str, int, int]],
    outputs: list[tuple[bytes, int]],
    *,
    key: CKey = KEY,
    sequence: int = RBF,
    locktime: int = 0,
    version: int = 2,
) -> CTransaction:
    """A transaction (version 2 unless told) spending P2WPKH ``inputs`` of KEY, signed by
    ``key``."""
    tx = CMutableTransaction(
        [CMutableTxIn(COutPoint(lx(txid), n), nSequence=sequence) for txid, n, _ in inputs],
        [CMutableTxOut(value, CScript(spk)) for spk, value in outputs],
        nLockTime=locktime,
        nVersion=version,
    )
    code = CScript([OP_DUP, OP_HASH160, Hash160(PUB), OP_EQUALVERIFY, OP_CHECKSIG])
    witnesses = []
    for index, (_, _, amount) in enumerate(inputs):
        digest = SignatureHash(
            code, tx, index, SIGHASH_ALL, amount=amount, sigversion=SIGVERSION_WITNESS_V0
        )
        sig = key.sign(digest) + bytes([SIGHASH_ALL])
        witnesses.append(CTxInWitness(CScriptWitness([sig, PUB])))
    tx.wit = CTxWitness(witnesses)
    return CTransaction.from_tx(tx)


def _coin(coin: tuple[str, int, int]) -> list[tuple[str, int, int]]:
    return [coin]


def _amount(sats: int) -> Decimal:
    return Decimal(sats) / Decimal(100_000_000)


def _assert_tx_matches(decoded: dict[str, Any], tx: CTransaction, chain: EmbeddedChain) -> None:
    """``decoded`` (a Core TxToUniv object) says what python-bitcointx says about ``tx``."""
    stripped = len(tx.serialize(include_witness=False))
    assert decoded["txid"] == b2lx(tx.GetTxid())
    assert decoded["hash"] == b2lx(tx.GetHash())
    assert decoded["version"] == tx.nVersion
    assert decoded["size"] == len(tx.serialize())
    assert decoded["weight"] == stripped * 3 + len(tx.serialize())
    assert decoded["vsize"] == tx.get_virtual_size()
    assert decoded["locktime"] == tx.nLockTime
    assert decoded["hex"] == tx.serialize().hex()
    assert len(decoded["vin"]) == len(tx.vin)
    for index, (entry, txin) in enumerate(zip(decoded["vin"], tx.vin, strict=True)):
        if tx.is_coinbase():
            assert entry["coinbase"] == bytes(txin.scriptSig).hex()
            assert "txid" not in entry and "scriptSig" not in entry
        else:
            assert entry["txid"] == b2lx(txin.prevout.hash)
            assert entry["vout"] == txin.prevout.n
            assert entry["scriptSig"]["hex"] == bytes(txin.scriptSig).hex()
        witness = tx.wit.vtxinwit[index].scriptWitness if tx.wit.vtxinwit else []
        stack = [bytes(i).hex() for i in witness]
        assert entry.get("txinwitness") == (stack or None)
        assert entry["sequence"] == txin.nSequence
    assert len(decoded["vout"]) == len(tx.vout)
    for n, (entry, out) in enumerate(zip(decoded["vout"], tx.vout, strict=True)):
        assert entry["n"] == n
        assert isinstance(entry["value"], Decimal)
        assert entry["value"] == _amount(out.nValue)
        assert entry["scriptPubKey"]["hex"] == bytes(out.scriptPubKey).hex()


# ---- 1. getrawtransaction verbose --------------------------------------------------------------


def test_getrawtransaction_verbose_decodes_as_bitcointx_does(chain, server, coins):
    coin = next(coins)
    p2pkh = bytes(P2PKHBitcoinRegtestAddress.from_bytes(b"\x07" * 20).to_scriptPubKey())
    tx = _spend(_coin(coin), [(P2WPKH, 12_345_678), (p2pkh, 10_000_000)], locktime=1)
    txid = _client(server).call("sendrawtransaction", tx.serialize().hex(), 0)

    status, reply, text = _post(server, {"method": "getrawtransaction", "params": [txid, True]})
    assert status == 200
    pooled = reply["result"]
    _assert_tx_matches(pooled, tx, chain)
    assert "blockhash" not in pooled and "confirmations" not in pooled
    # Amounts are exact JSON numbers with eight decimals, as Core's ValueFromAmount writes them.
    assert '"value": 0.12345678' in text and '"value": 0.10000000' in text
    assert len(AMOUNT_TEXT.findall(text)) == 2

    (block_hash,) = chain.mine(1, P2WPKH)
    chain.mine(1, P2WPKH)
    confirmed = _client(server).call("getrawtransaction", txid, 1)
    _assert_tx_matches(confirmed, tx, chain)
    assert confirmed["blockhash"] == block_hash
    assert confirmed["confirmations"] == 2
    assert confirmed["time"] == confirmed["blocktime"] == chain.block_time(block_hash)
    assert "fee" not in confirmed  # verbosity 1: no undo data
    assert _client(server).call("getrawtransaction", txid) == tx.serialize().hex()

    coinbase = parse_block(chain.block_raw(block_hash)).txs[0]
    decoded = _client(server).call("getrawtransaction", b2lx(coinbase.GetTxid()), True)
    _assert_tx_matches(decoded, coinbase, chain)
    assert decoded["vin"][0]["txinwitness"] == ["00" * 32]  # the BIP141 reserved value


def test_getrawtransaction_verbosity_2_adds_fee_and_prevouts(chain, server, coins):
    coin = next(coins)
    tx = _spend(_coin(coin), [(P2WPKH, coin[2] - 5_000)])
    txid = _client(server).call("sendrawtransaction", tx.serialize().hex(), 0)
    in_pool = _client(server).call("getrawtransaction", txid, 2)
    assert "fee" not in in_pool and "prevout" not in in_pool["vin"][0]  # Core: no undo yet

    chain.mine(1, P2WPKH)
    decoded = _client(server).call("getrawtransaction", txid, 2)
    assert decoded["fee"] == _amount(5_000)
    funding_height = chain.block_height(
        _client(server).call("getrawtransaction", coin[0], 1)["blockhash"]
    )
    assert decoded["vin"][0]["prevout"] == {
        "generated": True,
        "height": funding_height,
        "value": _amount(coin[2]),
        "scriptPubKey": {
            "hex": P2WPKH.hex(),
            "address": str(CBitcoinRegtestAddress.from_scriptPubKey(CScript(P2WPKH))),
            "type": "witness_v0_keyhash",
        },
    }


def test_getrawtransaction_in_a_given_block(chain, server, coins):
    coin = next(coins)
    tx = _spend(_coin(coin), [(P2WPKH, coin[2] - 1_000)])
    txid = _client(server).call("sendrawtransaction", tx.serialize().hex(), 0)
    (block_hash,) = chain.mine(1, P2WPKH)
    found = _client(server).call("getrawtransaction", txid, True, block_hash)
    assert next(iter(found)) == "in_active_chain" and found["in_active_chain"] is True
    _assert_tx_matches(found, tx, chain)

    other = chain.block_hash(1)
    err = _rpc_error(server, "getrawtransaction", txid, True, other)
    assert err.rpc_code == -5 and "No such transaction found in the provided block" in err.message
    err = _rpc_error(server, "getrawtransaction", txid, True, "ab" * 32)
    assert (err.rpc_code, err.message) == (-5, "Block hash not found")

    # A block on a competing branch: not in the active chain, no confirmations.
    stale = chain.mine(1, b"\x51", parent=chain.block_hash(chain.height() - 1))[0]
    assert not chain.on_best_chain(stale)
    stale_cb = parse_block(chain.block_raw(stale)).txs[0]
    seen = _client(server).call("getrawtransaction", b2lx(stale_cb.GetTxid()), 1, stale)
    assert seen["in_active_chain"] is False and seen["confirmations"] == 0
    header = _client(server).call("getblockheader", stale)
    assert header["confirmations"] == -1 and "nextblockhash" not in header


def test_output_scripts_are_typed_and_addressed_as_core_does(chain, server, coins):
    coin = next(coins)
    pub2 = bytes(CKey.from_secret_bytes(b"\x43" * 32).pub)
    p2pkh = CBitcoinRegtestAddress("mzBc4XEFSdzCDcTxAgf6EZXgsZWpztRhef").to_scriptPubKey()
    p2sh = CScript([OP_1]).to_p2sh_scriptPubKey()
    outputs = {
        "witness_v0_keyhash": (P2WPKH, True),
        "witness_v0_scripthash": (bytes([0, 32]) + b"\x11" * 32, True),
        "witness_v1_taproot": (bytes([0x51, 32]) + b"\x22" * 32, True),
        "witness_unknown": (bytes([0x52, 16]) + b"\x33" * 16, False),
        "anchor": (bytes.fromhex("51024e73"), False),
        "pubkeyhash": (bytes(p2pkh), True),
        "scripthash": (bytes(p2sh), True),
        "pubkey": (bytes(CScript([PUB, OP_CHECKSIG])), None),
        "multisig": (bytes(CScript([OP_1, PUB, pub2, OP_2, OP_CHECKMULTISIG])), None),
        "nulldata": (bytes(CScript([OP_RETURN, b"kofo"])), None),
        "nonstandard": (bytes([0, 16]) + b"\x44" * 16, None),  # v0, neither 20 nor 32 bytes
    }
    tx = _spend(_coin(coin), [(spk, 1_000) for spk, _ in outputs.values()])
    chain.require_standard = False  # as Core with -acceptnonstdtxn: one of each type
    try:
        txid = _client(server).call("sendrawtransaction", tx.serialize().hex(), 0, 1)
    finally:
        chain.require_standard = True
    decoded = _client(server).call("getrawtransaction", txid, True)
    _assert_tx_matches(decoded, tx, chain)
    for (kind, (spk, bitcointx_knows)), entry in zip(outputs.items(), decoded["vout"], strict=True):
        script = entry["scriptPubKey"]
        assert script["type"] == kind, (kind, script)
        if bitcointx_knows:
            expected = str(CBitcoinRegtestAddress.from_scriptPubKey(CScript(spk)))
        elif bitcointx_knows is False:  # witness programs python-bitcointx has no class for
            expected = encode("bcrt", spk[0] - 0x50, spk[2:])
        else:
            expected = None
        assert script.get("address") == expected, kind


# ---- 2. getblock -------------------------------------------------------------------------------


def test_getblock_verbosity_1_2_3_describe_the_block(chain, server, coins):
    coin = next(coins)
    tx = _spend(_coin(coin), [(P2WPKH, coin[2] - 2_000)])
    txid = _client(server).call("sendrawtransaction", tx.serialize().hex(), 0)
    (block_hash,) = chain.mine(1, P2WPKH)
    raw = chain.block_raw(block_hash)
    block = parse_block(raw)
    client = _client(server)

    assert client.call("getblock", block_hash, 0) == raw.hex()
    assert client.call("getblock", block_hash, False) == raw.hex()
    one = client.call("getblock", block_hash)
    assert client.call("getblock", block_hash, True) == one
    assert one["tx"] == [b2lx(t.GetTxid()) for t in block.txs]
    assert one["hash"] == block_hash
    assert one["height"] == chain.height() and one["confirmations"] == 1
    assert one["nTx"] == len(block.txs) >= 2
    mine = one["tx"].index(txid)
    assert one["merkleroot"] == merkle_root([t.GetTxid() for t in block.txs])[::-1].hex()
    assert one["version"] == int.from_bytes(raw[0:4], "little", signed=True)
    assert one["versionHex"] == f"{one['version']:08x}"
    assert one["time"] == block.time == chain.block_time(block_hash)
    assert one["mediantime"] == chain.median_time_past(block_hash)
    assert one["nonce"] == int.from_bytes(raw[76:80], "little")
    assert one["previousblockhash"] == block.prev_hash
    assert "nextblockhash" not in one  # the tip
    stripped = 80 + len(VarIntSerializer.serialize(len(block.txs)))
    stripped += sum(len(t.serialize(include_witness=False)) for t in block.txs)
    assert (one["size"], one["strippedsize"]) == (len(raw), stripped)
    assert one["weight"] == stripped * 3 + len(raw)
    header = client.call("getblockheader", block_hash)
    assert header == {
        k: v for k, v in one.items() if k not in ("strippedsize", "size", "weight", "tx")
    }
    assert client.call("getblockheader", block_hash, False) == raw[:80].hex()
    parent = client.call("getblock", block.prev_hash)
    assert parent["nextblockhash"] == block_hash and parent["confirmations"] == 2

    two = client.call("getblock", block_hash, 2)
    assert {k: v for k, v in two.items() if k != "tx"} == {
        k: v for k, v in one.items() if k != "tx"
    }
    for decoded, btx in zip(two["tx"], block.txs, strict=True):
        _assert_tx_matches(decoded, btx, chain)
        assert "blockhash" not in decoded and "prevout" not in decoded["vin"][0]
    assert "fee" not in two["tx"][0]  # the coinbase spends nothing
    assert two["tx"][mine]["fee"] == _amount(2_000)
    three = client.call("getblock", block_hash, 3)
    assert three["tx"][mine]["vin"][0]["prevout"]["value"] == _amount(coin[2])
    assert three["tx"][mine]["fee"] == _amount(2_000)


def test_chainwork_bits_target_and_difficulty_follow_the_headers(chain, server):
    client = _client(server)
    tip = chain.height()
    best = chain.block_hash(tip)
    header = client.call("getblockheader", best)
    # Regtest's bits 0x207fffff: each block is 2 units of work (GetBlockProof), genesis too.
    bits = int.from_bytes(chain.block_raw(best)[72:76], "little")
    assert header["bits"] == f"{bits:08x}" == "207fffff"
    target = (bits & 0xFFFFFF) << 8 * ((bits >> 24) - 3)
    assert header["target"] == f"{target:064x}"
    assert int(header["chainwork"], 16) == 2**256 // (target + 1) * (tip + 1) == 2 * (tip + 1)
    assert len(header["chainwork"]) == 64
    assert header["difficulty"] == Decimal("4.656542373906925E-10")  # Core's regtest value
    genesis = client.call("getblockheader", chain.block_hash(0))
    assert genesis["chainwork"] == f"{2:064x}" and "previousblockhash" not in genesis


# ---- 3. unknown blocks and transactions --------------------------------------------------------


def test_unknown_block_or_transaction_is_rpc_invalid_address_or_key(server):
    for method in ("getblock", "getblockheader"):
        err = _rpc_error(server, method, "00" * 32)
        assert (err.rpc_code, err.message) == (-5, "Block not found")
        err = _rpc_error(server, method, "00" * 31)
        assert err.rpc_code == -8 and "must be of length 64" in err.message
        err = _rpc_error(server, method, "zz" * 32)
        assert err.rpc_code == -8 and "must be hexadecimal string" in err.message
    err = _rpc_error(server, "getrawtransaction", "00" * 32)
    assert err.rpc_code == -5 and err.message.startswith(
        "No such mempool or blockchain transaction"
    )
    assert _rpc_error(server, "getblockhash", 10**6).rpc_code == -8


# ---- 4. undecodable transactions ---------------------------------------------------------------


def test_undecodable_transaction_hex_is_a_deserialization_error(server, coins):
    coin = next(coins)
    good = _spend(_coin(coin), [(P2WPKH, coin[2] - 1_000)]).serialize().hex()
    for bad in ("zz", "", "00", "0 0", good + "00", good[:-2]):
        err = _rpc_error(server, "sendrawtransaction", bad)
        assert err.rpc_code == -22, bad
        assert err.message == "TX decode failed. Make sure the tx has at least one input."
    err = _rpc_error(server, "testmempoolaccept", [good, good + "00"])
    assert err.rpc_code == -22 and err.message.startswith("TX decode failed for tx 1.")
    assert _rpc_error(server, "testmempoolaccept", []).rpc_code == -8
    assert _rpc_error(server, "testmempoolaccept", [5]).rpc_code == -1


# ---- 5. testmempoolaccept ----------------------------------------------------------------------


def _accept(server: RegtestRpcServer, tx: CTransaction) -> dict[str, Any]:
    (result,) = _client(server).call("testmempoolaccept", [tx.serialize().hex()], 0)
    assert result["txid"] == b2lx(tx.GetTxid())
    assert result["wtxid"] == b2lx(tx.GetHash())
    for value in result.values():
        assert "[tx_rejected]" not in str(value) and "[fee_too_low]" not in str(value)
    return result


def test_testmempoolaccept_answers_core_reject_reasons(chain, server, coins):
    a, b, c, d = next(coins), next(coins), next(coins), next(coins)
    client = _client(server)
    first = _spend(_coin(a), [(P2WPKH, a[2] - 1_000)])
    assert _accept(server, first) == {
        "txid": b2lx(first.GetTxid()),
        "wtxid": b2lx(first.GetHash()),
        "allowed": True,
    }
    assert b2lx(first.GetTxid()) not in client.call("getrawmempool")  # only tested

    late = _spend(_coin(b), [(P2WPKH, b[2] - 1_000)], locktime=chain.height() + 5)
    result = _accept(server, late)
    assert (result["allowed"], result["reject-reason"]) == (False, "non-final")
    assert result["reject-details"].startswith("non-final, ")

    forged = _spend(_coin(b), [(P2WPKH, b[2] - 1_000)], key=CKey.from_secret_bytes(os.urandom(32)))
    assert _accept(server, forged)["reject-reason"] == "mandatory-script-verify-flag-failed"
    free = _spend(_coin(b), [(P2WPKH, b[2])])
    assert _accept(server, free)["reject-reason"] == "min relay fee not met"
    (young_block,) = chain.mine(1, P2WPKH)
    immature_cb = parse_block(chain.block_raw(young_block)).txs[0]
    immature = (b2lx(immature_cb.GetTxid()), 0, immature_cb.vout[0].nValue)
    young = _spend([immature], [(P2WPKH, immature[2] - 1_000)])
    assert _accept(server, young)["reject-reason"] == "bad-txns-premature-spend-of-coinbase"

    client.call("sendrawtransaction", first.serialize().hex(), 0)
    assert _accept(server, first)["reject-reason"] == "txn-already-in-mempool"
    # Replacing `first` (it signals BIP125) at the same fee rate: not enough.
    same_fee = _spend(_coin(a), [(b"\x51\x20" + b"\x01" * 32, a[2] - 1_000)])
    result = _accept(server, same_fee)
    assert result["reject-reason"] == "insufficient fee"
    held = _spend(_coin(c), [(P2WPKH, c[2] - 1_000)], sequence=NO_RBF)
    client.call("sendrawtransaction", held.serialize().hex(), 0)
    rival = _spend(_coin(c), [(P2WPKH, c[2] - 50_000)])
    assert _accept(server, rival)["reject-reason"] == "txn-mempool-conflict"

    chain.mine(1, P2WPKH)
    known = _accept(server, first)
    assert (known["allowed"], known["reject-reason"]) == (False, "txn-already-known")
    result = _accept(server, same_fee)
    assert (result["allowed"], result["reject-reason"]) == (False, "missing-inputs")
    assert "reject-details" not in result  # Core gives none for missing inputs
    assert _accept(server, _spend(_coin(d), [(P2WPKH, d[2] - 1_000)]))["allowed"] is True


def test_refusals_keep_the_adapter_client_s_classification(chain, server, coins):
    """sendrawtransaction answers Core's "reason, details"; RpcBackend still tells a fee
    refusal (FeeTooLow) from others, and an already-confirmed tx is not an error."""
    coin = next(coins)
    backend = RpcBackend(_client(server))
    free = _spend(_coin(coin), [(P2WPKH, coin[2])])
    err = _rpc_error(server, "sendrawtransaction", free.serialize().hex())
    assert err.rpc_code == -26 and err.message.startswith("min relay fee not met, ")
    with pytest.raises(FeeTooLow):
        backend.send_raw(free.serialize())
    late = _spend(_coin(coin), [(P2WPKH, coin[2] - 1_000)], locktime=chain.height() + 5)
    with pytest.raises(TxRejected, match="non-final") as refused:
        backend.send_raw(late.serialize())
    assert not isinstance(refused.value, FeeTooLow)
    with pytest.raises(TxRejected, match=r"would refuse the transaction: non-final$"):
        backend.test_accept(late.serialize())
    spend = _spend(_coin(coin), [(P2WPKH, coin[2] - 1_000)])
    txid = backend.send_raw(spend.serialize())
    chain.mine(1, P2WPKH)
    assert _rpc_error(server, "sendrawtransaction", spend.serialize().hex()).rpc_code == -27
    assert backend.send_raw(spend.serialize()) == txid
    again = _spend(_coin(coin), [(P2WPKH, coin[2] - 9_000)])
    err = _rpc_error(server, "sendrawtransaction", again.serialize().hex())
    assert err.rpc_code == -25 and err.message.startswith("bad-txns-inputs-missingorspent")


# ---- 6. generatetoaddress ----------------------------------------------------------------------


def test_generatetoaddress_refuses_bad_addresses_without_dropping_the_connection(chain, server):
    tip = chain.height()
    status, reply, _ = _post(server, {"method": "generatetoaddress", "params": [1, 5], "id": 7})
    assert status == 500 and reply["id"] == 7
    assert reply["error"]["code"] == -3
    assert reply["error"]["message"] == (
        "Wrong type passed:\n{\n"
        '    "Position 2 (address)": "JSON value of type number is not of expected type string"'
        "\n}"
    )
    mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
    litecoin = encode("rltc", 0, b"\x05" * 20)
    for address in (mainnet, litecoin, "1BoatSLRHtKNngkdXEeobR76b53LETtpyT", "", "bcrt1"):
        err = _rpc_error(server, "generatetoaddress", 1, address)
        assert (err.rpc_code, err.message) == (-5, "Error: Invalid address"), address
    assert _rpc_error(server, "generatetoaddress", "1", mainnet).rpc_code == -3
    assert chain.height() == tip  # nothing mined

    p2pkh = "mzBc4XEFSdzCDcTxAgf6EZXgsZWpztRhef"
    (mined,) = _client(server).call("generatetoaddress", 1, p2pkh)
    paid = parse_block(chain.block_raw(mined)).txs[0].vout[0].scriptPubKey
    assert paid == CBitcoinRegtestAddress(p2pkh).to_scriptPubKey()
    bech32 = str(CBitcoinRegtestAddress.from_scriptPubKey(CScript(P2WPKH)))
    (mined,) = _client(server).call("generatetoaddress", 1, bech32)
    assert bytes(parse_block(chain.block_raw(mined)).txs[0].vout[0].scriptPubKey) == P2WPKH


# ---- 7. batches, named params, JSON-RPC 2.0 ----------------------------------------------------


def test_batches_named_params_and_protocol_versions(chain, server):
    status, replies, _ = _post(
        server,
        [
            {"method": "getblockcount", "id": 1},
            {"method": "getblockhash", "params": {"height": 0}, "id": "b"},
            {"method": "nosuchmethod", "id": 3},
            7,
            {"jsonrpc": "2.0", "method": "getblockcount"},  # a notification: no reply
            {"jsonrpc": "2.0", "method": "getblockcount", "id": 5},
        ],
    )
    assert status == 200
    assert replies == [
        {"result": chain.height(), "error": None, "id": 1},
        {"result": chain.block_hash(0), "error": None, "id": "b"},
        {"result": None, "error": {"code": -32601, "message": "Method not found"}, "id": 3},
        {
            "result": None,
            "error": {"code": -32600, "message": "Invalid Request object"},
            "id": None,
        },
        {"jsonrpc": "2.0", "result": chain.height(), "id": 5},
    ]
    named = {"blockhash": chain.block_hash(0), "verbosity": 0}
    status, reply, _ = _post(server, {"method": "getblock", "params": named, "id": 1})
    assert (status, reply["result"]) == (200, chain.block_raw(chain.block_hash(0)).hex())
    status, reply, _ = _post(
        server,
        {
            "method": "getblock",
            "params": {"blockhash": chain.block_hash(0), "verbose": False},
            "id": 1,
        },
    )
    assert reply["result"] == chain.block_raw(chain.block_hash(0)).hex()
    status, reply, _ = _post(server, {"method": "getblockhash", "params": {"hight": 0}, "id": 1})
    assert status == 500
    assert reply["error"] == {"code": -8, "message": "Unknown named parameter hight"}

    assert _post(server, {"method": "nosuchmethod", "id": 1})[0] == 404
    assert _post(server, {"method": "getblockcount", "params": "x", "id": 1})[0] == 400
    status, reply, _ = _post(server, {"jsonrpc": "2.0", "method": "nosuchmethod", "id": 9})
    assert status == 200 and "result" not in reply and reply["error"]["code"] == -32601
    assert _post(server, {"jsonrpc": "2.0", "method": "getblockcount"})[:2] == (204, None)
    status, reply, _ = _post(server, raw=b'{"method": "getblockcount"')
    assert (status, reply["error"]["code"]) == (500, -32700)
    status, reply, _ = _post(server, raw=b'"getblockcount"')
    assert reply["error"] == {"code": -32700, "message": "Top-level object parse error"}
    err = _rpc_error(server, "getblockcount", 1)
    assert err.rpc_code == -1 and err.message.startswith("getblockcount")
    # A client's id is echoed as sent, never turned into something else.
    status, reply, _ = _post(server, {"method": "getblockcount", "id": "\x00decimal:5"})
    assert reply["id"] == "\x00decimal:5"


# ---- 8. getblockchaininfo ----------------------------------------------------------------------


def test_getblockchaininfo_has_core_fields(chain, server):
    chain.mine(1, P2WPKH)  # a recent tip: out of initial block download
    info = _client(server).call("getblockchaininfo")
    tip = chain.height()
    best = chain.block_hash(tip)
    header = _client(server).call("getblockheader", best)
    assert info == {
        "chain": "regtest",
        "blocks": tip,
        "headers": tip,
        "bestblockhash": best,
        "bits": "207fffff",
        "target": header["target"],
        "difficulty": header["difficulty"],
        "time": chain.block_time(best),
        "mediantime": chain.median_time_past(),
        "verificationprogress": 1,
        "initialblockdownload": False,
        "chainwork": header["chainwork"],
        "pruned": False,
        "warnings": "",
    }
    assert info["chainwork"] == f"{2 * (tip + 1):064x}"


def test_initial_block_download_ends_with_a_recent_tip():
    fresh = EmbeddedChain()
    try:
        with RegtestRpcServer(fresh, RPC_USER, RPC_PASSWORD) as server:
            info = _client(server).call("getblockchaininfo")
            assert info["blocks"] == 0 and info["initialblockdownload"] is True  # 2011 genesis
            assert info["chainwork"] == f"{2:064x}"
            fresh.mine(1, P2WPKH)
            assert _client(server).call("getblockchaininfo")["initialblockdownload"] is False
    finally:
        fresh.close()


# ---- handler failures ---------------------------------------------------------------------------


def test_a_failing_handler_answers_an_internal_error_without_its_details(
    chain, server, monkeypatch
):
    def broken() -> list[str]:
        raise RuntimeError(f"boom {RPC_PASSWORD} /secret/path")

    monkeypatch.setattr(chain, "mempool_txids", broken)
    status, reply, text = _post(server, {"method": "getrawmempool", "id": 1})
    assert status == 500
    assert reply == {
        "result": None,
        "error": {"code": -32603, "message": "Internal error"},
        "id": 1,
    }
    assert RPC_PASSWORD not in text and "secret" not in text
    monkeypatch.undo()
    assert isinstance(_client(server).call("getrawmempool"), list)  # the server still answers
    err = _rpc_error(server, "getblockheader", chain.block_hash(0), "yes")
    assert err.rpc_code == -3 and "Position 2 (verbose)" in err.message
    err = _rpc_error(server, "getrawmempool", True)
    assert err.rpc_code == -8
