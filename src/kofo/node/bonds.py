"""A node's bond in the bond vault, and the relayer of the ledger's bond decisions.

``ensure_bond`` locks a maker's configured bond (``[bond] amount`` wei) in the vault
(``contracts/BondVault.vy``) under its node id. It is idempotent: it reads the vault first and
sends nothing when the bond is already there; otherwise it signs the ``lock`` transaction,
writes its nonce and signed bytes to the home (``bond.tx``, 0600) **before** sending them, and a
restart sends those same bytes again (one intent is never two deposits: the same nonce and
hash). A journaled deposit is replaced only once it reverted or its nonce was spent by another
transaction; while it may still be pending, nothing else is sent. The
ledger then counts the bond once its validators' observers see it in the vault and attest it
(docs/clearance.md, Bonds); nobody declares it.

``relay_decisions`` executes the ledger's slash and release decisions on the vault. Anyone may:
the vault checks that validators holding more than two thirds of its power signed the
decision's digest. The relayer pages through the decisions (query ``/decisions``), asks each
validator for its own signature of each one (``/decision``: a validator signs only what its own
committed state decided), checks each signature locally, and sends ``slash`` / ``release``
with the aligned signatures once they reach the vault's threshold. A decision the vault has
executed is skipped (``executed(id)``), so running it again sends nothing new. Before the
decisions it moves the vault to the validator sets the ledger decided since
(``relay_valsets``: ``/valset_decision`` nonce by nonce, each signed by the set the vault holds).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak
from web3 import Web3
from web3.exceptions import TimeExhausted, TransactionNotFound, Web3Exception

from kofo.clearance import bonds as vault_digests
from kofo.errors import ChainError, InvalidInput, KofoError
from kofo.node.ledger_client import LedgerError
from kofo.private_files import read_private_file, write_private_file
from kofo.settlement.chains.ethereum.contract import load_artifact
from kofo.wire.codec import decode, encode

log = logging.getLogger("kofo.node.bonds")

BOND_TX_FILE = "bond.tx"
MAX_TX_BYTES = 1 << 16
LOCK_GAS = 100_000
"""Gas for ``lock`` (one storage write and an event: ~50k), with room to spare; unused gas is
not charged."""
DECISIONS_PAGE = 256
"""Decision ids per ``/decisions`` answer (the ledger's page size)."""
RELAY_GAS = 1_000_000
"""Gas for ``slash`` / ``release``: an ecrecover per signing validator (≤ 128) and a payment."""


class BondError(KofoError):
    code = "bond_failed"


class Nonces(Protocol):
    """What a deposit needs of the wallet's nonce store (the Ethereum adapter's
    ``NonceManager``), so the bond's transaction never takes a nonce the swap engine holds."""

    def allocate(self) -> int: ...

    def record(self, nonce: int, raw: bytes) -> None: ...


class ValidatorQuery(Protocol):
    """What the relayer needs of a validator: its ABCI query (a :class:`LedgerClient`)."""

    url: str

    def abci_query(self, path: str, data: bytes = b"") -> bytes: ...


def _vault(w3: Web3, address: str) -> Any:
    if not Web3.is_address(address):
        raise InvalidInput(f"bond vault address {address!r} is not an Ethereum address")
    return w3.eth.contract(
        address=Web3.to_checksum_address(address), abi=load_artifact("BondVault").abi
    )


def _send_raw(w3: Web3, raw: bytes, timeout: float) -> str:
    """Send signed bytes (again, after a restart) and wait for their receipt; a tx the node
    already knows or mined is not an error."""
    tx_hash = "0x" + keccak(raw).hex()
    try:
        w3.eth.get_transaction_receipt(tx_hash)  # type: ignore[arg-type]
        mined = True
    except TransactionNotFound:
        mined = False
    if not mined:
        try:
            w3.eth.send_raw_transaction(raw)
        except (ValueError, Web3Exception) as exc:  # "already known", or its nonce spent
            log.info("resending bond tx %s: %s", tx_hash, exc)
    try:
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=timeout)  # type: ignore[arg-type]
    except TimeExhausted:
        raise BondError(f"bond vault tx {tx_hash} was not mined within {timeout:g} s") from None
    if receipt["status"] != 1:
        raise BondError(f"bond vault tx {tx_hash} reverted")
    return tx_hash


