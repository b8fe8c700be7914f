"""Role python_venv's controller side: the lock resolver's platform tags and output,
and the wheelhouse download (files/python-venv-wheelhouse) run for real with pip,
offline, against a local find-links directory holding a wheel built here: the
first run downloads into the cache entry and its archive, the second finds them,
a lock whose hash does not match leaves no entry behind. The host side (copy,
venv, marker, idempotence, check mode, a changed lock) is exercised on a lab host
by molecule scenario mlops through role mlflow.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.machinery
import importlib.util
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from types import ModuleType

import pytest

ROLE = Path(__file__).resolve().parents[1] / "roles" / "python_venv"
WHEELHOUSE = ROLE / "files" / "python-venv-wheelhouse"


def lock_module() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("python_venv_lock", str(ROLE / "files" / "python-venv-lock"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def make_wheel(directory: Path, name: str = "edgelab_probe", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel (a module, METADATA, WHEEL, RECORD)."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}.py": b"VALUE = 42\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: edgelab-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


def download(lock: Path, out: Path, links: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(links))
    return subprocess.run([str(WHEELHOUSE), sys.executable, str(lock), str(out), "3.11", "cp311",
                           "manylinux_2_36_x86_64", "manylinux2014_x86_64"],
                          env=env, capture_output=True, text=True, timeout=300, check=False)


def test_platform_tags_cover_every_glibc_down_to_manylinux2014() -> None:
    tags = lock_module().manylinux_platforms("2.36", "x86_64")
    assert tags[0] == "manylinux_2_36_x86_64" and "manylinux_2_17_x86_64" in tags
    assert tags[-3:] == ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    assert len(tags) == 36 - 17 + 1 + 3


@pytest.mark.parametrize("glibc", ["2.16", "3.1", "236"])
def test_platform_tags_refuse_a_bad_glibc(glibc: str) -> None:
    with pytest.raises(ValueError, match="glibc"):
        lock_module().manylinux_platforms(glibc, "x86_64")


def test_lock_lines_are_hashed_and_carry_the_command() -> None:
    text = lock_module().render([("six", "1.17.0", "ab" * 32)], ["--python-version", "3.11", "-o", "x.txt", "six"])
    assert "#   roles/python_venv/files/python-venv-lock --python-version 3.11 -o x.txt six" in text
    assert text.endswith("six==1.17.0 \\\n    --hash=sha256:" + "ab" * 32 + "\n")


def test_the_lock_tool_says_one_line_for_a_bad_python_version(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROLE / "files" / "python-venv-lock"), "--python-version", "three",
                           "--glibc", "2.36", "-o", str(tmp_path / "l.txt"), "six"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--python-version must look like 3.11" in proc.stderr


def test_wheelhouse_is_downloaded_once_then_reused(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    wheel = make_wheel(links)
    lock = tmp_path / "lock.txt"
    lock.write_text(f"edgelab-probe==1.0 \\\n    --hash=sha256:{hashlib.sha256(wheel.read_bytes()).hexdigest()}\n")
    out = tmp_path / "cache" / "probe" / "cp311-manylinux_2_36_x86_64-key"
    first = download(lock, out, links)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == "built"
    with tarfile.open(f"{out}.tar") as archive:
        names = sorted(n.removeprefix("./") for n in archive.getnames() if n not in (".", "./"))
    assert names == ["edgelab_probe-1.0-py3-none-any.whl", "requirements.txt"]
    assert (out / "requirements.txt").read_text() == lock.read_text()
    wheel.unlink()  # a second run must not need the index (or the find-links) at all
    second = download(lock, out, links)
    assert second.returncode == 0 and second.stdout.strip() == "cached", second.stderr


def test_a_hash_mismatch_leaves_no_cache_entry(tmp_path: Path) -> None:
    links = tmp_path / "links"
    links.mkdir()
    make_wheel(links)
    lock = tmp_path / "lock.txt"
    lock.write_text("edgelab-probe==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n")
    out = tmp_path / "cache" / "probe" / "entry"
    proc = download(lock, out, links)
    assert proc.returncode != 0
    assert "HASH" in proc.stderr.upper()
    assert not out.exists() and not Path(f"{out}.tar").exists()
    assert [p.name for p in out.parent.iterdir()] == ["entry.lock"]
