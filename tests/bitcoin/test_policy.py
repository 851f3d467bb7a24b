"""The embedded chain's mempool applies Core's relay policy (issue 19 item 3).

The same transaction shapes are sent to the embedded chain (over its Core RPC) and, marked
``realnode``, to litecoind -regtest; each must be refused for the same reason (Core 0.21's
reject reasons, the dialect both speak), and the standard one accepted by both.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bitcointx.core import b2lx
from bitcointx.core.script import OP_1, OP_2, OP_3, OP_4, OP_CHECKMULTISIG, OP_RETURN, CScript
from bitcointx.segwit_addr import encode

from kofo.settlement.chains.bitcoin.blocks import parse_block
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient, RpcError
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer
from tests.bitcoin.test_rpcserver import P2WPKH, PUB, _spend

P2WSH = bytes([0, 32]) + b"\x11" * 32
P2PKH = bytes.fromhex("76a914") + b"\x07" * 20 + bytes.fromhex("88ac")
FEE = 20_000  # 0.0002 coin: above both chains' relay minimum, far below maxfeerate


def _shapes(dust_rate: int) -> dict[str, tuple[Callable[[int], list[tuple[bytes, int]]], str]]:
    """name -> (outputs for a coin of ``value``, the reject reason; "" = accepted)."""
    p2wpkh_dust = (31 + 67) * dust_rate
    p2pkh_dust = (34 + 148) * dust_rate
    keys = [PUB] * 4
    return {
        "standard": (lambda v: [(P2WPKH, v - FEE)], ""),
        "dust-p2wpkh": (lambda v: [(P2WPKH, p2wpkh_dust - 1), (P2WPKH, v - FEE - 10_000)], "dust"),
        "at-dust-p2wpkh": (lambda v: [(P2WPKH, p2wpkh_dust), (P2WPKH, v - FEE - 10_000)], ""),
        "dust-p2pkh": (lambda v: [(P2PKH, p2pkh_dust - 1), (P2WPKH, v - FEE - 20_000)], "dust"),
        "nonstandard-script": (
            lambda v: [(bytes([0, 16]) + b"\x44" * 16, 100_000), (P2WPKH, v - FEE - 100_000)],
            "scriptpubkey",
        ),
        "op-return-80": (
            lambda v: [(bytes(CScript([OP_RETURN, b"k" * 80])), 0), (P2WPKH, v - FEE)],
            "",
        ),
        "op-return-81": (
            lambda v: [(bytes(CScript([OP_RETURN, b"k" * 81])), 0), (P2WPKH, v - FEE)],
            "scriptpubkey",
        ),
        "two-op-returns": (
            lambda v: [
                (bytes(CScript([OP_RETURN, b"a"])), 0),
                (bytes(CScript([OP_RETURN, b"b"])), 0),
                (P2WPKH, v - FEE),
            ],
            "multi-op-return",
        ),
        "bare-multisig-4-keys": (
            lambda v: [
                (bytes(CScript([OP_1, *keys, OP_4, OP_CHECKMULTISIG])), 100_000),
                (P2WPKH, v - FEE - 100_000),
            ],
            "scriptpubkey",
        ),
        "bare-multisig-2-of-3": (
            lambda v: [
                (bytes(CScript([OP_2, *keys[:3], OP_3, OP_CHECKMULTISIG])), 100_000),
                (P2WPKH, v - FEE - 100_000),
            ],
            "",
        ),
    }


class Side:
    """One chain reached over Core JSON-RPC, with coins of KEY to spend."""

    def __init__(
        self, rpc: Callable[..., Any], coins: Iterator[tuple[str, int, int]], dust_rate: int
    ) -> None:
        self.rpc = rpc
        self.coins = coins
        self.dust_rate = dust_rate

    def verdict(self, outputs: Callable[[int], list[tuple[bytes, int]]], **kw: Any) -> str:
        coin = next(self.coins)
        tx = _spend([coin], outputs(coin[2]), version=kw.get("version", 2))
        (result,) = self.rpc("testmempoolaccept", [tx.serialize().hex()])
        return "" if result["allowed"] else str(result["reject-reason"])


def _embedded_side(chain: EmbeddedChain, server: RegtestRpcServer) -> Side:
    client = RpcClient(server.url, "u", "p")
    first = chain.height() + 1
    chain.mine(130, P2WPKH)

    def coins() -> Iterator[tuple[str, int, int]]:
        for height in range(first, first + 30):
            cb = parse_block(chain.block_raw(chain.block_hash(height))).txs[0]
            yield b2lx(cb.GetTxid()), 0, cb.vout[0].nValue

    return Side(client.call, coins(), chain.params.dust_relay_fee_rate)


@pytest.fixture(scope="module", params=["btc", "ltc"])
def embedded(request: pytest.FixtureRequest) -> Iterator[Side]:
    chain = EmbeddedChain(params=chain_params(request.param, "regtest"))
    with RegtestRpcServer(chain, "u", "p") as server:
        yield _embedded_side(chain, server)
    chain.close()


def _verdicts(side: Side) -> dict[str, str]:
    shapes = _shapes(side.dust_rate)
    return {name: side.verdict(outputs) for name, (outputs, _) in shapes.items()}


def test_the_mempool_refuses_what_core_s_policy_refuses(embedded: Side) -> None:
    expected = {name: reason for name, (_, reason) in _shapes(embedded.dust_rate).items()}
    assert _verdicts(embedded) == expected


def test_version_3_and_tiny_transactions_are_not_standard(embedded: Side) -> None:
    assert embedded.verdict(lambda v: [(P2WPKH, v - FEE)], version=3) == "version"
    tiny = bytes(CScript([OP_RETURN]))  # a lone output of 10 bytes: 72 non-witness bytes
    assert embedded.verdict(lambda v: [(tiny, v - FEE)]) == "tx-size-small"


def test_maxfeerate_and_maxburnamount_are_applied(embedded: Side) -> None:
    coin = next(embedded.coins)
    greedy = _spend([coin], [(P2WPKH, coin[2] // 2)])  # half the coin in fees
    (result,) = embedded.rpc("testmempoolaccept", [greedy.serialize().hex()])
    assert (result["allowed"], result["reject-reason"]) == (False, "max-fee-exceeded")
    with pytest.raises(RpcError) as err:
        embedded.rpc("sendrawtransaction", greedy.serialize().hex())
    assert err.value.rpc_code == -25 and "maxfeerate" in str(err.value)
    assert embedded.rpc("sendrawtransaction", greedy.serialize().hex(), 0) == b2lx(greedy.GetTxid())

    coin = next(embedded.coins)
    burn = _spend([coin], [(bytes(CScript([OP_RETURN, b"x"])), 5_000), (P2WPKH, coin[2] - FEE)])
    with pytest.raises(RpcError) as err:
        embedded.rpc("sendrawtransaction", burn.serialize().hex())
    assert err.value.rpc_code == -25 and "maxburnamount" in str(err.value)
    txid = embedded.rpc("sendrawtransaction", burn.serialize().hex(), None, "0.00005")
    assert txid == b2lx(burn.GetTxid())


@pytest.mark.realnode
@pytest.mark.timeout(300)
def test_litecoind_gives_the_same_verdicts(tmp_path: Path) -> None:
    from tests.nodes import start_litecoind

    node = start_litecoind(tmp_path / "ltc")
    try:
        address = encode("rltc", 0, P2WPKH[2:])
        hashes = node.generate_to_address(130, address)

        def coins() -> Iterator[tuple[str, int, int]]:
            for block_hash in hashes[:30]:
                block = node.rpc("getblock", block_hash, 2)
                cb = block["tx"][0]
                yield cb["txid"], 0, round(cb["vout"][0]["value"] * 100_000_000)

        real = Side(node.rpc, coins(), 30)
        reference = _verdicts(real)
        chain = EmbeddedChain(params=chain_params("ltc", "regtest"))
        try:
            with RegtestRpcServer(chain, "u", "p") as server:
                assert _verdicts(_embedded_side(chain, server)) == reference
        finally:
            chain.close()
    finally:
        node.stop()
