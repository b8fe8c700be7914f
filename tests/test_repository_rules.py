"""Repository rules: no seed address, no default password, no token and no
private key in any file of the repository (tracked by git, or untracked and
not ignored), except tests' throwaway values listed in ALLOWED below.

The seed documents (outside the repository, maybe absent in CI) hard-code
their hosts' addresses and default credentials; the patterns therefore live
here. The seeds' addresses are stored only as the first 24 hex digits of the
SHA-256 of their dotted-quad text (SEED_ADDRESS_HASHES): the scanner hashes
every IPv4 address it finds in a file and compares. The other patterns are
written so that this file's source does not match them (an alternation or a
split literal), so the rule applies to this file too.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# sha256("a.b.c.d")[:24] of the four host addresses in the seed documents
# (XMPP server, NECOS SRO, CLARUS Docker registry, OTLP collector).
SEED_ADDRESS_HASHES = frozenset({
    "4c94928ed766a2f77dfa21df",
    "0eac693cd3d7436bc2fc0e02",
    "3db0b0859be1068756cb81eb",
    "2aedc7011107221d07254b27",
})
IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.]*\d)")

# The seeds' and the architecture notes' default credentials: as a value
# given to something called a password/secret, as user:password in a URL,
# as the "user/password" pairs the seeds print, and the literals that are
# never anything but a password.
_SEED_PASSWORDS = r"(?:1234|admin|pass|airflow|minio(?:123)?|password(?:12)34)"
RULES: dict[str, re.Pattern[str]] = {
    "default password assigned": re.compile(
        r"(?i)(?:pass(?:word)?|passwd|pwd|secret)[\w.-]*[\"']?\s*(?::|=|\s)\s*"
        r"(?:([\"'])" + _SEED_PASSWORDS + r"\1|" + _SEED_PASSWORDS + r"(?=\s|$|[;,)\]}]))"),
    "default credentials in a URL": re.compile(
        r"(?i)//(?:admin|airflow|minio|root):" + _SEED_PASSWORDS + "@"),
    "default user/password pair": re.compile(
        r"(?i)\b(?:admin/(?:12)34|airflow/(?:air)flow|minio/minio(?:12)3)\b"),
    "default password literal": re.compile(r"(?i)\b(?:minio(?:12)3|pass(?:word)1234)\b"),
    "seed XMPP password as a string": re.compile(r"[\"'](?:12)34[\"']"),
    "kubeadm bootstrap token": re.compile(r"\b[a-z0-9]{6}\.(?=[a-z]*\d)[a-z0-9]{16}\b"),
    "kubeadm CA certificate hash": re.compile(r"discovery-token-ca-cert-hash\s+sha256:[0-9a-f]{64}"),
    "k3s node token": re.compile(r"\bK10[0-9a-f]{64}::"),
    "PEM private key": re.compile(r"-{5}BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-{5}"),
    "OpenSSH private key (base64)": re.compile("b3BlbnNzaC1r" "ZXktdjE"),
    "PuTTY private key": re.compile(r"PuTTY-User-Key-File-\d"),
}
SEED_ADDRESS = "seed address"


@dataclass(frozen=True)
class Allowed:
    path: str
    rule: str
    reason: str


# Throwaway values in tests, each with the reason it is harmless. Only paths
# under tests/ or molecule/ may appear here; every entry must still match.
ALLOWED: list[Allowed] = [
    Allowed("molecule/mlops/verify_airflow.yml", "default password assigned",
            "checks that seed 002's stock Airflow login is refused"),
    Allowed("tests/test_kubernetes.py", "kubeadm bootstrap token",
            "kubeadm's documented example token, rendered into a join file in a temporary directory"),
]


@dataclass(frozen=True)
class Hit:
    path: str
    line: int
    rule: str

    def __str__(self) -> str:
        return "%s:%d: %s" % (self.path, self.line, self.rule)


def scan_text(text: str, path: str = "<text>") -> list[Hit]:
    hits = []
    for number, line in enumerate(text.splitlines(), 1):
        for address in IPV4.findall(line):
            if hashlib.sha256(address.encode()).hexdigest()[:24] in SEED_ADDRESS_HASHES:
                hits.append(Hit(path, number, SEED_ADDRESS))
        hits += [Hit(path, number, name) for name, pattern in RULES.items() if pattern.search(line)]
    return hits


def repository_files(root: Path) -> list[str]:
    """Tracked files that exist, plus untracked files git does not ignore."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True, check=True,
    ).stdout.decode().split("\0")
    return sorted({p for p in listed if p and (root / p).is_file() and not (root / p).is_symlink()})


def scan_repository(root: Path) -> list[Hit]:
    hits = []
    for path in repository_files(root):
        text = (root / path).read_bytes().decode("utf-8", errors="replace")
        hits += scan_text(text, path)
    return hits


def is_allowed(hit: Hit) -> bool:
    return any(a.path == hit.path and a.rule == hit.rule for a in ALLOWED)


