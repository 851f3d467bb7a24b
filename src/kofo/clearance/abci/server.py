"""The ledger app served to CometBFT v0.38 over the ABCI socket protocol.

Wire format: each message is a protobuf ``tendermint.abci.Request``/``Response`` preceded by its
length as an unsigned varint, over TCP. CometBFT opens four connections (consensus, mempool,
query, snapshot); all are served by one asyncio loop, so the app sees one request at a time and
needs no locks. The protobuf classes are generated from CometBFT's own .proto files (see
``regenerate.py``).

Run: ``python -m kofo.clearance.abci.server --db ledger.db --addr 127.0.0.1:26658``. Ledger params
come from the genesis file's ``app_state`` (``{"params": {...}}``) at InitChain, so every
validator starts from the same rules.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from google.protobuf.message import DecodeError

from kofo.clearance import attest
from kofo.clearance.abci.gen.tendermint.abci import types_pb2 as abci
from kofo.clearance.abci.gen.tendermint.crypto import keys_pb2
from kofo.clearance.admission import SenderRateLimit
from kofo.clearance.app import Block, LedgerApp
from kofo.clearance.attest import Validator, uvarint
from kofo.clearance.errors import InternalError, abci_code
from kofo.clearance.params import LedgerParams
from kofo.clearance.store import MerkleStore
from kofo.errors import KofoError
from kofo.wire.attest import ChainObserver

log = logging.getLogger("kofo.clearance.abci")

MAX_REQUEST_BYTES = 64 << 20
"""A FinalizeBlock carries a whole block; CometBFT's default max block is 21 MiB (plus framing),
so 64 MiB refuses only a corrupted length prefix."""

BLOCK_ID_FLAG_COMMIT = 2
"""``tendermint.types.BlockIDFlag.BLOCK_ID_FLAG_COMMIT``: the vote carries an extension."""

APP_VERSION = 1
CODESPACE = "kofo"


class ProtocolError(KofoError):
    code = "abci_protocol"


READ_CHUNK = 1 << 16
"""Bytes read from a connection at a time. CometBFT pipelines many small requests (a CheckTx
per gossiped tx, then a Flush), so one read usually carries dozens of them."""


def _next_frame(buf: bytearray, pos: int) -> tuple[int, int] | None:
    """``(start, end)`` of the length-prefixed message at ``buf[pos:]``, or None if it has
    not fully arrived yet."""
    shift = size = 0
    i = pos
    while True:
        if i >= len(buf):
            return None
        byte = buf[i]
        i += 1
        size |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise ProtocolError("varint length prefix longer than 64 bits")
    if size > MAX_REQUEST_BYTES:
        raise ProtocolError(f"request of {size} bytes exceeds {MAX_REQUEST_BYTES}")
    if i + size > len(buf):
        return None
    return i, i + size


def _proto_tx_size(tx: bytes) -> int:
    """A tx's size in a block's protobuf ``Data`` (tag, length varint, bytes): what CometBFT
    counts against ``max_tx_bytes`` (``types.ComputeProtoSizeForTxs``)."""
    return 1 + len(uvarint(len(tx))) + len(tx)


def _events(events: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]) -> list[abci.Event]:
    return [
        abci.Event(
            type=kind,
            attributes=[abci.EventAttribute(key=k, value=v, index=True) for k, v in attrs],
        )
        for kind, attrs in events
    ]


_CHECK_TX_OK: bytes = abci.Response(check_tx=abci.ResponseCheckTx()).SerializeToString()
_FLUSH: bytes = abci.Response(flush=abci.ResponseFlush()).SerializeToString()


class AbciApp:
    """Maps ABCI requests onto :class:`LedgerApp`."""

    def __init__(self, app: LedgerApp) -> None:
        self.app = app
        self._handlers: dict[str, Callable[[Any], abci.Response]] = {
            "echo": lambda r: abci.Response(echo=abci.ResponseEcho(message=r.message)),
            "flush": lambda r: abci.Response(flush=abci.ResponseFlush()),
            "info": self.info,
            "init_chain": self.init_chain,
            "query": self.query,
            "check_tx": self.check_tx,
            "prepare_proposal": self.prepare_proposal,
            "process_proposal": self.process_proposal,
            "extend_vote": self.extend_vote,
            "verify_vote_extension": self.verify_vote_extension,
            "finalize_block": self.finalize_block,
            "commit": self.commit,
            "list_snapshots": lambda r: abci.Response(list_snapshots=abci.ResponseListSnapshots()),
            "offer_snapshot": lambda r: abci.Response(offer_snapshot=abci.ResponseOfferSnapshot()),
            "load_snapshot_chunk": lambda r: abci.Response(
                load_snapshot_chunk=abci.ResponseLoadSnapshotChunk()
            ),
            "apply_snapshot_chunk": lambda r: abci.Response(
                apply_snapshot_chunk=abci.ResponseApplySnapshotChunk()
            ),
        }

    def handle_bytes(self, request: abci.Request) -> bytes:
        """The serialized response; the hot, constant answers are serialized once."""
        kind = request.WhichOneof("value")
        try:
            if kind == "check_tx":
                req = request.check_tx
                result = self.app.check_tx(req.tx, recheck=req.type == abci.RECHECK)
                if result.ok:
                    return _CHECK_TX_OK
                refused: bytes = self.check_tx_response(result.code, result.log).SerializeToString()
                return refused
            if kind == "flush":
                return _FLUSH
            answer: bytes = self.handle(request).SerializeToString()
            return answer
        except Exception as exc:  # even a response that fails to serialize is answered
            failed: bytes = self._failed(kind or "", exc).SerializeToString()
            return failed

    def handle(self, request: abci.Request) -> abci.Response:
        kind = request.WhichOneof("value")
        handler = self._handlers.get(kind or "")
        if handler is None:
            return abci.Response(exception=abci.ResponseException(error=f"unknown {kind}"))
        try:
            return handler(getattr(request, kind or ""))
        except Exception as exc:
            return self._failed(kind or "", exc)

    def _failed(self, kind: str, exc: Exception) -> abci.Response:
        """The answer when a handler raised. For input-driven requests (a query, a CheckTx) that
        is a refusal with a stable code: the request's sender gets ``internal_error`` and the
        connection and the validator go on. For consensus requests (FinalizeBlock, Commit,
        InitChain) no safe answer exists -- the app refuses every bad tx inside the block, so
        this is a fault of the node itself (disk, memory, a corrupt store) -- and CometBFT is
        told so with an exception response and stops rather than diverge."""
        log.error("ABCI %s failed", kind, exc_info=exc)
        err = InternalError(f"internal error ({type(exc).__name__})")
        code = abci_code(err)
        if kind == "query":
            return abci.Response(
                query=abci.ResponseQuery(
                    code=code, log=str(err), codespace=CODESPACE, height=self.app.height
                )
            )
        if kind == "check_tx":
            return self.check_tx_response(code, str(err))
        if kind == "process_proposal":
            return abci.Response(
                process_proposal=abci.ResponseProcessProposal(
                    status=abci.ResponseProcessProposal.REJECT
                )
            )
        if kind == "prepare_proposal":
            return abci.Response(prepare_proposal=abci.ResponsePrepareProposal(txs=[]))
        if kind == "extend_vote":  # attests nothing this height
            return abci.Response(extend_vote=abci.ResponseExtendVote(vote_extension=b""))
        if kind == "verify_vote_extension":
            return abci.Response(
                verify_vote_extension=abci.ResponseVerifyVoteExtension(
                    status=abci.ResponseVerifyVoteExtension.REJECT
                )
            )
        return abci.Response(exception=abci.ResponseException(error=str(err)))

    def info(self, req: abci.RequestInfo) -> abci.Response:
        height = self.app.height
        return abci.Response(
            info=abci.ResponseInfo(
                data="kofo-clearance",
                version="1",
                app_version=APP_VERSION,
                last_block_height=height,
                last_block_app_hash=self.app.app_hash if height > 0 else b"",
            )
        )

    def init_chain(self, req: abci.RequestInitChain) -> abci.Response:
        params = None
        if req.app_state_bytes:
            state = json.loads(req.app_state_bytes)
            params = LedgerParams.from_map(state.get("params", {}))
        validators = [
            Validator(v.pub_key.ed25519, v.power)
            for v in req.validators
            if v.pub_key.WhichOneof("sum") == "ed25519"
        ]
        app_hash = self.app.init_chain(
            params,
            validators=validators,
            chain_id=req.chain_id,
            vote_extensions_height=req.consensus_params.abci.vote_extensions_enable_height,
        )
        return abci.Response(init_chain=abci.ResponseInitChain(app_hash=app_hash))

    def query(self, req: abci.RequestQuery) -> abci.Response:
        try:
            value = self.app.query(req.path, req.data)
        except KofoError as exc:
            return abci.Response(
                query=abci.ResponseQuery(
                    code=abci_code(exc), log=str(exc), codespace=CODESPACE, height=self.app.height
                )
            )
        return abci.Response(query=abci.ResponseQuery(value=value, height=self.app.height))

    def check_tx(self, req: abci.RequestCheckTx) -> abci.Response:
        # A recheck (after every block, unless the node sets mempool.recheck=false) costs a
        # hash, a cache lookup and the replay lookups: a tx the block just applied (or an old
        # one resent) leaves the mempool; the stateless checks' answer never changes.
        result = self.app.check_tx(req.tx, recheck=req.type == abci.RECHECK)
        return self.check_tx_response(result.code, result.log)

    @staticmethod
    def check_tx_response(code: int, log_text: str) -> abci.Response:
        return abci.Response(
            check_tx=abci.ResponseCheckTx(
                code=code, log=log_text, codespace=CODESPACE if code else ""
            )
        )

    def prepare_proposal(self, req: abci.RequestPrepareProposal) -> abci.Response:
        # First the previous height's extended commit (the validators' signed attestations of
        # leg outcomes, see kofo.clearance.attest), then CometBFT's mempool order within the
        # rest of the byte budget, leaving for a later block the txs this block's per-sender and
        # per-kind budgets would refuse (LedgerApp.propose); an attestation tx arriving from the
        # mempool is dropped.
        txs: list[bytes] = []
        size = 0
        if self.app.vote_extensions_enabled_at(req.height):
            votes = sorted(
                (
                    attest.Vote(v.validator.address, v.vote_extension, v.extension_signature)
                    for v in req.local_last_commit.votes
                    if v.block_id_flag == BLOCK_ID_FLAG_COMMIT
                ),
                key=lambda v: v.validator,
            )
            tx = attest.encode_attest_tx(
                attest.AttestTx(req.height - 1, req.local_last_commit.round, tuple(votes))
            )
            txs.append(tx)
            size = _proto_tx_size(tx)
        mempool = [tx for tx in req.txs if not attest.is_attest_tx(tx)]
        # Sizes as CometBFT counts them (types.Txs.Validate): over max_tx_bytes, it refuses to
        # build the block and the round has no proposal. CometBFT reaped the mempool up to the
        # limit; the attestation tx comes on top, so the tail waits for the next block.
        if size <= req.max_tx_bytes:
            txs += self.app.propose(mempool, req.max_tx_bytes - size, tx_size=_proto_tx_size)
        return abci.Response(prepare_proposal=abci.ResponsePrepareProposal(txs=txs))

    def process_proposal(self, req: abci.RequestProcessProposal) -> abci.Response:
        # Ordinary txs are judged when the block is finalized (a bad one gets a non-zero code);
        # the attestation tx must be there and every signature in it valid, or the proposal is
        # rejected (a proposer cannot invent or drop more than a third of the attestations).
        why = self.app.check_proposal(req.height, req.txs)
        if why is not None:
            log.warning("rejecting the proposal for height %d: %s", req.height, why)
        status = (
            abci.ResponseProcessProposal.ACCEPT
            if why is None
            else abci.ResponseProcessProposal.REJECT
        )
        return abci.Response(process_proposal=abci.ResponseProcessProposal(status=status))

    def extend_vote(self, req: abci.RequestExtendVote) -> abci.Response:
        return abci.Response(
            extend_vote=abci.ResponseExtendVote(vote_extension=self.app.extend_vote())
        )

    def verify_vote_extension(self, req: abci.RequestVerifyVoteExtension) -> abci.Response:
        ok = self.app.verify_vote_extension(req.vote_extension)
        status = (
            abci.ResponseVerifyVoteExtension.ACCEPT
            if ok
            else abci.ResponseVerifyVoteExtension.REJECT
        )
        return abci.Response(verify_vote_extension=abci.ResponseVerifyVoteExtension(status=status))

    def finalize_block(self, req: abci.RequestFinalizeBlock) -> abci.Response:
        block = Block(req.height, req.time.seconds, tuple(req.txs))
        result = self.app.finalize_block(block)
        return abci.Response(
            finalize_block=abci.ResponseFinalizeBlock(
                tx_results=[
                    abci.ExecTxResult(
                        code=r.code,
                        log=r.log,
                        codespace=CODESPACE if r.code else "",
                        events=_events(r.events),
                    )
                    for r in result.results
                ],
                app_hash=result.app_hash,
                validator_updates=[
                    abci.ValidatorUpdate(pub_key=keys_pb2.PublicKey(ed25519=pk), power=power)
                    for pk, power in result.validator_updates
                ],
            )
        )

    def commit(self, req: abci.RequestCommit) -> abci.Response:
        self.app.commit()
        return abci.Response(commit=abci.ResponseCommit())


class AbciServer:
    def __init__(self, app: LedgerApp, host: str = "127.0.0.1", port: int = 26658) -> None:
        self.abci = AbciApp(app)
        self.host, self.port = host, port

    async def _serve_conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Requests are parsed out of a buffer filled by large reads, and the answers to one
        # read's requests are written together: a byte-at-a-time varint read costs an await
        # per byte, which dominated the cost of a cached CheckTx.
        buf = bytearray()
        try:
            while chunk := await reader.read(READ_CHUNK):
                buf += chunk
                pos, out, flush = 0, [], False
                while (frame := _next_frame(buf, pos)) is not None:
                    start, end = frame
                    try:
                        request = abci.Request.FromString(bytes(buf[start:end]))
                    except DecodeError as exc:
                        raise ProtocolError(f"undecodable ABCI request: {exc}") from None
                    pos = end
                    response = self.abci.handle_bytes(request)
                    out.append(uvarint(len(response)))
                    out.append(response)
                    flush = flush or request.WhichOneof("value") == "flush"
                del buf[:pos]
                if out:
                    writer.writelines(out)
                if flush:
                    await writer.drain()
        except ConnectionError:
            pass  # CometBFT went away (shutdown or crash)
        except ProtocolError as exc:
            log.warning("closing an ABCI connection: %s", exc)
        finally:
            writer.close()

    async def serve(self, ready: asyncio.Event | None = None) -> None:
        server = await asyncio.start_server(self._serve_conn, self.host, self.port)
        log.info("ABCI server listening on %s:%d", self.host, self.port)
        if ready is not None:
            ready.set()
        async with server:
            await server.serve_forever()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="KOFO clearance ledger as a CometBFT ABCI app")
    parser.add_argument("--db", required=True, help="SQLite file holding the ledger state")
    parser.add_argument("--addr", default="127.0.0.1:26658", help="host:port to listen on")
    parser.add_argument(
        "--sender-rate",
        type=float,
        default=50.0,
        help="CheckTx: tokens per second per sender (a tx costs 1, a heavy one more; 0: no limit)",
    )
    parser.add_argument(
        "--sender-burst", type=int, default=500, help="CheckTx: tokens a sender may spend at once"
    )
    parser.add_argument(
        "--observe",
        help="JSON file of what this validator sees on the chains (testnets; see "
        "kofo.clearance.attest.FileObserver). A validator watching real chains runs "
        "`python -m kofo.node.validator --config FILE` instead: the same server with the "
        "chain observer built from the config's chain RPC URLs",
    )
    return parser


def serve(
    args: argparse.Namespace,
    *,
    observer: ChainObserver | None = None,
    vault_signer: bytes | None = None,
) -> None:
    """Run the ABCI server for parsed ``args`` (see :func:`build_parser`); ``observer`` (the
    validator's chain watchers) defaults to ``--observe``'s file, or none."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host, _, port = args.addr.rpartition(":")
    # A validator's public RPC takes txs from anyone: each sender gets a bounded rate here.
    limit = SenderRateLimit(args.sender_rate, args.sender_burst) if args.sender_rate > 0 else None
    if observer is None and args.observe:
        observer = attest.FileObserver(args.observe)
    app = LedgerApp(
        MerkleStore(args.db),
        rate_limit=limit,
        require_registered=True,
        # A block takes at most a few registrations (LedgerParams); admitting more than a few
        # blocks' worth per second only spends CPU on proofs that cannot be committed soon.
        registration_limit=SenderRateLimit(20.0, 100),
        observer=observer,
        vault_signer=vault_signer,
    )
    asyncio.run(AbciServer(app, host or "127.0.0.1", int(port)).serve())


def main(argv: list[str] | None = None) -> None:
    serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
