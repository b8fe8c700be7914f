"""Prometheus remote read (POST /api/v1/read) for edgelab-extract: the request encoder,
vectorised decoders of the SAMPLES response and of the streamed XOR-chunks response
(what the extractor reads: the server sends its stored chunks as they are, the
cheapest answer it has), and resampling to a range query's grid.

Wire format (Prometheus's remote-read protocol, version 0.1.0): the request body is a
ReadRequest protobuf message compressed with snappy's block format, sent with
Content-Type application/x-protobuf and Content-Encoding snappy; the answer to a
request that accepts SAMPLES is a ReadResponse, snappy-compressed the same way.
The messages used here, with their field numbers:

    ReadRequest   { repeated Query queries = 1; repeated ResponseType accepted_response_types = 2; }
    Query         { int64 start_timestamp_ms = 1; int64 end_timestamp_ms = 2;
                    repeated LabelMatcher matchers = 3; }
    LabelMatcher  { Type type = 1 (EQ 0, NEQ 1, RE 2, NRE 3); string name = 2; string value = 3; }
    ReadResponse  { repeated QueryResult results = 1; }
    QueryResult   { repeated TimeSeries timeseries = 1; }
    TimeSeries    { repeated Label labels = 1; repeated Sample samples = 2;
                    (exemplars = 3 and native histograms = 4 are skipped) }
    Label         { string name = 1; string value = 2; }
    Sample        { double value = 1; int64 timestamp = 2; }   (milliseconds)

Samples are most of the bytes. Each is a length-delimited record `0x12 LEN payload`
whose length is the same for long runs (16 bytes for a non-zero value and a 6-byte
timestamp varint; proto3 leaves a zero value out), so a run of equal records is
decoded with numpy through strided views of the bytes; records that break a run are
decoded one at a time.

Snappy comes from pyarrow's codec (the block format, as Prometheus uses it), so this
needs no dependency beyond the extractor's.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..prometheus import PrometheusClient, PrometheusResponseError

READ_PATH = "/api/v1/read"
MATCH_TYPES = {"=": 0, "!=": 1, "=~": 2, "!~": 3}
STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus's staleness marker


class RemoteReadError(ValueError):
    """A remote-read response that is not the protobuf this module expects."""


Matcher = tuple[int, str, str]  # (type, label name, value)


# ---------------------------------------------------------------- encoding
def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 as protobuf encodes it: ten bytes of two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _field_varint(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value) if value else b""


def encode_read_request(queries: Sequence[tuple[int, int, Sequence[Matcher]]], *, chunks: bool = False) -> bytes:
    """A ReadRequest (uncompressed) with one Query per (start_ms, end_ms, matchers),
    accepting SAMPLES responses, or with chunks STREAMED_XOR_CHUNKS only."""
    body = bytearray()
    for start_ms, end_ms, matchers in queries:
        query = bytearray(_field_varint(1, start_ms) + _field_varint(2, end_ms))
        for kind, name, value in matchers:
            query += _field_bytes(3, _field_varint(1, kind) + _field_bytes(2, name.encode())
                                  + _field_bytes(3, value.encode()))
        body += _field_bytes(1, bytes(query))
    body += _varint(2 << 3) + _varint(1 if chunks else 0)  # accepted_response_types
    return bytes(body)


def compress(data: bytes) -> bytes:
    """snappy's block format (what Prometheus's remote read sends and expects)."""
    import pyarrow as pa

    return bytes(pa.compress(data, codec="snappy", asbytes=True))


def decompress(data: bytes) -> bytes:
    """The inverse of compress(); the block starts with the uncompressed length."""
    import pyarrow as pa

    try:
        size, _pos = _read_varint(data, 0, len(data))
        return bytes(pa.decompress(data, decompressed_size=size, codec="snappy", asbytes=True))
    except (RemoteReadError, OSError, ValueError) as exc:
        raise RemoteReadError("the response is not snappy-compressed (%s)" % exc) from None


# ---------------------------------------------------------------- series selectors
_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r"[a-zA-Z_][a-zA-Z0-9_]*"
_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_SELECTOR = re.compile(r"^\s*(%s)?\s*(?:\{(.*)\})?\s*$" % _NAME, re.DOTALL)
_MATCHER = re.compile(r"\s*(%s)\s*(=~|!~|!=|=)\s*(%s)\s*(,|$)" % (_LABEL, _STRING), re.DOTALL)
_ESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "\\": "\\",
            "'": "'", '"': '"'}


def _unquote(text: str) -> str:
    if text[0] == "`":
        return text[1:-1]
    out = []
    body = text[1:-1]
    i = 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        code = body[i + 1]
        if code in _ESCAPES:
            out.append(_ESCAPES[code])
            i += 2
        elif code in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[code]
            out.append(chr(int(body[i + 2:i + 2 + width], 16)))
            i += 2 + width
        elif code in "01234567":
            out.append(chr(int(body[i + 1:i + 4], 8)))
            i += 4
        else:
            raise ValueError("unknown escape \\%s" % code)
    return "".join(out)


def parse_selector(text: str) -> list[Matcher] | None:
    """The matchers of a PromQL series selector (`name`, `name{l="v",...}`, `{...}`),
    or None when `text` is another PromQL expression (remote read cannot evaluate it)."""
    match = _SELECTOR.match(text)
    if not match or (match.group(1) is None and match.group(2) is None):
        return None
    matchers: list[Matcher] = []
    if match.group(1):
        matchers.append((MATCH_TYPES["="], "__name__", match.group(1)))
    inner = (match.group(2) or "").strip()
    pos = 0
    while pos < len(inner):
        item = _MATCHER.match(inner, pos)
        if not item:
            return None
        try:
            value = _unquote(item.group(3))
        except (ValueError, IndexError):
            return None
        matchers.append((MATCH_TYPES[item.group(2)], item.group(1), value))
        pos = item.end()
    try:
        if not any((kind == 0 and value) or (kind == 2 and not re.fullmatch(value, ""))
                   for kind, _n, value in matchers):
            return None  # Prometheus refuses selectors that match the empty label set
    except re.error:
        return None  # a regular expression Python does not read: left to Prometheus
    return matchers


# ---------------------------------------------------------------- decoding
def _read_varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise RemoteReadError("truncated or overlong varint at byte %d" % pos)
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _skip(data: bytes, wire: int, pos: int, end: int) -> int:
    if wire == 0:
        return _read_varint(data, pos, end)[1]
    if wire == 1:
        return pos + 8
    if wire == 2:
        size, pos = _read_varint(data, pos, end)
        return pos + size
    if wire == 5:
        return pos + 4
    raise RemoteReadError("unsupported wire type %d at byte %d" % (wire, pos))


@dataclass
class RawSeries:
    labels: dict[str, str]
    timestamps: np.ndarray  # int64 milliseconds, ascending
    values: np.ndarray  # float64


def _one_sample(data: bytes, pos: int, end: int) -> tuple[int, float]:
    timestamp, value = 0, 0.0
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        if key == 0x09:
            (value,) = struct.unpack_from("<d", data, pos)
            pos += 8
        elif key == 0x10:
            raw, pos = _read_varint(data, pos, end)
            timestamp = raw - (1 << 64) if raw >= 1 << 63 else raw
        else:
            pos = _skip(data, key & 7, pos, end)
    if pos != end:
        raise RemoteReadError("a sample runs past its record")
    return timestamp, value


_VARINT_CONTINUATION = [sum(0x80 << 8 * i for i in range(k - 1)) for k in range(9)]
_HIGH_BITS = np.uint64(0x8080808080808080)


def _column(data: bytes, offset: int, count: int, stride: int, dtype: str) -> np.ndarray:
    """count values of dtype at offset, offset + stride, ... of data (no copy)."""
    return np.ndarray((count,), dtype=dtype, buffer=data, offset=offset, strides=(stride,))


def _run(data: bytes, pos: int, count: int, stride: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Timestamps and values of `count` sample records of one length from pos when they
    share one layout (an optional value field, then a timestamp varint of at most 8
    bytes), else None. data has 8 spare bytes at its end."""
    size = stride - 2
    payload = pos + 2
    if size >= 9 and bool((_column(data, payload, count, stride, "u1") == 0x09).all()):
        values = _column(data, payload + 1, count, stride, "<f8").copy()
        payload += 9
        width = size - 10
    else:
        values = np.zeros(count)
        width = size - 1
    if width == -1 and size == 9:  # a value without a timestamp
        return np.zeros(count, dtype=np.int64), values
    if not 1 <= width <= 8 or not bool((_column(data, payload, count, stride, "u1") == 0x10).all()):
        return None
    raw = _column(data, payload + 1, count, stride, "<u8") & np.uint64((1 << 8 * width) - 1)
    if bool(((raw & _HIGH_BITS) != np.uint64(_VARINT_CONTINUATION[width])).any()):
        return None
    stamps = raw & np.uint64(0x7F)
    for k in range(1, width):
        stamps |= (raw >> np.uint64(k)) & np.uint64(0x7F << 7 * k)
    return stamps.view(np.int64), values


