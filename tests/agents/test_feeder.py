"""edgelab-feeder: the load profile's math, the generated frames, the command line's
bad input, and feeding a real Tansu broker on loopback (frames consumed back and
counted, rate within 5 % in every 10 s window)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from edgelab.experiments.feeder import Cumulative, main, synthetic_frame, synthetic_frames
from edgelab.experiments.profile import (
    DEFAULT_FRACTIONS,
    ProfileError,
    interpolate,
    load_fractions,
    schedule,
)
from support.tansu import MISSING, running_tansu, tansu_binary


# ---------------------------------------------------------------- profile math
def test_default_profile_is_the_seeds_day_night_curve() -> None:
    assert len(DEFAULT_FRACTIONS) == 24
    assert min(DEFAULT_FRACTIONS) == pytest.approx(0.03)
    assert max(DEFAULT_FRACTIONS) == DEFAULT_FRACTIONS[17] == pytest.approx(0.97)  # the 17h peak


def test_interpolation_over_breakpoints() -> None:
    assert interpolate(DEFAULT_FRACTIONS, 24) == pytest.approx(list(DEFAULT_FRACTIONS))
    assert interpolate(DEFAULT_FRACTIONS, 6) == pytest.approx(list(DEFAULT_FRACTIONS[::4]))
    half = interpolate([0.2, 0.6, 1.0], 6)  # midpoints between hours, wrapping 1.0 -> 0.2
    assert half == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 0.6])
    assert interpolate([0.5], 3) == pytest.approx([0.5, 0.5, 0.5])
    with pytest.raises(ProfileError, match=r"breakpoints must be >= 1"):
        interpolate([0.5], 0)


def test_schedule_rates_durations_and_bytes() -> None:
    plan = schedule(80.0, 120.0, 4, 3, [0.25, 0.5, 1.0, 0.0])
    assert plan.step_s == 30.0 and plan.cycle_s == 120.0 and plan.total_s == 360.0
    assert plan.rates_bps == pytest.approx((2.5e6, 5e6, 10e6, 0.0))  # 80 Mbit/s = 10 MB/s at 1.0
    assert plan.rate_at(0) == 2.5e6 and plan.rate_at(65) == 10e6 and plan.rate_at(125) == 2.5e6
    assert plan.rate_at(95) == 0.0 and plan.rate_at(360) == 0.0
    assert plan.bytes_between(0, 120) == pytest.approx(30 * 17.5e6)
    assert plan.bytes_between(25, 35) == pytest.approx(5 * 2.5e6 + 5 * 5e6)
    cumulative = Cumulative(plan)
    for t in (0.0, 12.5, 30.0, 59.9, 119.0, 200.0, 359.0, 400.0):
        assert cumulative.at(t) == pytest.approx(plan.bytes_between(0, t)), t
    with pytest.raises(ProfileError, match="max_mbps must be > 0"):
        schedule(0, 10, 1, 1)
    with pytest.raises(ProfileError, match=r"fraction 1 is 1\.5, outside"):
        schedule(1, 10, 1, 1, [0.5, 1.5])


def test_profile_files(tmp_path: Path) -> None:
    (tmp_path / "p.yml").write_text("fractions: [0.1, 0.9]\ndescription: two steps\n")
    (tmp_path / "p.json").write_text("[0.5, 0.25]")
    (tmp_path / "bad.yml").write_text("fractions: [0.1, high]\n")
    (tmp_path / "keys.yml").write_text("fraction: [0.1]\n")
    assert load_fractions(str(tmp_path / "p.yml")) == [0.1, 0.9]
    assert load_fractions(str(tmp_path / "p.json")) == [0.5, 0.25]
    with pytest.raises(ProfileError, match="fraction 1 is 'high', not a number"):
        load_fractions(str(tmp_path / "bad.yml"))
    with pytest.raises(ProfileError, match="unknown keys fraction"):
        load_fractions(str(tmp_path / "keys.yml"))
    with pytest.raises(ProfileError, match="No such file"):
        load_fractions(str(tmp_path / "missing.yml"))


def test_generated_frames_are_deterministic_ppm() -> None:
    frame = synthetic_frame(64, 48, 0, 4)
    assert frame.startswith(b"P6\n64 48\n255\n") and len(frame) == len(b"P6\n64 48\n255\n") + 64 * 48 * 3
    assert frame == synthetic_frame(64, 48, 0, 4)
    frames = synthetic_frames(64, 48, 4, 4)
    assert len(set(frames)) == 4 and frames[0] == frame
    assert synthetic_frame(64, 48, 0, 5) != frame


# ---------------------------------------------------------------- command line
def one_error(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("edgelab-feeder:")]
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--max_mbps", "10", "--duration", "5", "--bootstrap", "127.0.0.1:1", "--no-progress"]
    (tmp_path / "empty").mkdir()
    assert main([*base, "--frames", str(tmp_path / "empty")]) == 2
    assert "holds no image files" in one_error(capsys)
    (tmp_path / "profile.yml").write_text("[2]\n")
    assert main([*base, "--profile", str(tmp_path / "profile.yml")]) == 2
    assert "fraction 0 is 2, outside [0, 1]" in one_error(capsys)
    assert main([*base, "--security-protocol", "SASL_SSL"]) == 2
    assert "needs --sasl-username and --sasl-password-file" in one_error(capsys)
    assert main([*base]) == 2  # nothing listens on port 1
    assert one_error(capsys).startswith("edgelab-feeder: config error: kafka 127.0.0.1:1:")
    with pytest.raises(SystemExit):
        main(["--max_mbps", "10", "--duration", "soon", "--bootstrap", "x:1"])


# ---------------------------------------------------------------- against Tansu
@pytest.fixture(scope="module")
def broker() -> Iterator[str]:
    binary = tansu_binary()
    if binary is None:
        pytest.skip(MISSING)
    with running_tansu(binary) as address:
        yield address


def consume_all(address: str, topic: str, expected: int, timeout_s: float = 60.0) -> list[tuple[bytes, bytes]]:
    from edgelab.kafka import GroupConsumer, KafkaSettings

    records: list[tuple[bytes, bytes]] = []
    with GroupConsumer(KafkaSettings(bootstrap=[address]), topic=topic, group="test-" + topic) as consumer:
        consumer.run(lambda r: records.append((r.key, r.value)), max_records=expected, timeout_s=timeout_s)
    return records


def test_feeds_the_profile_within_5_percent_per_window(broker: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "report.json"
    (tmp_path / "two.yml").write_text("[0.4, 1.0]\n")
    before = time.time()
    # Two breakpoints of 10 s: 16 then 40 Mbit/s, 320x240 frames (230,415 bytes).
    rc = main(["--max_mbps", "40", "--duration", "20", "--breakpoints", "2", "--profile", str(tmp_path / "two.yml"),
               "--frame-size", "320x240", "--bootstrap", broker, "--topic", "frames-rate", "--report", str(report),
               "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    summary = json.loads(report.read_text())
    assert summary["errors"] == 0 and summary["frames_acked"] == summary["frames_sent"] > 0
    # The schedule's zero on the wall clock (the report's time axis starts there).
    assert before <= summary["started"] <= before + 15
    assert [round(w["target_mbps"]) for w in summary["per_window"]] == [16, 40]
    assert all(abs(w["error_pct"]) <= 5.0 for w in summary["per_window"]), summary["per_window"]
    assert "2 of 2 windows within 5 %" in out
    records = consume_all(broker, "frames-rate", summary["frames_sent"])
    assert len(records) == summary["frames_sent"]
    assert sum(len(v) for _k, v in records) == summary["bytes_acked"]
    assert len({k for k, _v in records}) == len(records)  # every key names one frame
    assert all(v.startswith(b"P6\n320 240\n255\n") for _k, v in records)


def test_feeds_a_directory_of_images(broker: str, tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    files = {"a.jpg": b"\xff\xd8" + b"a" * 5000, "b.png": b"\x89PNG" + b"b" * 7000}
    for name, data in files.items():
        (images / name).write_bytes(data)
    (images / "notes.txt").write_text("not an image")
    report = tmp_path / "report.json"
    assert main(["--max_mbps", "1", "--duration", "3", "--frames", str(images), "--bootstrap", broker,
                 "--topic", "frames-dir", "--source", "cam7", "--report", str(report), "--no-progress"]) == 0
    summary = json.loads(report.read_text())
    records = consume_all(broker, "frames-dir", summary["frames_sent"])
    assert len(records) == summary["frames_sent"] >= 20  # 375,000 bytes at 1 Mbit/s in 3 s
    assert {v for _k, v in records} == set(files.values())
    assert all(k.startswith(b"cam7-") for k, _v in records)


def test_past_the_brokers_limit_the_shortfall_shows(broker: str, tmp_path: Path) -> None:
    from edgelab.experiments.feeder import MAX_IN_FLIGHT

    report = tmp_path / "report.json"
    (tmp_path / "flat.yml").write_text("[1.0]\n")
    # 100 Gbit/s is far beyond a loopback broker: the windows fall short, and what
    # kafka-python still held at the end is bounded, not the backlog of the run.
    assert main(["--max_mbps", "100000", "--duration", "10", "--breakpoints", "1", "--profile",
                 str(tmp_path / "flat.yml"), "--bootstrap", broker, "--topic", "frames-limit", "--report",
                 str(report), "--no-progress"]) == 0
    summary = json.loads(report.read_text())
    assert summary["per_window"][0]["error_pct"] < -50
    assert summary["errors"] == 0 and summary["frames_acked"] == summary["frames_sent"]
    assert summary["bytes_acked_late"] <= MAX_IN_FLIGHT + 921_615
    assert summary["achieved_mbps_mean"] == pytest.approx(summary["per_window"][0]["achieved_mbps"])
