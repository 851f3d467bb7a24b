"""``kofo devnet``: the embedded chains and the solo ledger, served for local nodes.

One process starts, on 127.0.0.1:

- the embedded Bitcoin regtest chain over Bitcoin Core's JSON-RPC (basic auth, a fresh random
  password each run), with a block every ``block_interval`` seconds so confirmations come;
- (``ltc=True``, the default of ``kofo devnet``; ``--no-ltc`` leaves it out) a second embedded
  chain with Litecoin's regtest parameters (``rltc1...`` addresses), served over Core's
  JSON-RPC on its own port with the same user and password, mined at the same pace;
- the embedded EVM (py-evm) over Ethereum JSON-RPC, with the HTLC contract and a test ERC-20
  (``DUSD``, 6 decimals) deployed;
- the solo clearance ledger over CometBFT's RPC subset, with the bond vault
  (``contracts/BondVault.vy``) deployed on the EVM under the solo validator's secp256k1 key as
  its one signer, as the real design has the validators' keys: the ledger attests bonds from
  the vault (nobody declares one) and signs its slash and release decisions for a relayer
  (:func:`kofo.node.bonds.relay_decisions`) to execute on the vault.

It funds the addresses it is given (``bcrt1...`` a 50 BTC coinbase each, ``rltc1...`` a 50 LTC
one, matured; ``0x...`` ETH and DUSD) and prints what a node's ``config.toml`` needs: as TOML,
or as one JSON line (``--json``) that ``kofo init --devnet FILE`` reads. It runs until
SIGINT/SIGTERM.
"""

from __future__ import annotations

import logging
import os
import queue
import secrets
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import coincurve
from eth_utils.crypto import keccak
from web3 import Web3
from web3.types import Wei

from kofo.clearance import bonds
from kofo.clearance.app import LedgerApp
from kofo.clearance.consensus.solo import SoloChain
from kofo.clearance.consensus.solo_rpc import SoloLedgerRpc
from kofo.clearance.params import LedgerParams
from kofo.clearance.store import MerkleStore
from kofo.errors import InvalidInput, KofoError
from kofo.node.validator import PrefetchingObserver
from kofo.settlement.chain import ChainAdapter
from kofo.settlement.chains.bitcoin._secp import ensure_thread_params
from kofo.settlement.chains.bitcoin.adapter import BitcoinAdapter
from kofo.settlement.chains.bitcoin.backend import RpcBackend
from kofo.settlement.chains.bitcoin.embedded import EmbeddedChain
from kofo.settlement.chains.bitcoin.params import chain_params
from kofo.settlement.chains.bitcoin.rpc import RpcClient
from kofo.settlement.chains.bitcoin.rpcserver import RegtestRpcServer, address_to_script
from kofo.settlement.chains.bitcoin.tx import p2wpkh_script_pubkey
from kofo.settlement.chains.bitcoin.wallet import HdWallet
from kofo.settlement.chains.ethereum.adapter import EthereumAdapter
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.devnet import DevnetServer, EmbeddedEvm
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.observer import AdapterObserver, VaultWatcher
from kofo.settlement.terms import devnet_policy

log = logging.getLogger(__name__)

BLOCK_INTERVAL = 1.0
"""Seconds between regtest blocks: a confirmation a second keeps a local swap quick while each
one is still its own block."""
DEVNET_WORK_BITS = 4
"""Registration work on the devnet (default params): 16 scrypt tries, not ~4,000 -- a local
network of several nodes registers in well under a second; the work is a price for sybils on a
public ledger, not here."""


