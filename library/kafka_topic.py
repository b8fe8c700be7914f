#!/usr/bin/python
# Copyright: edgelab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Declare Kafka topics (partitions, replication factor, configs) through the Kafka admin API."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: kafka_topic
short_description: Declare a Kafka topic (partitions, replication factor, configs) with the kafka-python admin client
description:
  - Makes one topic present with the given number of partitions, replication factor and topic
    configs, or absent, by talking the Kafka protocol to the brokers (kafka-python's
    C(KafkaAdminClient)), C(Metadata) to read the topic, C(DescribeConfigs) to read its configs,
    then only the writes needed (C(CreateTopics), C(CreatePartitions), C(IncrementalAlterConfigs)
    or C(AlterConfigs), C(DeleteTopics)).
  - Idempotent. Partitions can grow, never shrink (Kafka cannot remove partitions; asking for
    fewer fails with a message that says so). The replication factor of an existing topic is
    never changed (that needs a partition reassignment); a different value fails clearly.
  - Configs listed in O(configs) are set; configs not listed are left as they are.
  - A broker that cannot be reached (down, wrong address, firewall) is a failure that names the
    bootstrap servers; it is never taken for "topic absent". So are failed authentication and
    a refused authorization.
  - Usually run on the controller (C(delegate_to=localhost)) with the Python that has
    kafka-python (set C(ansible_python_interpreter) to C({{ ansible_playbook_python }})).
version_added: "1.0.0"
author:
  - edgelab maintainers (!UNKNOWN)
