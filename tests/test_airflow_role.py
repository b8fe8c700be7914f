"""Role airflow's files rendered by Ansible and read by Airflow itself (the Airflow of
the role's lock for the controller's Python, tests/test_airflow_dag.py's venv): every
component gets the same JWT secret, execution API URL, fernet key and database URL
from airflow.cfg; a database password with URL-special characters survives; a fernet
key of the role's alphabet and length is one Airflow accepts; the auth manager's
password file holds the admin; the units run `airflow <component>` as user airflow
with the environment file and no secret on their command line. The running service
is checked on a lab host by molecule/mlops/verify_airflow.yml."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.labtools import REPO, ansible_playbook
from test_airflow_dag import airflow_python, in_airflow  # noqa: F401 - the fixture is used by name

ROLE = REPO / "roles" / "airflow"
PASSWORD = "p@ss/w:rd%20?#x"  # characters a URL's userinfo must escape
FERNET = "A" * 42 + "_"  # the last of 43 characters carries 2 bits that decoding drops


def render(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    secrets = {"admin_password": "admin-secret-1", "jwt_secret": "jwt-secret-1", "api_secret_key": "api-secret-1",
               "fernet_key": FERNET}
    playbook = [{
        "name": "Render role airflow's templates", "hosts": "localhost", "gather_facts": False,
        "vars_files": [str(ROLE / "defaults" / "main.yml"), str(ROLE / "vars" / "main.yml")],
        "vars": {"edgelab_credentials_dir": str(tmp_path / "credentials"), "edgelab_mlops_host": "localhost",
                 "edgelab_mlops_address": "192.0.2.10", "edgelab_mlflow_url": "http://192.0.2.10:5000",
                 "airflow_secrets": secrets, "airflow_db_password": PASSWORD, "ansible_host": "192.0.2.10",
                 "ansible_python_interpreter": sys.executable},
        "tasks": [
            {"name": "Render", "ansible.builtin.template": {"src": str(ROLE / "templates" / "{{ item.0 }}"),
                                                             "dest": str(out) + "/{{ item.1 }}", "mode": "0600"},
             "loop": [["airflow.cfg.j2", "airflow.cfg"], ["airflow.env.j2", "airflow.env"],
                      ["simple_auth_manager_passwords.json.j2", "passwords.json"]]},
            {"name": "Render the units", "ansible.builtin.template": {
                "src": str(ROLE / "templates" / "airflow-component.service.j2"),
                "dest": str(out) + "/airflow-{{ item }}.service", "mode": "0600"},
             "loop": "{{ airflow_components }}"},
        ]}]
    (tmp_path / "render.yml").write_text(yaml.safe_dump(playbook, sort_keys=False))
    run = ansible_playbook("-i", "localhost,", "-c", "local", str(tmp_path / "render.yml"))
    assert run.rc == 0, run.output[-3000:]
    return out


def test_every_component_reads_the_same_secrets(airflow_python: Path, tmp_path: Path) -> None:
    out = render(tmp_path)
    code = ("import json\n"
            "from airflow.configuration import conf\n"
            "from cryptography.fernet import Fernet\n"
            "from sqlalchemy.engine import make_url\n"
            "url = make_url(conf.get('database', 'sql_alchemy_conn'))\n"
            "token = Fernet(conf.get('core', 'fernet_key').encode()).encrypt(b'x')\n"
            "print(json.dumps({'jwt': conf.get('api_auth', 'jwt_secret'),"
            " 'exec': conf.get('core', 'execution_api_server_url'),"
            " 'executor': conf.get('core', 'executor'),"
            " 'secret': conf.get('api', 'secret_key'),"
            " 'paused': conf.getboolean('core', 'dags_are_paused_at_creation'),"
            " 'password': url.password, 'user': url.username, 'host': url.host, 'db': url.database,"
            " 'passwords_file': conf.get('core', 'simple_auth_manager_passwords_file'),"
            " 'users': conf.get('core', 'simple_auth_manager_users'), 'fernet_ok': bool(token)}))\n")
    done = in_airflow(airflow_python, code, tmp_path, AIRFLOW_CONFIG=str(out / "airflow.cfg"))
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"jwt": "jwt-secret-1", "exec": "http://127.0.0.1:8080/execution/", "executor": "LocalExecutor",
                    "secret": "api-secret-1", "paused": False, "password": PASSWORD, "user": "airflow",
                    "host": "127.0.0.1", "db": "airflow",
                    "passwords_file": "/var/lib/airflow/simple_auth_manager_passwords.json",
                    "users": "admin:admin", "fernet_ok": True}
    assert json.loads((out / "passwords.json").read_text()) == {"admin": "admin-secret-1"}


def test_units_and_environment(tmp_path: Path) -> None:
    out = render(tmp_path)
    env = dict(line.split("=", 1) for line in (out / "airflow.env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["AIRFLOW_CONFIG"] == "/etc/edgelab/airflow/config.cfg"
    assert env["EDGELAB_TRAIN_BIN"] == "/opt/edgelab/train/bin/edgelab-train"
    assert env["MLFLOW_TRACKING_URI"] == "http://192.0.2.10:5000"
    assert env["EDGELAB_MLFLOW_PASSWORD_FILE"] == "/etc/edgelab/airflow/mlflow-password"
    assert not any(secret in (out / "airflow.env").read_text() for secret in ("secret-1", PASSWORD))
    for component in ("api-server", "scheduler", "dag-processor", "triggerer"):
        unit = (out / f"airflow-{component}.service").read_text()
        lines = dict(line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#"))
        assert lines["ExecStart"] == f"/opt/edgelab/airflow/bin/airflow {component}"
        assert lines["User"] == "airflow" and lines["NoNewPrivileges"] == "true"
        assert lines["EnvironmentFile"] == "/etc/edgelab/airflow/environment"
        assert "secret" not in unit


@pytest.mark.parametrize("last", list(string.ascii_letters + string.digits + "-_"))
def test_fernet_keys_of_the_roles_alphabet_decode_to_32_bytes(last: str) -> None:
    """The role generates 43 characters of [A-Za-z0-9-_] and appends "="; whatever the
    last character, Python's URL-safe base64 (which cryptography's Fernet uses) gives
    32 bytes."""
    import base64

    assert len(base64.urlsafe_b64decode("A" * 42 + last + "=")) == 32


def test_lock_pins_airflow_for_each_host_python() -> None:
    for python in ("3.11", "3.12"):
        lock = (ROLE / "files" / f"requirements-py{python}.txt").read_text()
        pins = [line.split(" ")[0] for line in lock.splitlines() if "==" in line and not line.startswith("#")]
        assert "apache-airflow==3.3.2" in pins
        assert any(p.startswith("apache-airflow-providers-postgres==") for p in pins)
        assert all("==" in p for p in pins)
    done = subprocess.run(["git", "-C", str(REPO), "check-ignore", "-q", str(ROLE / "files")], check=False)
    assert done.returncode == 1  # the locks are committed, not ignored
