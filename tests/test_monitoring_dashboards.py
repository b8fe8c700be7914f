"""edgelab's Grafana dashboards and Prometheus rules, checked without Grafana.

Every dashboard parses, has a unique uid and sane panels, and every PromQL
expression in a panel, a template variable or a rule names only metrics
that some edgelab exporter produces (roles/prometheus/files/metric_catalog.yml)
or that a recording rule records. The molecule scenario "monitoring" also
parses and type-checks every panel expression with promtool on a lab host.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
DASHBOARDS = sorted((REPO / "roles/grafana/files/dashboards").glob("*.json"))
CATALOG = yaml.safe_load((REPO / "roles/prometheus/files/metric_catalog.yml").read_text())
RULE_TEMPLATES = [REPO / "roles/prometheus/templates/edgelab-recording.yml.j2",
                  REPO / "roles/prometheus/templates/edgelab-alerts.yml.j2"]

# PromQL words that look like identifiers but are not metric names (the
# aggregation operators may be followed by a grouping clause, not "(").
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
            "unless", "offset", "inf", "nan", "atan2", "start", "end",
            "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar", "topk", "bottomk",
            "quantile", "count_values", "limitk", "limit_ratio"}
METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions,
    keywords, label names (in matchers and grouping clauses), durations or
    Grafana variables."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    e = re.sub(r"'(?:[^'\\]|\\.)*'", "''", e)
    e = re.sub(r"`[^`]*`", "``", e)
    e = re.sub(r"\{[^}]*\}", " ", e)               # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)              # ranges and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", r" \1 ", e)
    e = re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", " ", e)   # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        token = m.group(0)
        before = e[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue                                 # 5m, 1e3, 0.5e1
        if e[m.end():].lstrip().startswith("("):
            continue                                 # function call
        if token in KEYWORDS:
            continue
        names.add(token)
    return names


def variable_expr(query: str) -> str:
    """The PromQL inside a Grafana variable query (label_values(expr, label))."""
    m = re.fullmatch(r"\s*label_values\((.*),\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query)
    if m:
        return m.group(1)
    m = re.fullmatch(r"\s*label_values\(\s*[A-Za-z_][A-Za-z0-9_]*\s*\)\s*", query)
    if m:
        return ""
    m = re.fullmatch(r"\s*query_result\((.*)\)\s*", query)
    return m.group(1) if m else query


def load_rules():
    """Rule files as Prometheus gets them (Jinja only sets intervals and thresholds)."""
    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    values = {"ansible_managed": "test", "prometheus_scrape_interval_experiment": 5,
              "prometheus_evaluation_interval": 15, "prometheus_alert_target_down_for": "1m",
              "prometheus_alert_disk_free_ratio": 0.1, "prometheus_alert_disk_fill_hours": 24,
              "prometheus_alert_agent_silent_seconds": 60,
              "prometheus_kubernetes_consumer_namespace": "edgelab",
              "prometheus_kubernetes_consumer_deployment": "edgelab-consumer"}
    rules = []
    for path in RULE_TEMPLATES:
        doc = yaml.safe_load(env.from_string(path.read_text()).render(values))
        rules += [r for g in doc["groups"] for r in g["rules"]]
    return rules


def catalog_metrics() -> set[str]:
    names = set()
    for producer in CATALOG["producers"].values():
        for key in ("lab_verified", "metrics", "hardware_only"):
            names.update(producer.get(key, []))
    return names


def recorded() -> set[str]:
    return {r["record"] for r in load_rules() if "record" in r}


def dashboard_exprs():
    for path in DASHBOARDS:
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            for target in panel.get("targets", []):
                yield path.name, panel["title"], target["expr"]
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
                yield path.name, f"variable {var['name']}", variable_expr(query)


@pytest.mark.parametrize("expr,expected", [
    ('sum by (node) (rate(node_cpu_seconds_total{mode="idle", node=~"$node"}[$__rate_interval]))',
     {"node_cpu_seconds_total"}),
    ("node:power_package_watts:rate1m + on (node) (node:power_dram_watts:rate1m or up * 0)",
     {"node:power_package_watts:rate1m", "node:power_dram_watts:rate1m", "up"}),
    ("count(up == 0) or vector(0)", {"up"}),
    ("histogram_quantile(0.99, sum by (le) (rate(x_bucket[1m] offset 5m)))", {"x_bucket"}),
    ("a / ignoring (le) group_left b > bool 1e3", {"a", "b"}),
])
def test_metric_name_extraction(expr, expected):
    assert metric_names(expr) == expected


def test_there_are_the_four_dashboards():
    assert [p.name for p in DASHBOARDS] == [
        "edgelab-agents-forecasts.json", "edgelab-cluster-overview.json",
        "edgelab-kafka-detection.json", "edgelab-node-energy.json"]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path):
    dash = json.loads(path.read_text())
    assert dash["uid"] == path.stem and len(dash["uid"]) <= 40
    assert dash["title"].startswith("edgelab / ")
    assert "edgelab" in dash["tags"]
    assert isinstance(dash["schemaVersion"], int) and dash["schemaVersion"] >= 36
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert len(dash["panels"]) >= 6
    for panel in dash["panels"]:
        assert panel["type"] in {"timeseries", "stat", "table", "gauge", "bargauge", "state-timeline"}
        g = panel["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert panel["targets"] and len(refs) == len(set(refs)), panel["title"]
        for t in panel["targets"]:
            assert t["expr"].strip(), panel["title"]
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert t["expr"].count("{") == t["expr"].count("}"), t["expr"]
    # Panels do not overlap.
    cells = set()
    for panel in dash["panels"]:
        g = panel["gridPos"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps another panel"
                cells.add((x, y))


def test_dashboard_uids_are_unique():
    uids = [json.loads(p.read_text())["uid"] for p in DASHBOARDS]
    assert len(uids) == len(set(uids))


def test_catalog_names_are_valid_and_listed_once():
    seen = []
    for producer in CATALOG["producers"].values():
        assert producer["description"] and producer["jobs"]
        for key in ("lab_verified", "metrics", "hardware_only"):
            seen += producer.get(key, [])
    assert all(METRIC_NAME.match(n) for n in seen)
    assert len(seen) == len(set(seen))


def test_every_dashboard_expression_names_known_metrics():
    known = catalog_metrics() | recorded()
    unknown = [(name, title, sorted(metric_names(expr) - known))
               for name, title, expr in dashboard_exprs() if metric_names(expr) - known]
    assert unknown == [], "metrics no edgelab exporter or recording rule produces"


def test_every_rule_names_known_metrics():
    known = catalog_metrics() | recorded()
    unknown = [(r.get("record") or r.get("alert"), sorted(metric_names(r["expr"]) - known))
               for r in load_rules() if metric_names(r["expr"]) - known]
    assert unknown == []


def test_recording_rules_are_used_and_named_by_convention():
    rules = [r for r in load_rules() if "record" in r]
    for r in rules:
        assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", r["record"]), r["record"]
    used = set().union(*(metric_names(e) for _, _, e in dashboard_exprs()))
    used |= set().union(*(metric_names(r["expr"]) for r in rules))
    assert {r["record"] for r in rules} - used == set(), "recording rules no dashboard or rule reads"


def test_every_kpi_of_the_issue_has_a_panel():
    exprs = " ".join(e for _, _, e in dashboard_exprs())
    for kpi in ("topic:edgelab_consumer_frames:rate1m",                # throughput
                "topic:edgelab_consumer_lag_messages:sum",             # consumer lag
                "topic:edgelab_consumer_latency_seconds:p90_rate1m",   # p90 latency
                "topic:edgelab_consumer_latency_seconds:p99_rate1m",   # p99 latency
                "node:power_watts:rate1m"):                            # power per node
        assert kpi in exprs, kpi


def test_kepler_rules_have_panels():
    exprs = " ".join(e for _, _, e in dashboard_exprs())
    for rule in ("node_zone:kepler_node_cpu_watts:rate1m",                # node power by zone
                 "namespace:kepler_pod_cpu_watts:rate1m",                 # power per namespace
                 "namespace_pod:kepler_pod_cpu_watts:rate1m",             # top pods
                 "namespace_pod_container:kepler_container_cpu_watts:rate1m",  # top containers
                 "pod:edgelab_consumer_kepler_watts:rate1m",              # the consumers' pods
                 "cluster:edgelab_consumer_kepler_joules_per_frame:rate1m"):
        assert rule in exprs, rule


def test_every_cluster_scrape_job_has_its_metrics_in_the_catalog():
    # The jobs group_vars/all/cluster.yml declares (kepler, kubelet,
    # cadvisor) each have a catalog producer, and the rules read Kepler's
    # current names only (v0.10+: no kepler_container_joules_total).
    cluster = yaml.safe_load((REPO / "group_vars/all/cluster.yml").read_text())
    jobs = {k.removeprefix("prometheus_scrape_job_") for k in cluster if k.startswith("prometheus_scrape_job_")}
    catalogued = {j for producer in CATALOG["producers"].values() for j in producer["jobs"]}
    assert jobs and jobs <= catalogued, sorted(jobs - catalogued)
    rule_metrics = set().union(*(metric_names(r["expr"]) for r in load_rules()))
    assert {"kepler_node_cpu_joules_total", "kepler_pod_cpu_joules_total",
            "kepler_container_cpu_joules_total"} <= rule_metrics
    old_names = re.compile(r"kepler_container_(package_|dram_|core_|other_)?joules_total")
    assert not {n for n in catalog_metrics() | rule_metrics if old_names.fullmatch(n)}
