"""Bonds on the devnet (issue 14 item 9, issue 17 section 3): the devnet deploys the bond vault
with its solo validator's key as signer; a maker's deposit becomes its bond on the ledger with
nobody declaring it (the ledger's observer reads the vault); a maker that does not lock its leg
is slashed on the ledger by evidence, and the relayer moves the slashed ETH out of the vault
with the validator's signature."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from web3 import Web3

from kofo.clearance import bonds
from kofo.node.bonds import BOND_TX_FILE, ensure_bond, relay_decisions, relay_valsets
from kofo.node.devnet import Devnet, start_devnet
from kofo.node.ledger_client import LedgerClient, LedgerUnreachable
from kofo.private_files import write_private_file
from kofo.settlement.chain import HtlcTerms
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.chains.ethereum.contract import load_artifact
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.wire.codec import decode, encode
from kofo.wire.expiry import UnixTime
from kofo.wire.orders import (
    EvidenceKind,
    FileEvidence,
    Leg,
    OrderKind,
    SettlementOrder,
    sign_tx,
    with_derived_id,
)
from tests.clearance.helpers import Party, commit_tx, hold_keys, ledger_params

pytestmark = pytest.mark.timeout(240)

BOND = 10**18


def _wait(what: str, check: Callable[[], Any]) -> Any:
    """Poll ``check`` until it returns a truthy value (bounded: blocks come every 0.1 s while
    anything is pending, so this is many heights)."""
    for _ in range(600):
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _node(client: LedgerClient, node: bytes) -> dict[str, Any]:
    return dict(decode(client.abci_query("/node", encode(node))))


class _Net:
    def __init__(self, accounts: int) -> None:
        self.now = int(time.time())
        self.clock = [self.now]
        self.keys = [account_from_seed(os.urandom(32)) for _ in range(accounts)]
        self.net: Devnet = start_devnet(
            fund=[k.address for k in self.keys],
            block_interval=0,
            ledger_params=ledger_params(),
            ledger_clock=lambda: self.clock[0],
        )
        self.w3 = Web3(Web3.HTTPProvider(self.net.eth_server.url, request_kwargs={"timeout": 30}))
        self.client = LedgerClient(self.net.ledger.url)
        self.vault = self.w3.eth.contract(
            address=Web3.to_checksum_address(self.net.vault), abi=load_artifact("BondVault").abi
        )


def test_a_deposit_becomes_the_bond_on_the_ledger_and_a_second_call_sends_nothing(
    tmp_path: Path,
) -> None:
    n = _Net(1)
    try:
        maker = Party.make(0)
        n.client.commit(maker.register_tx(ts=n.now), timeout=30)
        desc = n.net.describe()
        assert desc["bond"] == {"chain": "eth", "vault": n.net.vault, "amount": 0}
        tx = ensure_bond(
            home=tmp_path,
            w3=n.w3,
            account=n.keys[0],
            vault=n.net.vault,
            node_id=maker.id,
            amount=BOND,
        )
        assert tx is not None
        assert not (tmp_path / BOND_TX_FILE).exists()  # the intent is done
        assert n.vault.functions.bonds(maker.id).call() == BOND
        rec = _wait("the bond attested", lambda: _node(n.client, maker.id).get("bond_locked"))
        assert rec == BOND
        assert _node(n.client, maker.id)["importance"] > 0
        nonce = n.w3.eth.get_transaction_count(n.keys[0].address)
        again = ensure_bond(
            home=tmp_path,
            w3=n.w3,
            account=n.keys[0],
            vault=n.net.vault,
            node_id=maker.id,
            amount=BOND,
        )
        assert again is None
        assert n.w3.eth.get_transaction_count(n.keys[0].address) == nonce  # nothing sent
        assert n.vault.functions.bonds(maker.id).call() == BOND
    finally:
        n.net.stop()


def test_a_journaled_deposit_is_resent_as_the_same_bytes_never_a_second_deposit(
    tmp_path: Path,
) -> None:
    n = _Net(1)
    try:
        node = hashlib.sha256(b"journaled").digest()
        acct = n.keys[0]
        # a crash after the intent was written and before it was sent: the journal holds it
        tx = n.vault.functions.lock(node).build_transaction(
            {
                "from": acct.address,
                "value": BOND,
                "nonce": n.w3.eth.get_transaction_count(acct.address),
                "chainId": n.w3.eth.chain_id,
                "gas": 100_000,
            }
        )
        raw = bytes(acct.sign_transaction(tx).raw_transaction)
        write_private_file(tmp_path / BOND_TX_FILE, tx["nonce"].to_bytes(8, "big") + raw)
        n.w3.eth.send_raw_transaction(raw)  # ... and it was in fact sent before the crash
        sent = ensure_bond(
            home=tmp_path, w3=n.w3, account=acct, vault=n.net.vault, node_id=node, amount=BOND
        )
        assert sent is None  # the vault already holds it: nothing more
        assert n.vault.functions.bonds(node).call() == BOND
        # journaled but never sent: the same bytes go out, once
        tx["nonce"] = n.w3.eth.get_transaction_count(acct.address)
        raw = bytes(acct.sign_transaction(tx).raw_transaction)
        write_private_file(tmp_path / BOND_TX_FILE, tx["nonce"].to_bytes(8, "big") + raw)
        sent = ensure_bond(
            home=tmp_path, w3=n.w3, account=acct, vault=n.net.vault, node_id=node, amount=2 * BOND
        )
        assert sent == "0x" + Web3.keccak(raw).hex().removeprefix("0x")
        assert n.vault.functions.bonds(node).call() == 2 * BOND
        # journaled, but its nonce was spent by another tx before it went out: it can never be
        # mined, so the deposit is built anew, once
        tx["nonce"] = n.w3.eth.get_transaction_count(acct.address)
        raw = bytes(acct.sign_transaction(tx).raw_transaction)
        write_private_file(tmp_path / BOND_TX_FILE, tx["nonce"].to_bytes(8, "big") + raw)
        other = acct.sign_transaction(
            {
                "to": acct.address,
                "value": 1,
                "nonce": tx["nonce"],
                "chainId": n.w3.eth.chain_id,
                "gas": 21_000,
                "maxFeePerGas": tx["maxFeePerGas"],
                "maxPriorityFeePerGas": tx["maxPriorityFeePerGas"],
            }
        )
        n.w3.eth.wait_for_transaction_receipt(n.w3.eth.send_raw_transaction(other.raw_transaction))
        sent = ensure_bond(
            home=tmp_path,
            w3=n.w3,
            account=acct,
            vault=n.net.vault,
            node_id=node,
            amount=3 * BOND,
            timeout=2,
        )
        assert sent is not None and sent != "0x" + Web3.keccak(raw).hex().removeprefix("0x")
        assert n.vault.functions.bonds(node).call() == 3 * BOND
        assert not (tmp_path / BOND_TX_FILE).exists()
    finally:
        n.net.stop()


def _leg(s: Party, r: Party, sa: str, ra: str, amount: int, expiry: int, lock_by: int) -> Leg:
    return Leg(
        chain="eth",
        token=None,
        sender=s.id,
        recipient=r.id,
        sender_address=sa,
        recipient_address=ra,
        amount=amount,
        expiry=UnixTime(expiry),
        expiry_time=expiry,
        lock_by=lock_by,
    )


def test_a_bonded_maker_that_does_not_lock_is_slashed_and_the_relayer_moves_its_bond(
    tmp_path: Path,
) -> None:
    n = _Net(3)
    try:
        taker_key, maker_key, relayer_key = n.keys
        hold_keys(taker_key, maker_key)  # the parties prove their accounts in the commit
        taker, maker = Party.make(0), Party.make(1)
        for p in (taker, maker):
            n.client.commit(p.register_tx(ts=n.now), timeout=30)
        ensure_bond(
            home=tmp_path,
            w3=n.w3,
            account=maker_key,
            vault=n.net.vault,
            node_id=maker.id,
            amount=BOND,
        )
        _wait("the bond attested", lambda: _node(n.client, maker.id).get("bond_locked") == BOND)
        importance_before = _node(n.client, maker.id)["importance"]

        now = n.now
        order = with_derived_id(
            SettlementOrder(
                order_id=bytes(16),
                kind=OrderKind.DIRECT,
                payment_hash=hashlib.sha256(os.urandom(32)).digest(),
                legs=(
                    _leg(
                        taker,
                        maker,
                        taker_key.address,
                        maker_key.address,
                        10**17,
                        now + 7_200,
                        now + 600,
                    ),
                    _leg(
                        maker,
                        taker,
                        maker_key.address,
                        taker_key.address,
                        2 * 10**17,
                        now + 3_600,
                        now + 660,
                    ),
                ),
            )
        )
        n.client.commit(commit_tx(order, [taker, maker], taker, ts=now), timeout=30)
        leg = order.legs[0]
        EthereumAdapter(n.w3, taker_key, n.net.htlc).lock(
            HtlcTerms(
                "eth",
                order.payment_hash,
                leg.amount,
                leg.sender_address,
                leg.recipient_address,
                leg.expiry,
            )
        )
        _wait(
            "the taker's lock attested",
            lambda: (
                decode(n.client.abci_query("/order", encode(order.order_id)))["legs"][0]["outcome"]
                == "locked"
            ),
        )
        # the maker never locks leg 1; once lock_by + attest_grace has passed, the evidence
        n.clock[0] = order.legs[1].lock_by + ledger_params().attest_grace + 1
        ev = sign_tx(
            taker.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1), ts=n.clock[0]
        )
        n.client.commit(ev, timeout=30)
        slash = BOND * 500 // 10_000
        rec = _node(n.client, maker.id)
        assert (rec["slashed"], rec["slash_pending"]) == (slash, slash)
        assert rec["importance"] < importance_before
        assert n.vault.functions.bonds(maker.id).call() == BOND  # decided, not yet executed

        sent, nxt = relay_decisions(
            validators=[n.client], w3=n.w3, account=relayer_key, vault=n.net.vault
        )
        assert [(r.kind, r.amount) for r in sent] == [("slash", slash)]
        assert n.vault.functions.bonds(maker.id).call() == BOND - slash
        assert n.w3.eth.get_balance(Web3.to_checksum_address(n.net.foundation)) == slash
        # again: nothing left to relay, nothing sent
        nonce = n.w3.eth.get_transaction_count(relayer_key.address)
        assert relay_decisions(
            validators=[n.client], w3=n.w3, account=relayer_key, vault=n.net.vault, start=nxt
        ) == ([], nxt)
        assert (
            relay_decisions(validators=[n.client], w3=n.w3, account=relayer_key, vault=n.net.vault)[
                0
            ]
            == []
        )
        assert n.w3.eth.get_transaction_count(relayer_key.address) == nonce
        # the lower vault balance is attested: the pending slash is paid off, not counted twice
        _wait(
            "the lower balance attested",
            lambda: _node(n.client, maker.id)["slash_pending"] == 0,
        )
        assert _node(n.client, maker.id)["bond_locked"] == BOND - slash
    finally:
        n.net.stop()


class _Validator:
    """One validator's query face, in process: honest, down, or answering a bad signature."""

    def __init__(self, app: Any, url: str) -> None:
        self.app, self.url = app, url
        self.down = False
        self.lie = False
        self.other = False
        self.hide: list[list[Any]] | None = None

    def abci_query(self, path: str, data: bytes = b"") -> bytes:
        if self.down:
            raise LedgerUnreachable(f"{self.url} is down")
        if self.hide is not None and path == "/decisions":
            return encode(self.hide)  # its own list of decisions
        answer = decode(self.app.query(path, data))
        if self.lie and path == "/decision":
            answer["signature"] = answer["signature"][:40] + bytes(24) + answer["signature"][64:]
        if self.other and path == "/decision":  # another decision, well signed by its key
            answer["amount"] *= 2
            vault = bonds.Vault(
                self.app.params.bond_vault_chain_id,
                bytes.fromhex(self.app.params.bond_vault_address[2:]),
            )
            digest = bonds.slash_digest(
                vault,
                answer["node"],
                answer["amount"],
                bytes.fromhex(answer["recipient"][2:]),
                data and decode(data),
            )
            answer["signature"] = bonds.sign_digest(self.app.vault_signer, digest)
        return encode(answer)


