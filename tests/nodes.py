"""Start and stop real chain nodes for tests: geth, btcd, litecoind and CometBFT.

Every node runs as a child process bound to 127.0.0.1 only, on free ports, with its data in a
directory the caller owns. ``start_*`` returns once the node's RPC answers (bounded; a timeout
raises :class:`NodeError` with the tail of the node's log) and ``stop()`` always reaps the
process: SIGTERM, then SIGKILL after a bound. Every node object is also a context manager.

Binaries are looked up in ``<repo>/.nodes/bin`` (filled by ``scripts/install-nodes.sh``) first,
then on ``PATH``.

The helpers speak each node's JSON-RPC dialect with the standard library only, so they carry
no opinion about the client library the code under test uses: hand ``rpc_url`` (plus the
credentials and, for btcd, ``cert_path``) to that code.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from kofo.errors import KofoError

REPO_ROOT = Path(__file__).resolve().parent.parent
NODES_BIN = REPO_ROOT / ".nodes" / "bin"

# Start-up bound. Measured from spawn to a first RPC answer on a shared 2-core machine: btcd
# 0.18 s, CometBFT 0.2 s (to block 1), litecoind 0.43 s, geth 0.66 s; a 4-validator CometBFT
# network reaches block 1 in 1.7 s. 60 s is far above that, so a busy CI runner does not flake,
# and still fails a node that will never come up in reasonable time.
START_TIMEOUT_S = 60.0
# SIGTERM lets a node flush its database; every node here shuts down in well under a second.
STOP_GRACE_S = 10.0
# One RPC call; `generate`/`generatetoaddress` of a few hundred blocks is the slowest call used.
RPC_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 40

GETH_DEV_CHAIN_ID = 1337
"""geth --dev always runs chain id 1337."""


class NodeError(KofoError):
    """A real node could not be started, stopped, or answered an RPC with an error."""

    code = "node_error"


class NodeRpcError(NodeError):
    """The node answered a JSON-RPC call with an error object."""

    code = "node_rpc_error"

    def __init__(self, method: str, error: Any) -> None:
        self.method = method
        self.error = error
        self.rpc_code: int | None = error.get("code") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        super().__init__(f"RPC {method} failed: {message} (code {self.rpc_code})")


# --------------------------------------------------------------------------------------------
# Binaries, ports, processes
# --------------------------------------------------------------------------------------------


def find_binary(name: str) -> Path | None:
    """Where ``name`` is: ``<repo>/.nodes/bin`` first, then ``PATH``; ``None`` if nowhere."""
    local = NODES_BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return local
    found = shutil.which(name)
    return Path(found) if found else None


def binary(name: str) -> Path:
    path = find_binary(name)
    if path is None:
        raise NodeError(f"{name} not found in {NODES_BIN} or on PATH; run scripts/install-nodes.sh")
    return path


_PORT_LOW, _PORT_HIGH = 10_000, 32_000
"""Ports the tests hand out: below Linux's ephemeral range (32768-60999, see
/proc/sys/net/ipv4/ip_local_port_range), so no ``bind(0)`` and no outgoing connection of any
process can take one between the test picking it and its node binding it."""
_PORTS_PER_WORKER = 1_000
_next_port: list[int] = []


def _port_block() -> tuple[int, int]:
    """This process's own block of ports: pytest-xdist worker ``gwN`` gets the N-th block, so
    two workers never hand out the same port (the single-process run is worker 0)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    blocks = (_PORT_HIGH - _PORT_LOW) // _PORTS_PER_WORKER
    low = _PORT_LOW + (index % blocks) * _PORTS_PER_WORKER
    return low, low + _PORTS_PER_WORKER


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now and no other test process of
    this run hands out.

    Taken in turn from this worker's block (below the ephemeral range: see ``_PORT_LOW``),
    starting at a random place in it, and a port that does not bind is skipped: the ports one
    node needs are distinct even before the node binds them, and a port comes round again
    only after the whole block was handed out.
    """
    low, high = _port_block()
    if not _next_port:
        _next_port.append(low + secrets.randbelow(high - low))
    for _ in range(high - low):
        port = _next_port[0]
        _next_port[0] = low + (port + 1 - low) % (high - low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise NodeError(f"no free TCP port found on 127.0.0.1 in {low}-{high - 1}")


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the test process dies without tearing down
    # (SIGKILL, crash), the kernel sends the node SIGTERM instead of leaving it running.
    # Linux ties this to the *thread* that forked: start nodes from a thread that outlives them.
    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


class NodeProcess:
    """One node child process with its log file; stopping it always reaps it."""

    def __init__(self, name: str, argv: Sequence[str | Path], log_path: Path, cwd: Path) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        except BaseException:
            self._log.close()
            raise
        self.started_at = time.monotonic()
        self.ready_after_s: float | None = None
        """Seconds from spawn until the RPC first answered (set by :meth:`wait_ready`)."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<cannot read {self.log_path}: {exc}>"
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, probe: Callable[[], bool], timeout: float = START_TIMEOUT_S) -> None:
        """Poll ``probe`` until it returns True; raise with the log tail on exit or timeout.

        ``probe`` may raise (connection refused, half-started server, RPC "warming up") while
        the node is still starting; such errors mean "not yet".
        """
        deadline = self.started_at + timeout
        delay = 0.02
        last_error: BaseException | None = None
        while True:
            if not self.running():
                raise NodeError(
                    f"{self.name} exited with code {self.proc.returncode} before its RPC answered"
                    f"\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
                )
            try:
                if probe():
                    self.ready_after_s = time.monotonic() - self.started_at
                    return
            except (OSError, http.client.HTTPException, NodeError, ValueError) as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                raise NodeError(
                    f"{self.name} RPC did not answer within {timeout:.0f} s"
                    f" (last error: {last_error!r})"
                    f"\n--- last lines of {self.log_path} ---\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def stop(self, grace: float = STOP_GRACE_S) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always reaps. Returns the exit code."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        finally:
            self._log.close()
        return self.proc.returncode


class _Node:
    """Shared lifecycle of the node handles below."""

    process: NodeProcess

    def stop(self) -> None:
        self.process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _start(
    name: str, argv: Sequence[str | Path], datadir: Path, probe: Callable[[], bool]
) -> NodeProcess:
    process = NodeProcess(name, argv, datadir / f"{name}.log", cwd=datadir)
    try:
        process.wait_ready(probe)
    except BaseException:
        process.stop()
        raise
    return process


# --------------------------------------------------------------------------------------------
# JSON-RPC over HTTP(S)
# --------------------------------------------------------------------------------------------


def json_rpc(
    url: str,
    method: str,
    params: Sequence[Any] | dict[str, Any],
    *,
    auth: tuple[str, str] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    jsonrpc: str = "2.0",
    timeout: float = RPC_TIMEOUT_S,
) -> Any:
    """One JSON-RPC call; returns ``result`` or raises :class:`NodeRpcError`."""
    body = json.dumps({"jsonrpc": jsonrpc, "id": 1, "method": method, "params": params}).encode()
    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    # No proxy handler: a node on 127.0.0.1 must never be reached through an HTTP(S)_PROXY.
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=ssl_context)
    )
    try:
        with opener.open(request, timeout=timeout) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        # Bitcoin-dialect nodes answer RPC errors with HTTP 500 and a JSON body.
        payload = exc.read()
        if not payload:
            raise NodeError(f"RPC {method} to {url}: HTTP {exc.code} {exc.reason}") from exc
    try:
        reply = json.loads(payload)
    except ValueError as exc:
        raise NodeError(f"RPC {method} to {url}: reply is not JSON: {payload[:200]!r}") from exc
    if reply.get("error"):
        raise NodeRpcError(method, reply["error"])
    return reply.get("result")


