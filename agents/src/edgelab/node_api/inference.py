"""edgelab-inference: serve one experiment's production model from the node's store.

    edgelab-inference [--config /etc/edgelab/node-api.yml] EXP_ID

Run by systemd as edgelab-inference@EXP_ID.service, which the node API starts after
writing the deployment record (its port) into state_dir/deployments/EXP_ID.json.

    POST /predict    JSON rows ([{"col": v, ...}, ...]), a 2-D array ([[v, ...], ...]),
                     or MLflow's shapes ({"dataframe_records"|"dataframe_split"|"inputs"|
                     "instances": ...}); answers {"model", "version", "predictions"}
    GET  /health     the model being served (name, version, since)
    GET  /metrics    Prometheus: requests by outcome, latency, swaps, the model version

Model updates without downtime: every reload_interval the service looks at the
store's `current` link; when it points at another version, the new model is loaded
beside the served one in a background thread and then a single reference is swapped.
A request holds the model it started with, so none fails while the swap happens. A
version that fails to load is logged and skipped; the old model keeps serving.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .. import cli
from ..config import ConfigError
from .settings import NODE_API_CONFIG, Settings, load_settings, read_deployment
from .store import ModelStore, StoredModel, check_exp_id

PROG = "edgelab-inference"
log = logging.getLogger("edgelab.inference")


class BadRequestError(Exception):
    """A predict request the model cannot take (answered 400)."""


@dataclass
class Loaded:
    """One loaded model: swapped as a whole, so a request sees one consistent set."""

    model: Any
    meta: StoredModel
    columns: list[str] | None
    width: int | None
    tensor: bool
    since: float
    dtype: Any = float

    def to_input(self, body: Any) -> Any:
        """The model's input for a JSON body, or BadRequestError saying what shape is wanted."""
        if isinstance(body, dict):
            for key in ("dataframe_records", "rows", "inputs", "instances"):
                if key in body:
                    body = body[key]
                    break
            else:
                if "dataframe_split" in body and isinstance(body["dataframe_split"], dict):
                    split = body["dataframe_split"]
                    return self._frame_from_split(split)
                raise BadRequestError(self.expected("a JSON object without rows"))
        if not isinstance(body, list) or not body:
            raise BadRequestError(self.expected("an empty body" if body in ([], None) else type(body).__name__))
        if all(isinstance(row, dict) for row in body):
            return self._frame_from_rows(body)
        if all(isinstance(row, list) for row in body):
            return self._array(body)
        raise BadRequestError(self.expected("a list mixing rows and values"))

    def expected(self, got: str) -> str:
        if self.columns:
            want = f"rows with columns {', '.join(self.columns)} or a 2-D array of {len(self.columns)} columns"
        elif self.width:
            want = f"a 2-D array of {self.width} columns"
        else:
            want = "JSON rows or a 2-D array"
        return f"got {got}; send {want}"

    def _array(self, body: list[list[Any]]) -> Any:
        widths = {len(row) for row in body}
        if len(widths) != 1:
            raise BadRequestError(self.expected("rows of different lengths"))
        (width,) = widths
        expected = len(self.columns) if self.columns else self.width
        if expected is not None and width != expected:
            raise BadRequestError(self.expected(f"{width} columns"))
        try:
            array = np.asarray(body, dtype=self.dtype)
        except (TypeError, ValueError):
            raise BadRequestError(self.expected("values that are not numbers")) from None
        if self.columns and not self.tensor:
            import pandas as pd

            return pd.DataFrame(array, columns=self.columns)
        return array

    def _frame_from_rows(self, rows: list[dict[str, Any]]) -> Any:
        import pandas as pd

        if self.columns:
            missing = sorted({c for c in self.columns for row in rows if c not in row})
            if missing:
                raise BadRequestError(self.expected(f"rows without {', '.join(missing)}"))
            return pd.DataFrame([[row[c] for c in self.columns] for row in rows], columns=self.columns)
        return pd.DataFrame(rows)

    def _frame_from_split(self, split: dict[str, Any]) -> Any:
        columns, data = split.get("columns"), split.get("data")
        if not isinstance(columns, list) or not isinstance(data, list):
            raise BadRequestError(self.expected("dataframe_split without columns and data"))
        return self._frame_from_rows([dict(zip(columns, row, strict=False)) for row in data
                                      if isinstance(row, list)])


def load(meta: StoredModel) -> Loaded:
    """Load a stored model with mlflow.pyfunc and read its input schema."""
    import mlflow.pyfunc  # type: ignore[import-not-found, unused-ignore]

    model = mlflow.pyfunc.load_model(meta.path)
    columns: list[str] | None = None
    width: int | None = None
    tensor = False
    dtype: Any = float
    schema = model.metadata.get_input_schema()
    if schema is not None:
        if schema.is_tensor_spec():
            tensor = True
            spec_type = getattr(schema.inputs[0], "type", None) if schema.inputs else None
            if isinstance(spec_type, np.dtype) and spec_type.kind in "fiu":
                dtype = spec_type
            shape: tuple[int, ...] = tuple(schema.inputs[0].shape) if schema.inputs else ()
            if len(shape) == 2 and shape[-1] > 0:
                width = int(shape[-1])
        elif schema.has_input_names():
            columns = list(schema.input_names())
    return Loaded(model=model, meta=meta, columns=columns, width=width, tensor=tensor, since=time.time(),
                  dtype=dtype)


