"""The agents' messages: one JSON object per XMPP chat body, versioned schema.

    {"schema": "edgelab.agent/1", "type": "prediction", "agent": "node-nuc2",
     "ts": 1718000000.5, "seq": 42, "target": "cpu_utilisation", "value": 0.61,
     "model": "online:ridge", "validation_error": 0.04, "sample_ts": 1718000000.4}

decode() accepts exactly the fields of the type (no unknown, none missing, right JSON
types, finite numbers, bounded size and nesting) and raises DecodeError, and only
DecodeError, otherwise; agents count, log and drop such messages.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar, Union

SCHEMA = "edgelab.agent/1"
MAX_BYTES = 4096
MAX_STR = 256


class DecodeError(ValueError):
    """A message that is not a valid edgelab.agent/1 message."""


@dataclass
class Base:
    TYPE: ClassVar[str] = ""
    agent: str
    ts: float
    seq: int


@dataclass
class Heartbeat(Base):
    TYPE: ClassVar[str] = "heartbeat"
    unit: str
    instances: int


@dataclass
class Prediction(Base):
    TYPE: ClassVar[str] = "prediction"
    target: str
    value: float
    model: str
    validation_error: float | None
    sample_ts: float


@dataclass
class Command(Base):
    TYPE: ClassVar[str] = "command"
    id: str
    action: str
    unit: str
    instances: int


@dataclass
class Result(Base):
    TYPE: ClassVar[str] = "result"
    id: str
    ok: bool
    instances: int
    error: str


@dataclass
class Bandwidth(Base):
    """A bandwidth class for one slice on one host (IMA -> node agent); rate_mbit > 0."""

    TYPE: ClassVar[str] = "bandwidth"
    id: str
    slice: str
    flavor: str
    rate_mbit: float


Message = Union[Heartbeat, Prediction, Command, Result, Bandwidth]  # noqa: UP007 - a runtime alias on Python 3.10
TYPES: dict[str, type[Base]] = {cls.TYPE: cls for cls in (Heartbeat, Prediction, Command, Result, Bandwidth)}
# Field kinds: "str", "float", "int", "bool", "float?" (float or null).
_KINDS = {"str": "str", "float": "float", "int": "int", "bool": "bool", "float | None": "float?"}
ACTIONS = ("scale",)


def _kind(annotation: Any) -> str:
    return _KINDS[str(annotation)]


def encode(msg: Base) -> str:
    """The JSON text of a message (checked like decode checks it)."""
    data: dict[str, Any] = {"schema": SCHEMA, "type": msg.TYPE}
    data.update(asdict(msg))
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    if len(text.encode("utf-8")) > MAX_BYTES:
        raise ValueError(f"{msg.TYPE} message exceeds {MAX_BYTES} bytes")
    return text


def _check(name: str, kind: str, value: Any) -> Any:
    if kind == "str":
        if not isinstance(value, str):
            raise DecodeError(f"field {name}: expected a string")
        if len(value) > MAX_STR:
            raise DecodeError(f"field {name}: longer than {MAX_STR} characters")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise DecodeError(f"field {name}: expected true/false")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(f"field {name}: expected an integer")
        return value
    if kind == "float?" and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DecodeError(f"field {name}: expected a number")
    if not math.isfinite(value):
        raise DecodeError(f"field {name}: not a finite number")
    return float(value)


def decode(text: str | bytes) -> Message:
    """Parse and validate one message; DecodeError on anything unexpected."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if len(raw) > MAX_BYTES:
        raise DecodeError(f"message larger than {MAX_BYTES} bytes")
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"not JSON: {exc}") from None
    except RecursionError:  # deep nesting fits in MAX_BYTES: "[[[[...]]]]"
        raise DecodeError("not JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise DecodeError("not a JSON object")
    if data.get("schema") != SCHEMA:
        raise DecodeError(f"unknown schema {str(data.get('schema'))[:40]!r}")
    kind = data.get("type")
    cls = TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise DecodeError(f"unknown type {str(data.get('type'))[:40]!r}")
    expected = {f.name: _kind(f.type) for f in fields(cls)}
    given = set(data) - {"schema", "type"}
    unknown = sorted(given - set(expected))
    if unknown:
        raise DecodeError(f"unknown field {unknown[0][:40]!r} in {cls.TYPE}")
    missing = sorted(set(expected) - given)
    if missing:
        raise DecodeError(f"missing field {missing[0]!r} in {cls.TYPE}")
    values = {name: _check(name, kind, data[name]) for name, kind in expected.items()}
    if values["seq"] < 0:
        raise DecodeError("field seq: negative")
    if cls is Command:
        if values["action"] not in ACTIONS:
            raise DecodeError(f"unknown command action {values['action'][:40]!r}")
        if values["instances"] < 0:
            raise DecodeError("field instances: negative")
    if cls is Bandwidth and values["rate_mbit"] <= 0:
        raise DecodeError("field rate_mbit: must be > 0")
    return cls(**values)  # type: ignore[return-value]


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


class Sequencer:
    """Stamps agent, ts and seq on outgoing messages."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        self.seq = 0

    def stamp(self) -> dict[str, Any]:
        self.seq += 1
        return {"agent": self.agent, "ts": time.time(), "seq": self.seq}
