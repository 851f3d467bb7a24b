"""The invariant every trade event must hold when published: the trade's stored row already
shows it (its phase, and for an ending phase a terminal state). See test_trade_event_order."""

from __future__ import annotations

from typing import Any

from kofo.node.daemon import Node
from kofo.node.service import Event
from kofo.node.trade_store import TERMINAL_TRADE_STATES


def watch_trade_events(node: Node) -> list[tuple[str, str, str | None]]:
    """Wrap ``node``'s event log: at each trade event, before it is appended (what a client
    woken by it would read first), read the trade from the node's store. Returns the list of
    ``(phase, state read, problem)`` the wrapper fills."""
    seen: list[tuple[str, str, str | None]] = []
    append = node.event_log.append

    def checked(kind: str, data: dict[str, Any]) -> Event:
        if kind == "trade":
            phase = str(data["phase"])
            view = node.store.find(str(data["trade_id"]))
            problem = None
            if view is None:
                problem = "no trade row"
            elif phase not in [p.phase for p in view.phases]:
                problem = f"phase {phase} not stored"
            elif phase in TERMINAL_TRADE_STATES and view.state not in TERMINAL_TRADE_STATES:
                problem = f"event {phase} published while the trade reads {view.state}"
            seen.append((phase, view.state if view else "", problem))
        return append(kind, data)

    node.event_log.append = checked  # type: ignore[method-assign]
    return seen
