"""The IMA service's settings (edgelab.ima.config) and its state files (edgelab.ima.store):
every bad setting is one line and exit code 2 from `edgelab-ima serve`; selections,
actions and streams survive a restart, written whole or not at all."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from edgelab.config import ConfigError
from edgelab.ima.cli import main as ima
from edgelab.ima.config import load_config
from edgelab.ima.store import StateStore

Write = Callable[[str], str]

FULL = """\
listen: "127.0.0.1:8010"
prometheus: {url: "http://127.0.0.1:9090", username: edgelab, password_file: PW, query: '{job="node"}'}
kafka:
  bootstrap_servers: ["127.0.0.1:9092", "127.0.0.1:9093"]
  security_protocol: SASL_PLAINTEXT
  sasl_mechanism: SCRAM-SHA-512
  sasl_username: ima
  sasl_password_file: PW
xmpp: {jid: ima@edgelab.test, password_file: PW, ca_file: CA, cluster_agent_jid: cluster-nuc1@edgelab.test}
state_dir: STATE
max_upload_bytes: 2048
profile_window: 30m
profile_step: 5s
slices:
  slice-1: {kpi_query: 'edgelab_latency_p99{slice="slice-1"}', hosts: [node-nuc2, node-nuc3]}
flavors:
  small: {actuator: consumers, instances: 1}
  large: {actuator: consumers, instances: 4, unit: "edgelab-consumer@", timeout: 2}
  slow-link: {actuator: bandwidth, rate_mbit: 10}
  k8s: {actuator: kubernetes, deployment: detector, replicas: 3, namespace: edge}
