"""The API over real HTTP (uvicorn on 127.0.0.1): auth, every error class as problem+json,
bad input, limits, pagination, the book's depth, the committed OpenAPI spec."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import httpx
import pytest

from kofo.errors import InvalidInput
from kofo.node.api import OPENAPI_PATH, RateLimit, openapi_document
from kofo.node.ledger_client import LedgerTimeout, LedgerUnreachable
from kofo.node.service import Conflict, NotFound, OfferSpec, Unavailable
from tests.api.conftest import Served, serve

pytestmark = pytest.mark.timeout(60)

HTTP = httpx.Client(timeout=30)  # one client: creating one loads the CA store (slow)

OFFER = {
    "buy": "BTC",
    "sell": "ETH",
    "price_num": 15_000_000_000,
    "price_den": 1,
    "min_in": "0.001",
    "max_in": "0.5",
}


def problem(r: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["status"] == status and body["code"] == code
    assert body["type"].endswith(code) and body["title"] and body["detail"]
    return body  # type: ignore[no-any-return]


def get(s: Served, path: str, token: str | None = None, **kw: object) -> httpx.Response:
    return HTTP.get(s.url + path, headers=s.headers(token), **kw)  # type: ignore[arg-type]


def post(s: Served, path: str, body: object = None, token: str | None = None) -> httpx.Response:
    return HTTP.post(s.url + path, json=body, headers=s.headers(token))


# -- auth ----------------------------------------------------------------------------------------


def test_no_token_is_401_problem(served: Served) -> None:
    r = HTTP.get(served.url + "/v1/info")
    body = problem(r, 401, "unauthorized")
    assert "missing" in str(body["detail"])
    assert r.headers["www-authenticate"] == "Bearer"


def test_wrong_token_is_401_and_never_echoed(served: Served) -> None:
    wrong = "ee" * 32
    r = get(served, "/v1/info", token=wrong)
    problem(r, 401, "unauthorized")
    assert wrong not in r.text


def test_other_auth_scheme_is_401(served: Served) -> None:
    r = HTTP.get(served.url + "/v1/info", headers={"Authorization": f"Basic {served.token}"})
    problem(r, 401, "unauthorized")


def test_readonly_token_reads_but_may_not_write(served: Served) -> None:
    assert get(served, "/v1/balances", token=served.readonly).status_code == 200
    r = post(served, "/v1/offers", OFFER, token=served.readonly)
    problem(r, 403, "forbidden")
    assert served.service.offers_by_id == {}  # nothing happened
    r = HTTP.delete(served.url + "/v1/offers/x", headers=served.headers(served.readonly))
    problem(r, 403, "forbidden")


def test_full_token_writes(served: Served) -> None:
    r = post(served, "/v1/offers", OFFER)
    assert r.status_code == 201, r.text
    assert r.json()["spec"]["min_in"] == 100_000 and r.json()["spec"]["max_in"] == 50_000_000


# -- errors as problem+json ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "code"),
    [
        (NotFound("no trade 7"), 404, "not_found"),
        (Conflict("already committed"), 409, "conflict"),
        (InvalidInput("amount too small"), 422, "invalid_input"),
        (Unavailable("the ledger is unreachable"), 503, "unavailable"),
        (InvalidInput("liquidity", code="insufficient_liquidity"), 400, "insufficient_liquidity"),
        (LedgerUnreachable("ledger down: connection refused"), 503, "ledger_unreachable"),
        (LedgerTimeout("not in a block yet"), 503, "ledger_timeout"),
    ],
)
def test_service_errors_map_to_status_and_code(
    served: Served, exc: Exception, status: int, code: str
) -> None:
    served.service.fail_next = exc
    body = problem(get(served, "/v1/trades"), status, code)
    assert body["detail"] == exc.args[0]


def test_unexpected_exception_is_500_without_its_text(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "preimage=" + "5e" * 32
    served.service.fail_next = RuntimeError(f"boom {secret}")
    with caplog.at_level(logging.DEBUG):
        r = get(served, "/v1/info")
    body = problem(r, 500, "internal")
    assert secret not in r.text and "boom" not in r.text
    assert "ref " in str(body["detail"])
    assert "RuntimeError" in caplog.text  # the log says what and where ...
    assert secret not in caplog.text and "boom" not in caplog.text  # ... never the message


def test_unknown_route_and_method_are_problems(served: Served) -> None:
    problem(get(served, "/v1/nothing"), 404, "not_found")
    r = HTTP.put(served.url + "/v1/info", headers=served.headers())
    problem(r, 405, "method_not_allowed")


def test_unknown_id_is_404(served: Served) -> None:
    for path in ("/v1/trades/abc", "/v1/swaps/abc", "/v1/ledger/orders/abc"):
        problem(get(served, path), 404, "not_found")
    r = HTTP.delete(served.url + "/v1/offers/abc", headers=served.headers())
    problem(r, 404, "not_found")


# -- bad input -----------------------------------------------------------------------------------


def test_malformed_json_is_400(served: Served) -> None:
    r = HTTP.post(
        served.url + "/v1/trades",
        content=b'{"sell": "BTC",',
        headers={**served.headers(), "content-type": "application/json"},
    )
    problem(r, 400, "malformed_json")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**OFFER, "price_num": "15"}, "body.price_num"),
        ({**OFFER, "price_num": 1.5}, "body.price_num"),
        ({**OFFER, "price_num": True}, "body.price_num"),
        ({**OFFER, "price_num": 0}, "body.price_num"),
        ({**OFFER, "min_in": 1.5}, "body.min_in"),
        ({**OFFER, "min_in": -1}, "body.min_in"),
        ({**OFFER, "min_in": "1e5"}, "body.min_in"),
        ({**OFFER, "partial": "yes"}, "body.partial"),
        ({**OFFER, "extra": 1}, "body.extra"),
        ({k: v for k, v in OFFER.items() if k != "buy"}, "body.buy"),
    ],
)
def test_wrong_types_name_the_field(served: Served, body: dict[str, object], field: str) -> None:
    out = problem(post(served, "/v1/offers", body), 422, "invalid_input")
    fields = [e["field"] for e in out["errors"]]  # type: ignore[attr-defined]
    assert field in fields, out
    assert field in str(out["detail"])
    assert served.service.offers_by_id == {}


def test_body_not_an_object_is_422(served: Served) -> None:
    problem(post(served, "/v1/trades", [1, 2]), 422, "invalid_input")


def test_unknown_asset_is_422_naming_the_field(served: Served) -> None:
    out = problem(post(served, "/v1/offers", {**OFFER, "sell": "DOGE"}), 422, "invalid_input")
    assert out["errors"] == [
        {
            "field": "body.sell",
            "message": "unknown asset 'DOGE'; this node knows BTC, DUSD, ETH, LTC",
        }
    ]
    out = problem(get(served, "/v1/book?buy=BTC&sell=XRP"), 422, "invalid_input")
    assert "query.sell" in str(out["detail"])


def test_made_up_asset_names_do_not_each_cost_a_balance_read(served: Served) -> None:
    for i in range(20):
        problem(get(served, f"/v1/book?buy=X{i}&sell=ETH"), 422, "invalid_input")
    assert served.service.balance_reads <= 2


def test_too_many_decimals_is_422_naming_the_field(served: Served) -> None:
    out = problem(
        post(served, "/v1/trades", {"sell": "BTC", "amount": "0.000000001", "buy": "ETH"}),
        422,
        "invalid_input",
    )
    assert out["errors"] == [
        {"field": "body.amount", "message": "'0.000000001' has 9 decimals; BTC has 8"}
    ]
    # DUSD has 6: a 7th decimal is refused on min_receive, in the buy asset's precision
    out = problem(
        post(
            served,
            "/v1/trades",
            {"sell": "BTC", "amount": "0.01", "buy": "DUSD", "min_receive": "1.0000001"},
        ),
        422,
        "invalid_input",
    )
    assert "body.min_receive" in str(out["detail"])
    assert served.service.trades_by_id == {}


def test_decimal_and_integer_amounts_mean_the_same(served: Served) -> None:
    a = post(served, "/v1/trades", {"sell": "eth", "amount": "1.5", "buy": "BTC"}).json()
    b = post(served, "/v1/trades", {"sell": "ETH", "amount": 15 * 10**17, "buy": "btc"}).json()
    assert a["amount"] == b["amount"] == 1_500_000_000_000_000_000
    assert a["sell"] == b["sell"] == "eth"


def test_zero_and_same_asset_trades_are_refused(served: Served) -> None:
    problem(
        post(served, "/v1/trades", {"sell": "BTC", "amount": 0, "buy": "ETH"}), 422, "invalid_input"
    )
    out = problem(
        post(served, "/v1/trades", {"sell": "BTC", "amount": 1, "buy": "btc"}), 422, "invalid_input"
    )
    assert "body.buy" in str(out["detail"])


def test_bad_query_params_name_the_field(served: Served) -> None:
    out = problem(get(served, "/v1/trades?limit=0"), 422, "invalid_input")
    assert "query.limit" in str(out["detail"])
    out = problem(get(served, "/v1/trades?before=nan"), 422, "invalid_input")
    assert "query.before" in str(out["detail"])
    out = problem(get(served, "/v1/events?after=-1"), 422, "invalid_input")
    assert "query.after" in str(out["detail"])
    out = problem(get(served, "/v1/trades?limt=5"), 422, "invalid_input")  # a typo is an error
    assert out["errors"][0]["field"] == "query.limt"  # type: ignore[index]
    out = problem(get(served, "/v1/trades?before=1&before=9e99"), 422, "invalid_input")
    assert out["errors"][0]["field"] == "query.before"  # type: ignore[index]


def test_huge_body_is_413(served: Served) -> None:
    big = {**OFFER, "pad": "x" * 70_000}
    problem(post(served, "/v1/offers", big), 413, "body_too_large")


def test_huge_chunked_body_is_413(served: Served) -> None:
    def chunks():  # no Content-Length: the limit is counted as it arrives
        for _ in range(100):
            yield b"x" * 1_000

    r = HTTP.post(
        served.url + "/v1/offers",
        content=chunks(),
        headers={**served.headers(), "content-type": "application/json"},
    )
    problem(r, 413, "body_too_large")
    assert served.service.offers_by_id == {}


def test_rate_limit_is_429_per_token(tmp_path: Path) -> None:
    s, thread = serve(tmp_path, rate_limit=RateLimit(per_second=0.001, burst=3))
    try:
        for _ in range(3):
            assert get(s, "/v1/balances").status_code == 200
        body = problem(get(s, "/v1/balances"), 429, "rate_limited")
        assert int(body["retry_after"]) >= 1  # type: ignore[call-overload]
        # the read-only token has its own bucket
        assert get(s, "/v1/balances", token=s.readonly).status_code == 200
        # and guessing tokens is throttled too (per address, before the token is checked)
        codes = [HTTP.get(s.url + "/v1/info").status_code for _ in range(4)]
        assert codes == [401, 401, 401, 429]
    finally:
        thread.stop()
        s.service.events_log.close()


# -- resources -----------------------------------------------------------------------------------


def test_book_depth_is_cumulative_per_price_level(served: Served) -> None:
    svc = served.service
    spec = OfferSpec("btc", "eth", 15_000_000_000, 1, 1_000, 10_000_000)
    svc.add_foreign_offer(spec)
    svc.add_foreign_offer(OfferSpec("btc", "eth", 30_000_000_000, 2, 1_000, 5_000_000, fee=7))
    svc.add_foreign_offer(OfferSpec("btc", "eth", 14_000_000_000, 1, 1_000, 20_000_000))
    svc.add_foreign_offer(OfferSpec("eth", "btc", 1, 15_000_000_000, 1, 10**18))  # other side
    body = get(served, "/v1/book?buy=BTC&sell=ETH").json()
    assert len(body["offers"]) == 3
    assert body["depth"] == [
        {
            "price_num": 15_000_000_000,
            "price_den": 1,
            "price": "1.5",
            "offers": 2,
            "amount_in": 15_000_000,
            "amount_out": 10_000_000 * 15_000_000_000 + 5_000_000 * 15_000_000_000 - 7,
            "cum_in": 15_000_000,
            "cum_out": 15_000_000 * 15_000_000_000 - 7,
        },
        {
            "price_num": 14_000_000_000,
            "price_den": 1,
            "price": "1.4",
            "offers": 1,
            "amount_in": 20_000_000,
            "amount_out": 20_000_000 * 14_000_000_000,
            "cum_in": 35_000_000,
            "cum_out": 15_000_000 * 15_000_000_000 - 7 + 20_000_000 * 14_000_000_000,
        },
    ]
    other = get(served, "/v1/book?buy=eth&sell=btc").json()["depth"]
    assert other[0]["price"] == "0.66666666"  # 1/1.5 BTC per ETH, exact digits, no float


def test_trades_paginate_with_before(served: Served) -> None:
    ids = [
        post(served, "/v1/trades", {"sell": "BTC", "amount": i + 1, "buy": "ETH"}).json()[
            "trade_id"
        ]
        for i in range(5)
    ]
    seen: list[str] = []
    before = None
    for _ in range(10):  # bounded
        params = {"limit": 2} if before is None else {"limit": 2, "before": before}
        page = get(served, "/v1/trades", params=params).json()
        seen += [t["trade_id"] for t in page["items"]]
        before = page["next"]
        if before is None:
            break
    assert seen == ids[::-1]  # newest first, each once


def test_cancel_before_commit_then_conflict(served: Served) -> None:
    t = post(served, "/v1/trades", {"sell": "BTC", "amount": "0.01", "buy": "ETH"}).json()
    r = post(served, f"/v1/trades/{t['trade_id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    problem(post(served, f"/v1/trades/{t['trade_id']}/cancel"), 409, "conflict")


def test_offer_add_list_withdraw(served: Served) -> None:
    offer = post(served, "/v1/offers", OFFER).json()
    listed = get(served, "/v1/offers", params={"own": "true"}).json()["items"]
    assert [o["offer_id"] for o in listed] == [offer["offer_id"]]
    r = HTTP.delete(f"{served.url}/v1/offers/{offer['offer_id']}", headers=served.headers())
    assert r.status_code == 204 and r.content == b""
    assert get(served, "/v1/offers").json()["items"] == []


def test_health_reports_degraded_ledger(served: Served) -> None:
    assert get(served, "/v1/health").json()["status"] == "ok"
    served.service.ledger_up = False
    body = get(served, "/v1/health").json()
    assert body["status"] == "degraded" and body["ledger"] is False


def test_events_page_and_last_seq(served: Served) -> None:
    assert get(served, "/v1/events/last").json() == {"seq": 0}
    for i in range(37):
        served.service.events_log.append("node", {"i": i})
    assert get(served, "/v1/events/last").json() == {"seq": 37}
    page = get(served, "/v1/events", params={"after": 30, "limit": 5}).json()
    assert [e["seq"] for e in page["items"]] == [31, 32, 33, 34, 35] and page["next"] == 35


# -- the spec ------------------------------------------------------------------------------------


def test_committed_openapi_equals_the_served_spec(served: Served) -> None:
    committed = json.loads(OPENAPI_PATH.read_text())
    assert committed == openapi_document(), (
        "docs/openapi.json is stale: run python -m kofo.node.api --write-openapi"
    )
    served_spec = HTTP.get(served.url + "/v1/openapi.json").json()
    assert served_spec == committed
    assert committed["openapi"].startswith("3.1")


def test_every_operation_has_summary_description_and_example() -> None:
    spec = openapi_document()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            assert op.get("summary") and op.get("description"), where
            ok = [c for s, c in op["responses"].items() if s.startswith("2")]
            content = ok[0].get("content", {"application/json": {"example": None}})
            if ok[0] is op["responses"].get("204"):
                continue
            assert content["application/json"].get("example") is not None, where


def test_dashboard_mount_is_public_and_v1_still_needs_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """create_app calls kofo.node.dashboard.mount(app) when that module exists (it ships on
    another branch); its static files are public, the /v1 routes keep their token."""
    import importlib.machinery
    import types

    from fastapi import FastAPI
    from fastapi.responses import HTMLResponse

    module = types.ModuleType("kofo.node.dashboard")
    module.__spec__ = importlib.machinery.ModuleSpec("kofo.node.dashboard", None)

    def mount(app: FastAPI) -> None:
        app.add_api_route("/", lambda: HTMLResponse("<h1>KOFO</h1>"), include_in_schema=False)

    module.mount = mount  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "kofo.node.dashboard", module)
    s, thread = serve(tmp_path)
    try:
        assert HTTP.get(s.url + "/").text == "<h1>KOFO</h1>"
        problem(HTTP.get(s.url + "/v1/info"), 401, "unauthorized")
    finally:
        thread.stop()
        s.service.events_log.close()
