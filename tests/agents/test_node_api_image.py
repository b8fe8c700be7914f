"""docker_img deployments of the node API against a real containerd on the controller
(Debian's containerd, runc and busybox-static packages; root): the test builds an OCI
image archive itself (busybox httpd serving /ping, and /model -> /opt/ml/model, so
GET /model/MLmodel proves the store's model is mounted), imports it with ctr, then
deploys, lists, asks, updates and deletes through the real edgelab-node-api; and the
refusals: an image that is not there (4xx saying how to import it), a registry that
does not answer, a bad image name, a port that is not allowed.

containerd is started by the module's fixture with its own socket, root and state
under /tmp, so it touches no containerd of the machine. systemd is the stand-in of
test_node_api.py, which runs the image unit's ExecStartPre/ExecStart/ExecStop
(python -m edgelab.node_api.image prepare/run/stop) as systemd would. Without
containerd or root the tests skip, which CI (CI=true) turns into failures."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from edgelab.node_api.store import ModelStore
from support.mlflow_server import free_port, register
from test_node_api import NodeApi, mlflow_env, start_node_api  # noqa: F401 - mlflow_env is a fixture

NAMESPACE = "edgelab"
IMAGE = "localhost/edgelab/model-probe:1"
BUSYBOX = "/bin/busybox"
DEAD_MLFLOW = "http://127.0.0.1:9"


@dataclass
class Containerd:
    address: str
    ctr: str
    proc: subprocess.Popen[bytes]
    root: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.ctr, "--address", self.address, "-n", NAMESPACE, *args], capture_output=True,
                              text=True, timeout=120, check=False)

    def containers(self) -> list[str]:
        return self.run("container", "ls", "-q").stdout.split()


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 0
    return info, io.BytesIO(data)


def _entry(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname, info.mtime = kind, 0o755, target, 0
    return info


def build_image(path: Path, ref: str) -> None:
    """An OCI image archive: one layer with a static busybox, /www/ping and /www/model ->
    /opt/ml/model; its command serves /www with busybox httpd on $PORT."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for directory in ("bin", "www", "opt", "opt/ml", "tmp"):
            tar.addfile(_entry(directory, tarfile.DIRTYPE))
        tar.addfile(*_file("bin/busybox", Path(BUSYBOX).read_bytes(), 0o755))
        tar.addfile(_entry("bin/sh", tarfile.SYMTYPE, "busybox"))
        tar.addfile(*_file("www/ping", b"ok\n"))
        tar.addfile(_entry("www/model", tarfile.SYMTYPE, "/opt/ml/model"))
    layer_bytes = layer.getvalue()
    config = {"architecture": "amd64", "os": "linux",
              "config": {"Env": ["PATH=/bin"],
                         "Cmd": ["/bin/sh", "-c", 'exec /bin/busybox httpd -f -p "$PORT" -h /www']},
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]}}

    with tarfile.open(path, "w") as archive:
        def blob(data: bytes) -> dict[str, Any]:
            digest = hashlib.sha256(data).hexdigest()
            archive.addfile(*_file(f"blobs/sha256/{digest}", data))
            return {"digest": f"sha256:{digest}", "size": len(data)}

        archive.addfile(_entry("blobs", tarfile.DIRTYPE))
        archive.addfile(_entry("blobs/sha256", tarfile.DIRTYPE))
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               **blob(json.dumps(config).encode())},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer_bytes)}]}
        index = {"schemaVersion": 2, "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", **blob(json.dumps(manifest).encode()),
             "annotations": {"io.containerd.image.name": ref, "org.opencontainers.image.ref.name": ref}}]}
        archive.addfile(*_file("index.json", json.dumps(index).encode()))
        archive.addfile(*_file("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'))


@pytest.fixture(scope="module")
def containerd() -> Iterator[Containerd]:
    missing = [name for name in ("containerd", "ctr", "runc") if shutil.which(name) is None]
    if not Path(BUSYBOX).is_file():
        missing.append(BUSYBOX)
    if missing:
        pytest.skip(f"{', '.join(missing)} missing: apt-get install containerd runc busybox-static")
    if os.geteuid() != 0:
        pytest.skip("containerd runs containers as root only")
    # A short directory: unix socket paths are limited to 107 bytes.
    base = Path(tempfile.mkdtemp(prefix="edgelab-ctrd-", dir="/tmp"))
    address = str(base / "containerd.sock")
    config = base / "config.toml"
    config.write_text(f'version = 2\nroot = "{base}/root"\nstate = "{base}/state"\n'
                      'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                      f'[grpc]\n  address = "{address}"\n[ttrpc]\n  address = "{address}.ttrpc"\n')
    log = (base / "containerd.log").open("w")
    proc = subprocess.Popen([str(shutil.which("containerd")), "--config", str(config)], stdout=log,
                            stderr=subprocess.STDOUT)
    engine = Containerd(address, str(shutil.which("ctr")), proc, base)
    try:
        deadline = time.monotonic() + 30
        while engine.run("version").returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("containerd did not start: " + (base / "containerd.log").read_text()[-2000:])
            time.sleep(0.2)
        build_image(base / "probe.tar", IMAGE)
        imported = engine.run("image", "import", str(base / "probe.tar"))
        assert imported.returncode == 0, imported.stderr
        assert IMAGE in engine.run("image", "ls", "-q").stdout.split()
        yield engine
    finally:
        for task in engine.run("task", "ls", "-q").stdout.split():
            engine.run("task", "delete", "--force", task)
        for container in engine.containers():
            engine.run("container", "delete", container)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def put_model(store_dir: Path, exp_id: str, version: str) -> Path:
    """A model in the node's store as a pull leaves it (MLflow is not needed to serve an image)."""
    store = ModelStore(store_dir)
    staged = store.staging(exp_id)
    (staged / "MLmodel").write_text(f"flavors:\n  python_function:\n    loader_module: probe\n# version {version}\n")
    model = store.install(exp_id, staged, {"name": f"model-{exp_id}", "version": version, "run_id": "r",
                                           "source": "test", "selected_by": "alias production"})
    return Path(model.path)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError as exc:
        return 0, str(exc)


def node_for(tmp_path: Path, engine: Containerd, tracking_uri: str = DEAD_MLFLOW, **overrides: Any) -> NodeApi:
    settings: dict[str, Any] = {"container_runtime": "containerd", "ctr": engine.ctr,
                                "containerd_address": engine.address, "containerd_namespace": NAMESPACE,
                                "image_stop_timeout": 2.0, "start_timeout": 60.0}
    settings.update(overrides)
    return start_node_api(tmp_path / "node", tracking_uri, **settings)


def test_image_deploy_list_answer_delete(tmp_path: Path, containerd: Containerd) -> None:
    fixed = free_port()
    node = node_for(tmp_path, containerd, image_fixed_ports=[fixed])
    try:
        version_dir = put_model(node.store, "img-a", "3")
        started = time.monotonic()
        deployed = node.call("POST", "/api/inference/deploy", {"exp_id": "img-a", "docker_img": IMAGE})
        took = time.monotonic() - started
        assert deployed.status == 201, (deployed, node.log())
        port = deployed.body["port"]
        assert node.settings["port_min"] <= port <= node.settings["port_max"]
        assert deployed.body["unit"] == "edgelab-inference-image@img-a.service"
        assert (deployed.body["image"], deployed.body["model"], deployed.body["version"]) == \
            (IMAGE, "model-img-a", "3")
        assert get(f"http://127.0.0.1:{port}/ping") == (200, "ok\n")
        # The store's version directory, mounted read-only at /opt/ml/model.
        assert get(f"http://127.0.0.1:{port}/model/MLmodel") == (200, (version_dir / "MLmodel").read_text())
        assert "edgelab-inference-img-a" in containerd.containers()

        listed = node.call("GET", "/api/inference/all").body
        assert [(e["exp_id"], e["port"], e["image"], e["model"], e["version"], e["status"]) for e in listed] == \
            [("img-a", port, IMAGE, "model-img-a", "3", "running")]

        again = node.call("POST", "/api/inference/deploy", {"exp_id": "img-a", "docker_img": IMAGE})
        assert again.status == 409 and "already deployed" in again.detail

        # A second image on the fixed port it asks for; that port cannot be given twice.
        put_model(node.store, "img-b", "1")
        pinned = node.call("POST", "/api/inference/deploy",
                           {"exp_id": "img-b", "docker_img": IMAGE, "image_port": fixed})
        assert pinned.status == 201 and pinned.body["port"] == fixed, (pinned, node.log())
        assert get(f"http://127.0.0.1:{fixed}/ping")[0] == 200
        put_model(node.store, "img-c", "1")
        taken = node.call("POST", "/api/inference/deploy",
                          {"exp_id": "img-c", "docker_img": IMAGE, "image_port": fixed})
        assert taken.status == 409 and f"image_port {fixed} is in use" in taken.detail

        for exp_id, at in (("img-a", port), ("img-b", fixed)):
            deleted = node.call("DELETE", f"/api/inference/deploy?exp_id={exp_id}")
            assert deleted.status == 200 and deleted.body["stopped"] is True, (deleted, node.log())
            assert get(f"http://127.0.0.1:{at}/ping")[0] == 0
        assert node.call("GET", "/api/inference/all").body == []
        assert not [c for c in containerd.containers() if c.startswith("edgelab-inference-img-")]
        print(f"image deploy to the answered /ping: {took:.2f} s")
    finally:
        node.stop()


def test_missing_image_bad_name_bad_port_and_unreachable_registry(tmp_path: Path, containerd: Containerd) -> None:
    node = node_for(tmp_path, containerd, image_registries=["127.0.0.1:9"], image_fixed_ports=[])
    try:
        put_model(node.store, "img-m", "1")
        missing = node.call("POST", "/api/inference/deploy",
                            {"exp_id": "img-m", "docker_img": "localhost/edgelab/not-imported:1"})
        assert missing.status == 404, (missing, node.log())
        assert f"import it with ctr -n {NAMESPACE} image import FILE" in missing.detail
        assert "node_api_image_registries" in missing.detail and "localhost" in missing.detail
        assert "the deployment was not made" in missing.detail

        unreachable = node.call("POST", "/api/inference/deploy",
                                {"exp_id": "img-m", "docker_img": "127.0.0.1:9/team/model:1"})
        assert unreachable.status == 502 and "pulling image '127.0.0.1:9/team/model:1'" in unreachable.detail, \
            (unreachable, node.log())

        for bad in ("Upper/Case:1", "a//b", "img:", "img@sha256:1234", "-x/y", "x y"):
            answer = node.call("POST", "/api/inference/deploy", {"exp_id": "img-m", "docker_img": bad})
            assert answer.status == 422 and "invalid docker_img" in answer.detail, (bad, answer)
        odd = node.call("POST", "/api/inference/deploy", {"exp_id": "img--m", "docker_img": IMAGE})
        assert odd.status == 422 and "cannot name a container" in odd.detail
        port = node.call("POST", "/api/inference/deploy", {"exp_id": "img-m", "docker_img": IMAGE,
                                                            "image_port": 8080})
        assert port.status == 422 and "not one of image_fixed_ports" in port.detail
        plain = node.call("POST", "/api/inference/deploy", {"exp_id": "img-m", "docker_img": "", "image_port": 8080})
        assert plain.status == 422 and "docker_img deployments only" in plain.detail

        assert node.call("GET", "/api/inference/all").body == []
        assert not list((Path(node.settings["state_dir"]) / "deployments").iterdir())
        assert not [c for c in containerd.containers() if c.startswith("edgelab-inference-img-")]
    finally:
        node.stop()


def test_a_newer_model_restarts_the_image_on_it(tmp_path: Path, containerd: Containerd,
                                                mlflow_env: str) -> None:
    first = register("img-up", 1.0)
    node = node_for(tmp_path, containerd, tracking_uri=mlflow_env)
    try:
        deployed = node.call("POST", "/api/inference/deploy", {"exp_id": "img-up", "docker_img": IMAGE})
        assert deployed.status == 201 and deployed.body["version"] == first, (deployed, node.log())
        port = deployed.body["port"]
        served = json.loads(get(f"http://127.0.0.1:{port}/model/edgelab-model.json")[1])
        assert served["version"] == first

        second = register("img-up", 2.0)
        pulled = node.call("PUT", "/api/mlflow/model", {"exp_id": "img-up"})
        assert pulled.status == 200, (pulled, node.log())
        assert pulled.body["service"] == {"port": port, "version": second, "switched": True, "restarted": True}
        served = json.loads(get(f"http://127.0.0.1:{port}/model/edgelab-model.json")[1])
        assert served["version"] == second
        listed = node.call("GET", "/api/inference/all").body
        assert [(e["version"], e["stored_version"], e["status"]) for e in listed] == [(second, second, "running")]

        # An exp_id MLflow does not know: the image runs with its own model, nothing mounted.
        bare = node.call("POST", "/api/inference/deploy", {"exp_id": "img-bare", "docker_img": IMAGE})
        assert bare.status == 201 and bare.body["model"] is None, (bare, node.log())
        assert get(f"http://127.0.0.1:{bare.body['port']}/ping")[0] == 200
        assert get(f"http://127.0.0.1:{bare.body['port']}/model/MLmodel")[0] == 404
        named = node.call("POST", "/api/inference/deploy",
                          {"exp_id": "img-named", "docker_img": IMAGE, "model": "no-such-model"})
        assert named.status == 404 and "no registered model 'no-such-model'" in named.detail
    finally:
        node.stop()
