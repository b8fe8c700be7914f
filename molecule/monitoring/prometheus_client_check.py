#!/usr/bin/env python3
"""Verify step of scenario monitoring: edgelab's Python client (edgelab.prometheus)
against the lab's Prometheus, from the controller, with the deployment's generated
password read from its file (never on the command line).

Checks: every target up through targets(); an instant query sees every node;
a range query returns real points; a wrong password is a PrometheusAuthError (401,
not retried); a broken expression is a PrometheusQueryError carrying Prometheus's
message. Prints one JSON line; exits 1 with a one-line reason on failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from edgelab.prometheus import PrometheusAuthError, PrometheusClient, PrometheusQueryError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--password-file", required=True)
    parser.add_argument("--nodes", required=True, help="comma-separated inventory hostnames")
    args = parser.parse_args()
    nodes = sorted(args.nodes.split(","))

    client = PrometheusClient(args.url, username=args.username, password_file=args.password_file, timeout=5)
    down = [t.scrape_url for t in client.targets() if not t.up]
    if down:
        raise SystemExit(f"targets down: {down}")
    # node!="": the Debian package's stock config scrapes a job "node" (localhost:9100,
    # no node label) until the role's config replaces it; that series stays visible
    # for Prometheus's 5 min lookback.
    selector = 'up{job="node",node!=""}'
    seen = sorted(s.labels.get("node", "") for s in client.query(selector))
    if seen != nodes:
        raise SystemExit(f"up{{job='node'}} has nodes {seen}, expected {nodes}")
    end = time.time()
    series = client.query_range(selector, end - 60, end, 5)
    points = min((len(s.points) for s in series), default=0)
    if len(series) != len(nodes) or points < 2:
        raise SystemExit(f"query_range gave {len(series)} series with at least {points} points")

    with tempfile.NamedTemporaryFile("w", suffix=".pw") as wrong:
        wrong.write("not-the-password\n")
        wrong.flush()
        bad = PrometheusClient(args.url, username=args.username, password_file=wrong.name, timeout=5)
        try:
            bad.query("up")
            raise SystemExit("a wrong password was accepted")
        except PrometheusAuthError as exc:
            auth = {"status": exc.status, "attempts": exc.attempts}
    try:
        client.query("sum(")
        raise SystemExit("a broken expression was accepted")
    except PrometheusQueryError as exc:
        query_error = {"status": exc.status, "message": str(exc)[:120]}

    print(json.dumps({"targets_up": True, "nodes": seen, "range_series": len(series), "min_points": points,
                      "wrong_password": auth, "bad_query": query_error}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
