"""Gas used by HTLC.vy (v2) per operation, as JSON: on the embedded EVM (py-evm, eth-tester,
Prague rules) by default, or on a JSON-RPC node holding an unlocked funded account (geth --dev):

    python -m bench.gas
    python -m bench.gas --rpc http://127.0.0.1:8545

Every figure is a receipt's gasUsed (after the storage refund), median of 5, for a fresh swap
(its id never seen before). The parties are not fresh: the sender already holds ETH and tokens,
each recipient already holds tokens, and the contract already holds other swaps' funds, so
token balance slots are written nonzero -> nonzero (the common case on a live chain: a
first-ever token balance costs a further ~17k for the token's own storage, which no HTLC design
can avoid). The approve before a token lock is not counted; it approves exactly the amount, so
transferFrom clears the allowance (a refund). Deterministic preimages make calldata, and so the
figures, reproducible.

Three states of the sender's storage slot are measured:

- ``steady``: the sender swapped before, its slot holds FREE (the common case; the headline);
- ``first_kept``: a new sender's first lock into a reusable slot (the slot is created, and its
  payout keeps it for the next swap, so no storage refund);
- ``first_one_shot``: a new sender's first lock into a one-shot slot, cleared on payout (the
  adapter's choice for a wallet's first lock).

Batches: ``lock_many`` of 10 swaps (to 10 recipients) and ``redeem_many`` of the 10 by a third
party (a watchtower or the maker), per swap, steady state.

The peer figures are read from ``../shared/peers/gas.json`` beside the checkout (the main
checkout's, from a git worktree); ``KOFO_PEER_GAS`` overrides the path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from kofo.settlement.chains.ethereum.contract import deploy, load_artifact

ZERO_ADDRESS = "0x" + "00" * 20
ETH_AMOUNT = 10**17  # 0.1 ETH
TOKEN_AMOUNT = 250 * 10**6  # 250 units of a 6-decimal token (USDC-like)
LIFETIME = 86_400  # one day: a realistic expiry; only its byte length matters for calldata
RUNS = 5
BATCH = 10
ONE_SHOT = 2**31
SINGLE_GOAL = 0.85
BATCH_GOAL = 0.5
REPO = Path(__file__).resolve().parents[1]


def peer_file() -> Path:
    """``KOFO_PEER_GAS``, else ``<checkout>/../shared/peers/gas.json``; from a git worktree
    (whose ``.git`` is a file naming the main repository's), the main checkout's."""
    override = os.environ.get("KOFO_PEER_GAS")
    if override:
        return Path(override)
    candidates = [REPO.parent / "shared" / "peers" / "gas.json"]
    dotgit = REPO / ".git"
    if dotgit.is_file():
        gitdir = Path(dotgit.read_text().split("gitdir:", 1)[-1].strip())
        # <main>/.git/worktrees/<name> -> <main>
        if gitdir.parent.name == "worktrees":
            candidates.append(gitdir.parents[2].parent / "shared" / "peers" / "gas.json")
    return next((path for path in candidates if path.exists()), candidates[0])


class Chain:
    """Locally signed transactions on any backend; accounts funded from the node's first."""

    def __init__(self, rpc: str | None) -> None:
        if rpc is None:
            from eth_tester import EthereumTester, PyEVMBackend
            from web3 import EthereumTesterProvider

            self.tester: Any = EthereumTester(PyEVMBackend())
            self.w3 = Web3(EthereumTesterProvider(self.tester))
            self.name = "embedded py-evm (eth-tester), Prague rules"
        else:
            self.tester = None
            self.w3 = Web3(Web3.HTTPProvider(rpc, request_kwargs={"timeout": 60}))
            self.name = f"JSON-RPC node {self.w3.client_version} at {rpc}"
        self.faucet = self.w3.eth.accounts[0]
        self.chain_id = self.w3.eth.chain_id

    def account(self, wei: int = 10**20) -> LocalAccount:
        acct: LocalAccount = Account.create()
        tx = self.w3.eth.send_transaction({"from": self.faucet, "to": acct.address, "value": wei})
        self.w3.eth.wait_for_transaction_receipt(tx, timeout=60)
        return acct

    def send(self, call: Any, by: LocalAccount, value: int = 0) -> int:
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0)
        tx = call.build_transaction(
            {
                "from": by.address,
                "value": value,
                "nonce": self.w3.eth.get_transaction_count(by.address, "pending"),
                "chainId": self.chain_id,
                "maxPriorityFeePerGas": 10**9,
                "maxFeePerGas": 2 * base + 10**9,
            }
        )
        signed = by.sign_transaction(tx)
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
        assert receipt["status"] == 1, receipt
        return int(receipt["gasUsed"])

    def now(self) -> int:
        return int(self.w3.eth.get_block("latest")["timestamp"])


Terms = dict[str, Any]


def _word(party: str, t: Terms) -> int:
    """The packed argument: party << 96 | expiry << 32 | slot (see docs/ethereum-htlc.md)."""
    return int(party, 16) << 96 | t["expiry"] << 32 | t["slot"]


