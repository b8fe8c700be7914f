"""Role mlflow's files, rendered by the real ansible-playbook from the role's own
defaults and derived values (tasks/facts.yml), then parsed: the environment file
(secrets, URL-encoded store URIs, the S3 settings when the inventory has a minio
host), basic_auth.ini as configparser reads it (MLflow's auth app does), the unit
with `systemd-analyze verify`. The S3 part is then run for real: the rendered
environment starts PyPI's `mlflow server --serve-artifacts` against moto's S3
server (moto[s3], an S3-compatible server from PyPI, standing in for MinIO,
which cannot be installed here), and an artifact logged through the tracking
server lands in the bucket. The lab (molecule scenario mlops) runs the role
itself with Postgres and local artifacts.
"""

from __future__ import annotations

import configparser
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from support.mlflow_server import free_port, mlflow_executable, stop, wait_for_health

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "mlflow"
BIN = Path(sys.executable).parent

SECRETS = {"db_password": "db/pa:ss@1", "auth_db_password": "au%th#2", "admin_password": "Adm1nGenerated",
           "flask_secret_key": "f1askKey", "users": {"edgelab": "edgelabPW", "prometheus": "promPW"},
           "s3_secret_key": "s3SecretKey0123"}

PLAYBOOK = """\
- hosts: mlops
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
  tasks:
    - name: The role's checks and derived values
      ansible.builtin.include_tasks: {role}/tasks/facts.yml
    - name: Render
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ item }}}}"
        mode: "0600"
      loop: [mlflow.env, basic_auth.ini, mlflow.service, mlflow-metrics.service]
"""


def render(tmp_path: Path, minio: bool, **overrides: object) -> Path:
    out = tmp_path / ("s3" if minio else "local")
    out.mkdir()
    groups = {"mlops": {"hosts": {"ml1": {"ansible_host": "192.0.2.21"}}}}
    if minio:
        groups["minio"] = {"hosts": {"obj1": {"ansible_host": "192.0.2.22"}}}
    (out / "hosts.yml").write_text(json.dumps({"all": {"children": groups}}))
    (out / "play.yml").write_text(PLAYBOOK.format(role=ROLE, out=out))
    extra = {"mlflow_secrets": SECRETS, "edgelab_credentials_dir": str(out / "credentials"),
             "ansible_os_family": "Debian", **overrides}
    (out / "extra.json").write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    command = [str(BIN / "ansible-playbook"), "-i", str(out / "hosts.yml"), "-e", "@" + str(out / "extra.json"),
               str(out / "play.yml")]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return out


def env_file(path: Path) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("mlflow"), minio=False)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render(tmp_path_factory.mktemp("mlflow"), minio=True, mlflow_allowed_hosts_extra=["mlflow.example.org"])


def test_environment_local_artifacts(local: Path) -> None:
    env = env_file(local / "mlflow.env")
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "f1askKey"
    # The password is URL-encoded: "/", ":" and "@" would otherwise end the userinfo.
    assert env["MLFLOW_BACKEND_STORE_URI"] == "postgresql+psycopg2://mlflow:db%2Fpa%3Ass%401@127.0.0.1:5432/mlflow"
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "/var/lib/mlflow/artifacts"
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/etc/mlflow/basic_auth.ini"
    assert not any(k.startswith(("AWS_", "MLFLOW_S3")) for k in env)


def test_environment_s3_artifacts_when_the_inventory_has_minio(s3: Path) -> None:
    env = env_file(s3 / "mlflow.env")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"] == "s3://mlflow"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://192.0.2.22:9000"
    assert env["AWS_ACCESS_KEY_ID"] == "mlflow" and env["AWS_SECRET_ACCESS_KEY"] == "s3SecretKey0123"


def test_basic_auth_ini(local: Path) -> None:
    parser = configparser.ConfigParser()
    parser.read(local / "basic_auth.ini")
    section = parser["mlflow"]
    assert section["default_permission"] == "NO_PERMISSIONS"
    assert section["admin_username"] == "admin" and section["admin_password"] == "Adm1nGenerated"
    assert section["database_uri"] == "postgresql+psycopg2://mlflow_auth:au%25th%232@127.0.0.1:5432/mlflow_auth"
    assert section["authorization_function"] == "mlflow.server.auth:authenticate_request_basic_auth"
    assert section.getint("auth_cache_ttl_seconds") == 60


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies_and_holds_no_secret(s3: Path, tmp_path: Path) -> None:
    text = (s3 / "mlflow.service").read_text()
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "mlflow").write_text("#!/bin/sh\nexit 0\n")
    (venv_bin / "mlflow").chmod(0o755)
    unit = tmp_path / "mlflow.service"
    unit.write_text(text.replace("/opt/edgelab/mlflow/bin/mlflow", str(venv_bin / "mlflow")))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for directive in ("User=mlflow", "EnvironmentFile=/etc/mlflow/mlflow.env", "ProtectSystem=strict",
                      "NoNewPrivileges=yes", "--app-name basic-auth", "--serve-artifacts",
                      "--expose-prometheus /var/lib/mlflow/metrics"):
        assert directive in text
    hosts = text.split("--allowed-hosts ")[1].split()[0].split(",")
    for host in ("localhost", "127.0.0.1:5000", "ml1", "192.0.2.21", "192.0.2.21:5000", "mlflow.example.org:5000"):
        assert host in hosts
    for secret in ("db/pa", "Adm1nGenerated", "f1askKey", "s3SecretKey0123", "postgresql://"):
        assert secret not in text


