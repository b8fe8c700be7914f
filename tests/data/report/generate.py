"""Writes the stored inputs of tests/agents/test_report.py (deterministic; rerun to
regenerate, the files are committed):

    .venv/bin/python tests/data/report/generate.py

A 180 s run starting at 2026-01-01T00:00:00Z, shaped like the lab smoke experiment:
- feeder.json: an edgelab-feeder --report, 18 windows of 10 s, 2 to 10 frames/s;
- results.jsonl.gz: edgelab-consumer records; about 3 % of the frames have no result,
  5 results are repeated (at-least-once), 2 carry a decoding error, 2 lines are
  unusable; one consumer, a second from 60 s, a third from 120 s; the end-to-end
  latency is high (p95 well above 2 s) from 60 to 90 s and from 150 to 180 s;
- decisions.jsonl: the cluster agent's records, as log lines and as plain JSON lines;
- dataset.parquet: edgelab-extract's layout (timestamp[ms, UTC] and one column per
  series, name{labels}) every 5 s from 30 s before to 30 s after the run: idle CPU
  counters of two nodes (no power series, as on the lab), the node agent's
  prediction and measured CPU, its instances, the consumers' lag, and an unrelated series.
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
T0 = 1767225600.0  # 2026-01-01T00:00:00Z
DURATION = 180
WINDOW = 10
FRACTIONS = (0.05, 0.1, 0.3, 0.5, 0.6, 0.7, 0.75, 0.8, 0.9, 1.0, 0.95, 0.9, 0.8, 0.7, 0.5, 0.35, 0.2, 0.1)


def busy_at(t: float, node: int) -> float:
    """The nodes' CPU utilisation at t seconds from T0."""
    return min(0.95, 0.1 + 0.6 * math.sin(math.pi * max(0.0, min(t, DURATION)) / DURATION) + 0.1 * node)


