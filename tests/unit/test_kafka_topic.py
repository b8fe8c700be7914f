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
import threading
import time
from pathlib import Path
from typing import ClassVar

import pytest
from ansible.module_utils.testing import patch_module_args
from kafka import errors as kafka_errors
from kafka.admin import KafkaAdminClient
from kafka.errors import (
    IncompatibleBrokerVersion,
    KafkaTimeoutError,
    SaslAuthenticationFailedError,
    TopicAuthorizationFailedError,
)
from kafka.protocol.admin import (
    CreatePartitionsResponse,
    CreateTopicsResponse,
    DeleteTopicsResponse,
    IncrementalAlterConfigsResponse,
)

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kafka_topic", ROOT / "library" / "kafka_topic.py")
kafka_topic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kafka_topic)

SERVERS = ["10.0.0.1:9092"]


class FakeAdmin:
    """Records every call as (method, args, kwargs); answers from `topics`.

    The writes answer as kafka-python 3.0.12 does: each response is built from the real
    kafka-python response class and post-processed the way KafkaAdminClient does it, so a
    broker error in `errors` comes back inside the returned value (raise_errors=False, and
    always for alter_configs) or is raised as the matching KafkaError (raise_errors=True).
    """

    instances: ClassVar[list[FakeAdmin]] = []
    topics: ClassVar[dict] = {}
    fail_on_init: Exception | None = None
    fail_on: ClassVar[dict] = {}
    errors: ClassVar[dict] = {}  # (method, topic) -> (error code, broker message)

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

    @staticmethod
    def _error(method, name):
        return FakeAdmin.errors.get((method, name), (0, None))

    @staticmethod
    def _raise_first_error(request, response, codes):
        # kafka-python's _send_request_to_controller with raise_errors=True.
        for code in codes:
            if code != 0:
                raise kafka_errors.for_code(code)(f"Request '{request}' failed with response '{response}'.")

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

    def create_topics(self, new_topics, timeout_ms=None, raise_errors=True):
        self._record("create_topics", new_topics, timeout_ms=timeout_ms, raise_errors=raise_errors)
        results = []
        for name, spec in new_topics.items():
            code, message = self._error("create_topics", name)
            results.append(CreateTopicsResponse.CreatableTopicResult(
                name=name, error_code=code, error_message=message, num_partitions=spec["num_partitions"],
                replication_factor=spec.get("replication_factor", -1)))
            if code == 0:
                FakeAdmin.topics[name] = {"partitions": spec["num_partitions"],
                                          "rf": spec.get("replication_factor", 1),
                                          "configs": dict(spec.get("configs", {}))}
        response = CreateTopicsResponse(throttle_time_ms=0, topics=results)
        if raise_errors:
            self._raise_first_error("CreateTopicsRequest", response, [r.error_code for r in results])
        answer = response.to_dict()
        answer.pop("throttle_time_ms")
        for topic in answer["topics"]:
            topic.pop("configs", None)
        return answer

    def wait_for_topics(self, names, timeout_ms=10000):
        self._record("wait_for_topics", names, timeout_ms=timeout_ms)

    def create_partitions(self, topic_partitions, timeout_ms=None, raise_errors=True):
        self._record("create_partitions", topic_partitions, timeout_ms=timeout_ms, raise_errors=raise_errors)
        results = []
        for name, count in topic_partitions.items():
            code, message = self._error("create_partitions", name)
            results.append(CreatePartitionsResponse.CreatePartitionsTopicResult(
                name=name, error_code=code, error_message=message))
            if code == 0:
                FakeAdmin.topics[name]["partitions"] = count
        response = CreatePartitionsResponse(throttle_time_ms=0, results=results)
        if raise_errors:
            self._raise_first_error("CreatePartitionsRequest", response, [r.error_code for r in results])
        return response

    def alter_configs(self, resources, raise_on_unknown=True):
        self._record("alter_configs", [(r.resource_type.name, r.name, r.configs) for r in resources],
                     raise_on_unknown=raise_on_unknown)
        results = []
        for r in resources:
            code, message = self._error("alter_configs", r.name)
            results.append(IncrementalAlterConfigsResponse.AlterConfigsResourceResponse(
                error_code=code, error_message=message, resource_type=r.resource_type.value,
                resource_name=r.name))
            if code == 0:
                FakeAdmin.topics[r.name]["configs"].update(r.configs)
        # kafka-python never raises here: it returns {'topic': {name: 'OK' or the error's text}}.
        return KafkaAdminClient._alter_configs_process_responses(results)

    def delete_topics(self, topics, timeout_ms=None, raise_errors=True):
        self._record("delete_topics", topics, timeout_ms=timeout_ms, raise_errors=raise_errors)
        results = []
        for name in topics:
            code, message = self._error("delete_topics", name)
            results.append(DeleteTopicsResponse.DeletableTopicResult(name=name, error_code=code,
                                                                     error_message=message))
            if code == 0:
                FakeAdmin.topics.pop(name)
        response = DeleteTopicsResponse(throttle_time_ms=0, responses=results)
        if raise_errors:
            self._raise_first_error("DeleteTopicsRequest", response, [r.error_code for r in results])
        answer = response.to_dict()
        answer.pop("throttle_time_ms")
        answer["topics"] = answer.pop("responses")
        return answer

    def close(self):
        self.calls.append(("close", (), {}))