options:
  name:
    description:
      - Topic name, by Kafka's rule 1 to 249 of the characters C(a-z A-Z 0-9 . _ -), not C(.) or C(..).
        Any other name fails before the brokers are contacted.
    type: str
    required: true
    aliases: [topic]
  state:
    description: V(present) creates or updates the topic; V(absent) deletes it (and its data).
    type: str
    choices: [present, absent]
    default: present
  partitions:
    description:
      - Number of partitions. Required to create a topic. On an existing topic a larger number
        adds partitions (keys then map to other partitions); a smaller one fails.
    type: int
  replication_factor:
    description:
      - Replicas per partition. Used when the topic is created; on an existing topic it is only
        compared, and a difference fails. Omitted, the broker's C(default.replication.factor) is
        used on creation and nothing is compared.
    type: int
  configs:
    description:
      - Topic configs to set (C(retention.ms), C(max.message.bytes), C(cleanup.policy), ...).
        Values are compared as strings; booleans become V(true)/V(false). A null value (or a list or
        dict) fails before the brokers are contacted.
      - A setting the brokers refuse (an unknown config, a value out of range) fails the task with the
        broker's message, naming the topic and the settings sent.
    type: dict
    default: {}
  bootstrap_servers:
    description:
      - Brokers to bootstrap from, each as C(host:port) (C([address]:port) for an IPv6 address). At
        least one; an entry without a port from 1 to 65535 fails before any connection.
    type: list
    elements: str
    required: true
  security_protocol:
    description: How the client talks to the listener.
    type: str
    choices: [PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL]
    default: PLAINTEXT
  sasl_mechanism:
    description: SASL mechanism with O(security_protocol=SASL_PLAINTEXT) or O(security_protocol=SASL_SSL).
    type: str
    choices: [SCRAM-SHA-256, SCRAM-SHA-512, PLAIN]
    default: SCRAM-SHA-512
  sasl_username:
    description: SASL user name.
    type: str
  sasl_password:
    description: SASL password.
    type: str
  ssl_cafile:
    description:
      - CA certificate (PEM) that verifies the brokers' certificates with C(SSL)/C(SASL_SSL). A file
        that cannot be read fails before any connection, naming the file.
    type: path
  ssl_check_hostname:
    description: Check that the broker certificate names the host connected to.
    type: bool
    default: true
  timeout:
    description:
      - Seconds the module's whole work may take, from the first connection (TCP, TLS handshake, SASL)
        through the last request. Past it the task fails and says what it was waiting for; a listener
        that accepts connections and never answers (or never completes the TLS handshake) fails after
        this many seconds too.
      - Also the time each request may wait at the broker (C(CreateTopics) and C(DeleteTopics)).
    type: int
    default: 30
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The topic and its configs are read; nothing is written.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details: Before and after show partitions, replication factor and the configs the task manages.
notes:
  - Tansu (the lab's broker) does not implement C(CreatePartitions); growing a topic there fails
    with a message that says so (recreate the topic with O(state=absent) then O(state=present)).
  - Tansu reports every topic config with source C(DEFAULT_CONFIG), so configs are compared by
    value with C(DescribeConfigs) of all configs, never by "modified" filters.
requirements:
  - kafka-python 3.0 or later on the host the module runs on.
"""

EXAMPLES = r"""
- name: Frames topic, 12 partitions, one hour of retention
  kafka_topic:
    name: edgelab.frames
    partitions: 12
    replication_factor: 1
    configs:
      retention.ms: 3600000
      max.message.bytes: 8388608
    bootstrap_servers: ["10.213.0.11:9092"]
  delegate_to: localhost
  vars:
    ansible_python_interpreter: "{{ ansible_playbook_python }}"

- name: A topic on a SASL_SSL listener (Apache Kafka distribution)
  kafka_topic:
    name: edgelab.forecasts
    partitions: 3
    replication_factor: 3
    bootstrap_servers: ["nuc1.example.org:9092"]
    security_protocol: SASL_SSL
    sasl_mechanism: SCRAM-SHA-512
    sasl_username: admin
    sasl_password: "{{ kafka_admin_password }}"
    ssl_cafile: inventory/mycluster/credentials/ca/ca.crt
  delegate_to: localhost
  no_log: true

- name: Remove a topic
  kafka_topic:
    name: old.topic
    state: absent
    bootstrap_servers: ["10.213.0.11:9092"]
  delegate_to: localhost
"""

RETURN = r"""
topic:
  description: The topic as it is after the task (as it would be, in check mode); empty when absent.
  returned: always
  type: dict
  contains:
    name:
      description: Topic name.
      type: str
    partitions:
      description: Number of partitions.
      type: int
    replication_factor:
      description: Replicas per partition (replicas of partition 0).
      type: int
    configs:
      description: The values of the configs listed in O(configs).
      type: dict
  sample: {name: edgelab.frames, partitions: 12, replication_factor: 1, configs: {retention.ms: "3600000"}}
actions:
  description: The writes made (would be made, in check mode), in order.
  returned: always
  type: list
  elements: str
  sample: ["create edgelab.frames (12 partitions, replication factor 1)", "set retention.ms=3600000"]
"""

import re
import threading
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

KAFKA_IMPORT_ERROR = None
try:
    from kafka.admin import ConfigResource, KafkaAdminClient
    from kafka.errors import (
        AuthorizationError,
        IncompatibleBrokerVersion,
        KafkaConnectionError,
        KafkaError,
        KafkaTimeoutError,
        SaslAuthenticationFailedError,
        for_code,
    )
except ImportError:
    KAFKA_IMPORT_ERROR = traceback.format_exc()

UNKNOWN_TOPIC_OR_PARTITION = 3

# Kafka's own rule for topic names (org.apache.kafka.common.internals.Topic).
TOPIC_NAME = re.compile(r"[a-zA-Z0-9._-]+")
TOPIC_NAME_MAX = 249
HOST_PORT = re.compile(r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]/@]+)):(?P<port>[0-9]{1,5})$")


class TopicError(Exception):
    """A failure to report as is (the message is meant for the user)."""


class DeadlineExceededError(Exception):
    """The module's work did not finish within `timeout` seconds."""


class Step:
    """What the module is doing now and what it has written so far (read when the deadline passes)."""

    def __init__(self):
        self.doing = "connecting to the brokers (TCP, TLS handshake, SASL authentication, metadata)"
        self.bootstrapped = False
        self.written = []


def config_string(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def check_params(params):
    """Messages for the parameters the brokers would not understand (empty when all are fine)."""
    problems = []
    name = params["name"]
    if not name:
        problems.append("name is empty: give the topic name")
    elif name in (".", "..") or len(name) > TOPIC_NAME_MAX or not TOPIC_NAME.fullmatch(name):
        problems.append(
            "name %r is not a valid Kafka topic name: use 1 to %d of the characters a-z A-Z 0-9 . _ - "
            "(and not '.' or '..')" % (name, TOPIC_NAME_MAX))
    servers = params["bootstrap_servers"]
    if not servers:
        problems.append("bootstrap_servers is empty: give at least one broker as host:port")
    for server in servers:
        match = HOST_PORT.match(server)
        if match is None or not 1 <= int(match.group("port")) <= 65535:
            problems.append(
                "bootstrap_servers entry %r is not host:port with a port from 1 to 65535 "
                "(for example kafka1.example.org:9092 or [2001:db8::1]:9092)" % server)
    for key, value in params["configs"].items():
        if not key:
            problems.append("configs has an empty key")
        elif value is None:
            problems.append(
                "configs.%s is null: give it a value (a string, number or boolean); to return it to the "
                "broker's default, remove it from the topic with kafka-configs.sh --delete-config" % key)
        elif not isinstance(value, (str, int, float, bool)):
            problems.append("configs.%s is a %s: give a string, number or boolean" % (key, type(value).__name__))
    for field in ("partitions", "replication_factor"):
        if params[field] is not None and params[field] < 1:
            problems.append("%s must be 1 or more (got %d)" % (field, params[field]))
    if params["timeout"] < 1:
        problems.append("timeout must be 1 second or more (got %d)" % params["timeout"])
    cafile = params["ssl_cafile"]
    if cafile and params["security_protocol"] in ("SSL", "SASL_SSL"):
        try:
            with open(cafile, "rb"):
                pass
        except OSError as exc:
            problems.append("ssl_cafile %s cannot be read: %s" % (cafile, exc.strerror or exc))
    return problems


def admin_config(params):
    """kafka-python KafkaAdminClient keyword arguments from the module's parameters."""
    timeout_ms = params["timeout"] * 1000
    config = {
        "bootstrap_servers": params["bootstrap_servers"],
        "client_id": "edgelab-kafka_topic",
        "request_timeout_ms": timeout_ms,
        "bootstrap_timeout_ms": timeout_ms,
        "security_protocol": params["security_protocol"],
    }
    if params["security_protocol"].startswith("SASL_"):
        config.update(sasl_mechanism=params["sasl_mechanism"],
                      sasl_plain_username=params["sasl_username"],
                      sasl_plain_password=params["sasl_password"])
    if params["security_protocol"] in ("SSL", "SASL_SSL"):
        config["ssl_check_hostname"] = params["ssl_check_hostname"]
        if params["ssl_cafile"]:
            config["ssl_cafile"] = params["ssl_cafile"]
    return config


def error_text(code, message):
    """'[Error 40] InvalidConfigurationError: broker message', as kafka-python words errors."""
    return str(for_code(code)(message))


def settings_text(configs):
    return ", ".join(f"{k}={v}" for k, v in sorted(configs.items()))


def check_created(name, response, spec):
    """Fail when the CreateTopics answer (kafka-python's dict) carries an error for the topic."""
    entries = [t for t in response.get("topics", []) if t.get("name") == name]
    if not entries:
        raise TopicError(f"The brokers did not answer the creation of topic {name}.")
    entry = entries[0]
    if entry.get("error_code", 0) != 0:
        settings = ["partitions=%d" % spec["num_partitions"]]
        if "replication_factor" in spec:
            settings.append("replication_factor=%d" % spec["replication_factor"])
        if spec.get("configs"):
            settings.append("configs " + settings_text(spec["configs"]))
        raise TopicError("The brokers refused to create topic %s with %s: %s" % (
            name, ", ".join(settings), error_text(entry["error_code"], entry.get("error_message"))))


def check_partitions_grown(name, response, wanted):
    """Fail when the CreatePartitions answer (kafka-python's response object) carries an error."""
    results = [r for r in getattr(response, "results", []) if r.name == name]
    if not results:
        raise TopicError(f"The brokers did not answer the growth of topic {name}.")
    if results[0].error_code != 0:
        raise TopicError("The brokers refused to grow topic %s to partitions=%d: %s" % (
            name, wanted, error_text(results[0].error_code, results[0].error_message)))


def check_altered(name, response, configs):
    """Fail unless alter_configs' answer ({'topic': {name: 'OK' | error text}}) says OK for the topic."""
    outcome = response.get("topic", {}).get(name) if isinstance(response, dict) else None
    if outcome is None:
        raise TopicError("The brokers did not answer the setting of %s on topic %s." % (settings_text(configs), name))
    if outcome != "OK":
        raise TopicError("The brokers refused to set %s on topic %s: %s" % (settings_text(configs), name, outcome))


def check_deleted(name, response):
    """Fail when the DeleteTopics answer carries an error other than 'already gone'."""
    entries = [t for t in response.get("topics", []) if t.get("name") == name]
    if not entries:
        raise TopicError(f"The brokers did not answer the deletion of topic {name}.")
    code = entries[0].get("error_code", 0)
    if code not in (0, UNKNOWN_TOPIC_OR_PARTITION):
        raise TopicError("The brokers refused to delete topic %s: %s" % (
            name, error_text(code, entries[0].get("error_message"))))


def read_topic(admin, name, config_keys, step):
    """The topic's current state, or None when the brokers do not know it."""
    step.doing = f"reading the metadata of topic {name}"
    described = admin.describe_topics([name])
    if not described:
        raise TopicError(f"The brokers returned no metadata for topic {name}.")
    meta = described[0]
    if meta["error_code"] == UNKNOWN_TOPIC_OR_PARTITION:
        return None
    if meta["error_code"] != 0:
        raise TopicError("Reading topic %s failed: %s" % (name, error_text(meta["error_code"], None)))
    partitions = sorted(meta["partitions"], key=lambda p: p["partition_index"])
    state = {
        "name": name,
        "partitions": len(partitions),
        "replication_factor": len(partitions[0]["replica_nodes"]) if partitions else 0,
        "configs": {},
    }
    if config_keys:
        step.doing = f"reading the configs of topic {name}"
        described_configs = admin.describe_configs([ConfigResource("TOPIC", name)], config_filter="all")
        current = described_configs.get("topic", {}).get(name, {})
        state["configs"] = {k: current[k]["value"] for k in config_keys if k in current}
    return state


def run(module, admin, step):
    params = module.params
    name = params["name"]
    timeout_ms = params["timeout"] * 1000
    wanted_configs = {k: config_string(v) for k, v in params["configs"].items()}
    keys = sorted(wanted_configs)
    current = read_topic(admin, name, keys, step)
    actions = []

    if params["state"] == "absent":
        if current is None:
            return False, {}, {}, {}, actions
        actions.append(f"delete {name}")
        if not module.check_mode:
            step.doing = f"deleting topic {name}"
            step.written.append(f"delete {name}")
            check_deleted(name, admin.delete_topics([name], timeout_ms=timeout_ms, raise_errors=False))
        return True, {}, current, {}, actions

    if current is None:
        if params["partitions"] is None:
            raise TopicError(f"Topic {name} does not exist: give partitions to create it.")
        spec = {"num_partitions": params["partitions"]}
        if params["replication_factor"] is not None:
            spec["replication_factor"] = params["replication_factor"]
        if wanted_configs:
            spec["configs"] = wanted_configs
        actions.append("create %s (%d partitions, replication factor %s)" % (
            name, params["partitions"], params["replication_factor"] or "broker default"))
        after = {"name": name, "partitions": params["partitions"],
                 "replication_factor": params["replication_factor"], "configs": wanted_configs}
        if not module.check_mode:
            step.doing = f"creating topic {name}"
            step.written.append(actions[-1])
            check_created(name, admin.create_topics({name: spec}, timeout_ms=timeout_ms, raise_errors=False), spec)
            step.doing = f"waiting for the partitions of topic {name} to get leaders"
            try:
                admin.wait_for_topics([name], timeout_ms=timeout_ms)
            except KafkaTimeoutError as exc:
                raise TopicError(f"Topic {name} was created but is not ready (no leader for every partition) "
                                 f"within {params['timeout']}s: {exc}") from exc
            after = read_topic(admin, name, keys, step)
            if after is None:
                raise TopicError(f"Topic {name} was created but the brokers do not list it.")
        return True, after, {}, after, actions

    after = dict(current, configs=dict(current["configs"]))
    wanted_partitions = params["partitions"]
    if wanted_partitions is not None and wanted_partitions < current["partitions"]:
        raise TopicError(
            "Topic %s has %d partitions and %d were asked for: Kafka cannot remove partitions. "
            "Keep partitions at %d or more, or delete and recreate the topic (its data is lost)."
            % (name, current["partitions"], wanted_partitions, current["partitions"]))
    if params["replication_factor"] is not None and params["replication_factor"] != current["replication_factor"]:
        raise TopicError(
            "Topic %s has replication factor %d and %d was asked for: this module does not change "
            "the replication factor of an existing topic (that takes a partition reassignment, "
            "kafka-reassign-partitions.sh)." % (name, current["replication_factor"], params["replication_factor"]))

    if wanted_partitions is not None and wanted_partitions > current["partitions"]:
        actions.append("grow %s from %d to %d partitions" % (name, current["partitions"], wanted_partitions))
        after["partitions"] = wanted_partitions
        if not module.check_mode:
            step.doing = f"adding partitions to topic {name}"
            try:
                response = admin.create_partitions({name: wanted_partitions}, timeout_ms=timeout_ms,
                                                   raise_errors=False)
            except IncompatibleBrokerVersion as exc:
                raise TopicError(
                    "Topic %s has %d partitions and %d were asked for, but the broker does not "
                    "implement CreatePartitions (Tansu does not): delete and recreate the topic "
                    "to change its partitions." % (name, current["partitions"], wanted_partitions)) from exc
            step.written.append(actions[-1])
            check_partitions_grown(name, response, wanted_partitions)

    changed_configs = {k: v for k, v in wanted_configs.items() if current["configs"].get(k) != v}
    if changed_configs:
        actions.extend(f"set {k}={v}" for k, v in sorted(changed_configs.items()))
        after["configs"].update(changed_configs)
        if not module.check_mode:
            step.doing = f"setting {settings_text(changed_configs)} on topic {name}"
            step.written.append("set " + settings_text(changed_configs))
            response = admin.alter_configs([ConfigResource("TOPIC", name, configs=changed_configs)],
                                           raise_on_unknown=False)
            check_altered(name, response, changed_configs)

    return bool(actions), after, current, after, actions


def work(module, step):
    """Connect, bring the topic to the wanted state, close: the module's whole work."""
    admin = KafkaAdminClient(**admin_config(module.params))
    step.bootstrapped = True
    try:
        outcome = run(module, admin, step)
    except BaseException:
        admin.close()  # step.doing still names the step that failed
        raise
    step.doing = "closing the connections"
    admin.close()
    return outcome


def within(seconds, function, *args):
    """function(*args) in a worker thread, or DeadlineExceededError when it has not returned after `seconds`.

    kafka-python bounds its own waits only in part (a listener that accepts TCP and never
    completes the TLS handshake blocks it for good), so the bound is kept here. The
    worker is a daemon thread: a stuck one ends with the module's process.
    """
    outcome = {}

    def target():
        try:
            outcome["value"] = function(*args)
        except BaseException as exc:  # handed to the caller's thread below
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="kafka_topic-work", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise DeadlineExceededError
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def deadline_message(params, servers, step):
    timeout = params["timeout"]
    if not step.bootstrapped:
        return ("Cannot reach the Kafka brokers at %s within %ds (still %s): is the broker running, listening "
                "there with security_protocol %s, and open to this host?" % (
                    servers, timeout, step.doing, params["security_protocol"]))
    message = "The Kafka brokers at %s did not finish the work on topic %s within %ds (still %s)." % (
        servers, params["name"], timeout, step.doing)
    if step.written:
        message += " Requested before that: %s; run the task again to see what the brokers applied." % (
            "; ".join(step.written))
    return message


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type="str", required=True, aliases=["topic"]),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            partitions=dict(type="int"),
            replication_factor=dict(type="int"),
            configs=dict(type="dict", default={}),
            bootstrap_servers=dict(type="list", elements="str", required=True),
            security_protocol=dict(type="str", choices=["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"],
                                   default="PLAINTEXT"),
            sasl_mechanism=dict(type="str", choices=["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"],
                                default="SCRAM-SHA-512"),
            sasl_username=dict(type="str"),
            sasl_password=dict(type="str", no_log=True),
            ssl_cafile=dict(type="path"),
            ssl_check_hostname=dict(type="bool", default=True),
            timeout=dict(type="int", default=30),
        ),
        required_if=[
            ("security_protocol", "SASL_PLAINTEXT", ("sasl_username", "sasl_password")),
            ("security_protocol", "SASL_SSL", ("sasl_username", "sasl_password")),
        ],
        supports_check_mode=True,
    )
    if KAFKA_IMPORT_ERROR is not None:
        module.fail_json(msg=missing_required_lib("kafka-python"), exception=KAFKA_IMPORT_ERROR)
    params = module.params
    problems = check_params(params)
    if problems:
        module.fail_json(msg="; ".join(problems) + ".")

    servers = ", ".join(params["bootstrap_servers"])
    step = Step()
    try:
        changed, topic, before, after, actions = within(params["timeout"], work, module, step)
    except DeadlineExceededError:
        module.fail_json(msg=deadline_message(params, servers, step))
    except TopicError as e:
        module.fail_json(msg=str(e))
    except SaslAuthenticationFailedError as e:
        module.fail_json(msg="SASL authentication as {} to {} failed: {}".format(params["sasl_username"], servers, e))
    except AuthorizationError as e:
        module.fail_json(msg="The brokers at {} refused the request for topic {}: {}".format(
            servers, params["name"], e))
    except (KafkaTimeoutError, KafkaConnectionError) as e:
        module.fail_json(msg="Cannot reach the Kafka brokers at %s within %ds (%s): is the broker running, "
                             "listening there and open to this host?" % (servers, params["timeout"], e))
    except KafkaError as e:
        module.fail_json(msg="Kafka request for topic {} at {} failed while {}: {}".format(
            params["name"], servers, step.doing, e), exception=traceback.format_exc())
    except Exception as e:  # anything else still ends in one line (the traceback only with -vvv)
        module.fail_json(msg="kafka_topic failed for topic {} at {} while {}: {}: {}".format(
            params["name"], servers, step.doing, type(e).__name__, e), exception=traceback.format_exc())

    result = dict(changed=changed, topic=topic, actions=actions)
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
