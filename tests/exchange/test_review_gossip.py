"""Attacker review of the gossip change (fixed topology, relinking, re-dumps): the attacks
that worked, each failing before its fix. Real nodes on loopback, real backpressure."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket as sk

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import kofo.exchange.transport as transport_mod
from kofo.exchange import node as node_module
from kofo.exchange.frames import encode_frame
from kofo.exchange.node import ExchangeConfig, ExchangeNode
from kofo.exchange.transport import _read_frame, handshake, node_id_of, tls_identity
from kofo.wire.exchange import Frame

from .helpers import link, start_nodes, stop_all, wait_until

pytestmark = pytest.mark.timeout(120)


def test_gossip_missed_at_a_full_buffer_is_sent_again_not_the_whole_book(monkeypatch):
    """A neighbour whose write buffer was full (it reads slowly; a book dump fills it too)
    got the whole book again for any offer it missed: on a busy network a large book went
    out again and again to every slow or new neighbour (a slow reader made its victim
    re-send the book for each burst of gossip), and a withdrawal it missed never reached it
    (the book holds no withdrawals: the neighbour kept a dead offer until its expiry). Now
    the frames missed are sent again (at most ``MISSED_MAX`` per link), and the book not."""
    monkeypatch.setattr(transport_mod, "WRITE_BUFFER_LIMIT", 5_000)
    monkeypatch.setattr(node_module, "WRITE_BUFFER_LIMIT", 5_000)
    # the kernel's loopback buffers take some hundred kB before ours fills
    monkeypatch.setattr(node_module, "MISSED_MAX", 5_000, raising=False)
    n = 3_000

    async def go() -> None:
        maker, peer = await start_nodes(2, target_degree=0, offers_per_maker=n + 1, maintain_s=0.05)
        try:
            first = maker.publish_offer("btc", "eth", (29, 1), max_in=10**6)
            await link(peer, maker)
            await wait_until(lambda: peer.book.maker_count(maker.node_id) == 1)
            assert maker.stats.book_dumps == 1
            theirs, ours = peer.links[maker.node_id], maker.links[peer.node_id]
            theirs.writer.get_extra_info("socket").setsockopt(sk.SOL_SOCKET, sk.SO_RCVBUF, 4096)
            ours.writer.get_extra_info("socket").setsockopt(sk.SOL_SOCKET, sk.SO_SNDBUF, 4096)
            theirs.writer.transport.pause_reading()
            for i in range(n):
                maker.publish_offer("btc", "eth", (30 + i, 1), max_in=10**6)
                await asyncio.sleep(0)
            dropped = ours.dropped_out
            assert dropped > 0  # the buffer did fill: some gossip was dropped
            maker.withdraw_offer(first.offer.offer_id)
            assert ours.dropped_out == dropped + 1  # the withdrawal was dropped too
            theirs.writer.transport.resume_reading()
            await wait_until(
                lambda: (
                    peer.book.maker_count(maker.node_id) == n
                    and (maker.node_id, first.offer.offer_id) not in peer.book
                ),
                30,
                state=lambda: f"{peer.book.maker_count(maker.node_id)} of {n}, {maker.stats}",
            )
            assert maker.stats.gossip_resent > 0
            assert maker.stats.book_redumps == 0
            assert maker.stats.book_dumps == 1
        finally:
            await stop_all([maker, peer])

    asyncio.run(go())


async def _link_in(key: Ed25519PrivateKey, port: int) -> asyncio.StreamWriter:
    """A mesh link from ``key``'s node to ``port`` that this end never reads (as an attacker
    dialling in again and again leaves them)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=tls_identity(key).client)
    await handshake(reader, writer, key, 1, outbound=True)
    writer.write(encode_frame(Frame("peers_req", {}).to_bytes()))
    await writer.drain()
    return writer


async def _impersonate(victim_id: bytes, port: int) -> None:
    """Dial in claiming ``victim_id`` without its key: hello with its id, an auth signed by
    another key (the channel binding is this TLS session's: a signature relayed from the
    real peer's own session would not verify either)."""
    other = Ed25519PrivateKey.generate()
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls_identity(other).client
    )
    try:
        hello = {"node": victim_id, "port": 1, "nonce": os.urandom(32)}
        writer.write(encode_frame(Frame("hello", hello).to_bytes()))
        writer.write(encode_frame(Frame("auth", {"sig": other.sign(b"x" * 32)}).to_bytes()))
        await writer.drain()
        with contextlib.suppress(Exception):
            while await asyncio.wait_for(reader.read(65536), 5):
                pass  # until the node closes it
    finally:
        writer.close()


