"""The cluster layer's files, rendered by Ansible itself and checked offline.

No Kubernetes can run on this machine (nor can kubeadm, kubelet, k3s or an
image be fetched), so what the roles containerd, kubeadm, k3s and kube_addons
write is rendered through the roles' own task files from a sample-like
inventory (1 control plane + 2 workers, with its own CIDRs and continuum
layers) and checked:

- kubeadm's init and join configurations and k3s's config.yaml are parsed and
  must carry the inventory's CIDRs, endpoint and node labels;
- every manifest kube_addons renders is validated against the OpenAPI schemas
  of the pinned Kubernetes minor (kubernetes-validate, strict: unknown fields
  fail), for both distributions;
- a manifest broken on purpose (a wrong field, a wrong type) is refused, with
  its file and field named;
- each role's defaults equal its meta/argument_specs.yml defaults;
- playbooks/cluster.yml on a lab inventory skips the layer and says why.

The lab checks (containerd converging for real, the cluster play in check
mode) are in molecule scenario "cluster".
"""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from support.labtools import BIN, REPO, ansible_playbook

KUBERNETES_MINOR = "1.34"
POD_CIDR = "10.100.0.0/16"
SERVICE_CIDR = "10.200.0.0/16"
ENDPOINT_ADDRESS = "192.0.2.10"

INVENTORY = """
all:
  vars:
    ansible_connection: local
    ansible_python_interpreter: {python}
    ansible_architecture: x86_64
    edgelab_credentials_dir: {tmp}/credentials
    edgelab_cluster_pod_cidr: {pod}
    edgelab_cluster_service_cidr: {service}
  children:
    nucs:
      hosts:
        cp1: {{ansible_host: {endpoint}, edgelab_continuum_layer: cloud}}
        w1:
          ansible_host: 192.0.2.11
          edgelab_continuum_layer: edge
          edgelab_node_labels: {{edgelab.io/gpu: "false"}}
        w2: {{ansible_host: 192.0.2.12, base_address: 198.51.100.12, edgelab_continuum_layer: far-edge}}
    control_plane:
      hosts:
        cp1:
    workers:
      hosts:
        w1:
        w2:
    xmpp_server:
      hosts:
        cp1:
    kafka_brokers:
      hosts:
        cp1:
    monitoring:
      hosts:
        cp1:
    mlops:
      hosts:
        cp1:
"""

# Every optional workload is switched on so that every template is rendered.
WORKLOADS = """
kube_addons_consumers_enabled: true
kube_addons_consumer_image: registry.example.org/edgelab/consumer:1.0.0
kube_addons_consumer_args: [--topic, frames]
kube_addons_consumer_env: {KAFKA_BOOTSTRAP: "192.0.2.10:9092", BATCH: 4}
kube_addons_consumer_node_selector: {edgelab.io/continuum-layer: edge}
kube_addons_node_agent_enabled: true
kube_addons_node_agent_image: registry.example.org/edgelab/node-agent@sha256:%s
""" % ("0" * 64)

PLAYBOOK = """
- name: Render the cluster layer's files
  hosts: control_plane:workers
  gather_facts: false
  vars:
    out: {tmp}/out
  tasks:
    - name: Directories for each host's files
      ansible.builtin.file:
        path: "{{{{ out }}}}/{{{{ inventory_hostname }}}}/k3s"
        state: directory
        mode: "0700"

    - name: kubeadm init configuration (first control-plane host)
      ansible.builtin.include_role:
        name: kubeadm
        tasks_from: config
      vars:
        kubeadm_config_dir: "{{{{ out }}}}/{{{{ inventory_hostname }}}}/kubeadm"
      when: inventory_hostname == groups['control_plane'][0]

    - name: kubeadm join configuration (the other hosts)
      ansible.builtin.include_role:
        name: kubeadm
        tasks_from: join_config
      vars:
        kubeadm_join_file: "{{{{ out }}}}/{{{{ inventory_hostname }}}}/kubeadm-join.yaml"
        kubeadm_join_token: abcdef.0123456789abcdef
        kubeadm_join_ca_hash: sha256:{hash}
      when: inventory_hostname != groups['control_plane'][0]

    - name: k3s config.yaml
      ansible.builtin.include_role:
        name: k3s
        tasks_from: config
      vars:
        k3s_config_dir: "{{{{ out }}}}/{{{{ inventory_hostname }}}}/k3s"

    - name: The cluster's manifests
      ansible.builtin.include_role:
        name: kube_addons
        tasks_from: render
      vars:
        kube_addons_render_dir: "{{{{ out }}}}/manifests-{{{{ cluster_distribution }}}}"

    # The roles' handlers (restart k3s) must not run on this machine: ending
    # the play drops them.
    - name: Stop before the handlers
      ansible.builtin.meta: end_play
"""


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def validate_manifest(path: Path, minor: str = KUBERNETES_MINOR) -> list[str]:
    """One line per schema violation in a manifest file, naming the file, the object and the field."""
    problems = []
    for doc in docs(path):
        what = "%s/%s" % (doc.get("kind", "?"), (doc.get("metadata") or {}).get("name", "?"))
        try:
            kubernetes_validate.validate(doc, minor, strict=True)
        except kubernetes_validate.ValidationError as exc:
            field = ".".join(str(p) for p in exc.path) or "(top level)"
            problems.append("%s: %s: field %s: %s" % (path.name, what, field, exc.message))
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append("%s: %s: %s" % (path.name, what, exc.message))
    return problems


