"""Fixtures shared by the Bitcoin tests."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator

import pytest

from kofo.settlement.chain import BlockHeight, HtlcRef, HtlcTerms
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer
from kofo.settlement.chains.bitcoin.wallet import HdWallet

REGTEST = chain_params("btc", "regtest")
RPC_USER, RPC_PASSWORD = "kofo", "secret-pw"


@pytest.fixture(scope="module")
def chain() -> Iterator[EmbeddedChain]:
    """A fresh embedded regtest chain per test module (modules mine their own coins)."""
    c = EmbeddedChain()
    yield c
    c.close()


@pytest.fixture(scope="module")
def server(chain: EmbeddedChain) -> Iterator[RegtestRpcServer]:
    """The module's chain behind its Core-dialect JSON-RPC server."""
    with RegtestRpcServer(chain, RPC_USER, RPC_PASSWORD) as s:
        yield s


def rpc_adapter(server: RegtestRpcServer, seed: bytes, kind: str = "p2wsh") -> BitcoinAdapter:
    """An adapter for the wallet of ``seed``, reaching the chain over JSON-RPC."""
    client = RpcClient(server.url, RPC_USER, RPC_PASSWORD)
    return BitcoinAdapter(RpcBackend(client), HdWallet(seed, REGTEST), htlc_kind=kind)


@pytest.fixture(scope="module")
def alice(server: RegtestRpcServer) -> BitcoinAdapter:
    """A wallet with 101 blocks of coinbases (the first one mature)."""
    a = rpc_adapter(server, b"\x0a" * 32)
    a.backend.mine(101, a.wallet.address())
    return a


@pytest.fixture(scope="module")
def bob(server: RegtestRpcServer, alice: BitcoinAdapter) -> BitcoinAdapter:
    """A wallet with one mature coinbase."""
    b = rpc_adapter(server, b"\x0b" * 32)
    b.backend.mine(1, b.wallet.address())
    alice.backend.mine(100, alice.wallet.address())  # matures bob's coinbase
    return b


def locked_htlc(
    sender: BitcoinAdapter,
    recipient: BitcoinAdapter,
    *,
    expiry_in: int = 30,
    amount: int = 200_000,
    mine: bool = True,
) -> tuple[HtlcRef, bytes]:
    """``sender`` locks ``amount`` to ``recipient`` for ``expiry_in`` blocks and (``mine``)
    mines the lock into a block; returns the HTLC and its preimage."""
    preimage = os.urandom(32)
    terms = HtlcTerms(
        chain=sender.chain,
        payment_hash=hashlib.sha256(preimage).digest(),
        amount=amount,
        sender=sender.address(),
        recipient=recipient.address(),
        expiry=BlockHeight(sender.expiry_now().value + expiry_in),
        output=sender.leg_output(),
    )
    ref = sender.lock(terms)
    if mine:
        sender.backend.mine(1, sender.wallet.address())
    return ref, preimage
