"""The node API (edgelab-node-api) and its inference services (edgelab-inference)
against a real `mlflow server` (tests/support/mlflow_server.py), each started as its
real entry point (uvicorn on loopback): register a model, alias it, PUT, deploy,
predict, list, update to a new version under concurrent requests (no request may
fail), delete; and every error path (auth, unknown exp_id, no production version,
legacy stage, MLflow down, a broken download, a full port range, a duplicate deploy,
a service that never answers, malformed bodies, a predict of the wrong shape).

systemd is a stand-in: it records every call through support/agenttools'
FAKE_SYSTEMCTL and, like systemd for edgelab-inference@EXP.service, runs
`edgelab-inference EXP` on start and ends it on stop; is-active says whether that
process still runs. The molecule scenario mlops runs the same with real systemd."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from edgelab.models import MlflowModel, ModelError, load_model
from edgelab.node_api.store import MlflowPuller, ModelStore, StoreError
from support.agenttools import FakeSystemctl
from support.mlflow_server import WIDTH, MlflowServer, free_port, register

BIN = Path(sys.executable).parent

SYSTEMD_STAND_IN = """#!/bin/sh
# Records through the fake systemctl and runs the unit's process as systemd would.
state={state}
cmd=$1; unit=$2
image=${{unit#edgelab-inference-image@}}; image=${{image%.service}}
case "$cmd" in
  start)
    case "$unit" in
      edgelab-inference-image@*)
        # ExecStartPre, then ExecStart: the unit's start fails when the first fails.
        {python} -m edgelab.node_api.image --config {config} prepare "$image" >>"$state/$unit.log" 2>&1 || {{
          echo "start $unit" >> "$state/calls.log"; echo "Job for $unit failed" >&2; exit 1; }}
        "$state/systemctl" "$@" || exit $?
        {python} -m edgelab.node_api.image --config {config} run "$image" >>"$state/$unit.log" 2>&1 & ;;
      *)
        "$state/systemctl" "$@" || exit $?
        inst=${{unit#edgelab-inference@}}; inst=${{inst%.service}}
        {inference} --config {config} "$inst" >>"$state/$unit.log" 2>&1 & ;;
    esac
    echo $! > "$state/$unit.pid" ;;
  stop)
    case "$unit" in
      edgelab-inference-image@*)
        [ -f "$state/$unit.pid" ] && {python} -m edgelab.node_api.image --config {config} stop "$image" \
          >>"$state/$unit.log" 2>&1 ;;
    esac
    if [ -f "$state/$unit.pid" ]; then
      pid=$(cat "$state/$unit.pid"); kill "$pid" 2>/dev/null
      n=0; while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
      kill -9 "$pid" 2>/dev/null; rm -f "$state/$unit.pid"
    fi
    "$state/systemctl" "$@" ;;
  is-active)
    if [ -f "$state/$unit.pid" ] && kill -0 "$(cat "$state/$unit.pid")" 2>/dev/null; then
      "$state/systemctl" "$@"
    else
      echo "$cmd $*" >> "$state/calls.log"; echo failed; exit 3
    fi ;;
  *) "$state/systemctl" "$@" ;;
