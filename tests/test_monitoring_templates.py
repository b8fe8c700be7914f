"""Monitoring roles' templates rendered by Ansible itself and parsed.

Grafana cannot be installed here (its apt repository is out of reach), so its
configuration and provisioning files are rendered through the role's own
tasks and templates and parsed as Grafana would read them. Prometheus's
files are rendered the same way from a small inventory whose group_vars add
scrape jobs the way later roles do, so the generated scrape set is checked
without a lab (the molecule scenario "monitoring" checks it on lab hosts,
with promtool). Both inventories read the project's
group_vars/all/monitoring.yml, where Prometheus's port, TLS switch and URL are
set once. The TLS variant runs role prometheus's web config tasks for real
(certificate from role pki, promtool check web-config, --diff output).
"""

from __future__ import annotations

import configparser
import json
import shutil
import stat
import subprocess

import pytest
import yaml
from support.labtools import BIN, REPO, ansible_playbook

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {python}
    edgelab_credentials_dir: {tmp}/credentials
  children:
    nucs:
      hosts:
        mon1: {{ansible_host: 192.0.2.11}}
        w1: {{ansible_host: 192.0.2.12}}
        w2: {{ansible_host: 192.0.2.13, base_address: 198.51.100.13}}
    monitoring:
      hosts:
        mon1:
    workers:
      hosts:
        w1:
        w2:
    kafka_brokers:
      hosts:
        mon1:
    mlops:
      hosts:
        mon1:
"""

# Scrape jobs declared the way later roles do (docs/monitoring.md): one
# variable per job in group_vars. kafka: enabled; mlflow: disabled;
# consumers: enabled but its group does not exist in this inventory.
GROUP_VARS_ALL = """
prometheus_scrape_job_kafka:
  group: kafka_brokers
  port: 9404
  experiment: true
  description: Kafka broker metrics
prometheus_scrape_job_mlflow:
  group: mlops
  port: 5000
  enabled: "{{ 'mlflow' in (edgelab_enabled_services | default([])) }}"
prometheus_scrape_job_consumers:
  group: consumers
  port: 9466
  experiment: true
prometheus_scrape_job_node:
  group: nucs
  port: 9100
  experiment: true
  labels:
    cluster: lab
"""

PLAYBOOK = """
- name: Render the monitoring roles' files
  hosts: monitoring
  gather_facts: false
  vars:
    out: {tmp}/out
  tasks:
    - name: Prometheus credentials (generated on the first run)
      ansible.builtin.include_role:
        name: prometheus
        tasks_from: credentials
        public: true

    - name: Prometheus scrape jobs
      ansible.builtin.include_role:
        name: prometheus
        tasks_from: scrape_jobs
        public: true

    - name: Storage facts the templates use
      ansible.builtin.set_fact:
        prometheus_data_path: /srv/data/prometheus
        prometheus_retention_size_effective: 1000MB

    - name: Render Prometheus's files
      ansible.builtin.template:
        src: "{repo}/roles/prometheus/templates/{{{{ item }}}}.j2"
        dest: "{{{{ out }}}}/{{{{ item }}}}"
        mode: "0600"
      loop: [prometheus.yml, web.yml, edgelab-recording.yml, edgelab-alerts.yml, prometheus.default,
             prometheus.service.d.conf]

    - name: Grafana credentials (generated on the first run)
      ansible.builtin.include_role:
        name: grafana
        tasks_from: credentials
        public: true

    - name: Render Grafana's files
      ansible.builtin.template:
        src: "{repo}/roles/grafana/templates/{{{{ item }}}}.j2"
        dest: "{{{{ out }}}}/{{{{ item }}}}"
        mode: "0600"
      loop: [grafana.ini, datasource.yaml, dashboards.yaml, grafana.pref]

    - name: node_exporter's settings
      ansible.builtin.include_vars:
        file: "{repo}/roles/node_exporter/defaults/main.yml"

    - name: Render node_exporter's files
      ansible.builtin.template:
        src: "{repo}/roles/node_exporter/templates/{{{{ item }}}}.j2"
        dest: "{{{{ out }}}}/{{{{ item }}}}"
        mode: "0600"
      loop: [prometheus-node-exporter.default, edgelab_node.prom, 70-edgelab-rapl.rules]
      vars:
        node_exporter_rapl_counters:
          files: [{{path: /sys/devices/virtual/powercap/intel-rapl/intel-rapl:0/energy_uj}}]