"""


@pytest.fixture
def write(tmp_path: Path, ca_file: str) -> Write:
    (tmp_path / "pw").write_text("s3cret\n")

    def write_config(text: str) -> str:
        path = tmp_path / "ima.yml"
        path.write_text(text.replace("PW", str(tmp_path / "pw")).replace("CA", ca_file)
                        .replace("STATE", str(tmp_path / "state")))
        return str(path)
    return write_config


def test_full_config(write: Write) -> None:
    cfg = load_config(write(FULL), env={})
    assert cfg.host_port == ("127.0.0.1", 8010)
    assert cfg.prometheus.query == '{job="node"}' and cfg.prometheus.username == "edgelab"
    assert cfg.kafka.servers() == ["127.0.0.1:9092", "127.0.0.1:9093"]
    assert cfg.kafka.topic == "edgelab.metrics.selected" and cfg.kafka.sasl_password == "s3cret"
    assert cfg.xmpp.password == "s3cret" and cfg.xmpp.server == "edgelab.test" and cfg.xmpp.port == 5222
    assert "s3cret" not in repr(cfg)
    assert cfg.max_upload_bytes == 2048 and cfg.profile_window == 1800.0 and cfg.profile_step == 5.0
    assert cfg.slices["slice-1"].hosts == ["node-nuc2", "node-nuc3"]
    assert cfg.flavors["small"].params == {"instances": 1, "unit": "edgelab-consumer@", "timeout": 5.0}
    assert cfg.flavors["large"].params["timeout"] == 2.0
    assert cfg.flavors["k8s"].params == {"deployment": "detector", "replicas": 3, "namespace": "edge",
                                         "kubeconfig": ""}


def test_defaults_and_environment(write: Write) -> None:
    cfg = load_config(write("{}\n"), env={"PROMETHEUS_URL": "http://10.213.0.11:9090"})
    assert cfg.prometheus.url == "http://10.213.0.11:9090" and cfg.prometheus.query == '{__name__=~".+"}'
    assert cfg.listen == "0.0.0.0:8010" and cfg.state_dir == "/var/lib/edgelab-ima"
    assert cfg.max_upload_bytes == 10 * 2**20 and cfg.profile_window == 3600.0
    assert cfg.kafka.servers() == [] and cfg.xmpp.jid == "" and cfg.flavors == {}
    over = load_config(write(FULL), env={"PROMETHEUS_URL": "http://10.213.0.12:9090"})
    assert over.prometheus.url == "http://10.213.0.12:9090" and over.prometheus.username == "edgelab"


@pytest.mark.parametrize(("change", "message"), [
    (("listen: \"127.0.0.1:8010\"", "listen: nowhere"), "listen must be HOST:PORT"),
    (("state_dir: STATE", "state_dir: STATE\ncolour: blue"), "unknown key colour"),
    (("prometheus: {url: \"http://127.0.0.1:9090\", ", "prometheus: {"), "missing required key prometheus.url"),
    (("profile_window: 30m", "profile_window: soon"), "profile_window: 'soon' is not a duration"),
    (("max_upload_bytes: 2048", "max_upload_bytes: -1"), "max_upload_bytes: expected a whole number >= 1"),
    (("security_protocol: SASL_PLAINTEXT", "security_protocol: TLS"), "kafka.security_protocol must be one of"),
    (("bootstrap_servers: [\"127.0.0.1:9092\", ", "bootstrap_servers: [\"kafka\", "), "is not HOST:PORT"),
    (("jid: ima@edgelab.test", "jid: ima"), "xmpp.jid must be a bare JID"),
    (("ca_file: CA", "ca_file: PW"), "holds no PEM certificate"),
    ((", cluster_agent_jid: cluster-nuc1@edgelab.test", ""), "flavor large (actuator consumers) needs "
                                                             "xmpp.cluster_agent_jid"),
    (("actuator: bandwidth, rate_mbit: 10", "actuator: tc, rate_mbit: 10"), "flavors.slow-link.actuator must be"),
    (("actuator: bandwidth, rate_mbit: 10", "actuator: bandwidth"), "actuator bandwidth needs rate_mbit"),
    (("instances: 4,", "instances: many,"), "flavors.large.instances: expected a whole number"),
    (("replicas: 3,", "replicas: 3, ssh_password: x,"), "unknown key flavors.k8s.ssh_password"),
    (("namespace: edge}", "namespace: edge, kubeconfig: /nonexistent/kubeconfig}"),
     "flavors.k8s.kubeconfig /nonexistent/kubeconfig is not a file"),
    (("  small:", "  'small flavor':"), "flavors.small flavor: flavor id 'small flavor' must be"),
    (("hosts: [node-nuc2, node-nuc3]", "hosts: node-nuc2"), "slices.slice-1.hosts: expected a list"),
])
def test_bad_config_is_one_line_and_exit_2(write: Write, change: tuple[str, str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert change[0] in FULL
    path = write(FULL.replace(change[0], change[1]))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(path, env={})
    assert ima(["serve", "--config", path]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("edgelab-ima: config error: ") and message in err[0], err


def test_unreadable_secret_and_missing_file(write: Write, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(FULL)
    (tmp_path / "pw").unlink()
    assert ima(["serve", "--config", path]) == 2
    assert "cannot read kafka.sasl_password_file" in capsys.readouterr().err
    assert ima(["serve", "--config", str(tmp_path / "absent.yml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_state_survives_a_restart_and_is_never_half_written(tmp_path: Path) -> None:
    state = tmp_path / "state"
    store = StateStore(str(state))
    item = {"sliceId": "s1", "sliceFlavor": "small", "metrics": ["a", "b"], "step_seconds": 1.0, "created": 1.0}
    later = {**item, "sliceFlavor": "large", "created": 2.0}
    store.put_selection(item)
    store.put_selection(later)
    store.add_action("s1", {"time": 3.0, "flavor": "large", "status": "applied"})
    store.set_stream("s1", "large")
    again = StateStore(str(state))
    assert again.selection("s1", "small") == item and again.flavors("s1") == ["large", "small"]
    assert again.latest("s1") == later
    assert again.slice_actions("s1") == [{"time": 3.0, "flavor": "large", "status": "applied"}]
    assert again.streams == {"s1": "large"}
    assert json.loads((state / "selections" / "s1" / "small.json").read_text()) == item
    # A value JSON cannot hold raises before anything is replaced; no temporary file stays.
    with pytest.raises(ValueError):
        again.put_selection({**item, "scores": [float("nan")]})
    assert again.selection("s1", "small") == item
    assert sorted(p.name for p in (state / "selections" / "s1").iterdir()) == ["large.json", "small.json"]
    # A damaged file is skipped with a warning, the rest still loads.
    (state / "selections" / "s1" / "large.json").write_text("{not json")
    third = StateStore(str(state))
    assert third.flavors("s1") == ["small"] and third.streams == {}