class Bench:
    def __init__(self, chain: Chain) -> None:
        self.chain = chain
        w3 = chain.w3
        deployer = chain.account()
        self.sender = chain.account()
        self.recipients = [chain.account(10**18) for _ in range(BATCH)]
        self.recipient = self.recipients[0]
        self.watchtower = chain.account(10**18)
        self.htlc = w3.eth.contract(
            address=deploy(w3, "HTLC", deployer), abi=load_artifact("HTLC").abi
        )
        self.token = w3.eth.contract(
            address=deploy(w3, "TestToken", deployer, "USD", "USD", 6),
            abi=load_artifact("TestToken").abi,
        )
        chain.send(self.token.functions.mint(self.sender.address, 10**15), self.sender)
        for r in self.recipients:
            chain.send(self.token.functions.mint(r.address, 10**6), r)
        self._n = 0
        # Other swaps' funds already in the contract (locked by a third party, left alone).
        self.lock(ZERO_ADDRESS, self.watchtower, ONE_SHOT - 1)
        chain.send(self.token.functions.mint(self.watchtower.address, 10**12), self.watchtower)
        self.lock(self.token.address, self.watchtower, ONE_SHOT - 2)

    def terms(self, token: str, sender: LocalAccount, slot: int, recipient: int = 0) -> Terms:
        self._n += 1
        preimage = hashlib.sha256(b"kofo bench %d" % self._n).digest()
        return {
            "preimage": preimage,
            "payment_hash": hashlib.sha256(preimage).digest(),
            "token": token,
            "sender": sender.address,
            "recipient": self.recipients[recipient].address,
            "amount": ETH_AMOUNT if token == ZERO_ADDRESS else TOKEN_AMOUNT,
            "expiry": self.chain.now() + LIFETIME,
            "slot": slot,
        }

    def approve(self, by: LocalAccount, amount: int) -> None:
        self.chain.send(self.token.functions.approve(self.htlc.address, amount), by)

    def lock(self, token: str, sender: LocalAccount, slot: int) -> tuple[int, Terms]:
        t = self.terms(token, sender, slot)
        f = self.htlc.functions
        if token == ZERO_ADDRESS:
            call = f.lock(t["payment_hash"], _word(t["recipient"], t))
            return self.chain.send(call, sender, value=t["amount"]), t
        self.approve(sender, t["amount"])
        call = f.lock_token(token, t["amount"], t["payment_hash"], _word(t["recipient"], t))
        return self.chain.send(call, sender), t

    @staticmethod
    def _args(t: Terms, secret: bytes) -> list[Any]:
        return [secret, t["token"], t["amount"], _word(t["sender"], t), t["recipient"]]

    def redeem(self, t: Terms, by: LocalAccount) -> int:
        args = self._args(t, t["preimage"])
        if by.address == t["recipient"]:
            args = args[:-1]  # the recipient redeems its own swap: msg.sender, as the adapter does
        return self.chain.send(self.htlc.functions.redeem(*args), by)

    def lock_many(self, token: str, slots: list[int]) -> tuple[int, list[Terms]]:
        items = [self.terms(token, self.sender, slot, i) for i, slot in enumerate(slots)]
        rows = [(t["payment_hash"], token, t["amount"], _word(t["recipient"], t)) for t in items]
        total = sum(t["amount"] for t in items)
        value = total if token == ZERO_ADDRESS else 0
        if token != ZERO_ADDRESS:
            self.approve(self.sender, total)
        return self.chain.send(self.htlc.functions.lock_many(rows), self.sender, value), items

    def redeem_many(self, items: list[Terms], by: LocalAccount) -> int:
        rows = [tuple(self._args(t, t["preimage"])) for t in items]
        return self.chain.send(self.htlc.functions.redeem_many(rows), by)


def measure(rpc: str | None = None) -> dict[str, int]:
    bench = Bench(Chain(rpc))
    runs: dict[str, list[int]] = {}

    def record(key: str, gas: int) -> None:
        runs.setdefault(key, []).append(gas)

    assets = (("eth", ZERO_ADDRESS), ("erc20", bench.token.address))
    # Warm-up: the sender's kept slots 0..BATCH-1 are created once, then settled (FREE).
    _, items = bench.lock_many(ZERO_ADDRESS, list(range(BATCH)))
    bench.redeem_many(items, bench.watchtower)
    for _ in range(RUNS):
        for asset, token in assets:
            gas, t = bench.lock(token, bench.sender, 0)
            record(f"lock_{asset}", gas)
            record(f"redeem_{asset}", bench.redeem(t, bench.recipient))
            gas, t = bench.lock(token, bench.sender, 0)
            record(f"redeem_{asset}_by_watchtower", bench.redeem(t, bench.watchtower))
            for state, slot in (("first_kept", 0), ("first_one_shot", ONE_SHOT)):
                newcomer = bench.chain.account()
                if token != ZERO_ADDRESS:
                    bench.chain.send(bench.token.functions.mint(newcomer.address, 10**12), newcomer)
                gas, t = bench.lock(token, newcomer, slot)
                record(f"lock_{asset}_{state}", gas)
                record(f"redeem_{asset}_{state}", bench.redeem(t, bench.recipient))
            gas, items = bench.lock_many(token, list(range(BATCH)))
            record(f"lock_many_{asset}_{BATCH}", gas)
            record(f"redeem_many_{asset}_{BATCH}", bench.redeem_many(items, bench.watchtower))
    out = {key: int(statistics.median(values)) for key, values in runs.items()}
    for asset, _ in assets:
        out[f"lock_redeem_{asset}"] = out[f"lock_{asset}"] + out[f"redeem_{asset}"]
        for state in ("first_kept", "first_one_shot"):
            out[f"lock_redeem_{asset}_{state}"] = (
                out[f"lock_{asset}_{state}"] + out[f"redeem_{asset}_{state}"]
            )
        out[f"batch_{BATCH}_per_swap_{asset}"] = (
            out[f"lock_many_{asset}_{BATCH}"] + out[f"redeem_many_{asset}_{BATCH}"]
        ) // BATCH
    return out