def ensure_bond(
    *,
    home: Path,
    w3: Web3,
    account: LocalAccount,
    vault: str,
    node_id: bytes,
    amount: int,
    timeout: float = 120.0,
    nonces: Nonces | None = None,
) -> str | None:
    """Make the vault hold at least ``amount`` wei under ``node_id``; returns the hash of the
    deposit this call sent (or re-sent), None when the vault already held enough. ``nonces``:
    the wallet's nonce store when other code (the swap engine) signs with the same account;
    the deposit's nonce is then reserved there and its bytes recorded."""
    if amount < 0 or len(node_id) != 32:
        raise InvalidInput("a bond is a non-negative amount under a 32-byte node id")
    contract = _vault(w3, vault)
    path = home / BOND_TX_FILE
    locked = int(contract.functions.bonds(node_id).call())
    if locked >= amount:
        path.unlink(missing_ok=True)  # an old intent already carried out
        return None
    if path.exists():  # an intent journaled by an earlier run: the same bytes again
        journal = read_private_file(path, max_size=MAX_TX_BYTES)
        nonce, raw = int.from_bytes(journal[:8], "big"), journal[8:]
        try:
            tx_hash = _send_raw(w3, raw, timeout)
        except (BondError, ValueError, ChainError) as exc:
            mined = _receipt(w3, raw)
            if mined is None and w3.eth.get_transaction_count(account.address) <= nonce:
                # maybe still pending: sending another deposit now could pay twice
                raise BondError(
                    f"the journaled bond deposit is not mined yet ({exc}); try again later"
                ) from None
            # reverted, or dropped for good (its nonce taken by another tx): build anew
            log.warning("the journaled bond deposit did not go through (%s); sending anew", exc)
            path.unlink(missing_ok=True)
            return ensure_bond(
                home=home,
                w3=w3,
                account=account,
                vault=vault,
                node_id=node_id,
                amount=amount,
                timeout=timeout,
                nonces=nonces,
            )
        path.unlink(missing_ok=True)
        return tx_hash
    if nonces is not None:
        nonce = nonces.allocate()
    else:
        nonce = w3.eth.get_transaction_count(account.address, "pending")
    tx = contract.functions.lock(node_id).build_transaction(
        {
            "from": account.address,
            "value": amount - locked,  # type: ignore[typeddict-item]
            "nonce": nonce,
            "chainId": w3.eth.chain_id,
            "gas": LOCK_GAS,
        }
    )
    raw = bytes(account.sign_transaction(tx).raw_transaction)
    if nonces is not None:
        nonces.record(nonce, raw)
    write_private_file(path, nonce.to_bytes(8, "big") + raw)  # the intent, before its effect
    tx_hash = _send_raw(w3, raw, timeout)
    path.unlink(missing_ok=True)
    log.info(
        "bond: locked %d wei under node %s (tx %s)", amount - locked, node_id.hex()[:16], tx_hash
    )
    return tx_hash


def vault_bond(w3: Web3, vault: str, node_id: bytes) -> int:
    """Wei the bond vault holds under ``node_id`` now."""
    return int(_vault(w3, vault).functions.bonds(node_id).call())


def _receipt(w3: Web3, raw: bytes) -> Any:
    try:
        return w3.eth.get_transaction_receipt("0x" + keccak(raw).hex())  # type: ignore[arg-type]
    except TransactionNotFound:
        return None


@dataclass(frozen=True, slots=True)
class Relayed:
    decision: bytes
    kind: str
    amount: int
    tx_hash: str


