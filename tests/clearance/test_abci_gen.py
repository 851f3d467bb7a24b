import filecmp
import shutil

import pytest

from kofo.clearance.abci import regenerate
from kofo.clearance.abci.gen.tendermint.abci import types_pb2 as abci
from kofo.clearance.attest import uvarint


def test_committed_protobuf_modules_match_a_fresh_generation(tmp_path):
    if shutil.which("go") is None:
        pytest.skip("go is needed to fetch the CometBFT protos")
    pytest.importorskip("grpc_tools")
    regenerate.generate(tmp_path / "gen")
    cmp = filecmp.dircmp(regenerate.GEN, tmp_path / "gen", ignore=["__pycache__"])

    def diffs(c):
        out = c.diff_files + c.left_only + c.right_only
        for sub in c.subdirs.values():
            out += diffs(sub)
        return out

    assert diffs(cmp) == []


def test_finalize_block_request_round_trips_with_cometbft_field_layout():
    req = abci.Request(finalize_block=abci.RequestFinalizeBlock(txs=[b"a", b"b"], height=7))
    data = req.SerializeToString()
    # field 20 of Request is finalize_block in v0.38 (tag 20<<3|2 = 0xa2 0x01)
    assert data[:2] == b"\xa2\x01"
    assert abci.Request.FromString(data).finalize_block.height == 7


def test_length_prefix_is_an_unsigned_varint():
    assert uvarint(0) == b"\x00"
    assert uvarint(127) == b"\x7f"
    assert uvarint(300) == b"\xac\x02"
