"""How a hub route refuses a request: `HubError`, answered as ``{"error": {...}}``.

A hub handler raises `HubError(status, code, message)` for a request that will never
succeed as sent (a 4xx: the box's `HubClient` raises `HubRefused` and does not retry) or
for a passing trouble on the hub (503: the box tries again later). A 503 may say when
(``retry_after``, sent as the ``Retry-After`` header, RFC 9110 §10.2.3, and in the body):
the hub's fair admission does (appliance.sync.hub.request_gate). Anything else a
handler raises is logged on the hub and answered 500 with only a reference.
"""

from __future__ import annotations

from typing import Any


class HubError(Exception):
    """A refusal with its HTTP status and a stable machine-readable *code*."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        retry_after: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        #: Whole seconds after which the box may send the request again (503 only).
        self.retry_after = retry_after
        #: More machine-readable fields of the error object (a busy hub's reason).
        self.detail = dict(detail or {})

    def body(self) -> dict[str, Any]:
        return {"error": {**self.detail, "code": self.code, "message": self.message}}


def bad_request(message: str, code: str = "bad_request") -> HubError:
    """A 400 for a body whose shape or values are wrong."""
    return HubError(400, code, message)
