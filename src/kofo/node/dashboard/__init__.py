"""The node's dashboard: a web page the daemon serves next to its API (issue 15 item 6).

Plain HTML, CSS and ES modules shipped in this package (``static/``); nothing loads from
elsewhere at run time, and the page's Content-Security-Policy says so to the browser. The page
is a client of the ``/v1`` API like any other: it sends ``Authorization: Bearer <token>`` on
every request and authenticates its event WebSocket with the subprotocol
``kofo.bearer.<token>`` (browsers cannot set headers on a WebSocket; the node echoes it).
The token is typed once into the page (kept in the tab's ``sessionStorage``, never in
``localStorage`` or a cookie) or handed over as ``#token=...`` in the URL ``kofo dashboard``
prints: a fragment never leaves the browser, and the page removes it from the address bar at
once.

The static files are public (they hold no data); every byte of node data comes from ``/v1``,
which checks the token.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from starlette.applications import Starlette
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

__all__ = [
    "MOUNT_PATH",
    "STATIC_DIR",
    "WS_TOKEN_PREFIX",
    "dashboard_url",
    "mount",
]

MOUNT_PATH = "/dashboard"
STATIC_DIR = Path(str(files(__name__).joinpath("static")))
# The WebSocket subprotocol the page offers: this prefix + the bearer token (a 64-hex token is
# a valid protocol name; Kubernetes does the same). Must equal kofo.node.api's.
WS_TOKEN_PREFIX = "kofo.bearer."

# Everything from this origin, nothing inline, nothing from elsewhere: an injected string
# (a peer's name, an offer's asset) can neither run script nor load anything.
_SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
    "cache-control": "no-cache",
}


class _DashboardFiles(StaticFiles):
    """``StaticFiles`` that adds the security headers to every answer."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))  # type: ignore[call-overload]
                headers += [(k.encode(), v.encode()) for k, v in _SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await super().__call__(scope, receive, send_with_headers)  # type: ignore[arg-type]


def dashboard_url(host: str, port: int, token: str, *, tls: bool = False) -> str:
    """The link ``kofo dashboard`` prints: the page, with the token in the fragment (which the
    browser never sends to any server, and the page strips from the address bar)."""
    if ":" in host and not host.startswith("["):  # an IPv6 literal
        host = f"[{host}]"
    scheme = "https" if tls else "http"
    return f"{scheme}://{host}:{port}{MOUNT_PATH}/#token={token}"


def mount(app: Starlette) -> None:
    """Serve the dashboard on ``app``: the page at ``/dashboard/`` and ``/`` redirecting to it.

    Needs only the app object (FastAPI is a Starlette); call it once, after or before the
    ``/v1`` routes: the mount is under its own prefix and never shadows them.
    """
    app.mount(MOUNT_PATH, _DashboardFiles(directory=STATIC_DIR, html=True), name="dashboard")

    async def root(_request: object) -> Response:
        return RedirectResponse(MOUNT_PATH + "/", status_code=307)

    app.add_route("/", root, methods=["GET"], include_in_schema=False)  # type: ignore[arg-type]