def make_inventory(tmp: Path) -> Path:
    inv = tmp / "inventory"
    (inv / "group_vars" / "all").mkdir(parents=True)
    (inv / "hosts.yml").write_text(INVENTORY.format(python=BIN / "python", tmp=tmp, pod=POD_CIDR,
                                                    service=SERVICE_CIDR, endpoint=ENDPOINT_ADDRESS))
    (inv / "group_vars" / "all" / "workloads.yml").write_text(WORKLOADS)
    # The project's group_vars sit next to the playbook, below the inventory
    # in precedence (ansible.cfg), as playbooks/group_vars does.
    (tmp / "group_vars").symlink_to(REPO / "group_vars")
    return inv


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kubernetes")
    inv = make_inventory(tmp)
    play = tmp / "render.yml"
    play.write_text(PLAYBOOK.format(tmp=tmp, hash="1" * 64))
    for distribution in ("kubeadm", "k3s"):
        run = ansible_playbook("-i", str(inv), str(play), "-e", "cluster_distribution=" + distribution, timeout=600)
        # end_play leaves rc 0 even after a failed host: the recap tells.
        assert run.rc == 0 and run.recap() and all(c["failed"] == 0 for c in run.recap().values()), run.output[-4000:]
    return tmp / "out"


def test_kubeadm_init_config_carries_the_inventory(rendered):
    objects = {d["kind"]: d for d in docs(rendered / "cp1" / "kubeadm" / "kubeadm-config.yaml")}
    assert set(objects) == {"InitConfiguration", "ClusterConfiguration", "KubeletConfiguration",
                            "KubeProxyConfiguration"}
    cluster = objects["ClusterConfiguration"]
    assert cluster["apiVersion"] == "kubeadm.k8s.io/v1beta4"
    assert cluster["kubernetesVersion"].startswith("v" + KUBERNETES_MINOR + ".")
    assert cluster["networking"]["podSubnet"] == POD_CIDR
    assert cluster["networking"]["serviceSubnet"] == SERVICE_CIDR
    assert cluster["controlPlaneEndpoint"] == ENDPOINT_ADDRESS + ":6443"
    assert ENDPOINT_ADDRESS in cluster["apiServer"]["certSANs"]
    init = objects["InitConfiguration"]
    assert init["localAPIEndpoint"] == {"advertiseAddress": ENDPOINT_ADDRESS, "bindPort": 6443}
    args = {a["name"]: a["value"] for a in init["nodeRegistration"]["kubeletExtraArgs"]}
    assert args == {"node-ip": ENDPOINT_ADDRESS, "node-labels": "edgelab.io/continuum-layer=cloud"}
    assert init["nodeRegistration"]["criSocket"] == "unix:///run/containerd/containerd.sock"
    # kubeadm generates the token itself: none in the file, a short lifetime.
    [token] = init["bootstrapTokens"]
    assert "token" not in token and token["ttl"] == "15m0s"
    assert objects["KubeletConfiguration"]["cgroupDriver"] == "systemd"
    assert objects["KubeProxyConfiguration"]["clusterCIDR"] == POD_CIDR


