"""Role minio, as far as it can be checked without a MinIO binary (MinIO publishes
no community binaries after RELEASE.2025-10-15T17-29-55Z and none can be fetched
here): its templates rendered by the real ansible-playbook with the role's
defaults, then parsed (the environment file as systemd reads it, the unit with
`systemd-analyze verify`, the bucket policy as JSON), and the role's checks run
for real. The server starting, the bucket, policy and user created through mc,
are only seen on a real machine (docs/mlops.md); MLflow's S3 settings are run
against an S3-compatible server from PyPI in tests/test_mlops_mlflow_render.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ROLE = ROOT / "roles" / "minio"
BIN = Path(sys.executable).parent

PLAYBOOK = """\
- hosts: minio
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
  tasks:
    - name: Render
      ansible.builtin.template:
        src: "{role}/templates/{{{{ item }}}}.j2"
        dest: "{out}/{{{{ item }}}}"
        mode: "0600"
      loop: [minio.env, minio.service, mlflow-bucket-policy.json]
    - name: The download URLs
      ansible.builtin.copy:
        content: "{{{{ [minio_binary_url, minio_mc_url] | to_json }}}}"
        dest: "{out}/urls.json"
        mode: "0600"
"""


def run(tmp_path: Path, playbook: str, extra: dict[str, object]) -> subprocess.CompletedProcess[str]:
    inventory = "all:\n  children:\n    minio:\n      hosts:\n        obj1: {ansible_host: 192.0.2.22}\n"
    (tmp_path / "hosts.yml").write_text(inventory)
    (tmp_path / "play.yml").write_text(playbook)
    (tmp_path / "extra.json").write_text(json.dumps(extra))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", str(tmp_path / "hosts.yml"), "-e",
                           "@" + str(tmp_path / "extra.json"), str(tmp_path / "play.yml")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("minio")
    proc = run(out, PLAYBOOK.format(role=ROLE, out=out),
               {"minio_root_password": "r00tSecret", "minio_mlflow_bucket": "mlflow-artifacts",
                "ansible_facts": {"architecture": "x86_64"}, "edgelab_credentials_dir": str(out / "cred")})
    assert proc.returncode == 0, proc.stdout[-3000:]
    return out


def test_environment_file(rendered: Path) -> None:
    pairs = [line.split("=", 1) for line in (rendered / "minio.env").read_text().splitlines()
             if line and not line.startswith("#")]
    env = dict(pairs)
    assert env["MINIO_VOLUMES"] == "/var/lib/minio/data"
    assert env["MINIO_ROOT_USER"] == "edgelab-root" and env["MINIO_ROOT_PASSWORD"] == "r00tSecret"
    assert env["MINIO_OPTS"] == "--address :9000 --console-address :9001"


def test_release_urls_are_pinned(rendered: Path) -> None:
    server, client = json.loads((rendered / "urls.json").read_text())
    assert server == ("https://dl.min.io/server/minio/release/linux-amd64/archive/"
                      "minio.RELEASE.2025-10-15T17-29-55Z")
    assert client.endswith("/linux-amd64/archive/mc.RELEASE.2025-08-13T08-35-41Z")


def test_bucket_policy_allows_only_the_bucket(rendered: Path) -> None:
    policy = json.loads((rendered / "mlflow-bucket-policy.json").read_text())
    resources = {r for statement in policy["Statement"] for r in statement["Resource"]}
    assert resources == {"arn:aws:s3:::mlflow-artifacts", "arn:aws:s3:::mlflow-artifacts/*"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert "s3:PutObject" in actions and not any(a.startswith("admin:") or a == "s3:*" for a in actions)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_verifies_and_holds_no_secret(rendered: Path, tmp_path: Path) -> None:
    text = (rendered / "minio.service").read_text()
    fake = tmp_path / "bin" / "minio"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "minio.service"
    unit.write_text(text.replace("/usr/local/bin/minio", str(fake)))
    proc = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for directive in ("User=minio-user", "EnvironmentFile=/etc/minio/minio.env", "LimitNOFILE=65536",
                      "ReadWritePaths=/var/lib/minio/data", "ProtectSystem=strict", "NoNewPrivileges=yes",
                      "ExecStart=/usr/local/bin/minio server $MINIO_OPTS $MINIO_VOLUMES"):
        assert directive in text
    assert "r00tSecret" not in text and "MINIO_ROOT_PASSWORD" not in text


def test_the_role_refuses_to_run_without_the_binaries_sha256(tmp_path: Path) -> None:
    playbook = textwrap.dedent("""\
        - hosts: minio
          connection: local
          gather_facts: true
          vars:
            edgelab_credentials_dir: /nonexistent
          roles: [minio]
        """)
    proc = run(tmp_path, playbook, {})
    assert proc.returncode != 0
    assert "minio_binary_sha256 and minio_mc_sha256 are the lowercase hex sha256" in proc.stdout
    assert not Path("/nonexistent").exists()
