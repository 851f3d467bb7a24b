"""The API's problem+json replies as exceptions, one class per kind of failure."""

from __future__ import annotations

from typing import Any

from kofo.errors import KofoError


class KofoApiError(KofoError):
    """The node answered with an error. ``code`` is KOFO's stable error code, ``status`` the
    HTTP status, ``problem`` the whole RFC 9457 body (``errors`` names the bad fields)."""

    code = "api_error"

    def __init__(
        self, message: str, *, code: str | None = None, status: int = 0, problem: Any = None
    ) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.problem: dict[str, Any] = problem if isinstance(problem, dict) else {}

    @property
    def detail(self) -> str:
        return str(self.args[0]) if self.args else ""

    @property
    def fields(self) -> list[str]:
        """The request fields the node named as wrong (validation errors)."""
        errors = self.problem.get("errors")
        if not isinstance(errors, list):
            return []
        return [str(e.get("field")) for e in errors if isinstance(e, dict)]


class InvalidRequest(KofoApiError):
    """400 / 413 / 422: the request is malformed or a field is invalid (see :attr:`fields`)."""

    code = "invalid_input"


class Unauthorized(KofoApiError):
    """401: missing or wrong token."""

    code = "unauthorized"


class Forbidden(Unauthorized):
    """403: the token may not do this (the read-only token tried to write)."""

    code = "forbidden"


class NotFound(KofoApiError):
    """404: no such offer, trade, swap or order."""

    code = "not_found"


class Conflict(KofoApiError):
    """409: the object's state forbids it (cancel a committed trade)."""

    code = "conflict"


class RateLimited(KofoApiError):
    """429: too many requests; :attr:`retry_after` seconds until the next may go."""

    code = "rate_limited"

    @property
    def retry_after(self) -> float:
        value = self.problem.get("retry_after", 1)
        return float(value) if isinstance(value, int | float) else 1.0


class Unavailable(KofoApiError):
    """503 (or the node cannot be reached): retryable."""

    code = "unavailable"
    retryable = True


class ServerError(KofoApiError):
    """500: the node failed; its log has the reference in the message."""

    code = "internal"


_BY_STATUS: dict[int, type[KofoApiError]] = {
    400: InvalidRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
    429: RateLimited,
    503: Unavailable,
}


def error_from_response(status: int, body: Any) -> KofoApiError:
    """The exception for an error reply (a problem+json body, or anything else)."""
    problem = body if isinstance(body, dict) else {}
    code = problem.get("code")
    detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else KofoApiError)
    return cls(
        str(detail),
        code=str(code) if isinstance(code, str) else None,
        status=status,
        problem=problem,
    )
