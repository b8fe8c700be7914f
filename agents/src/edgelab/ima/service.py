"""The IMA as an HTTP service (FastAPI), with NECOS's interface.

    POST /ymetrics/{sliceId}     multipart form: YFile (CSV or Parquet, first column
                                 timestamp), K, sliceFlavor, callbackURL, optional YField
                                 (default: Y's second column)
        -> 201 text/csv: timestamp, the KPI and the K selected metrics on Y's grid;
           the same CSV is then POSTed to callbackURL (multipart, part `file`).
    GET  /ymetrics/{sliceId}?sliceFlavor=F   -> the selection kept for that slice and flavor

Candidate metrics are every series of `query` in Prometheus over Y's time range at
Y's step (fetched in pieces of at most 11,000 steps). Bad input answers 400 (413 for
an upload over the limit, 404 for an unknown slice or flavor, 422 when Prometheus has
no data in Y's range, 502 when Prometheus fails) with a `detail` that says what to
fix; a failed request keeps nothing. OpenAPI: /docs and /openapi.json.

Not in this version: `currentTimestamp` without a YFile, streaming the selected
metrics to Kafka, and `POST /elasticity/...` (issue 13, item 3).
"""

from __future__ import annotations

import io
import logging
import threading
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import BackgroundTasks, FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import PlainTextResponse

from ..learn.align import align, infer_step
from ..learn.errors import LearnError
from ..learn.select import DEFAULT_METHOD, select
from ..learn.tables import read_table
from ..prometheus import PrometheusClient, PrometheusError
from .source import ALL_SERIES, fetch

log = logging.getLogger(__name__)

MAX_UPLOAD = 16 * 2**20  # bytes of YFile


@dataclass
class Kept:
    slice_id: str
    flavor: str
    target: str
    k: int
    metrics: list[str]
    scores: list[float]
    step: float
    start: float
    end: float
    created: float


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


def create_app(client_factory: Callable[[], PrometheusClient], *, query: str = ALL_SERIES,
               max_upload: int = MAX_UPLOAD, callback: Callable[[str, str], None] = post_csv) -> FastAPI:
    app = FastAPI(title="edgelab IMA", description=__doc__, version="1")
    kept: dict[tuple[str, str], Kept] = {}
    lock = threading.Lock()

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
        if YFile is None:
            raise HTTPException(400, "send the KPI as YFile (CSV, first column timestamp); currentTimestamp "
                                     "alone is not supported by this IMA")
        target_url = urllib.parse.urlsplit(callbackURL)
        if target_url.scheme not in ("http", "https") or not target_url.netloc:
            raise HTTPException(400, "callbackURL must be an http(s) URL, got %r" % callbackURL)
        content = YFile.file.read(max_upload + 1)
        if len(content) > max_upload:
            raise HTTPException(413, "YFile is larger than %d bytes" % max_upload)
        try:
            y = read_table(io.BytesIO(content), source="YFile")
            target = YField or y.columns[0]
            y.column(target)
            step = infer_step(y.timestamps)
        except LearnError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            x = fetch(client_factory(), float(y.timestamps[0]), float(y.timestamps[-1]), step, query)
        except LearnError as exc:
            raise HTTPException(422, str(exc)) from None
        except PrometheusError as exc:
            raise HTTPException(502, "Prometheus: %s" % exc) from None
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
        with lock:
            kept[(sliceId, sliceFlavor)] = Kept(sliceId, sliceFlavor, target, selection.k, selection.names,
                                                selection.scores, data.step, float(data.timestamps[0]),
                                                float(data.timestamps[-1]), time.time())
        background.add_task(callback, callbackURL, text)
        return PlainTextResponse(text, status_code=201, media_type="text/csv")

    @app.get("/ymetrics/{sliceId}")
    def selection(sliceId: str, sliceFlavor: str) -> dict[str, Any]:  # noqa: N803 - NECOS's names
        with lock:
            item = kept.get((sliceId, sliceFlavor))
            flavors = sorted(f for s, f in kept if s == sliceId)
        if item is None:
            if not flavors:
                raise HTTPException(404, "unknown slice %r: POST /ymetrics/%s first" % (sliceId, sliceId))
            raise HTTPException(404, "slice %r has no flavor %r (it has: %s)" % (sliceId, sliceFlavor,
                                                                             ", ".join(flavors)))
        return {"sliceId": item.slice_id, "sliceFlavor": item.flavor, "target": item.target, "K": item.k,
                "metrics": item.metrics, "scores": item.scores, "step_seconds": item.step, "start": item.start,
                "end": item.end, "created": item.created}

    return app