METRICS = ROLE / "files" / "edgelab-mlflow-metrics"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_metrics_unit_verifies_and_runs_the_listener_as_mlflow(local: Path, tmp_path: Path) -> None:
    text = (local / "mlflow-metrics.service").read_text()
    for directive in ("User=mlflow", "ProtectSystem=strict", "NoNewPrivileges=yes", "--dir /var/lib/mlflow/metrics",
                      "--port 5001", "MemoryMax="):
        assert directive in text
    assert "EnvironmentFile" not in text  # no secret: nothing to read
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("#!/bin/sh\nexit 0\n")
    python.chmod(0o755)
    unit = tmp_path / "mlflow-metrics.service"
    unit.write_text(text.replace("/opt/edgelab/mlflow/bin/python", str(python)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_metrics_listener_serves_what_the_workers_wrote(tmp_path: Path) -> None:
    """The listener (roles/mlflow/files/edgelab-mlflow-metrics) on a directory that a
    process in prometheus_client's multiprocess mode wrote, as MLflow's workers do."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    writer = ("from prometheus_client import Counter\n"
              "Counter('mlflow_http_request_total', 'requests', ['method']).labels('GET').inc(3)\n")
    subprocess.run([sys.executable, "-c", writer], env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics)},
                   check=True, timeout=60)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(METRICS), "--dir", str(metrics), "--listen", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and "serving" in proc.stdout.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            body = answer.read().decode()
        assert 'mlflow_http_request_total{method="GET"} 3.0' in body
        for path, method, code in (("/", "GET", 404), ("/api/2.0/mlflow/experiments/search", "GET", 404),
                                   ("/metrics", "POST", 405)):
            body_sent = b"" if method == "POST" else None
            request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method, data=body_sent)
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=10)
            assert refused.value.code == code
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0
    bad = subprocess.run([sys.executable, str(METRICS), "--dir", str(tmp_path / "none"), "--port", "1"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a directory" in bad.stderr and "Traceback" not in bad.stderr


def test_the_role_refuses_a_bad_bucket_and_s3_without_an_endpoint(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text("all:\n  children:\n    mlops:\n      hosts:\n        ml1: {}\n")
    (tmp_path / "play.yml").write_text(textwrap.dedent(f"""\
        - hosts: mlops
          connection: local
          gather_facts: false
          vars_files: [{ROLE}/defaults/main.yml]
          tasks:
            - ansible.builtin.include_tasks: {ROLE}/tasks/facts.yml
        """))
    extra = {"edgelab_credentials_dir": "/nonexistent", "ansible_os_family": "Debian", "mlflow_artifacts": "s3",
             "mlflow_s3_endpoint_url": "nowhere", "mlflow_s3_bucket": "Bad_Bucket"}
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), "-e", json.dumps(extra),
                           str(tmp_path / "play.yml")], env=dict(os.environ, ANSIBLE_NOCOLOR="1"),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode != 0
    assert "mlflow_s3_bucket is an S3 bucket name (got \"Bad_Bucket\")" in proc.stdout


def test_s3_artifacts_through_the_tracking_server_land_in_the_bucket(s3: Path, tmp_path: Path) -> None:
    """The rendered S3 settings against a real S3-compatible server (moto), not MinIO."""
    boto3 = pytest.importorskip("boto3")
    pytest.importorskip("moto")
    moto_port = free_port()
    moto_log = (tmp_path / "moto.log").open("w")
    moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(moto_port)],
                            stdout=moto_log, stderr=subprocess.STDOUT)
    server = None
    try:
        endpoint = f"http://127.0.0.1:{moto_port}"
        for _ in range(100):
            try:
                urllib.request.urlopen(endpoint + "/moto-api/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        env = env_file(s3 / "mlflow.env")
        env["MLFLOW_S3_ENDPOINT_URL"] = endpoint
        s3_client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                 aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                                 aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
        s3_client.create_bucket(Bucket="mlflow")
        port = free_port()
        s3_settings = {k: v for k, v in env.items() if k.startswith(("AWS_", "MLFLOW_S3", "MLFLOW_ARTIFACTS"))}
        server_env = dict(os.environ, **s3_settings)
        log_path = tmp_path / "server.log"
        with log_path.open("w") as log:
            server = subprocess.Popen(
                [mlflow_executable(), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                 "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}", "--serve-artifacts"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=server_env)
        uri = f"http://127.0.0.1:{port}"
        wait_for_health(uri, server, log_path)
        artifact = tmp_path / "note.txt"
        artifact.write_text("edgelab artifact\n")
        code = textwrap.dedent(f"""\
            import mlflow
            mlflow.set_tracking_uri({uri!r})
            with mlflow.start_run() as run:
                mlflow.log_artifact({str(artifact)!r})
                print("RESULT", run.info.run_id, run.info.artifact_uri)
            """)
        client_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                              env=client_env, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        result = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        assert result, proc.stdout[-2000:]
        run_id, artifact_uri = result[-1].split()[1:]
        assert artifact_uri.startswith("mlflow-artifacts:/")  # proxied: the client holds no S3 credentials
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket="mlflow").get("Contents", [])]
        assert any(k.endswith(f"{run_id}/artifacts/note.txt") for k in keys), keys
    finally:
        if server is not None:
            stop(server)
        moto.terminate()
        moto.wait(20)
        moto_log.close()