@dataclass(frozen=True, slots=True)
class DevnetTiming:
    """The devnet's time constants, in one place (``kofo devnet --fast-timing``): the solo
    ledger's genesis takes ``attest_grace_s`` and ``min_expiry_gap`` (= ``leg_expiry_step_s``)
    from it, and every node config the devnet describes gets its ``[timing]`` table
    (:meth:`node_table`: the exchange's lock window, the plan's leg expiry step, the engine's
    accept window, the development chains' block interval and confirmations). The production
    network keeps its defaults (600 s, 3,600 s, 300 s, ``attest_grace`` 1,800 s); these are for
    one machine, where a block comes each ``block_interval_s`` and never reorganises.
    docs/node.md ("Timing") gives the arithmetic: every relation the engine, the exchange and
    the ledger check still holds with these values."""

    lock_window_s: int = 20
    """The taker locks within 20 s of the order's time (a commit and a proposal take ~1 s)."""
    accept_window_s: int = 15
    """The maker answers the proposal and the taker signs its lock within 15 s of it."""
    leg_expiry_step_s: int = 10
    """``T_A - T_B`` at least 10 s (the engine's own margin, 5 s on the devnet, fits in it)."""
    attest_grace_s: int = 10
    """A lock is judged late 10 s after its ``lock_by``: a block of the chain (1 s) and two of
    the ledger's are in it."""
    block_interval_s: int = 1
    """The devnet mines a regtest block a second; the nodes' policy counts one a second."""
    confirmations: int = 1

    def node_table(self) -> dict[str, int]:
        """The ``[timing]`` table of a node config (:class:`kofo.node.config.Timing`)."""
        return {
            "lock_window_s": self.lock_window_s,
            "leg_expiry_step_s": self.leg_expiry_step_s,
            "accept_window_s": self.accept_window_s,
            "dev_block_interval_s": self.block_interval_s,
            "dev_confirmations": self.confirmations,
        }

    def ledger_params(self, base: LedgerParams) -> LedgerParams:
        return replace(
            base,
            attest_grace=self.attest_grace_s,
            min_expiry_gap=self.leg_expiry_step_s,
            chain_clock=devnet_chain_clock(self),
            clock_tolerance_pct=0,
            # the development policy's engines lock for at most a day (devnet_policy)
            max_lock_seconds=devnet_policy("btc", height_clock=True).max_lock_seconds - 600,
        )


DEVNET_TIMING = DevnetTiming()


def devnet_chain_clock(timing: DevnetTiming | None = None) -> dict[str, dict[str, int]]:
    """The solo ledger's ``chain_clock`` for the devnet's chains: the nodes' development policy
    there (``devnet_policy`` with ``[timing]``'s block interval and confirmations), so the
    ledger reads a regtest height as the nodes' engines do (with ``clock_tolerance_pct`` 0, the
    policy's ``rate_tolerance_pct``); the production defaults (btc 600 s a block, 40 %) would
    refuse every devnet order whose btc leg a unix leg pays."""
    interval = timing.block_interval_s if timing is not None else 1
    confirmations = timing.confirmations if timing is not None else 1
    out = {}
    for chain, height in (("btc", True), ("ltc", True), ("eth", False)):
        p = replace(
            devnet_policy(chain, height_clock=height),
            block_interval=interval,
            confirmations=confirmations,
        )
        out[chain] = {
            "block_interval": p.block_interval,
            "confirmations": p.confirmations,
            "notice": p.notice_seconds,
            "settle": p.settle_seconds(),
        }
    return out


FUND_WEI = 100 * 10**18
FUND_DUSD = 1_000_000 * 10**6
COINBASE_MATURITY = 100
"""Bitcoin's rule: a coinbase output is spendable 100 blocks after its own."""
_REGTEST = chain_params("btc", "regtest")
_LTC_REGTEST = chain_params("ltc", "regtest")
_MINT_ABI = [
    {
        "name": "mint",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "to", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [],
    }
]


