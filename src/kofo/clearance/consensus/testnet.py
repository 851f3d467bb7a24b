"""An N-validator CometBFT network on loopback, each validator with its own ABCI ledger app.

    python -m kofo.clearance.consensus.testnet --validators 4 --root /tmp/kofo-testnet

Validator ``i`` uses ports ``base + 10*i`` (p2p), ``+1`` (RPC), ``+2`` (ABCI), all on
127.0.0.1. ``--app kvstore`` runs CometBFT's built-in kvstore example instead (the benchmark's
baseline). Used by ``scripts/testnet.sh``, the real-node tests and the benchmark.
"""

from __future__ import annotations

import argparse
import base64
import ctypes
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kofo.errors import ConfigError, KofoError

COMETBFT_VERSION = "0.38.17"
TIMEOUT_COMMIT = "200ms"
"""Local validators reach each other in microseconds; 200 ms keeps four validators plus their
Python apps within two shared cores while still giving ~4 blocks a second."""
START_TIMEOUT_S = 60.0

_REPO = Path(__file__).resolve().parents[4]


class TestnetError(KofoError):
    code = "testnet_error"


def find_cometbft() -> Path:
    """``$KOFO_COMETBFT``, then ``<repo>/.nodes/bin``, then ``/tmp/nodes/bin``, then PATH."""
    candidates = [
        os.environ.get("KOFO_COMETBFT"),
        str(_REPO / ".nodes" / "bin" / "cometbft"),
        "/tmp/nodes/bin/cometbft",
        shutil.which("cometbft"),
    ]
    for c in candidates:
        if c and os.path.isfile(c) and os.access(c, os.X_OK):
            return Path(c)
    raise ConfigError("cometbft not found; run scripts/install-nodes.sh or set KOFO_COMETBFT")


def _die_with_parent() -> None:
    # Linux: the child gets SIGKILL when the process that started it dies, so a crashed test or
    # bench never leaves validators running.
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _set_toml(path: Path, values: dict[tuple[str, str], str]) -> None:
    """Rewrite ``key = value`` lines (``(section, key)``; ``""`` is the top level)."""
    lines = path.read_text().splitlines(keepends=True)
    section, seen = "", set()
    for i, line in enumerate(lines):
        header = re.match(r"^\s*\[([^\]]+)\]\s*$", line)
        if header:
            section = header.group(1).strip()
            continue
        m = re.match(r"^([A-Za-z0-9_.-]+)\s*=", line)
        if m and (section, m.group(1)) in values:
            lines[i] = f"{m.group(1)} = {values[(section, m.group(1))]}\n"
            seen.add((section, m.group(1)))
    if missing := set(values) - seen:
        raise TestnetError(f"{path}: keys not found: {sorted(missing)}")
    path.write_text("".join(lines))