def test_relinking_in_a_loop_or_without_the_key_never_touches_other_links():
    """(a) A stranger claiming a linked peer's id without its key is refused at the
    handshake: the peer's link stays. (b) A peer dialling in again and again (each new link
    replaces its old one) only churns its own link: honest links stay, the node holds one
    link for it, and an honest newcomer still gets the book (one dump queue entry per link,
    oldest first). Passed before the review too: the attacks fail."""

    async def go() -> None:
        victim, honest, newcomer = await start_nodes(
            3, target_degree=0, maintain_s=0.05, offers_per_maker=200
        )
        writers: list[asyncio.StreamWriter] = []
        try:
            for i in range(200):
                honest.publish_offer("btc", "eth", (30 + i, 1), max_in=10**6)
            await link(honest, victim)
            await wait_until(lambda: victim.book.maker_count(honest.node_id) == 200, 15)
            kept = victim.links[honest.node_id]
            await _impersonate(honest.node_id, victim.port)
            assert victim.links[honest.node_id] is kept and not kept.closed
            churn = Ed25519PrivateKey.generate()
            churn_id = node_id_of(churn)
            for _ in range(40):
                w = await _link_in(churn, victim.port)
                writers.append(w)
                await wait_until(lambda: victim.links.get(churn_id) is not None, 5)
            await link(newcomer, victim)
            for _ in range(20):
                writers.append(await _link_in(churn, victim.port))
            await wait_until(
                lambda: newcomer.book.maker_count(honest.node_id) == 200,
                30,
                state=lambda: f"{newcomer.book.maker_count(honest.node_id)}, {victim.stats}",
            )
            assert victim.links[honest.node_id] is kept and not kept.closed
            await wait_until(lambda: sum(not lk.closed for lk in victim.links.values()) <= 3, 10)
            assert set(victim.links) <= {honest.node_id, newcomer.node_id, churn_id}
            assert len(victim._dump_wait) <= 1
        finally:
            for w in writers:
                w.close()
            await stop_all([victim, honest, newcomer])

    asyncio.run(go())


def test_peers_linking_in_cannot_keep_a_fixed_node_from_its_bootstrap_peers():
    """A fixed node (``discover = False``) dials each bootstrap peer "whatever the degree",
    but only while it has room under ``max_degree``, and peers linking in (fresh keys cost
    nothing) could take every slot left above ``target_degree``: with fewer target links
    than bootstrap peers (a library config; the daemon sets one per bootstrap peer), a
    bootstrap peer that came up after them was never dialled: the node was eclipsed from it.
    A fixed node keeps a slot for each bootstrap peer."""

    async def go() -> None:
        with sk.socket() as s:
            s.bind(("127.0.0.1", 0))
            late_port = s.getsockname()[1]
        (first,) = await start_nodes(1, target_degree=0)
        fixed = await start_nodes(
            1, target_degree=1, max_degree=3, feeler_s=0, discover=False, maintain_s=0.05,
            backoff_base_s=0.05, backoff_max_s=0.2,
            bootstrap=[("127.0.0.1", first.port), ("127.0.0.1", late_port)],
        )  # fmt: skip
        node = fixed[0]
        nodes = [first, node]
        writers: list[asyncio.StreamWriter] = []
        try:
            await wait_until(lambda: first.node_id in node.links, 10)
            for _ in range(2):  # linking in while the late bootstrap peer is down
                with contextlib.suppress(Exception):
                    writers.append(await _link_in(Ed25519PrivateKey.generate(), node.port))
            late = (await start_nodes(1, target_degree=0, port=late_port))[0]
            nodes.append(late)
            await wait_until(
                lambda: late.node_id in node.links,
                15,
                state=lambda: f"{len(node.links)} links, {len(node._dialing)} dialling",
            )
        finally:
            for w in writers:
                w.close()
            await stop_all(nodes)

    asyncio.run(go())


def test_addresses_announced_with_a_peers_id_never_keep_the_node_from_its_verified_one():
    """A node dials one address per node id at a time (two links at once to one node are
    each kept by a different end). It took the first address of an id in its table: an
    attacker announcing tarpits under an honest peer's id (listeners that never finish a
    handshake, 5 s each) ahead of the peer's verified address kept the node from ever dialling
    the peer back after a restart, one tarpit after another. An address verified by a
    handshake now goes first, and the rest in random order."""

    async def go() -> None:
        (honest,) = await start_nodes(1, target_degree=0)
        honest_key, honest_port = honest._key, honest.port
        node = (
            await start_nodes(
                1,
                target_degree=1,
                feeler_s=0,
                maintain_s=0.05,
                backoff_base_s=0.05,
                backoff_max_s=0.2,
            )
        )[0]
        stalled: list[asyncio.StreamWriter] = []

        async def tarpit(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            stalled.append(w)  # accepts, never answers

        pits = [await asyncio.start_server(tarpit, "127.0.0.1", 0) for _ in range(8)]
        attacker = Ed25519PrivateKey.generate()
        nodes = [honest, node]
        try:
            # the attacker links in and answers the node's peers_req with the tarpits,
            # each under the honest node's id
            ident = tls_identity(attacker)
            reader, writer = await asyncio.open_connection("127.0.0.1", node.port, ssl=ident.client)
            await handshake(reader, writer, attacker, 1, outbound=True)
            while (await _read_frame(reader)).type != "peers_req":
                pass
            listed = [[honest.node_id, p.sockets[0].getsockname()[1]] for p in pits]
            writer.write(encode_frame(Frame("peers", {"peers": listed}).to_bytes()))
            await writer.drain()
            await wait_until(lambda: len(node._known) >= len(pits), 5)
            # the node links the honest peer (verified address), which then restarts
            await node.connect("127.0.0.1", honest_port)
            await honest.stop()
            await wait_until(lambda: honest.node_id not in node.links, 5)
            honest = ExchangeNode(honest_key, ExchangeConfig(target_degree=0, port=honest_port))
            await honest.start()
            nodes.append(honest)
            await wait_until(
                lambda: honest.node_id in node.links,
                20,
                state=lambda: f"dialling {sorted(node._dialing)}",
            )
        finally:
            for w in stalled:
                w.close()
            for p in pits:
                p.close()
            await stop_all(nodes)

    asyncio.run(go())
