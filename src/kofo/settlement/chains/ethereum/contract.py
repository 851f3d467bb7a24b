"""The HTLC contract and its test tokens as compiled artifacts (ABI + bytecode).

Nodes load the committed artifacts from ``artifacts/*.json`` and never need the Vyper compiler.
In a checkout, :func:`compile_contract` compiles ``contracts/`` afresh; a test checks it gives
byte-identical output, and ``python -m kofo.settlement.chains.ethereum.contract --write``
regenerates the committed files after a contract change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import Web3

from kofo.errors import ChainError, ConfigError, InvalidInput

COMPILER = "vyper 0.4.3"
"""The one compiler version the artifacts come from (pinned in pyproject and each pragma)."""

ARTIFACTS_DIR = Path(__file__).resolve().parent / "artifacts"

# src/kofo/settlement/chains/ethereum/contract.py -> the repository root, six levels up.
REPO_ROOT = Path(__file__).resolve().parents[5]
CONTRACTS_DIR = REPO_ROOT / "contracts"

SOURCES: dict[str, str] = {
    "HTLC": "contracts/HTLC.vy",
    "BondVault": "contracts/BondVault.vy",
    "TestToken": "contracts/test/TestToken.vy",
    "NoBoolToken": "contracts/test/NoBoolToken.vy",
    "FeeToken": "contracts/test/FeeToken.vy",
    "FeeOnTopToken": "contracts/test/FeeOnTopToken.vy",
    "Reentrant": "contracts/test/Reentrant.vy",
}
"""Every contract with a committed artifact, by name, with its source path from the repo root."""

DEPLOY_GAS_MARGIN = 1.2
"""Estimates can fall short when the node's view moves between estimate and inclusion; 20 %
over the estimate is a cap, not a cost (unused gas is not charged)."""


@dataclass(frozen=True, slots=True)
class Artifact:
    """One compiled contract: what is needed to deploy it and talk to it."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: bytes
    bytecode_runtime: bytes
    source_sha256: str

    def to_json(self) -> str:
        body = {
            "contractName": self.name,
            "compiler": COMPILER,
            "source": SOURCES[self.name],
            "source_sha256": self.source_sha256,
            "abi": self.abi,
            "bytecode": "0x" + self.bytecode.hex(),
            "bytecode_runtime": "0x" + self.bytecode_runtime.hex(),
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Artifact:
        body = json.loads(text)
        return cls(
            name=body["contractName"],
            abi=body["abi"],
            bytecode=bytes.fromhex(body["bytecode"].removeprefix("0x")),
            bytecode_runtime=bytes.fromhex(body["bytecode_runtime"].removeprefix("0x")),
            source_sha256=body["source_sha256"],
        )


def _check_name(name: str) -> None:
    if name not in SOURCES:
        raise InvalidInput(f"contract name must be one of {sorted(SOURCES)}, got {name!r}")


def artifact_path(name: str) -> Path:
    _check_name(name)
    return ARTIFACTS_DIR / f"{name}.json"


def load_artifact(name: str) -> Artifact:
    """The committed artifact for ``name`` (no compiler needed)."""
    path = artifact_path(name)
    try:
        return Artifact.from_json(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"artifact for contract {name!r} missing at {path}") from exc


def compile_contract(name: str) -> Artifact:
    """Compile ``name`` from ``contracts/`` in this checkout."""
    _check_name(name)
    relative = SOURCES[name]
    path = REPO_ROOT / relative
    try:
        source = path.read_text()
    except FileNotFoundError as exc:
        raise ConfigError(
            f"contract source {relative!r} not found under {REPO_ROOT}; compiling needs a checkout"
        ) from exc
    import vyper  # deferred: nodes only load artifacts and should not pay for the compiler

    # The path given to the compiler is the repo-relative one so the output does not depend on
    # where the checkout lives.
    out = vyper.compile_code(
        source,
        contract_path=relative,
        output_formats=["abi", "bytecode", "bytecode_runtime"],
    )
    return Artifact(
        name=name,
        abi=out["abi"],
        bytecode=bytes.fromhex(out["bytecode"].removeprefix("0x")),
        bytecode_runtime=bytes.fromhex(out["bytecode_runtime"].removeprefix("0x")),
        source_sha256=hashlib.sha256(source.encode()).hexdigest(),
    )


def write_artifacts(names: Sequence[str] = tuple(SOURCES)) -> list[Path]:
    """Recompile ``names`` and overwrite their committed artifacts."""
    ARTIFACTS_DIR.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        path = artifact_path(name)
        path.write_text(compile_contract(name).to_json())
        written.append(path)
    return written


def deploy(w3: Web3, name: str, sender: LocalAccount | str, *args: Any) -> ChecksumAddress:
    """Deploy the committed artifact ``name`` with constructor ``args``; return its address.

    ``sender`` is a local account (signed here, EIP-1559) or the address of an account the node
    holds unlocked (a dev or tester account).
    """
    artifact = load_artifact(name)
    factory = w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
    constructor = factory.constructor(*args)
    if isinstance(sender, str):
        tx_hash = constructor.transact({"from": Web3.to_checksum_address(sender)})
    else:
        tx = constructor.build_transaction(
            {
                "from": sender.address,
                "nonce": w3.eth.get_transaction_count(sender.address, "pending"),
                "chainId": w3.eth.chain_id,
            }
        )
        tx["gas"] = int(tx["gas"] * DEPLOY_GAS_MARGIN)
        signed = sender.sign_transaction(tx)
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    address = receipt["contractAddress"]
    if receipt["status"] != 1 or address is None:
        raise ChainError(f"deploying contract {name!r} failed in tx {tx_hash.hex()}")
    return Web3.to_checksum_address(address)


def _main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kofo.settlement.chains.ethereum.contract",
        description="Compile the KOFO contracts and compare with (or rewrite) the artifacts.",
    )
    parser.add_argument("--write", action="store_true", help="rewrite the committed artifacts")
    parser.add_argument("names", nargs="*", default=list(SOURCES), help="contract names")
    opts = parser.parse_args(argv)
    if opts.write:
        for path in write_artifacts(opts.names):
            print(f"wrote {path.relative_to(REPO_ROOT)}")
        return 0
    stale = [n for n in opts.names if compile_contract(n).to_json() != _read_or_empty(n)]
    for name in stale:
        print(f"stale: {artifact_path(name).relative_to(REPO_ROOT)} (run with --write)")
    return 1 if stale else 0


def _read_or_empty(name: str) -> str:
    try:
        return artifact_path(name).read_text()
    except FileNotFoundError:
        return ""


if __name__ == "__main__":
    raise SystemExit(_main())
