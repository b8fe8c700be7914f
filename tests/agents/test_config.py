from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from edgelab.cluster_agent.agent import kafka_settings
from edgelab.config import ConfigError, load_cluster_config, load_node_config

Write = Callable[..., str]


@pytest.fixture
def write(tmp_path: Path, ca_file: str) -> Write:
    """Config text -> a file; PW is the password file's path, CA the test CA's."""
    def write_config(text: str, password: str | None = "s3cret-pw") -> str:
        if password is not None:
            (tmp_path / "pw").write_text(password + "\n")
        path = tmp_path / "agent.yml"
        path.write_text(text.replace("PW", str(tmp_path / "pw")).replace("CA", ca_file))
        return str(path)
    return write_config


NODE = """\
node_name: node-nuc2
password_file: PW
cluster_name: cluster-nuc1
xmpp_domain: 10.213.0.11
ca_file: CA
interval: 2
"""


def test_node_defaults_and_file(write: Write) -> None:
    cfg = load_node_config(write(NODE), env={})
    assert cfg.node_name == "node-nuc2" and cfg.password == "s3cret-pw"
    assert cfg.xmpp_host == "10.213.0.11" and cfg.xmpp_port == 5222
    assert cfg.interval == 2.0 and isinstance(cfg.interval, float)
    assert (cfg.metrics_port, cfg.model_source, cfg.model_window, cfg.scale_unit, cfg.command_max_age) == \
        (9464, "online", 12, "edgelab-consumer@", 10.0)
    assert "s3cret" not in repr(cfg)


def test_node_env_overrides(write: Write) -> None:
    env = {"NODE_NAME": "node-x", "NODE_PASSWORD": "from-env", "CLUSTER_NAME": "cluster-y",
           "EJABBERD_DOMAIN": "xmpp.example", "TELEMETRY_ENDPOINT": "otel:4317",
           "LOCAL_OTEL_ENDPOINT": "http://127.0.0.1:9466/metrics"}
    cfg = load_node_config(write(NODE), env=env)
    assert (cfg.node_name, cfg.password, cfg.cluster_name, cfg.xmpp_domain, cfg.xmpp_host) == \
        ("node-x", "from-env", "cluster-y", "xmpp.example", "xmpp.example")
    assert cfg.telemetry_endpoint == "otel:4317" and cfg.local_otel_endpoint.endswith("/metrics")
    # Env alone is enough for the names and the password.
    cfg = load_node_config(write("ca_file: CA\n", password=None), env=env)
    assert cfg.node_name == "node-x" and cfg.password == "from-env"