"""


def inventory(tmp):
    inv = tmp / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (tmp / "out").mkdir()
    (inv / "hosts.yml").write_text(INVENTORY.format(python=BIN / "python", tmp=tmp))
    (inv / "group_vars" / "all" / "jobs.yml").write_text(GROUP_VARS_ALL)
    (inv / "group_vars" / "all" / "monitoring.yml").symlink_to(REPO / "group_vars" / "all" / "monitoring.yml")
    return inv


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring")
    inv = inventory(tmp)
    play = tmp / "render.yml"
    play.write_text(PLAYBOOK.format(tmp=tmp, repo=REPO))
    first = ansible_playbook("-i", str(inv), str(play), timeout=300)
    assert first.rc == 0, first.output[-4000:]
    hash_first = (tmp / "out" / "web.yml").read_text()
    second = ansible_playbook("-i", str(inv), str(play), timeout=300)
    assert second.rc == 0, second.output[-4000:]
    return {"dir": tmp / "out", "creds": tmp / "credentials", "web_first": hash_first}


def load_yaml(rendered, name):
    return yaml.safe_load((rendered["dir"] / name).read_text())


def test_scrape_set_comes_from_the_inventory(rendered):
    config = load_yaml(rendered, "prometheus.yml")
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    # mlflow is disabled, consumers' group has no host: both are left out, so no target is down for good.
    assert set(jobs) == {"kafka", "node", "prometheus"}
    node = jobs["node"]
    assert node["scrape_interval"] == "5s" and node["scrape_timeout"] == "5s"
    assert [(c["targets"], c["labels"]) for c in node["static_configs"]] == [
        (["192.0.2.11:9100"], {"cluster": "lab", "node": "mon1"}),
        (["192.0.2.12:9100"], {"cluster": "lab", "node": "w1"}),
        (["198.51.100.13:9100"], {"cluster": "lab", "node": "w2"}),  # base_address wins over ansible_host
    ]
    assert jobs["kafka"]["scrape_interval"] == "5s"
    assert [c["targets"] for c in jobs["kafka"]["static_configs"]] == [["192.0.2.11:9404"]]
    prom = jobs["prometheus"]
    assert prom["scrape_interval"] == "15s" and prom["scrape_timeout"] == "10s"
    assert prom["basic_auth"] == {"username": "edgelab", "password_file": "/etc/prometheus/web_password"}
    assert config["global"]["scrape_interval"] == "15s"
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]


def test_credentials_are_generated_private_and_stable(rendered):
    creds = rendered["creds"]
    names = sorted(p.name for p in creds.iterdir())
    assert names == ["grafana_admin_password", "grafana_secret_key", "prometheus_web_password",
                     "prometheus_web_password.salt"]
    assert stat.S_IMODE(creds.stat().st_mode) == 0o700
    for p in creds.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
    assert len((creds / "prometheus_web_password").read_text().strip()) == 32
    # Same password and salt on the second run: the web config does not change.
    assert (rendered["dir"] / "web.yml").read_text() == rendered["web_first"]


def test_web_config_holds_a_bcrypt_hash_of_the_password(rendered):
    passlib_hash = pytest.importorskip("passlib.hash")
    web = load_yaml(rendered, "web.yml")
    hashed = web["basic_auth_users"]["edgelab"]
    assert hashed.startswith("$2b$10$")
    password = (rendered["creds"] / "prometheus_web_password").read_text().strip()
    assert passlib_hash.bcrypt.verify(password, hashed)
    assert not passlib_hash.bcrypt.verify(password + "x", hashed)
    assert password not in (rendered["dir"] / "web.yml").read_text()
    assert "tls_server_config" not in web


def test_prometheus_flags(rendered):
    text = (rendered["dir"] / "prometheus.default").read_text()
    args = text.split("ARGS='", 1)[1].rsplit("'", 1)[0].split(" ")
    assert "--storage.tsdb.retention.time=30d" in args
    assert "--storage.tsdb.retention.size=1000MB" in args
    assert "--storage.tsdb.path=/srv/data/prometheus" in args
    assert "--web.config.file=/etc/prometheus/web.yml" in args
    assert "--web.listen-address=:9090" in args
    assert "# The web endpoint serves http." in text
    assert "--web.enable-admin-api" not in args  # the admin API only when asked for
    password = (rendered["creds"] / "prometheus_web_password").read_text().strip()
    assert password not in text
    dropin = configparser.ConfigParser(strict=False)
    dropin.read_string((rendered["dir"] / "prometheus.service.d.conf").read_text())
    assert dropin["Service"]["ReadWritePaths"] == "/srv/data/prometheus"


def test_rules_render_with_the_experiment_interval(rendered):
    recording = load_yaml(rendered, "edgelab-recording.yml")
    assert {g["interval"] for g in recording["groups"]} == {"5s"}
    records = [r["record"] for g in recording["groups"] for r in g["rules"]]
    assert len(records) == len(set(records))
    assert {"node:cpu_utilisation:rate1m", "node:power_watts:rate1m",
            "topic:edgelab_consumer_latency_seconds:p99_rate1m",
            "topic:edgelab_consumer_lag_messages:sum", "topic:edgelab_consumer_frames:rate1m"} <= set(records)
    alerts = load_yaml(rendered, "edgelab-alerts.yml")
    names = {r["alert"] for g in alerts["groups"] for r in g["rules"]}
    assert {"EdgelabTargetDown", "EdgelabDiskAlmostFull", "EdgelabDiskFilling", "EdgelabAgentSilent"} <= names
    down = next(r for g in alerts["groups"] for r in g["rules"] if r["alert"] == "EdgelabTargetDown")
    assert "{{ $labels.node }}" in down["annotations"]["summary"]
    # Consumers the node agents stopped are down on purpose: no alert for them.
    assert down["expr"] == 'up{job!="consumers"} == 0'


def test_rule_files_pass_promtool(rendered):
    for name in ("edgelab-recording.yml", "edgelab-alerts.yml"):
        check = subprocess.run([PROMTOOL, "check", "rules", str(rendered["dir"] / name)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr


# Synthetic series as edgelab's Prometheus stores them from the kepler,
# cadvisor and consumers jobs (label node from the scrape target), 5 s apart.
# Counters grow linearly, so every rate is exact: 50 J per 5 s is 10 W.
CONSUMER_POD = "edgelab-consumer-5d9c7b8f6-x2k4p"


def kepler_pod(pod_id, name, namespace, zone):
    return (f'kepler_pod_cpu_joules_total{{node="{"w2" if pod_id == "c" else "w1"}",pod_id="{pod_id}",'
            f'pod_name="{name}",pod_namespace="{namespace}",state="running",zone="{zone}"}}')


def cadvisor(metric, container):
    return f'{metric}{{node="w1",namespace="edgelab",pod="{CONSUMER_POD}",container="{container}"}}'


KUBERNETES_INPUT = [
    ('kepler_node_cpu_joules_total{node="w1",node_name="k1",zone="package",path="/p0"}', "0+50x100"),
    ('kepler_node_cpu_joules_total{node="w1",node_name="k1",zone="core",path="/p0c"}', "0+25x100"),
    ('kepler_node_cpu_joules_total{node="w1",node_name="k1",zone="dram",path="/p0d"}', "0+10x100"),
    ('kepler_node_cpu_joules_total{node="w2",node_name="k2",zone="package",path="/p0"}', "0+40x100"),
    (kepler_pod("a", CONSUMER_POD, "edgelab", "package"), "0+15x100"),
    (kepler_pod("a", CONSUMER_POD, "edgelab", "dram"), "0+5x100"),
    (kepler_pod("a", CONSUMER_POD, "edgelab", "core"), "0+10x100"),
    # Another Deployment's pod, and a pod of the same name in another namespace.
    (kepler_pod("b", "edgelab-consumer-tools", "edgelab", "package"), "0+10x100"),
    (kepler_pod("c", "edgelab-consumer-5d9c7b8f6-abcde", "default", "package"), "0+20x100"),
    ('kepler_container_cpu_joules_total{node="w1",pod_id="a",container_id="c1",container_name="consumer",'
     'runtime="containerd",state="running",zone="package"}', "0+15x100"),
    ('edgelab_consumer_frames_total{node="w1",topic="frames"}', "0+10x100"),
    (cadvisor("container_cpu_usage_seconds_total", "consumer"), "0+2.5x100"),
    (cadvisor("container_cpu_usage_seconds_total", ""), "0+5x100"),   # the pod's own cgroup
    (cadvisor("container_memory_working_set_bytes", "consumer"), "1073741824x100"),
    (cadvisor("container_memory_working_set_bytes", ""), "2147483648x100"),
]

# rule: [(labels of the expected series, value)] at 5 min.
KUBERNETES_EXPECTED = {
    "node_zone:kepler_node_cpu_watts:rate1m": [
        ('node="w1",zone="package"', 10), ('node="w1",zone="core"', 5), ('node="w1",zone="dram"', 2),
        ('node="w2",zone="package"', 8)],
    "node:kepler_power_watts:rate1m": [('node="w1"', 12), ('node="w2"', 8)],
    "namespace:kepler_pod_cpu_watts:rate1m": [('pod_namespace="edgelab"', 6), ('pod_namespace="default"', 4)],
    "namespace_pod_container:kepler_container_cpu_watts:rate1m": [
        (f'node="w1",pod_id="a",container_name="consumer",pod_namespace="edgelab",pod_name="{CONSUMER_POD}"', 3)],
    "pod:edgelab_consumer_kepler_watts:rate1m": [
        (f'node="w1",pod_namespace="edgelab",pod_name="{CONSUMER_POD}"', 4)],
    "pod:edgelab_consumer_cpu_usage_seconds:rate1m": [(f'node="w1",namespace="edgelab",pod="{CONSUMER_POD}"', 0.5)],
    "pod:edgelab_consumer_memory_working_set_bytes:sum": [
        (f'node="w1",namespace="edgelab",pod="{CONSUMER_POD}"', 1073741824)],
    "cluster:edgelab_kepler_joules_per_frame:rate1m": [("", 10)],
    "cluster:edgelab_consumer_kepler_joules_per_frame:rate1m": [("", 2)],
}


def test_kubernetes_rules_compute_power_from_keplers_counters(rendered):
    # Node power per zone and in total (package + DRAM), pods per namespace,
    # containers joined to their pod's namespace, the consumers' pods only
    # (another Deployment's pod and a same-named pod in another namespace are
    # left out), their cAdvisor CPU and memory, and joules per frame.
    test = rendered["dir"] / "kubernetes-rules.test.yml"
    test.write_text(yaml.safe_dump({
        "rule_files": ["edgelab-recording.yml"],
        "evaluation_interval": "5s",
        "tests": [{
            "interval": "5s",
            "input_series": [{"series": series, "values": values} for series, values in KUBERNETES_INPUT],
            "promql_expr_test": [
                {"expr": rule, "eval_time": "5m",
                 "exp_samples": [{"labels": f"{rule}{{{labels}}}", "value": value} for labels, value in samples]}
                for rule, samples in KUBERNETES_EXPECTED.items()],
        }],
    }))
    run = subprocess.run([PROMTOOL, "test", "rules", str(test)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr


def test_grafana_ini(rendered):
    ini = configparser.ConfigParser(interpolation=None, strict=True)
    ini.read_string((rendered["dir"] / "grafana.ini").read_text())
    assert ini["auth.anonymous"]["enabled"] == "false"
    assert ini["users"]["allow_sign_up"] == "false"
    assert ini["security"]["admin_password"] == "$__file{/etc/grafana/admin_password}"
    assert ini["security"]["secret_key"] == "$__file{/etc/grafana/secret_key}"
    assert ini["server"]["http_port"] == "3000"
    assert ini["server"]["root_url"] == "http://192.0.2.11:3000/"
    assert ini["paths"]["provisioning"] == "/etc/grafana/provisioning"
    text = (rendered["dir"] / "grafana.ini").read_text()
    for secret in ("grafana_admin_password", "grafana_secret_key"):
        assert (rendered["creds"] / secret).read_text().strip() not in text


def test_grafana_datasource(rendered):
    ds = load_yaml(rendered, "datasource.yaml")
    assert ds["apiVersion"] == 1
    [prom] = ds["datasources"]
    assert prom["uid"] == "edgelab-prometheus" and prom["type"] == "prometheus"
    assert prom["url"] == "http://192.0.2.11:9090"
    assert prom["basicAuth"] is True and prom["basicAuthUser"] == "edgelab"
    password = (rendered["creds"] / "prometheus_web_password").read_text().strip()
    assert prom["secureJsonData"]["basicAuthPassword"] == password
    assert prom["jsonData"]["timeInterval"] == "5s"


def test_grafana_dashboard_provider_and_pin(rendered):
    prov = load_yaml(rendered, "dashboards.yaml")
    [provider] = prov["providers"]
    assert provider["type"] == "file" and provider["allowUiUpdates"] is False
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards/edgelab"
    pref = (rendered["dir"] / "grafana.pref").read_text()
    assert "Package: grafana\n" in pref and "Pin: version 11.6.0\n" in pref and "Pin-Priority: 1001" in pref


def test_node_exporter_files(rendered):
    text = (rendered["dir"] / "prometheus-node-exporter.default").read_text()
    args = text.split("ARGS='", 1)[1].rsplit("'", 1)[0].split(" ")
    assert "--web.listen-address=:9100" in args
    assert "--collector.textfile.directory=/var/lib/prometheus/node-exporter" in args
    assert "--collector.systemd" in args and "--collector.processes" in args
    assert any(a.startswith("--collector.systemd.unit-include=") for a in args)
    prom = (rendered["dir"] / "edgelab_node.prom").read_text()
    assert "edgelab_node_rapl_zones 1\n" in prom and "edgelab_node_rapl_readable 1\n" in prom
    rules = (rendered["dir"] / "70-edgelab-rapl.rules").read_text()
    assert 'SUBSYSTEM=="powercap"' in rules and "chgrp prometheus" in rules


def test_dashboards_name_the_provisioned_datasource():
    for path in sorted((REPO / "roles/grafana/files/dashboards").glob("*.json")):
        dash = json.loads(path.read_text())
        for panel in dash["panels"]:
            assert panel["datasource"]["uid"] == "edgelab-prometheus", (path.name, panel["title"])
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "edgelab-prometheus", (path.name, panel["title"])
        for var in dash["templating"]["list"]:
            if var["type"] == "query":
                assert var["datasource"]["uid"] == "edgelab-prometheus", (path.name, var["name"])


TLS_PLAYBOOK = """
- name: Prometheus's web endpoint with TLS from the edgelab CA, and its clients
  hosts: monitoring
  gather_facts: false
  vars:
    out: {tmp}/out
  tasks:
    - name: Prometheus credentials
      ansible.builtin.include_role:
        name: prometheus
        tasks_from: credentials
        public: true

    - name: Prometheus's web config tasks (certificate, password file, web.yml checked by promtool)
      ansible.builtin.include_role:
        name: prometheus
        tasks_from: web_config
        public: true

    - name: Prometheus scrape jobs
      ansible.builtin.include_role:
        name: prometheus
        tasks_from: scrape_jobs
        public: true

    - name: Storage facts the templates use
      ansible.builtin.set_fact:
        prometheus_data_path: /srv/data/prometheus
        prometheus_retention_size_effective: 1000MB

    - name: Render Prometheus's other files
      ansible.builtin.template:
        src: "{repo}/roles/prometheus/templates/{{{{ item }}}}.j2"
        dest: "{{{{ out }}}}/{{{{ item }}}}"
        mode: "0600"
      loop: [prometheus.yml, prometheus.default]

    - name: Grafana credentials
      ansible.builtin.include_role:
        name: grafana
        tasks_from: credentials
        public: true

    - name: Render Grafana's files
      ansible.builtin.template:
        src: "{repo}/roles/grafana/templates/{{{{ item }}}}.j2"
        dest: "{{{{ out }}}}/{{{{ item }}}}"
        mode: "0600"
      loop: [grafana.ini, datasource.yaml]