def main() -> None:
    rng = np.random.default_rng(14)
    counts = [round(2 + 8 * f) * WINDOW for f in FRACTIONS]
    rows = [{"start_s": w * WINDOW, "seconds": WINDOW, "target_mbps": 0.0, "achieved_mbps": 0.0, "frames": n,
             "error_pct": 0.0} for w, n in enumerate(counts)]
    feeder = {"source": "feeder", "duration_s": DURATION, "frames_sent": sum(counts), "frames_acked": sum(counts),
              "frames_acked_late": 0, "errors": 0, "first_error": "", "per_window": rows, "window_s": WINDOW}
    (HERE / "feeder.json").write_text(json.dumps(feeder, indent=1) + "\n")

    lines: list[str] = []
    seq = 0
    for w, n in enumerate(counts):
        for k in range(n):
            produced = T0 + w * WINDOW + k * WINDOW / n
            t = produced - T0
            active = 1 + (t >= 60) + (t >= 120)
            consumer = 1 + seq % active
            if seq > 0 and rng.random() < 0.03:
                seq += 1
                continue
            inference = float(rng.lognormal(math.log(0.04), 0.25))
            slow = 60 <= t < 90 or 150 <= t < 180
            e2e = inference + float(rng.lognormal(math.log(3.0 if slow else 0.2), 0.3))
            record = {
                "frame": f"feeder-{seq}", "partition": seq % 12, "offset": seq // 12,
                "consumer": f"edgelab-consumer@{consumer}", "model": {"name": "edgelab-lab-yolo", "version": "1"},
                "frame_bytes": 230415, "width": 320, "height": 240,
                "produced": round(produced, 6), "received": round(produced + e2e - inference - 0.01, 6),
                "inference_start": round(produced + e2e - inference - 0.005, 6),
                "inference_end": round(produced + e2e - 0.005, 6), "published": round(produced + e2e, 6),
                "detections": [] if seq % 4 else [{"box": [10.0, 12.0, 50.0, 60.0], "score": 0.5, "class": 3}],
                "error": "frame: not a PPM, NPY or image file" if seq in (40, 41) else None,
            }
            lines.append(json.dumps(record, separators=(",", ":")))
            seq += 1
    # At-least-once: five results again, from another consumer, a little later.
    for index in (10, 200, 400, 600, 800):
        again = json.loads(lines[index])
        again["consumer"] = "edgelab-consumer@1"
        again["published"] = round(again["published"] + 0.5, 6)
        lines.append(json.dumps(again, separators=(",", ":")))
    lines.insert(300, "not json at all")
    lines.insert(500, json.dumps({"frame": "feeder-x", "published": T0}))
    # mtime 0: the same bytes on every run.
    with (HERE / "results.jsonl.gz").open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as stream:
        stream.write(("\n".join(lines) + "\n").encode())

    decisions: list[str] = []
    instances = 1
    plan = {55: ("scale_up", 2), 115: ("scale_up", 3), 170: ("scale_down", 2)}
    for n, t in enumerate(range(5, DURATION + 1, 5)):
        action, target = plan.get(t, ("hold", instances))
        prediction = busy_at(t + 10, 0)
        record = {"event": "decision", "ts": T0 + t, "worker": "lab1", "action": action,
                  "prediction": round(prediction, 6), "target": target, "desired": target, "previous": instances,
                  "instances": instances, "model": "online:ridge", "validation_error": 0.05, "seq": n,
                  "sample_ts": T0 + t - 0.1}
        text = json.dumps(record, separators=(",", ":"))
        decisions.append(f"2026-01-01 00:{t // 60:02d}:{t % 60:02d},000 INFO edgelab.cluster_agent.decisions: {text}"
                         if n % 2 else text)
        if action != "hold":
            ok = t != 170
            done = {"event": "actuation", "ts": T0 + t + 1, "worker": "lab1", "target": target, "ok": ok,
                    "instances": target if ok else instances, "error": "" if ok else "systemctl: timed out",
                    "latency_s": 0.8, "actuator": "xmpp", "seq": n}
            decisions.append(json.dumps(done, separators=(",", ":")))
            instances = done["instances"]
    decisions.insert(0, "2026-01-01 00:00:00,000 INFO edgelab.cluster_agent: cluster agent starting")
    (HERE / "decisions.jsonl").write_text("\n".join(decisions) + "\n")

    times = np.arange(T0 - 30, T0 + DURATION + 30 + 1, 5.0)
    columns: dict[str, np.ndarray] = {}
    for node in (0, 1):
        name = f"lab{node + 1}"
        for cpu in (0, 1):
            busy = np.array([busy_at(t - T0, node) + 0.02 * cpu for t in times])
            idle = 1000.0 * (cpu + 1) + np.cumsum(np.r_[0.0, 5.0 * (1 - busy[1:])])
            labels = f'cpu="{cpu}",instance="10.213.0.{11 + node}:9100",job="node",mode="idle",node="{name}"'
            columns["node_cpu_seconds_total{%s}" % labels] = idle
            columns["node_cpu_seconds_total{%s}" % labels.replace("idle", "user")] = np.cumsum(5.0 * busy)
    measured = np.array([busy_at(t - T0, 0) for t in times])
    columns['edgelab_agent_cpu_utilisation_ratio{agent="lab1",job="agents",node="lab1"}'] = measured
    predicted = np.array([busy_at(t - T0 + 10, 0) + 0.03 for t in times])
    predicted[3] = math.nan
    columns['edgelab_agent_prediction{agent="lab1",job="agents",node="lab1",target="cpu_utilisation"}'] = predicted
    columns['edgelab_agent_instances{agent="lab1",job="agents",node="lab1"}'] = np.array(
        [1.0 if t < T0 + 56 else 2.0 if t < T0 + 116 else 3.0 for t in times])
    for consumer in (1, 2):
        columns['edgelab_consumer_lag_records{consumer="edgelab-consumer@%d",job="consumers"}' % consumer] = \
            rng.integers(0, 30, len(times)).astype(np.float64)
    columns['up{instance="10.213.0.11:9090",job="prometheus",node="lab1"}'] = np.ones(len(times))
    arrays = [pa.array((times * 1000).astype(np.int64), type=pa.int64()).cast(pa.timestamp("ms", tz="UTC"))]
    names = ["timestamp"]
    for name in sorted(columns):
        values = columns[name]
        arrays.append(pa.array(values, type=pa.float64(), mask=np.isnan(values)))
        names.append(name)
    pq.write_table(pa.Table.from_arrays(arrays, names=names), HERE / "dataset.parquet")


if __name__ == "__main__":
    main()
