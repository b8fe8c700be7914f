"""The SRO as an HTTP service (FastAPI), with NECOS's interface.

    POST /slice/{sliceId}/flavor/{flavorId}/profile?url_to_answer=URL&sla_metric_name=KPI
         [&timestamp_label=COLUMN][&k=15]        multipart part `file`: the KPI (Y) as CSV
        -> 202 {"poll": ".../profile"}: the IMA selected the metrics and the data set is
           built; training runs in the background, then the JSON report is POSTed to
           url_to_answer.
    GET  /slice/{sliceId}/flavor/{flavorId}/profile  -> the job and its report
    POST /slice/{sliceId}/start_sla_forecast[?flavorId=F]   /  stop_sla_forecast
    GET  /slice/{sliceId}/forecast                   -> the live forecast's status
    POST /slice/{sliceId}/start_orchestration       /  stop_orchestration
    GET  /slice/{sliceId}/decisions                  -> every decision taken
    GET  /metrics                                    -> Prometheus metrics

Profiling: the Y file is sent to the IMA (POST {ima_url}/ymetrics/{sliceId} with
YFile, K and sliceFlavor), whose answer names the selected metrics; their history over
Y's range comes from Prometheus (when configured; otherwise the IMA's answer is the
data set), is aligned with Y and evaluated as `edgelab-sro evaluate` does. The chosen
model is kept per slice and flavor in state_dir (reloaded at start) and published to
MLflow when configured. Bad input is refused before anything runs: 400 (malformed Y,
unknown column, K out of range, data too short for the horizon), 404 (unknown slice
or flavor), 409 (a profile of that slice and flavor still running), 413 (upload over
max_upload_bytes), 422 (no Prometheus data in Y's range), 502/503 (IMA, Prometheus or
Kafka failing or not configured). A refused request keeps nothing.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import pickle
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, make_asgi_app

from .. import cli
from ..ima.source import fetch
from ..kafka import KafkaSettings
from ..learn.align import Dataset, align, from_table, infer_step
from ..learn.errors import LearnError
from ..learn.forecast import evaluate, make_windows, split, steps_of
from ..learn.model import Forecaster
from ..learn.tables import Table, read_csv_text, read_table
from ..prometheus import PrometheusClient, PrometheusError
from .config import SroConfig
from .orchestrate import Act, Decision, Orchestrator, ima_elasticity
from .stream import ForecastWorker, wait_ready

log = logging.getLogger(__name__)

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_K = 15
MAX_DECISIONS = 10_000  # kept in memory per slice; the file keeps them all


@dataclass
class Job:
    slice_id: str
    flavor: str
    status: str  # running, done, failed
    started: float
    finished: float | None = None
    error: str | None = None
    report: dict[str, Any] | None = None
    answer: str | None = None  # what url_to_answer said
    mlflow: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"slice": self.slice_id, "flavor": self.flavor, "status": self.status, "started": self.started,
                "finished": self.finished, "error": self.error, "report": self.report, "answer": self.answer,
                "mlflow": self.mlflow}


@dataclass
class Prepared:
    dataset: Dataset
    selected: list[str]
    k: int


def post_json(url: str, payload: dict[str, Any], timeout: float = 30.0) -> str:
    """POST payload as JSON; what the receiver answered, or why it could not."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode("utf-8"), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return "HTTP %d" % response.status
    except urllib.error.HTTPError as exc:
        exc.close()
        return "HTTP %d" % exc.code
    except OSError as exc:
        return "failed: %s" % getattr(exc, "reason", exc)