def relay_decisions(
    *,
    validators: Sequence[ValidatorQuery],
    w3: Web3,
    account: LocalAccount,
    vault: str,
    start: int = 0,
    timeout: float = 120.0,
) -> tuple[list[Relayed], int]:
    """Execute on the vault every bond decision from number ``start`` that the vault has not
    executed and that enough validators signed. Returns what was sent and the number to start
    from next time (the first decision still waiting for signatures, or the end)."""
    if not validators:
        raise InvalidInput("relay_decisions needs at least one validator's RPC")
    # the vault's set first: decisions are signed by the ledger's current validators
    relay_valsets(validators=validators, w3=w3, account=account, vault=vault, timeout=timeout)
    contract = _vault(w3, vault)
    vault_vals = [bytes.fromhex(a[2:]) for a in _valset(contract)]
    powers = [int(contract.functions.powers(i).call()) for i in range(len(vault_vals))]
    total = int(contract.functions.total_power().call())
    sent: list[Relayed] = []
    nxt, first_waiting = start, None
    for _ in range(MAX_DECISION_PAGES):
        candidates, full = _decision_page(validators, nxt)
        for seq in sorted(candidates):
            done = False
            for did in candidates[seq]:
                if contract.functions.executed(did).call():
                    done = True
                    continue
                relayed = _relay_one(
                    validators, w3, account, contract, did, vault_vals, powers, total, timeout
                )
                if relayed is not None:
                    sent.append(relayed)
                    done = True
            if not done and first_waiting is None:
                first_waiting = seq  # not signed enough yet: start there next time
        if not candidates:
            break
        nxt = max(candidates) + 1
        if not full:
            break
    return sent, nxt if first_waiting is None else first_waiting


MAX_DECISION_PAGES = 16
"""Pages of ``/decisions`` one :func:`relay_decisions` call walks (4,096 decisions); the next
call continues from the number it returns, so a validator answering full pages forever cannot
keep the relayer in one call."""


def _decision_page(
    validators: Sequence[ValidatorQuery], start: int
) -> tuple[dict[int, list[bytes]], bool]:
    """Decision ids from number ``start`` as every validator lists them: ``{seq: [ids]}`` and
    whether any list was a full page. The list is consensus state, yet one validator's answer
    is never taken alone: a hostile or stale one that lists nothing, numbers past the ledger's
    or ids of its own must not make the relayer skip a decision (a slash whose bond then stays
    in the vault). A list that is not numbered ``start, start + 1, ...`` is ignored; an id no
    validator signed only costs its queries (it is never sent)."""
    candidates: dict[int, list[bytes]] = {}
    full = False
    for client in validators:
        try:
            page = [
                (int(seq), bytes(did))
                for seq, did in decode(client.abci_query("/decisions", encode(start)))
            ]
        except (LedgerError, KeyError, TypeError, ValueError, KofoError) as exc:
            log.info("decisions from %s: %s", client.url, exc)
            continue
        if len(page) > DECISIONS_PAGE or any(
            seq != start + i or len(did) != 32 for i, (seq, did) in enumerate(page)
        ):
            log.warning("decisions from %s: not the ledger's numbering, ignored", client.url)
            continue
        full = full or len(page) == DECISIONS_PAGE
        for seq, did in page:
            ids = candidates.setdefault(seq, [])
            if did not in ids:
                ids.append(did)
    return candidates, full


def relay_valsets(
    *,
    validators: Sequence[ValidatorQuery],
    w3: Web3,
    account: LocalAccount,
    vault: str,
    timeout: float = 120.0,
) -> list[int]:
    """Move the vault to every validator set the ledger decided after the one it holds
    (``update_valset``, nonce by nonce), each signed by > 2/3 of the power of the set the vault
    holds then. Returns the nonces sent; stops at the first one short of signatures."""
    contract = _vault(w3, vault)
    chain = vault_digests.Vault(int(w3.eth.chain_id), bytes.fromhex(contract.address[2:]))
    sent: list[int] = []
    while True:
        nonce = int(contract.functions.valset_nonce().call()) + 1
        vault_vals = [bytes.fromhex(a[2:]) for a in _valset(contract)]
        powers = [int(contract.functions.powers(i).call()) for i in range(len(vault_vals))]
        total = int(contract.functions.total_power().call())
        groups: dict[tuple[tuple[bytes, ...], tuple[int, ...], int], dict[bytes, bytes]] = {}
        for client in validators:
            try:
                answer = dict(decode(client.abci_query("/valset_decision", encode(nonce))))
                vals = tuple(bytes(v) for v in answer["validators"])
                pows = tuple(int(p) for p in answer["powers"])
                unkeyed = int(answer["unkeyed_power"])
                digest = vault_digests.valset_digest(chain, nonce, vals, pows, unkeyed)
                signer = vault_digests.recover_address(bytes(answer["signature"]), digest)
            except (LedgerError, KeyError, TypeError, ValueError, KofoError) as exc:
                log.info("valset %d from %s: %s", nonce, client.url, exc)
                continue
            if signer is not None and signer in vault_vals:
                groups.setdefault((vals, pows, unkeyed), {})[signer] = bytes(answer["signature"])
        if not groups:
            return sent

        weight = dict(zip(vault_vals, powers, strict=True))
        (vals, pows, unkeyed), signatures = max(
            groups.items(), key=lambda kv: sum(weight[a] for a in kv[1])
        )
        signed = sum(weight[a] for a in signatures)
        if 3 * signed <= 2 * total:
            log.info("valset %d: signatures of %d/%d power so far", nonce, signed, total)
            return sent
        v, r, s = vault_digests.signature_slots(vault_vals, signatures)
        tx = contract.functions.update_valset(
            nonce, [Web3.to_checksum_address(a) for a in vals], list(pows), unkeyed, v, r, s
        ).build_transaction(
            {
                "from": account.address,
                "nonce": w3.eth.get_transaction_count(account.address, "pending"),
                "chainId": w3.eth.chain_id,
                "gas": RELAY_GAS,
            }
        )
        _send_raw(w3, bytes(account.sign_transaction(tx).raw_transaction), timeout)
        log.info("relayed validator set %d to the vault", nonce)
        sent.append(nonce)


