"""The Ethereum chain's configured chain id (issue 16, open suspicion 1): written by
`kofo init --devnet`, read back, and refused when it is no chain id."""

from __future__ import annotations

import tomllib

import pytest

from kofo.errors import ConfigError
from kofo.node.config import parse_config, render_config

ETH = {"rpc_url": "http://127.0.0.1:8545", "htlc_contract": "0x" + "11" * 20}


def test_the_chain_id_is_rendered_and_read_back(tmp_path):
    text = render_config(
        name="a", ledger_url="http://127.0.0.1:1", chains={"eth": {**ETH, "chain_id": 1337}}
    )
    config = parse_config(tmp_path, tomllib.loads(text), tmp_path / "config.toml")
    assert config.chains["eth"].chain_id == 1337  # type: ignore[union-attr]
    unset = render_config(name="a", ledger_url="http://127.0.0.1:1", chains={"eth": ETH})
    parsed = parse_config(tmp_path, tomllib.loads(unset), tmp_path / "config.toml")
    assert parsed.chains["eth"].chain_id is None  # type: ignore[union-attr]


@pytest.mark.parametrize("bad", [0, -1, 2**64, "1", True])
def test_a_chain_id_that_is_no_chain_id_is_refused_naming_the_key(tmp_path, bad):
    raw = tomllib.loads(
        render_config(name="a", ledger_url="http://127.0.0.1:1", chains={"eth": ETH})
    )
    raw["chains"]["eth"]["chain_id"] = bad
    with pytest.raises(ConfigError, match=r"\[chains.eth\] chain_id must be"):
        parse_config(tmp_path, raw, tmp_path / "config.toml")
