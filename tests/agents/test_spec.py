"""Experiment specs: the shipped ones are valid, defaults are filled in, and every
error names its field."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from edgelab.experiments.spec import SpecError, load_spec, main, validate

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted((ROOT / "experiments").glob("*.yml"))


def smoke() -> dict[str, Any]:
    return dict(yaml.safe_load((ROOT / "experiments" / "lab-smoke.yml").read_text()))


def test_the_shipped_specs_are_valid() -> None:
    assert {p.name for p in SHIPPED} >= {"lab-smoke.yml", "day-night.yml"}
    for path in SHIPPED:
        spec = load_spec(path)
        assert spec["name"] == path.stem
    lab = load_spec(ROOT / "experiments" / "lab-smoke.yml")
    assert lab["duration_s"] * lab["cycles"] == 180  # the 3-minute smoke
    seed = load_spec(ROOT / "experiments" / "day-night.yml")
    assert seed["load"]["profile"] == "default" and seed["load"]["breakpoints"] == 24
    assert seed["model"] == {"source": "store", "exp_id": "day-night", "imgsz": 640, "conf": 0.25, "iou": 0.45}


def test_defaults_are_filled_in() -> None:
    minimal = {"name": "tiny", "duration": 90, "load": {"max_mbps": 5}, "frames": {}, "consumers": {"max": 2},
               "cluster_agent": {}, "model": {}, "kpi": {"name": "processed_fraction", "sla": 0.99}}
    spec = validate(minimal)
    assert spec["duration_s"] == 90 and spec["cycles"] == 1
    assert spec["load"] == {"max_mbps": 5, "breakpoints": 24, "profile": "default"}
    assert spec["frames"] == {"source": "synthetic", "size": "640x480", "images": 8, "seed": 4}
    assert spec["consumers"] == {"min": 1, "max": 2, "start": 1, "threads": 1}
    assert spec["kpi"]["bound"] == "lower" and spec["kpi"]["window_s"] == 60
    assert spec["extract"]["segment_size"] == 2000 and spec["extract"]["format"] == "parquet"


@pytest.mark.parametrize(("path", "value", "message"), [
    (("duration",), "soon", "duration: 'soon' is not a duration"),
    (("cycles",), 0, "cycles: must be >= 1, got 0"),
    (("load", "max_mbps"), -1, "load.max_mbps: must be > 0, got -1"),
    (("load", "profile"), [0.5, 2], "load.profile: must be 'default' or a non-empty list of fractions from 0 to 1"),
    (("load", "breakpoints"), 1000, "load.breakpoints: makes steps shorter than 1 s (180 s / 1000)"),
    (("frames", "size"), "big", "frames.size: must be WIDTHxHEIGHT, got 'big'"),
    (("frames", "source"), "camera", "frames.source: must be one of synthetic, directory, got 'camera'"),
    (("consumers", "min"), 4, "consumers.min: must be <= consumers.max (4 > 3)"),
    (("consumers", "start"), 5, "consumers.start: must be from consumers.min to consumers.max (1..3), got 5"),
    (("consumers", "max"), 13, "consumers.max: must be <= 12, got 13"),
    (("cluster_agent", "policy"), "random", "cluster_agent.policy: must be one of target_instances, got 'random'"),
    (("cluster_agent", "per_instance"), 0, "cluster_agent.per_instance: must be > 0, got 0"),
    (("model", "imgsz"), 100, "model.imgsz: must be a multiple of 32, got 100"),
    (("model", "path"), "/m.onnx", "model.path: does not go with source: lab"),
    (("kpi", "name"), "speed", "kpi.name: must be one of end_to_end_latency_p95"),
    (("kpi", "sla"), "fast", "kpi.sla: must be a number, got 'fast'"),
    (("extract", "segment_size"), 12000, "extract.segment_size: must be <= 11000, got 12000"),
    (("extract", "selectors"), "up", "extract.selectors: must be a list of PromQL series selectors"),
    (("extract", "colour"), "red", "extract.colour: is not a known field"),
    (("name",), "Lab Smoke", "name: must be lower-case letters, digits and '-', got 'Lab Smoke'"),
])
def test_errors_name_the_field(path: tuple[str, ...], value: object, message: str) -> None:
    spec = copy.deepcopy(smoke())
    target = spec
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(SpecError) as info:
        validate(spec)
    assert message in str(info.value)


def test_missing_sections_and_fields_are_named() -> None:
    spec = smoke()
    del spec["consumers"]["max"], spec["kpi"], spec["model"]
    spec["model"] = {"source": "store"}
    with pytest.raises(SpecError) as info:
        validate(spec)
    assert str(info.value) == "consumers.max: is missing; model.exp_id: is missing; kpi: is missing; " \
                              "kpi.name: is missing (one of end_to_end_latency_p95, end_to_end_latency_p99, " \
                              "inference_latency_p95, processed_fraction, consumer_lag); kpi.sla: is missing"


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(p) for p in SHIPPED]) == 0
    assert capsys.readouterr().out.count(": ok (") == len(SHIPPED)
    bad = smoke()
    bad["consumers"]["min"] = 9
    (tmp_path / "lab-smoke.yml").write_text(yaml.safe_dump(bad))
    assert main([str(tmp_path / "lab-smoke.yml")]) == 2
    err = capsys.readouterr().err
    assert err == (f"edgelab-spec: bad input: {tmp_path}/lab-smoke.yml: consumers.min: must be <= consumers.max "
                   "(9 > 3)\n")
    (tmp_path / "other.yml").write_text(yaml.safe_dump(smoke()))
    assert main([str(tmp_path / "other.yml")]) == 2
    assert "name: must match the file name (other), got 'lab-smoke'" in capsys.readouterr().err
    (tmp_path / "broken.yml").write_text("name: [unclosed\n")
    assert main([str(tmp_path / "broken.yml")]) == 2
    assert capsys.readouterr().err.startswith(f"edgelab-spec: bad input: {tmp_path}/broken.yml: not YAML: ")