def _samples(data: bytes, pos: int, end: int, times: list[np.ndarray], values: list[np.ndarray]) -> int:
    """Decode the sample records (field 2) starting at pos; the position after them.

    Records of one length are checked and decoded together through strided views of
    the bytes; a record that breaks the run is decoded alone, and where lengths keep
    changing a few at a time, so that the work stays linear in the records."""
    window = end - pos
    last_run = 0
    while pos < end and data[pos] == 0x12:
        size = data[pos + 1]
        stride = size + 2
        count = min(window, (end - pos) // stride)
        if size < 0x80 and count >= 4:
            head = _column(data, pos, count, stride, "<u2")
            bad = np.flatnonzero(head != 0x12 | size << 8)
            run = int(bad[0]) if len(bad) else count
            decoded = _run(data, pos, run, stride) if run >= 4 else None
            if decoded is not None:
                times.append(decoded[0])
                values.append(decoded[1])
                pos += run * stride
                window = window * 4 if run == count else max(64, 2 * run)
                last_run = run
                continue
        # After a long run one odd record, where runs are short a few records.
        single = last_run >= 64
        window = max(64, 2 * last_run)
        last_run = 0
        stamps, numbers = [], []
        for _ in range(1 if single else 16):
            if pos >= end or data[pos] != 0x12:
                break
            length, start = _read_varint(data, pos + 1, end)
            if start + length > end:
                raise RemoteReadError("a sample runs past its series at byte %d" % pos)
            stamp, number = _one_sample(data, start, start + length)
            stamps.append(stamp)
            numbers.append(number)
            pos = start + length
        times.append(np.array(stamps, dtype=np.int64))
        values.append(np.array(numbers, dtype=np.float64))
    return pos


def _label(data: bytes, pos: int, end: int) -> tuple[str, str]:
    name = value = ""
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        if key in (0x0A, 0x12):
            size, pos = _read_varint(data, pos, end)
            text = data[pos:pos + size].decode("utf-8", "replace")
            pos += size
            if key == 0x0A:
                name = text
            else:
                value = text
        else:
            pos = _skip(data, key & 7, pos, end)
    return name, value


def _timeseries(data: bytes, pos: int, end: int) -> RawSeries:
    labels: dict[str, str] = {}
    times: list[np.ndarray] = []
    values: list[np.ndarray] = []
    while pos < end:
        if data[pos] == 0x12:
            pos = _samples(data, pos, end, times, values)
            continue
        key, pos = _read_varint(data, pos, end)
        if key == 0x0A:
            size, pos = _read_varint(data, pos, end)
            name, value = _label(data, pos, pos + size)
            labels[name] = value
            pos += size
        else:  # exemplars, native histograms
            pos = _skip(data, key & 7, pos, end)
    if pos != end:
        raise RemoteReadError("a series runs past its message")
    stamps = np.concatenate(times) if times else np.empty(0, dtype=np.int64)
    numbers = np.concatenate(values) if values else np.empty(0, dtype=np.float64)
    return RawSeries(labels, stamps, numbers)


def _messages(data: bytes, pos: int, end: int, field: int) -> list[tuple[int, int]]:
    """(start, end) of every embedded message with number `field` in data[pos:end]."""
    spans = []
    while pos < end:
        key, pos = _read_varint(data, pos, end)
        if key == (field << 3 | 2):
            size, pos = _read_varint(data, pos, end)
            if pos + size > end:
                raise RemoteReadError("a message runs past its parent at byte %d" % pos)
            spans.append((pos, pos + size))
            pos += size
        else:
            pos = _skip(data, key & 7, pos, end)
    return spans


def decode_read_response(data: bytes) -> list[list[RawSeries]]:
    """The series of each query of an (uncompressed) ReadResponse."""
    size = len(data)
    padded = data + bytes(8)  # every position has 8 bytes after it for a strided view
    try:
        return [[_timeseries(padded, start, stop) for start, stop in _messages(padded, q0, q1, 1)]
                for q0, q1 in _messages(padded, 0, size, 1)]
    except (IndexError, struct.error) as exc:
        raise RemoteReadError("truncated response (%s)" % exc) from None


def count_samples(data: bytes) -> list[list[int]]:
    """For each query of a ReadResponse, each series' sample count, without decoding
    the samples (for a short probe: one step of Python per record)."""
    try:
        out = []
        for q0, q1 in _messages(data, 0, len(data), 1):
            counts = []
            for pos, end in _messages(data, q0, q1, 1):
                count = 0
                while pos < end:
                    if data[pos] == 0x12 and data[pos + 1] < 0x80:
                        count += 1
                        pos += 2 + data[pos + 1]
                        continue
                    key, pos = _read_varint(data, pos, end)
                    pos = _skip(data, key & 7, pos, end)
                counts.append(count)
            out.append(counts)
        return out
    except IndexError as exc:
        raise RemoteReadError("truncated response (%s)" % exc) from None


# ---------------------------------------------------------------- streamed XOR chunks
# The answer to a request that accepts only STREAMED_XOR_CHUNKS (Content-Type
# application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse) is a sequence
# of frames `uvarint size, CRC32C (4 bytes), message`, each message a
#
#     ChunkedReadResponse { repeated ChunkedSeries chunked_series = 1; int64 query_index = 2; }
#     ChunkedSeries       { repeated Label labels = 1; repeated Chunk chunks = 2; }
#     Chunk               { int64 min_time_ms = 1; int64 max_time_ms = 2;
#                           Encoding type = 3 (XOR 1); bytes data = 4; }
#
# A series larger than a frame continues in the next frames with its labels repeated.
# The chunks are the server's stored Gorilla chunks, sent as they are, so the server
# does no decoding; every chunk of a response is decoded here at once (below). The
# CRC is not checked (Python has no CRC32C); a malformed frame or chunk is still an
# error, since every length and count is checked against the bytes.
XOR_ENCODING = 1
CHUNK_PAD = 40  # zero bytes after the response, so that every bit read stays inside it


@dataclass
class ChunkRefs:
    """The chunks of one series in a streamed response: where their Chunk messages are."""

    labels: dict[str, str]
    starts: list[int]
    ends: list[int]


def chunk_refs(data: bytes, size: int) -> dict[int, list[ChunkRefs]]:
    """The series of each query index in a streamed response data[:size] (data has a
    byte or more after it), with their chunks."""
    out: dict[int, list[ChunkRefs]] = {}
    pos = 0
    while pos < size:
        length, pos = _read_varint(data, pos, size)
        body, end = pos + 4, pos + 4 + length
        if end > size:
            raise RemoteReadError("a frame runs past the response (%d of %d bytes)" % (size - body, length))
        index = 0
        found: list[ChunkRefs] = []
        at = body
        while at < end:
            key, at = _read_varint(data, at, end)
            if key == 0x0A:
                length, at = _read_varint(data, at, end)
                stop = at + length
                if stop > end:
                    raise RemoteReadError("a series runs past its frame at byte %d" % at)
                series = ChunkRefs({}, [], [])
                starts, ends = series.starts, series.ends
                while at < stop:
                    if data[at] == 0x12 and data[at + 1] < 0x80:  # a chunk of less than 128 bytes, inline
                        length = data[at + 1]
                        at += 2
                        if at + length > stop:
                            raise RemoteReadError("a chunk runs past its series at byte %d" % at)
                        starts.append(at)
                        ends.append(at + length)
                        at += length
                        continue
                    field, at = _read_varint(data, at, stop)
                    if field in (0x0A, 0x12):
                        length, at = _read_varint(data, at, stop)
                        if at + length > stop:
                            raise RemoteReadError("a field runs past its series at byte %d" % at)
                        if field == 0x0A:
                            name, value = _label(data, at, at + length)
                            series.labels[name] = value
                        else:
                            starts.append(at)
                            ends.append(at + length)
                        at += length
                    else:
                        at = _skip(data, field & 7, at, stop)
                if at != stop:
                    raise RemoteReadError("a field runs past its series at byte %d" % at)
                found.append(series)
            elif key == 0x10:
                raw, at = _read_varint(data, at, end)
                index = raw - (1 << 64) if raw >= 1 << 63 else raw
            else:
                at = _skip(data, key & 7, at, end)
        listed = out.setdefault(index, [])
        for series in found:
            if listed and listed[-1].labels == series.labels:  # continued from the last frame
                listed[-1].starts.extend(series.starts)
                listed[-1].ends.extend(series.ends)
            else:
                listed.append(series)
        pos = end
    return out


def chunk_data(data: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the data of each Chunk message data[starts[i]:ends[i]] is (an empty chunk
    or one that is not XOR-encoded: an empty span), all messages at once: one field of
    every message per round. data has CHUNK_PAD bytes after the last message."""
    bits = _Bits(data)
    position = starts.astype(np.uint64)
    ends = ends.astype(np.uint64)
    kind = np.zeros(len(starts), dtype=np.uint64)
    first, last = ends.copy(), ends.copy()
    while True:
        going = position < ends
        if not going.any():
            break
        tag = bits.bytes[position]
        value, after = bits.varint(position + _U64(1))
        payload = going & (tag == 0x22)
        if bool((going & ~payload & ((tag & 7) != 0)).any()) or bool((going & (tag >= 0x80)).any()):
            raise RemoteReadError("a chunk with a field other than its times, encoding and data")
        kind = np.where(going & (tag == 0x18), value, kind)
        first = np.where(payload, after, first)
        last = np.where(payload, after + value, last)
        position = np.where(going, np.where(payload, after + value, after), position)
    if bool((position != ends).any()):
        raise RemoteReadError("a chunk runs past its series")
    # Native-histogram chunks are left out (as empty), as the SAMPLES decoder leaves out
    # their histograms: the dataset has float series only.
    other = kind != XOR_ENCODING
    first[other] = last[other]
    return first, last


# A sample's timestamp starts with a prefix code for the delta of deltas; indexed by
# the first four bits: its length, the width of the delta of deltas after it (0, 14,
# 17, 20 or 64 bits for 0, 10, 110, 1110, 1111), the largest positive value of that
# width (a larger one is negative, written as its low `width` bits) and 2**width.
_PREFIX = np.array([1] * 8 + [2] * 4 + [3] * 2 + [4, 4], dtype=np.uint64)
_DOD_BITS = np.array([0] * 8 + [14] * 4 + [17] * 2 + [20, 64], dtype=np.uint64)
_DOD_MAX = np.array([2**64 - 1] * 8 + [2**13] * 4 + [2**16] * 2 + [2**19, 2**64 - 1], dtype=np.uint64)
_DOD_SPAN = np.array([0] * 8 + [2**14] * 4 + [2**17] * 2 + [2**20, 0], dtype=np.int64)
# A value starts with 0 (unchanged), 10 (new bits in the last window) or 11 (5 bits of
# leading zeros and 6 of significant bits follow); indexed by the first two bits: the
# bits before the value's own.
_VALUE_HEAD = np.array([1, 1, 2, 13], dtype=np.uint64)
_U64 = np.uint64


class _Bits:
    """Reads of 64 bits at a different bit position in each lane of one buffer. NumPy
    shifts a uint64 by 64 or more to 0, which the callers use for reads of 0 bits."""

    def __init__(self, data: bytes) -> None:
        self.bytes = np.frombuffer(data, dtype=np.uint8)
        # The big-endian 8-byte word at every byte offset, in native order.
        self.words = np.ndarray((len(data) - 8,), dtype=">u8", buffer=data, offset=0,
                                strides=(1,)).astype(np.uint64)

    def peek(self, pos: np.ndarray) -> np.ndarray:
        """The 64 bits from bit position pos (uint64 per lane), first bit highest."""
        byte = pos >> _U64(3)
        shift = pos & _U64(7)
        return (self.words[byte] << shift) | ((self.words[byte + _U64(1)] & _U64(0xFF)) >> (_U64(8) - shift))

    def varint(self, byte: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An unsigned varint at each byte offset: (value, byte offset after it)."""
        value = np.zeros(len(byte), dtype=np.uint64)
        going = np.ones(len(byte), dtype=bool)
        end = byte.copy()
        for k in range(10):
            b = self.bytes[byte + k].astype(np.uint64)
            value |= np.where(going, (b & _U64(0x7F)) << _U64(7 * k), _U64(0))
            end += going
            going &= b >= 0x80
            if not going.any():
                return value, end
        raise RemoteReadError("an overlong varint in a chunk")


def decode_xor_chunks(data: bytes, starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                                   np.ndarray]:
    """Decode Prometheus's XOR (Gorilla) chunks data[starts[i]:ends[i]]: (sample count
    of each chunk, timestamps in ms, values), the samples of chunk 0 first, then of
    chunk 1, ... data ends with at least CHUNK_PAD zero bytes.

    A chunk is a bit stream: a 2-byte sample count; the first sample as a signed
    varint timestamp and 64 value bits; the second as an unsigned varint timestamp
    delta and an XOR-encoded value; every later one as a delta of deltas (a prefix
    code, see _PREFIX) and an XOR-encoded value (see _VALUE_HEAD; the bits that
    differ from the last value, without their leading and trailing zeros). Each bit
    depends on the one before, so the chunks are decoded side by side: every numpy
    operation below advances all chunks by one sample. Chunks are ordered by length so
    that those still going are always a prefix."""
    total = len(starts)
    if total == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, np.empty(0, dtype=np.float64)
    if int(ends.max()) > len(data) - CHUNK_PAD:
        raise RemoteReadError("a chunk runs past the response")
    bits = _Bits(data)
    raw = bits.bytes
    counts = np.where(ends - starts >= 2, (raw[starts].astype(np.int64) << 8) | raw[starts + 1], 0)
    order = np.argsort(-counts, kind="stable")
    counts_sorted = counts[order]
    begin, finish = starts[order].astype(np.uint64), ends[order].astype(np.uint64) * _U64(8)
    longest = int(counts_sorted[0])
    # Where each chunk's samples go in the output (chunks in the order given).
    base = (np.cumsum(counts) - counts)[order]
    times = np.zeros(int(counts.sum()), dtype=np.int64)
    values = np.zeros(len(times), dtype=np.uint64)
    live = int(np.count_nonzero(counts_sorted > 0))
    if live == 0:
        return counts, times, values.view(np.float64)
    zigzag, after = bits.varint(begin[:live] + _U64(2))
    t = (zigzag >> _U64(1)).view(np.int64) ^ -(zigzag & _U64(1)).view(np.int64)
    v = bits.peek(after * _U64(8))
    times[base[:live]], values[base[:live]] = t, v
    pos = (after + _U64(8)) * _U64(8)
    if bool((pos > finish[:live]).any()):
        raise RemoteReadError("a chunk ends before its first sample does")
    delta = np.zeros(live, dtype=np.int64)
    leading = np.zeros(live, dtype=np.uint64)
    trailing = np.zeros(live, dtype=np.uint64)
    for j in range(1, longest):
        if counts_sorted[live - 1] <= j:
            live = int(np.count_nonzero(counts_sorted > j))
            t, v, pos = t[:live], v[:live], pos[:live]
            delta, leading, trailing = delta[:live], leading[:live], trailing[:live]
        if j == 1:
            step, after = bits.varint(pos >> _U64(3))
            delta = step.view(np.int64)
            pos = after * _U64(8)
            word = bits.peek(pos)
        else:
            word = bits.peek(pos)
            if bool((word < _U64(1 << 63)).all()):  # the same delta in every chunk: one 0 bit each
                pos = pos + _U64(1)
                word = word << _U64(1)
            else:
                control = word >> _U64(60)
                width = _DOD_BITS[control]
                used = _PREFIX[control] + width
                dod = (word << _PREFIX[control]) >> (_U64(64) - width)
                wide = width == 64
                if wide.any():
                    dod[wide] = bits.peek(pos[wide] + _U64(4))
                delta = delta + dod.view(np.int64) - (dod > _DOD_MAX[control]) * _DOD_SPAN[control]
                pos = pos + used
                word = word << used
                if wide.any():
                    word[wide] = bits.peek(pos[wide])
        t = t + delta
        head = word >> _U64(62)
        fresh = head == 3
        if fresh.any():
            leading = np.where(fresh, (word >> _U64(57)) & _U64(31), leading)
            significant = (word >> _U64(51)) & _U64(63)
            significant[significant == 0] = 64
            trailing = np.where(fresh, _U64(64) - leading - significant, trailing)
        width = np.where(head >= 2, _U64(64) - leading - trailing, _U64(0))
        start = pos + _VALUE_HEAD[head]
        v = v ^ ((bits.peek(start) >> (_U64(64) - width)) << trailing)
        pos = start + width
        if bool((pos > finish[:live]).any()):
            raise RemoteReadError("a chunk ends before its %d samples do" % (j + 1))
        times[base[:live] + j], values[base[:live] + j] = t, v
    return counts, times, values.view(np.float64)


def decode_chunked_response(data: bytes, queries: int) -> list[list[RawSeries]]:
    """The series of each of `queries` queries in a streamed XOR-chunks response, with
    their samples decoded."""
    padded = data + bytes(CHUNK_PAD)
    try:
        refs = chunk_refs(padded, len(data))
    except IndexError as exc:
        raise RemoteReadError("truncated response (%s)" % exc) from None
    if any(not 0 <= index < queries for index in refs):
        raise RemoteReadError("a frame for query %s of %d" % (sorted(refs), queries))
    every = [series for index in sorted(refs) for series in refs[index]]
    starts = np.array([s for series in every for s in series.starts], dtype=np.int64)
    ends = np.array([e for series in every for e in series.ends], dtype=np.int64)
    try:
        counts, times, values = decode_xor_chunks(padded, *chunk_data(padded, starts, ends))
    except IndexError as exc:  # a length that points past the padding
        raise RemoteReadError("a chunk runs past the response (%s)" % exc) from None
    bounds = np.concatenate([[0], np.cumsum(counts)]).tolist()  # sample offset of each chunk
    out: list[list[RawSeries]] = [[] for _ in range(queries)]
    chunk = 0
    for index in sorted(refs):
        for series in refs[index]:
            first, chunk = bounds[chunk], chunk + len(series.starts)
            stamps, numbers = times[first:bounds[chunk]], values[first:bounds[chunk]]
            if len(stamps) > 1 and not bool((stamps[1:] > stamps[:-1]).all()):
                # Chunks that overlap (from two blocks): the last sample at each time.
                order = np.argsort(stamps, kind="stable")
                stamps, numbers = stamps[order], numbers[order]
                last = np.append(stamps[1:] != stamps[:-1], True)
                stamps, numbers = stamps[last], numbers[last]
            out[index].append(RawSeries(series.labels, stamps, numbers))
    return out


# ---------------------------------------------------------------- resampling
def resample(series: RawSeries, grid_ms: np.ndarray, lookback_ms: int, *,
             left_open: bool) -> tuple[np.ndarray, int]:
    """resample_many() for one series: its values and how many there are."""
    values, counts = resample_many([series], grid_ms, lookback_ms, left_open=left_open)
    return values[0], int(counts[0])


def resample_many(series: Sequence[RawSeries], grid_ms: np.ndarray, lookback_ms: int, *,
                  left_open: bool) -> tuple[np.ndarray, np.ndarray]:
    """The values a range query gives at the evaluation times grid_ms (one row per
    series) and how many each row has: at each time the last sample at or before it
    and no older than the lookback (not as old as the lookback with left_open, as
    Prometheus 3 counts); NaN where there is none or where that sample is a staleness
    marker. All series at once: their samples are keyed (series, time) in one sorted
    array and every (series, evaluation time) is looked up in it."""
    count, points = len(series), len(grid_ms)
    if count == 0 or points == 0:
        return np.full((count, points), np.nan), np.zeros(count, dtype=np.int64)
    oldest, newest = int(grid_ms[0]) - lookback_ms, int(grid_ms[-1])
    span = newest - oldest + 1
    stamps = np.concatenate([s.timestamps for s in series])
    values = np.concatenate([s.values for s in series])
    key = stamps - oldest + np.repeat(np.arange(count, dtype=np.int64) * span, [len(s.timestamps) for s in series])
    inside = (stamps >= oldest) & (stamps <= newest)
    if not bool(inside.all()):
        key, values = key[inside], values[inside]
    if len(key) == 0:
        return np.full((count, points), np.nan), np.zeros(count, dtype=np.int64)
    if len(key) > 1 and not bool((key[1:] >= key[:-1]).all()):
        order = np.argsort(key, kind="stable")
        key, values = key[order], values[order]
    # Every (series, evaluation time) as a key; the sample found for it is the last one
    # at or before it. One of another series is always older than the lookback (every
    # evaluation time is at least the lookback after `oldest`), so the age rules it out.
    wanted = (np.arange(count, dtype=np.int64)[:, None] * span + (grid_ms.astype(np.int64) - oldest)).reshape(-1)
    index = np.searchsorted(key, wanted, side="right") - 1
    found = index >= 0
    np.maximum(index, 0, out=index)
    age = wanted - key[index]
    found &= age < lookback_ms if left_open else age <= lookback_ms
    picked = values[index]
    found &= picked.view(np.uint64) != np.uint64(STALE_NAN_BITS)
    # A NaN sample is a value (counted), written as the one NaN whatever its payload.
    out = np.where(found & ~np.isnan(picked), picked, np.nan)
    return out.reshape(count, points), found.reshape(count, points).sum(axis=1)


# ---------------------------------------------------------------- transport
class RemoteReadClient(PrometheusClient):
    """PrometheusClient that also speaks remote read, with the same retries, backoff,
    authentication and errors as the JSON API."""

    def read(self, queries: Sequence[tuple[int, int, Sequence[Matcher]]]) -> list[list[RawSeries]]:
        """The series each query (start_ms, end_ms, matchers) finds, with their raw samples."""
        body = compress(encode_read_request(queries))
        _status, raw, _retry_after = self._request(self.url + READ_PATH, body, self._public(READ_PATH))
        return decode_read_response(decompress(raw))

    def read_chunks(self, queries: Sequence[tuple[int, int, Sequence[Matcher]]]) -> list[list[RawSeries]]:
        """read() through the streamed XOR-chunks response: the server sends its stored
        chunks without decoding them, the samples are decoded here. Every sample of the
        chunks that overlap a query's range is returned, a few outside it too."""
        body = compress(encode_read_request(queries, chunks=True))
        _status, raw, _retry_after = self._request(self.url + READ_PATH, body, self._public(READ_PATH))
        return decode_chunked_response(raw, len(queries))

    def read_counts(self, queries: Sequence[tuple[int, int, Sequence[Matcher]]]) -> list[list[int]]:
        """How many samples (at least) each series that each query finds has: read()
        without decoding the samples."""
        body = compress(encode_read_request(queries))
        _status, raw, _retry_after = self._request(self.url + READ_PATH, body, self._public(READ_PATH))
        return count_samples(decompress(raw))

    def buildinfo(self) -> dict[str, Any]:
        return self._api("/api/v1/status/buildinfo", {}, post=False)

    def external_labels(self) -> dict[str, str]:
        """global.external_labels of the running configuration: remote read adds them
        to every series, range queries do not."""
        import yaml

        data = self._api("/api/v1/status/config", {}, post=False)
        try:
            config = yaml.safe_load(str(data.get("yaml", ""))) or {}
            labels = (config.get("global") or {}).get("external_labels") or {}
        except (yaml.YAMLError, AttributeError) as exc:
            raise PrometheusResponseError("the configuration is not readable YAML: %s" % exc,
                                          url=self._public("/api/v1/status/config")) from None
        return {str(k): str(v) for k, v in labels.items()}

    def _headers(self, url: str, body: bytes | None) -> dict[str, str]:
        if body is None or not url.endswith(READ_PATH):
            return super()._headers(url, body)
        return {"Content-Type": "application/x-protobuf", "Content-Encoding": "snappy",
                "Accept-Encoding": "snappy", "X-Prometheus-Remote-Read-Version": "0.1.0",
                "User-Agent": "edgelab-prometheus-client"}