_OPS = {"lock": "lock", "claim": "redeem", "redeem": "redeem", "withdraw": "redeem"}


def _peer_totals(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """lock+redeem per peer contract and asset, from rows of (contract, operation, gas).

    The peers name their claim step differently (claim, withdraw, redeem); all count as redeem.
    Rows may also give an asset ("eth"/"erc20"); without one, a "token"/"erc20" in the contract
    or operation name marks an ERC-20 row.
    """
    parts: dict[tuple[str, str], dict[str, int]] = {}
    for row in rows:
        contract = str(row.get("contract") or row.get("name") or row.get("peer") or "?")
        operation = str(row.get("operation") or row.get("op") or "").lower()
        gas = row.get("gas", row.get("gas_used", row.get("gasUsed")))
        if not isinstance(gas, int):
            continue
        label = f"{contract} {operation}".lower()
        asset = str(
            row.get("asset") or ("erc20" if "erc20" in label or "token" in label else "eth")
        )
        asset = "erc20" if asset.lower() in {"erc20", "erc-20", "token"} else "eth"
        for word, op in _OPS.items():
            if word in operation:
                parts.setdefault((contract, asset), {})[op] = gas
                break
    totals: dict[str, dict[str, int]] = {}
    for (contract, asset), ops in parts.items():
        if {"lock", "redeem"} <= ops.keys():
            totals.setdefault(asset, {})[contract] = ops["lock"] + ops["redeem"]
    return totals


def compare(ours: dict[str, int], path: Path) -> dict[str, Any]:
    try:
        peers = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"source": str(path), "status": f"unreadable: {exc}"}
    rows = peers.get("rows") or [] if isinstance(peers, dict) else peers
    totals = _peer_totals(rows)
    if not totals:
        return {"source": str(path), "status": "no peer rows; nothing to compare"}
    result: dict[str, Any] = {
        "source": str(path),
        "goal": f"single <= {SINGLE_GOAL} x, first swap <= 1 x, batch per swap <= "
        f"{BATCH_GOAL} x the cheapest peer's single lock+redeem",
    }
    for asset, by_contract in sorted(totals.items()):
        cheapest = min(by_contract, key=by_contract.__getitem__)
        peer = by_contract[cheapest]
        single = ours[f"lock_redeem_{asset}"] / peer
        first = ours[f"lock_redeem_{asset}_first_one_shot"] / peer
        first_kept = ours[f"lock_redeem_{asset}_first_kept"] / peer
        batch = ours[f"batch_{BATCH}_per_swap_{asset}"] / peer
        result[asset] = {
            "peers_lock_redeem": by_contract,
            "cheapest": cheapest,
            "ratio_single": round(single, 3),
            "ratio_first_swap": round(first, 3),
            "ratio_first_swap_kept_slot": round(first_kept, 3),
            f"ratio_batch_{BATCH}_per_swap": round(batch, 3),
            "meets_goal": single <= SINGLE_GOAL and first <= 1 and batch <= BATCH_GOAL,
        }
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rpc", help="a JSON-RPC node with an unlocked funded account")
    args = parser.parse_args(argv)
    ours = measure(args.rpc)
    report = {
        "chain": args.rpc or "embedded py-evm (eth-tester), Prague rules",
        "unit": "gas (receipt gasUsed, after refunds)",
        "conditions": {
            "swap": f"fresh swap id per measurement; median of {RUNS}",
            "slot": "steady: the sender's slot holds FREE from an earlier swap (see the doc)",
            "sender": "holds ETH and tokens already",
            "recipient": "holds tokens already; redeems its own swap (recipient left out: "
            "msg.sender) unless 'by_watchtower' (recipient named)",
            "contract": "already holds other swaps' ETH and tokens",
            "erc20_lock": "excludes the approve transaction; approve is exactly the amount",
            "batch": f"lock_many of {BATCH} (10 recipients) + redeem_many by a third party",
            "eth_amount_wei": ETH_AMOUNT,
            "token_amount": TOKEN_AMOUNT,
        },
        "gas": ours,
        "peers": compare(ours, peer_file()),
    }
    json.dump(report, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
