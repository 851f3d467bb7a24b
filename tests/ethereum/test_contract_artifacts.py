"""The committed contract artifacts: reproducible from source, complete, deployable."""

from __future__ import annotations

import json

import pytest
from eth_utils import function_signature_to_4byte_selector

from kofo.errors import InvalidInput
from kofo.settlement.chains.ethereum import contract
from kofo.settlement.chains.ethereum.contract import (
    SOURCES,
    Artifact,
    artifact_path,
    compile_contract,
    deploy,
    load_artifact,
)


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_committed_artifact_is_what_the_source_compiles_to(name):
    fresh = compile_contract(name)
    committed = load_artifact(name)
    assert fresh.bytecode == committed.bytecode
    assert fresh.bytecode_runtime == committed.bytecode_runtime
    assert fresh.abi == committed.abi
    assert fresh.to_json() == artifact_path(name).read_text()


def test_artifact_round_trips_through_json():
    artifact = load_artifact("HTLC")
    assert Artifact.from_json(artifact.to_json()) == artifact


def test_unknown_contract_name_is_rejected():
    with pytest.raises(InvalidInput, match="'Nope'"):
        load_artifact("Nope")
    with pytest.raises(InvalidInput, match="'Nope'"):
        compile_contract("Nope")


def test_check_mode_reports_artifacts_up_to_date(capsys):
    assert contract._main([]) == 0
    assert capsys.readouterr().out == ""


def _type(item: dict) -> str:
    if item["type"].startswith("tuple"):
        inner = ",".join(_type(c) for c in item["components"])
        return f"({inner}){item['type'].removeprefix('tuple')}"
    return str(item["type"])


def _signature(entry: dict) -> str:
    return f"{entry['name']}({','.join(_type(i) for i in entry['inputs'])})"


def test_htlc_abi_is_the_one_the_adapter_is_written_against():
    abi = load_artifact("HTLC").abi
    functions = {_signature(e) for e in abi if e["type"] == "function"}
    assert functions == {
        "lock(bytes32,uint256)",
        "lock_token(address,uint256,bytes32,uint256)",
        "lock_token_with_permit(address,uint256,bytes32,uint256,uint256,uint8,bytes32,bytes32)",
        "lock_many((bytes32,address,uint256,uint256)[])",
        "redeem(bytes32,address,uint256,uint256,address)",
        "redeem(bytes32,address,uint256,uint256)",  # the recipient redeems: it is msg.sender
        "refund(bytes32,address,uint256,uint256,address)",
        "redeem_many((bytes32,address,uint256,uint256,address)[])",
        "refund_many((bytes32,address,uint256,uint256,address)[])",
        "slots(uint256)",
    }
    # The logs are anonymous (raw_log, decoded by shape: event_index.decode_log): no events.
    assert [e for e in abi if e["type"] == "event"] == []
    payable = {e["name"] for e in abi if e.get("stateMutability") == "payable"}
    assert payable == {"lock", "lock_many"}


def test_runtime_bytecode_contains_every_abi_selector():
    artifact = load_artifact("HTLC")
    for entry in artifact.abi:
        if entry["type"] == "function":
            selector = function_signature_to_4byte_selector(_signature(entry))
            assert selector in artifact.bytecode_runtime, _signature(entry)


def test_deploy_puts_the_runtime_bytecode_on_chain(eth_chain):
    deployer = eth_chain.new_account(10**18)
    address = deploy(eth_chain.w3, "HTLC", deployer)
    assert bytes(eth_chain.w3.eth.get_code(address)) == load_artifact("HTLC").bytecode_runtime


def test_artifact_names_its_contract_and_source():
    for name in SOURCES:
        body = json.loads(artifact_path(name).read_text())
        assert body["contractName"] == name
        assert body["source"] == SOURCES[name]