def test_the_relayer_needs_two_thirds_of_the_vaults_power_and_ignores_a_bad_signature() -> None:
    from kofo.settlement.chains.ethereum.contract import deploy
    from kofo.wire.orders import LegOutcome
    from tests.clearance.helpers import make_order
    from tests.clearance.test_bonds import _eth, _secp, _valkey_tx
    from tests.clearance.test_vote_extensions import Validators
    from tests.ethereum.conftest import EmbeddedChain

    chain = EmbeddedChain()
    w3 = chain.w3
    eth_vals = sorted(_eth(_secp(i)) for i in range(4))
    vault_addr = deploy(
        w3,
        "BondVault",
        w3.eth.accounts[0],
        [Web3.to_checksum_address(a) for a in eth_vals],
        [10, 10, 10, 10],
    )
    vault = w3.eth.contract(address=vault_addr, abi=load_artifact("BondVault").abi)
    foundation = "0x" + "ee" * 20
    params = ledger_params(
        bond_vault_chain_id=w3.eth.chain_id,
        bond_vault_address=vault_addr,
        slash_recipient=foundation,
    )
    vals = Validators(params=params)
    for i, a in enumerate(vals.apps):
        a.app.vault_signer = _secp(i)  # each validator signs with its own registered key
    alice, m1, m2 = (Party.make(i) for i in range(3))
    vals.step(
        *(p.register_tx() for p in (alice, m1, m2)), *(_valkey_tx(vals, i, alice) for i in range(4))
    )
    chain.send(vault.functions.lock(m1.id), chain.new_account(10**19), value=BOND)
    for c in vals.chains:
        c.see_bond(m1.id, BOND, w3.eth.block_number)
    order = make_order([alice, m1, m2], t0=vals.time)
    vals.step(commit_tx(order, [alice, m1, m2], alice))
    vals.step()
    for c in vals.chains:
        c.see(order, 0, LegOutcome.LOCKED)
    vals.step()
    vals.step()
    ev = sign_tx(alice.key, FileEvidence(EvidenceKind.LEG_NOT_LOCKED, order.order_id, 1))
    vals.step(ev, time=order.legs[1].lock_by + params.attest_grace + 1)
    slash = BOND * 500 // 10_000
    clients = [_Validator(a.app, f"validator-{i}") for i, a in enumerate(vals.apps)]
    relayer = chain.new_account(10**18)
    clients[2].down, clients[3].lie = True, True  # 20 of 40: not enough
    sent, nxt = relay_decisions(validators=clients, w3=w3, account=relayer, vault=vault_addr)
    assert (sent, nxt) == ([], 0)
    assert vault.functions.bonds(m1.id).call() == BOND
    # the first validator asked describes another amount (well signed): its vote alone is lost
    clients[0].other = True
    assert relay_decisions(validators=clients, w3=w3, account=relayer, vault=vault_addr) == ([], 0)
    # the first validator asked lists no decision, or others than the ledger's: the relayer
    # took its list alone, skipped the slash and stored a start past it (the bond stayed)
    for hidden in ([], [[10**9, b"\xff" * 32]], [[0, b"\xff" * 32], [7, b"\xee" * 32]]):
        clients[0].hide = hidden
        got = relay_decisions(validators=clients, w3=w3, account=relayer, vault=vault_addr)
        assert got == ([], 0), hidden  # still waiting at the slash, nothing skipped
    # 30 of 40 honest (1, 2 and 3; 0's other decision is left out): > 2/3
    clients[2].down, clients[3].lie = False, False
    clients[0].hide = []  # and it still hides every decision: the others list the slash
    sent, nxt = relay_decisions(validators=clients, w3=w3, account=relayer, vault=vault_addr)
    assert [(r.kind, r.amount) for r in sent] == [("slash", slash)] and nxt == 1
    assert vault.functions.bonds(m1.id).call() == BOND - slash
    assert w3.eth.get_balance(Web3.to_checksum_address(foundation)) == slash