def test_kubeadm_join_config_carries_each_workers_labels(rendered):
    expected = {"w1": ("192.0.2.11", "edgelab.io/continuum-layer=edge,edgelab.io/gpu=false"),
                "w2": ("198.51.100.12", "edgelab.io/continuum-layer=far-edge")}
    for host, (address, labels) in expected.items():
        path = rendered / host / "kubeadm-join.yaml"
        [join] = docs(path)
        assert join["kind"] == "JoinConfiguration" and join["apiVersion"] == "kubeadm.k8s.io/v1beta4"
        discovery = join["discovery"]["bootstrapToken"]
        assert discovery["apiServerEndpoint"] == ENDPOINT_ADDRESS + ":6443"
        assert discovery["caCertHashes"] == ["sha256:" + "1" * 64]
        args = {a["name"]: a["value"] for a in join["nodeRegistration"]["kubeletExtraArgs"]}
        assert args == {"node-ip": address, "node-labels": labels}
        assert path.stat().st_mode & 0o777 == 0o600
    assert not (rendered / "cp1" / "kubeadm-join.yaml").exists()


def test_k3s_config_carries_the_inventory(rendered):
    server = yaml.safe_load((rendered / "cp1" / "k3s" / "config.yaml").read_text())
    assert server["cluster-cidr"] == POD_CIDR and server["service-cidr"] == SERVICE_CIDR
    assert ipaddress.ip_address(server["cluster-dns"]) in ipaddress.ip_network(SERVICE_CIDR)
    assert server["write-kubeconfig-mode"] == "0600"
    assert server["node-label"] == ["edgelab.io/continuum-layer=cloud"]
    assert server["node-ip"] == ENDPOINT_ADDRESS and ENDPOINT_ADDRESS in server["tls-san"]
    assert server["token-file"] == "/etc/rancher/k3s/edgelab-token"
    assert "server" not in server and "cluster-init" not in server  # one server: it starts the cluster
    for host, labels in {"w1": ["edgelab.io/continuum-layer=edge", "edgelab.io/gpu=false"],
                         "w2": ["edgelab.io/continuum-layer=far-edge"]}.items():
        agent = yaml.safe_load((rendered / host / "k3s" / "config.yaml").read_text())
        assert agent["server"] == "https://%s:6443" % ENDPOINT_ADDRESS
        assert agent["node-label"] == labels
        assert "cluster-cidr" not in agent and "write-kubeconfig-mode" not in agent
    for config in (server, agent):
        assert "token" not in config and "agent-token" not in config


@pytest.mark.parametrize("distribution, expected", [
    ("kubeadm", {"edgelab.yaml", "flannel.yaml", "kepler.yaml", "metrics-server.yaml"}),
    # k3s brings its own flannel and metrics-server.
    ("k3s", {"edgelab.yaml", "kepler.yaml"}),
])
def test_every_manifest_validates_against_the_pinned_schemas(rendered, distribution, expected):
    directory = rendered / ("manifests-" + distribution)
    files = sorted(directory.glob("*.yaml"))
    assert {f.name for f in files} == expected
    problems = [p for f in files for p in validate_manifest(f)]
    assert problems == []
    kinds = {(d["kind"], d["metadata"]["name"]) for f in files for d in docs(f)}
    assert {("Deployment", "edgelab-consumer"), ("HorizontalPodAutoscaler", "edgelab-consumer"),
            ("DaemonSet", "edgelab-node-agent"), ("DaemonSet", "kepler"),
            ("Role", "edgelab-cluster-agent"), ("ClusterRole", "edgelab-prometheus")} <= kinds


