"""The IMA as an HTTP service (FastAPI), with NECOS's interface.

    POST   /ymetrics/{sliceId}        multipart form: K, sliceFlavor, callbackURL and either
                                      YFile (CSV or Parquet, first column timestamp; YField
                                      picks the KPI column, default the second) or
                                      currentTimestamp (the KPI comes from Prometheus: YField
                                      as PromQL, else the slice's kpi_query, over the
                                      profile_window before that time at profile_step)
        -> 201 text/csv: timestamp, the KPI and the K selected metrics; the same CSV is
           then POSTed to callbackURL (multipart, part `file`)
    GET    /ymetrics/{sliceId}[?sliceFlavor=F]          the selection(s) kept for the slice
    POST   /slice/{sliceId}/stream[?sliceFlavor=F]      stream the selection's live values to Kafka
                                                    (with the KPI when it is a Prometheus series)
    DELETE /slice/{sliceId}/stream                      stop that
    GET    /slice/{sliceId}/stream                      what the slice streams
    POST   /elasticity/slice/{sliceId}/flavor/{flavorId}  apply a flavor change (its actuator)
    GET    /elasticity/slice/{sliceId}                  every flavor change recorded for the slice
    GET    /metrics                                     Prometheus counters of the streaming

Candidate metrics are every series of `prometheus.query` over the KPI's time range at
its step (fetched in pieces of at most 11,000 steps). Bad input answers 400 (413 for
an upload over the limit, 404 for an unknown slice or flavor, 409 for a request the
configuration cannot serve, 422 when Prometheus has no data in the range, 502 when
Prometheus or an actuator fails) with a `detail` that says what to fix; a failed
request keeps nothing. OpenAPI: /docs and /openapi.json.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import numpy as np
from fastapi import BackgroundTasks, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..kafka import KafkaSettings
from ..learn.align import align, infer_step
from ..learn.errors import LearnError
from ..learn.select import DEFAULT_METHOD, select
from ..learn.tables import Table, parse_time, read_table
from ..prometheus import PrometheusClient, PrometheusError, PrometheusQueryError
from . import actuators
from .config import ImaConfig, check_name
from .source import fetch
from .store import StateStore
from .stream import Kpi, Streamer

log = logging.getLogger(__name__)

FORM_OVERHEAD = 64 * 1024  # bytes of a request body besides YFile (form fields, part headers)


def _number(value: float) -> str:
    return "" if np.isnan(value) else repr(float(value))


def _quote(name: str) -> str:
    return '"%s"' % name.replace('"', '""') if any(c in name for c in ',"\n') else name


def post_csv(url: str, text: str, timeout: float = 10.0) -> None:
    """POST text as a multipart file part named `file` (NECOS's callbacks take files)."""
    boundary = uuid.uuid4().hex
    body = ("--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"selected_metrics.csv\"\r\n"
            "Content-Type: text/csv\r\n\r\n%s\r\n--%s--\r\n" % (boundary, text, boundary)).encode("utf-8")
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=%s" % boundary})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            log.info("callback %s answered %d", url, response.status)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        log.warning("callback %s failed: %s", url, exc)


class BodyLimit:
    """Refuses a POST /ymetrics body larger than `limit` bytes with 413 while it is being
    received (before the form parser spools it): by Content-Length when the client sends
    one, else by counting the chunks. The body that passes is handed on unchanged."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def _refuse(self, send: Send) -> None:
        body = ('{"detail":"the request is larger than %d bytes: send a smaller YFile"}' % self.limit).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/ymetrics/"):
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await self._refuse(send)
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": b"".join(chunks), "more_body": False}

        await self.app(scope, replay, send)


def _name(what: str, value: str) -> None:
    try:
        check_name(what, value)
    except ValueError as exc:
        raise HTTPException(400, str(exc)) from None


def kafka_settings(cfg: ImaConfig) -> KafkaSettings | None:
    k = cfg.kafka
    if not k.servers():
        return None
    sasl = k.security_protocol.startswith("SASL_")
    return KafkaSettings(bootstrap=k.servers(), security_protocol=k.security_protocol,
                         sasl_mechanism=k.sasl_mechanism if sasl else None,
                         sasl_username=k.sasl_username if sasl else None,
                         sasl_password=k.sasl_password if sasl else None,
                         ssl_cafile=k.ssl_cafile or None, client_id="edgelab-ima")


def create_app(client_factory: Callable[[], PrometheusClient], *, config: ImaConfig | None = None,
               query: str | None = None, max_upload: int | None = None, state_dir: str | None = None,
               callback: Callable[[str, str], None] = post_csv,
               stream_options: dict[str, Any] | None = None) -> FastAPI:
    """The service. Without `config`, the defaults (no Kafka, no XMPP, no flavors);
    query, max_upload and state_dir override the config's (state_dir None: the
    config's when one is given, else in memory only). stream_options: Streamer's
    keyword arguments (queue_size, backoff_cap, producer_options)."""
    cfg = config or ImaConfig(state_dir="")
    candidates = query or cfg.prometheus.query
    limit = max_upload or cfg.max_upload_bytes
    store = StateStore(state_dir if state_dir is not None else (cfg.state_dir if config else None))
    registry = CollectorRegistry()
    streamer = Streamer(client_factory, kafka_settings(cfg), cfg.kafka.topic, registry, candidates=candidates,
                        **(stream_options or {}))
    holder: dict[str, actuators.XmppSender] = {}

    def kpi_of(slice_id: str, item: dict[str, Any]) -> Kpi | None:
        """The KPI to stream with a selection: named as the selection's target, read by
        the selection's KPI query (currentTimestamp) or else the slice's kpi_query."""
        query = item.get("kpi_query") or (cfg.slices[slice_id].kpi_query if slice_id in cfg.slices else "")
        return Kpi(str(item["target"]), str(query)) if query and item.get("target") else None

    def start_stream(slice_id: str, item: dict[str, Any]) -> None:
        streamer.start(slice_id, item["sliceFlavor"], item["metrics"], float(item["step_seconds"]),
                       kpi_of(slice_id, item))
        store.set_stream(slice_id, item["sliceFlavor"])

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if cfg.xmpp.jid:
            holder["xmpp"] = actuators.XmppSender(cfg)
            holder["xmpp"].link.start()
        if streamer.enabled:
            for slice_id, flavor in sorted(store.streams.items()):
                item = store.selection(slice_id, flavor)
                if item is not None:
                    start_stream(slice_id, item)
        try:
            yield
        finally:
            streamer.close()
            if "xmpp" in holder:
                await holder["xmpp"].link.stop()
                holder.clear()
                gc.collect()  # slixmpp's stream objects clean up on this loop, while it still runs

    app = FastAPI(title="edgelab IMA", description=__doc__, version="2", lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=limit + FORM_OVERHEAD)
    app.state.store = store
    app.state.streamer = streamer

    def kpi_from_prometheus(slice_id: str, current: str, field: str | None) -> tuple[Table, str, str | None]:
        """Y over the profile window before `current`: (table, KPI name, its series name)."""
        try:
            end = parse_time(current)
        except LearnError as exc:
            raise HTTPException(400, "currentTimestamp: %s" % exc) from None
        expr = field or (cfg.slices[slice_id].kpi_query if slice_id in cfg.slices else "")
        if not expr:
            raise HTTPException(400, "with currentTimestamp, send YField as a PromQL expression for the KPI or "
                                     "configure slices.%s.kpi_query" % slice_id)
        try:
            y = fetch(client_factory(), end - cfg.profile_window, end, cfg.profile_step, expr)
        except PrometheusQueryError as exc:
            raise HTTPException(400, "KPI query %r: %s" % (expr, exc)) from None
        except LearnError as exc:
            raise HTTPException(422, "KPI: %s" % exc) from None
        except PrometheusError as exc:
            raise HTTPException(502, "Prometheus: %s" % exc) from None
        if len(y.columns) != 1:
            raise HTTPException(400, "KPI query %r returns %d series (%s ...): make it return one"
                                % (expr, len(y.columns), ", ".join(y.columns[:3])))
        series = y.columns[0]
        return Table(y.timestamps, [expr], y.values), expr, series

    @app.post("/ymetrics/{sliceId}", status_code=201, response_class=PlainTextResponse,
              responses={201: {"content": {"text/csv": {}}}})
    def ymetrics(sliceId: str, background: BackgroundTasks,  # noqa: N803 - NECOS's names
                 K: Annotated[int, Form()],  # noqa: N803
                 sliceFlavor: Annotated[str, Form()],  # noqa: N803
                 callbackURL: Annotated[str, Form()],  # noqa: N803
                 YFile: Annotated[UploadFile | None, File()] = None,  # noqa: N803
                 YField: Annotated[str | None, Form()] = None,  # noqa: N803
                 currentTimestamp: Annotated[str | None, Form()] = None,  # noqa: N803
                 ) -> PlainTextResponse:
        _name("sliceId", sliceId)
        _name("sliceFlavor", sliceFlavor)
        target_url = urllib.parse.urlsplit(callbackURL)
        if target_url.scheme not in ("http", "https") or not target_url.netloc:
            raise HTTPException(400, "callbackURL must be an http(s) URL, got %r" % callbackURL)
        if YFile is not None and currentTimestamp:
            raise HTTPException(400, "send either YFile or currentTimestamp, not both")
        exclude: str | None = None
        if YFile is not None:
            content = YFile.file.read(limit + 1)
            if len(content) > limit:
                raise HTTPException(413, "YFile is larger than %d bytes" % limit)
            try:
                y = read_table(io.BytesIO(content), source="YFile")
                target = YField or y.columns[0]
                y.column(target)
                step = infer_step(y.timestamps)
            except LearnError as exc:
                raise HTTPException(400, str(exc)) from None
        elif currentTimestamp:
            y, target, exclude = kpi_from_prometheus(sliceId, currentTimestamp, YField)
            step = cfg.profile_step
        else:
            raise HTTPException(400, "send the KPI as YFile (CSV, first column timestamp) or send "
                                     "currentTimestamp to profile the last profile_window from Prometheus")
        try:
            x = fetch(client_factory(), float(y.timestamps[0]), float(y.timestamps[-1]), step, candidates)
        except LearnError as exc:
            raise HTTPException(422, str(exc)) from None
        except PrometheusError as exc:
            raise HTTPException(502, "Prometheus: %s" % exc) from None
        if exclude is not None and exclude in x.columns:  # the KPI's own series explains nothing
            x = x.subset([c for c in x.columns if c != exclude])
        try:
            data = align(x, y, target)
            selection = select(data.x, data.y, data.names, K, DEFAULT_METHOD)
        except LearnError as exc:
            raise HTTPException(400, str(exc)) from None
        lines = [",".join(["timestamp", _quote(target)] + [_quote(n) for n in selection.names])]
        chosen = data.x[:, selection.indices]
        for row, timestamp in enumerate(data.timestamps):
            lines.append(",".join([_number(timestamp), _number(data.y[row])] + [_number(v) for v in chosen[row]]))
        text = "\n".join(lines) + "\n"
        item = {"sliceId": sliceId, "sliceFlavor": sliceFlavor, "target": target, "K": selection.k,
                "metrics": selection.names, "scores": [float(s) for s in selection.scores],
                "step_seconds": data.step, "start": float(data.timestamps[0]), "end": float(data.timestamps[-1]),
                "created": time.time(), "source": "YFile" if YFile is not None else "prometheus"}
        if YFile is None:
            item["kpi_query"] = target  # with currentTimestamp the KPI's name is its PromQL expression
        store.put_selection(item)
        if streamer.enabled:
            start_stream(sliceId, item)
        background.add_task(callback, callbackURL, text)
        return PlainTextResponse(text, status_code=201, media_type="text/csv")

    def known_slice(slice_id: str) -> None:
        _name("sliceId", slice_id)
        if not store.flavors(slice_id):
            raise HTTPException(404, "unknown slice %r: POST /ymetrics/%s first" % (slice_id, slice_id))

    def kept(slice_id: str, flavor: str) -> dict[str, Any]:
        known_slice(slice_id)
        item = store.selection(slice_id, flavor)
        if item is None:
            raise HTTPException(404, "slice %r has no flavor %r (it has: %s)" % (
                slice_id, flavor, ", ".join(store.flavors(slice_id))))
        return item

    @app.get("/ymetrics/{sliceId}")
    def selection(sliceId: str, sliceFlavor: str | None = None) -> dict[str, Any]:  # noqa: N803 - NECOS's names
        """One flavor's selection, or with no sliceFlavor all of the slice's by flavor."""
        if sliceFlavor is not None:
            return kept(sliceId, sliceFlavor)
        known_slice(sliceId)
        return {"sliceId": sliceId, "flavors": {f: store.selection(sliceId, f) for f in store.flavors(sliceId)}}

    @app.post("/slice/{sliceId}/stream")
    def stream_start(sliceId: str, sliceFlavor: str | None = None) -> dict[str, Any]:  # noqa: N803
        """Stream the live values of the slice's selected metrics to Kafka (the flavor's
        selection, by default the slice's latest)."""
        known_slice(sliceId)
        item = kept(sliceId, sliceFlavor) if sliceFlavor is not None else store.latest(sliceId)
        assert item is not None
        if not streamer.enabled:
            raise HTTPException(409, "streaming needs Kafka: set kafka.bootstrap_servers in the IMA's config")
        start_stream(sliceId, item)
        return {"sliceId": sliceId, **streamer.active()[sliceId], "topic": cfg.kafka.topic}

    @app.delete("/slice/{sliceId}/stream")
    def stream_stop(sliceId: str) -> dict[str, Any]:  # noqa: N803
        _name("sliceId", sliceId)
        if not streamer.stop(sliceId):
            raise HTTPException(404, "slice %r is not streaming" % sliceId)
        store.set_stream(sliceId, None)
        return {"sliceId": sliceId, "streaming": False}

    @app.get("/slice/{sliceId}/stream")
    def stream_status(sliceId: str) -> dict[str, Any]:  # noqa: N803
        _name("sliceId", sliceId)
        active = streamer.active().get(sliceId)
        return {"sliceId": sliceId, "streaming": active is not None, **(active or {})}

    @app.post("/elasticity/slice/{sliceId}/flavor/{flavorId}")
    async def elasticity(sliceId: str, flavorId: str) -> JSONResponse:  # noqa: N803
        """Apply the flavor through its actuator; 200 with the record when it was applied
        or sent, 502 when it failed (recorded either way). A streaming slice then
        streams the selection made for the new flavor, when there is one."""
        _name("sliceId", sliceId)
        _name("flavorId", flavorId)
        flavor = cfg.flavors.get(flavorId)
        if flavor is None:
            raise HTTPException(404, "unknown flavor %r (configured: %s)" % (
                flavorId, ", ".join(sorted(cfg.flavors)) or "none: add flavors to the IMA's config"))
        hosts = cfg.slices[sliceId].hosts if sliceId in cfg.slices else []
        if flavor.actuator == "bandwidth" and not hosts:
            raise HTTPException(409, "flavor %r sets a bandwidth class on the slice's hosts, but slice %r has "
                                     "none: configure slices.%s.hosts" % (flavorId, sliceId, sliceId))
        started = time.monotonic()
        if flavor.actuator == "kubernetes":
            outcome = await actuators.apply_kubernetes(flavor)
        elif flavor.actuator == "consumers":
            outcome = await actuators.apply_consumers(holder["xmpp"], cfg.xmpp.cluster_agent_jid, flavor)
        else:
            outcome = await actuators.apply_bandwidth(holder["xmpp"], sliceId, hosts, flavor)
        record = {"time": round(time.time(), 3), "slice": sliceId, "flavor": flavorId,
                  "actuator": flavor.actuator, "status": outcome.status, "result": outcome.detail,
                  "targets": outcome.targets, "seconds": round(time.monotonic() - started, 3)}
        store.add_action(sliceId, record)
        streaming = streamer.active().get(sliceId)
        chosen = store.selection(sliceId, flavorId)
        if outcome.ok and streaming and chosen is not None and streaming["sliceFlavor"] != flavorId:
            start_stream(sliceId, chosen)  # the slice now streams the metrics selected for its new flavor
        log.info("elasticity %s -> %s (%s): %s %s", sliceId, flavorId, flavor.actuator, outcome.status,
                 outcome.detail)
        return JSONResponse(record, status_code=200 if outcome.ok else 502)

    @app.get("/elasticity/slice/{sliceId}")
    def actions(sliceId: str) -> dict[str, Any]:  # noqa: N803
        _name("sliceId", sliceId)
        items = store.slice_actions(sliceId)
        if items is None:
            raise HTTPException(404, "no flavor change recorded for slice %r" % sliceId)
        return {"sliceId": sliceId, "actions": items}

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
