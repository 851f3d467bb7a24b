"""Real Ethereum clients against the embedded EVM and against ``geth --dev`` (issue 19 item 2).

The same ethers v6 script (``js/ethers_client.cjs``: fund a fresh wallet, deploy a contract
with ``waitForDeployment``, ``contract.on``, ``queryFilter``, ``getLogs`` by range and by block
hash, a block with its transactions, and the refusals ethers classifies by geth's error
wording) and the same ``geth attach`` console session run against both; the results must be
equal. ethers is installed from ``js/package.json`` (pinned) into the git-ignored
``js/node_modules`` on first use.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import vyper

from kofo.settlement.chains.ethereum.devnet import DevnetServer
from tests.nodes import binary, start_geth

JS = Path(__file__).resolve().parent / "js"
PING = """# pragma version ~=0.4.3
event Ping:
    who: indexed(address)
    n: uint256

@external
def ping(n: uint256):
    log Ping(who=msg.sender, n=n)
"""
ATTACH = (
    "JSON.stringify([eth.accounts.length > 0, eth.getBlock(0).number, eth.blockNumber >= 0, "
    "eth.getBalance(eth.accounts[0]) > 0, eth.gasPrice > 0, eth.getBlock('latest').hash.length])"
)

pytestmark = [pytest.mark.realnode, pytest.mark.timeout(300)]


CACHE = str(JS / ".npm-cache")


def _ethers() -> Path:
    modules = JS / "node_modules"
    # Under pytest-xdist two workers may get here at once: the first installs, holding an
    # exclusive lock on a git-ignored file, the other waits for it and then finds ethers there
    # (two concurrent `npm install`s into one folder corrupt it).
    with (JS / ".npm-install.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not (modules / "ethers" / "package.json").exists():
                npm = shutil.which("npm")
                assert npm is not None, "npm is needed to install ethers v6 for this test"
                subprocess.run(
                    # npm's download cache stays in the repo (git-ignored): CI caches nothing
                    # outside the repository but Go's and pip's own caches.
                    [
                        npm,
                        "install",
                        "--no-audit",
                        "--no-fund",
                        "--prefix",
                        str(JS),
                        "--cache",
                        CACHE,
                    ],
                    check=True,
                    capture_output=True,
                    timeout=240,
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return modules


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = vyper.compile_code(PING, output_formats=["abi", "bytecode"])
    path = tmp_path_factory.mktemp("ping") / "ping.json"
    path.write_text(json.dumps({"abi": out["abi"], "bytecode": out["bytecode"]}))
    return path


@pytest.fixture(scope="module")
def geth(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    node = start_geth(tmp_path_factory.mktemp("geth"))
    try:
        yield node.rpc_url
    finally:
        node.stop()


@pytest.fixture
def devnet() -> Iterator[str]:
    with DevnetServer() as server:
        yield server.url


def _ethers_run(url: str, artifact: Path) -> dict[str, object]:
    node = shutil.which("node") or "/usr/bin/node"
    env = {**os.environ, "NODE_PATH": str(_ethers())}
    done = subprocess.run(
        [node, str(JS / "ethers_client.cjs"), url, str(artifact)],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _attach(url: str) -> str:
    done = subprocess.run(
        [str(binary("geth")), "attach", "--exec", ATTACH, url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def test_ethers_v6_gets_the_same_results_from_the_devnet_as_from_geth(devnet, geth, artifact):
    reference = _ethers_run(geth, artifact)
    assert reference["deployed"] is True and reference["heard"] == [7, 8]  # the script works
    assert _ethers_run(devnet, artifact) == reference


def test_geth_attach_connects_to_the_devnet_as_to_geth(devnet, geth):
    reference = _attach(geth)
    assert json.loads(json.loads(reference)) == [True, 0, True, True, True, 66], reference
    assert _attach(devnet) == reference
