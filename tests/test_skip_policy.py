"""The skip policy of tests/conftest.py, checked on a throwaway test tree run
by a separate pytest process: without CI=true (or EDGELAB_REQUIRE_SERVICES=1)
every kind of skip stays a skip; with it, each one fails with its reason as
the message, the rest of the run still happens, xfail is left alone, and the
closing line counts the skips."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent

SAMPLES = {
    "test_marks.py": """
        import pytest

        @pytest.fixture
        def service():
            pytest.skip("reason-fixture: no such service")

        @pytest.mark.skipif(True, reason="reason-skipif: binary missing")
        def test_skipif():
            pass

        def test_skip_in_fixture(service):
            pass

        def test_skip_in_body():
            pytest.skip("reason-body: not root")

        def test_importorskip_in_body():
            pytest.importorskip("edgelab_no_such_module_xyz", reason="reason-import-body")

        @pytest.mark.xfail(reason="known", strict=True)
        def test_xfail():
            assert False

        def test_passes():
            pass
    """,
    "test_module_skip.py": """
        import pytest
        pytest.skip("reason-module: whole module", allow_module_level=True)

        def test_never_collected():
            pass
    """,
    "test_module_importorskip.py": """
        import pytest
        missing = pytest.importorskip("edgelab_no_such_module_abc", reason="reason-import-module")

        def test_never_collected():
            pass
    """,
}
REASONS = ["reason-skipif", "reason-fixture", "reason-body", "reason-import-body", "reason-module",
           "reason-import-module"]


def run_sample(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    for name, text in SAMPLES.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    # The real conftest, unchanged, at the root of the throwaway tree.
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "EDGELAB_REQUIRE_SERVICES", "PYTEST_ADDOPTS")}
    clean["COLUMNS"] = "400"  # short-summary lines unabridged
    clean["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [os.environ.get("PYTHONPATH")])])
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-rA", "-p", "no:cacheprovider", "--rootdir", str(tmp_path), str(tmp_path)],
        cwd=tmp_path, env={**clean, **env}, capture_output=True, text=True, timeout=120, check=False,
    )


def counts(output: str) -> dict[str, int]:
    last = output.strip().splitlines()[-1]
    return {word: int(n) for n, word in re.findall(r"(\d+) (\w+)", last)}


def test_without_the_setting_skips_stay_skips(tmp_path):
    run = run_sample(tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert counts(run.stdout) == {"passed": 1, "skipped": 6, "xfailed": 1}, run.stdout
    assert "edgelab: 6 skipped (allowed; CI=true or EDGELAB_REQUIRE_SERVICES=1 makes them failures)" in run.stdout


@pytest.mark.parametrize("env", [{"CI": "true"}, {"EDGELAB_REQUIRE_SERVICES": "1"}], ids=["CI", "opt-in"])
def test_with_the_setting_every_skip_fails_with_its_reason(tmp_path, env):
    run = run_sample(tmp_path, **env)
    assert run.returncode == 1, run.stdout + run.stderr
    assert counts(run.stdout) == {"failed": 6, "passed": 1, "xfailed": 1}, run.stdout
    setting = "%s=%s" % next(iter(env.items()))
    failed = [line for line in run.stdout.splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 6, run.stdout
    for reason in REASONS:
        assert any(reason in line and f"skipped, but {setting} requires every test to run" in line
                   for line in failed), (reason, run.stdout)
    # Module-level skips fail as one item of their module; nothing else of it runs.
    assert any(line.startswith("FAILED test_module_skip.py::<module skip>") for line in failed), run.stdout
    assert "test_never_collected" not in run.stdout
    assert f"edgelab: 6 skipped (failed: {setting} requires every test to run)" in run.stdout


def test_nothing_skipped_is_counted_as_zero(tmp_path):
    (tmp_path / "conftest.py").write_text((TESTS / "conftest.py").read_text())
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    env.update(CI="true", PYTHONPATH=str(TESTS))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir", str(tmp_path),
                          str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                         check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "edgelab: 0 skipped (CI=true requires every test to run)" in run.stdout