class Server:
    """The served model and the background thread that swaps in a new one."""

    def __init__(self, store: ModelStore, exp_id: str, interval: float) -> None:
        self.store = store
        self.exp_id = exp_id
        self.interval = interval
        meta = store.current(exp_id)
        if meta is None:
            raise ConfigError(f"no model for exp_id {exp_id!r} in the store {store.root}: "
                              "PUT /api/mlflow/model on the node API first")
        self.active: Loaded = load(meta)
        self.failed: str | None = None
        self.swaps = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
        self.on_swap: list[Any] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """Load and swap in the store's current model if it changed; True if swapped."""
        meta = self.store.current(self.exp_id)
        if meta is None or meta.path == self.active.meta.path or meta.path == self.failed:
            return False
        try:
            fresh = load(meta)
        except Exception as exc:
            self.failed = meta.path
            log.error("cannot load %s version %s, still serving version %s: %s", meta.name, meta.version,
                      self.active.meta.version, " ".join(str(exc).split())[:300])
            return False
        old = self.active
        self.active = fresh
        self.swaps += 1
        for callback in self.on_swap:
            callback(old, fresh)
        log.info("now serving %s version %s (was %s)", meta.name, meta.version, old.meta.version)
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:
                log.exception("model watch failed")


def build_app(server: Server) -> FastAPI:
    registry = CollectorRegistry()
    requests = Counter("edgelab_inference_requests", "Predict requests by outcome", ["outcome"],
                       registry=registry)
    latency = Histogram("edgelab_inference_latency_seconds", "Predict latency (model call and encoding)",
                        registry=registry, buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                    0.25, 0.5, 1.0, 2.5))
    swaps = Counter("edgelab_inference_model_swaps", "Model versions swapped in without restart",
                    registry=registry)
    info = Gauge("edgelab_inference_model_info", "The model being served (value 1)",
                 ["exp_id", "model", "version"], registry=registry)
    info.labels(server.exp_id, server.active.meta.name, server.active.meta.version).set(1)

    def swapped(old: Loaded, fresh: Loaded) -> None:
        swaps.inc()
        info.remove(server.exp_id, old.meta.name, old.meta.version)
        info.labels(server.exp_id, fresh.meta.name, fresh.meta.version).set(1)

    server.on_swap.append(swapped)
    app = FastAPI(title=f"edgelab inference ({server.exp_id})", description=__doc__, version="1",
                  docs_url="/swagger")

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        started = time.perf_counter()
        current = server.active
        try:
            body = json.loads(await request.body())
        except ValueError:
            requests.labels("bad_request").inc()
            return JSONResponse({"detail": "the body is not JSON; " + current.expected("text")}, status_code=400)
        try:
            data = current.to_input(body)
            output = current.model.predict(data)
        except BadRequestError as exc:
            requests.labels("bad_request").inc()
            return JSONResponse({"detail": str(exc)}, status_code=400)
        except Exception as exc:
            requests.labels("bad_request").inc()
            detail = " ".join(str(exc).split())[:500]
            return JSONResponse({"detail": f"the model refused the input: {detail}; "
                                 + current.expected("this input")}, status_code=400)
        if hasattr(output, "to_dict") and hasattr(output, "columns"):
            predictions: Any = output.to_dict(orient="records")
        else:
            predictions = np.asarray(output).tolist()
        payload = {"model": current.meta.name, "version": current.meta.version, "predictions": predictions}
        text = json.dumps(payload)
        latency.observe(time.perf_counter() - started)
        requests.labels("ok").inc()
        return Response(text, media_type="application/json")

    @app.get("/health")
    def health() -> dict[str, Any]:
        current = server.active
        return {"status": "ok", "exp_id": server.exp_id, "model": current.meta.name,
                "version": current.meta.version, "run_id": current.meta.run_id, "since": current.since,
                "swaps": server.swaps}

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("exp_id", help="the experiment whose model to serve (the unit's instance name)")


def start(args: argparse.Namespace) -> None:
    settings: Settings = load_settings(args.config)
    exp_id: str = args.exp_id
    try:
        check_exp_id(exp_id)
    except Exception as exc:
        raise ConfigError(str(exc)) from None
    record = read_deployment(settings, exp_id)
    if record is None or not isinstance(record.get("port"), int):
        raise ConfigError(f"no deployment record {settings.deployment_file(exp_id)}: "
                          "deploy through the node API (POST /api/inference/deploy)")
    server = Server(ModelStore(settings.store_dir), exp_id, settings.reload_interval)
    app = build_app(server)
    server.start()
    import uvicorn

    log.info("serving %s version %s for %s on %s:%d", server.active.meta.name, server.active.meta.version,
             exp_id, settings.inference_address, record["port"])
    try:
        uvicorn.run(app, host=settings.inference_address, port=int(record["port"]),
                    log_level="warning", access_log=False)
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run(PROG, start, argv, default_config=NODE_API_CONFIG, description=__doc__,
                   add_arguments=add_arguments)

