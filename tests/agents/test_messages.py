from __future__ import annotations

import json

import pytest
from edgelab import messages as m


def stamp() -> dict[str, object]:
    return {"agent": "node-a", "ts": 1700000000.25, "seq": 7}


SAMPLES: list[m.Base] = [
    m.Heartbeat(**stamp(), unit="edgelab-consumer@", instances=3),  # type: ignore[arg-type]
    m.Prediction(**stamp(), target="cpu_utilisation", value=0.61, model="online:ridge",  # type: ignore[arg-type]
                 validation_error=None, sample_ts=1700000000.0),
    m.Prediction(**stamp(), target="cpu_utilisation", value=1, model="file:m.json",  # type: ignore[arg-type]
                 validation_error=0.04, sample_ts=1700000000.0),
    m.Command(**stamp(), id="c-1", action="scale", unit="edgelab-consumer@", instances=4),  # type: ignore[arg-type]
    m.Result(**stamp(), id="c-1", ok=False, instances=2, error="boom"),  # type: ignore[arg-type]
    m.Bandwidth(**stamp(), id="ima-1", slice="slice-1", flavor="slow-link", rate_mbit=10.0),  # type: ignore[arg-type]
]


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda x: x.TYPE)
def test_round_trip(msg: m.Base) -> None:
    text = m.encode(msg)
    data = json.loads(text)
    assert data["schema"] == "edgelab.agent/1" and data["type"] == msg.TYPE
    back = m.decode(text)
    assert back == msg and type(back) is type(msg)
    assert m.decode(text.encode()) == msg


def good() -> dict[str, object]:
    return json.loads(m.encode(SAMPLES[1]))


def mutate(**changes: object) -> str:
    data = good()
    for key, value in changes.items():
        if value is KeyError:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


@pytest.mark.parametrize(("text", "error"), [
    ("not json", "not JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"schema": "edgelab.agent/1", "type": "prediction", "value": NaN}', "not JSON"),
    (mutate(schema="edgelab.agent/2"), "unknown schema"),
    (mutate(schema=KeyError), "unknown schema"),
    (mutate(type="bogus"), "unknown type"),
    (mutate(type=["prediction"]), "unknown type"),
    (mutate(type={"a": 1}), "unknown type"),
    (mutate(type=None), "unknown type"),
    ("[" * 2000 + "]" * 2000, "nested too deeply"),
    ('{"schema": "edgelab.agent/1", "type": "prediction", "agent": ' + "[" * 1990 + "]" * 1990 + "}",
     "nested too deeply"),
    (mutate(extra=1), "unknown field 'extra'"),
    (mutate(value=KeyError), "missing field 'value'"),
    (mutate(value="0.5"), "field value: expected a number"),
    (mutate(value=True), "field value: expected a number"),
    (mutate(value=1e400), "not JSON|not a finite number"),
    (mutate(seq=1.5), "field seq: expected an integer"),
    (mutate(seq=-1), "seq: negative"),
    (mutate(agent=5), "field agent: expected a string"),
    (mutate(agent="x" * 300), "longer than 256"),
    (mutate(model="x" * 5000), "larger than 4096"),
])
def test_rejections(text: str, error: str) -> None:
    with pytest.raises(m.DecodeError, match=error):
        m.decode(text)


def test_command_rules() -> None:
    cmd = json.loads(m.encode(SAMPLES[3]))
    cmd["action"] = "reboot"
    with pytest.raises(m.DecodeError, match="unknown command action"):
        m.decode(json.dumps(cmd))
    cmd["action"], cmd["instances"] = "scale", -2
    with pytest.raises(m.DecodeError, match="instances: negative"):
        m.decode(json.dumps(cmd))
    cmd["instances"], cmd["ok"] = 2, True
    with pytest.raises(m.DecodeError, match="unknown field 'ok'"):
        m.decode(json.dumps(cmd))


def test_bandwidth_rules() -> None:
    bw = json.loads(m.encode(SAMPLES[5]))
    assert bw == {"schema": "edgelab.agent/1", "type": "bandwidth", **stamp(), "id": "ima-1", "slice": "slice-1",
                  "flavor": "slow-link", "rate_mbit": 10.0}
    bw["rate_mbit"] = 25
    decoded = m.decode(json.dumps(bw))
    assert isinstance(decoded, m.Bandwidth) and decoded.rate_mbit == 25.0 and isinstance(decoded.rate_mbit, float)
    for rate, error in ((0, "rate_mbit: must be > 0"), (-1.5, "rate_mbit: must be > 0"),
                        ("10", "rate_mbit: expected a number"), (True, "rate_mbit: expected a number"),
                        (None, "rate_mbit: expected a number")):
        bw["rate_mbit"] = rate
        with pytest.raises(m.DecodeError, match=error):
            m.decode(json.dumps(bw))
    bw["rate_mbit"], bw["slice"] = 10.0, 7
    with pytest.raises(m.DecodeError, match="field slice: expected a string"):
        m.decode(json.dumps(bw))
    del bw["slice"]
    with pytest.raises(m.DecodeError, match="missing field 'slice' in bandwidth"):
        m.decode(json.dumps(bw))


def test_encode_refuses_oversized_and_nan() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        m.encode(m.Result(**stamp(), id="x", ok=False, instances=0, error="e" * 5000))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        m.encode(m.Prediction(**stamp(), target="t", value=float("nan"), model="m",  # type: ignore[arg-type]
                              validation_error=None, sample_ts=0.0))


def test_sequencer_counts() -> None:
    seq = m.Sequencer("a")
    assert [seq.stamp()["seq"] for _ in range(3)] == [1, 2, 3]


def test_invalid_messages_raise_only_decode_error() -> None:
    """Whatever the body, decode raises DecodeError (what the agents count as invalid), never another error."""
    bodies = ["{" * 3000, "[" * 1500 + "{}" + "]" * 1500, '{"a":' * 600 + "1" + "}" * 600,
              '{"schema": "edgelab.agent/1", "type": 5}', '{"schema": "edgelab.agent/1", "type": [[]]}',
              '{"schema": "edgelab.agent/1", "type": true}', b"\xff\xfe", '"\ud800"', "", "null"]
    for body in bodies:
        with pytest.raises(m.DecodeError):
            m.decode(body)
