"""The local web dashboard: one static page and two JSON endpoints, stdlib HTTP only.

``GET /``: the page (``static/``: plain HTML, CSS and JavaScript drawing on canvas; no build
step, nothing fetched from elsewhere, a Content-Security-Policy of ``'self'`` says so).
``GET /api/state``: per asset the latest alert and report, recent alerts, reports and
errors, every gateway's retained status, and this process's live counters.
``GET /api/spectrum?asset=ID``: the asset's latest window's spectrum and envelope spectrum
with its defect-frequency markers (computed on request, cached per window).

Off by default and on 127.0.0.1 when on (``dashboard.*``): the page has no login, so
opening it to a network is the operator's choice, made in the config.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from faultline.agent.dashboard.observer import Observer
from faultline.agent.dashboard.spectra import spectra_of
from faultline.agent.dashboard.state import DashboardState
from faultline.agent.settings import Settings
from faultline.agent.transport.payloads import (
    PayloadError,
    PayloadLimits,
    decode_spectrum,
    decode_window,
)
from faultline.agent.transport.topics import Topics
from faultline.encoders.geometry import DEFAULT_BEARING, BearingGeometry, bearing_preset
from faultline.encoders.signals import Measurement

__all__ = ["Dashboard", "dashboard_from_settings"]

log = logging.getLogger(__name__)

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/index.html": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/plot.js": ("plot.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


class Dashboard:
    """The HTTP server and the MQTT observer that feeds it; started and stopped together."""

    def __init__(
        self,
        settings: Settings,
        topics: Topics,
        limits: PayloadLimits,
        live: Callable[[], Mapping[str, Any]],
    ) -> None:
        cfg = settings.dashboard
        self._settings = settings
        self._cfg = cfg
        self._limits = limits
        self._live = live
        self.state = DashboardState(cfg.assets, cfg.history)
        self.observer = Observer(
            settings.mqtt,
            topics,
            self.state,
            max_window_bytes=limits.max_payload_bytes,
            spectra_idle_s=cfg.spectra_idle_s,
        )
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1] if self._server is not None else self._cfg.port

    @property
    def url(self) -> str:
        return f"http://{self._cfg.host}:{self.port}/"

    def start(self) -> None:
        """Serve; a port already taken is logged and the agent runs without the page (its
        MQTT duty matters more than its dashboard)."""
        try:
            self._server = ThreadingHTTPServer((self._cfg.host, self._cfg.port), _handler(self))
        except OSError as exc:
            log.error("dashboard %s:%d not served: %s", self._cfg.host, self._cfg.port, exc)
            return
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dashboard-http", daemon=True
        )
        self._thread.start()
        self.observer.start()
        log.info("dashboard at %s", self.url)

    def stop(self) -> None:
        if self._server is None:
            return
        self.observer.stop()
        self._server.shutdown()
        self._server.server_close()
        self._server = None

    # -- what the endpoints answer --------------------------------------------------
    def state_json(self) -> dict[str, Any]:
        if self._cfg.spectra:
            self.observer.want_windows()  # a page is open: keep the latest window per asset
        snapshot = self.state.snapshot()
        snapshot["live"] = dict(self._live())
        snapshot["observer"] = {
            "connected": self.observer.connected,
            "streaming_windows": self.observer.streaming,
            "spectra": self._cfg.spectra,
        }
        return snapshot

    def spectrum_json(self, asset: str) -> dict[str, Any]:
        """Always an answer the page can draw or explain (never an HTTP error: a browser
        logs those as console errors)."""
        if not self._cfg.spectra:
            return {"asset": asset, "available": False, "why": "dashboard.spectra is off"}
        self.observer.want_windows()
        raw = self.state.latest_measurement(asset)
        if raw is None:
            return {"asset": asset, "available": False, "why": "waiting for a window"}
        cached = self.state.cached_spectrum(asset, raw.received_at)
        if cached is not None:
            return cached
        try:
            item = self._decode(raw.kind, asset, raw.payload)
        except PayloadError as exc:
            return {"asset": asset, "available": False, "why": f"{exc.code}: {exc.message}"}
        rpm, geometry = self._speed_and_bearing(item)
        answer = {"available": True, **spectra_of(item, rpm, geometry, self._cfg.points)}
        answer["received_at"] = raw.received_at
        self.state.cache_spectrum(asset, raw.received_at, answer)
        return answer

    def _decode(self, kind: str, asset: str, payload: bytes) -> Measurement:
        if kind == "spectrum":
            return decode_spectrum(asset, payload, self._limits)
        return decode_window(asset, payload, self._limits)

    def _speed_and_bearing(self, item: Measurement) -> tuple[float | None, BearingGeometry]:
        """As the agent judges the window: the message's speed, else the asset's configured
        one, else the speed the agent used in its latest alert (it may have estimated it)."""
        cfg = self._settings.assets.get(item.asset)
        geometry = item.geometry or (cfg.bearing_geometry() if cfg else None)
        rpm = item.rpm if item.rpm is not None else (cfg.rpm if cfg else None)
        if rpm is None:
            alert = self.state.latest_alert(item.asset) or {}
            sent = alert.get("rpm")
            rpm = float(sent) if isinstance(sent, int | float) and sent > 0 else None
        return rpm, geometry or bearing_preset(DEFAULT_BEARING)


def _handler(dashboard: Dashboard) -> type[BaseHTTPRequestHandler]:
    static = resources.files("faultline.agent.dashboard") / "static"

    class Handler(BaseHTTPRequestHandler):
        server_version = "faultline-dashboard"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            if url.path in STATIC:
                name, ctype = STATIC[url.path]
                self._send(HTTPStatus.OK, ctype, (static / name).read_bytes())
            elif url.path == "/api/state":
                self._json(dashboard.state_json())
            elif url.path == "/api/spectrum":
                asset = parse_qs(url.query).get("asset", [""])[0][:128]
                self._json(dashboard.spectrum_json(asset))
            else:
                self._send(HTTPStatus.NOT_FOUND, "text/plain; charset=utf-8", b"not found\n")

        def _json(self, body: Mapping[str, Any]) -> None:
            data = json.dumps(body, separators=(",", ":"), default=str).encode()
            self._send(HTTPStatus.OK, "application/json", data)

        def _send(self, status: HTTPStatus, ctype: str, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for key, value in HEADERS.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("dashboard %s: " + format, self.address_string(), *args)

    return Handler


def dashboard_from_settings(
    settings: Settings,
    topics: Topics,
    limits: PayloadLimits,
    live: Callable[[], Mapping[str, Any]],
) -> Dashboard | None:
    """The dashboard the settings ask for (None: off, the default)."""
    if not settings.dashboard.enabled:
        return None
    return Dashboard(settings, topics, limits, live)
