"""The explorer's local HTTP server: one page, its script and style sheet, and a JSON API over `Explorer`.

Bound to 127.0.0.1 only; GET and HEAD only.  Routes are a fixed table (no request path is ever turned into a
file path: the page's three files are package data looked up by exact name, everything else comes from the
study through ids), so `/../`, `%2e%2e` and absolute paths simply match no route.  A Host header other than
127.0.0.1 / localhost at this port is refused (a web page rebinding its own name to 127.0.0.1 cannot read the
study).  Every answer carries a Content-Security-Policy that allows only this origin's script, style sheet
and JSON, and nothing that a page could fetch from elsewhere.

API (all JSON; errors are {"error": one line} with 400 / 404 / 405 / 500):

    /api/study                                   names, comparisons, concepts, letters
    /api/pairs?c=ID|all&sort=&concept=&role=&letter=&min_corr=&max_corr=&offset=&limit=
    /api/pair?c=ID&a=IDX_A&b=IDX_B               both dashboards, corr, rank, co-firing contexts
    /api/latent?c=ID&side=a|b&i=IDX              one latent's dashboard and partners
    /api/search?c=ID&q=WORD                      latents of A and B firing most on a token, with partners
    /api/logits?c=ID&side=a|b&i=IDX              tokens a decoder direction promotes / suppresses
"""

from __future__ import annotations

import json
import logging
import math
import re
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.resources import files
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from ..errors import SaeAtlasError
from .views import BadRequest, Explorer, NotFound

if TYPE_CHECKING:
    import torch

HOST = "127.0.0.1"
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Resource-Policy": "same-origin",
}
STATIC = {
    "/": ("page.html", "text/html; charset=utf-8"),
    "/explore.js": ("explore.js", "text/javascript; charset=utf-8"),
    "/explore.css": ("explore.css", "text/css; charset=utf-8"),
}
_INT = re.compile(r"\d{1,9}")
log = logging.getLogger("saeatlas.explore")


class _Handler(BaseHTTPRequestHandler):
    server: ExploreServer
    server_version = "saeatlas-explore"
    sys_version = ""

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _refuse(self) -> None:
        self._send(405, _json({"error": "only GET is served: the explorer is read-only"}), "application/json")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _refuse

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    # ------------------------------------------------------------ dispatch
    def _answer(self, head: bool) -> None:
        if not self._host_ok():
            self._send(403, _json({"error": "unexpected Host header"}), "application/json", head)
            return
        url = urlsplit(self.path)
        if url.path in STATIC:
            name, kind = STATIC[url.path]
            self._send(200, files(__package__).joinpath(name).read_bytes(), kind, head)
            return
        route = API.get(url.path)
        if route is None:
            self._send(404, _json({"error": f"no such page: {url.path[:200]}"}), "application/json", head)
            return
        try:
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True, strict_parsing=False).items()}
            status, body = 200, route(self.server.explorer, query)
        except BadRequest as exc:
            status, body = 400, {"error": str(exc)}
        except NotFound as exc:
            status, body = 404, {"error": str(exc)}
        except SaeAtlasError as exc:  # a damaged or moved product: say which, keep serving
            status, body = 500, {"error": str(exc).splitlines()[0]}
        except Exception:  # a bug: the traceback goes to the terminal, never to the page
            log.exception("explore: %s failed", url.path)
            status, body = 500, {"error": "internal error (see the terminal running saeatlas explore)"}
        self._send(status, _json(body), "application/json", head)

    def _host_ok(self) -> bool:
        port = self.server.server_address[1]
        return self.headers.get("Host", "") in (f"{HOST}:{port}", f"localhost:{port}")

    def _send(self, status: int, body: bytes, kind: str, head: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in HEADERS.items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)


def _json(value) -> bytes:
    return json.dumps(_finite(value), ensure_ascii=True, allow_nan=False).encode()


def _finite(value):
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# ---------------------------------------------------------------- routes
def _int(query: dict, name: str, default: int | None = None) -> int:
    raw = query.get(name)
    if raw is None or raw == "":
        if default is None:
            raise BadRequest(f"missing parameter {name}")
        return default
    if not _INT.fullmatch(raw):
        raise BadRequest(f"parameter {name} must be a non-negative integer, got {raw[:40]!r}")
    return int(raw)


def _float(query: dict, name: str) -> float | None:
    raw = query.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not -1.0 <= value <= 1.0:
        raise BadRequest(f"parameter {name} must be a correlation from -1 to 1, got {raw[:40]!r}")
    return value


def _cid(query: dict) -> int:
    return _int(query, "c", 0)


def _pairs(x: Explorer, q: dict) -> dict:
    cid = None if q.get("c", "all") == "all" else _cid(q)
    return x.pairs(
        cid,
        sort=q.get("sort") or "-corr",
        concept=q.get("concept", ""),
        role=q.get("role", ""),
        letter=q.get("letter", ""),
        min_corr=_float(q, "min_corr"),
        max_corr=_float(q, "max_corr"),
        offset=_int(q, "offset", 0),
        limit=_int(q, "limit", 100),
    )


API = {
    "/api/study": lambda x, q: x.study.summary(),
    "/api/pairs": _pairs,
    "/api/pair": lambda x, q: x.pair(_cid(q), _int(q, "a"), _int(q, "b")),
    "/api/latent": lambda x, q: x.latent(_cid(q), q.get("side", "a"), _int(q, "i")),
    "/api/search": lambda x, q: x.search(_cid(q), q.get("q", "")[:200]),
    "/api/logits": lambda x, q: x.logits(_cid(q), q.get("side", "a"), _int(q, "i")),
}


class ExploreServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer holding the study's `Explorer`."""

    daemon_threads = True

    def __init__(self, explorer: Explorer, port: int = 0):
        self.explorer = explorer
        super().__init__((HOST, port), _Handler)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}/"


def make_server(study: str, port: int | None = None, device: str | torch.device = "cpu") -> ExploreServer:
    """A server over the study in folder `study` at 127.0.0.1:`port`, bound but not serving.  `port` None: the
    port the static report links to (REPORT_PORT), or a free one when that is taken; 0: a free port.

    Raises SaeAtlasError (one line) for a folder that is not a finished study, a port out of range or in use."""
    from .study import REPORT_PORT, StudyIndex

    if port is not None and not 0 <= port <= 65535:
        raise SaeAtlasError(f"--port {port} is out of range: give 1-65535, or 0 for a free port")
    explorer = Explorer(StudyIndex(study), device=device)
    for chosen in (REPORT_PORT, 0) if port is None else (port,):
        try:
            return ExploreServer(explorer, chosen)
        except OSError as exc:
            if port is None and chosen == REPORT_PORT:
                continue  # taken (another explorer?): a free port instead; serve() says the report's links miss it
            raise SaeAtlasError(
                f"cannot listen on {HOST}:{chosen} ({exc.strerror or exc}): give another --port, or 0 for a free one"
            ) from None
    raise AssertionError("unreachable")


def serve(study: str, port: int | None = None, open_browser: bool = True, device: str | torch.device = "cpu") -> int:
    """Serve the explorer until Ctrl-C; prints its address (and opens it in the browser unless told not to)."""
    from .study import REPORT_PORT

    server = make_server(study, port, device)
    print(f"saeatlas explore: {server.explorer.study.out} at {server.url} (Ctrl-C stops)", flush=True)
    if port is None and server.server_address[1] != REPORT_PORT:
        print(
            f"saeatlas explore: port {REPORT_PORT} is taken, so the report's explore links will not reach this "
            "explorer; open the address above instead",
            flush=True,
        )
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("saeatlas explore: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
