"""Two small guards of the HTTP service: the bearer-token gate (ASGI middleware in front of every
route) and error bodies that never echo more than a clipped piece of the request."""

from __future__ import annotations

import hmac
import json
import math
from typing import Any

from search.query import clip

MAX_BODY = 64 << 20
MAX_DETAIL = 1000


def cap(text: str) -> str:
    return text if len(text) <= MAX_DETAIL else text[:MAX_DETAIL] + f"... ({len(text)} chars)"


def clip_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for e in list(errors)[:10]:
        d = {"type": e.get("type"), "loc": [clip(x, 40) if isinstance(x, str) and len(x) > 40 else x
                                            for x in e.get("loc", ())], "msg": cap(str(e.get("msg", "")))}
        if "input" in e:
            v = e["input"]
            plain = v is None or isinstance(v, bool) or (isinstance(v, (int, float)) and math.isfinite(v))
            d["input"] = v if plain else clip(v, 60)
        out.append(d)
    return out


class TokenGate:
    """ASGI middleware: with a token set, every HTTP request (docs and OpenAPI included) must
    carry ``Authorization: Bearer <token>``; bodies over ``MAX_BODY`` are refused."""

    def __init__(self, app: Any, token: str | None, public: set[str]) -> None:
        self.app, self.public = app, public
        self.expect = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            if int(headers.get(b"content-length", b"0") or 0) > MAX_BODY:
                return await _reply(send, 413, {"detail": f"body over {MAX_BODY >> 20} MB"})
            if self.expect is not None and not self._public(scope.get("path", "")) \
                    and not hmac.compare_digest(headers.get(b"authorization", b""), self.expect):
                return await _reply(send, 401, {"detail": "missing or wrong bearer token"},
                                    [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


    def _public(self, path: str) -> bool:
        return any(path == p or (p.endswith("/") and p != "/" and path.startswith(p)) for p in self.public)


async def _reply(send: Any, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *(extra or [])]})
    await send({"type": "http.response.body", "body": data})
