from hypothesis import given
from hypothesis import strategies as st

from kofo.clearance.fees import protocol_fee, split_fee

node_ids = st.binary(min_size=32, max_size=32)


@given(
    fee=st.integers(min_value=0, max_value=10**30),
    relays=st.lists(node_ids, max_size=16),
    providers=st.lists(node_ids, min_size=1, max_size=8),
    foundation_bps=st.integers(0, 10_000),
    relay_pool_bps=st.integers(0, 10_000),
)
def test_shares_sum_exactly_to_the_fee_and_are_never_negative(
    fee, relays, providers, foundation_bps, relay_pool_bps
):
    split = split_fee(
        fee, relays, providers, foundation_bps=foundation_bps, relay_pool_bps=relay_pool_bps
    )
    assert split.total() == fee
    assert split.foundation >= 0
    assert all(amount >= 0 for _, amount in split.shares)
    assert len(split.shares) == len(relays) + len(providers)


@given(fee=st.integers(0, 10**24), n_relays=st.integers(1, 16), n_providers=st.integers(1, 8))
def test_relays_share_equally_and_first_provider_takes_the_dust(fee, n_relays, n_providers):
    relays = [bytes([1, i]) * 16 for i in range(n_relays)]
    providers = [bytes([2, i]) * 16 for i in range(n_providers)]
    split = split_fee(fee, relays, providers, foundation_bps=1_000, relay_pool_bps=3_000)
    relay_amounts = {a for _, a in split.shares[:n_relays]}
    assert len(relay_amounts) == 1
    provider_amounts = [a for _, a in split.shares[n_relays:]]
    assert all(a == provider_amounts[-1] for a in provider_amounts[1:])
    assert 0 <= provider_amounts[0] - provider_amounts[-1] < n_providers + n_relays


def test_foundation_takes_ten_percent_and_relays_thirty_percent_of_the_rest():
    split = split_fee(
        10_000, [b"r" * 32, b"s" * 32], [b"p" * 32], foundation_bps=1_000, relay_pool_bps=3_000
    )
    assert split.foundation == 1_000
    assert dict(split.shares) == {b"r" * 32: 1_350, b"s" * 32: 1_350, b"p" * 32: 6_300}


def test_without_relays_the_providers_take_all_carrier_fees():
    split = split_fee(1_001, [], [b"p" * 32, b"q" * 32], foundation_bps=1_000, relay_pool_bps=3_000)
    assert split.foundation == 100
    assert split.shares == ((b"p" * 32, 451), (b"q" * 32, 450))


@given(notional=st.integers(0, 10**30), bps=st.integers(0, 10_000))
def test_protocol_fee_rounds_down_never_above_the_published_rate(notional, bps):
    fee = protocol_fee(notional, bps)
    assert 0 <= fee * 10_000 <= notional * bps
    assert notional * bps - fee * 10_000 < 10_000
