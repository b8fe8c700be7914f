#!/usr/bin/env python3
"""Benchmark of edgelab-feeder's rate control against a Tansu broker on loopback.

  .venv/bin/python benchmarks/feeder_bench.py [--seconds 30] [--frame-size 640x480]

1. The broker's limit: the feeder asked for far more than it can take (flat profile,
   --max_mbps 100000) for --seconds; the acknowledged mean rate is the limit.
2. The feeder at 10 %, 50 % and 100 % of that limit (flat profile) for --seconds each.
For each run: target and achieved Mbit/s and the rate error of every 10 s window
(acknowledged bytes against the target's integral). Prints RESULT {...} as JSON.
Each feeder runs in its own process (python -m edgelab.experiments.feeder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from support.tansu import MISSING, running_tansu, tansu_binary


def feed(address: str, mbps: float, seconds: int, frame_size: str, topic: str, tmp: Path) -> dict[str, object]:
    report = tmp / ("%s.json" % topic)
    subprocess.run([sys.executable, "-m", "edgelab.experiments.feeder", "--max_mbps", "%.3f" % mbps,
                    "--duration", str(seconds), "--breakpoints", "1", "--profile", str(tmp / "flat.yml"),
                    "--frame-size", frame_size, "--bootstrap", address, "--topic", topic, "--report", str(report),
                    "--no-progress", "--log-level", "WARNING"], check=True, stdout=subprocess.DEVNULL)
    return dict(json.loads(report.read_text()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--frame-size", default="640x480")
    args = parser.parse_args()
    binary = tansu_binary()
    if binary is None:
        raise SystemExit(MISSING)
    result: dict[str, object] = {"seconds": args.seconds, "frame_size": args.frame_size, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="feeder-bench-") as name, running_tansu(binary) as address:
        tmp = Path(name)
        (tmp / "flat.yml").write_text("[1.0]\n")
        limit = feed(address, 100_000, args.seconds, args.frame_size, "bench-limit", tmp)
        limit_mbps = float(limit["achieved_mbps_mean"])  # type: ignore[arg-type]
        print("broker limit: %.1f Mbit/s (%d frames acknowledged in %ss)" % (
            limit_mbps, limit["frames_acked"], args.seconds))
        result["limit_mbps"] = round(limit_mbps, 1)
        runs = []
        for share in (0.10, 0.50, 1.00):
            summary = feed(address, limit_mbps * share, args.seconds, args.frame_size, "bench-%d" % (share * 100), tmp)
            errors = [w["error_pct"] for w in summary["per_window"]]  # type: ignore[attr-defined]
            run = {"share": share, "target_mbps": round(float(summary["target_mbps_mean"]), 2),  # type: ignore[arg-type]
                   "achieved_mbps": round(float(summary["achieved_mbps_mean"]), 2),  # type: ignore[arg-type]
                   "window_error_pct": [round(e, 2) for e in errors], "frames": summary["frames_acked"],
                   "errors": summary["errors"]}
            runs.append(run)
            print("%3d %% of the limit: target %.1f Mbit/s, achieved %.1f, window errors %s %%" % (
                share * 100, run["target_mbps"], run["achieved_mbps"], run["window_error_pct"]))
        result["runs"] = runs
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
