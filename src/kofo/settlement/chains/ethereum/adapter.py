"""The Ethereum :class:`~kofo.settlement.chain.ChainAdapter`: ETH and ERC-20 legs through the
KOFO HTLC contract, over web3.py.

The same code path serves every backend web3.py has a provider for: the embedded EVM
(eth-tester + py-evm, see :func:`embedded_web3`) and any JSON-RPC node such as geth.
Transactions are signed locally (EIP-1559) with the node's key; the node never holds it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eth_abi.abi import encode as abi_encode
from eth_account.signers.local import LocalAccount
from eth_account.typed_transactions.typed_transaction import TypedTransaction
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hexbytes import HexBytes
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

from kofo.errors import (
    AuditFailed,
    ChainError,
    FeeTooLow,
    InsufficientFunds,
    InvalidInput,
    TxRejected,
)
from kofo.settlement.chain import (
    BlockInfo,
    FeeEstimate,
    HeadPin,
    HtlcRef,
    HtlcState,
    HtlcStatus,
    HtlcTerms,
    SignedTx,
    TxKind,
    UnixTime,
    check_preimage,
)
from kofo.settlement.chains.ethereum.contract import load_artifact
from kofo.settlement.chains.ethereum.event_index import HtlcEvent, HtlcEventIndex, decode_log
from kofo.settlement.chains.ethereum.nonces import NonceManager
from kofo.wire.legkeys import LegRole, sign_leg_key

log = logging.getLogger(__name__)

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"

LOCK_AFTER_APPROVE_GAS_FACTOR = 4
"""A token lock signed before its approve is mined cannot be estimated (it would revert), so its
gas limit is derived from the approve's estimate, which prices one fresh storage slot on the
chain's current fork: the lock writes about three (the swap slot and two token balances) plus a
log and two balance reads. Four times leaves a margin for unusual token implementations and for
forks that price state growth differently (geth --dev's fork charges ~3x py-evm's Prague for new
slots). Unused gas is not charged."""

SPEND_GAS_RESERVE = 100_000
"""Gas kept aside per redeem or refund a swap may need (:meth:`EthereumAdapter.
spend_fee_reserve`): bench.gas measures an ERC-20 redeem at ~42k and a refund at ~42k, signed
with a limit 25 % above the estimate; twice that leaves room for unusual tokens."""

MIN_TOKEN_LOCK_GAS = 200_000
"""Floor for the derived limit: bench.gas measures a token lock at ~83k gas on Prague."""

MAX_BATCH = 64
"""Swaps per redeem_many/refund_many (the contract's bound)."""

FIND_FIRST_WINDOW = 8

DEFAULT_MAX_FEE_PER_GAS = 1_000 * 10**9
"""The highest ``maxFeePerGas`` (and so tip) this node signs, in wei: 1,000 gwei, several times
any sustained mainnet base fee. The node's fee answers are not trusted beyond it: an estimate
above it is lowered to it, a fee asked for above it is refused, so a lying or broken RPC node
cannot hand a swap's value to miners (about 0.05 ETH at most for a redeem)."""
"""Blocks in the first window :meth:`EthereumAdapter.find_htlc` scans back from the tip; each
further window doubles. A live lock is usually a few blocks old, and a log query's cost grows
with the range it covers (on the embedded EVM quadratically), so the search starts small."""

FREE = (1).to_bytes(32, "big")
"""A settled reusable slot (contracts/HTLC.vy): the next lock there rewrites a non-zero word."""

ONE_SHOT = 2**31
"""Slots from here up are cleared on payout (contracts/HTLC.vy); below it, they are kept."""

SLOT_SCAN = 512
"""Kept slots read at most per lock before the pool is grown past them."""
_FEE_REFUSALS = (
    # geth's txpool: under the pool's price floor or a full pool's cheapest ("transaction
    # underpriced"), a same-nonce replacement without the bump ("replacement transaction
    # underpriced"), a tip under --miner.gasprice ("gas price below minimum").
    "underpriced",
    "gas price below minimum",
    "less than block base fee",
)
"""Lower-cased fragments of a node's refusal that name the fee alone."""

_ERC20_ABI: list[dict[str, Any]] = [
    {
        "name": "approve",
        "type": "function",
        "stateMutability": "nonpayable",
        "inputs": [{"name": "spender", "type": "address"}, {"name": "amount", "type": "uint256"}],
        "outputs": [{"name": "", "type": "bool"}],
    },
    {
        "name": "allowance",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}, {"name": "spender", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
    {
        "name": "balanceOf",
        "type": "function",
        "stateMutability": "view",
        "inputs": [{"name": "owner", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
]


@dataclass(frozen=True)
class _Log:
    """One decoded log of the contract (see :func:`event_index.decode_log`)."""

    name: str
    txid: str
    block: int
    slot: int | None
    preimage: bytes | None


def _word(party: str, expiry: int, slot: int) -> int:
    """The contract's packed argument: ``party << 96 | expiry << 32 | slot``."""
    return int(party, 16) << 96 | expiry << 32 | slot


def swap_id(terms: HtlcTerms) -> bytes:
    """The contract's key for a swap: keccak256 of the ABI-encoded parameters."""
    return keccak(
        abi_encode(
            ["bytes32", "address", "address", "address", "uint256", "uint256"],
            [
                terms.payment_hash,
                terms.token or ZERO_ADDRESS,
                terms.sender,
                terms.recipient,
                terms.amount,
                terms.expiry.value,
            ],
        )
    )


def embedded_web3() -> Web3:
    """A fresh in-process EVM (py-evm through eth-tester), mining one block per transaction."""
    from web3 import EthereumTesterProvider

    from kofo.settlement.chains.ethereum.devnet import indexed_tester

    return Web3(EthereumTesterProvider(indexed_tester()))


def _raised(fee: int) -> int:
    """A fee a quarter higher, rounded up, and at least 1 wei more."""
    return max(fee + 1, -(-fee * 5 // 4))


def _nonce_of(tx: SignedTx) -> int:
    return int(TypedTransaction.from_bytes(HexBytes(tx.raw)).as_dict()["nonce"])


def _hex(data: bytes) -> str:
    return "0x" + bytes(data).hex()


class EthereumAdapter:
    """ETH/ERC-20 HTLC legs on one EVM chain, as the node's ``account``."""

    outputs: tuple[str, ...] = ()
    """Every HTLC here is an entry of the one contract: no other output form (``output``)."""

    def leg_output(self) -> str | None:
        return None

    def min_amount(self, terms: HtlcTerms) -> int:
        """Gas is paid by the caller, not out of the HTLC: any positive amount pays out whole."""
        del terms
        return 1

    def spend_fee_reserve(self) -> int:
        """:data:`SPEND_GAS_RESERVE` gas at the fee this adapter signs with now (twice the base
        fee plus the tip: six full blocks of base-fee rises)."""
        return SPEND_GAS_RESERVE * self.estimate_fee().rate

    def __init__(
        self,
        w3: Web3,
        account: LocalAccount,
        htlc_address: str,
        *,
        chain: str = "eth",
        nonce_db: Path | None = None,
        min_priority_fee: int = 1_000_000_000,
        max_fee_per_gas: int = DEFAULT_MAX_FEE_PER_GAS,
        chain_id: int | None = None,
    ) -> None:
        """``chain_id`` is the chain this adapter is configured for (EIP-155): the node must
        serve it at start and at every new head it reports, or the adapter refuses to read or
        sign (:class:`ChainError` ``wrong_chain``), and every transaction is signed for it,
        whatever the node says later. Without it the node's answer at start is taken as the
        configuration (tests and devnets) and held to the same way from then on."""
        if not 0 < min_priority_fee <= max_fee_per_gas:
            raise InvalidInput(
                f"min_priority_fee {min_priority_fee} must be positive and at most "
                f"max_fee_per_gas {max_fee_per_gas}"
            )
        self.chain = chain
        self.max_fee_per_gas = max_fee_per_gas
        self.w3 = w3
        self.account = account
        self._min_priority = min_priority_fee
        if chain_id is not None and (isinstance(chain_id, bool) or chain_id <= 0):
            raise InvalidInput(f"chain_id {chain_id!r} is no chain id (a positive integer)")
        served = self._served_chain_id()
        self._chain_id = served if chain_id is None else chain_id
        self._check_chain_id(served)
        artifact = load_artifact("HTLC")
        self.htlc: Contract = w3.eth.contract(
            address=to_checksum_address(htlc_address), abi=artifact.abi
        )
        if not w3.eth.get_code(self.htlc.address):
            raise ChainError(f"no contract code at HTLC address {self.htlc.address}")
        self._index = HtlcEventIndex(w3, self.htlc.address, on_new_head=self._check_chain_id)
        self._slots: dict[tuple[bytes, str], int] = {}  # (swap id, lock txid) -> its slot
        self._token_locks = threading.Lock()
        self._pin = HeadPin()  # inside observe(), the head is not re-read per call
        self._tokens: dict[str, Contract] = {}
        self._spends: dict[bytes, HtlcStatus] = {}  # swap id -> its redeem/refund, once seen
        self.nonces = NonceManager(
            account.address,
            lambda: w3.eth.get_transaction_count(account.address, "pending"),
            nonce_db,
            chain_mined_count=lambda: w3.eth.get_transaction_count(account.address, "latest"),
            tx_mined=lambda txid: self._mined_at(_hex(txid)) is not None,
        )

    # -- identity, balances, time -------------------------------------------------------

    @property
    def chain_id(self) -> int:
        """The configured chain id: the one every transaction is signed for (EIP-155)."""
        return self._chain_id

    def _served_chain_id(self) -> int:
        try:
            served: Any = self.w3.eth.chain_id
        except (Web3RPCError, ValueError, TypeError, AttributeError, OSError) as exc:
            raise ChainError(
                f"{self.chain}: the node's chain id could not be read: {exc}",
                code="bad_rpc_answer",
            ) from None
        if isinstance(served, bool) or not isinstance(served, int) or served <= 0:
            raise ChainError(
                f"{self.chain}: the node answered {served!r} as its chain id",
                code="bad_rpc_answer",
            )
        return served

    def _check_chain_id(self, served: int | None = None) -> None:
        """Refuse a node that serves another chain than the configured one: its HTLCs are not
        ours to read, and nothing is signed for it (each transaction names the configured id,
        so a chain that serves another id would not take it anyway)."""
        served = self._served_chain_id() if served is None else served
        if served != self._chain_id:
            raise ChainError(
                f"{self.chain}: the node serves chain id {served}, this adapter is configured "
                f"for {self._chain_id}: nothing is read or signed through it",
                code="wrong_chain",
            )

    def address(self) -> str:
        return str(self.account.address)

    def owns(self, address: str) -> bool:
        # One account per node: see docs/swap.md, "Keys and secrets at rest", for why.
        return address == self.account.address

    def prove_leg_key(self, address: str, order_id: bytes, leg: int, role: LegRole) -> bytes:
        """The proof that this node controls ``address`` (its account) as leg ``leg``'s
        ``role`` of ledger order ``order_id`` (:mod:`kofo.wire.legkeys`)."""
        if not self.owns(address):
            raise InvalidInput(f"{address} is not this node's account")
        return sign_leg_key(bytes(self.account.key), address, order_id, leg, role)

    def _token(self, token: str) -> Contract:
        contract = self._tokens.get(token)
        if contract is None:
            contract = self.w3.eth.contract(address=to_checksum_address(token), abi=_ERC20_ABI)
            self._tokens[token] = contract
        return contract

    def balance(self, token: str | None = None, owner: str | None = None) -> int:
        who = to_checksum_address(owner or self.account.address)
        if token is None:
            return int(self.w3.eth.get_balance(who))
        return int(self._token(token).functions.balanceOf(who).call())

    def expiry_now(self) -> UnixTime:
        self._head()
        return UnixTime(self._index.head[2])

    def observe(self) -> AbstractContextManager[None]:
        """Read the head once; inside the block, the HTLC reads and the clock all see it."""
        return self._pin.hold(self._index.refresh)

    def _head(self) -> int:
        """The indexed tip height, brought up to date unless pinned by :meth:`observe`."""
        return self._index.height if self._pin.held else self._index.refresh()

    def tip(self) -> BlockInfo:
        self._head()
        height, block_hash, time = self._index.head
        return BlockInfo(height, _hex(block_hash), time)

    def block_at(self, height: int) -> BlockInfo:
        return self._block(height)

    def _block(self, ident: int | str) -> BlockInfo:
        b = self.w3.eth.get_block(ident)  # type: ignore[arg-type]
        return BlockInfo(height=int(b["number"]), hash=_hex(b["hash"]), time=int(b["timestamp"]))

    def tx_confirmations(self, txid: str) -> int:
        mined = self._mined_at(txid)
        return 0 if mined is None else int(self.w3.eth.block_number) - mined + 1

    def lock_unminable(self, ref: HtlcRef, txs: Sequence[SignedTx], depth: int) -> bool:
        """The contract refuses a lock whose expiry is not after its block's timestamp
        (``expiry past``), and every block after the head is later than it: from the head's
        clock at the expiry on, a late lock (or its nonce's replacement) only reverts."""
        del txs, depth
        return self.expiry_now().value >= ref.terms.expiry.value

    def _mined_at(self, txid: str) -> int | None:
        """The height of the best-chain block holding ``txid``; None if unmined or unknown."""
        try:
            receipt = self.w3.eth.get_transaction_receipt(HexBytes(txid))
        except TransactionNotFound:
            return None
        if receipt is None or receipt.get("blockNumber") is None:
            return None
        # A receipt from a block that was reorganised away must not count.
        block = self.w3.eth.get_block(receipt["blockNumber"])
        if bytes(block["hash"]) != bytes(receipt["blockHash"]):
            return None
        return int(receipt["blockNumber"])

    def estimate_fee(self) -> FeeEstimate:
        """Twice the latest base fee plus the node's tip (at least ``min_priority_fee``), both
        lowered to ``max_fee_per_gas``. A tip answer that is no number gives the minimum tip; a
        base fee that is no number is a :class:`ChainError` (``bad_rpc_answer``)."""
        try:
            base: Any = self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0
        except (Web3RPCError, ValueError, TypeError, AttributeError) as exc:
            raise ChainError(
                f"{self.chain}: the latest block could not be read: {exc}", code="bad_rpc_answer"
            ) from None
        if isinstance(base, bool) or not isinstance(base, int) or base < 0:
            raise ChainError(
                f"{self.chain}: the node's base fee {base!r} is no fee", code="bad_rpc_answer"
            )
        try:
            answer: Any = self.w3.eth.max_priority_fee
        except (Web3RPCError, ValueError, TypeError, AttributeError, NotImplementedError):
            answer = None
        if isinstance(answer, bool) or not isinstance(answer, int) or answer < 0:
            if answer is not None:
                log.error("%s: tip estimate %r is no fee; paying the minimum", self.chain, answer)
            answer = 0
        priority = max(answer, self._min_priority)
        # Twice the base fee survives six consecutive full blocks (+12.5 % each) before the
        # transaction stops being includable; the unused part is never charged under EIP-1559.
        rate = 2 * base + priority
        if rate > self.max_fee_per_gas:
            log.warning(
                "%s fee estimate %d wei/gas (tip %d) is above the ceiling %d: paying the ceiling",
                self.chain,
                rate,
                priority,
                self.max_fee_per_gas,
            )
            rate = self.max_fee_per_gas
        return FeeEstimate(rate=rate, priority=min(priority, rate))

    # -- building and signing -----------------------------------------------------------

    def _check_terms(self, terms: HtlcTerms) -> None:
        if terms.chain != self.chain:
            raise InvalidInput(f"terms are for chain {terms.chain!r}, this adapter is {self.chain}")
        if not isinstance(terms.expiry, UnixTime):
            raise InvalidInput(f"an Ethereum expiry is a unix time, got {terms.expiry}")
        for name in ("sender", "recipient"):
            value = getattr(terms, name)
            if not Web3.is_address(value):
                raise InvalidInput(f"{name} is not an Ethereum address: {value!r}")
        if terms.token is not None:
            if not Web3.is_address(terms.token):
                raise InvalidInput(f"token is not an Ethereum address: {terms.token!r}")
            if int(terms.token, 16) == 0:
                # The contract keys ETH swaps by token = address(0): terms naming it as a token
                # would share the ETH swap's id (and its lock) while claiming another asset.
                raise InvalidInput(
                    f"token {terms.token} is the zero address; an ETH leg has no token",
                    code="bad_token",
                )
        if terms.output is not None:
            raise InvalidInput(
                f"an Ethereum HTLC lives in the KOFO contract; output {terms.output!r} names "
                "no other form here",
                code="bad_output",
            )

    def _sign(
        self, kind: TxKind, call: Any, fee: FeeEstimate | None, value: int = 0, gas: int = 0
    ) -> SignedTx:
        return self._sign_with_gas(kind, call, fee, value, gas)[0]

    def _sign_with_gas(
        self,
        kind: TxKind,
        call: Any,
        fee: FeeEstimate | None,
        value: int = 0,
        gas: int = 0,
        min_gas: int = 0,
    ) -> tuple[SignedTx, int]:
        """Sign ``call``; returns the transaction and the gas limit it carries."""
        self._check_chain_id()
        fee = fee or self.estimate_fee()
        if not 0 < fee.rate <= self.max_fee_per_gas or fee.priority < 0:
            raise InvalidInput(
                f"{kind} fee {fee.rate} wei/gas (tip {fee.priority}) is outside (0, "
                f"{self.max_fee_per_gas}], this node's ceiling (max_fee_per_gas)",
                code="bad_fee",
            )
        params: dict[str, Any] = {
            "from": self.account.address,
            "value": value,
            "chainId": self._chain_id,
            "maxFeePerGas": fee.rate,
            "maxPriorityFeePerGas": min(fee.priority, fee.rate),
        }
        if value and self.balance() < value:
            raise InsufficientFunds(f"{kind} sends {value} wei, wallet has {self.balance()}")
        if not gas:
            try:
                # Estimated without the fee fields: the gas a call uses does not depend on them,
                # and a node may otherwise refuse an estimate at a high cap the wallet could
                # not pay for the block's whole gas limit (eth-tester does).
                probe = {"from": self.account.address, "value": value}
                gas = int(call.estimate_gas(probe) * 5 // 4)  # +25 %: state may shift a bit
            except ContractLogicError as exc:
                raise TxRejected(f"{kind} would revert: {exc.message or exc}") from None
            gas = max(gas, min_gas)
        params["gas"] = gas
        needed = gas * fee.rate + value
        have = self.balance()
        if have < needed:
            raise InsufficientFunds(
                f"{kind} needs up to {needed} wei (value + max fee), wallet has {have}"
            )
        params["nonce"] = nonce = self.nonces.allocate()
        try:
            tx = call.build_transaction(params)
            signed = self.account.sign_transaction(tx)
        except BaseException:
            self.nonces.release(nonce)  # nothing was signed with it
            raise
        self.nonces.record(nonce, bytes(signed.raw_transaction))
        return SignedTx(self.chain, kind, _hex(signed.hash), bytes(signed.raw_transaction)), gas

    def hold(self, txs: Sequence[SignedTx]) -> None:
        """Nothing to do: every signed nonce (and lock slot) stays reserved in the durable
        nonce store until it is mined or released (:mod:`.nonces`)."""

    def release(self, txs: Sequence[SignedTx]) -> None:
        """Nothing to do here: see :meth:`hold`."""

    def prepare_lock(self, terms: HtlcTerms, fee: FeeEstimate | None = None) -> list[SignedTx]:
        self._check_terms(terms)
        if to_checksum_address(terms.sender) != self.account.address:
            raise InvalidInput(
                f"sender {terms.sender} is not this wallet's address {self.account.address}"
            )
        expiry = terms.expiry.value
        recipient = to_checksum_address(terms.recipient)
        if expiry <= self.expiry_now().value:
            raise InvalidInput(f"expiry {terms.expiry} is not in the future")
        if expiry >= 2**64:
            raise InvalidInput(f"expiry {terms.expiry} does not fit the contract's 64 bits")
        signed = self._check_second_lock(terms, recipient, expiry)
        if signed is not None:
            return [signed]
        slot = self._choose_slot()  # claimed in the nonce store until the lock is mined
        try:
            txs = self._prepare_lock(terms, fee, _word(recipient, expiry, slot))
        except BaseException:
            self.nonces.release_slot(slot)
            raise
        self.nonces.bind_slot(slot, _nonce_of(txs[-1]))
        return txs

    def _check_second_lock(self, terms: HtlcTerms, recipient: str, expiry: int) -> SignedTx | None:
        """The signed, unmined lock of ``terms`` this wallet already holds, if any (returned
        again: preparing a lock is idempotent); :class:`InvalidInput` if the event index saw a
        lock of ``terms`` whose slot still holds it.

        v1's contract refused a second lock of the same terms ("exists"); v2 keeps no record per
        swap id, so two of the sender's slots could hold one id. A redeem or refund log names
        the id, not the slot, so one payout would read as settling both: the second deposit
        would never be refunded, and anyone holding the then public preimage could pay it to
        the recipient as well. A lock signed but not journaled (a crash in between) is found in
        the nonce store, whose gap filling would otherwise broadcast it beside a new one. (A
        token lock's approve has the nonce before it: broadcasting the lock sends it first.)
        """
        token = to_checksum_address(terms.token or ZERO_ADDRESS)
        wanted = (bytes(terms.payment_hash), token, terms.amount, int(recipient, 16) << 64 | expiry)
        mined = int(self.w3.eth.get_transaction_count(self.account.address, "latest"))
        for _, raw in self.nonces.signed_between(mined, 2**63 - 1):
            if wanted in self._signed_locks(raw):
                txid = _hex(keccak(raw))
                return SignedTx(self.chain, TxKind.LOCK, txid, raw)
        # The event index only (brought to the head): a search of the whole chain by logs
        # would be a long, range-limited query on a real node, for every lock. The window
        # this guards (a crash between signing and journaling) is recent.
        sid = swap_id(terms)
        self._head()
        slots = {
            e.slot for e in self._index.events(sid) if e.name == "Locked" and e.slot is not None
        }
        if any(self._slot_value(slot) == sid for slot in slots):
            raise InvalidInput(
                f"these terms are already locked (swap {_hex(swap_id(terms))} is live): a "
                "second lock of the same terms is never signed"
            )
        return None

    def _signed_locks(self, raw: bytes) -> list[tuple[bytes, str, int, int]]:
        """The locks in signed transaction ``raw``, if it calls the HTLC: (payment hash, token,
        amount, recipient << 64 | expiry) each."""
        fields = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
        to = fields.get("to")
        if not to or to_checksum_address(bytes(to)) != self.htlc.address:
            return []
        try:
            function, args = self.htlc.decode_function_input(bytes(fields["data"]))
        except ValueError:
            return []
        if function.fn_name == "lock":
            return [
                (
                    bytes(args["payment_hash"]),
                    ZERO_ADDRESS,
                    int(fields["value"]),
                    args["word"] >> 32,
                )
            ]
        if function.fn_name in ("lock_token", "lock_token_with_permit"):
            token = to_checksum_address(args["token"])
            return [(bytes(args["payment_hash"]), token, args["amount"], args["word"] >> 32)]
        if function.fn_name != "lock_many":
            return []
        rows = [list(r.values()) if isinstance(r, dict) else list(r) for r in args["items"]]
        return [(bytes(h), to_checksum_address(t), a, w >> 32) for h, t, a, w in rows]

    def _prepare_lock(self, terms: HtlcTerms, fee: FeeEstimate | None, word: int) -> list[SignedTx]:
        if terms.token is None:
            call = self.htlc.functions.lock(terms.payment_hash, word)
            return [self._sign(TxKind.LOCK, call, fee, value=terms.amount)]
        with self._token_locks:  # approve then lock, never interleaved with another's
            return self._prepare_token_lock(terms, fee, word)

    def _prepare_token_lock(
        self, terms: HtlcTerms, fee: FeeEstimate | None, word: int
    ) -> list[SignedTx]:
        assert terms.token is not None
        token = self._token(terms.token)
        have = self.balance(terms.token)
        if have < terms.amount:
            raise InsufficientFunds(f"lock needs {terms.amount} token units, wallet has {have}")
        txs: list[SignedTx] = []
        lock = self.htlc.functions.lock_token(
            to_checksum_address(terms.token), terms.amount, terms.payment_hash, word
        )
        # The chain's allowance is spoken for while any transaction of this wallet is unmined:
        # an earlier lock whose approve is mined but whose lock is not would take it first, and
        # this lock would revert. Then this lock approves its own amount (set, not added, right
        # before it in nonce order: token locks are prepared one at a time).
        mined = int(self.w3.eth.get_transaction_count(self.account.address, "latest"))
        in_flight = bool(self.nonces.signed_between(mined, 2**62))
        allowance = token.functions.allowance(self.account.address, self.htlc.address).call()
        if in_flight or allowance < terms.amount:
            # Approve exactly the amount: an unlimited allowance would outlive this swap.
            approve = token.functions.approve(self.htlc.address, terms.amount)
            # Its gas must cover a zero allowance: an earlier lock in flight empties the slot
            # before this approve runs, and a new storage slot's price depends on the fork
            # (20,000 on Prague, ~117,000 on geth --dev's). An approve to a fresh address (a
            # zero allowance on any fork) is estimated, and the larger estimate signed.
            fresh = to_checksum_address("0x" + os.urandom(20).hex())  # an allowance of zero
            from_zero = token.functions.approve(fresh, terms.amount)
            try:
                floor = int(from_zero.estimate_gas({"from": self.account.address}) * 5 // 4)
            except ContractLogicError as exc:
                raise TxRejected(f"approve would revert: {exc.message or exc}") from None
            approve_tx, approve_gas = self._sign_with_gas(
                TxKind.APPROVE, approve, fee, min_gas=floor
            )
            lock_gas = max(MIN_TOKEN_LOCK_GAS, LOCK_AFTER_APPROVE_GAS_FACTOR * approve_gas)
            txs.append(approve_tx)
            try:
                txs.append(self._sign(TxKind.LOCK, lock, fee, gas=lock_gas))
            except BaseException:
                # The approve is discarded with the lock: its nonce must not stay a gap that
                # stalls every later transaction of this wallet.
                self.nonces.release(_nonce_of(approve_tx))
                raise
        else:
            txs.append(self._sign(TxKind.LOCK, lock, fee))
        return txs

    def _slot_value(self, slot: int, owner: str | None = None) -> bytes:
        """The contract's word in ``owner``'s (default: this wallet's) storage slot ``slot``."""
        key = int(owner or self.account.address, 16) << 96 | slot
        return bytes(self.htlc.functions.slots(key).call({"from": self.account.address}))

    def _choose_slot(self) -> int:
        """A storage slot of this wallet for its next lock (see docs/ethereum-htlc.md).

        A kept slot that is FREE (settled) and not claimed by a signed, unmined lock of this
        wallet (the nonce store's claims, shared by every process using it) comes first: the
        lock then rewrites a non-zero word. Failing one, the pool of kept slots grows by the
        next empty one, except for a wallet that has never sent a transaction: its first lock
        takes a one-shot slot (cleared on payout, so the storage refund is not given up for a
        slot it may never reuse). The slot returned is claimed.
        """
        claimed = self.nonces.claimed_slots()
        first = not self.w3.eth.get_transaction_count(self.account.address, "pending")
        for slot in range(SLOT_SCAN):
            if slot in claimed:
                continue
            value = self._slot_value(slot)
            if value == bytes(32) and slot == 0 and first:
                break
            if value in (FREE, bytes(32)) and self.nonces.claim_slot(slot):
                return slot
        slot = ONE_SHOT
        while True:
            if slot not in claimed and self._slot_value(slot) == bytes(32):
                if self.nonces.claim_slot(slot):
                    return slot
            slot += 1

    def _args(self, ref: HtlcRef) -> tuple[str, int, int, str]:
        """Redeem and refund arguments after the secret: token, amount, the packed word
        (sender, expiry, slot) and recipient."""
        terms = ref.terms
        return (
            to_checksum_address(terms.token or ZERO_ADDRESS),
            terms.amount,
            _word(terms.sender, terms.expiry.value, self.slot_of(ref)),
            to_checksum_address(terms.recipient),
        )

    def slot_of(self, ref: HtlcRef) -> int:
        """The storage slot of ``ref``'s lock, from its log (the index, else its receipt)."""
        sid = bytes(HexBytes(ref.locator))
        wanted = "0x" + ref.lock_txid.lower().removeprefix("0x")
        slot = self._slots.get((sid, wanted))
        if slot is not None:
            return slot
        # Any lock log of the swap id names a slot that held it; the contract's word there
        # says whether it still does. The lock's own transaction first, then any other.
        locks = [e for e in self._index.events(sid) if e.name == "Locked" and e.slot is not None]
        mine = [e.slot for e in locks if e.txid == wanted]
        slot = mine[-1] if mine else (locks[-1].slot if locks else None)
        if slot is None:
            found = self._lock_in_receipt(sid, ref.lock_txid)
            slot = None if found is None else found[1]
        if slot is None:
            hi, size = int(self.w3.eth.block_number), FIND_FIRST_WINDOW
            while hi >= 0 and slot is None:
                lo = max(0, hi - size + 1)
                logged = [e.slot for e in self._swap_logs(sid, lo, hi) if e.name == "Locked"]
                slot = logged[-1] if logged else None
                hi, size = lo - 1, size * 2
        if slot is None:
            raise ChainError(
                f"no lock log of {ref.locator} was found: its slot is unknown",
                code="htlc_not_found",
            )
        self._slots[sid, wanted] = slot
        return slot

    def htlc_ref(self, terms: HtlcTerms, lock_tx: SignedTx) -> HtlcRef:
        return HtlcRef(terms=terms, locator=_hex(swap_id(terms)), lock_txid=lock_tx.txid)

    def _spend_call(self, ref: HtlcRef, preimage: bytes | None) -> tuple[str, list[Any]]:
        """The contract function and arguments of the redeem (``preimage``) or refund of ``ref``."""
        if preimage is None:
            return "refund", [ref.terms.payment_hash, *self._args(ref)]
        return "redeem", [preimage, *self._args(ref)]

    def _single_call(self, ref: HtlcRef, preimage: bytes | None) -> tuple[str, list[Any]]:
        """As :meth:`_spend_call`, for a transaction of its own: a redeem by the recipient
        leaves the recipient out (the contract takes msg.sender; 368 gas of calldata less)."""
        name, args = self._spend_call(ref, preimage)
        if name == "redeem" and args[-1] == self.account.address:
            return name, args[:-1]
        return name, args

    def prepare_redeem(
        self, ref: HtlcRef, preimage: bytes, fee: FeeEstimate | None = None
    ) -> SignedTx:
        check_preimage(preimage)
        name, args = self._single_call(ref, preimage)
        return self._sign(TxKind.REDEEM, self.htlc.functions[name](*args), fee)

    def prepare_refund(self, ref: HtlcRef, fee: FeeEstimate | None = None) -> SignedTx:
        now = self.expiry_now()
        if now.value < ref.terms.expiry.value:
            raise TxRejected(f"refund is possible from {ref.terms.expiry}; chain time is {now}")
        name, args = self._spend_call(ref, None)
        return self._sign(TxKind.REFUND, self.htlc.functions[name](*args), fee)

    def prepare_redeem_many(
        self, items: Sequence[tuple[HtlcRef, bytes]], fee: FeeEstimate | None = None
    ) -> SignedTx:
        """One ``redeem_many`` of every ``(ref, preimage)``: each recipient is paid; a swap
        settled before it is mined is skipped by the contract (see docs/ethereum-htlc.md)."""
        if not 0 < len(items) <= MAX_BATCH:
            raise InvalidInput(f"a batch holds 1 to {MAX_BATCH} swaps, got {len(items)}")
        rows = []
        for ref, preimage in items:
            check_preimage(preimage)
            if hashlib.sha256(preimage).digest() != ref.terms.payment_hash:
                raise InvalidInput(f"the preimage given for {ref.locator} is not its secret")
            rows.append((preimage, *self._args(ref)))
        return self._sign(TxKind.REDEEM, self.htlc.functions.redeem_many(rows), fee)

    def prepare_refund_many(
        self, refs: Sequence[HtlcRef], fee: FeeEstimate | None = None
    ) -> SignedTx:
        """One ``refund_many`` of ``refs``, all past their expiry: each sender is refunded."""
        if not 0 < len(refs) <= MAX_BATCH:
            raise InvalidInput(f"a batch holds 1 to {MAX_BATCH} swaps, got {len(refs)}")
        now = self.expiry_now()
        for ref in refs:
            if now.value < ref.terms.expiry.value:
                raise TxRejected(
                    f"refund of {ref.locator} is possible from {ref.terms.expiry}; chain time "
                    f"is {now}"
                )
        rows = [(ref.terms.payment_hash, *self._args(ref)) for ref in refs]
        return self._sign(TxKind.REFUND, self.htlc.functions.refund_many(rows), fee)

    def _batch_holds(self, data: bytes, ref: HtlcRef, preimage: bytes | None) -> bool:
        """Whether ``data`` is a ``redeem_many`` (``refund_many``) holding ``ref``'s item."""
        try:
            function, args = self.htlc.decode_function_input(data)
        except ValueError:
            return False
        name = "refund_many" if preimage is None else "redeem_many"
        if function.fn_name != name:
            return False
        _, want = self._spend_call(ref, preimage)
        rows = [list(r.values()) if isinstance(r, dict) else list(r) for r in args["items"]]
        return want in rows

    def prepare_bump(
        self,
        ref: HtlcRef,
        sent: Sequence[SignedTx],
        preimage: bytes | None = None,
        fee: FeeEstimate | None = None,
    ) -> SignedTx:
        """Ethereum bumps by replacement only: :meth:`prepare_replacement` of the newest
        version."""
        if len(sent) != 1:
            raise InvalidInput(
                f"{self.chain} bumps one sent transaction by replacement, got {len(sent)}"
            )
        return self.prepare_replacement(ref, sent[0], preimage, fee)

    def prepare_replacement(
        self,
        ref: HtlcRef,
        old: SignedTx,
        preimage: bytes | None = None,
        fee: FeeEstimate | None = None,
    ) -> SignedTx:
        """The same call as ``old`` (a redeem or refund of ``ref``) with the same nonce, at fees
        a quarter higher or at ``fee`` (default: the estimate), whichever is more: nodes take a
        same-nonce replacement only with both the fee cap and the tip raised (geth: 10 %)."""
        if old.kind not in (TxKind.REDEEM, TxKind.REFUND) or old.chain != self.chain:
            raise InvalidInput(f"only a {self.chain} redeem or refund is replaced, not {old}")
        fields = dict(TypedTransaction.from_bytes(HexBytes(old.raw)).as_dict())
        for signature_part in ("v", "r", "s", "yParity"):
            fields.pop(signature_part, None)
        to = fields.get("to")
        if to is None or to_checksum_address(bytes(to)) != self.htlc.address:
            raise InvalidInput(f"transaction {old.txid} is not a call of the HTLC contract")
        # Either form of a single redeem (with or without the recipient) is the same call.
        single = {
            bytes(HexBytes(self.htlc.encode_abi(*call)))
            for call in (self._spend_call(ref, preimage), self._single_call(ref, preimage))
        }
        if bytes(fields["data"]) not in single and not self._batch_holds(
            bytes(fields["data"]), ref, preimage
        ):
            raise InvalidInput(f"transaction {old.txid} is not the {old.kind} of {ref.locator}")
        now = fee or self.estimate_fee()
        old_tip, old_cap = int(fields["maxPriorityFeePerGas"]), int(fields["maxFeePerGas"])
        tip = max(now.priority, _raised(old_tip))
        cap = max(now.rate, _raised(old_cap), tip)
        # Never above the ceiling, and then only if nodes still take it as a replacement (both
        # fees up by at least a tenth); each bump a quarter up would otherwise grow unbounded.
        cap = min(cap, self.max_fee_per_gas)
        tip = min(tip, cap)
        if cap * 10 < old_cap * 11 or tip * 10 < old_tip * 11 or tip <= old_tip:
            raise ChainError(
                f"replacing {old.kind} {old.txid} at {old_cap} wei/gas (tip {old_tip}) needs "
                f"more than this node's ceiling of {self.max_fee_per_gas} (max_fee_per_gas)",
                code="fee_ceiling",
            )
        needed, have = int(fields["gas"]) * cap, self.balance()
        if have < needed:
            raise InsufficientFunds(
                f"replacing {old.kind} {old.txid} needs up to {needed} wei, wallet has {have}"
            )
        signed = self.account.sign_transaction(
            {**fields, "maxFeePerGas": cap, "maxPriorityFeePerGas": tip}
        )
        self.nonces.record(int(fields["nonce"]), bytes(signed.raw_transaction))
        return SignedTx(self.chain, old.kind, _hex(signed.hash), bytes(signed.raw_transaction))

    def broadcast(self, tx: SignedTx) -> str:
        self._fill_nonce_gap(tx)
        # Send first and look the transaction up only if the node refuses it: a lookup of an
        # unknown hash is a scan of the whole chain on some backends (eth-tester), and almost
        # every broadcast is of a new transaction.
        try:
            sent = self.w3.eth.send_raw_transaction(tx.raw)
        except Exception as exc:  # web3 errors, and eth-tester's own ValidationError types
            text = str(exc)
            if "already known" in text or "known transaction" in text or self._known(tx.txid):
                return tx.txid  # already known: broadcasting is idempotent
            if any(marker in text.lower() for marker in _FEE_REFUSALS):
                raise FeeTooLow(f"node refused {tx.kind} {tx.txid} for its fee: {text}") from None
            raise ChainError(f"broadcast of {tx.kind} {tx.txid} failed: {text}") from None
        log.info("broadcast %s %s on %s", tx.kind, _hex(sent), self.chain)
        return _hex(sent)

    def _fill_nonce_gap(self, tx: SignedTx) -> None:
        """Send again this wallet's signed, unmined transactions whose nonces come before
        ``tx``'s: one that never reached the chain (dropped by the node or its pool, or given up
        by its caller, like a refund made obsolete by a redeem), or one priced under today's
        base fee, would otherwise hold back ``tx`` and every later transaction of the wallet.
        One under the base fee is first signed again with the same call and nonce at the
        current estimate (at least a quarter above its old fees, never above the ceiling)."""
        try:
            nonce = _nonce_of(tx)
        except Exception:  # not a typed transaction of ours: nothing to fill
            return
        mined = int(self.w3.eth.get_transaction_count(self.account.address, "latest"))
        earlier = self.nonces.signed_between(mined, nonce)
        if not earlier:
            return
        base = self.w3.eth.get_block("latest").get("baseFeePerGas", 0) or 0
        for missing, raw in earlier:
            fields = dict(TypedTransaction.from_bytes(HexBytes(raw)).as_dict())
            old_cap, old_tip = int(fields["maxFeePerGas"]), int(fields["maxPriorityFeePerGas"])
            if isinstance(base, int) and old_cap < base:
                now = self.estimate_fee()
                cap = min(max(now.rate, _raised(old_cap)), self.max_fee_per_gas)
                tip = min(max(now.priority, _raised(old_tip)), cap)
                if cap > old_cap and tip > old_tip:
                    for signature_part in ("v", "r", "s", "yParity"):
                        fields.pop(signature_part, None)
                    signed = self.account.sign_transaction(
                        {**fields, "maxFeePerGas": cap, "maxPriorityFeePerGas": tip}
                    )
                    raw = bytes(signed.raw_transaction)
                    self.nonces.record(missing, raw)
            try:
                sent = self.w3.eth.send_raw_transaction(raw)
            except Exception as exc:  # known already, or refused: tx's own send tells the rest
                log.debug("%s: nonce %d not re-sent: %s", self.chain, missing, exc)
            else:
                log.warning("%s: re-sent %s to fill nonce %d", self.chain, _hex(sent), missing)

    def _known(self, txid: str) -> bool:
        try:
            return self.w3.eth.get_transaction(HexBytes(txid)) is not None
        except TransactionNotFound:
            return False

    def wait(self, txid: str, timeout: float = 60.0) -> None:
        """Block until ``txid`` is mined; raise :class:`TxRejected` if it reverted."""
        receipt = self.w3.eth.wait_for_transaction_receipt(HexBytes(txid), timeout=timeout)
        if receipt["status"] != 1:
            raise TxRejected(f"transaction {txid} reverted")

    def lock(self, terms: HtlcTerms, fee: FeeEstimate | None = None) -> HtlcRef:
        txs = self.prepare_lock(terms, fee)
        for tx in txs:
            self.broadcast(tx)
            self.wait(tx.txid)
        return self.htlc_ref(terms, txs[-1])

    # -- reading the chain --------------------------------------------------------------

    def _swap_logs(self, sid: bytes, from_block: int, to_block: int) -> list[_Log]:
        """The contract's logs of swap ``sid`` in ``[from_block, to_block]`` on the best chain,
        decoded (one query: every log of the contract has the swap id as its only topic)."""
        raw = self.w3.eth.get_logs(
            {
                "address": self.htlc.address,
                "topics": [_hex(sid)],  # type: ignore[list-item]
                "fromBlock": from_block,
                "toBlock": to_block,
            }
        )
        out = []
        for entry in self._on_best_chain(raw):
            try:
                _, name, slot, preimage = decode_log(
                    [bytes(t) for t in entry["topics"]], bytes(entry["data"])
                )
            except ChainError:
                continue
            out.append(
                _Log(
                    name, _hex(entry["transactionHash"]), int(entry["blockNumber"]), slot, preimage
                )
            )
        return out

    def _on_best_chain(self, entries: Sequence[Any]) -> list[Any]:
        """The log entries whose block is the best chain's block at their height: a log query
        by number may be answered from another branch (see the event index)."""
        hashes: dict[int, bytes] = {}
        kept = []
        for entry in entries:
            number = int(entry["blockNumber"])
            if number not in hashes:
                hashes[number] = bytes(self.w3.eth.get_block(number)["hash"])
            if bytes(entry["blockHash"]) == hashes[number]:
                kept.append(entry)
        return kept

    def find_htlc(
        self,
        terms: HtlcTerms,
        *,
        spent_since: int | None = None,
        not_before: int | None = None,
    ) -> HtlcRef | None:
        """The HTLC of ``terms``: a live one always, a spent one only from ``spent_since`` on.

        The event index answers first. When it covers every block from ``not_before`` on, a
        lock it has not seen does not exist and the chain is not asked. (``spent_since`` alone
        does not allow that: a live lock older than the index must still be found.)

        Otherwise the lock's log is searched backwards from the tip in doubling windows (a
        live lock is recent) and the contract's slot it names says whether it is live.
        """
        self._check_terms(terms)
        sid = swap_id(terms)
        self._head()
        locks = [e for e in self._index.events(sid) if e.name == "Locked"]
        if locks:  # the index saw it: no chain query needed
            lock = locks[-1]
            spent = self._spend_after(sid, lock) is not None
            if not spent or (spent_since is not None and lock.block >= spent_since):
                return HtlcRef(terms=terms, locator=_hex(sid), lock_txid=lock.txid)
            return None
        start = self._index.start
        if not_before is not None and start is not None and start <= not_before:
            return None  # the index has every block a lock of these terms could be in
        # Searched backwards from the tip in doubling windows (a live lock is recent), never
        # below ``not_before``; the newest lock found decides.
        floor = max(0, not_before or 0)
        hi = int(self.w3.eth.block_number)
        size = FIND_FIRST_WINDOW
        while hi >= floor:
            lo = max(floor, hi - size + 1)
            found = [entry for entry in self._swap_logs(sid, lo, hi) if entry.name == "Locked"]
            if found:
                lock_log = found[-1]
                assert lock_log.slot is not None
                ref = HtlcRef(terms=terms, locator=_hex(sid), lock_txid=lock_log.txid)
                live = self._slot_value(lock_log.slot, terms.sender) == sid
                if live or (spent_since is not None and lock_log.block >= spent_since):
                    self._slots[sid, lock_log.txid] = lock_log.slot
                    return ref
                return None
            hi, size = lo - 1, size * 2
        return None

    def _twin_locks(self, sid: bytes, lock: HtlcEvent) -> bool:
        """Whether ``sid`` was also locked in a slot other than ``lock``'s: the same terms
        locked twice (the sender's doing; this adapter never signs that). A payout log names
        the id, not the slot, so which lock it paid is then read from its transaction."""
        locks = [e for e in self._index.events(sid) if e.name == "Locked"]
        return lock.slot is not None and any(e.slot != lock.slot for e in locks)

    def _spend_of_slot(self, sid: bytes, lock: HtlcEvent, sender: str) -> HtlcEvent | None:
        """The payout of ``sid`` after ``lock`` made from ``lock``'s own slot, if any: the
        first payout log whose transaction names that slot for this sender, before any later
        lock into that slot."""
        later_lock = min(
            (
                (e.block, e.log_index)
                for e in self._index.events(sid)
                if e.name == "Locked"
                and e.slot == lock.slot
                and (e.block, e.log_index) > (lock.block, lock.log_index)
            ),
            default=None,
        )
        for event in self._index.events(sid):
            position = (event.block, event.log_index)
            if event.name == "Locked" or position <= (lock.block, lock.log_index):
                continue
            if later_lock is not None and position > later_lock:
                return None
            if lock.slot in self._slots_paid(event.txid, sender):
                return event
        return None

    def _slots_paid(self, txid: str, sender: str) -> set[int]:
        """The slots of ``sender`` that transaction ``txid`` (a redeem or refund, single or
        batch) names."""
        try:
            data = bytes(HexBytes(self.w3.eth.get_transaction(HexBytes(txid))["input"]))
            function, args = self.htlc.decode_function_input(data)
        except (TransactionNotFound, ValueError, KeyError):
            return set()  # not answered, or not a call of ours: the slot's word decides
        if function.fn_name in ("redeem", "refund"):
            words = [args["word"]]
        elif function.fn_name in ("redeem_many", "refund_many"):
            rows = [list(r.values()) if isinstance(r, dict) else list(r) for r in args["items"]]
            words = [row[3] for row in rows]
        else:
            return set()
        owner = int(sender, 16)
        return {w & 0xFFFFFFFF for w in words if w >> 96 == owner}

    def _spend_after(self, sid: bytes, lock: HtlcEvent) -> HtlcEvent | None:
        for event in self._index.events(sid):
            if event.name != "Locked" and (event.block, event.log_index) > (
                lock.block,
                lock.log_index,
            ):
                return event
        return None

    def status(self, ref: HtlcRef) -> HtlcStatus:
        sid = bytes(HexBytes(ref.locator))
        tip = self._head()
        lock_txid = "0x" + ref.lock_txid.lower().removeprefix("0x")
        lock = next(
            (e for e in self._index.events(sid) if e.name == "Locked" and e.txid == lock_txid),
            None,
        )
        if lock is not None:  # answered from the index, which is current and reorg-checked
            lock_conf = tip - lock.block + 1
            spend = self._spend_after(sid, lock)
            if spend is not None and self._twin_locks(sid, lock):
                assert lock.slot is not None
                # A payout sent through another contract names no slot in its input: the
                # slot's word then decides (still the id: live; else the first payout).
                own = self._spend_of_slot(sid, lock, ref.terms.sender)
                held = self._slot_value(lock.slot, ref.terms.sender) == sid
                spend = own or (None if held else spend)
            if spend is None:
                return HtlcStatus(HtlcState.LOCKED, confirmations=lock_conf)
            return HtlcStatus(
                HtlcState.REDEEMED if spend.name == "Redeemed" else HtlcState.REFUNDED,
                confirmations=lock_conf,
                spend_txid=spend.txid,
                spend_confirmations=tip - spend.block + 1,
                preimage=spend.preimage,
            )
        return self._status_from_chain(sid, ref)

    def _status_from_chain(self, sid: bytes, ref: HtlcRef) -> HtlcStatus:
        """The status of a lock the index has not seen (older than the index, or pruned)."""
        lock_block = self._lock_mined_at(sid, ref.lock_txid)
        lock_conf = 0 if lock_block is None else int(self.w3.eth.block_number) - lock_block + 1
        known = self._spends.get(sid)
        if known is not None and lock_block is not None:
            # A spend seen before: only its confirmations can have changed (0 after a reorg,
            # then it is searched for again).
            conf = self.tx_confirmations(known.spend_txid or "")
            if conf:
                return replace(known, confirmations=lock_conf, spend_confirmations=conf)
            del self._spends[sid]
        if self._live(sid, ref):
            return HtlcStatus(HtlcState.LOCKED, confirmations=lock_conf)
        if lock_block is None:
            # The contract says the swap is not live and the lock's receipt was not answered:
            # either the lock is not on the best chain (ABSENT), or the node has no receipt
            # for it (beyond its transaction index, a backend that lags) while the swap was
            # paid out. ABSENT for the latter ends a swap without its secret, so a payout the
            # index saw, or a lock transaction the node places in a best-chain block, comes
            # first.
            spent = self._indexed_spend(sid)
            if spent is not None:
                return spent
            if self._reverted(ref.lock_txid):
                # Mined but reverted (a lock sent late: "expiry past"): it locked nothing.
                return HtlcStatus(HtlcState.ABSENT)
            lock_block = self._tx_block(ref.lock_txid)
            if lock_block is None:
                return HtlcStatus(HtlcState.ABSENT)
            lock_conf = int(self.w3.eth.block_number) - lock_block + 1
        # The spend came after the lock: search back from the tip in doubling windows, never
        # below the lock's block, so a check costs the spend's age, not the chain's.
        hi = int(self.w3.eth.block_number)
        size = FIND_FIRST_WINDOW
        while hi >= lock_block:
            lo = max(lock_block, hi - size + 1)
            for entry in reversed(self._swap_logs(sid, lo, hi)):
                if entry.name == "Locked":
                    continue
                txid = entry.txid
                conf = self.tx_confirmations(txid)
                if not conf:
                    continue
                redeemed = entry.name == "Redeemed"
                found = HtlcStatus(
                    HtlcState.REDEEMED if redeemed else HtlcState.REFUNDED,
                    confirmations=lock_conf,
                    spend_txid=txid,
                    spend_confirmations=conf,
                    preimage=entry.preimage if redeemed else None,
                )
                self._spends[sid] = found
                return found
            hi, size = lo - 1, size * 2
        # The contract says the swap is settled, after a lock on the best chain, yet no payout
        # was found: the node's log answer missed it. ABSENT here would lose a redeem (and its
        # preimage), so the caller reads again later.
        raise ChainError(
            f"swap {ref.locator} is settled on chain but no Redeemed or Refunded log of it was "
            "answered",
            code="chain_inconsistent",
        )

    def _indexed_spend(self, sid: bytes) -> HtlcStatus | None:
        """The newest redeem or refund of ``sid`` in the event index (reorg-checked), if any."""
        tip = self._index.height
        for event in reversed(self._index.events(sid)):
            if event.name != "Locked":
                conf = tip - event.block + 1
                return HtlcStatus(
                    HtlcState.REDEEMED if event.name == "Redeemed" else HtlcState.REFUNDED,
                    confirmations=conf,  # the lock came before its payout: at least as deep
                    spend_txid=event.txid,
                    spend_confirmations=conf,
                    preimage=event.preimage,
                )
        return None

    def _reverted(self, txid: str) -> bool:
        """Whether the node answers a receipt of ``txid`` that failed (status 0)."""
        try:
            receipt = self.w3.eth.get_transaction_receipt(HexBytes(txid))
        except TransactionNotFound:
            return False
        return (
            receipt is not None
            and receipt.get("blockNumber") is not None
            and receipt.get("status") == 0
        )

    def _tx_block(self, txid: str) -> int | None:
        """The best-chain height the node gives for transaction ``txid``, if any."""
        try:
            tx = self.w3.eth.get_transaction(HexBytes(txid))
        except TransactionNotFound:
            return None
        if tx is None or tx.get("blockNumber") is None or tx.get("blockHash") is None:
            return None
        block = self.w3.eth.get_block(tx["blockNumber"])
        if bytes(block["hash"]) != bytes(tx["blockHash"]):
            return None
        return int(tx["blockNumber"])

    def _lock_mined_at(self, sid: bytes, txid: str) -> int | None:
        """The best-chain height of ``txid`` if it emitted this contract's lock log of ``sid``;
        None otherwise. Confirmations are the lock's own: a caller naming any other
        transaction (an older one, deeper in the chain) gets none."""
        found = self._lock_in_receipt(sid, txid)
        return None if found is None else found[0]

    def _lock_in_receipt(self, sid: bytes, txid: str) -> tuple[int, int] | None:
        """(best-chain height, slot) of the lock of ``sid`` that ``txid`` emitted, if it did."""
        try:
            receipt = self.w3.eth.get_transaction_receipt(HexBytes(txid))
        except TransactionNotFound:
            return None
        if receipt is None or receipt.get("blockNumber") is None or receipt["status"] != 1:
            return None
        slot = None
        for entry in receipt["logs"]:
            if to_checksum_address(entry["address"]) != self.htlc.address:
                continue
            try:
                logged, name, logged_slot, _ = decode_log(
                    [bytes(t) for t in entry["topics"]], bytes(entry["data"])
                )
            except ChainError:
                continue
            if logged == sid and name == "Locked":
                slot = logged_slot
        if slot is None:
            return None
        block = self.w3.eth.get_block(receipt["blockNumber"])
        if bytes(block["hash"]) != bytes(receipt["blockHash"]):
            return None  # a receipt from a block that was reorganised away
        return int(receipt["blockNumber"]), slot

    def _lock_emitted_by(self, sid: bytes, txid: str) -> bool:
        """Whether ``txid`` emitted the ``Locked`` event of ``sid`` on the indexed chain (or,
        for a lock the index has not seen, on the best chain)."""
        wanted = "0x" + txid.lower().removeprefix("0x")
        if any(e.name == "Locked" and e.txid == wanted for e in self._index.events(sid)):
            return True
        return self._lock_mined_at(sid, txid) is not None

    def _live(self, sid: bytes, ref: HtlcRef) -> bool:
        """Whether the contract's slot of ``ref``'s lock still holds ``sid`` (False when no
        lock log of it is found at all)."""
        try:
            slot = self.slot_of(ref)
        except ChainError as exc:
            if exc.code != "htlc_not_found":
                raise
            return False
        return self._slot_value(slot, ref.terms.sender) == sid

    def audit(self, ref: HtlcRef, expected: HtlcTerms, min_confirmations: int) -> HtlcStatus:
        self._check_terms(expected)
        for name in ("chain", "payment_hash", "amount", "expiry"):
            if getattr(ref.terms, name) != getattr(expected, name):
                raise AuditFailed(
                    f"{name} differs: the lock has {getattr(ref.terms, name)!r}, "
                    f"the terms say {getattr(expected, name)!r}",
                    code=f"audit_{name}",
                )
        for name in ("token", "sender", "recipient"):
            have, want = getattr(ref.terms, name), getattr(expected, name)
            if (have and to_checksum_address(have)) != (want and to_checksum_address(want)):
                raise AuditFailed(
                    f"{name} differs: the lock has {have}, the terms say {want}",
                    code=f"audit_{name}",
                )
        # The swap id commits to every field above, so a live id computed from the expected
        # terms proves the contract holds exactly this lock.
        if ref.locator.lower() != _hex(swap_id(expected)).lower():
            raise AuditFailed(f"locator {ref.locator} is not the id of these terms")
        status = self.status(ref)
        if status.state is not HtlcState.LOCKED:
            raise AuditFailed(f"the HTLC is {status.state}, not locked", code="audit_state")
        if not self._lock_emitted_by(bytes(HexBytes(ref.locator)), ref.lock_txid):
            # Confirmations are counted from the lock's own block: a reference naming another
            # transaction could borrow an older one's depth.
            raise AuditFailed(
                f"transaction {ref.lock_txid} did not emit the lock {ref.locator}",
                code="audit_lock_txid",
            )
        if status.confirmations < min_confirmations:
            raise AuditFailed(
                f"the lock has {status.confirmations} confirmations, "
                f"{min_confirmations} are required",
                code="audit_confirmations",
            )
        return status
