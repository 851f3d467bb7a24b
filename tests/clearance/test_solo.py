from kofo.clearance.app import Block, LedgerApp
from kofo.clearance.consensus.solo import SoloChain
from kofo.clearance.store import MerkleStore
from kofo.wire.orders import LegOutcome

from .helpers import T0, Party, SeenChains, commit_tx, ledger_params, make_order


def _workload(chains: SeenChains | None = None):
    """Registrations and five orders; ``chains`` (the producer's observer) sees the legs of
    the first three redeemed."""
    parties = [Party.make(i) for i in range(4)]
    txs = [p.register_tx() for p in parties]
    orders = []
    for _ in range(5):
        order = make_order(parties[:3], relays=[parties[3]])
        orders.append(order)
        txs.append(commit_tx(order, parties, parties[0]))
    for order in orders[:3]:
        for leg in range(3):
            if chains is not None:
                chains.see(order, leg, LegOutcome.REDEEMED)
    return txs, orders


def test_solo_chain_commits_submitted_txs_and_survives_restart(tmp_path):
    path = tmp_path / "ledger.db"
    ticks = iter(range(T0, T0 + 1_000))
    chains = SeenChains()
    app = LedgerApp(MerkleStore(path), ledger_params(), observer=chains)
    chain = SoloChain(app, clock=lambda: next(ticks))
    txs, orders = _workload(chains)
    for tx in txs:
        assert chain.submit(tx).ok
    assert not chain.submit(b"garbage").ok
    results = chain.drain()
    results.append(chain.produce_block())  # attests what the producer's observer saw
    assert all(r.ok for b in results for r in b.results)
    assert [app.order(o.order_id)["status"] for o in orders] == ["settled"] * 3 + ["committed"] * 2
    height, app_hash = chain.app.height, chain.app.app_hash
    chain.app.store.close()

    reopened = LedgerApp(MerkleStore(path))
    assert (reopened.height, reopened.app_hash) == (height, app_hash)
    assert reopened.tx_count() == len(txs)  # attestations are not counted as ledger txs


def test_replaying_the_same_blocks_gives_the_same_app_hash(tmp_path):
    path = tmp_path / "ledger.db"
    chains = SeenChains()
    app = LedgerApp(MerkleStore(path), ledger_params(), observer=chains)
    app.init_chain()
    txs, orders = _workload(chains)
    for i in range(0, len(txs) + 4, 4):
        att = (app.solo_attestation(app.height + 1),) if app.height else ()
        app.apply_block(Block(app.height + 1, T0 + i, (*att, *txs[i : i + 4])))
    assert app.order(orders[0].order_id)["status"] == "settled"
    blocks = [Block.from_bytes(raw) for _, raw in app.store.blocks()]

    # the replica has no observer: the attestations are in the blocks
    replica = LedgerApp(MerkleStore(tmp_path / "replica.db"), ledger_params())
    replica.init_chain()
    hashes = [replica.apply_block(b).app_hash for b in blocks]
    assert replica.app_hash == app.app_hash
    assert len(set(hashes)) == len(hashes)  # every block moved the state

    different = LedgerApp(MerkleStore(), ledger_params())
    different.init_chain()
    for b in blocks:
        different.apply_block(Block(b.height, b.time + 1, b.txs))
    assert different.app_hash != app.app_hash  # block time is part of the state


def test_submit_many_admits_the_same_txs_in_order_and_reaches_the_same_state(tmp_path):
    txs, _ = _workload()
    bad = [b"garbage", txs[5][:-1] + bytes([txs[5][-1] ^ 1])]  # undecodable; forged signature
    batch = [*txs[:5], *bad, *txs[5:]]

    def chain_at(path):
        ticks = iter(range(T0, T0 + 1_000))
        app = LedgerApp(MerkleStore(path), ledger_params())
        return SoloChain(app, clock=lambda: next(ticks))

    one = chain_at(tmp_path / "one.db")
    one_results = [one.submit(tx) for tx in batch]
    many = chain_at(tmp_path / "many.db")
    many_results = many.submit_many(batch)
    many.close()

    assert [r.code for r in many_results] == [r.code for r in one_results]
    assert [r.ok for r in many_results] == [True] * 5 + [False, False] + [True] * (len(txs) - 5)
    assert many.pending == len(txs)
    blocks_one, blocks_many = one.drain(), many.drain()
    assert all(r.ok for b in blocks_many for r in b.results)
    assert [b.app_hash for b in blocks_many] == [b.app_hash for b in blocks_one]
