"""A small Prometheus HTTP API client for edgelab's tools (IMA, SRO, extractor).

Standard library only (urllib). Basic auth and a CA file as role prometheus sets them
up (docs/monitoring.md, "Access"), a timeout on every request, and retries with
exponential backoff on what can pass by itself (connection errors, timeouts, HTTP 429
and 5xx), never on other 4xx (a wrong password or bad PromQL does not get better).
Every failure is a PrometheusError subclass carrying the HTTP status and Prometheus's
own error message. Times are UTC: pass epoch seconds or timezone-aware datetimes
(naive datetimes are refused), get epoch seconds back (`.time` gives the datetime).

    client = PrometheusClient.from_env()   # PROMETHEUS_URL, PROMETHEUS_USERNAME, PROMETHEUS_PASSWORD_FILE
    for sample in client.query('up{job="node"}'):
        print(sample.labels["instance"], sample.value)
    for series in client.query_range("rate(node_cpu_seconds_total[1m])", start=t0, end=t1, step=5):
        print(series.labels, series.values())
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import math
import os
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TimeLike = float | datetime  # epoch seconds (int too) or an aware datetime
Duration = float | timedelta

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})


# ---------------------------------------------------------------- errors
class PrometheusError(Exception):
    """Any failure of a Prometheus request.

    status: the HTTP status (None when no HTTP response came back); error_type and
    message: Prometheus's `errorType` and `error` fields when it sent them, else the
    response body (shortened) or the network error; url: the request URL without
    credentials or query parameters; attempts: how many requests were made."""

    def __init__(self, message: str, *, status: int | None = None, error_type: str | None = None,
                 url: str = "", attempts: int = 1) -> None:
        self.message = message
        self.status = status
        self.error_type = error_type
        self.url = url
        self.attempts = attempts
        super().__init__(str(self))

    def __str__(self) -> str:
        parts = []
        if self.status is not None:
            parts.append("HTTP %d" % self.status)
        if self.error_type:
            parts.append(self.error_type)
        head = " ".join(parts)
        where = " (%s, %d attempt%s)" % (self.url, self.attempts, "" if self.attempts == 1 else "s") if self.url else ""
        return "%s%s%s" % (head + ": " if head else "", self.message, where)


class PrometheusConnectionError(PrometheusError):
    """No HTTP response: refused, unreachable, DNS, TLS, reset (after the retries)."""


class PrometheusTimeoutError(PrometheusConnectionError):
    """No response within the client's timeout (after the retries)."""


class PrometheusHTTPError(PrometheusError):
    """Prometheus (or a proxy in front of it) answered with a non-2xx status."""


class PrometheusAuthError(PrometheusHTTPError):
    """401 or 403: missing or wrong credentials."""


class PrometheusQueryError(PrometheusHTTPError):
    """400 or 422: the query or its parameters were refused (bad PromQL, bad time range,
    execution error); message is Prometheus's explanation."""


class PrometheusServerError(PrometheusHTTPError):
    """429 or 5xx, still there after the retries."""


class PrometheusResponseError(PrometheusError):
    """A 2xx response that is not what the API promises (not JSON, status not success,
    unexpected result type)."""


# ---------------------------------------------------------------- results
def utc(timestamp: float) -> datetime:
    """Epoch seconds as a timezone-aware UTC datetime."""
    return datetime.fromtimestamp(timestamp, tz=timezone.utc)


@dataclass(frozen=True)
class Sample:
    """One value of one series at one time (an instant-query result)."""

    labels: dict[str, str]
    timestamp: float  # epoch seconds, UTC
    value: float

    @property
    def time(self) -> datetime:
        return utc(self.timestamp)

    @property
    def name(self) -> str | None:
        return self.labels.get("__name__")


@dataclass(frozen=True)
class Series:
    """One series of a range query: (timestamp, value) points in time order."""

    labels: dict[str, str]
    points: list[tuple[float, float]] = field(default_factory=list)

    def timestamps(self) -> list[float]:
        return [t for t, _v in self.points]

    def values(self) -> list[float]:
        return [v for _t, v in self.points]

    def times(self) -> list[datetime]:
        return [utc(t) for t, _v in self.points]


