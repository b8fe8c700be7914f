#!/usr/bin/env python3
"""Prometheus's memory (RSS) and CPU on the monitoring host, per scrape interval.

For each interval (default 15 s, the baseline, then 5 s and 1 s) the script
applies role prometheus with every job and every rule group at that interval,
restarts Prometheus (an empty head block, so each run starts alike), waits a
warm-up, then samples /proc/<pid> of the prometheus process over a window:
CPU = (utime + stime) consumed during the window / the window, RSS = mean and
maximum of the samples. The CPU of node_exporter on the same host is sampled
alike: the cost of being scraped that often, on every scraped host. It also reads, through the API, how many samples per
second Prometheus appends. At the end it applies the role with edgelab's
defaults again. Every step is bounded: the playbook runs, the warm-up and the
window have timeouts, so the whole run ends by itself.

Only lab (or loopback) addresses are contacted: the inventory's hosts over SSH
and the monitoring host's Prometheus API.

    .venv/bin/python benchmarks/prometheus_scrape_cost.py -i inventory/lab
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAYBOOK = REPO / "benchmarks" / "prometheus_scrape_cost.yml"
BIN = Path(sys.executable).parent


def run(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True, **kw)


class Host:
    """SSH to one inventory host with the inventory's own connection settings."""

    def __init__(self, inventory: str, name: str):
        hv = json.loads(run([str(BIN / "ansible-inventory"), "-i", inventory, "--host", name], 60).stdout)
        self.address = hv.get("ansible_host", name)
        self.cmd = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]
        if hv.get("ansible_ssh_private_key_file"):
            self.cmd += ["-i", hv["ansible_ssh_private_key_file"]]
        self.cmd += shlex.split(hv.get("ansible_ssh_common_args", ""))
        self.cmd += [f"{hv.get('ansible_user', 'root')}@{self.address}"]

    def sh(self, script: str, timeout: float = 30) -> str:
        return run([*self.cmd, script], timeout).stdout


class Api:
    def __init__(self, url: str, user: str, password: str):
        self.url = url
        self.auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    def get(self, path: str, timeout: float = 10):
        req = urllib.request.Request(self.url + path, headers={"Authorization": self.auth})
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status}")
            body = resp.read()
        return json.loads(body) if path.startswith("/api/") else body

    def scalar(self, query: str) -> float:
        data = self.get("/api/v1/query?query=" + urllib.parse.quote(query))["data"]["result"]
        return float(data[0]["value"][1]) if data else float("nan")