@dataclass
class Devnet:
    """The running servers; :meth:`describe` is what a node config needs."""

    btc: EmbeddedChain
    btc_server: RegtestRpcServer
    btc_user: str
    btc_password: str = field(repr=False)
    eth_server: DevnetServer = field(repr=False)
    ledger: SoloLedgerRpc = field(repr=False)
    htlc: str = ""
    dusd: str = ""
    vault: str = ""
    """The bond vault's address on the devnet EVM."""
    foundation: str = ""
    """Where slashed bonds are paid (an address nobody holds a key for, on the devnet)."""
    vault_signer: bytes = field(default=b"", repr=False)
    """The solo validator's secp256k1 key: the vault's one signer."""
    funded: list[dict[str, Any]] = field(default_factory=list)
    timing: DevnetTiming | None = None
    """The devnet's time constants (``--fast-timing``); None: the production defaults."""
    ltc: EmbeddedChain | None = None
    """The embedded Litecoin regtest chain (None: the devnet runs without LTC)."""
    ltc_server: RegtestRpcServer | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _miner: threading.Thread | None = None

    def _core_table(self, server: RegtestRpcServer) -> dict[str, Any]:
        return {
            "rpc_url": server.url.rstrip("/"),
            "rpc_user": self.btc_user,
            "rpc_password": self.btc_password,
            "network": "regtest",
            "dialect": "core",
        }

    def describe(self) -> dict[str, Any]:
        return {
            "ledger": {"url": self.ledger.url},
            "chains": {
                "btc": self._core_table(self.btc_server),
                **({"ltc": self._core_table(self.ltc_server)} if self.ltc_server else {}),
                "eth": {
                    "rpc_url": self.eth_server.url,
                    "htlc_contract": self.htlc,
                    "chain_id": int(self.eth_server.evm.w3.eth.chain_id),
                    "tokens": {"DUSD": self.dusd},
                },
            },
            "bond": {"chain": "eth", "vault": self.vault, "amount": 0},
            "funded": self.funded,
            **({"timing": self.timing.node_table()} if self.timing else {}),
        }

    def stop(self) -> None:
        self._stop.set()
        if self._miner is not None:
            self._miner.join()

        observer = self.ledger.chain.app.observer
        if isinstance(observer, PrefetchingObserver):
            observer.close()
        self.ledger.stop()
        self.eth_server.stop()
        if self.ltc_server is not None:
            self.ltc_server.stop()
        if self.ltc is not None:
            self.ltc.close()
        self.btc_server.stop()
        self.btc.close()


def _observer(net: Devnet, eth_url: str) -> AdapterObserver:
    """The solo validator's chain watchers: read-only adapters over the devnet's RPC servers
    (throwaway keys: they never sign), searching for spent locks from today's tips."""
    btc = BitcoinAdapter(
        RpcBackend(RpcClient(net.btc_server.url, net.btc_user, net.btc_password)),
        HdWallet(os.urandom(32), _REGTEST),
    )
    w3 = Web3(Web3.HTTPProvider(eth_url, request_kwargs={"timeout": 10}))
    eth = EthereumAdapter(w3, account_from_seed(os.urandom(32)), net.htlc)
    adapters: dict[str, ChainAdapter] = {"btc": btc, "eth": eth}
    since = {"btc": net.btc.height(), "eth": int(w3.eth.block_number)}
    if net.ltc is not None and net.ltc_server is not None:
        adapters["ltc"] = BitcoinAdapter(
            RpcBackend(RpcClient(net.ltc_server.url, net.btc_user, net.btc_password)),
            HdWallet(os.urandom(32), _LTC_REGTEST),
        )
        since["ltc"] = net.ltc.height()
    return AdapterObserver(adapters, spent_since=since, vault=VaultWatcher(w3, net.vault))


def _burn_script() -> bytes:
    # Clock-only blocks pay a key nobody keeps, so no funded balance moves with them (the same
    # P2WPKH script on either chain: only the address's HRP differs).
    return p2wpkh_script_pubkey(HdWallet(os.urandom(32), _REGTEST).identity.pubkey)


