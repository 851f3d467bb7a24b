"""The main job on the embedded default: HTLC legs on an in-process EVM, narrated.

No node and no network: py-evm (through eth-tester) is the chain. Three scenes: an ETH lock
redeemed with the secret, an ETH lock refunded after its expiry (a premature refund is refused
first), and an ERC-20 lock redeemed. Every transaction, its gas and the balances are shown.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from web3 import Web3
from web3.types import Wei

from kofo.errors import KofoError
from kofo.money import Amount, Asset
from kofo.settlement.chain import HtlcRef, HtlcTerms, UnixTime
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter, embedded_web3
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.keys import account_from_seed

ETH = Asset("eth", "ETH", 18)
ONE_HOUR = 3600


@dataclass
class _Party:
    name: str
    account: LocalAccount
    adapter: EthereumAdapter


def _fund(w3: Web3, to: str, wei: int) -> None:
    faucet = w3.eth.accounts[0]  # eth-tester's pre-funded, unlocked account
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": faucet, "to": to, "value": Wei(wei)})
    )


def _advance(w3: Web3, seconds: int) -> None:
    tester = w3.provider.ethereum_tester  # type: ignore[attr-defined]
    now = int(w3.eth.get_block("latest")["timestamp"])
    tester.time_travel(now + seconds)
    tester.mine_blocks(1)


class _Narrator:
    def __init__(self, console: Console, w3: Web3) -> None:
        self.console = console
        self.w3 = w3

    def step(self, text: str) -> None:
        self.console.print(f"[bold cyan]▸[/] {text}")

    def tx(self, what: str, txid: str) -> None:
        receipt = self.w3.eth.get_transaction_receipt(txid)  # type: ignore[arg-type]
        self.console.print(
            f"    [green]✓[/] {what}: tx {txid[:18]}… block {receipt['blockNumber']}, "
            f"gas {receipt['gasUsed']:,}"
        )


def _send_all(n: _Narrator, party: _Party, txs: list, label: str) -> None:  # type: ignore[type-arg]
    for tx in txs:
        party.adapter.broadcast(tx)
        party.adapter.wait(tx.txid)
        n.tx(f"{party.name} {label} ({tx.kind})", tx.txid)


def run_demo(console: Console | None = None) -> None:
    console = console or Console()
    w3 = embedded_web3()
    n = _Narrator(console, w3)
    console.rule("[bold]KOFO demo: HTLC legs on the embedded EVM (py-evm)")

    deployer = account_from_seed(os.urandom(32))
    _fund(w3, deployer.address, 10**19)
    htlc = deploy(w3, "HTLC", deployer)
    token = deploy(w3, "TestToken", deployer, "Demo USD", "DUSD", 6)
    dusd = Asset("eth", "DUSD", 6, token=token)
    n.step(f"deployed the HTLC contract at {htlc} and a test ERC-20 (DUSD) at {token}")

    parties = []
    for name in ("alice", "bob"):
        acct = account_from_seed(os.urandom(32))
        _fund(w3, acct.address, 5 * 10**18)
        parties.append(_Party(name, acct, EthereumAdapter(w3, acct, htlc)))
    alice, bob = parties
    minter = w3.eth.contract(address=token, abi=[_MINT_ABI])
    w3.eth.wait_for_transaction_receipt(
        minter.functions.mint(alice.account.address, 1_000 * 10**6).transact(
            {"from": w3.eth.accounts[0]}
        )
    )
    n.step("alice and bob have fresh keys (derived from random seeds), 5 ETH each; alice 1000 DUSD")
    before = {p.name: (p.adapter.balance(), p.adapter.balance(token)) for p in parties}

    # Scene 1: lock ETH, redeem with the secret.
    console.rule("1. ETH: lock → redeem")
    preimage = os.urandom(32)
    payment_hash = hashlib.sha256(preimage).digest()
    n.step(f"alice draws a 32-byte secret; payment hash {payment_hash.hex()[:16]}…")
    expiry = UnixTime(alice.adapter.expiry_now().value + ONE_HOUR)
    terms = HtlcTerms(
        "eth", payment_hash, 10**18, alice.account.address, bob.account.address, expiry
    )
    txs = alice.adapter.prepare_lock(terms)
    _send_all(n, alice, txs, f"locks {Amount(ETH, terms.amount).display()} for bob until {expiry}")
    ref = alice.adapter.htlc_ref(terms, txs[-1])
    status = bob.adapter.audit(ref, terms, min_confirmations=1)
    n.step(f"bob audits the lock on chain: {status.state}, {status.confirmations} confirmation(s)")
    n.step("alice reveals the secret to bob (in a swap she reveals it by redeeming bob's leg)")
    tx = bob.adapter.prepare_redeem(ref, preimage)
    _send_all(n, bob, [tx], "redeems")
    seen = alice.adapter.status(ref)
    n.step(
        f"the HTLC is {seen.state}; the secret is public in the Redeemed event: "
        f"{'matches' if seen.preimage == preimage else 'MISMATCH'}"
    )

    # Scene 2: lock ETH, refund after expiry.
    console.rule("2. ETH: lock → refund after expiry")
    payment_hash2 = hashlib.sha256(os.urandom(32)).digest()
    expiry2 = UnixTime(alice.adapter.expiry_now().value + ONE_HOUR)
    terms2 = HtlcTerms(
        "eth", payment_hash2, 5 * 10**17, alice.account.address, bob.account.address, expiry2
    )
    txs = alice.adapter.prepare_lock(terms2)
    _send_all(
        n, alice, txs, f"locks {Amount(ETH, terms2.amount).display()} for bob until {expiry2}"
    )
    ref2 = alice.adapter.htlc_ref(terms2, txs[-1])
    try:
        alice.adapter.prepare_refund(ref2)
        raise AssertionError("a refund before expiry was accepted")
    except KofoError as exc:
        n.step(f"alice tries to refund at once → refused: [yellow]{escape(str(exc))}[/]")
    _advance(w3, ONE_HOUR)
    n.step(f"an hour passes on chain (now {alice.adapter.expiry_now()})")
    _send_all(n, alice, [alice.adapter.prepare_refund(ref2)], "refunds")
    n.step(f"the HTLC is {alice.adapter.status(ref2).state}")

    # Scene 3: ERC-20 lock → redeem.
    console.rule("3. ERC-20 (DUSD): approve + lock → redeem")
    preimage3 = os.urandom(32)
    expiry3 = UnixTime(alice.adapter.expiry_now().value + ONE_HOUR)
    terms3 = HtlcTerms(
        "eth",
        hashlib.sha256(preimage3).digest(),
        250 * 10**6,
        alice.account.address,
        bob.account.address,
        expiry3,
        token=token,
    )
    txs = alice.adapter.prepare_lock(terms3)
    _send_all(n, alice, txs, f"locks {Amount(dusd, terms3.amount).display()} for bob")
    ref3: HtlcRef = alice.adapter.htlc_ref(terms3, txs[-1])
    bob.adapter.audit(ref3, terms3, min_confirmations=1)
    _send_all(n, bob, [bob.adapter.prepare_redeem(ref3, preimage3)], "redeems")

    table = Table(title="balances before → after (gas is paid in ETH)")
    for col in ("party", "ETH before", "ETH after", "DUSD before", "DUSD after"):
        table.add_column(col, justify="left" if col == "party" else "right")
    for p in parties:
        eth0, tok0 = before[p.name]
        table.add_row(
            p.name,
            Amount(ETH, eth0).number(),
            Amount(ETH, p.adapter.balance()).number(),
            Amount(dusd, tok0).number(),
            Amount(dusd, p.adapter.balance(token)).number(),
        )
    console.print(table)
    console.print(
        "[bold green]done:[/] 1 ETH and 250 DUSD moved alice → bob by secret; "
        "0.5 ETH went back to alice by refund."
    )


_MINT_ABI = {
    "name": "mint",
    "type": "function",
    "stateMutability": "nonpayable",
    "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
    "outputs": [],
}