# --------------------------------------------------------------------------------------------
# geth --dev
# --------------------------------------------------------------------------------------------


@dataclass
class GethNode(_Node):
    """geth in ``--dev`` mode: one pre-funded, unlocked account; a block per transaction."""

    process: NodeProcess
    datadir: Path
    rpc_url: str
    dev_account: str = ""

    def rpc(self, method: str, *params: Any) -> Any:
        return json_rpc(self.rpc_url, method, list(params))

    def balance(self, address: str) -> int:
        return int(self.rpc("eth_getBalance", address, "latest"), 16)

    def wait_for_receipt(self, tx_hash: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            receipt = self.rpc("eth_getTransactionReceipt", tx_hash)
            if receipt is not None:
                return dict(receipt)
            if time.monotonic() >= deadline:
                raise NodeError(f"geth: no receipt for tx {tx_hash} within {timeout:.0f} s")
            time.sleep(0.05)

    def fund(self, address: str, wei: int) -> dict[str, Any]:
        """Send ``wei`` from the dev account to ``address``; return the mined receipt."""
        if isinstance(wei, bool) or not isinstance(wei, int) or wei < 0:
            raise NodeError(f"fund: wei must be a non-negative integer, got {wei!r}")
        tx_hash = self.rpc(
            "eth_sendTransaction", {"from": self.dev_account, "to": address, "value": hex(wei)}
        )
        receipt = self.wait_for_receipt(tx_hash)
        if int(receipt["status"], 16) != 1:
            raise NodeError(f"geth: funding tx {tx_hash} to {address} failed: {receipt}")
        return receipt


def start_geth(datadir: Path, *, gas_limit: int | None = None) -> GethNode:
    """Start ``geth --dev`` with its data in ``datadir`` (created if missing).

    ``--dev.period 0`` mines a block as soon as a transaction arrives, so a receipt is there
    right after ``eth_sendTransaction``. ``gas_limit`` sets ``--dev.gaslimit`` (geth's default
    is 11,500,000, enough for our contract deployments).
    """
    datadir.mkdir(parents=True, exist_ok=True)
    http_port, auth_port = free_port(), free_port()
    rpc_url = f"http://127.0.0.1:{http_port}"
    argv: list[str | Path] = [
        binary("geth"),
        "--dev",
        "--dev.period", "0",
        "--http",
        "--http.addr", "127.0.0.1",
        "--http.port", str(http_port),
        "--http.api", "eth,net,web3,debug,dev,txpool,miner",
        "--datadir", datadir / "geth-data",
        "--nodiscover",
        "--maxpeers", "0",
        "--ipcdisable",
        "--port", "0",
        # No UPnP/NAT-PMP probing of the LAN: the node must stay on loopback.
        "--nat", "none",
        # --dev drives the chain itself and does not open the engine API, but pin it to a free
        # loopback port anyway so two nodes can never collide on 8551.
        "--authrpc.addr", "127.0.0.1",
        "--authrpc.port", str(auth_port),
    ]  # fmt: skip
    if gas_limit is not None:
        argv += ["--dev.gaslimit", str(gas_limit)]

    def probe() -> bool:
        return int(json_rpc(rpc_url, "eth_chainId", [], timeout=2), 16) == GETH_DEV_CHAIN_ID

    process = _start("geth", argv, datadir, probe)
    node = GethNode(process=process, datadir=datadir, rpc_url=rpc_url)
    try:
        accounts = node.rpc("eth_accounts")
        if not accounts:
            raise NodeError("geth --dev reported no accounts; expected the dev account")
        node.dev_account = accounts[0]
        _wait_tx_indexed(node)
    except BaseException:
        node.stop()
        raise
    return node


def _wait_tx_indexed(node: GethNode, timeout: float = 60.0) -> None:
    """Mine geth's first block (a 0-wei transfer from the dev account to itself) and wait until
    its transaction indexer reports done (``eth_syncing`` false).

    A fresh ``--dev`` chain stays at block 0 with one block left to index until a block is
    mined, and until then geth answers ``eth_getTransactionReceipt`` of any transaction not yet
    mined with the error "transaction indexing is in progress" instead of null: a client that
    polls for a receipt right after sending the chain's first transaction (ethers'
    ``waitForDeployment``, ``wait_for_receipt`` here) failed whenever the block came after its
    first poll, as on a loaded machine."""
    node.rpc("eth_sendTransaction", {"from": node.dev_account, "to": node.dev_account})
    deadline = time.monotonic() + timeout
    while node.rpc("eth_syncing") is not False:
        if time.monotonic() >= deadline:
            raise NodeError(f"geth: transaction indexing not done within {timeout:.0f} s")
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# Bitcoin-dialect nodes: btcd and litecoind
# --------------------------------------------------------------------------------------------


def _random_credentials() -> tuple[str, str]:
    return f"kofo-{secrets.token_hex(4)}", secrets.token_urlsafe(24)


@dataclass
class _BitcoinDialectNode(_Node):
    process: NodeProcess
    datadir: Path
    rpc_url: str
    rpc_user: str
    rpc_password: str = field(repr=False)

    def _ssl_context(self) -> ssl.SSLContext | None:
        return None

    def rpc(self, method: str, *params: Any) -> Any:
        return json_rpc(
            self.rpc_url,
            method,
            list(params),
            auth=(self.rpc_user, self.rpc_password),
            ssl_context=self._ssl_context(),
            jsonrpc="1.0",
        )

    def block_count(self) -> int:
        return int(self.rpc("getblockcount"))


@dataclass
class BtcdNode(_BitcoinDialectNode):
    """btcd (regtest or simnet) with RPC over TLS and a transaction index.

    btcd has no wallet: blocks are mined with the ``generate N`` RPC and pay ``mining_address``,
    which is fixed when the node starts (``--miningaddr``). Its dialect differs from Bitcoin
    Core in small ways: ``getrawtransaction``'s verbose argument is an int (``1``), and
    ``getblock <hash> 2`` lists decoded transactions under ``rawtx`` (Core: ``tx``).
    """

    cert_path: Path = Path()
    mining_address: str = ""
    network: str = "regtest"

    def _ssl_context(self) -> ssl.SSLContext:
        # btcd's self-signed rpc.cert lists 127.0.0.1 among its subject alt names, so the
        # default hostname check passes with it as the only trusted root.
        return ssl.create_default_context(cafile=str(self.cert_path))

    def generate(self, blocks: int) -> list[str]:
        """Mine ``blocks`` blocks paying ``mining_address``; return their hashes."""
        return list(self.rpc("generate", blocks))


def start_btcd(tmpdir: Path, mining_address: str, *, network: str = "regtest") -> BtcdNode:
    """Start btcd with its data in ``tmpdir``; every mined block pays ``mining_address``.

    ``mining_address`` must belong to ``network``, or btcd exits at start. On regtest btcd 0.26
    mines to P2PKH (``m``/``n`` prefix), P2SH (``2``), and bech32(m) segwit addresses with
    human-readable part ``bcrt``: P2WPKH/P2WSH ``bcrt1q...`` (P2WPKH is what ``test_real_nodes``
    uses) and P2TR ``bcrt1p...``; simnet's part is ``sb``.

    RPC is TLS-only (``--notls`` is never passed): btcd writes a self-signed
    ``rpc.cert``/``rpc.key`` into ``tmpdir`` on first start and clients must trust
    ``cert_path``.
    """
    if network not in ("regtest", "simnet"):
        raise NodeError(f"btcd network must be 'regtest' or 'simnet', got {network!r}")
    tmpdir.mkdir(parents=True, exist_ok=True)
    # An explicit, empty config file: otherwise btcd would read ~/.btcd/btcd.conf if present.
    config = tmpdir / "btcd.conf"
    config.touch()
    rpc_port, p2p_port = free_port(), free_port()
    user, password = _random_credentials()
    cert_path, key_path = tmpdir / "rpc.cert", tmpdir / "rpc.key"
    argv: list[str | Path] = [
        binary("btcd"),
        f"--{network}",
        f"--configfile={config}",
        f"--datadir={tmpdir / 'data'}",
        f"--logdir={tmpdir / 'logs'}",
        f"--rpccert={cert_path}",
        f"--rpckey={key_path}",
        f"--rpcuser={user}",
        f"--rpcpass={password}",
        f"--rpclisten=127.0.0.1:{rpc_port}",
        f"--listen=127.0.0.1:{p2p_port}",
        "--txindex",
        f"--miningaddr={mining_address}",
    ]
    node = BtcdNode(
        process=None,  # type: ignore[arg-type]  # set right below, once the RPC answers
        datadir=tmpdir,
        rpc_url=f"https://127.0.0.1:{rpc_port}",
        rpc_user=user,
        rpc_password=password,
        cert_path=cert_path,
        mining_address=mining_address,
        network=network,
    )

    def probe() -> bool:
        # The certificate appears a moment before the RPC listener does.
        return cert_path.exists() and isinstance(node.rpc("getblockcount"), int)

    node.process = _start("btcd", argv, tmpdir, probe)
    return node


@dataclass
class LitecoindNode(_BitcoinDialectNode):
    """litecoind -regtest (Bitcoin Core 0.21 dialect; ``generatetoaddress`` exists)."""

    p2p_port: int = 0

    def generate_to_address(self, blocks: int, address: str) -> list[str]:
        return list(self.rpc("generatetoaddress", blocks, address))

    def activate_soft_forks(self, address: str | None = None, *, batch: int = 200) -> int:
        """Mine until every buried soft fork (BIP34/65/66, CSV) is enforced; return blocks mined.

        On litecoin regtest CLTV (BIP65) is only consensus from height 1351, so an HTLC's
        refund path is not really checked before this. Blocks pay ``address`` (default: a
        burn address). Litecoin regtest halves the subsidy every 150 blocks, so a test that
        needs coins should mine to its own address *before* calling this.
        """
        address = address or LITECOIN_REGTEST_BURN_ADDRESS
        mined = 0
        while True:
            info = self.rpc("getblockchaininfo")
            pending = [
                int(fork["height"])
                for fork in info["softforks"].values()
                if fork.get("type") == "buried" and not fork.get("active")
            ]
            if not pending:
                return mined
            # A buried fork is enforced for the block at its height, i.e. once the tip is one
            # below it; mine in batches so each RPC stays well within RPC_TIMEOUT_S.
            count = max(1, min(batch, max(pending) - 1 - int(info["blocks"])))
            mined += len(self.generate_to_address(count, address))


LITECOIN_REGTEST_BURN_ADDRESS = "rltc1qqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqqnmxrc5"
"""P2WPKH to the all-zero key hash on litecoin regtest: nobody can spend it."""


def start_litecoind(datadir: Path) -> LitecoindNode:
    """Start ``litecoind -regtest`` with its data in ``datadir`` (wallet support left on)."""
    datadir.mkdir(parents=True, exist_ok=True)
    rpc_port, p2p_port = free_port(), free_port()
    user, password = _random_credentials()
    argv: list[str | Path] = [
        binary("litecoind"),
        "-regtest",
        "-server",
        f"-datadir={datadir}",
        # Explicit: otherwise a litecoin.conf in the datadir would be read.
        "-conf=/dev/null",
        "-rpcbind=127.0.0.1",
        "-rpcallowip=127.0.0.1",
        f"-rpcport={rpc_port}",
        f"-port={p2p_port}",
        "-listen=0",
        "-txindex",
        f"-rpcuser={user}",
        f"-rpcpassword={password}",
        # Without a fee estimate (a fresh regtest chain has none) wallet sends would fail.
        "-fallbackfee=0.0002",
        # MWEB activation on regtest makes mined blocks need an MWEB extension block, which
        # generatetoaddress cannot produce; -2 = never active.
        "-vbparams=mweb:-2:0",
        # Litecoin Core relays no BIP125 replacement unless a node opts in (default 0); the
        # fee-bump test checks the adapter's replacements against Core's rules, so opt in.
        "-mempoolreplacement=1",
        "-printtoconsole=1",
    ]
    node = LitecoindNode(
        process=None,  # type: ignore[arg-type]  # set right below, once the RPC answers
        datadir=datadir,
        rpc_url=f"http://127.0.0.1:{rpc_port}",
        rpc_user=user,
        rpc_password=password,
        p2p_port=p2p_port,
    )

    def probe() -> bool:
        try:
            return isinstance(node.rpc("getblockcount"), int)
        except NodeRpcError as exc:
            if exc.rpc_code == -28:  # "Loading block index..." / "Verifying blocks..."
                return False
            raise

    node.process = _start("litecoind", argv, datadir, probe)
    return node


# --------------------------------------------------------------------------------------------
# CometBFT
# --------------------------------------------------------------------------------------------

# CometBFT's default is 1 s; tests want blocks fast, and a single local validator needs no
# time to gather votes from the network.
TEST_TIMEOUT_COMMIT = "100ms"


def set_toml_values(path: Path, values: dict[tuple[str, str], str]) -> None:
    """Rewrite ``key = value`` lines of a TOML file in place; keys are ``(section, key)``.

    ``section`` is ``""`` for top-level keys; values are TOML literals (quote strings). Every key
    must already be present (CometBFT writes every key into its config.toml), so a renamed key
    fails loudly instead of being silently ignored.
    """
    lines = path.read_text().splitlines(keepends=True)
    section = ""
    seen: set[tuple[str, str]] = set()
    for i, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if header:
            section = header.group(1).strip()
            continue
        match = re.match(r"^(\s*)([A-Za-z0-9_.-]+)(\s*=\s*)", line)
        if match and (section, match.group(2)) in values:
            key = (section, match.group(2))
            lines[i] = f"{match.group(1)}{key[1]}{match.group(3)}{values[key]}\n"
            seen.add(key)
    missing = set(values) - seen
    if missing:
        raise NodeError(f"{path}: keys not found: {sorted(missing)}")
    path.write_text("".join(lines))


@dataclass
class CometNode(_Node):
    """One CometBFT node; ``rpc_url`` is its HTTP JSON-RPC endpoint."""

    process: NodeProcess
    home: Path
    rpc_url: str
    p2p_port: int
    node_id: str = ""

    def rpc(self, method: str, **params: Any) -> Any:
        return json_rpc(self.rpc_url, method, params)

    def height(self) -> int:
        return int(self.rpc("status")["sync_info"]["latest_block_height"])

    def wait_for_height(self, height: int, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while (current := self.height()) < height:
            if time.monotonic() >= deadline:
                raise NodeError(
                    f"cometbft at {self.rpc_url}: height {current} < {height} after {timeout:.0f} s"
                    f"\n--- last lines of {self.process.log_path} ---\n{self.process.log_tail()}"
                )
            time.sleep(0.05)
        return current

    def broadcast_tx_commit(self, tx: bytes) -> dict[str, Any]:
        """Submit ``tx``, wait until it is in a block; raise if CheckTx or the block rejects it."""
        result = dict(self.rpc("broadcast_tx_commit", tx=base64.b64encode(tx).decode()))
        for phase in ("check_tx", "tx_result"):
            if int(result[phase].get("code", 0)) != 0:
                raise NodeError(f"cometbft rejected tx in {phase}: {result[phase]}")
        return result

    def abci_query(self, data: bytes, path: str = "") -> bytes | None:
        """The app's answer to a query for ``data``; ``None`` if it has no value."""
        response = self.rpc("abci_query", path=path, data=data.hex())["response"]
        value = response.get("value")
        return base64.b64decode(value) if value else None


def init_comet_home(home: Path) -> None:
    """``cometbft init`` into ``home`` unless it already holds a config."""
    if (home / "config" / "config.toml").exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [str(binary("cometbft")), "init", "--home", str(home)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise NodeError(f"cometbft init --home {home} failed: {result.stdout}{result.stderr}")


def configure_comet(
    home: Path,
    *,
    proxy_app: str,
    rpc_port: int,
    p2p_port: int,
    persistent_peers: str = "",
    timeout_commit: str = TEST_TIMEOUT_COMMIT,
) -> None:
    """Point an initialised home at loopback ports, an ABCI app, and fast test blocks."""
    set_toml_values(
        home / "config" / "config.toml",
        {
            ("", "proxy_app"): json.dumps(proxy_app),
            ("rpc", "laddr"): json.dumps(f"tcp://127.0.0.1:{rpc_port}"),
            ("p2p", "laddr"): json.dumps(f"tcp://127.0.0.1:{p2p_port}"),
            ("p2p", "persistent_peers"): json.dumps(persistent_peers),
            # Peers here are all 127.0.0.1: CometBFT would refuse them as non-routable or as
            # duplicates of the same IP otherwise.
            ("p2p", "addr_book_strict"): "false",
            ("p2p", "allow_duplicate_ip"): "true",
            ("consensus", "timeout_commit"): json.dumps(timeout_commit),
        },
    )


def start_comet(
    home: Path,
    proxy_app: str = "kvstore",
    *,
    rpc_port: int | None = None,
    p2p_port: int | None = None,
    timeout_commit: str = TEST_TIMEOUT_COMMIT,
    persistent_peers: str = "",
    wait_for_first_block: bool = True,
) -> CometNode:
    """Start CometBFT with ``home`` (``cometbft init`` first if it is empty).

    ``proxy_app`` is ``"kvstore"`` (CometBFT's built-in example app) or an ABCI server address
    such as ``"tcp://127.0.0.1:26658"``; that server must already listen. With
    ``wait_for_first_block`` the call returns once block 1 is committed, i.e. the app answered
    and consensus runs; turn it off for a validator of a network that cannot make blocks alone.
    """
    init_comet_home(home)
    rpc_port = rpc_port or free_port()
    p2p_port = p2p_port or free_port()
    configure_comet(
        home,
        proxy_app=proxy_app,
        rpc_port=rpc_port,
        p2p_port=p2p_port,
        persistent_peers=persistent_peers,
        timeout_commit=timeout_commit,
    )
    rpc_url = f"http://127.0.0.1:{rpc_port}"
    argv: list[str | Path] = [binary("cometbft"), "start", "--home", home]

    def probe() -> bool:
        status = json_rpc(rpc_url, "status", {}, timeout=2)
        if not wait_for_first_block:
            return True
        return int(status["sync_info"]["latest_block_height"]) >= 1

    process = _start("cometbft", argv, home, probe)
    node = CometNode(process=process, home=home, rpc_url=rpc_url, p2p_port=p2p_port)
    try:
        node.node_id = str(node.rpc("status")["node_info"]["id"])
    except BaseException:
        node.stop()
        raise
    return node


def make_comet_testnet(root: Path, validators: int) -> list[Path]:
    """``cometbft testnet`` for ``validators`` nodes under ``root``; returns their homes.

    The generated configs assume one machine per validator (same port, different IPs); start
    them with :func:`start_comet_testnet`, which gives each its own loopback ports.
    """
    if validators < 1:
        raise NodeError(f"validators must be at least 1, got {validators}")
    root.mkdir(parents=True, exist_ok=True)
    argv = [str(binary("cometbft")), "testnet", "--v", str(validators), "--o", str(root)]
    argv += ["--hostname", "127.0.0.1"] * validators
    result = subprocess.run(
        argv,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise NodeError(f"cometbft testnet failed: {result.stdout}{result.stderr}")
    return [root / f"node{i}" for i in range(validators)]


def _node_ids(homes: Sequence[Path]) -> list[str]:
    # `cometbft testnet` writes every node's id into persistent_peers in node order.
    config = (homes[0] / "config" / "config.toml").read_text()
    match = re.search(r'^persistent_peers\s*=\s*"([^"]*)"', config, re.MULTILINE)
    ids = [peer.split("@", 1)[0] for peer in (match.group(1).split(",") if match else []) if peer]
    if len(ids) != len(homes):
        raise NodeError(f"expected {len(homes)} node ids in {homes[0]}'s config, found {ids}")
    return ids


def start_comet_testnet(
    root: Path, validators: int, proxy_apps: Sequence[str] | None = None
) -> list[CometNode]:
    """Start a ``validators``-node CometBFT network on 127.0.0.1, each node on its own ports.

    ``proxy_apps[i]`` is node i's ABCI app (default: every node runs the built-in kvstore).
    Returns once every node has committed block 1; on any failure every started node is stopped.
    """
    homes = make_comet_testnet(root, validators)
    apps = list(proxy_apps) if proxy_apps is not None else ["kvstore"] * validators
    if len(apps) != validators:
        raise NodeError(f"proxy_apps has {len(apps)} entries, expected {validators}")
    ids = _node_ids(homes)
    p2p_ports = [free_port() for _ in homes]
    nodes: list[CometNode] = []
    try:
        for i, home in enumerate(homes):
            peers = ",".join(
                f"{ids[j]}@127.0.0.1:{p2p_ports[j]}" for j in range(validators) if j != i
            )
            # More than 2/3 of the voting power must be online before block 1, so no node can
            # reach it alone: wait for all of them together below.
            nodes.append(
                start_comet(
                    home,
                    apps[i],
                    p2p_port=p2p_ports[i],
                    persistent_peers=peers,
                    wait_for_first_block=validators == 1,
                )
            )
        for node in nodes:
            node.wait_for_height(1, timeout=START_TIMEOUT_S)
    except BaseException:
        stop_all(nodes)
        raise
    return nodes


def stop_all(nodes: Sequence[_Node]) -> None:
    """Stop every node, even if stopping one of them raises; re-raise the first error."""
    first: BaseException | None = None
    for node in nodes:
        try:
            node.stop()
        except BaseException as exc:
            first = first or exc
    if first is not None:
        raise first


def discard_node_dir(path: Path) -> None:
    """Remove a node's directory, unless ``KOFO_KEEP_NODE_DIRS=1`` asks to keep it for debugging."""
    if os.environ.get("KOFO_KEEP_NODE_DIRS") == "1":
        print(f"kept node data in {path}", file=sys.stderr)
    else:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def kept_or_removed(path: Path) -> Iterator[Path]:
    """Yield ``path``; afterwards :func:`discard_node_dir` it, whatever happened inside."""
    try:
        yield path
    finally:
        discard_node_dir(path)
