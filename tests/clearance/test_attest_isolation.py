"""One attestation tx carries every fact of a height: a fact whose application raises is dropped
alone, never the others (issue 17, review 6 open list).

Before, the facts were applied in the tx's one overlay: a fact that hit a bug refused the whole
attestation tx (``internal_error``), and every honest fact of that height was lost with it.
"""

from kofo.clearance.app import Block
from kofo.wire.orders import LegOutcome, OrderKind

from .helpers import Ledger, Party, commit_tx, make_order


def test_a_raising_fact_is_dropped_alone_and_the_others_apply(monkeypatch):
    ledger = Ledger()
    alice, bob, carol, dave = (Party.make(i) for i in range(4))
    ledger.ok(*(p.register_tx() for p in (alice, bob, carol, dave)))
    ledger.bonded(alice, bob, carol, dave)
    bad = make_order([alice, bob], kind=OrderKind.DIRECT, amount=1_000)
    good = make_order([carol, dave], kind=OrderKind.DIRECT, amount=2_000)
    ledger.ok(commit_tx(bad, [alice, bob], alice), commit_tx(good, [carol, dave], carol))

    # A bug hit by one fact's application (here: after it wrote the leg's outcome into its
    # overlay, so its partial writes must go too); the other facts of the height are honest.
    real = ledger.app._set_outcome

    def buggy(view, ctx, fact):
        real(view, ctx, fact)
        if fact.order_id == bad.order_id:
            raise RuntimeError("a bug hit by this fact")

    monkeypatch.setattr(ledger.app, "_set_outcome", buggy)
    for order in (bad, good):
        ledger.chains.see(order, 0, LegOutcome.LOCKED)
    ledger.chains.see_bond(dave.id, dave.bond * 2)

    height = ledger.app.height + 1
    block = Block(height, ledger.time, (ledger.app.solo_attestation(height),))
    first = ledger.app.finalize_block(block)
    # re-executing the block (CometBFT replays it before Commit) gives the same app hash
    again = ledger.app.finalize_block(block)
    ledger.app.commit()

    assert first.app_hash == again.app_hash
    (result,) = again.results
    assert result.ok, result.log
    kinds = [kind for kind, _ in result.events]
    assert kinds.count("attested_fact_dropped") == 1
    assert kinds.count("leg_outcome") == 1  # the good order's; the bad one's was dropped

    assert ledger.app.order(good.order_id)["legs"][0]["outcome"] == "locked"
    assert ledger.app.order(bad.order_id)["legs"][0]["outcome"] is None
    assert ledger.app.bond(dave.id) == dave.bond * 2

    monkeypatch.undo()
    ledger.attested()  # the next height: the bad order's fact applies once the bug is gone
    assert ledger.app.order(bad.order_id)["legs"][0]["outcome"] == "locked"
