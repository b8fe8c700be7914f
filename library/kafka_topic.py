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
  - edgelab contributors
options:
  name:
    description: Topic name.
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
        Values are compared as strings; booleans become V(true)/V(false).
    type: dict
    default: {}
  bootstrap_servers:
    description: Brokers to bootstrap from, as C(host:port).
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
    description: CA certificate (PEM) that verifies the brokers' certificates with C(SSL)/C(SASL_SSL).
    type: path
  ssl_check_hostname:
    description: Check that the broker certificate names the host connected to.
    type: bool
    default: true
  timeout:
    description: Seconds to wait for the brokers (bootstrap) and for each request.
    type: int
    default: 30
attributes:
  check_mode:
    support: full
    details: The topic and its configs are read; nothing is written.
  diff_mode:
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
    )
except ImportError:
    KAFKA_IMPORT_ERROR = traceback.format_exc()

UNKNOWN_TOPIC_OR_PARTITION = 3


class TopicError(Exception):
    """A failure to report as is (the message is meant for the user)."""


def config_string(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


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


def read_topic(admin, name, config_keys):
    """The topic's current state, or None when the brokers do not know it."""
    described = admin.describe_topics([name])
    if not described:
        raise TopicError(f"The brokers returned no metadata for topic {name}.")
    meta = described[0]
    if meta["error_code"] == UNKNOWN_TOPIC_OR_PARTITION:
        return None
    if meta["error_code"] != 0:
        raise TopicError("Reading topic %s failed: broker error code %d." % (name, meta["error_code"]))
    partitions = sorted(meta["partitions"], key=lambda p: p["partition_index"])
    state = {
        "name": name,
        "partitions": len(partitions),
        "replication_factor": len(partitions[0]["replica_nodes"]) if partitions else 0,
        "configs": {},
    }
    if config_keys:
        described_configs = admin.describe_configs([ConfigResource("TOPIC", name)], config_filter="all")
        current = described_configs.get("topic", {}).get(name, {})
        state["configs"] = {k: current[k]["value"] for k in config_keys if k in current}
    return state


def run(module, admin):
    params = module.params
    name = params["name"]
    wanted_configs = {k: config_string(v) for k, v in params["configs"].items()}
    keys = sorted(wanted_configs)
    current = read_topic(admin, name, keys)
    actions = []

    if params["state"] == "absent":
        if current is None:
            return False, {}, {}, {}, actions
        actions.append(f"delete {name}")
        if not module.check_mode:
            admin.delete_topics([name], timeout_ms=params["timeout"] * 1000)
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
            admin.create_topics({name: spec}, timeout_ms=params["timeout"] * 1000)
            admin.wait_for_topics([name], timeout_ms=params["timeout"] * 1000)
            after = read_topic(admin, name, keys)
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
            try:
                admin.create_partitions({name: wanted_partitions}, timeout_ms=params["timeout"] * 1000)
            except IncompatibleBrokerVersion as exc:
                raise TopicError(
                    "Topic %s has %d partitions and %d were asked for, but the broker does not "
                    "implement CreatePartitions (Tansu does not): delete and recreate the topic "
                    "to change its partitions." % (name, current["partitions"], wanted_partitions)) from exc

    changed_configs = {k: v for k, v in wanted_configs.items() if current["configs"].get(k) != v}
    if changed_configs:
        actions.extend(f"set {k}={v}" for k, v in sorted(changed_configs.items()))
        after["configs"].update(changed_configs)
        if not module.check_mode:
            admin.alter_configs([ConfigResource("TOPIC", name, configs=changed_configs)], raise_on_unknown=False)

    return bool(actions), after, current, after, actions


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
    for field in ("partitions", "replication_factor"):
        if params[field] is not None and params[field] < 1:
            module.fail_json(msg="%s must be 1 or more (got %d)." % (field, params[field]))
    if params["timeout"] < 1:
        module.fail_json(msg="timeout must be 1 second or more (got %d)." % params["timeout"])

    servers = ", ".join(params["bootstrap_servers"])
    admin = None
    try:
        admin = KafkaAdminClient(**admin_config(params))
        changed, topic, before, after, actions = run(module, admin)
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
        module.fail_json(msg="Kafka request for topic {} at {} failed: {}".format(params["name"], servers, e),
                         exception=traceback.format_exc())
    finally:
        if admin is not None:
            admin.close()

    result = dict(changed=changed, topic=topic, actions=actions)
    if module._diff:
        result["diff"] = dict(before=before, after=after)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
