"""`nmt serve`: a JSON API and one web page over a model loaded once, on FastAPI and uvicorn.

  POST /translate   {"text": ["line", ...], "beam": 5, "attention": false, "n_best": null, "tgt_lang": null}
                    → {"translations": [...], "attention": [{"source", "target", "weights"} or null, ...],
                       "n_best": [[{"text", "score"}, ...], ...] (when asked)}
  GET  /            the page: a text box, a translate button, the translations, the heatmap of the one in view
  GET  /health      {"status": "ok", ...}

Requests are translated one at a time, in arrival order, behind a lock. One request is one call of the same
code `nmt translate` runs, so its answer never depends on what else was asked at the same moment (batching
different requests together would pad each with the others' lines, which changes its floats and, rarely, a
beam's choice), and two requests side by side would only split the same CPU threads. FastAPI runs each
request in its own worker thread, so waiting requests queue on the lock without blocking the server.

Limits: a body over `max_bytes` or more than `max_lines` lines gets 413; JSON that is malformed or does not
fit the schema gets 422 with a one-line `error` beside FastAPI's `detail`.
"""

from __future__ import annotations

import json
import socket
import threading
from importlib import resources
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from nmt.errors import NMTError
from nmt.translate import Translator

MAX_BEAM = 16


class TranslateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: list[str] = Field(description="lines to translate; one translation per line, in order")
    beam: int | None = Field(
        None, ge=1, le=MAX_BEAM, description="beam size, 1 is greedy (default: the server's --beam)"
    )
    attention: bool = Field(False, description="also return each line's attention weights")
    n_best: int | None = Field(
        None,
        ge=1,
        le=MAX_BEAM,
        description="also return each line's n best translations and scores (n <= beam)",
    )
    tgt_lang: str | None = Field(
        None,
        max_length=32,
        description="a multilingual model's target language (default: the server's --tgt-lang)",
    )


class BodyLimit:
    """ASGI middleware: 413 for a request body over `limit` bytes, declared (Content-Length) or streamed
    (chunked).

    The body is read here, up to the limit, and handed on whole: small for any sane limit, and the app behind
    never sees a body it would have to abandon half-read."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(send)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.limit:
                return await self._reject(send)
            more = message.get("more_body", False)
        whole = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        delivered = False

        async def replay():
            nonlocal delivered
            if delivered:
                return await receive()  # after the body: disconnect notices
            delivered = True
            return whole

        await self.app(scope, replay, send)

    async def _reject(self, send) -> None:
        body = json.dumps({"error": f"request body over the server's limit of {self.limit} bytes"}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class Service:
    """A Translator behind a lock: requests take turns, each translated as `nmt translate` would."""

    def __init__(self, translator: Translator, tgt_lang: str | None = None):
        self.translator, self.tgt_lang = translator, tgt_lang
        self.lock = threading.Lock()

    def __call__(self, request: TranslateRequest) -> dict[str, Any]:
        lines, beam, lang = request.text, request.beam, request.tgt_lang or self.tgt_lang
        with self.lock:
            if request.n_best is not None:
                best = self.translator.translate(lines, n_best=request.n_best, beam=beam, tgt_lang=lang)
                return {
                    "translations": [hyps[0][0] for hyps in best],
                    "n_best": [[{"text": t, "score": round(x, 4)} for t, x in hyps] for hyps in best],
                }
            if not request.attention:
                return {"translations": self.translator.translate(lines, beam=beam, tgt_lang=lang)}
            results = self.translator.translations(lines, attention=True, beam=beam, tgt_lang=lang)
        return {
            "translations": [r.text for r in results],
            "attention": [
                None
                if r.attention is None
                else {
                    "source": r.source,
                    "target": r.pieces,
                    "weights": [[round(x, 4) for x in row] for row in r.attention.tolist()],  # (T + 1, S + 1)
                }
                for r in results
            ],
        }


def _one_line(errors: list[dict]) -> str:
    first = errors[0]
    if first.get("type") == "json_invalid":
        position = first.get("loc", ("body", "?"))[-1]
        return (
            f"body: not valid JSON at character {position} "
            f"({first.get('ctx', {}).get('error', 'decode error')})"
        )
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"


def create_app(
    translator: Translator,
    info: dict[str, Any],
    max_bytes: int = 65536,
    max_lines: int = 64,
    tgt_lang: str | None = None,
) -> FastAPI:
    service = Service(translator, tgt_lang)
    app = FastAPI(title="nmt", description="LSTM neural machine translation", version=info.get("version", ""))
    page = resources.files("nmt").joinpath("page.html").read_text(encoding="utf-8")

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        errors = json.loads(json.dumps(exc.errors(), default=str))  # ctx may hold exceptions
        return JSONResponse({"error": _one_line(errors), "detail": errors}, status_code=422)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", **info}

    @app.post("/translate")
    def translate(request: TranslateRequest):
        if len(request.text) > max_lines:
            return JSONResponse(
                {"error": f"{len(request.text)} lines: over the server's limit of {max_lines} per request"},
                status_code=413,
            )
        try:
            return service(request)
        except NMTError as e:  # what the request asks cannot be done (n_best over the beam size, a language)
            return JSONResponse({"error": str(e)}, status_code=422)

    app.add_middleware(BodyLimit, limit=max_bytes)
    return app


def check_address(host: str, port: int) -> None:
    """NMTError, one line, when the address cannot be bound (in use, or not an address of this machine)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise NMTError(f"--host {host}: cannot resolve it ({e.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(address)
        except OSError as e:
            raise NMTError(f"{host}:{port}: cannot listen there ({e.strerror})") from None