esac
"""


def free_range(size: int) -> int:
    """The first of `size` consecutive ports that are free on loopback now."""
    for _ in range(200):
        base = free_port()
        if base + size > 65000:
            continue
        ok = True
        for port in range(base, base + size):
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range")


@dataclass
class Answer:
    status: int
    body: Any

    @property
    def detail(self) -> str:
        return str(self.body.get("detail")) if isinstance(self.body, dict) else ""


def call(method: str, url: str, body: Any = None, token: str | None = None, timeout: float = 120) -> Answer:
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return Answer(status, json.loads(raw))
    except ValueError:
        return Answer(status, raw.decode(errors="replace"))


@dataclass
class NodeApi:
    base: Path
    url: str
    token: str
    settings: dict[str, Any]
    proc: subprocess.Popen[bytes]
    units: FakeSystemctl
    extra: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def call(self, method: str, path: str, body: Any = None, token: str | None = "") -> Answer:
        return call(method, self.url + path, body, self.token if token == "" else token)

    @property
    def store(self) -> Path:
        return Path(self.settings["store_dir"])

    def log(self) -> str:
        text = (self.base / "node-api.log").read_text(errors="replace")[-3000:]
        for unit_log in sorted(self.units.state.glob("*.log")):
            text += f"\n--- {unit_log.name}\n" + unit_log.read_text(errors="replace")[-2000:]
        return text

    def stop(self) -> None:
        for record in (Path(self.settings["state_dir"]) / "deployments").glob("*.json"):
            image = "image" in json.loads(record.read_text())
            unit = f"edgelab-inference{'-image' if image else ''}@{record.stem}.service"
            subprocess.run([self.settings["systemctl"], "stop", unit], check=False, capture_output=True)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_node_api(base: Path, tracking_uri: str, *, ports: int = 4, run_services: bool = True,
                   path: str | None = None, **overrides: Any) -> NodeApi:
    base.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    token_file = base / "token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    state = base / "units"
    state.mkdir()
    units = FakeSystemctl(state)
    port = free_port()
    first = free_range(ports)
    config = base / "node-api.yml"
    systemctl = str(units.path)
    if run_services:
        stand_in = state / "systemd"
        stand_in.write_text(SYSTEMD_STAND_IN.format(state=state, inference=BIN / "edgelab-inference",
                                                    config=config, python=sys.executable))
        stand_in.chmod(stand_in.stat().st_mode | stat.S_IXUSR)
        systemctl = str(stand_in)
    settings: dict[str, Any] = {
        "listen": f"127.0.0.1:{port}", "token_file": str(token_file), "store_dir": str(base / "models"),
        "state_dir": str(base / "state"), "mlflow_tracking_uri": tracking_uri, "port_min": first,
        "port_max": first + ports - 1, "inference_address": "127.0.0.1", "systemctl": systemctl,
        "start_timeout": 240.0, "reload_interval": 0.5}
    settings.update(overrides)
    config.write_text(yaml.safe_dump(settings))
    env = dict(os.environ, MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_TIMEOUT="10")
    env.pop("MLFLOW_TRACKING_URI", None)
    if path is not None:
        env["PATH"] = path
    log = (base / "node-api.log").open("w")
    proc = subprocess.Popen([str(BIN / "edgelab-node-api"), "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT, env=env)
    node = NodeApi(base, f"http://127.0.0.1:{port}", token, settings, proc, units)
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise RuntimeError("edgelab-node-api exited: " + node.log())
        try:
            if call("GET", node.url + "/api/ping", timeout=2).status == 200:
                return node
        except OSError:
            pass
        if time.monotonic() > deadline:
            node.stop()
            raise RuntimeError("edgelab-node-api did not answer: " + node.log())
        time.sleep(0.2)




mlflow = pytest.importorskip("mlflow", reason="mlflow is not installed (requirements.txt)")
pytest.importorskip("fastapi", reason="fastapi is not installed (requirements.txt)")
from mlflow.tracking import MlflowClient  # noqa: E402


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> str:
    """The tracking URI, set for this process's mlflow client (register())."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    mlflow.set_tracking_uri(mlflow_server.uri)
    return mlflow_server.uri


@pytest.fixture
def node(tmp_path: Path, mlflow_env: str) -> Iterator[NodeApi]:
    api = start_node_api(tmp_path / "node", mlflow_env)
    try:
        yield api
    finally:
        api.stop()


def predict(port: int, body: Any) -> Answer:
    return call("POST", f"http://127.0.0.1:{port}/predict", body, timeout=30)


