"""Unit tests for library/kafka_topic.py.

They pin the exact kafka-python admin-client calls the module makes (constructor
arguments, Metadata/DescribeConfigs reads, then only the writes needed) against a
recording stand-in for ``KafkaAdminClient`` whose answers have the shapes a real
broker gives (recorded from Tansu 0.6.0 with kafka-python 3.0.12; the same flows
run against a real Tansu broker in tests/integration/test_kafka_topic_tansu.py).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import ClassVar

import pytest
from ansible.module_utils.testing import patch_module_args
from kafka.errors import (
    IncompatibleBrokerVersion,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kafka_topic", ROOT / "library" / "kafka_topic.py")
kafka_topic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kafka_topic)

SERVERS = ["10.0.0.1:9092"]


class FakeAdmin:
    """Records every call as (method, args, kwargs); answers from `topics`."""

    instances: ClassVar[list[FakeAdmin]] = []
    topics: ClassVar[dict] = {}
    fail_on_init: Exception | None = None
    fail_on: ClassVar[dict] = {}

    def __init__(self, **config):
        if FakeAdmin.fail_on_init is not None:
            raise FakeAdmin.fail_on_init
        self.config = config
        self.calls = []
        FakeAdmin.instances.append(self)

    def _record(self, method, *args, **kwargs):
        self.calls.append((method, args, kwargs))
        if method in FakeAdmin.fail_on:
            raise FakeAdmin.fail_on[method]

    def describe_topics(self, topics):
        self._record("describe_topics", topics)
        out = []
        for name in topics:
            t = FakeAdmin.topics.get(name)
            if t is None:
                out.append({"error_code": 3, "name": name, "topic_id": None, "is_internal": False,
                            "partitions": [], "authorized_operations": None})
            else:
                out.append({"error_code": 0, "name": name, "topic_id": "01a2", "is_internal": False,
                            "partitions": [{"error_code": 0, "partition_index": i, "leader_id": 111,
                                            "leader_epoch": 0, "replica_nodes": list(range(t["rf"])),
                                            "isr_nodes": list(range(t["rf"])), "offline_replicas": []}
                                           for i in range(t["partitions"])],
                            "authorized_operations": None})
        return out

    def describe_configs(self, resources, config_filter="modified"):
        self._record("describe_configs", [(r.resource_type.name, r.name, r.configs) for r in resources],
                     config_filter=config_filter)
        return {"topic": {r.name: {k: {"value": v, "read_only": False, "config_source": "DEFAULT_CONFIG",
                                       "is_sensitive": False, "synonyms": []}
                                   for k, v in FakeAdmin.topics[r.name]["configs"].items()}
                          for r in resources}}

    def create_topics(self, new_topics, timeout_ms=None):
        self._record("create_topics", new_topics, timeout_ms=timeout_ms)
        for name, spec in new_topics.items():
            FakeAdmin.topics[name] = {"partitions": spec["num_partitions"], "rf": spec.get("replication_factor", 1),
                                      "configs": dict(spec.get("configs", {}))}

    def wait_for_topics(self, names, timeout_ms=10000):
        self._record("wait_for_topics", names, timeout_ms=timeout_ms)

    def create_partitions(self, topic_partitions, timeout_ms=None):
        self._record("create_partitions", topic_partitions, timeout_ms=timeout_ms)
        for name, count in topic_partitions.items():
            FakeAdmin.topics[name]["partitions"] = count

    def alter_configs(self, resources, raise_on_unknown=True):
        self._record("alter_configs", [(r.resource_type.name, r.name, r.configs) for r in resources],
                     raise_on_unknown=raise_on_unknown)
        for r in resources:
            FakeAdmin.topics[r.name]["configs"].update(r.configs)

    def delete_topics(self, topics, timeout_ms=None):
        self._record("delete_topics", topics, timeout_ms=timeout_ms)
        for name in topics:
            FakeAdmin.topics.pop(name)

    def close(self):
        self.calls.append(("close", (), {}))


@pytest.fixture(autouse=True)
def fake_admin(monkeypatch):
    FakeAdmin.instances = []
    FakeAdmin.topics = {}
    FakeAdmin.fail_on_init = None
    FakeAdmin.fail_on = {}
    monkeypatch.setattr(kafka_topic, "KafkaAdminClient", FakeAdmin)
    return FakeAdmin


def run_module(capsys, **args):
    args.setdefault("bootstrap_servers", SERVERS)
    with patch_module_args(args), pytest.raises(SystemExit):
        kafka_topic.main()
    return json.loads(capsys.readouterr().out)


def calls():
    assert len(FakeAdmin.instances) == 1
    return FakeAdmin.instances[0].calls


def test_creates_a_missing_topic_with_exact_calls(capsys):
    result = run_module(capsys, name="edgelab.frames", partitions=12, replication_factor=1,
                        configs={"retention.ms": 3600000, "max.message.bytes": "8388608"})
    assert FakeAdmin.instances[0].config == {
        "bootstrap_servers": SERVERS, "client_id": "edgelab-kafka_topic", "request_timeout_ms": 30000,
        "bootstrap_timeout_ms": 30000, "security_protocol": "PLAINTEXT"}
    topic_configs = ("TOPIC", "edgelab.frames", None)
    assert calls() == [
        ("describe_topics", (["edgelab.frames"],), {}),
        ("create_topics", ({"edgelab.frames": {"num_partitions": 12, "replication_factor": 1,
                                               "configs": {"retention.ms": "3600000",
                                                           "max.message.bytes": "8388608"}}},),
         {"timeout_ms": 30000}),
        ("wait_for_topics", (["edgelab.frames"],), {"timeout_ms": 30000}),
        ("describe_topics", (["edgelab.frames"],), {}),
        ("describe_configs", ([topic_configs],), {"config_filter": "all"}),
        ("close", (), {}),
    ]
    assert result["changed"] is True
    assert result["topic"] == {"name": "edgelab.frames", "partitions": 12, "replication_factor": 1,
                               "configs": {"max.message.bytes": "8388608", "retention.ms": "3600000"}}
    assert result["actions"] == ["create edgelab.frames (12 partitions, replication factor 1)"]


def test_an_unchanged_topic_is_only_read(capsys):
    FakeAdmin.topics["t"] = {"partitions": 3, "rf": 1, "configs": {"retention.ms": "60000", "other": "x"}}
    result = run_module(capsys, name="t", partitions=3, replication_factor=1, configs={"retention.ms": 60000})
    assert calls() == [
        ("describe_topics", (["t"],), {}),
        ("describe_configs", ([("TOPIC", "t", None)],), {"config_filter": "all"}),
        ("close", (), {}),
    ]
    assert result["changed"] is False
    assert result["actions"] == []
    assert result["topic"]["configs"] == {"retention.ms": "60000"}


def test_no_configs_means_no_describe_configs(capsys):
    FakeAdmin.topics["t"] = {"partitions": 2, "rf": 1, "configs": {}}
    result = run_module(capsys, name="t", partitions=2)
    assert [c[0] for c in calls()] == ["describe_topics", "close"]
    assert result["changed"] is False


def test_grows_partitions_and_sets_changed_configs_only(capsys):
    FakeAdmin.topics["t"] = {"partitions": 3, "rf": 1, "configs": {"retention.ms": "60000", "cleanup.policy": "delete"}}
    result = run_module(capsys, name="t", partitions=6,
                        configs={"retention.ms": 120000, "cleanup.policy": "delete", "flag": True}, _ansible_diff=True)
    assert calls()[2:] == [
        ("create_partitions", ({"t": 6},), {"timeout_ms": 30000}),
        ("alter_configs", ([("TOPIC", "t", {"flag": "true", "retention.ms": "120000"})],), {"raise_on_unknown": False}),
        ("close", (), {}),
    ]
    assert result["changed"] is True
    assert result["actions"] == ["grow t from 3 to 6 partitions", "set flag=true", "set retention.ms=120000"]
    assert result["diff"]["before"]["partitions"] == 3
    assert result["diff"]["after"]["partitions"] == 6
    assert result["diff"]["after"]["configs"] == {"cleanup.policy": "delete", "flag": "true", "retention.ms": "120000"}


def test_check_mode_reads_but_never_writes(capsys):
    FakeAdmin.topics["t"] = {"partitions": 3, "rf": 1, "configs": {"retention.ms": "60000"}}
    result = run_module(capsys, name="t", partitions=4, configs={"retention.ms": 1}, _ansible_check_mode=True,
                        _ansible_diff=True)
    assert [c[0] for c in calls()] == ["describe_topics", "describe_configs", "close"]
    assert result["changed"] is True
    assert result["diff"] == {"before": {"name": "t", "partitions": 3, "replication_factor": 1,
                                         "configs": {"retention.ms": "60000"}},
                              "after": {"name": "t", "partitions": 4, "replication_factor": 1,
                                        "configs": {"retention.ms": "1"}}}
    assert FakeAdmin.topics["t"]["partitions"] == 3


def test_check_mode_on_a_missing_topic_creates_nothing(capsys):
    result = run_module(capsys, name="new", partitions=2, _ansible_check_mode=True)
    assert [c[0] for c in calls()] == ["describe_topics", "close"]
    assert result["changed"] is True
    assert "new" not in FakeAdmin.topics


def test_shrinking_partitions_fails_clearly_without_writing(capsys):
    FakeAdmin.topics["t"] = {"partitions": 6, "rf": 1, "configs": {}}
    result = run_module(capsys, name="t", partitions=3)
    assert result["failed"] is True
    assert "Kafka cannot remove partitions" in result["msg"]
    assert "has 6 partitions and 3 were asked for" in result["msg"]
    assert [c[0] for c in calls()] == ["describe_topics", "close"]


def test_a_different_replication_factor_fails_clearly(capsys):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    result = run_module(capsys, name="t", partitions=1, replication_factor=3)
    assert result["failed"] is True
    assert "replication factor 1 and 3 was asked for" in result["msg"]


def test_a_broker_without_create_partitions_fails_clearly(capsys):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    FakeAdmin.fail_on["create_partitions"] = IncompatibleBrokerVersion(
        "Kafka broker does not support the 'CreatePartitionsRequest' Kafka protocol.")
    result = run_module(capsys, name="t", partitions=2)
    assert result["failed"] is True
    assert "does not implement CreatePartitions" in result["msg"]


def test_creating_without_partitions_fails(capsys):
    result = run_module(capsys, name="t")
    assert result["failed"] is True
    assert "give partitions to create it" in result["msg"]


def test_absent_deletes_an_existing_topic(capsys):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    result = run_module(capsys, name="t", state="absent")
    assert calls() == [
        ("describe_topics", (["t"],), {}),
        ("delete_topics", (["t"],), {"timeout_ms": 30000}),
        ("close", (), {}),
    ]
    assert result["changed"] is True and result["topic"] == {}


def test_absent_on_a_missing_topic_changes_nothing(capsys):
    result = run_module(capsys, name="t", state="absent")
    assert [c[0] for c in calls()] == ["describe_topics", "close"]
    assert result["changed"] is False


def test_an_unreachable_broker_is_a_failure_not_an_absent_topic(capsys):
    FakeAdmin.fail_on_init = KafkaTimeoutError("Unable to bootstrap from 10.0.0.1:9092")
    for state in ("present", "absent"):
        result = run_module(capsys, name="t", partitions=1, state=state, timeout=5)
        assert result["failed"] is True
        assert result["msg"].startswith("Cannot reach the Kafka brokers at 10.0.0.1:9092 within 5s")


def test_sasl_ssl_arguments_reach_the_client_and_the_password_is_hidden(capsys):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    result = run_module(capsys, name="t", partitions=1, security_protocol="SASL_SSL",
                        sasl_username="admin", sasl_password="s3cret-pw", ssl_cafile="/tmp/ca.crt")
    assert FakeAdmin.instances[0].config == {
        "bootstrap_servers": SERVERS, "client_id": "edgelab-kafka_topic", "request_timeout_ms": 30000,
        "bootstrap_timeout_ms": 30000, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "admin", "sasl_plain_password": "s3cret-pw", "ssl_check_hostname": True,
        "ssl_cafile": "/tmp/ca.crt"}
    assert "s3cret-pw" not in json.dumps(result)


def test_sasl_without_credentials_is_refused(capsys):
    result = run_module(capsys, name="t", partitions=1, security_protocol="SASL_PLAINTEXT")
    assert result["failed"] is True
    assert "sasl_username" in result["msg"]
    assert FakeAdmin.instances == []


def test_authentication_and_authorization_failures_are_distinct(capsys):
    FakeAdmin.fail_on_init = SaslAuthenticationFailedError("Authentication failed")
    result = run_module(capsys, name="t", partitions=1, security_protocol="SASL_PLAINTEXT",
                        sasl_username="admin", sasl_password="x")
    assert result["msg"].startswith("SASL authentication as admin to 10.0.0.1:9092 failed")
    FakeAdmin.fail_on_init = None
    FakeAdmin.fail_on["describe_topics"] = TopicAuthorizationFailedError("denied")
    result = run_module(capsys, name="t", partitions=1)
    assert result["msg"].startswith("The brokers at 10.0.0.1:9092 refused the request for topic t")


@pytest.mark.parametrize("field", ["partitions", "replication_factor"])
def test_counts_below_one_are_refused(capsys, field):
    result = run_module(capsys, name="t", **{field: 0})
    assert result["failed"] is True and field in result["msg"]


def test_documentation_parses_and_matches_the_argument_spec(monkeypatch):
    import yaml

    doc = yaml.safe_load(kafka_topic.DOCUMENTATION)
    yaml.safe_load(kafka_topic.EXAMPLES)
    returned = yaml.safe_load(kafka_topic.RETURN)
    assert set(returned) == {"topic", "actions"}
    captured = {}

    class StopError(Exception):
        pass

    def fake_module(argument_spec, **kwargs):
        captured.update(argument_spec)
        raise StopError

    monkeypatch.setattr(kafka_topic, "AnsibleModule", fake_module)
    with pytest.raises(StopError):
        kafka_topic.main()
    assert set(doc["options"]) == set(captured)
    for name, spec in captured.items():
        assert doc["options"][name]["type"] == spec["type"], name
        assert doc["options"][name].get("default") == spec.get("default"), name
