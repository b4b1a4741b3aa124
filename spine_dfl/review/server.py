"""The review app's HTTP server (the standard library's ``http.server``, one thread per request).

Routes: ``/`` the page; ``/static/<file>`` its script and stylesheet (package data); ``GET /api/studies``
(classes, reader, the study list, progress); ``GET /api/study/<id>`` (the model's vertebrae and the
reader's review of them); ``GET /api/image/<id>.png`` (the radiograph, ``images``); ``POST /api/edit``,
``/api/add``, ``/api/accept-normal`` (``store``). With a token (``--host`` off loopback) every request
must carry it (``?token=`` or the ``X-Review-Token`` header), else 403. Every response forbids other
origins by its Content-Security-Policy, so the page loads nothing from outside. The access log names the
method, route and status only: no query string (the token), no file names or patient data.
"""

from __future__ import annotations

import hmac
import json
import logging
import socket
import threading
import urllib.parse
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any

from spine_dfl.io.errors import InputError
from spine_dfl.review.images import PngCache
from spine_dfl.review.store import EditError, ReviewStore
from spine_dfl.review.studies import Study

log = logging.getLogger(__name__)

STATIC = {"review.js": "text/javascript", "review.css": "text/css"}
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; connect-src 'self'"
MAX_BODY = 1 << 20


@dataclass
class ReviewApp:
    """What the handler serves: the studies, their review store, the PNG cache and the token (or None)."""

    studies: list[Study]
    class_names: list[str]
    store: ReviewStore
    reader: str
    token: str | None
    pngs: PngCache

    def study(self, study_id: int) -> dict[str, Any]:
        study = self.studies[study_id]
        data = study.public()
        data["review"] = self.store.study_rows(study)
        if study_id + 1 < len(self.studies):  # the next film is usually next: encode it meanwhile
            self.prepare(self.studies[study_id + 1].image)
        return data

    def prepare(self, path: str) -> None:
        """Encode the film's PNG in a background thread, so that opening it later is quick."""
        threading.Thread(target=self._warm, args=(path,), daemon=True).start()

    def _warm(self, path: str) -> None:
        try:
            self.pngs.get(path)
        except InputError:
            pass  # its own request will report it

    def overview(self) -> dict[str, Any]:
        return {"classes": self.class_names, "reader": self.reader, "progress": self.store.progress(),
                "studies": [{"id": s.id, "vertebrae": len(s.vertebrae), "in_distribution": s.in_distribution}
                            for s in self.studies]}


def _page(token: str | None) -> bytes:
    text = resources.files("spine_dfl.review").joinpath("static/review.html").read_text(encoding="utf-8")
    query = "" if token is None else "?token=" + urllib.parse.quote(token, safe="")
    return text.replace("{{query}}", query).encode("utf-8")


def make_handler(app: ReviewApp) -> type[BaseHTTPRequestHandler]:
    """The request handler class bound to ``app``."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "spine-dfl-review"

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            pass  # replaced by _log: the default line would carry the query string

        def _log(self, status: int) -> None:
            route = urllib.parse.urlsplit(self.path).path
            log.debug("%s %s %d", self.command, route if route.startswith(("/api/", "/static/")) else "/", status)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)
            self._log(status)

        def _json(self, status: int, data: Any) -> None:
            self._send(status, json.dumps(data, allow_nan=False).encode("utf-8"),
                       "application/json")

        def _allowed(self, query: dict[str, list[str]]) -> bool:
            if app.token is None:
                return True
            given = self.headers.get("X-Review-Token") or (query.get("token") or [""])[0]
            return hmac.compare_digest(given.encode("utf-8"), app.token.encode("utf-8"))

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urllib.parse.urlsplit(self.path)
            if not self._allowed(urllib.parse.parse_qs(url.query)):
                return self._json(403, {"error": "this review server needs its token (the URL printed at start)"})
            path = url.path
            try:
                if path in ("/", "/index.html"):
                    return self._send(200, _page(app.token), "text/html; charset=utf-8")
                if path.startswith("/static/") and path[8:] in STATIC:
                    body = resources.files("spine_dfl.review").joinpath("static", path[8:]).read_bytes()
                    return self._send(200, body, STATIC[path[8:]] + "; charset=utf-8")
                if path == "/api/studies":
                    return self._json(200, app.overview())
                if path.startswith("/api/study/"):
                    return self._json(200, app.study(self._study_id(path[11:])))
                if path.startswith("/api/image/") and path.endswith(".png"):
                    study = app.studies[self._study_id(path[11:-4])]
                    return self._send(200, app.pngs.get(study.image), "image/png")
            except (EditError, InputError) as exc:
                return self._json(422, {"error": str(exc)})
            return self._json(404, {"error": "not found"})

        def _study_id(self, text: str) -> int:
            if not text.isdigit() or int(text) >= len(app.studies):
                raise EditError(f"no study {text!r}")
            return int(text)

        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            url = urllib.parse.urlsplit(self.path)
            if not self._allowed(urllib.parse.parse_qs(url.query)):
                return self._json(403, {"error": "this review server needs its token (the URL printed at start)"})
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._json(413, {"error": "request too large"})
            try:
                body = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(body, dict):
                    raise EditError("the request body is a JSON object")
                result = _post(app, url.path, body)
            except (ValueError, TypeError, EditError) as exc:  # json.JSONDecodeError is a ValueError
                return self._json(400, {"error": str(exc)})
            return self._json(404, {"error": "not found"}) if result is None else self._json(200, result)

    return Handler


def _post(app: ReviewApp, route: str, body: dict[str, Any]) -> dict[str, Any] | None:
    """The store's answer to an edit route, None for an unknown route."""
    study = int(body.get("study", -1))
    if route == "/api/edit":
        return app.store.edit(study, str(body.get("key", "")), body.get("changes") or {})
    if route == "/api/add":
        return app.store.add(study, body.get("box") or [], str(body.get("vertebra") or ""))
    if route == "/api/accept-normal":
        return app.store.accept_all_normal(study)
    return None


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def make_server(app: ReviewApp, host: str, port: int) -> ThreadingHTTPServer:
    """The bound server (port 0: any free port; ``server.server_address`` says which)."""
    server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
    server = server_class((host, port), make_handler(app))
    server.daemon_threads = True
    return server