def test_ping_is_open_everything_else_wants_the_token(node: NodeApi) -> None:
    assert node.call("GET", "/api/ping", token=None).body == {"status": "ok"}
    for method, path, body in (("GET", "/api/inference/all", None), ("PUT", "/api/mlflow/model", {"exp_id": "x"}),
                               ("POST", "/api/inference/deploy", {"exp_id": "x"}),
                               ("DELETE", "/api/inference/deploy?exp_id=x", None)):
        for token in (None, "wrong-" + node.token):
            answer = node.call(method, path, body, token=token)
            assert answer.status == 401, (method, path, answer)
            assert "bearer token" in answer.detail
    assert node.call("GET", "/api/inference/all").body == []
    swagger = urllib.request.urlopen(node.url + "/swagger", timeout=10).read().decode()
    assert "swagger-ui" in swagger
    paths = node.call("GET", "/openapi.json", token=None).body["paths"]
    assert {"/api/ping", "/api/mlflow/model", "/api/inference/deploy", "/api/inference/all"} <= set(paths)


def test_pull_deploy_predict_update_without_failures_delete(node: NodeApi) -> None:
    first = register("exp-life", 1.0)
    pulled = node.call("PUT", "/api/mlflow/model", {"exp_id": "exp-life"})
    assert pulled.status == 200, pulled
    assert pulled.body["name"] == "exp-life" and pulled.body["version"] == first
    assert pulled.body["selected_by"] == "alias production"
    assert pulled.body["run_id"] and pulled.body["size"] > 0
    assert Path(pulled.body["path"]) == (node.store / "exp-life" / "current").resolve()
    assert (Path(pulled.body["path"]) / "MLmodel").is_file()

    deployed = node.call("POST", "/api/inference/deploy", {"exp_id": "exp-life"})
    assert deployed.status == 201, (deployed, node.log())
    port = deployed.body["port"]
    assert node.settings["port_min"] <= port <= node.settings["port_max"]
    assert deployed.body["version"] == first
    answer = predict(port, [[0.0, 0.0, 0.5], [1.0, 1.0, 0.25]])
    assert answer.status == 200, answer
    assert answer.body["model"] == "exp-life" and answer.body["version"] == first
    assert answer.body["predictions"] == pytest.approx([0.5, 0.25], abs=1e-6)
    assert predict(port, {"inputs": [[0, 0, 2]]}).body["predictions"] == pytest.approx([2.0], abs=1e-6)
    assert "start edgelab-inference@exp-life.service" in node.units.calls()

    listed = node.call("GET", "/api/inference/all").body
    assert [(s["exp_id"], s["port"], s["model"], s["version"], s["status"]) for s in listed] == \
        [("exp-life", port, "exp-life", first, "running")]
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    assert 'edgelab_inference_model_info{exp_id="exp-life",model="exp-life",version="%s"} 1.0' % first in metrics

    # A new production version while requests keep coming: none may fail.
    second = register("exp-life", 2.0)
    failures: list[str] = []
    versions: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            try:
                result = predict(port, [[0.0, 0.0, 1.0]])
            except OSError as exc:
                failures.append(repr(exc))
                continue
            if result.status != 200:
                failures.append(str(result))
            else:
                versions.append(result.body["version"])
                expected = 1.0 if result.body["version"] == first else 2.0
                if abs(result.body["predictions"][0] - expected) > 1e-6:
                    failures.append(f"version {result.body['version']} predicted {result.body['predictions']}")

    workers = [threading.Thread(target=hammer) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        time.sleep(0.5)
        updated = node.call("PUT", "/api/mlflow/model", {"exp_id": "exp-life"})
        time.sleep(0.5)
    finally:
        stop.set()
        for worker in workers:
            worker.join()
    assert updated.status == 200, updated
    assert updated.body["version"] == second and updated.body["previous_version"] == first
    assert updated.body["service"] == {"port": port, "version": second, "switched": True}
    assert failures == []
    assert first in versions and second in versions
    assert versions.index(second) > versions.index(first)
    assert len(versions) > 20
    assert [s["version"] for s in node.call("GET", "/api/inference/all").body] == [second]
    # The previous version stays in the store for rollback.
    assert (node.store / "exp-life" / "previous").resolve().name == first

    wrong = predict(port, [[1.0, 2.0]])
    assert wrong.status == 400 and "got 2 columns; send a 2-D array of 3 columns" in wrong.detail
    assert predict(port, [[1, 2, "x"]]).status == 400
    assert "not JSON" in predict(port, b"{").detail
    assert predict(port, {"something": 1}).status == 400

    duplicate = node.call("POST", "/api/inference/deploy", {"exp_id": "exp-life"})
    assert duplicate.status == 409 and f"already deployed on port {port}" in duplicate.detail

    removed = node.call("DELETE", "/api/inference/deploy?exp_id=exp-life")
    assert removed.status == 200 and removed.body == {"exp_id": "exp-life", "port": port, "stopped": True}
    assert "stop edgelab-inference@exp-life.service" in node.units.calls()
    assert node.units.active() == []
    assert node.call("GET", "/api/inference/all").body == []
    with pytest.raises(OSError):
        predict(port, [[0.0, 0.0, 1.0]])
    again = node.call("DELETE", "/api/inference/deploy?exp_id=exp-life")
    assert again.status == 404 and "not deployed" in again.detail


def test_deploy_pulls_when_the_store_is_empty_and_takes_a_model_name(node: NodeApi) -> None:
    version = register("forecast-model", 3.0)
    deployed = node.call("POST", "/api/inference/deploy", {"exp_id": "exp-named", "model": "forecast-model"})
    assert deployed.status == 201, (deployed, node.log())
    assert deployed.body["model"] == "forecast-model" and deployed.body["version"] == version
    answer = predict(deployed.body["port"], [[0, 0, 1]])
    assert answer.body["predictions"] == pytest.approx([3.0], abs=1e-6)
    # The deployment remembers the model name: a PUT for the exp_id pulls the same model.
    assert node.call("PUT", "/api/mlflow/model", {"exp_id": "exp-named"}).body["name"] == "forecast-model"


def test_model_errors_leave_the_store_as_it_was(node: NodeApi, mlflow_server: MlflowServer) -> None:
    unknown = node.call("PUT", "/api/mlflow/model", {"exp_id": "no-such-exp"})
    assert unknown.status == 404
    assert "unknown exp_id 'no-such-exp'" in unknown.detail and "models:" in unknown.detail

    register("exp-unaliased", 1.0, alias=False)
    none = node.call("PUT", "/api/mlflow/model", {"exp_id": "exp-unaliased"})
    assert none.status == 404 and "has no production version" in none.detail

    legacy = register("exp-legacy", 1.0, alias=False, stage=True)
    staged = node.call("PUT", "/api/mlflow/model", {"exp_id": "exp-legacy"})
    assert staged.status == 200, staged
    assert staged.body["version"] == legacy and staged.body["selected_by"] == "stage Production"

    good = register("exp-broken", 1.0)
    assert node.call("PUT", "/api/mlflow/model", {"exp_id": "exp-broken"}).body["version"] == good
    register("exp-broken", 2.0)
    # Break the new version's artifacts on the server: the file its MLmodel names is gone,
    # so the download is incomplete.
    newest = max((mlflow_server.dir / "artifacts").rglob("MLmodel"), key=lambda p: p.stat().st_mtime).parent
    model_file = yaml.safe_load((newest / "MLmodel").read_text())["flavors"]["python_function"]["model_path"]
    (newest / model_file).unlink()
    broken = node.call("PUT", "/api/mlflow/model", {"exp_id": "exp-broken"})
    assert broken.status == 502 and f"{model_file} named in MLmodel is missing" in broken.detail, broken
    assert (node.store / "exp-broken" / "current").resolve().name == good
    assert [p.name for p in (node.store / "exp-broken" / "versions").iterdir()] == [good]

    for body in ({"exp_id": "../etc"}, {"exp_id": ""}, {"exp_id": "a b"}):
        bad = node.call("PUT", "/api/mlflow/model", body)
        assert bad.status == 422 and "invalid exp_id" in bad.detail
    assert node.call("PUT", "/api/mlflow/model", {"experiment": "x"}).status == 422
    assert node.call("PUT", "/api/mlflow/model", b"not json").status == 422
    assert node.call("DELETE", "/api/inference/deploy").status == 422


def test_mlflow_down_is_a_502(tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    api = start_node_api(tmp_path / "node", dead)
    try:
        answer = api.call("PUT", "/api/mlflow/model", {"exp_id": "exp-x"})
        assert answer.status == 502 and f"cannot reach MLflow at {dead}" in answer.detail, answer
        deployed = api.call("POST", "/api/inference/deploy", {"exp_id": "exp-x"})
        assert deployed.status == 502 and api.units.calls() == []
    finally:
        api.stop()


def test_full_port_range_and_a_service_that_never_answers(tmp_path: Path, mlflow_env: str) -> None:
    register("exp-a", 1.0)
    register("exp-b", 1.0)
    api = start_node_api(tmp_path / "node", mlflow_env, ports=1)
    try:
        assert api.call("POST", "/api/inference/deploy", {"exp_id": "exp-a"}).status == 201
        record = Path(api.settings["state_dir"]) / "deployments" / "exp-a.json"
        assert record.stat().st_mode & 0o777 == 0o640  # read by the inference service's user
        full = api.call("POST", "/api/inference/deploy", {"exp_id": "exp-b"})
        assert full.status == 503 and "no free port in" in full.detail, full
        assert not (Path(api.settings["state_dir"]) / "deployments" / "exp-b.json").exists()
        assert [s["exp_id"] for s in api.call("GET", "/api/inference/all").body] == ["exp-a"]
    finally:
        api.stop()

    # Plain FAKE_SYSTEMCTL starts nothing: the unit is "active" but never answers.
    quiet = start_node_api(tmp_path / "quiet", mlflow_env, run_services=False, start_timeout=3.0)
    try:
        answer = quiet.call("POST", "/api/inference/deploy", {"exp_id": "exp-a"})
        assert answer.status == 504, answer
        assert "did not answer" in answer.detail and "journalctl -u edgelab-inference@exp-a.service" in answer.detail
        calls = quiet.units.calls()
        assert calls[0] == "start edgelab-inference@exp-a.service"
        assert calls[-1] == "stop edgelab-inference@exp-a.service"
        assert set(calls[1:-1]) <= {"is-active edgelab-inference@exp-a.service"}
        assert quiet.call("GET", "/api/inference/all").body == []
    finally:
        quiet.stop()


def test_docker_img_is_refused_where_no_runtime_is_configured_or_running(tmp_path: Path, mlflow_env: str) -> None:
    body = {"exp_id": "exp-d", "docker_img": "registry.example/team/img:1"}
    ctr = shutil.which("ctr") or "/bin/true"
    cases = (({}, 400, "set node_api_container_runtime: containerd"),
             ({"container_runtime": "containerd", "ctr": str(tmp_path / "no-ctr")}, 501,
              "apt-get install containerd"),
             ({"container_runtime": "containerd", "ctr": ctr, "containerd_address": str(tmp_path / "no.sock")},
              503, "containerd is not running"))
    for number, (overrides, status, message) in enumerate(cases):
        api = start_node_api(tmp_path / f"node{number}", mlflow_env, **overrides)
        try:
            answer = api.call("POST", "/api/inference/deploy", body)
            assert answer.status == status and message in answer.detail, (overrides, answer)
            assert api.units.calls() == []
            assert api.call("GET", "/api/inference/all").body == []
        finally:
            api.stop()


def test_bad_settings_are_one_line(tmp_path: Path) -> None:
    config = tmp_path / "node-api.yml"
    for text, message in (("listen: nowhere\nmlflow_tracking_uri: http://x\n", "listen: expected HOST:PORT"),
                          ("port_min: 9000\nport_max: 8000\nmlflow_tracking_uri: http://x\n", "port_min..port_max"),
                          ("models: [a]\n", "models: expected a mapping"),
                          ("colour: red\n", "unknown key colour"),
                          ("token_file: /nonexistent\nmlflow_tracking_uri: http://x\n", "cannot read token_file"),
                          ("{}\n", "missing required key mlflow_tracking_uri")):
        config.write_text(text)
        out = subprocess.run([str(BIN / "edgelab-node-api"), "--config", str(config)], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2, (text, out.stderr)
        assert out.stderr.count("\n") == 1 and message in out.stderr, (text, out.stderr)
    config.write_text("mlflow_tracking_uri: http://x\n")
    out = subprocess.run([str(BIN / "edgelab-inference"), "--config", str(config), "exp-1"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "no deployment record" in out.stderr and out.stderr.count("\n") == 1


def test_store_keeps_current_and_previous_only(tmp_path: Path, mlflow_env: str) -> None:
    store = ModelStore(tmp_path / "models")
    puller = MlflowPuller(store, mlflow_env, {"exp-store": "store-model"})
    versions = [register("store-model", float(slope), alias=False) for slope in (1, 2, 3)]
    for version in versions:
        MlflowClient().set_registered_model_alias("store-model", "production", version)
        pulled = puller.pull("exp-store")
        assert pulled.version == version and pulled.name == "store-model"
    assert sorted(p.name for p in (store.root / "exp-store" / "versions").iterdir()) == sorted(versions[1:])
    assert store.current("exp-store").version == versions[2]  # type: ignore[union-attr]
    assert store.previous("exp-store").version == versions[1]  # type: ignore[union-attr]
    # The same production version again: nothing is downloaded or moved.
    again = puller.pull("exp-store")
    assert again.path == store.current("exp-store").path and again.pulled_at == pulled.pulled_at  # type: ignore[union-attr]
    assert [m.exp_id for m in store.all()] == ["exp-store"]
    # The inference services read the store as another user, through its group.
    assert (store.root / "exp-store" / "current").resolve().stat().st_mode & 0o777 == 0o750


def test_a_model_without_a_python_function_flavor_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    staged = store.staging("exp-raw")
    (staged / "MLmodel").write_text("flavors:\n  sklearn:\n    pickled_model: model.pkl\n")
    with pytest.raises(StoreError, match="no python_function flavor") as info:
        store.install("exp-raw", staged, {"name": "raw", "version": "1", "run_id": "", "source": "",
                                          "selected_by": "alias production"})
    assert info.value.status == 422
    assert store.current("exp-raw") is None


def test_node_agent_reads_mlflow_models_from_the_store_without_mlflow(
        tmp_path: Path, mlflow_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The node agent's `mlflow:` source after a pull: MLflow may be gone."""
    store = ModelStore(tmp_path / "models")
    version = register("agent-model", 2.0)
    MlflowPuller(store, mlflow_env).pull("exp-agent", "agent-model")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    monkeypatch.setenv("EDGELAB_MODEL_STORE", str(tmp_path / "elsewhere"))
    with pytest.raises(ModelError, match="cannot load models:/agent-model@production"):
        load_model("mlflow:models:/agent-model@production", "cpu", WIDTH)
    monkeypatch.setenv("EDGELAB_MODEL_STORE", str(store.root))
    for source in ("mlflow:models:/agent-model@production", "mlflow:store:exp-agent"):
        model = load_model(source, "cpu", WIDTH)
        assert isinstance(model, MlflowModel) and model.version == version
        assert model.location == str((store.root / "exp-agent" / "current").resolve())
        for value in (0.1, 0.2, 0.3):
            model.update({"cpu": value})
        assert model.predict() == pytest.approx(0.6, abs=1e-6)
    with pytest.raises(ModelError, match="no model for experiment 'exp-none' in the node's store"):
        load_model("mlflow:store:exp-none", "cpu", WIDTH)
