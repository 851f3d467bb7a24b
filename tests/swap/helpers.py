"""Two-party swap fixtures on embedded EVMs: chains, funded nodes, and a loop that drives them."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from eth_account.signers.local import LocalAccount
from web3 import Web3

from kofo.settlement.chains.ethereum.adapter import EthereumAdapter, embedded_web3
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.devnet import mine_at
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.engine import CrashHook, PeerLimits, SwapEngine, SwapUpdate
from kofo.settlement.journal import Journal
from kofo.settlement.swap import TERMINAL, State
from kofo.settlement.terms import AcceptPolicy, ChainPolicy, SwapTerms, devnet_policy
from kofo.wire.envelope import ReplayGuard
from kofo.wire.swap import SwapBody, open_swap, sign_swap

ETHER = 10**18

_MINT_ABI = [
    {
        "name": "mint",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [],
    }
]


class Evm:
    """One embedded EVM with the HTLC contract and a test token deployed."""

    def __init__(self, chain: str = "eth", w3: Web3 | None = None) -> None:
        self.chain = chain
        self.w3 = w3 or embedded_web3()
        self.tester = getattr(self.w3.provider, "ethereum_tester", None)
        self.deployer = account_from_seed(os.urandom(32))
        self.fund(self.deployer.address, 10 * ETHER)
        self.htlc = deploy(self.w3, "HTLC", self.deployer)
        self.token = deploy(self.w3, "TestToken", self.deployer, "Test USD", "TUSD", 6)

    def fund(self, address: str, wei: int) -> None:
        faucet = self.w3.eth.accounts[0]
        self.w3.eth.wait_for_transaction_receipt(
            self.w3.eth.send_transaction({"from": faucet, "to": address, "value": wei})
        )

    def mint(self, address: str, amount: int) -> None:
        tok = self.w3.eth.contract(address=self.token, abi=_MINT_ABI)
        self.w3.eth.wait_for_transaction_receipt(
            tok.functions.mint(address, amount).transact({"from": self.w3.eth.accounts[0]})
        )

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])

    def advance(self, seconds: int) -> None:
        """Move chain time: mine one block stamped ``seconds`` after the latest."""
        if self.tester is None:  # a devnet over JSON-RPC: its server serialises chain access
            reply = self.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
            assert "error" not in reply, reply
        else:
            mine_at(self.tester, self.now() + seconds)

    def advance_to(self, timestamp: int) -> None:
        if timestamp > self.now():
            self.advance(timestamp - self.now())

    def account(self, wei: int = 5 * ETHER, tokens: int = 0) -> LocalAccount:
        acct = account_from_seed(os.urandom(32))
        self.fund(acct.address, wei)
        if tokens:
            self.mint(acct.address, tokens)
        return acct

    def adapter(self, account: LocalAccount) -> EthereumAdapter:
        return EthereumAdapter(self.w3, account, self.htlc, chain=self.chain)

    def policy(self) -> ChainPolicy:
        return devnet_policy(self.chain, height_clock=False)


@dataclass
class Node:
    name: str
    engine: SwapEngine
    key: Ed25519PrivateKey
    accounts: dict[str, LocalAccount]
    updates: list[SwapUpdate] = field(default_factory=list)
    guard: ReplayGuard = field(default_factory=ReplayGuard)

    @property
    def node_id(self) -> bytes:
        return self.engine.node_id

    def address(self, chain: str) -> str:
        return str(self.accounts[chain].address)


def accept_any(terms: SwapTerms) -> None:
    """The tests' accept policy, installed explicitly (an engine's default accepts nothing):
    every proposal that passes the engine's own checks (margins, dust, build, funds, limits)
    is accepted, whatever its assets and price."""
    del terms


def make_node(
    name: str,
    tmp_path: Path,
    chains: dict[str, Evm],
    *,
    tokens: int = 10**12,
    crash: CrashHook | None = None,
    accounts: dict[str, LocalAccount] | None = None,
    key: Ed25519PrivateKey | None = None,
    accept_policy: AcceptPolicy = accept_any,
    limits: PeerLimits | None = None,
    clock: Callable[[], float] | None = None,
) -> Node:
    accounts = accounts or {c: evm.account(tokens=tokens) for c, evm in chains.items()}
    key = key or Ed25519PrivateKey.generate()
    updates: list[SwapUpdate] = []
    engine = SwapEngine(
        Journal(tmp_path / f"{name}.sqlite"),
        {c: evm.adapter(accounts[c]) for c, evm in chains.items()},
        {c: evm.policy() for c, evm in chains.items()},
        key,
        publish=updates.append,
        crash=crash or CrashHook(),
        accept_policy=accept_policy,
        limits=limits,
        **({"clock": clock} if clock is not None else {}),
    )
    return Node(name, engine, key, accounts, updates)


def link(a: Node, b: Node, *, requests: bool = True) -> None:
    """Deliver each node's notices and requests to the other as signed wire bytes
    (replay-checked), and a request's signed reply back. ``requests=False``: notices only
    (as before cooperative claims: no node can ask the other to co-sign)."""

    def deliver(src: Node, dst: Node) -> Callable[[bytes, SwapBody], SwapBody | None]:
        def send(_swap_id: bytes, body: SwapBody) -> SwapBody | None:
            data = sign_swap(src.key, body).to_bytes()
            parsed, sender = open_swap(data, dst.guard)
            reply = dst.engine.handle(parsed, sender)
            if reply is None:
                return None
            answer, signer = open_swap(sign_swap(dst.key, reply).to_bytes(), src.guard)
            assert signer == dst.node_id
            return answer

        return send

    a.engine._notify = deliver(a, b)
    b.engine._notify = deliver(b, a)
    a.engine._request = deliver(a, b) if requests else None
    b.engine._request = deliver(b, a) if requests else None


def start_swap(a: Node, b: Node, initiator_leg, participant_leg) -> bytes:
    """A proposes, B accepts (over signed bytes), A records the accept. Returns the swap id."""
    terms = a.engine.propose(initiator_leg, participant_leg, participant_node=b.node_id)
    from kofo.wire.swap import Propose

    data = sign_swap(a.key, Propose(terms)).to_bytes()
    body, sender = open_swap(data, b.guard)
    reply = b.engine.handle(body, sender)
    assert reply is not None
    data = sign_swap(b.key, reply).to_bytes()
    body, sender = open_swap(data, a.guard)
    assert a.engine.handle(body, sender) is None
    return terms.swap_id


def drive(
    nodes: list[Node],
    swap_id: bytes,
    *,
    rounds: int = 40,
    between: Callable[[int], None] | None = None,
) -> dict[str, State]:
    """Tick every node until both are terminal; ``between(round)`` may move chain time."""
    for r in range(rounds):
        for n in nodes:
            n.engine.tick()
        states = {n.name: n.engine.journal.get(swap_id).state for n in nodes}
        if all(s in TERMINAL for s in states.values()):
            return states
        if between is not None:
            between(r)
    return {n.name: n.engine.journal.get(swap_id).state for n in nodes}