def test_repository_has_no_seed_address_default_password_token_or_key():
    hits = scan_repository(REPO)
    bad = [str(h) for h in hits if not is_allowed(h)]
    assert not bad, ("remove these (or, for a test's throwaway value, list it in ALLOWED with a reason):\n"
                     + "\n".join(bad))
    unused = [a for a in ALLOWED if not any(h.path == a.path and h.rule == a.rule for h in hits)]
    assert not unused, f"ALLOWED entries that no longer match anything: {unused}"


def test_allowlist_is_small_and_only_for_tests():
    assert len(ALLOWED) <= 10
    for entry in ALLOWED:
        assert entry.path.startswith(("tests/", "molecule/")), entry
        assert entry.rule in RULES or entry.rule == SEED_ADDRESS, entry
        assert entry.reason.strip(), entry


def test_an_allowlist_entry_exempts_only_its_path_and_rule(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "ALLOWED", [Allowed("tests/x.py", SEED_ADDRESS, "throwaway")])
    assert is_allowed(Hit("tests/x.py", 3, SEED_ADDRESS))
    assert not is_allowed(Hit("tests/x.py", 3, "PEM private key"))
    assert not is_allowed(Hit("roles/x.yml", 3, SEED_ADDRESS))


# Planted text: "§" splits each sample so that this file stays clean; it is
# removed before scanning.
_IP = "10.96§.82.195"
PLANTED = [(text.replace("§", ""), rule) for text, rule in [
    (f"EJABBERD_DOMAIN={_IP}", SEED_ADDRESS),
    ("url: http://192.168§.0.121:13131/slice", SEED_ADDRESS),
    ("registry 34.250§.205.215:5001", SEED_ADDRESS),
    ('TELEMETRY_ENDPOINT="172.25§.27.228:4317"', SEED_ADDRESS),
    ("NODE_PASSWORD=12§34", "default password assigned"),
    ('dummy = DummyAgent("admin@x", "12§34")', "seed XMPP password as a string"),
    ("login with admin/12§34", "default user/password pair"),
    ("MINIO_ROOT_PASSWORD: minio§123", "default password assigned"),
    ("minio_secret_key = 'minio§123'", "default password literal"),
    ("AIRFLOW creds airflow/air§flow", "default user/password pair"),
    ("sql_alchemy_conn = postgresql://airflow:air§flow@db/airflow", "default credentials in a URL"),
    ("grafana_admin_password: ad§min", "default password assigned"),
    ('"password": "ad§min",', "default password assigned"),
    ("use password 'pa§ss' when asked", "default password assigned"),
    ("DB_PASSWORD='password12§34'", "default password literal"),
    ("kubeadm join 10.0.0.1:6443 --token abcdef.0123§456789abcdef", "kubeadm bootstrap token"),
    ("--discovery-token-ca-cert-hash sha256:" + "ab" * 32, "kubeadm CA certificate hash"),
    ("K10" + "0f" * 32 + "::server:" + "x" * 8, "k3s node token"),
    ("-----BEGIN RSA PRIVATE§ KEY-----", "PEM private key"),
    ("-----BEGIN PRIVATE§ KEY-----", "PEM private key"),
    ("-----BEGIN OPENSSH PRIVATE§ KEY-----", "PEM private key"),
    ("b3BlbnNzaC1r§ZXktdjEAAAAABG5vbmUAAAAEbm9uZQ", "OpenSSH private key (base64)"),
]]
# Look-alikes that must not be reported.
CLEAN = [
    "lab_subnet: 10.213.0.0/24 and 192.0.2.10 (documentation addresses)",
    # A longer number that contains a seed address, joined here so that the
    # address itself is not written in this file.
    "version " + ".".join(["10", "96", "82", "1950"]),
    "grafana_admin_password: \"{{ lookup('ansible.builtin.password', path) }}\"",
    "Grafana's stock account is replaced by a generated password",
    "port: 12345",
    "password: passphrase-from-vault",
    "-----BEGIN CERTIFICATE-----",
    "-----BEGIN PUBLIC KEY-----",
    "tempfile.temporarydirectory",
    '{"user": name, "password": password}',
    '{"user": "agent2", "password": "pass,with,commas"}',
]


@pytest.mark.parametrize(("text", "rule"), PLANTED, ids=[r for _, r in PLANTED])
def test_scanner_reports_planted_text(text, rule):
    assert rule in [h.rule for h in scan_text(text)]


@pytest.mark.parametrize("text", CLEAN)
def test_scanner_ignores_look_alikes(text):
    assert scan_text(text) == []


def test_scanner_finds_a_planted_file_in_a_repository_and_skips_ignored_ones(tmp_path):
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("/credentials/\n")
    (tmp_path / "credentials").mkdir()
    (tmp_path / "credentials" / "ca.key").write_text("-----BEGIN PRIVATE§ KEY-----\n".replace("§", ""))
    (tmp_path / "roles").mkdir()
    (tmp_path / "roles" / "defaults.yml").write_text("---\nxmpp_domain: ok\nxmpp_host: " + _IP.replace("§", "") + "\n")
    (tmp_path / "README.md").write_text("nothing to see\n")
    subprocess.run(["git", "-C", str(tmp_path), "add", "README.md"], check=True)
    hits = scan_repository(tmp_path)
    assert [str(h) for h in hits] == ["roles/defaults.yml:3: " + SEED_ADDRESS]