class Store:
    """Models and reports per slice and flavor under state_dir/models/<slice>/<flavor>.*;
    decisions appended to state_dir/decisions/<slice>.jsonl. Files are written through
    a temporary file and renamed."""

    def __init__(self, state_dir: str) -> None:
        self.root = Path(state_dir)
        self.models: dict[tuple[str, str], Forecaster] = {}
        self.jobs: dict[tuple[str, str], Job] = {}
        self.lock = threading.Lock()
        try:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.root / "models").mkdir(mode=0o700, exist_ok=True)
            (self.root / "decisions").mkdir(mode=0o700, exist_ok=True)
        except OSError as exc:
            raise OSError("state_dir %s: %s" % (state_dir, exc.strerror or exc)) from None
        self._load()

    def _load(self) -> None:
        for path in sorted((self.root / "models").glob("*/*.model")):
            slice_id, flavor = path.parent.name, path.stem
            try:
                with path.open("rb") as stream:  # written by this service only (state_dir is its own, 0700)
                    model = pickle.load(stream)
                report = json.loads(path.with_suffix(".json").read_text(encoding="utf-8"))
            except (OSError, ValueError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                log.warning("ignoring the stored model %s: %s", path, exc)
                continue
            if not isinstance(model, Forecaster):
                log.warning("ignoring the stored model %s: not a forecaster", path)
                continue
            self.models[(slice_id, flavor)] = model
            self.jobs[(slice_id, flavor)] = Job(slice_id, flavor, "done", float(report.get("started", 0.0)),
                                                float(report.get("finished", 0.0)), report=report.get("report"),
                                                answer=report.get("answer"), mlflow=report.get("mlflow"))
        log.info("loaded %d stored model%s from %s", len(self.models), "" if len(self.models) == 1 else "s",
                 self.root)

    def save(self, job: Job, model: Forecaster) -> None:
        folder = self.root / "models" / job.slice_id
        folder.mkdir(exist_ok=True)
        target = folder / ("%s.model" % job.flavor)
        temporary = folder / (".%s.%s" % (target.name, uuid.uuid4().hex))
        try:
            with temporary.open("wb") as stream:
                pickle.dump(model, stream)
            cli.write_atomic(str(target.with_suffix(".json")), json.dumps(job.as_dict(), indent=1) + "\n")
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

    def record(self, decision: Decision) -> None:
        with (self.root / "decisions" / ("%s.jsonl" % decision.slice)).open("a", encoding="utf-8") as stream:
            stream.write(json.dumps(decision.as_dict()) + "\n")

    def decisions(self, slice_id: str) -> list[dict[str, Any]]:
        path = self.root / "decisions" / ("%s.jsonl" % slice_id)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        return [json.loads(line) for line in lines[-MAX_DECISIONS:] if line.strip()]


def _check_name(what: str, value: str) -> None:
    if not NAME.fullmatch(value):
        raise HTTPException(400, "%s %r: use 1-64 letters, digits, '.', '_' or '-', starting with a letter or "
                                 "digit" % (what, value))


def _http_url(what: str, value: str) -> None:
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise HTTPException(400, "%s must be an http(s) URL, got %r" % (what, value))


def _y_csv(table: Table, target: str) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["timestamp", target])
    writer.writerows([repr(float(t)), "" if np.isnan(v) else repr(float(v))]
                     for t, v in zip(table.timestamps, table.column(target), strict=True))
    return out.getvalue()