def start_devnet(
    *,
    btc_port: int = 0,
    eth_port: int = 0,
    ledger_port: int = 0,
    ltc: bool = False,
    ltc_port: int = 0,
    fund: list[str] | None = None,
    block_interval: float = BLOCK_INTERVAL,
    ledger_params: LedgerParams | None = None,
    ledger_clock: Callable[[], int] | None = None,
    timing: DevnetTiming | None = None,
    progress: Callable[[str], None] = lambda _line: None,
) -> Devnet:
    """Start everything (ports 0 = free ones), fund ``fund``; the caller calls ``stop()``.
    ``ledger_clock`` gives the solo ledger's block times (unix seconds; tests move it).
    ``timing``: the devnet's short time constants for the ledger and the node configs
    (:data:`DEVNET_TIMING`); None keeps the production ones. ``ltc``: also the embedded
    Litecoin regtest chain (``kofo devnet`` starts it unless ``--no-ltc``; off here so an
    in-process devnet pays for it only when asked)."""
    if block_interval < 0:
        raise InvalidInput(f"block_interval must be >= 0 seconds, got {block_interval}")
    if timing is not None and 0 < block_interval < timing.block_interval_s:
        # Blocks faster than the nodes' policy counts would shorten every block-height margin
        # (a leg's T_A could pass before the other leg's T_B): refused, not silently unsafe.
        raise InvalidInput(
            f"block_interval {block_interval} s is below the timing's block interval "
            f"{timing.block_interval_s} s: the nodes' block-height margins would not hold"
        )
    btc_targets, ltc_targets, eth_targets = _split_fund(fund or [])
    if ltc_targets and not ltc:
        raise InvalidInput(
            f"--fund {ltc_targets[0][0]!r}: a Litecoin address, but the devnet runs without LTC"
        )
    btc = EmbeddedChain(params=_REGTEST)
    user, password = "kofo-devnet", secrets.token_hex(16)
    started: list[Callable[[], None]] = [btc.close]
    ltc_chain: EmbeddedChain | None = None
    ltc_server: RegtestRpcServer | None = None
    try:
        btc_server = RegtestRpcServer(btc, user, password, port=btc_port).start()
        started.append(btc_server.stop)
        if ltc:
            ltc_chain = EmbeddedChain(params=_LTC_REGTEST)
            started.append(ltc_chain.close)
            ltc_server = RegtestRpcServer(ltc_chain, user, password, port=ltc_port).start()
            started.append(ltc_server.stop)
        eth_server = DevnetServer(port=eth_port).start()
        started.append(eth_server.stop)
        w3 = Web3(Web3.HTTPProvider(eth_server.url, request_kwargs={"timeout": 30}))
        faucet = w3.eth.accounts[0]  # the devnet's pre-funded, unlocked account
        # The solo validator's vault key: a fresh one each run, like the RPC password.
        signer = secrets.token_bytes(32)
        signer_addr = Web3.to_checksum_address(
            bonds.eth_address(coincurve.PrivateKey(signer).public_key)
        )
        vault = deploy(w3, "BondVault", faucet, [signer_addr], [1])
        foundation = Web3.to_checksum_address(keccak(b"KOFO devnet foundation")[12:])
        base = ledger_params or LedgerParams(
            registration_work_bits=DEVNET_WORK_BITS, registration_prework_bits=DEVNET_WORK_BITS
        )
        params = replace(
            base if timing is None else timing.ledger_params(base),
            bond_vault_chain_id=int(w3.eth.chain_id),
            bond_vault_address=vault,
            slash_recipient=foundation,
            bond_height_step=1,  # one validator: nothing to agree on, bonds count at once
            # the devnet's chains run on the nodes' development policy (no rate tolerance: its
            # blocks come on a clock), whatever timing the rest of the devnet has
            chain_clock=devnet_chain_clock(timing),
            clock_tolerance_pct=0,
        )
        app = LedgerApp(MerkleStore(), params, vault_signer=signer)
        ledger = SoloLedgerRpc(SoloChain(app, clock=ledger_clock), port=ledger_port).start()
        started.append(ledger.stop)
        net = Devnet(btc, btc_server, user, password, eth_server, ledger)
        net.vault, net.foundation, net.vault_signer = vault, foundation, signer
        net.timing = timing
        net.ltc, net.ltc_server = ltc_chain, ltc_server
        progress(f"bitcoin regtest (Core JSON-RPC) at {btc_server.url}")
        if ltc_server is not None:
            progress(f"litecoin regtest (Core JSON-RPC) at {ltc_server.url}")
        progress(f"EVM (Ethereum JSON-RPC) at {eth_server.url}")
        progress(f"solo ledger (CometBFT RPC) at {ledger.url}")

        net.htlc = deploy(w3, "HTLC", faucet)
        net.dusd = deploy(w3, "TestToken", faucet, "Devnet USD", "DUSD", 6)
        progress(f"deployed HTLC {net.htlc}, DUSD token {net.dusd}, bond vault {vault}")
        minter = w3.eth.contract(address=Web3.to_checksum_address(net.dusd), abi=_MINT_ABI)
        for address in eth_targets:
            to = Web3.to_checksum_address(address)
            w3.eth.wait_for_transaction_receipt(
                w3.eth.send_transaction({"from": faucet, "to": to, "value": Wei(FUND_WEI)})
            )
            w3.eth.wait_for_transaction_receipt(
                minter.functions.mint(to, FUND_DUSD).transact({"from": faucet})
            )
            net.funded.append({"chain": "eth", "address": to, "wei": FUND_WEI})
            net.funded.append({"chain": "eth", "token": "DUSD", "address": to, "units": FUND_DUSD})
            progress(f"funded {to}: {FUND_WEI // 10**18} ETH, {FUND_DUSD // 10**6} DUSD")
        # The solo ledger is its own validator: it attests leg outcomes from its own view of
        # the chains, read over the same RPC a node uses (docs/clearance.md).
        # Read off the producer's lock (which every RPC query takes too): a slow chain read
        # never holds up the ledger's blocks or queries (kofo.node.validator).
        app.observer = PrefetchingObserver(_observer(net, eth_server.url))
        burn = _burn_script()
        for address, script in btc_targets:
            btc.mine(1, script)
            net.funded.append({"chain": "btc", "address": address, "sats": 50 * 10**8})
        btc.mine(COINBASE_MATURITY, burn)  # coinbase outputs mature after 100 blocks
        for address, _ in btc_targets:
            progress(f"funded {address}: a 50 BTC coinbase (matured)")
        if ltc_chain is not None:
            for address, script in ltc_targets:
                ltc_chain.mine(1, script)
                net.funded.append({"chain": "ltc", "address": address, "sats": 50 * 10**8})
            ltc_chain.mine(COINBASE_MATURITY, burn)
            for address, _ in ltc_targets:
                progress(f"funded {address}: a 50 LTC coinbase (matured)")
        if block_interval > 0:
            # With blocks on, the EVM's clock (its latest block's time, what a node reads as
            # the chain's "now") must follow the wall clock, with or without the devnet's
            # timing: an EVM that mines only on transactions stands still between them, and a
            # swap laid out after a few idle minutes had its deadlines already past.
            evm = eth_server.evm
            chains = [btc] if ltc_chain is None else [btc, ltc_chain]
            net._miner = threading.Thread(
                target=_mine_loop, args=(chains, burn, block_interval, net._stop, evm), daemon=True
            )
            net._miner.start()
        return net
    except BaseException:
        for stop in reversed(started):
            stop()
        raise