def _valset(contract: Any) -> list[str]:
    out: list[str] = []
    for i in range(128):  # the vault's MAX_VALIDATORS
        try:
            out.append(str(contract.functions.validators(i).call()))
        except Exception:  # past the end of the dynamic array: the call reverts
            break
    return [a.lower() for a in out]


def _relay_one(
    validators: Sequence[ValidatorQuery],
    w3: Web3,
    account: LocalAccount,
    contract: Any,
    did: bytes,
    vault_vals: list[bytes],
    powers: list[int],
    total: int,
    timeout: float,
) -> Relayed | None:
    # Each answer's digest is rebuilt here from its own fields (the vault rebuilds it the same
    # way), and signatures are grouped by what they sign: a validator that describes another
    # decision, or signs badly, only loses its own vote (and never costs a reverted tx).
    vault = vault_digests.Vault(int(w3.eth.chain_id), bytes.fromhex(contract.address[2:]))
    groups: dict[tuple[str, bytes, int, str], dict[bytes, bytes]] = {}
    for client in validators:
        try:
            answer = dict(decode(client.abci_query("/decision", encode(did))))
            kind, node, amount = str(answer["kind"]), bytes(answer["node"]), int(answer["amount"])
            recipient, sig = str(answer["recipient"]), bytes(answer["signature"])
            build = (
                vault_digests.release_digest if kind == "release" else vault_digests.slash_digest
            )
            digest = build(vault, node, amount, bytes.fromhex(recipient.removeprefix("0x")), did)
            signer = vault_digests.recover_address(sig, digest)
        except (LedgerError, KeyError, TypeError, ValueError, KofoError) as exc:
            log.info("decision %s from %s: %s", did.hex()[:16], client.url, exc)
            continue
        if signer is not None and signer in vault_vals:
            groups.setdefault((kind, node, amount, recipient), {})[signer] = sig
    if not groups:
        return None

    def power(sigs: dict[bytes, bytes]) -> int:
        return sum(p for v, p in zip(vault_vals, powers, strict=True) if v in sigs)

    (kind, node, amount, recipient_hex), signatures = max(
        groups.items(), key=lambda kv: power(kv[1])
    )
    signed = power(signatures)
    if 3 * signed <= 2 * total:
        log.info("decision %s: signatures of %d/%d power so far", did.hex()[:16], signed, total)
        return None
    v, r, s = vault_digests.signature_slots(vault_vals, signatures)
    if int(contract.functions.bonds(node).call()) < amount:
        log.warning("decision %s: the vault holds less than %d for the node", did.hex(), amount)
        return None
    recipient = Web3.to_checksum_address(recipient_hex)
    fn = contract.functions.release if kind == "release" else contract.functions.slash
    tx = fn(node, amount, recipient, did, v, r, s).build_transaction(
        {
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            "chainId": w3.eth.chain_id,
            "gas": RELAY_GAS,
        }
    )
    raw = bytes(account.sign_transaction(tx).raw_transaction)
    tx_hash = _send_raw(w3, raw, timeout)
    log.info("relayed %s decision %s (%d wei) in %s", kind, did.hex()[:16], amount, tx_hash)
    return Relayed(did, kind, amount, tx_hash)