@dataclass
class Validator:
    index: int
    home: Path
    p2p_port: int
    rpc_port: int
    abci_port: int
    node_id: str = ""
    comet: subprocess.Popen[bytes] | None = None
    app: subprocess.Popen[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"


class LocalTestnet:
    def __init__(
        self,
        root: Path,
        validators: int = 4,
        *,
        base_port: int = 26600,
        app: str = "kofo",
        params: dict[str, Any] | None = None,
        timeout_commit: str = TIMEOUT_COMMIT,
        app_env: dict[int, dict[str, str]] | None = None,
        vote_extensions_height: int = 0,
        observe: bool = False,
        tx_index: bool = False,
        app_module: str = "kofo.clearance.abci.server",
        app_args: Sequence[str] = (),
        full_nodes: int = 0,
    ) -> None:
        """``vote_extensions_height`` > 0 turns on CometBFT's vote extensions from that height
        (the ledger's leg and bond attestations); ``observe`` gives each validator's app a
        :class:`~kofo.clearance.attest.FileObserver` over ``observed_path(i)``; ``tx_index``
        keeps CometBFT's ``kv`` transaction index, so the RPC's ``tx`` (and ``tx_search``)
        answer -- what the node's ledger client looks a committed transaction up with. Off by
        default: the benchmark measures the chain without the indexer's work. ``full_nodes``
        more nodes (indexes after the validators) run the same app and genesis with their own
        consensus key outside the genesis set: a validator that joins later (through a bond).

        ``app_module`` is the module each validator's ABCI app runs as (``python -m``), with
        ``app_args`` after the server's own flags: ``kofo.node.validator`` with ``--config
        FILE`` gives every validator an observer of real chains over their RPC (named here
        as a module, not imported: the clearance layer never imports the node)."""
        if validators < 1:
            raise TestnetError(f"validators must be at least 1, got {validators}")
        if app not in ("kofo", "kvstore"):
            raise TestnetError(f"app must be 'kofo' or 'kvstore', got {app!r}")
        self.root = Path(root)
        self.app_kind = app
        self.params = params
        self.timeout_commit = timeout_commit
        self.app_env = app_env or {}
        """Extra environment per validator's ABCI app (e.g. a different int->str limit, to
        show that no process setting changes a result)."""
        self.vote_extensions_height = vote_extensions_height
        self.observe = observe
        self.tx_index = tx_index
        self.app_module = app_module
        self.app_args = list(app_args)
        self.full_nodes = full_nodes
        self.cometbft = find_cometbft()
        self.validators = [
            Validator(
                i,
                self.root / f"node{i}",
                base_port + 10 * i,
                base_port + 10 * i + 1,
                base_port + 10 * i + 2,
            )
            for i in range(validators + full_nodes)
        ]

    def observed_path(self, index: int) -> Path:
        """The JSON file validator ``index``'s app reads what it sees on the chains from."""
        return self.validators[index].home / "observed.json"

    # -- setup -----------------------------------------------------------------------------------

    def create(self) -> None:
        """``cometbft testnet`` then per-validator loopback ports, peers and genesis params."""
        n = len(self.validators)
        if self.root.exists():
            shutil.rmtree(self.root)
        argv = [str(self.cometbft), "testnet", "--v", str(n - self.full_nodes)]
        argv += ["--n", str(self.full_nodes), "--o", str(self.root)]
        argv += ["--hostname", "127.0.0.1"] * n
        subprocess.run(argv, check=True, capture_output=True, timeout=60)
        for v in self.validators:
            out = subprocess.run(
                [str(self.cometbft), "show-node-id", "--home", str(v.home)],
                check=True,
                capture_output=True,
                text=True,
                timeout=30,
            )
            v.node_id = out.stdout.strip()
        genesis = json.loads((self.validators[0].home / "config" / "genesis.json").read_text())
        if self.app_kind == "kofo" and self.params is not None:
            genesis["app_state"] = {"params": self.params}
        if self.vote_extensions_height:
            genesis["consensus_params"]["abci"] = {
                "vote_extensions_enable_height": str(self.vote_extensions_height)
            }
        genesis_text = json.dumps(genesis, indent=2)
        for v in self.validators:
            peers = ",".join(
                f"{o.node_id}@127.0.0.1:{o.p2p_port}" for o in self.validators if o is not v
            )
            proxy = "kvstore" if self.app_kind == "kvstore" else f"tcp://127.0.0.1:{v.abci_port}"
            _set_toml(
                v.home / "config" / "config.toml",
                {
                    ("", "proxy_app"): json.dumps(proxy),
                    ("", "moniker"): json.dumps(f"kofo-validator-{v.index}"),
                    ("rpc", "laddr"): json.dumps(f"tcp://127.0.0.1:{v.rpc_port}"),
                    ("p2p", "laddr"): json.dumps(f"tcp://127.0.0.1:{v.p2p_port}"),
                    ("p2p", "persistent_peers"): json.dumps(peers),
                    # All peers share 127.0.0.1: without these CometBFT refuses them as
                    # non-routable duplicates.
                    ("p2p", "addr_book_strict"): "false",
                    ("p2p", "allow_duplicate_ip"): "true",
                    ("consensus", "timeout_commit"): json.dumps(self.timeout_commit),
                    ("consensus", "timeout_propose"): json.dumps("1s"),
                    ("tx_index", "indexer"): json.dumps("kv" if self.tx_index else "null"),
                    # CheckTx is stateless in both apps (ours: encoding, schema, signatures;
                    # kvstore: the key=value form), so re-running it on every pending tx after
                    # each block can never evict anything; production nodes set this too.
                    ("mempool", "recheck"): "false",
                },
            )
            (v.home / "config" / "genesis.json").write_text(genesis_text)

    # -- processes -------------------------------------------------------------------------------

    def start(self, index: int) -> None:
        v = self.validators[index]
        if self.app_kind == "kofo":
            with open(v.home / "abci.log", "ab") as log:  # the child keeps its own copy
                v.app = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        self.app_module,
                        "--db",
                        str(v.home / "ledger.db"),
                        "--addr",
                        f"127.0.0.1:{v.abci_port}",
                        *(["--observe", str(self.observed_path(index))] if self.observe else []),
                        *self.app_args,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                    env={**os.environ, **self.app_env.get(index, {})},
                )
            app = v.app

            def listening() -> bool:
                if app.poll() is not None:
                    log_tail = (v.home / "abci.log").read_text()[-2000:]
                    raise TestnetError(f"ABCI app of validator {index} exited:\n{log_tail}")
                return _port_open(v.abci_port)

            self._wait(listening, f"ABCI app of validator {index}")
        self.start_comet(index)

    def start_comet(self, index: int) -> None:
        """Start the validator's CometBFT (its app must be running)."""
        v = self.validators[index]
        with open(v.home / "cometbft.log", "ab") as log:
            v.comet = subprocess.Popen(
                [str(self.cometbft), "start", "--home", str(v.home)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )

    def kill_comet(self, index: int) -> None:
        """SIGKILL only the validator's CometBFT; its ABCI app keeps running (and keeps whatever
        block it had finalized but not yet committed)."""
        v = self.validators[index]
        if v.comet is not None and v.comet.poll() is None:
            v.comet.kill()
            v.comet.wait()
        v.comet = None

    def start_all(self, wait_height: int = 1) -> None:
        for v in self.validators:
            self.start(v.index)
        for v in self.validators:
            self.wait_for_height(v.index, wait_height)

    def kill(self, index: int) -> None:
        """SIGKILL the validator and its app: a crash, not a clean shutdown."""
        v = self.validators[index]
        for proc in (v.comet, v.app):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
        v.comet = v.app = None

    def stop(self) -> None:
        for v in self.validators:
            for proc in (v.comet, v.app):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
            for proc in (v.comet, v.app):
                if proc is not None:
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
            v.comet = v.app = None

    def __enter__(self) -> LocalTestnet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- RPC -------------------------------------------------------------------------------------

    def rpc(self, index: int, method: str, timeout: float = 10.0, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        req = urllib.request.Request(
            self.validators[index].rpc_url,
            body.encode(),
            {"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            answer = json.loads(resp.read())
        if "error" in answer:
            raise TestnetError(f"{method} on validator {index}: {answer['error']}")
        return answer["result"]

    def height(self, index: int) -> int:
        return int(self.rpc(index, "status")["sync_info"]["latest_block_height"])

    def wait_for_height(self, index: int, height: int, timeout: float = START_TIMEOUT_S) -> int:
        def reached() -> bool:
            try:
                return self.height(index) >= height
            except OSError:
                return False

        self._wait(reached, f"validator {index} at height {height}", timeout)
        return self.height(index)

    def broadcast(self, index: int, tx: bytes, mode: str = "sync") -> dict[str, Any]:
        result: dict[str, Any] = self.rpc(
            index, f"broadcast_tx_{mode}", tx=base64.b64encode(tx).decode()
        )
        return result

    def query(self, index: int, path: str, data: bytes) -> tuple[int, bytes]:
        r = self.rpc(index, "abci_query", path=path, data=data.hex())["response"]
        return int(r.get("code", 0)), base64.b64decode(r.get("value") or "")

    def app_hash_at(self, index: int, height: int) -> str:
        """The app hash after executing block ``height`` (carried in block ``height + 1``)."""
        header = self.rpc(index, "commit", height=str(height + 1))["signed_header"]["header"]
        return str(header["app_hash"])

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) used so far by the running CometBFT processes and by the
        ABCI apps, summed over validators (Linux ``/proc``; what the benchmark divides by
        the tx count). An in-process app (kvstore) is counted under ``cometbft``."""
        ticks = os.sysconf("SC_CLK_TCK")

        def used(proc: subprocess.Popen[bytes] | None) -> float:
            if proc is None or proc.poll() is not None:
                return 0.0
            try:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return 0.0
            return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime

        return {
            "cometbft": sum(used(v.comet) for v in self.validators),
            "app": sum(used(v.app) for v in self.validators),
        }

    def _wait(self, ok: Any, what: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            if time.monotonic() > deadline:
                raise TestnetError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(0.05)


class RpcClient:
    """JSON-RPC to one validator over a single kept-alive HTTP connection: what a busy client
    does, and far cheaper than a new connection per call. One per thread."""

    def __init__(self, port: int, timeout: float = 30.0) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)

    def call(self, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
        try:
            self._conn.request("POST", "/", body, {"Content-Type": "application/json"})
            answer = json.loads(self._conn.getresponse().read())
        except (http.client.HTTPException, OSError):
            self._conn.close()  # the next call reconnects
            raise
        if "error" in answer:
            raise TestnetError(f"{method}: {answer['error']}")
        return answer["result"]

    def broadcast(self, tx: bytes, mode: str = "sync") -> dict[str, Any]:
        result: dict[str, Any] = self.call(f"broadcast_tx_{mode}", tx=base64.b64encode(tx).decode())
        return result

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_base_port(validators: int, lo: int = 20_000, hi: int = 32_000) -> int:
    """A base port whose ``10 * validators`` ports are all free now on 127.0.0.1 (below the
    kernel's usual ephemeral range, so outgoing connections do not take them meanwhile)."""
    span = 10 * validators
    start = lo + (os.getpid() * 7919) % (hi - lo - span)
    for k in range(0, hi - lo, span):
        base = lo + (start - lo + k) % (hi - lo - span)
        if all(_port_free(base + off) for off in range(span)):
            return base
    raise TestnetError("no free port range on 127.0.0.1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--validators", type=int, default=4)
    parser.add_argument("--root", type=Path, default=Path("/tmp/kofo-testnet"))
    parser.add_argument("--base-port", type=int, default=26600, help="0 picks a free range")
    parser.add_argument("--app", choices=["kofo", "kvstore"], default="kofo")
    args = parser.parse_args(argv)
    base = args.base_port or free_base_port(args.validators)
    net = LocalTestnet(args.root, args.validators, base_port=base, app=args.app)
    net.create()
    try:
        net.start_all()
        for v in net.validators:
            print(f"validator {v.index}: rpc {v.rpc_url}  home {v.home}", flush=True)
        print("running; Ctrl-C stops every validator", flush=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        net.stop()


if __name__ == "__main__":
    main()
