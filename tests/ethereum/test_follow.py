"""Block following with reorg detection, on the embedded EVM (snapshots make real reorgs)."""

from __future__ import annotations

import os

import pytest

from kofo.settlement.chains.ethereum.adapter import EthereumAdapter, embedded_web3
from kofo.settlement.chains.ethereum.contract import deploy
from kofo.settlement.chains.ethereum.keys import account_from_seed
from kofo.settlement.follow import BlockFollower, DeepReorg, NewBlock, Reorg


@pytest.fixture
def chain():
    w3 = embedded_web3()
    acct = account_from_seed(os.urandom(32))
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_transaction({"from": w3.eth.accounts[0], "to": acct.address, "value": 10**18})
    )
    return EthereumAdapter(w3, acct, deploy(w3, "HTLC", acct)), w3.provider.ethereum_tester


def test_new_blocks_are_reported_once_each_in_order(chain):
    adapter, tester = chain
    follower = BlockFollower(adapter)
    (first,) = follower.poll()
    assert isinstance(first, NewBlock)
    tester.mine_blocks(3)
    events = follower.poll()
    assert [e.block.height for e in events] == [first.block.height + i for i in (1, 2, 3)]
    assert follower.poll() == []


def test_a_reorg_is_reported_from_the_first_replaced_height(chain):
    adapter, tester = chain
    follower = BlockFollower(adapter)
    follower.poll()
    fork_point = adapter.tip().height
    snapshot = tester.take_snapshot()
    tester.mine_blocks(2)
    follower.poll()
    tester.revert_to_snapshot(snapshot)
    tester.time_travel(adapter.tip().time + 100)  # different timestamps → different hashes
    tester.mine_blocks(3)
    events = follower.poll()
    assert events[0] == Reorg(from_height=fork_point + 1, depth=2)
    tip = adapter.tip().height
    assert tip >= fork_point + 3  # the new branch is longer than the one it replaced
    assert [e.block.height for e in events[1:]] == list(range(fork_point + 1, tip + 1))
    assert all(e.block.hash == adapter.block_at(e.block.height).hash for e in events[1:])


def test_a_reorg_deeper_than_the_followed_depth_raises(chain):
    adapter, tester = chain
    snapshot = tester.take_snapshot()
    follower = BlockFollower(adapter, depth=2)
    tester.mine_blocks(3)
    follower.poll()
    tester.revert_to_snapshot(snapshot)
    tester.time_travel(adapter.tip().time + 100)
    tester.mine_blocks(6)
    with pytest.raises(DeepReorg):
        follower.poll()