def ask_ima(ima_url: str, slice_id: str, flavor: str, y_csv: str, k: int, callback: str,
            timeout: float = 300.0) -> str:
    """The IMA's selection for Y: its CSV answer (timestamp, KPI, selected metrics)."""
    boundary = uuid.uuid4().hex
    fields = {"K": str(k), "sliceFlavor": flavor, "callbackURL": callback}
    body = "".join("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n" % (boundary, name, value)
                   for name, value in fields.items())
    body += ("--%s\r\nContent-Disposition: form-data; name=\"YFile\"; filename=\"y.csv\"\r\n"
             "Content-Type: text/csv\r\n\r\n%s\r\n--%s--\r\n" % (boundary, y_csv, boundary))
    request = urllib.request.Request("%s/ymetrics/%s" % (ima_url, urllib.parse.quote(slice_id, safe="")),
                                     data=body.encode("utf-8"), method="POST",
                                     headers={"Content-Type": "multipart/form-data; boundary=%s" % boundary})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return str(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        with exc:
            raw = exc.read(4000).decode("utf-8", "replace")
        try:
            detail = str(json.loads(raw).get("detail", raw))
        except (ValueError, AttributeError):
            detail = raw
        status = exc.code if 400 <= exc.code < 500 else 502
        raise HTTPException(status, "IMA: %s" % " ".join(detail.split())[:500]) from None
    except OSError as exc:
        raise HTTPException(502, "the IMA at %s did not answer: %s" % (ima_url, getattr(exc, "reason", exc))) from None


def history(client: PrometheusClient, names: list[str], start: float, end: float, step: float) -> Table:
    """The selected series over start..end at step, one range query each (PromQL's
    `or` would drop series whose labels differ only by the metric name). A series
    Prometheus no longer has is all NaN (align drops it as near-empty)."""
    tables: dict[str, Table] = {}
    for name in names:
        try:
            table = fetch(client, start, end, step, name)
        except LearnError:
            continue
        except PrometheusError as exc:
            raise HTTPException(502, "Prometheus: %s" % exc) from None
        if name in table.columns:
            tables[name] = table
    if not tables:
        raise HTTPException(422, "Prometheus has no data for the selected metrics (%s) between %s and %s "
                                 "(epoch seconds)" % (", ".join(names), start, end))
    grid = next(iter(tables.values())).timestamps
    values = np.full((len(grid), len(names)), np.nan)
    for j, name in enumerate(names):
        if name in tables:
            values[:, j] = tables[name].column(name)
    return Table(grid, list(names), values)


def create_app(cfg: SroConfig, *, act: Act | None = None,
               publish: Callable[..., Any] | None = None) -> FastAPI:
    """The SRO application. act: the flavor change (default: the IMA's elasticity
    call); publish: MLflow publishing (default: edgelab.train.publish, imported when
    first needed)."""
    workers: dict[str, ForecastWorker] = {}
    orchestrators: dict[str, Orchestrator] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        for worker in list(workers.values()):
            worker.stop()

    app = FastAPI(title="edgelab SRO", description=__doc__, version="1", lifespan=lifespan)
    store = Store(cfg.state_dir)
    act = act or ima_elasticity(cfg.ima_url)
    registry = CollectorRegistry()
    forecast_gauge = Gauge("edgelab_sro_forecast", "The latest KPI forecast of a slice", ["slice"],
                           registry=registry)
    forecasts_total = Counter("edgelab_sro_forecasts", "Forecasts published", ["slice"], registry=registry)
    decisions_total = Counter("edgelab_sro_decisions", "Orchestration decisions", ["slice", "action", "ok"],
                              registry=registry)
    profiles_total = Counter("edgelab_sro_profiles", "Profiles finished", ["status"], registry=registry)
    app.mount("/metrics", make_asgi_app(registry=registry))
    lock = threading.Lock()
    app.state.store, app.state.workers, app.state.orchestrators = store, workers, orchestrators

    def kafka_settings() -> KafkaSettings:
        if cfg.kafka is None:
            raise HTTPException(503, "Kafka is not configured: set kafka.bootstrap_servers in the SRO's config")
        k = cfg.kafka
        return KafkaSettings(k.bootstrap_servers, k.security_protocol, k.sasl_mechanism, k.sasl_username or None,
                             k.sasl_password or None, k.ssl_cafile or None, client_id="edgelab-sro")

    def record(decision: Decision) -> None:
        store.record(decision)
        decisions_total.labels(decision.slice, decision.action, str(decision.ok).lower()).inc()

    def on_forecast(message: dict[str, Any]) -> None:
        slice_id = str(message["slice"])
        forecast_gauge.labels(slice_id).set(float(message["forecast"]))
        forecasts_total.labels(slice_id).inc()
        orchestrator = orchestrators.get(slice_id)
        if orchestrator is not None:
            decision = orchestrator.observe(float(message["forecast"]), float(message["for_timestamp"]))
            if decision is not None and decision.to_flavor != decision.from_flavor and decision.ok:
                worker = workers.get(slice_id)
                if worker is not None:
                    worker.set_flavor(decision.to_flavor)

    def known_slice(slice_id: str) -> list[str]:
        with store.lock:
            return sorted(f for s, f in set(store.models) | set(store.jobs) if s == slice_id)

    # ------------------------------------------------------------ profiling
    def prepare(slice_id: str, flavor: str, y: Table, target: str, k: int, callback: str) -> Prepared:
        step = infer_step(y.timestamps)
        horizon = steps_of(cfg.horizon, step, "the configured horizon")
        window = max(8, 4 * horizon)
        answer = ask_ima(cfg.ima_url, slice_id, flavor, _y_csv(y, target), k, callback)
        try:
            ima_table = read_csv_text(answer, source="the IMA's answer")
        except LearnError as exc:
            raise HTTPException(502, "IMA: %s" % exc) from None
        selected = [c for c in ima_table.columns if c != target]
        if not selected:
            raise HTTPException(502, "the IMA's answer names no selected metric (columns: %s)"
                                % ", ".join(ima_table.columns))
        if cfg.prometheus is not None:
            p = cfg.prometheus
            client = PrometheusClient(p.url, username=p.username or None, password_file=p.password_file or None,
                                      ca_file=p.ca_file or None)
            x = history(client, selected, float(y.timestamps[0]), float(y.timestamps[-1]), step)
            data = align(x, y.subset([target]), target)
        else:
            data = from_table(ima_table, target, selected, step=step)
        # The same checks training makes, so that too little data is a 400 now.
        anchors = make_windows(np.empty((len(data.y), 0)), data.y, [], window, horizon).anchor
        split(anchors, window, horizon)
        return Prepared(data, data.names, k)

    def train(job: Job, prepared: Prepared, url_to_answer: str) -> None:
        """Train, keep the model, POST the report to url_to_answer. The job stays
        `running` until url_to_answer has answered, so that a poller that sees it
        finished also sees the answer."""
        status, error = "failed", None
        try:
            result = evaluate(prepared.dataset, cfg.horizon, kpi_inputs=cfg.kpi_in_stream)
            model = result.model
            assert model is not None
            job.report = dict(result.as_dict(), slice=job.slice_id, flavor=job.flavor, k=prepared.k,
                              selected_by_ima=prepared.selected, kpi_inputs=cfg.kpi_in_stream)
            if cfg.mlflow is not None:
                job.mlflow = publish_model(job, result.chosen_candidate.test_nmae,
                                           result.chosen_candidate.validation_nmae, model)
            store.save(dataclasses.replace(job, status="done", finished=time.time()), model)
            with store.lock:
                store.models[(job.slice_id, job.flavor)] = model
            status = "done"
            profiles_total.labels("done").inc()
        except Exception as exc:  # the job's status carries the reason
            log.warning("profile %s/%s failed: %s", job.slice_id, job.flavor, exc, exc_info=True)
            error = " ".join(str(exc).split()) or type(exc).__name__
            profiles_total.labels("failed").inc()
        finished = time.time()
        answer = post_json(url_to_answer, dataclasses.replace(job, status=status, finished=finished,
                                                              error=error).as_dict())
        job.answer, job.error, job.finished = answer, error, finished
        job.status = status  # last: whoever sees the job finished sees all of it
        log.info("profile %s/%s %s; %s answered %s", job.slice_id, job.flavor, job.status, url_to_answer, job.answer)

    def publish_model(job: Job, test_nmae: float, validation_nmae: float, model: Forecaster) -> dict[str, Any]:
        assert cfg.mlflow is not None
        nonlocal publish
        if publish is None:
            from ..train import publish as train_publish  # the train extra

            publish = train_publish
        if cfg.mlflow.username:
            os.environ["MLFLOW_TRACKING_USERNAME"] = cfg.mlflow.username
            os.environ["MLFLOW_TRACKING_PASSWORD"] = cfg.mlflow.password
        result = publish(model, model_name="edgelab-sro-%s-%s" % (job.slice_id, job.flavor),
                         metrics={"test_nmae": test_nmae, "validation_nmae": validation_nmae},
                         params={"kind": model.kind, "target": model.target, "horizon_seconds": str(cfg.horizon),
                                 "window_steps": str(model.window), "metrics": ",".join(model.names)[:5000]},
                         metric_key="test_nmae", tracking_uri=cfg.mlflow.tracking_uri,
                         experiment=cfg.mlflow.experiment, promote=True, lower_is_better=True)
        return {key: getattr(result, key, None) for key in ("version", "run_id", "promoted", "reason")}

    @app.post("/slice/{sliceId}/flavor/{flavorId}/profile", status_code=202)
    def profile(sliceId: str, flavorId: str, request: Request,  # noqa: N803 - NECOS's names
                file: Annotated[UploadFile, File(description="the KPI (Y) as CSV")],
                url_to_answer: Annotated[str, Query()], sla_metric_name: Annotated[str, Query()],
                timestamp_label: Annotated[str | None, Query()] = None,
                k: Annotated[int, Query(description="metrics the IMA selects")] = DEFAULT_K) -> JSONResponse:
        _check_name("sliceId", sliceId)
        _check_name("flavorId", flavorId)
        _http_url("url_to_answer", url_to_answer)
        if k < 1:
            raise HTTPException(400, "k must be a whole number > 0, got %d" % k)
        content = file.file.read(cfg.max_upload_bytes + 1)
        if len(content) > cfg.max_upload_bytes:
            raise HTTPException(413, "file is larger than %d bytes (max_upload_bytes)" % cfg.max_upload_bytes)
        key = (sliceId, flavorId)
        with store.lock:
            running = store.jobs.get(key)
            if running is not None and running.status == "running":
                raise HTTPException(409, "a profile of slice %r flavor %r is still running: poll GET %s"
                                    % (sliceId, flavorId, request.url.path))
        try:
            y = read_table(io.BytesIO(content), timestamp_label or None, source="file")
            y.column(sla_metric_name)
            callback = str(request.url_for("ima_callback"))
            prepared = prepare(sliceId, flavorId, y, sla_metric_name, k, callback)
        except LearnError as exc:
            raise HTTPException(400, str(exc)) from None
        job = Job(sliceId, flavorId, "running", time.time())
        with store.lock:
            if key in store.jobs and store.jobs[key].status == "running":
                raise HTTPException(409, "a profile of slice %r flavor %r is already running" % key)
            store.jobs[key] = job
        threading.Thread(target=train, args=(job, prepared, url_to_answer), name="profile-%s-%s" % key,
                         daemon=True).start()
        return JSONResponse({"status": "running", "poll": request.url.path, "selected": prepared.selected,
                             "rows": len(prepared.dataset.y)}, status_code=202,
                            headers={"Location": request.url.path})

    @app.get("/slice/{sliceId}/flavor/{flavorId}/profile")
    def profile_status(sliceId: str, flavorId: str) -> dict[str, Any]:  # noqa: N803
        with store.lock:
            job = store.jobs.get((sliceId, flavorId))
        if job is None:
            flavors = known_slice(sliceId)
            if not flavors:
                raise HTTPException(404, "unknown slice %r: POST /slice/%s/flavor/FLAVOR/profile first"
                                    % (sliceId, sliceId))
            raise HTTPException(404, "slice %r has no flavor %r (it has: %s)" % (sliceId, flavorId, ", ".join(flavors)))
        return job.as_dict()

    @app.post("/ima_callback", status_code=204, include_in_schema=False)
    def ima_callback() -> None:
        """The IMA POSTs its selection here as well; the SRO already has it from the
        IMA's answer."""

    # ------------------------------------------------------------ forecasting
    def model_of(slice_id: str, flavor: str | None) -> tuple[str, Forecaster]:
        with store.lock:
            models = {f: m for (s, f), m in store.models.items() if s == slice_id}
            jobs = {f: j for (s, f), j in store.jobs.items() if s == slice_id}
        if not models:
            if jobs:
                raise HTTPException(409, "slice %r has no trained model yet (profile %s)" % (
                    slice_id, ", ".join("%s: %s" % (f, j.status) for f, j in sorted(jobs.items()))))
            raise HTTPException(404, "unknown slice %r: profile it first (POST /slice/%s/flavor/FLAVOR/profile)"
                                % (slice_id, slice_id))
        if flavor is None:
            flavor = max(models, key=lambda f: jobs[f].finished or 0.0 if f in jobs else 0.0)
        if flavor not in models:
            raise HTTPException(404, "slice %r has no model for flavor %r (it has: %s)"
                                % (slice_id, flavor, ", ".join(sorted(models))))
        return flavor, models[flavor]

    @app.post("/slice/{sliceId}/start_sla_forecast")
    def start_sla_forecast(sliceId: str, flavorId: str | None = None) -> dict[str, Any]:  # noqa: N803
        flavor, model = model_of(sliceId, flavorId)
        settings = kafka_settings()
        assert cfg.kafka is not None
        with lock:
            worker = workers.get(sliceId)
            if worker is not None and worker.running:
                return dict(worker.status(), note="already running")
            worker = ForecastWorker(sliceId, flavor, model, settings, cfg.kafka.metrics_topic,
                                    cfg.kafka.forecasts_topic, on_forecast,
                                    model_for=lambda f: store.models.get((sliceId, f)))
            workers[sliceId] = worker
            worker.start()
        if not wait_ready(worker, 30.0):
            worker.stop()
            with lock:
                workers.pop(sliceId, None)
            raise HTTPException(503, "Kafka at %s: %s" % (", ".join(cfg.kafka.bootstrap_servers),
                                                          worker.error or "not reachable within 30 s"))
        return worker.status()

    @app.post("/slice/{sliceId}/stop_sla_forecast")
    def stop_sla_forecast(sliceId: str) -> dict[str, Any]:  # noqa: N803
        with lock:
            worker = workers.pop(sliceId, None)
        if worker is None:
            raise HTTPException(404, "slice %r has no running forecast" % sliceId)
        worker.stop()
        return dict(worker.status(), note="stopped")

    @app.get("/slice/{sliceId}/forecast")
    def forecast_status(sliceId: str) -> dict[str, Any]:  # noqa: N803
        worker = workers.get(sliceId)
        if worker is None:
            raise HTTPException(404, "slice %r has no running forecast" % sliceId)
        return worker.status()

    # ------------------------------------------------------------ orchestration
    @app.post("/slice/{sliceId}/start_orchestration")
    def start_orchestration(sliceId: str, flavorId: str | None = None) -> dict[str, Any]:  # noqa: N803
        policy = cfg.orchestration.get(sliceId)
        if policy is None:
            raise HTTPException(404, "slice %r has no orchestration policy: add orchestration.%s {upper, lower, "
                                     "consecutive, cooldown, flavors} to the SRO's config" % (sliceId, sliceId))
        worker = workers.get(sliceId)
        flavor = flavorId or (worker.flavor if worker is not None else None)
        if flavor is None:
            raise HTTPException(409, "slice %r: start its forecast first (POST /slice/%s/start_sla_forecast) or "
                                     "name the current flavor with ?flavorId=" % (sliceId, sliceId))
        if flavor not in policy.flavors:
            raise HTTPException(400, "flavor %r is not in orchestration.%s.flavors (%s)"
                                % (flavor, sliceId, ", ".join(policy.flavors)))
        with lock:
            orchestrators[sliceId] = Orchestrator(sliceId, policy, flavor, act, record)
        return {"slice": sliceId, "flavor": flavor, "upper": policy.upper, "lower": policy.lower,
                "consecutive": policy.consecutive, "cooldown_seconds": policy.cooldown, "flavors": policy.flavors}

    @app.post("/slice/{sliceId}/stop_orchestration")
    def stop_orchestration(sliceId: str) -> dict[str, Any]:  # noqa: N803
        with lock:
            orchestrator = orchestrators.pop(sliceId, None)
        if orchestrator is None:
            raise HTTPException(404, "slice %r has no running orchestration" % sliceId)
        return {"slice": sliceId, "flavor": orchestrator.flavor, "note": "stopped"}

    @app.get("/slice/{sliceId}/decisions")
    def decisions(sliceId: str) -> dict[str, Any]:  # noqa: N803
        items = store.decisions(sliceId)
        if not items and sliceId not in cfg.orchestration and not known_slice(sliceId):
            raise HTTPException(404, "unknown slice %r" % sliceId)
        return {"slice": sliceId, "decisions": items}

    return app
