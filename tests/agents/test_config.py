from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from edgelab.config import ConfigError, load_cluster_config, load_node_config


def write(tmp_path: Path, text: str, password: str | None = "s3cret-pw") -> str:
    if password is not None:
        (tmp_path / "pw").write_text(password + "\n")
    path = tmp_path / "agent.yml"
    path.write_text(text.replace("PW", str(tmp_path / "pw")))
    return str(path)


NODE = """\
node_name: node-nuc2
password_file: PW
cluster_name: cluster-nuc1
xmpp_domain: 10.213.0.11
ca_file: /etc/edgelab/ca.crt
interval: 2
"""


def test_node_defaults_and_file(tmp_path: Path) -> None:
    cfg = load_node_config(write(tmp_path, NODE), env={})
    assert cfg.node_name == "node-nuc2" and cfg.password == "s3cret-pw"
    assert cfg.xmpp_host == "10.213.0.11" and cfg.xmpp_port == 5222
    assert cfg.interval == 2.0 and isinstance(cfg.interval, float)
    assert (cfg.metrics_port, cfg.model_source, cfg.model_window, cfg.scale_unit) == \
        (9464, "online", 12, "edgelab-consumer@")
    assert "s3cret" not in repr(cfg)


def test_node_env_overrides(tmp_path: Path) -> None:
    env = {"NODE_NAME": "node-x", "NODE_PASSWORD": "from-env", "CLUSTER_NAME": "cluster-y",
           "EJABBERD_DOMAIN": "xmpp.example", "TELEMETRY_ENDPOINT": "otel:4317",
           "LOCAL_OTEL_ENDPOINT": "http://127.0.0.1:9466/metrics"}
    cfg = load_node_config(write(tmp_path, NODE), env=env)
    assert (cfg.node_name, cfg.password, cfg.cluster_name, cfg.xmpp_domain, cfg.xmpp_host) == \
        ("node-x", "from-env", "cluster-y", "xmpp.example", "xmpp.example")
    assert cfg.telemetry_endpoint == "otel:4317" and cfg.local_otel_endpoint.endswith("/metrics")
    # Env alone is enough for the names and the password.
    cfg = load_node_config(write(tmp_path, "ca_file: /ca.crt\n", password=None), env=env)
    assert cfg.node_name == "node-x" and cfg.password == "from-env"


@pytest.mark.parametrize(("text", "error"), [
    (NODE + "bogus: 1\n", "unknown key bogus"),
    (NODE + "xmpp_port: '5222'\n", "xmpp_port: expected an integer"),
    (NODE + "xmpp_port: true\n", "xmpp_port: expected an integer"),
    (NODE + "interval: fast\n", "interval: expected a number"),
    (NODE + "interval: 0\n", "interval must be > 0"),
    (NODE + "model_source: magic\n", "model_source must be"),
    (NODE + "scale_unit: nginx.service\n", "scale_unit must be"),
    (NODE.replace("node_name: node-nuc2\n", ""), r"missing required key node_name \(or NODE_NAME\)"),
    (NODE.replace("password_file: PW\n", ""), "no password"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
])
def test_node_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_node_config(write(tmp_path, text), env={})


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_node_config(str(tmp_path / "none.yml"), env={})
    with pytest.raises(ConfigError, match="cannot read password_file"):
        load_node_config(write(tmp_path, NODE, password=None), env={})


CLUSTER = """\
cluster_name: cluster-nuc1
password_file: PW
xmpp_domain: 10.213.0.11
ca_file: /ca.crt
nodes: [node-nuc2, node-nuc3]
policy: {per_instance: 0.5, max_instances: 4}
actuator: {name: xmpp}
kafka: {bootstrap_servers: "10.213.0.11:9092"}
"""


def test_cluster_config(tmp_path: Path) -> None:
    cfg = load_cluster_config(write(tmp_path, CLUSTER), env={"CLUSTER_PASSWORD": "envpw"})
    assert cfg.nodes == ["node-nuc2", "node-nuc3"] and cfg.password == "envpw"
    assert (cfg.policy.name, cfg.policy.per_instance, cfg.policy.max_instances, cfg.policy.down_after) == \
        ("target_instances", 0.5, 4, 3)
    assert cfg.kafka.topic == "edgelab.agent.events" and cfg.metrics_port == 9465


@pytest.mark.parametrize(("text", "error"), [
    (CLUSTER + "extra: 1\n", "unknown key extra"),
    (CLUSTER.replace("max_instances: 4", "maximum: 4"), "unknown key policy.maximum"),
    (CLUSTER.replace("[node-nuc2, node-nuc3]", "[node-nuc2, 3]"), r"nodes\[1\]: expected a string"),
    (CLUSTER.replace("{name: xmpp}", "{name: kubernetes}"), "actuator.deployment is required"),
    (CLUSTER.replace("max_instances: 4", "min_instances: 5, max_instances: 4"), "min_instances <= max_instances"),
])
def test_cluster_errors(tmp_path: Path, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_cluster_config(write(tmp_path, text), env={})


@pytest.mark.parametrize("tool", ["edgelab-node-agent", "edgelab-cluster-agent"])
def test_entry_point_config_error_exits_2_with_one_line(tmp_path: Path, tool: str) -> None:
    path = write(tmp_path, "bogus: 1\n")
    exe = Path(sys.executable).parent / tool
    proc = subprocess.run([str(exe), "--config", path], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key bogus" in lines[0], proc.stderr