@dataclass(frozen=True)
class Target:
    """One active scrape target (/api/v1/targets)."""

    scrape_pool: str
    scrape_url: str
    health: str  # "up", "down" or "unknown"
    labels: dict[str, str]
    discovered_labels: dict[str, str]
    last_error: str
    last_scrape: datetime | None
    last_scrape_duration: float

    @property
    def up(self) -> bool:
        return self.health == "up"


# ---------------------------------------------------------------- time handling
def to_epoch(value: TimeLike) -> float:
    """Epoch seconds from epoch seconds or an aware datetime; naive datetimes are refused
    (their meaning depends on the machine's time zone)."""
    if isinstance(value, datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            raise ValueError("naive datetime %s: pass an aware one (e.g. datetime.now(timezone.utc)) "
                             "or epoch seconds" % value.isoformat())
        return value.timestamp()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("time must be epoch seconds or an aware datetime, not %r" % type(value).__name__)
    if not math.isfinite(value):
        raise ValueError("time must be finite, got %r" % value)
    return float(value)


def to_seconds(value: Duration) -> float:
    seconds = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not seconds > 0 or not math.isfinite(seconds):
        raise ValueError("step must be a positive duration, got %r" % value)
    return seconds


def _format_time(value: float) -> str:
    return ("%.3f" % value).rstrip("0").rstrip(".")


# ---------------------------------------------------------------- client
class PrometheusClient:
    """Prometheus's HTTP API (v1): instant and range queries, scrape targets.

    url: base URL (e.g. "http://10.213.0.11:9090", or with a path prefix for
    --web.route-prefix); username with password or password_file for basic auth;
    ca_file: CA bundle for https; timeout: seconds per request; retries: extra attempts
    on connection errors, timeouts, 429 and 5xx, waiting backoff * 2**n seconds (at most
    max_backoff, or the server's Retry-After if given and shorter than max_backoff).
    """

    def __init__(self, url: str, *, username: str | None = None, password: str | None = None,
                 password_file: str | os.PathLike[str] | None = None, ca_file: str | os.PathLike[str] | None = None,
                 timeout: float = 10.0, retries: int = 3, backoff: float = 0.5, max_backoff: float = 8.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError("Prometheus URL must be http(s)://host[:port][/prefix], got %r" % url)
        if parsed.username or parsed.password:
            raise ValueError("put no credentials in the Prometheus URL: use username and password_file")
        if password is not None and password_file is not None:
            raise ValueError("give password or password_file, not both")
        if password_file is not None:
            password = Path(password_file).read_text(encoding="utf-8").rstrip("\r\n")
        if (username is None) != (password is None):
            raise ValueError("basic auth needs both a username and a password (or password_file)")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ValueError("timeout must be > 0, retries and backoff >= 0")
        self.url = url.rstrip("/")
        self.username = username
        self._authorization = None
        if username is not None and password is not None:
            token = base64.b64encode(("%s:%s" % (username, password)).encode("utf-8")).decode("ascii")
            self._authorization = "Basic " + token
        self.timeout = float(timeout)
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self._sleep = sleep
        self._ssl: ssl.SSLContext | None = None
        if parsed.scheme == "https":
            self._ssl = ssl.create_default_context(cafile=os.fspath(ca_file) if ca_file is not None else None)

    def __repr__(self) -> str:  # never the password
        return "PrometheusClient(%r, username=%r, timeout=%s, retries=%d)" % (
            self.url, self.username, self.timeout, self.retries)

    # ------------------------------------------------------------ construction from settings
    @classmethod
    def from_mapping(cls, settings: Mapping[str, Any]) -> PrometheusClient:
        """From a config section: url (required), username, password_file, ca_file,
        timeout, retries, backoff (other keys are refused, so typos show)."""
        allowed = {"url", "username", "password_file", "ca_file", "timeout", "retries", "backoff"}
        unknown = set(settings) - allowed
        if unknown:
            raise ValueError("unknown Prometheus settings: %s (allowed: %s)" % (
                ", ".join(sorted(unknown)), ", ".join(sorted(allowed))))
        if not settings.get("url"):
            raise ValueError("Prometheus settings need a url")
        kwargs: dict[str, Any] = {k: v for k, v in settings.items() if k != "url" and v not in (None, "")}
        for key in ("timeout", "backoff"):
            if key in kwargs:
                kwargs[key] = float(kwargs[key])
        if "retries" in kwargs:
            kwargs["retries"] = int(kwargs["retries"])
        return cls(str(settings["url"]), **kwargs)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> PrometheusClient:
        """From PROMETHEUS_URL (required), PROMETHEUS_USERNAME, PROMETHEUS_PASSWORD_FILE,
        PROMETHEUS_CA_FILE, PROMETHEUS_TIMEOUT and PROMETHEUS_RETRIES. The password is read
        from a file only, never from the environment."""
        env = os.environ if env is None else env
        if not env.get("PROMETHEUS_URL"):
            raise ValueError("PROMETHEUS_URL is not set")
        return cls.from_mapping({
            "url": env["PROMETHEUS_URL"],
            "username": env.get("PROMETHEUS_USERNAME"),
            "password_file": env.get("PROMETHEUS_PASSWORD_FILE"),
            "ca_file": env.get("PROMETHEUS_CA_FILE"),
            "timeout": env.get("PROMETHEUS_TIMEOUT"),
            "retries": env.get("PROMETHEUS_RETRIES"),
        })

    # ------------------------------------------------------------ API
    def query(self, expr: str, time: TimeLike | None = None) -> list[Sample]:
        """Instant query. A vector gives one Sample per series, a scalar one Sample
        without labels, a range-vector selector (`up[1m]`) one Sample per stored point."""
        params = {"query": expr}
        if time is not None:
            params["time"] = _format_time(to_epoch(time))
        data = self._api("/api/v1/query", params, post=True)
        kind: Any = data.get("resultType")
        result: Any = data.get("result")
        try:
            if kind == "vector":
                return [Sample(dict(item.get("metric", {})), float(item["value"][0]), float(item["value"][1]))
                        for item in result]
            if kind == "scalar":
                return [Sample({}, float(result[0]), float(result[1]))]
            if kind == "matrix":
                return [Sample(dict(item.get("metric", {})), float(t), float(v))
                        for item in result for t, v in item["values"]]
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PrometheusResponseError("malformed %s result: %s" % (kind, exc),
                                          url=self._public("/api/v1/query")) from None
        raise PrometheusResponseError("result type %r is not numeric" % kind, url=self._public("/api/v1/query"))

    def query_range(self, expr: str, start: TimeLike, end: TimeLike, step: Duration) -> list[Series]:
        """Range query from start to end (inclusive) every step seconds."""
        start_s, end_s, step_s = to_epoch(start), to_epoch(end), to_seconds(step)
        if end_s < start_s:
            raise ValueError("end (%s) is before start (%s)" % (utc(end_s).isoformat(), utc(start_s).isoformat()))
        params = {"query": expr, "start": _format_time(start_s), "end": _format_time(end_s),
                  "step": _format_time(step_s)}
        data = self._api("/api/v1/query_range", params, post=True)
        if data.get("resultType") != "matrix":
            raise PrometheusResponseError("range query returned %r, not a matrix" % data.get("resultType"),
                                          url=self._public("/api/v1/query_range"))
        try:
            return [Series(dict(item.get("metric", {})), [(float(t), float(v)) for t, v in item["values"]])
                    for item in data["result"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise PrometheusResponseError("malformed matrix result: %s" % exc,
                                          url=self._public("/api/v1/query_range")) from None

    def targets(self) -> list[Target]:
        """The active scrape targets and their health."""
        data = self._api("/api/v1/targets", {"state": "active"}, post=False)
        targets = []
        for item in data.get("activeTargets", []):
            last = item.get("lastScrape")
            last_scrape = None
            if last and not str(last).startswith("0001-"):
                last_scrape = datetime.fromisoformat(_trim_rfc3339(str(last))).astimezone(timezone.utc)
            targets.append(Target(
                scrape_pool=item.get("scrapePool", ""), scrape_url=item.get("scrapeUrl", ""),
                health=item.get("health", "unknown"), labels=dict(item.get("labels", {})),
                discovered_labels=dict(item.get("discoveredLabels", {})), last_error=item.get("lastError", ""),
                last_scrape=last_scrape, last_scrape_duration=float(item.get("lastScrapeDuration", 0.0))))
        return targets

    def query_range_raw(self, expr: str, start: TimeLike, end: TimeLike, step: Duration) -> bytes:
        """query_range's request (same checks, retries and errors) returning the response
        body unparsed, for callers that decode large matrices themselves (the extractor).
        A body whose status is not success is raised as PrometheusResponseError."""
        start_s, end_s, step_s = to_epoch(start), to_epoch(end), to_seconds(step)
        if end_s < start_s:
            raise ValueError("end (%s) is before start (%s)" % (utc(end_s).isoformat(), utc(start_s).isoformat()))
        params = {"query": expr, "start": _format_time(start_s), "end": _format_time(end_s),
                  "step": _format_time(step_s)}
        path = "/api/v1/query_range"
        status, raw, _retry_after = self._request(self.url + path, urllib.parse.urlencode(params).encode("ascii"),
                                                  self._public(path))
        if not raw.lstrip().startswith(b'{"status":"success"'):
            self._api_payload(status, raw, path)  # raises with Prometheus's own message
        return raw

    def series(self, match: str | list[str], start: TimeLike | None = None,
               end: TimeLike | None = None) -> list[dict[str, str]]:
        """The label sets of the series that `match` selectors (one or a list) find, with
        samples between start and end when given (/api/v1/series)."""
        matchers = [match] if isinstance(match, str) else list(match)
        if not matchers:
            raise ValueError("series() needs at least one selector")
        params: list[tuple[str, str]] = [("match[]", m) for m in matchers]
        if start is not None:
            params.append(("start", _format_time(to_epoch(start))))
        if end is not None:
            params.append(("end", _format_time(to_epoch(end))))
        path = "/api/v1/series"
        status, raw, _retry_after = self._request(self.url + path, urllib.parse.urlencode(params).encode("ascii"),
                                                  self._public(path))
        payload = self._api_payload(status, raw, path)
        data = payload.get("data")
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise PrometheusResponseError("series result is not a list of label sets", status=status,
                                          url=self._public(path))
        return [{str(k): str(v) for k, v in item.items()} for item in data]

    def _api_payload(self, status: int, raw: bytes, path: str) -> dict[str, Any]:
        """A success payload as a dict, or PrometheusResponseError with its error."""
        try:
            payload = json.loads(raw)
        except ValueError:
            raise PrometheusResponseError("response is not JSON: %s" % _snippet(raw), status=status,
                                          url=self._public(path)) from None
        if not isinstance(payload, dict) or payload.get("status") != "success":
            error = payload.get("error", _snippet(raw)) if isinstance(payload, dict) else _snippet(raw)
            raise PrometheusResponseError(str(error), status=status, url=self._public(path))
        for warning in payload.get("warnings", []) or []:
            log.warning("Prometheus warning for %s: %s", path, warning)
        return payload

    def ready(self) -> bool:
        """True when Prometheus answers /-/ready with 200 (one attempt, no retries)."""
        try:
            status, _body, _retry_after = self._once(self.url + "/-/ready", None)
        except PrometheusError:
            return False
        return status == 200

    # ------------------------------------------------------------ transport
    def _public(self, path: str) -> str:
        return self.url + path

    def _api(self, path: str, params: dict[str, str], *, post: bool) -> dict[str, Any]:
        encoded = urllib.parse.urlencode(params)
        if post:
            url, body = self.url + path, encoded.encode("ascii")
        else:
            url, body = self.url + path + ("?" + encoded if encoded else ""), None
        status, raw, _retry_after = self._request(url, body, self._public(path))
        data = self._api_payload(status, raw, path).get("data")
        if not isinstance(data, dict):
            raise PrometheusResponseError("response has no data object", status=status, url=self._public(path))
        return data

    def _request(self, url: str, body: bytes | None, public: str) -> tuple[int, bytes, str | None]:
        attempt = 0
        while True:
            attempt += 1
            try:
                status, raw, retry_after = self._once(url, body)
            except PrometheusConnectionError as exc:
                exc.url, exc.attempts = public, attempt
                if attempt > self.retries:
                    raise
                delay = self._delay(attempt, None)
                log.info("Prometheus %s: %s; retry %d/%d in %.2fs", public, exc.message, attempt, self.retries, delay)
                self._sleep(delay)
                continue
            if 200 <= status < 300:
                return status, raw, retry_after
            error = _http_error(status, raw, public, attempt)
            if status in RETRYABLE_STATUS and attempt <= self.retries:
                delay = self._delay(attempt, retry_after)
                log.info("Prometheus %s: HTTP %d; retry %d/%d in %.2fs", public, status, attempt, self.retries, delay)
                self._sleep(delay)
                continue
            raise error

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        if retry_after:
            with contextlib.suppress(ValueError):  # an HTTP date: keep the exponential delay
                delay = max(delay, min(self.max_backoff, float(retry_after)))
        return delay

    def _headers(self, url: str, body: bytes | None) -> dict[str, str]:
        """The request's headers besides Authorization (a subclass may speak another format)."""
        headers = {"Accept": "application/json", "User-Agent": "edgelab-prometheus-client"}
        if body is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        return headers

    def _once(self, url: str, body: bytes | None) -> tuple[int, bytes, str | None]:
        request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
        for name, value in self._headers(url, body).items():
            request.add_header(name, value)
        if self._authorization:
            request.add_unredirected_header("Authorization", self._authorization)  # not sent on to a redirect
        log.debug("Prometheus %s %s", request.get_method(), url.split("?", 1)[0])
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl) as response:
                return response.status, response.read(), response.headers.get("Retry-After")
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read(), exc.headers.get("Retry-After")
        except TimeoutError as exc:  # socket.timeout is TimeoutError from Python 3.10
            raise PrometheusTimeoutError("no response within %ss (%s)" % (self.timeout, exc or "timed out")) from None
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError):
                raise PrometheusTimeoutError("no response within %ss" % self.timeout) from None
            raise PrometheusConnectionError(str(exc.reason)) from None
        except (ConnectionError, OSError) as exc:  # reset or closed while reading
            raise PrometheusConnectionError(str(exc) or type(exc).__name__) from None


# ---------------------------------------------------------------- helpers
def _snippet(raw: bytes, limit: int = 300) -> str:
    text = raw.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


def _http_error(status: int, raw: bytes, url: str, attempts: int) -> PrometheusHTTPError:
    message, error_type = _snippet(raw) or "(empty body)", None
    try:
        payload = json.loads(raw)
        if isinstance(payload, dict) and payload.get("error"):
            message, error_type = str(payload["error"]), payload.get("errorType")
    except ValueError:
        pass
    cls: type[PrometheusHTTPError] = PrometheusHTTPError
    if status in (401, 403):
        cls = PrometheusAuthError
    elif status in (400, 422):
        cls = PrometheusQueryError
    elif status in RETRYABLE_STATUS or status >= 500:
        cls = PrometheusServerError
    return cls(message, status=status, error_type=error_type, url=url, attempts=attempts)


def _trim_rfc3339(value: str) -> str:
    """Prometheus's RFC 3339 times have nanoseconds and may end in Z; fromisoformat
    (Python 3.10) takes at most microseconds and no Z."""
    value = value.replace("Z", "+00:00")
    if "." in value:
        head, rest = value.split(".", 1)
        digits = ""
        while rest and rest[0].isdigit():
            digits, rest = digits + rest[0], rest[1:]
        value = "%s.%s%s" % (head, (digits + "000000")[:6], rest)
    return value