@pytest.fixture(autouse=True)
def fake_admin(monkeypatch):
    FakeAdmin.instances = []
    FakeAdmin.topics = {}
    FakeAdmin.fail_on_init = None
    FakeAdmin.fail_on = {}
    FakeAdmin.errors = {}
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
         {"timeout_ms": 30000, "raise_errors": False}),
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
        ("create_partitions", ({"t": 6},), {"timeout_ms": 30000, "raise_errors": False}),
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
        ("delete_topics", (["t"],), {"timeout_ms": 30000, "raise_errors": False}),
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


def test_sasl_ssl_arguments_reach_the_client_and_the_password_is_hidden(capsys, tmp_path):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    cafile = tmp_path / "ca.crt"
    cafile.write_text("-----BEGIN CERTIFICATE-----\n")
    result = run_module(capsys, name="t", partitions=1, security_protocol="SASL_SSL",
                        sasl_username="admin", sasl_password="s3cret-pw", ssl_cafile=str(cafile))
    assert FakeAdmin.instances[0].config == {
        "bootstrap_servers": SERVERS, "client_id": "edgelab-kafka_topic", "request_timeout_ms": 30000,
        "bootstrap_timeout_ms": 30000, "security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "admin", "sasl_plain_password": "s3cret-pw", "ssl_check_hostname": True,
        "ssl_cafile": str(cafile)}
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


# Broker errors come back inside kafka-python's answers: each must fail the task, naming
# the topic and the settings, and never be reported as a change.

def test_a_config_the_broker_refuses_fails_naming_topic_and_setting(capsys):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {"retention.ms": "60000"}}
    FakeAdmin.errors[("alter_configs", "t")] = (40, "Invalid value abc for configuration retention.ms")
    result = run_module(capsys, name="t", partitions=1, configs={"retention.ms": "abc"})
    assert [c[0] for c in calls()] == ["describe_topics", "describe_configs", "alter_configs", "close"]
    assert result["failed"] is True and "changed" not in result
    assert result["msg"] == ("The brokers refused to set retention.ms=abc on topic t: [Error 40] "
                             "InvalidConfigurationError: Invalid value abc for configuration retention.ms")
    assert FakeAdmin.topics["t"]["configs"] == {"retention.ms": "60000"}


def test_an_authorization_error_on_alter_configs_fails(capsys):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    FakeAdmin.errors[("alter_configs", "t")] = (29, None)
    result = run_module(capsys, name="t", configs={"cleanup.policy": "compact", "retention.ms": 5})
    assert result["failed"] is True
    assert result["msg"].startswith("The brokers refused to set cleanup.policy=compact, retention.ms=5 on topic t: "
                                    "[Error 29] TopicAuthorizationFailedError")


def test_a_refused_creation_fails_naming_the_settings(capsys):
    FakeAdmin.errors[("create_topics", "t")] = (38, "Replication factor: 3 larger than available brokers: 1.")
    result = run_module(capsys, name="t", partitions=2, replication_factor=3, configs={"retention.ms": 1000})
    assert [c[0] for c in calls()] == ["describe_topics", "create_topics", "close"]
    assert result["failed"] is True
    assert result["msg"] == (
        "The brokers refused to create topic t with partitions=2, replication_factor=3, configs retention.ms=1000: "
        "[Error 38] InvalidReplicationFactorError: Replication factor: 3 larger than available brokers: 1.")


def test_a_refused_partition_growth_fails(capsys):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    FakeAdmin.errors[("create_partitions", "t")] = (37, "Topic currently has 1 partitions, 1000000 exceeds the limit")
    result = run_module(capsys, name="t", partitions=1000000)
    assert result["failed"] is True
    assert result["msg"].startswith("The brokers refused to grow topic t to partitions=1000000: [Error 37] "
                                    "InvalidPartitionsError: Topic currently has 1 partitions")
    assert FakeAdmin.topics["t"]["partitions"] == 1


def test_a_refused_deletion_fails_and_an_already_deleted_topic_does_not(capsys):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    FakeAdmin.errors[("delete_topics", "t")] = (73, "Topic deletion is disabled.")
    result = run_module(capsys, name="t", state="absent")
    assert result["failed"] is True
    assert result["msg"] == ("The brokers refused to delete topic t: [Error 73] TopicDeletionDisabledError: "
                             "Topic deletion is disabled.")
    # Deleted by someone else between the read and the delete: the topic is absent, as asked.
    FakeAdmin.instances = []
    FakeAdmin.errors[("delete_topics", "t")] = (3, "This server does not host this topic-partition.")
    result = run_module(capsys, name="t", state="absent")
    assert result["changed"] is True and "failed" not in result


def test_a_created_topic_that_never_gets_leaders_fails_clearly(capsys):
    FakeAdmin.fail_on["wait_for_topics"] = KafkaTimeoutError("Topics not ready after 2000ms: {'t': 'p0=no leader'}")
    result = run_module(capsys, name="t", partitions=1, timeout=2)
    assert result["failed"] is True
    assert result["msg"].startswith("Topic t was created but is not ready (no leader for every partition) within 2s")