def test_the_relayer_moves_the_vault_to_the_ledgers_new_validator_set_then_relays() -> None:
    from kofo.settlement.chains.ethereum.contract import deploy
    from tests.clearance.test_bonds import _eth, _secp, _valkey_tx
    from tests.clearance.test_vote_extensions import Validators
    from tests.ethereum.conftest import EmbeddedChain

    chain = EmbeddedChain()
    w3 = chain.w3
    eth_vals = sorted(_eth(_secp(i)) for i in range(4))
    vault_addr = deploy(
        w3,
        "BondVault",
        w3.eth.accounts[0],
        [Web3.to_checksum_address(a) for a in eth_vals],
        [10, 10, 10, 10],
    )
    vault = w3.eth.contract(address=vault_addr, abi=load_artifact("BondVault").abi)
    params = ledger_params(bond_vault_chain_id=w3.eth.chain_id, bond_vault_address=vault_addr)
    vals = Validators(params=params)
    for i, a in enumerate(vals.apps):
        a.app.vault_signer = _secp(i)
    nodes = [Party.make(20 + i) for i in range(4)]
    vals.step(*(p.register_tx() for p in nodes))
    for i, p in enumerate(nodes):  # each validator bonded through its own node
        for c in vals.chains:
            c.see_bond(p.id, (20 + i) * 10**15, 5)
    vals.step(*(_valkey_tx(vals, i, nodes[i]) for i in range(4)))
    for _ in range(4):
        vals.step()
    app = vals.apps[0].app
    latest = 0
    while True:
        try:
            app.valset_decision(latest + 1)
        except Exception:
            break
        latest += 1
    assert latest >= 1
    decided = app.valset_decision(latest)
    clients = [_Validator(a.app, f"validator-{i}") for i, a in enumerate(vals.apps)]
    relayer = chain.new_account(10**18)
    clients[1].down = clients[2].down = True  # the set the vault holds: 20 of 40 sign
    assert relay_valsets(validators=clients, w3=w3, account=relayer, vault=vault_addr) == []
    assert vault.functions.valset_nonce().call() == 0
    clients[1].down = clients[2].down = False
    sent = relay_valsets(validators=clients, w3=w3, account=relayer, vault=vault_addr)
    assert sent and sent[-1] == latest
    assert vault.functions.valset_nonce().call() == latest
    held = [vault.functions.powers(i).call() for i in range(len(decided["powers"]))]
    assert held == decided["powers"] and sorted(held) == [20, 21, 22, 23]
    assert vault.functions.validators(0).call().lower() == "0x" + decided["validators"][0].hex()
    # again: nothing new, nothing sent
    assert relay_valsets(validators=clients, w3=w3, account=relayer, vault=vault_addr) == []
