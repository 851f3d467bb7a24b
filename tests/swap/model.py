"""A small model of two chains for exercising the pure state machine (not a mock of it).

Each chain has a clock (height or unix time) that moves one unit per block, a mempool, and the
HTLC rules of our contracts: a lock is valid only before its expiry, a redeem while the HTLC is
locked, a refund once the clock reached the expiry. Parties run ``next_action`` and the model
plays the engine's part (sign, journal, broadcast).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from kofo.settlement.chain import BlockHeight, Expiry, HtlcState, TxKind, UnixTime
from kofo.settlement.swap import (
    ActionKind,
    ChainFacts,
    LegFacts,
    Role,
    State,
    SwapRecord,
    next_action,
)
from kofo.settlement.terms import Leg, SwapTerms, devnet_policy, propose_terms

PREIMAGE = b"\x07" * 32
PAYMENT_HASH = hashlib.sha256(PREIMAGE).digest()


@dataclass
class ModelLeg:
    chain: str
    expiry: int
    state: HtlcState = HtlcState.ABSENT
    locked_at: int = 0  # block number
    spent_at: int = 0
    preimage: bytes | None = None


@dataclass
class ModelChain:
    name: str
    height_clock: bool
    clock: int
    blocks: int = 0
    mempool: list[tuple[str, TxKind]] = field(default_factory=list)

    def now(self) -> Expiry:
        return BlockHeight(self.clock) if self.height_clock else UnixTime(self.clock)


@dataclass
class Party:
    role: Role
    state: State
    has_preimage: bool
    signed: set[TxKind] = field(default_factory=set)
    history: list[State] = field(default_factory=list)


class World:
    def __init__(self, c1_height: bool = True, c2_height: bool = False) -> None:
        self.chains = {
            "c1": ModelChain("c1", c1_height, 1000),
            "c2": ModelChain("c2", c2_height, 1_800_000_000),
        }
        policies = {
            "c1": devnet_policy("c1", height_clock=c1_height),
            "c2": devnet_policy("c2", height_clock=c2_height),
        }
        now = {k: c.now() for k, c in self.chains.items()}
        self.terms: SwapTerms = propose_terms(
            swap_id=b"\x01" * 16,
            payment_hash=PAYMENT_HASH,
            initiator_leg=Leg("c1", 100, "alice1", "bob1", BlockHeight(0)),
            participant_leg=Leg("c2", 200, "bob2", "alice2", UnixTime(0)),
            policies=policies,
            now=now,
            accept_window=5,
        )
        self.policies = policies
        self.legs = {
            "A": ModelLeg("c1", self.terms.initiator_leg.expiry.value),
            "B": ModelLeg("c2", self.terms.participant_leg.expiry.value),
        }
        self.parties = {
            Role.INITIATOR: Party(Role.INITIATOR, State.ACCEPTED, True),
            Role.PARTICIPANT: Party(Role.PARTICIPANT, State.ACCEPTED, False),
        }
        self.actions: list[tuple[Role, ActionKind, State | None, dict[str, int]]] = []

    def own_counter(self, role: Role) -> tuple[str, str]:
        return ("A", "B") if role is Role.INITIATOR else ("B", "A")

    def leg_facts(self, key: str) -> LegFacts:
        leg = self.legs[key]
        chain = self.chains[leg.chain]
        conf = chain.blocks - leg.locked_at + 1 if leg.state is not HtlcState.ABSENT else 0
        spend = chain.blocks - leg.spent_at + 1 if leg.spent_at else 0
        # The model's chains refuse a lock at or after its expiry (as the Ethereum contract
        # does): an absent lock is dead from then on.
        dead = leg.state is HtlcState.ABSENT and chain.clock >= leg.expiry
        return LegFacts(leg.state, conf, spend, leg.preimage, lock_dead=dead)

    def record(self, role: Role) -> SwapRecord:
        p = self.parties[role]
        return SwapRecord(self.terms.swap_id, role, self.terms, p.state, p.has_preimage)

    def now(self) -> dict[str, Expiry]:
        return {k: c.now() for k, c in self.chains.items()}

    def step(self, role: Role) -> bool:
        """Let ``role`` act once; False when it only waits or is done."""
        p = self.parties[role]
        own, ctr = self.own_counter(role)
        facts = ChainFacts(self.leg_facts(own), self.leg_facts(ctr))
        action = next_action(self.record(role), facts, self.now())
        self.actions.append(
            (role, action.kind, p.state, {k: c.clock for k, c in self.chains.items()})
        )
        if action.kind in (ActionKind.WAIT, ActionKind.DONE):
            return False
        if action.kind is ActionKind.SIGN_LOCK:
            p.signed.add(TxKind.LOCK)
        elif action.kind is ActionKind.SIGN_REDEEM:
            if facts.own.preimage is not None:
                p.has_preimage = True
            p.signed.add(TxKind.REDEEM)
        elif action.kind is ActionKind.SIGN_REFUND:
            p.signed.add(TxKind.REFUND)
        elif action.kind is ActionKind.BROADCAST:
            assert action.tx_kind in p.signed, f"{role} broadcasts an unsigned {action.tx_kind}"
            target = own if action.tx_kind is not TxKind.REDEEM else ctr
            self.chains[self.legs[target].chain].mempool.append((target, action.tx_kind))
        assert action.to is not None
        moved = action.to is not p.state
        p.state = action.to
        p.history.append(action.to)
        # Re-sending a transaction the chain has not mined yet is not progress: wait for a block.
        return moved or action.kind is not ActionKind.BROADCAST

    def mine(self, chain: str) -> None:
        c = self.chains[chain]
        c.blocks += 1
        c.clock += 1
        for key, kind in c.mempool:
            leg = self.legs[key]
            if kind is TxKind.LOCK and leg.state is HtlcState.ABSENT and c.clock < leg.expiry:
                leg.state, leg.locked_at = HtlcState.LOCKED, c.blocks
            elif kind is TxKind.REDEEM and leg.state is HtlcState.LOCKED:
                leg.state, leg.spent_at, leg.preimage = HtlcState.REDEEMED, c.blocks, PREIMAGE
            elif kind is TxKind.REFUND and leg.state is HtlcState.LOCKED and c.clock >= leg.expiry:
                leg.state, leg.spent_at = HtlcState.REFUNDED, c.blocks
        c.mempool.clear()