# Bad input: one line naming the problem, before any connection.

@pytest.mark.parametrize(("args", "expected"), [
    ({"bootstrap_servers": ["h:x"]}, "bootstrap_servers entry 'h:x' is not host:port with a port from 1 to 65535"),
    ({"bootstrap_servers": []}, "bootstrap_servers is empty: give at least one broker as host:port"),
    ({"bootstrap_servers": ["kafka1"]}, "bootstrap_servers entry 'kafka1' is not host:port"),
    ({"bootstrap_servers": ["h:70000"]}, "bootstrap_servers entry 'h:70000' is not host:port"),
    ({"bootstrap_servers": ["::1:9092"]}, "bootstrap_servers entry '::1:9092' is not host:port"),
    ({"name": ""}, "name is empty: give the topic name"),
    ({"name": "a/b"}, "name 'a/b' is not a valid Kafka topic name"),
    ({"name": ".."}, "name '..' is not a valid Kafka topic name"),
    ({"name": "x" * 250}, "is not a valid Kafka topic name: use 1 to 249 of the characters"),
    ({"configs": {"retention.ms": None}}, "configs.retention.ms is null: give it a value"),
    ({"configs": {"retention.ms": [1]}}, "configs.retention.ms is a list: give a string, number or boolean"),
    ({"timeout": 0}, "timeout must be 1 second or more (got 0)"),
    ({"security_protocol": "SSL", "ssl_cafile": "/nonexistent/ca.crt"},
     "ssl_cafile /nonexistent/ca.crt cannot be read: No such file or directory"),
])
def test_bad_input_is_one_clear_line_before_any_connection(capsys, args, expected):
    result = run_module(capsys, **dict({"name": "t", "partitions": 1}, **args))
    assert result["failed"] is True
    assert expected in result["msg"]
    assert "\n" not in result["msg"] and "exception" not in result
    assert FakeAdmin.instances == []


def test_good_server_forms_are_accepted(capsys):
    servers = ["kafka1.example.org:9092", "10.213.0.11:9093", "[2001:db8::1]:9092"]
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    result = run_module(capsys, name="t", partitions=1, bootstrap_servers=servers)
    assert result["changed"] is False
    assert FakeAdmin.instances[0].config["bootstrap_servers"] == servers


def test_an_unexpected_error_is_one_line_not_a_traceback(capsys):
    FakeAdmin.fail_on["describe_topics"] = RuntimeError("Failed to find active controller id!")
    result = run_module(capsys, name="t", partitions=1)
    assert result["failed"] is True
    assert result["msg"] == ("kafka_topic failed for topic t at 10.0.0.1:9092 while reading the metadata of topic t: "
                             "RuntimeError: Failed to find active controller id!")


# One deadline around the whole work: a client call that never returns fails after `timeout`.

class ReleasedError(Exception):
    """Ends a stuck call's thread once its test is over (so it touches no later test's state)."""


@pytest.fixture
def never():
    """stuck(): a call that blocks until the test's teardown, then raises ReleasedError."""
    event = threading.Event()

    def stuck(*_args, **_kwargs):
        event.wait(60)
        raise ReleasedError

    yield stuck
    event.set()


def test_a_request_that_never_returns_fails_at_the_deadline(capsys, never, monkeypatch):
    FakeAdmin.topics["t"] = {"partitions": 1, "rf": 1, "configs": {}}
    monkeypatch.setattr(FakeAdmin, "describe_configs", never)
    started = time.monotonic()
    result = run_module(capsys, name="t", partitions=1, configs={"retention.ms": 1}, timeout=1)
    elapsed = time.monotonic() - started
    assert result["failed"] is True
    assert result["msg"] == ("The Kafka brokers at 10.0.0.1:9092 did not finish the work on topic t within 1s "
                             "(still reading the configs of topic t).")
    assert 0.9 < elapsed < 4


def test_a_write_that_never_returns_says_what_was_requested(capsys, never, monkeypatch):
    monkeypatch.setattr(FakeAdmin, "create_topics", never)
    result = run_module(capsys, name="t", partitions=1, timeout=1)
    assert result["msg"] == (
        "The Kafka brokers at 10.0.0.1:9092 did not finish the work on topic t within 1s (still creating topic t). "
        "Requested before that: create t (1 partitions, replication factor broker default); "
        "run the task again to see what the brokers applied.")


def test_a_connection_that_never_completes_fails_at_the_deadline(capsys, never, monkeypatch):
    monkeypatch.setattr(FakeAdmin, "__init__", never)
    started = time.monotonic()
    result = run_module(capsys, name="t", partitions=1, timeout=1, security_protocol="SSL")
    assert time.monotonic() - started < 4
    assert result["msg"] == (
        "Cannot reach the Kafka brokers at 10.0.0.1:9092 within 1s (still connecting to the brokers (TCP, TLS "
        "handshake, SASL authentication, metadata)): is the broker running, listening there with "
        "security_protocol SSL, and open to this host?")
