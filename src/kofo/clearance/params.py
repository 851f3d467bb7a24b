"""Ledger parameters: fixed at genesis, committed in the state (so in the app hash)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from kofo.errors import InvalidInput

FOUNDATION = b"\x00" * 32
"""The foundation's account id: no Ed25519 key is all zeros, so no node can impersonate it."""


def _default_volume_units() -> dict[str, int]:
    # Base units that count as one unit of "settled volume" for importance: about the same
    # value on each chain, so a node's volume can be summed across assets in integers.
    return {"btc": 10_000, "ltc": 1_000_000, "eth": 10**14}


def _default_height_expiry_margin() -> dict[str, int]:
    # Blocks a leg with a height expiry must still have, counted from the block of its
    # attested lock, for its recipient to lock its own leg and still redeem this one: the lock
    # buried (confirmations) and then, at 60 % of the nominal block interval (docs/swap.md's
    # 40 % tolerance), the settlement engine's margin for the slowest own leg we route (btc):
    # settle(btc) + notice(btc) for its own lock to be buried and seen, notice(btc) for the
    # reveal, settle(this chain) for its redeem here. btc: 6 + ceil(14,640 / 360) = 47 (the
    # engine lays out 47 blocks between a BTC lock and its expiry, docs/swap.md); ltc: 12 +
    # ceil(10,080 / 90) = 124.
    return {"btc": 47, "ltc": 124}


def _default_chain_clock() -> dict[str, dict[str, int]]:
    # The settlement engine's production policies (docs/swap.md §2, kofo.settlement.terms):
    # nominal block interval (s), the confirmations validators attest tips at, notice(c) and
    # settle(c) = (inclusion + confirmations) x interval, in seconds.
    return {
        "btc": {"block_interval": 600, "confirmations": 6, "notice": 120, "settle": 7_200},
        "ltc": {"block_interval": 150, "confirmations": 12, "notice": 60, "settle": 2_700},
        "eth": {"block_interval": 12, "confirmations": 64, "notice": 60, "settle": 1_068},
    }


CHAIN_CLOCK_KEYS = ("block_interval", "confirmations", "notice", "settle")


def _default_expiry_unit() -> dict[str, str]:
    # The unit each chain's HTLC expiry is in (the engine's ChainPolicy.height_clock).
    return {"btc": "height", "ltc": "height", "eth": "unix"}


EXPIRY_UNITS = ("height", "unix")