def test_manifests_carry_the_pinned_images_and_the_inventorys_pod_cidr(rendered):
    directory = rendered / "manifests-kubeadm"
    flannel = {d["kind"]: d for d in docs(directory / "flannel.yaml")}
    net = yaml.safe_load(flannel["ConfigMap"]["data"]["net-conf.json"])
    assert net["Network"] == POD_CIDR
    pods = [d["spec"]["template"]["spec"] for f in directory.glob("*.yaml") for d in docs(f)
            if d["kind"] in ("Deployment", "DaemonSet")]
    images = [c["image"] for pod in pods for c in pod.get("initContainers", []) + pod["containers"]]
    assert images and all(":" in i.rsplit("/", 1)[-1] or "@sha256:" in i for i in images)
    assert not [i for i in images if i.endswith(":latest")]
    kepler = {d["kind"]: d for d in docs(directory / "kepler.yaml")}
    container = kepler["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].startswith("quay.io/sustainable_computing_io/kepler:v0.11.")
    assert "--config.file=/etc/kepler/config.yaml" in container["args"]
    assert container["ports"][0]["hostPort"] == 28282
    config = yaml.safe_load(kepler["ConfigMap"]["data"]["config.yaml"])
    assert config["dev"]["fake-cpu-meter"]["enabled"] is False
    consumer = next(d for d in docs(directory / "edgelab.yaml") if d["kind"] == "Deployment")
    spec = consumer["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"edgelab.io/continuum-layer": "edge"}
    resources = spec["containers"][0]["resources"]
    assert resources["requests"] and resources["limits"]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["KAFKA_BOOTSTRAP"] == "192.0.2.10:9092" and env["BATCH"] == "4"


@pytest.mark.parametrize("breakage, field", [
    # An unknown field (a typo of hostPID) and a port given as a string.
    (lambda pod: pod.update(hostPIDs=True), "spec.template.spec"),
    (lambda pod: pod["containers"][0]["ports"][0].update(containerPort="28282"),
     "spec.template.spec.containers.0.ports.0.containerPort"),
])
def test_a_broken_manifest_is_refused_with_file_and_field(rendered, tmp_path, breakage, field):
    objects = docs(rendered / "manifests-kubeadm" / "kepler.yaml")
    broken = copy.deepcopy(objects)
    daemonset = next(d for d in broken if d["kind"] == "DaemonSet")
    breakage(daemonset["spec"]["template"]["spec"])
    path = tmp_path / "kepler-broken.yaml"
    path.write_text(yaml.safe_dump_all(broken))
    problems = validate_manifest(path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("kepler-broken.yaml: DaemonSet/kepler: field %s: " % field), problems
    # The same objects unbroken pass.
    path.write_text(yaml.safe_dump_all(objects))
    assert validate_manifest(path) == []


@pytest.mark.parametrize("role", ["containerd", "kubeadm", "k3s", "kube_addons"])
def test_defaults_match_the_argument_specs(role):
    defaults = yaml.safe_load((REPO / "roles" / role / "defaults" / "main.yml").read_text())
    specs = yaml.safe_load((REPO / "roles" / role / "meta" / "argument_specs.yml").read_text())
    options = specs["argument_specs"]["main"]["options"]
    assert set(defaults) == set(options)
    assert all(name.startswith(role + "_") for name in defaults)
    assert {k: v for k, v in defaults.items() if options[k].get("default") != v} == {}


def test_cluster_play_skips_the_layer_on_a_lab_inventory(tmp_path):
    inv = make_inventory(tmp_path)
    (inv / "group_vars" / "all" / "lab.yml").write_text("edgelab_lab: mylab\n")
    run = ansible_playbook("-i", str(inv), str(REPO / "playbooks" / "cluster.yml"), timeout=600)
    assert run.rc == 0, run.output[-4000:]
    output = " ".join(run.output.split())
    for host in ("cp1", "w1", "w2"):
        assert "Cluster layer skipped on %s: edgelab_cluster_enabled is false (this is lab mylab" % host in output
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in run.recap().values()), run.recap()
    assert not (tmp_path / "credentials").exists()


ASSERT_PLAY = """
- name: Run one role's checks
  hosts: cp1
  gather_facts: false
  tasks:
    - name: The role
      ansible.builtin.include_role:
        name: {role}
"""


@pytest.mark.parametrize("role, extra, message", [
    ("kubeadm", {"edgelab_cluster_service_cidr": "10.100.128.0/17"},
     "non-overlapping IPv4 CIDRs for pods and services"),
    ("kubeadm", {"edgelab_node_labels": {"node-role.kubernetes.io/worker": ""}}, "no kubernetes.io/k8s.io prefix"),
    ("k3s", {"k3s_server_extra_config": {"write-kubeconfig-mode": "0644"}}, "the kubeconfig stays 0600"),
    ("kube_addons", {"agents_actuator": "kubernetes"}, "set kube_addons_consumer_hpa_enabled false"),
    ("kube_addons", {"kube_addons_kepler_image": "quay.io/sustainable_computing_io/kepler:latest"},
     "every image pinned to a tag other than latest"),
])
def test_bad_settings_stop_the_role_with_a_clear_message(tmp_path, role, extra, message):
    inv = make_inventory(tmp_path)
    (tmp_path / "extra.yml").write_text(yaml.safe_dump(extra))
    play = tmp_path / "play.yml"
    play.write_text(ASSERT_PLAY.format(role=role))
    run = ansible_playbook("-i", str(inv), str(play), "--check", "-e", "@" + str(tmp_path / "extra.yml"), timeout=300)
    assert run.rc != 0
    output = " ".join(run.output.split())
    assert message in output, run.output[-3000:]
    assert "Traceback" not in run.output