def _mine_loop(
    chains: list[EmbeddedChain],
    script: bytes,
    interval: float,
    stop: threading.Event,
    evm: EmbeddedEvm | None = None,
) -> None:
    ensure_thread_params()  # python-bitcointx keeps its chain params per thread
    while not stop.wait(interval):
        for chain in chains:
            try:
                chain.mine(1, script)
            except KofoError:
                log.exception(
                    "devnet: mining a %s regtest block failed; trying again next interval",
                    chain.params.chain,
                )
        if evm is not None:
            _evm_tick(evm)


def _evm_tick(evm: EmbeddedEvm) -> None:
    """An empty EVM block stamped now, unless the latest block is already this second's."""
    now = int(time.time())
    try:
        latest = int(evm.handle("eth_getBlockByNumber", ["latest", False])["timestamp"], 16)
        if now > latest:
            evm.handle("evm_setNextBlockTimestamp", [now])
    except Exception:  # a block mined between the two calls: the clock moved anyway
        log.debug("devnet: EVM clock block skipped", exc_info=True)


def _split_fund(
    fund: list[str],
) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]], list[str]]:
    """``fund`` split by chain: Bitcoin and Litecoin regtest (address, scriptPubKey) pairs,
    Ethereum addresses. Anything else is refused, naming the address."""
    btc: list[tuple[str, bytes]] = []
    ltc: list[tuple[str, bytes]] = []
    eth: list[str] = []
    for address in fund:
        if address.startswith("0x"):
            if not Web3.is_address(address):
                raise InvalidInput(f"--fund {address!r} is not an Ethereum address")
            eth.append(address)
            continue
        for params, out in ((_REGTEST, btc), (_LTC_REGTEST, ltc)):
            if address.lower().startswith(params.bech32_hrp + "1"):
                try:
                    out.append((address, address_to_script(address, hrp=params.bech32_hrp)))
                except InvalidInput as exc:
                    raise InvalidInput(f"--fund {address!r}: {exc}") from None
                break
        else:
            raise InvalidInput(
                f"--fund {address!r}: give a regtest bech32 address (bcrt1... or rltc1...) "
                "or an Ethereum address (0x...)"
            )
    return btc, ltc, eth