@dataclass(frozen=True, slots=True)
class LedgerParams:
    protocol_fee_bps: int = 10
    """0.1 % of notional on routed trades: below typical CEX taker fees, above dust."""
    foundation_bps: int = 1_000
    """10 % of every protocol fee goes to the foundation account (the issue's rule)."""
    relay_pool_bps: int = 3_000
    """Relays share 30 % of the carriers' part: forwarding is cheap next to providing
    liquidity, which locks capital for the whole expiry window and bears price risk."""
    min_expiry_gap: int = 3_600
    """Each leg must expire at least an hour (unix seconds) after the next one: time for the
    next party to see the secret on one chain and get a redeem confirmed on the other — six
    Bitcoin blocks on average, the slowest chain we route."""
    paillier_bits: tuple[int, ...] = (2_048, 3_072)
    """The Paillier modulus sizes a node may register, exactly. Below 2048 bits a modulus is
    factorable in reach of a determined adversary; above 3072 each proof and reveal a validator
    checks costs more (a 8192-bit modulus made one refused withdrawal cost ~5.6 s of CPU) for no
    security anyone needs before 2030 (NIST SP 800-57: 3072 bits is good past it)."""
    min_bond: int = 0
    bond_asset: str = "kofo"
    early_tx_limit: int = 10_000_000
    """Early-activity points are paid on the first ten million ledger transactions."""
    early_points_per_tx: int = 1
    liquidity_points_per_order: int = 10
    """Per settled routed order, to each provider: liquidity is what the network lacks most."""
    slash_bps_not_locked: int = 500
    """5 % of bond for a leg not locked by its deadline: it froze everyone else's funds until
    their expiries, so it costs more than a broken quote."""
    penalty_points_not_locked: int = 100
    slash_bps_quote: int = 200
    """2 % of bond for a quote not honoured (a false order-book price)."""
    penalty_points_quote: int = 50
    attest_grace: int = 1_800
    """Seconds (block time) after a leg's ``lock_by`` for its lock to be confirmed on its chain
    and attested by the validators (a height or two): ``leg_not_locked`` is judged only after
    ``lock_by + attest_grace``, and a lock attested before the validators' first look at the
    order from then on (a look that saw no lock marks the leg ``missed_at``) counts as in time.
    Without it an honest sender who locked just before ``lock_by`` was slashed by evidence filed
    in the first block after it, before its lock could be attested. Set it above the slowest
    routed chain's confirmation time plus a few ledger heights."""
    honour_grace: int = 300
    """A provider has five minutes (block time) after its quote's validity to get the order
    committed before a take of it counts as not honoured: room for a few rounds of signing."""
    take_fill_window: int = 21_600
    """An open quote (taker zero) is taken first come, first served: a take's order must have
    every ``lock_by`` within six hours after the provider's honour window, so whether the
    provider really filled an earlier take (locked its legs in time) is known by then, and a
    later taker's evidence waits for it at most that long (plus ``attest_grace`` and
    ``honour_grace``)."""
    max_open_takes: int = 64
    """Takes of open quotes a taker may hold reserved bond for at once (each reservation is an
    entry of its node record until its order resolves or its fill window passes): a bound on
    that record, far above what one taker fills in a take's window."""
    importance_half_life: int = 100_000
    """Settled volume halves in weight every 100k blocks (about a day at 1 s blocks)."""
    penalty_weight: int = 10
    """Importance lost per penalty point, in volume units."""
    volume_units: dict[str, int] = field(default_factory=_default_volume_units)
    height_expiry_margin: dict[str, int] = field(default_factory=_default_height_expiry_margin)
    """Per chain whose legs expire at a block height: blocks that must remain between the
    block of a leg's attested lock and its expiry height for the leg's recipient to be bound
    to lock its own leg (``leg_not_locked``). The ledger cannot relate a height to time, so a
    taker could name a near or past height for the leg paying a provider, which must not lock
    against it. A chain not listed gets no such excuse: list every height chain routed."""
    chain_clock: dict[str, dict[str, int]] = field(default_factory=_default_chain_clock)
    """Per chain: ``block_interval`` (s), the ``confirmations`` validators attest its tip at,
    and the engine's ``notice`` and ``settle`` (s). The validators attest each chain's tip (its
    clock, docs/clearance.md "Chain clocks"); with these the ledger converts a height expiry
    into seconds and checks that each leg a party sends expires at least ``notice(own chain) +
    settle(paying chain)`` before the leg paying it (the engine's participant margin): at
    commit (refusing what fails in any case), at a take and when judging ``leg_not_locked``
    (excusing what might fail). Only chains listed here get a clock; a height leg on another
    chain is never judged safe."""
    expiry_unit: dict[str, str] = field(default_factory=_default_expiry_unit)
    """Per chain, the unit its legs' expiry must be in (``height`` or ``unix``), as its HTLC
    and the engine use it (``terms_expiry_unit``). The clock rules read a height against the
    chain's attested clock and a unix expiry as exact against block time: a btc leg written
    as a unix (CLTV time) lock runs on Bitcoin's median time past, about an hour late, and an
    eth leg written as a height is one no Ethereum HTLC enforces. ``commit_order`` and a take
    refuse a leg on a listed chain in the other unit."""
    max_lock_seconds: int = 3 * 24 * 3_600 - 600
    """A take is recorded only if the provider's own leg may hold its funds (its leg's expiry
    read late on the chain clocks, from the take's block) at most this long: the engine
    refuses a longer one (``max_lock_seconds``, 3 days in production, ``terms_expiry_too_long``);
    10 minutes under it for clock skew (a unix leg is read against the ledger's block time)."""
    clock_tolerance_pct: int = 40
    """``n`` blocks take between (100 - this) % and (100 + this) % of ``n`` nominal intervals
    (the engine's ``rate_tolerance_pct``: 12 Bitcoin blocks come in under 60 % of their nominal
    time with probability ~2 %)."""
    clock_max_age: int = 900
    """Seconds (block time) an attested chain clock stays usable: an older one (validators no
    longer attest that chain) counts as no clock."""
    max_txs_per_sender_per_block: int = 1_000
    """One sender's share of a block (see ``kofo.clearance.admission``): a busy maker commits a
    few orders a second; a thousand per block is far above that and still bounds a spammer."""
    max_registrations_per_block: int = 5
    """A registration's checks cost ~60 ms of CPU at 2048 bits and ~210 ms at 3072 (the modulus
    certificate and the four-round zero proof, measured on the project's machine; its work is
    one ~2 ms scrypt, checked first), so a block holds at most 5: about a second of CPU even
    when a hostile proposer fills them all with 3072-bit registrations whose proofs fail -- and
    each of those cost its sender the registration's work (~10 s of a core). Honest nodes
    register once: 5 a second is plenty."""
    registration_work_bits: int = 12
    """Leading zero bits of a registration's memory-hard work (``kofo.clearance.admission``):
    ~4,000 scrypt tries (~10 s of one core) per registration, one try (~2 ms) to check."""
    registration_prework_bits: int = 16
    """Leading zero bits of a registration's cheap pre-work: SHA-256 over the top 32 bits of
    ``pow_nonce`` (``kofo.clearance.admission.check_prework``), checked in ~1 us before the
    scrypt and before any shared budget is charged; 65,536 hashes (~0.1 s) once per node."""
    max_withdrawals_per_block: int = 50
    """A withdrawal that gets past its cheap checks costs two modular powers mod n^2; only nodes
    the ledger credited can get that far, at most one each per block, and 50 in all."""
    bond_vault_chain_id: int = 0
    """EVM chain id of the bond vault (contracts/BondVault.vy) whose balances are the bonds."""
    bond_vault_address: str = ""
    """0x-hex address of the bond vault; empty: decisions are recorded without a vault digest."""
    slash_recipient: str = ""
    """0x-hex address slashed bonds are paid to on the vault (the foundation's)."""
    unbond_delay: int = 604_800
    """Seconds (block time) between an unbond request and its release decision: a week for
    evidence of what the node did before to be filed and slash the bond it is taking back."""
    bond_height_step: int = 16
    """Validators observe the bond vault at the highest confirmed height that is a multiple of
    this (``ChainObserver.observe_bond``): validators with different tips or confirmation
    settings then attest the same ``(amount, height)`` and reach > 2/3, where exact heights
    never agreed (16 Ethereum blocks: ~3 minutes; 1 for a chain with a single validator)."""
    power_unit: int = 10**15
    """Wei of attested bond per unit of a bound validator's voting power (0.001 ETH)."""
    validator_min_power: int = 1_000
    """Voting power (attested bond // ``power_unit``) a node's bond must give for a new
    validator to join after genesis (``register_validator_key`` with a consensus key outside the
    set), and to stay in the set: 1,000 units, 1 ETH at the default ``power_unit``."""
    validator_bond_deadline: int = 0
    """Height from which a validator that bound no bonded node has no voting power (0: genesis
    powers stand for validators that never bind; set it so that a chain bootstraps first)."""

    def __post_init__(self) -> None:
        for name in ("protocol_fee_bps", "foundation_bps", "relay_pool_bps"):
            v = getattr(self, name)
            if not 0 <= v <= 10_000:
                raise InvalidInput(f"{name} must be within 0..10000, got {v}")
        if not self.paillier_bits or any(
            type(b) is not int or not 512 <= b <= 3_072 or b % 8 for b in self.paillier_bits
        ):
            raise InvalidInput(
                f"paillier_bits must be whole-byte sizes within 512..3072, got {self.paillier_bits}"
            )
        if not 0 <= self.registration_work_bits <= 32:
            raise InvalidInput(
                f"registration_work_bits must be within 0..32, got {self.registration_work_bits}"
            )
        if not 0 <= self.registration_prework_bits <= 24:
            raise InvalidInput(
                "registration_prework_bits must be within 0..24, got "
                f"{self.registration_prework_bits}"
            )
        for name in (
            "attest_grace",
            "honour_grace",
            "take_fill_window",
            "unbond_delay",
            "min_expiry_gap",
        ):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name} must not be negative, got {getattr(self, name)}")
        for chain, blocks in self.height_expiry_margin.items():
            if type(blocks) is not int or not 0 <= blocks <= 1_000_000:
                raise InvalidInput(
                    f"height_expiry_margin[{chain!r}] must be within 0..1000000, got {blocks!r}"
                )
        if not 1 <= self.max_open_takes <= 1_024:
            raise InvalidInput(f"max_open_takes must be within 1..1024, got {self.max_open_takes}")
        for chain, cfg in self.chain_clock.items():
            if (
                not isinstance(cfg, dict)
                or set(cfg) != set(CHAIN_CLOCK_KEYS)
                or any(type(v) is not int or not 0 <= v <= 10**7 for v in cfg.values())
                or cfg["block_interval"] < 1
                or cfg["confirmations"] < 1
            ):
                raise InvalidInput(
                    f"chain_clock[{chain!r}] must map {', '.join(CHAIN_CLOCK_KEYS)} to integers "
                    f"within 0..10^7 (block_interval and confirmations >= 1), got {cfg!r}"
                )
        for chain, unit in self.expiry_unit.items():
            if unit not in EXPIRY_UNITS:
                raise InvalidInput(
                    f"expiry_unit[{chain!r}] must be one of {', '.join(EXPIRY_UNITS)}, got {unit!r}"
                )
        if not 0 <= self.clock_tolerance_pct < 100:
            raise InvalidInput(
                f"clock_tolerance_pct must be within 0..99, got {self.clock_tolerance_pct}"
            )
        if not 1 <= self.max_lock_seconds <= 10**8:
            raise InvalidInput(
                f"max_lock_seconds must be within 1..10^8, got {self.max_lock_seconds}"
            )
        if not 0 <= self.clock_max_age <= 86_400:
            raise InvalidInput(f"clock_max_age must be within 0..86400, got {self.clock_max_age}")
        if not 1 <= self.bond_height_step <= 1_000_000:
            raise InvalidInput(
                f"bond_height_step must be within 1..1000000, got {self.bond_height_step}"
            )
        if not 1 <= self.validator_min_power <= 2**50:
            raise InvalidInput(
                f"validator_min_power must be within 1..2^50, got {self.validator_min_power}"
            )
        if self.power_unit <= 0:
            raise InvalidInput(f"power_unit must be positive, got {self.power_unit}")
        if self.bond_vault_address and len(self.bond_vault_address.removeprefix("0x")) != 40:
            raise InvalidInput(
                f"bond_vault_address must be 0x + 40 hex, got {self.bond_vault_address!r}"
            )
        if self.importance_half_life <= 0:
            raise InvalidInput(
                f"importance_half_life must be positive, got {self.importance_half_life}"
            )

    def as_map(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_map(cls, m: dict[str, Any]) -> LedgerParams:
        m = dict(m)
        if isinstance(m.get("paillier_bits"), list):  # CBOR and JSON have lists, not tuples
            m["paillier_bits"] = tuple(m["paillier_bits"])
        return cls(**m)