"""


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("monitoring-tls")
    inv = inventory(tmp)
    etc = tmp / "etc"
    etc.mkdir()
    play = tmp / "render.yml"
    play.write_text(TLS_PLAYBOOK.format(tmp=tmp, repo=REPO))
    # The project's switch and port (group_vars/all/monitoring.yml) given in
    # the inventory's place; Prometheus's files go to a directory of the test.
    extra = tmp / "extra.json"
    extra.write_text(json.dumps({
        "edgelab_prometheus_tls": True, "edgelab_prometheus_port": 9443, "prometheus_web_enable_admin_api": True,
        "grafana_tls_pki": True, "prometheus_config_dir": str(etc), "prometheus_group": "root"}))
    args = ("-i", str(inv), str(play), "-e", "@" + str(extra), "--diff")
    first = ansible_playbook(*args, timeout=300)
    assert first.rc == 0, first.output[-4000:]
    second = ansible_playbook(*args, timeout=300)
    assert second.rc == 0, second.output[-4000:]
    return {"dir": tmp / "out", "etc": etc, "creds": tmp / "credentials", "first": first, "second": second}


def test_tls_web_config_uses_the_certificate_from_the_edgelab_ca(tls):
    web = yaml.safe_load((tls["etc"] / "web.yml").read_text())
    assert web["tls_server_config"] == {"cert_file": str(tls["etc"] / "tls/prometheus.crt"),
                                        "key_file": str(tls["etc"] / "tls/prometheus.key"), "min_version": "TLS12"}
    check = subprocess.run([PROMTOOL, "check", "web-config", str(tls["etc"] / "web.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    # The certificate is the CA's and names the host (inventory name and address).
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(tls["creds"] / "ca/ca.crt"),
                             str(tls["etc"] / "tls/prometheus.crt")], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    names = subprocess.run(["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in",
                            str(tls["etc"] / "tls/prometheus.crt")], capture_output=True, text=True, timeout=60).stdout
    assert "DNS:mon1" in names and "IP Address:192.0.2.11" in names
    assert (tls["etc"] / "tls/edgelab-ca.crt").read_bytes() == (tls["creds"] / "ca/ca.crt").read_bytes()


def test_the_bcrypt_hash_stays_out_of_the_diff(tls):
    hashed = yaml.safe_load((tls["etc"] / "web.yml").read_text())["basic_auth_users"]["edgelab"]
    assert hashed.startswith("$2b$10$")
    for run in (tls["first"], tls["second"]):
        assert hashed not in run.output and "$2b$" not in run.output
    # The first run created web.yml (a diff would have shown all of it); the
    # second changes nothing.
    assert "Write the web config" in tls["first"].output
    assert tls["second"].recap()["mon1"]["changed"] == 0


def test_tls_clients_follow_the_one_port_and_switch(tls):
    config = yaml.safe_load((tls["dir"] / "prometheus.yml").read_text())
    prom = next(j for j in config["scrape_configs"] if j["job_name"] == "prometheus")
    assert prom["scheme"] == "https"
    assert prom["tls_config"] == {"ca_file": str(tls["etc"] / "tls/edgelab-ca.crt")}
    assert [c["targets"] for c in prom["static_configs"]] == [["192.0.2.11:9443"]]
    check = subprocess.run([PROMTOOL, "check", "config", "--syntax-only", str(tls["dir"] / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    text = (tls["dir"] / "prometheus.default").read_text()
    args = text.split("ARGS='", 1)[1].rsplit("'", 1)[0].split(" ")
    assert "--web.listen-address=:9443" in args and "--web.enable-admin-api" in args
    # TLS is chosen when Prometheus starts: the flags file changes with it (and restarts Prometheus).
    assert "# The web endpoint serves https." in text
    ds = yaml.safe_load((tls["dir"] / "datasource.yaml").read_text())["datasources"][0]
    assert ds["url"] == "https://192.0.2.11:9443"
    assert ds["jsonData"]["tlsAuthWithCACert"] is True
    assert ds["secureJsonData"]["tlsCACert"].strip() == (tls["creds"] / "ca/ca.crt").read_text().strip()


def test_grafana_serves_https_with_its_certificate(tls):
    ini = configparser.ConfigParser(interpolation=None, strict=True)
    ini.read_string((tls["dir"] / "grafana.ini").read_text())
    server = ini["server"]
    assert server["protocol"] == "https"
    assert server["cert_file"] == "/etc/grafana/tls/grafana.crt"
    assert server["cert_key"] == "/etc/grafana/tls/grafana.key"
    assert server["root_url"] == "https://192.0.2.11:3000/"
    assert server["min_tls_version"] == "TLS1.2"