@pytest.mark.parametrize(("text", "error"), [
    (NODE + "bogus: 1\n", "unknown key bogus"),
    (NODE + "xmpp_port: '5222'\n", "xmpp_port: expected an integer"),
    (NODE + "xmpp_port: true\n", "xmpp_port: expected an integer"),
    (NODE + "interval: fast\n", "interval: expected a number"),
    (NODE + "interval: 0\n", "interval must be > 0"),
    (NODE + "command_max_age: 0\n", "command_max_age must be > 0"),
    (NODE + "model_source: magic\n", "model_source must be"),
    (NODE + "scale_unit: nginx.service\n", "scale_unit must be"),
    (NODE.replace("node_name: node-nuc2\n", ""), r"missing required key node_name \(or NODE_NAME\)"),
    (NODE.replace("password_file: PW\n", ""), "no password"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: [\n", "not valid YAML"),
    # Names that would connect under another JID, or not at all.
    (NODE.replace("node-nuc2", "a/b"), r"node_name 'a/b' is not an XMPP account name: contains '/'"),
    (NODE.replace("node-nuc2", "node@evil"), "node_name 'node@evil' is not an XMPP account name"),
    (NODE.replace("node-nuc2", "'node nuc2'"), "node_name 'node nuc2' is not an XMPP account name"),
    (NODE.replace("cluster-nuc1", "c:1"), "cluster_name 'c:1' is not an XMPP account name"),
    (NODE.replace("10.213.0.11", "bad domain"), "xmpp_domain must be a DNS name or an IP address, got 'bad domain'"),
    (NODE + "xmpp_host: 'h/x'\n", "xmpp_host must be a DNS name or an IP address"),
    (NODE + "scale_systemctl: \"sudo 'systemctl\"\n", r"scale_systemctl \"sudo 'systemctl\": No closing quotation"),
    (NODE + "scale_systemctl: ''\n", "scale_systemctl is empty"),
    (NODE.replace("ca_file: CA", "ca_file: /nonexistent/edgelab-ca.crt"),
     "ca_file /nonexistent/edgelab-ca.crt does not exist"),
    (NODE.replace("ca_file: CA", "ca_file: PW"), "holds no PEM certificate"),
    (NODE + "ima_jid: ima\n", r"ima_jid must be a bare JID \(account@domain\), got 'ima'"),
    (NODE + "ima_jid: ima@xmpp/res\n", "ima_jid must be a bare JID"),
    (NODE + "ima_jid: 'i ma@xmpp'\n", "ima_jid 'i ma' is not an XMPP account name"),
    (NODE + "ima_jid: ima@bad_domain\n", "ima_jid must be a DNS name or an IP address"),
    (NODE + "ima_jid: cluster-nuc1@10.213.0.11\n", "ima_jid must not be the cluster agent's JID"),
    (NODE + "bandwidth_unit: tc.service\n", "bandwidth_unit must be a systemd template prefix"),
    (NODE + "bandwidth_max_mbit: 0\n", "bandwidth_max_mbit must be > 0"),
], ids=lambda v: v if len(v) < 40 else None)
def test_node_errors(write: Write, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_node_config(write(text), env={})


def test_node_ima_settings(write: Write) -> None:
    cfg = load_node_config(write(NODE), env={})
    assert (cfg.ima_jid, cfg.bandwidth_unit, cfg.bandwidth_max_mbit) == ("", "edgelab-bandwidth@", 10000.0)
    cfg = load_node_config(write(NODE + "ima_jid: IMA@Monitor.Lab\nbandwidth_max_mbit: 100\n"), env={})
    assert (cfg.ima_jid, cfg.bandwidth_max_mbit) == ("ima@monitor.lab", 100.0)


def test_missing_files(write: Write, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_node_config(str(tmp_path / "none.yml"), env={})
    with pytest.raises(ConfigError, match=r"cannot read password_file .*/pw: No such file"):
        load_node_config(write(NODE, password=None), env={})


CLUSTER = """\
cluster_name: cluster-nuc1
password_file: PW
xmpp_domain: 10.213.0.11
ca_file: CA
nodes: [node-nuc2, node-nuc3]
policy: {per_instance: 0.5, max_instances: 4}
actuator: {name: xmpp}
kafka: {bootstrap_servers: "10.213.0.11:9092"}
"""


def test_cluster_config(write: Write) -> None:
    cfg = load_cluster_config(write(CLUSTER), env={"CLUSTER_PASSWORD": "envpw"})
    assert cfg.nodes == ["node-nuc2", "node-nuc3"] and cfg.password == "envpw"
    assert (cfg.policy.name, cfg.policy.per_instance, cfg.policy.max_instances, cfg.policy.down_after) == \
        ("target_instances", 0.5, 4, 3)
    assert (cfg.ima_jid, cfg.command_max_age) == ("", 10.0)
    cfg = load_cluster_config(write(CLUSTER + "ima_jid: ima@10.213.0.11\ncommand_max_age: 4\n"), env={})
    assert (cfg.ima_jid, cfg.command_max_age) == ("ima@10.213.0.11", 4.0)
    assert cfg.kafka.topic == "edgelab.agent.events" and cfg.metrics_port == 9465
    assert (cfg.kafka.security_protocol, cfg.kafka.servers()) == ("PLAINTEXT", ["10.213.0.11:9092"])


def test_cluster_kafka_sasl_ssl_settings(write: Write, tmp_path: Path, ca_file: str) -> None:
    (tmp_path / "kafka-pw").write_text("kafka-secret\n")
    text = CLUSTER.replace('kafka: {bootstrap_servers: "10.213.0.11:9092"}\n', f"""\
kafka:
  bootstrap_servers: "10.213.0.11:9093, 10.213.0.12:9093"
  security_protocol: SASL_SSL
  sasl_mechanism: SCRAM-SHA-256
  sasl_username: cluster-agent
  sasl_password_file: {tmp_path / "kafka-pw"}
  ssl_cafile: {ca_file}
""")
    cfg = load_cluster_config(write(text), env={})
    assert cfg.kafka.sasl_password == "kafka-secret" and "kafka-secret" not in repr(cfg)
    client = kafka_settings(cfg.kafka, "edgelab-cluster-agent").client_config()
    assert client == {"bootstrap_servers": ["10.213.0.11:9093", "10.213.0.12:9093"],
                      "security_protocol": "SASL_SSL", "client_id": "edgelab-cluster-agent",
                      "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "cluster-agent",
                      "sasl_plain_password": "kafka-secret", "ssl_cafile": ca_file}


@pytest.mark.parametrize(("text", "error"), [
    (CLUSTER + "extra: 1\n", "unknown key extra"),
    (CLUSTER.replace("max_instances: 4", "maximum: 4"), "unknown key policy.maximum"),
    (CLUSTER.replace("[node-nuc2, node-nuc3]", "[node-nuc2, 3]"), r"nodes\[1\]: expected a string"),
    (CLUSTER.replace("[node-nuc2, node-nuc3]", "[node-nuc2, 'n/3']"), r"nodes\[1\] 'n/3' is not an XMPP account"),
    (CLUSTER.replace("{name: xmpp}", "{name: kubernetes}"), "actuator.deployment is required"),
    (CLUSTER.replace("max_instances: 4", "min_instances: 5, max_instances: 4"), "min_instances <= max_instances"),
    (CLUSTER.replace("max_instances: 4", "max_instances: 4, cooldown: -1"),
     "policy.cooldown must be from 0 to 3600 seconds, got -1"),
    (CLUSTER.replace("max_instances: 4", "max_instances: 4, cooldown: 3601"), "policy.cooldown must be from 0 to 3600"),
    (CLUSTER.replace("10.213.0.11:9092", "h:x"), "kafka.bootstrap_servers: 'h:x' is not HOST:PORT"),
    (CLUSTER.replace('"10.213.0.11:9092"', '"h:9092", security_protocol: TLS'),
     "kafka.security_protocol must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL, got 'TLS'"),
    (CLUSTER.replace('"10.213.0.11:9092"', '"h:9092", sasl_mechanism: GSSAPI'), "kafka.sasl_mechanism must be"),
    (CLUSTER.replace('"10.213.0.11:9092"', '"h:9092", security_protocol: SASL_SSL'),
     "SASL_SSL needs kafka.sasl_username and kafka.sasl_password_file"),
    (CLUSTER.replace('"10.213.0.11:9092"', '"h:9092", security_protocol: SASL_PLAINTEXT, sasl_username: u, '
                     'sasl_password_file: /nonexistent/kafka-pw'),
     "cannot read kafka.sasl_password_file /nonexistent/kafka-pw: No such file"),
    (CLUSTER.replace('"10.213.0.11:9092"', '"h:9092", sasl_username: u'), "need security_protocol SASL_PLAINTEXT"),
    (CLUSTER.replace('"10.213.0.11:9092"', '"h:9092", ssl_cafile: CA'), "kafka.ssl_cafile needs security_protocol"),
    (CLUSTER.replace('"10.213.0.11:9092"', '"h:9092", security_protocol: SSL, ssl_cafile: /nonexistent/k.crt'),
     "kafka.ssl_cafile /nonexistent/k.crt does not exist"),
    (CLUSTER + "ima_jid: node-nuc3@10.213.0.11\n", "ima_jid 'node-nuc3@10.213.0.11' is one of the nodes"),
    (CLUSTER + "ima_jid: ima@\n", "ima_jid must be a DNS name or an IP address"),
    (CLUSTER + "command_max_age: -1\n", "command_max_age must be > 0"),
], ids=lambda v: v if len(v) < 40 else None)
def test_cluster_errors(write: Write, text: str, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        load_cluster_config(write(text), env={})


TOOLS = ["edgelab-node-agent", "edgelab-cluster-agent"]


def run_tool(tool: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / tool
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60,
                          env=env or {"PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("tool", TOOLS)
def test_entry_point_config_error_exits_2_with_one_line(write: Write, tool: str) -> None:
    proc = run_tool(tool, "--config", write("bogus: 1\n"))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown key bogus" in lines[0], proc.stderr


@pytest.mark.parametrize(("tool", "text"), [("edgelab-node-agent", NODE), ("edgelab-cluster-agent", CLUSTER)])
def test_entry_point_busy_metrics_port_names_the_port(write: Write, tool: str, text: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text += f"metrics_address: 127.0.0.1\nmetrics_port: {port}\n"
        proc = run_tool(tool, "--config", write(text))
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert lines == [f"{tool}: config error: metrics port {port} on 127.0.0.1 is busy (metrics_port)"], proc.stderr


@pytest.mark.parametrize(("tool", "text", "error"), [
    ("edgelab-node-agent", NODE.replace("node-nuc2", "a/b"), "node_name 'a/b' is not an XMPP account name"),
    ("edgelab-node-agent", NODE + "scale_systemctl: \"x 'y\"\n", "No closing quotation"),
    ("edgelab-cluster-agent", CLUSTER.replace("ca_file: CA", "ca_file: /nonexistent/ca.crt"),
     "ca_file /nonexistent/ca.crt does not exist"),
])
def test_entry_point_bad_values_are_one_line(write: Write, tool: str, text: str, error: str) -> None:
    proc = run_tool(tool, "--config", write(text))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{tool}: config error: ") and error in lines[0], proc.stderr


CHILD = """\
import os, subprocess, sys
from edgelab.config import load_cluster_config, load_node_config
load = load_node_config if sys.argv[1] == "node" else load_cluster_config
cfg = load(sys.argv[2])
assert cfg.password == "from-env", cfg.password
print("in-process:", sorted(k for k in os.environ if k.endswith("_PASSWORD")))
sys.stdout.flush()
subprocess.run(["env"], check=True)
"""


@pytest.mark.parametrize(("kind", "var", "text"), [("node", "NODE_PASSWORD", NODE),
                                                    ("cluster", "CLUSTER_PASSWORD", CLUSTER)])
def test_password_from_the_environment_is_not_inherited(write: Write, kind: str, var: str, text: str) -> None:
    path = write(text.replace("password_file: PW\n", ""), password=None)
    env = {"PATH": "/usr/bin:/bin", var: "from-env", "OTHER_PASSWORD": "stays"}
    proc = subprocess.run([sys.executable, "-c", CHILD, kind, path], capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == "in-process: ['OTHER_PASSWORD']"
    assert "OTHER_PASSWORD=stays" in lines[1:]  # the child did get the environment...
    assert "from-env" not in proc.stdout  # ...without the password


def test_password_env_is_left_alone_when_an_explicit_env_is_given(write: Write) -> None:
    env = {"NODE_PASSWORD": "from-env"}
    load_node_config(write(NODE), env=env)
    assert env == {"NODE_PASSWORD": "from-env"}