def toml_snippet(desc: dict[str, Any]) -> str:
    """The ``[ledger]``, ``[chains.*]``, ``[bond]`` (and ``[timing]``) tables of a node config
    for this devnet."""
    from kofo.node.config import render_config

    full = render_config(
        name="kofo",
        ledger_url=desc["ledger"]["url"],
        chains=desc["chains"],
        bond=desc["bond"],
        timing=desc.get("timing"),
    )
    keep, on = [], False
    for line in full.splitlines():
        if line.startswith("["):
            on = line.startswith(("[ledger]", "[chains.", "[bond]", "[timing]"))
        elif line.startswith("# Standing offers"):
            on = False
        if on:
            keep.append(line)
    return "\n".join(keep).strip() + "\n"


def run_until_signal(net: Devnet, progress: Callable[[str], None] = lambda _line: None) -> None:
    """Block until SIGINT or SIGTERM, then stop ``net``. SIGUSR1 pauses the ledger (its RPC
    refuses connections, no blocks), SIGUSR2 resumes it: an outage on demand, for tests and
    demos; the chains go on."""
    done = threading.Event()
    toggles: queue.SimpleQueue[bool] = queue.SimpleQueue()
    previous = {
        sig: signal.signal(sig, lambda _s, _f: done.set())
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    previous[signal.SIGUSR1] = signal.signal(signal.SIGUSR1, lambda _s, _f: toggles.put(True))
    previous[signal.SIGUSR2] = signal.signal(signal.SIGUSR2, lambda _s, _f: toggles.put(False))
    try:
        while not done.wait(0.1):
            while not toggles.empty():
                if toggles.get():
                    net.ledger.pause()
                    progress(f"ledger paused ({net.ledger.url} refuses connections)")
                else:
                    net.ledger.resume()
                    progress(f"ledger resumed on {net.ledger.url}")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        net.stop()