def apply_role(inventory: str, extra: dict, timeout: float) -> float:
    start = time.monotonic()
    env = dict(os.environ, ANSIBLE_FORCE_COLOR="0", ANSIBLE_LOCALHOST_WARNING="false")
    proc = subprocess.run([str(BIN / "ansible-playbook"), "-i", inventory, str(PLAYBOOK), "-e", json.dumps(extra)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        sys.exit(f"ansible-playbook failed:\n{proc.stdout[-3000:]}{proc.stderr[-2000:]}")
    return time.monotonic() - start


PROC = ("tck=$(getconf CLK_TCK); for u in prometheus prometheus-node-exporter; do "
        "pid=$(systemctl show -p MainPID --value $u); "
        "echo $u $pid $tck $(cut -d' ' -f14,15 /proc/$pid/stat)"
        " $(grep VmRSS /proc/$pid/status | tr -s ' ' | cut -d' ' -f2); done")


def sample(host: Host) -> dict[str, tuple[int, float, int, float]]:
    """Per unit: pid, CPU seconds used so far, RSS bytes, monotonic time of the sample."""
    out = {}
    now = time.monotonic()
    for line in host.sh(PROC).strip().split("\n"):
        unit, pid, tck, utime, stime, rss_kb = line.split()
        out[unit] = (int(pid), (int(utime) + int(stime)) / int(tck), int(rss_kb) * 1024, now)
    return out


def usage(samples: list[tuple[int, float, int, float]]) -> tuple[float, float, float]:
    """CPU (% of one core) over the samples, mean and max RSS (MiB)."""
    if len({s[0] for s in samples}) != 1:
        sys.exit("a measured process restarted during the window")
    cpu = (samples[-1][1] - samples[0][1]) / (samples[-1][3] - samples[0][3])
    rss = [s[2] for s in samples]
    return 100 * cpu, sum(rss) / len(rss) / 2**20, max(rss) / 2**20


def measure(host: Host, api: Api, warmup: float, window: float, step: float) -> dict:
    host.sh("systemctl restart prometheus")
    deadline = time.monotonic() + 60
    while True:
        try:
            api.get("/-/ready")
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit("Prometheus did not become ready within 60 s")
            time.sleep(1)
    time.sleep(warmup)
    samples = [sample(host)]
    end = samples[0]["prometheus"][3] + window
    while time.monotonic() < end:
        time.sleep(min(step, max(0.0, end - time.monotonic())))
        samples.append(sample(host))
    cpu, rss_mean, rss_max = usage([s["prometheus"] for s in samples])
    exporter_cpu, _, _ = usage([s["prometheus-node-exporter"] for s in samples])
    targets = api.get("/api/v1/targets?state=active")["data"]["activeTargets"]
    return {
        "cpu_percent": cpu,
        "rss_mean_mib": rss_mean,
        "rss_max_mib": rss_max,
        "node_exporter_cpu_percent": exporter_cpu,
        "samples_per_s": api.scalar("rate(prometheus_tsdb_head_samples_appended_total[1m])"),
        "head_series": api.scalar("prometheus_tsdb_head_series"),
        "targets_up": sum(t["health"] == "up" for t in targets),
        "targets": len(targets),
        "n_samples": len(samples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-i", "--inventory", default=str(REPO / "inventory" / "lab"))
    ap.add_argument("--host", help="monitoring host (default: the first of group monitoring)")
    ap.add_argument("--credentials-dir", help="edgelab_credentials_dir (default: <inventory dir>/credentials)")
    ap.add_argument("--intervals", default="15,5,1", help="scrape intervals in seconds; the first is the baseline")
    ap.add_argument("--warmup", type=float, default=60)
    ap.add_argument("--window", type=float, default=120)
    ap.add_argument("--step", type=float, default=5)
    args = ap.parse_args()

    inv = str(Path(args.inventory).resolve())
    inv_dir = Path(inv) if Path(inv).is_dir() else Path(inv).parent
    creds = Path(args.credentials_dir or inv_dir / "credentials").resolve()
    graph = json.loads(run([str(BIN / "ansible-inventory"), "-i", inv, "--list"], 60).stdout)
    name = args.host or graph["monitoring"]["hosts"][0]
    host = Host(inv, name)
    password = (creds / "prometheus_web_password").read_text().strip()
    api = Api(f"http://{host.address}:9090", "edgelab", password)
    cpus = host.sh("nproc").strip()
    model = host.sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    version = host.sh("prometheus --version 2>&1 | head -1").strip()

    results = []
    try:
        for interval in (int(x) for x in args.intervals.split(",")):
            took = apply_role(inv, {"edgelab_credentials_dir": str(creds),
                                    "prometheus_scrape_interval": interval,
                                    "prometheus_scrape_interval_experiment": interval,
                                    "prometheus_evaluation_interval": interval}, timeout=900)
            r = measure(host, api, args.warmup, args.window, args.step)
            r["interval_s"] = interval
            results.append(r)
            print(f"interval {interval:>2} s: CPU {r['cpu_percent']:.2f}% of one core, RSS mean "
                  f"{r['rss_mean_mib']:.1f} MiB (max {r['rss_max_mib']:.1f}), {r['samples_per_s']:.0f} samples/s, "
                  f"{r['head_series']:.0f} series, {r['targets_up']}/{r['targets']} targets up; "
                  f"node_exporter on the same host: CPU {r['node_exporter_cpu_percent']:.2f}% "
                  f"(role applied in {took:.0f} s)", flush=True)
    finally:
        apply_role(inv, {"edgelab_credentials_dir": str(creds)}, timeout=900)
        host.sh("systemctl restart prometheus")

    base = results[0]
    print()
    print(f"host {name} ({host.address}): {cpus} CPUs, {model}; {version}")
    print(f"warm-up {args.warmup:.0f} s, window {args.window:.0f} s, a sample every {args.step:.0f} s; "
          f"baseline = the first interval ({base['interval_s']} s), measured in this run")
    print("| scrape interval | Prometheus CPU (% of one core) | RSS mean (MiB) | RSS max (MiB) | samples/s"
          " | head series "
          "| CPU vs baseline | RSS vs baseline | node_exporter CPU (% of one core) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['interval_s']} s | {r['cpu_percent']:.2f} | {r['rss_mean_mib']:.1f} | {r['rss_max_mib']:.1f} | "
              f"{r['samples_per_s']:.0f} | {r['head_series']:.0f} | x{r['cpu_percent'] / base['cpu_percent']:.2f} | "
              f"x{r['rss_mean_mib'] / base['rss_mean_mib']:.2f} | {r['node_exporter_cpu_percent']:.2f} |")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
