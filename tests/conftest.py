"""Fixtures and the skip policy for edgelab's project tests (helpers in support/labtools.py).

Skip policy: a test that skips because what it tests against is missing (a
service, a binary, root) proves nothing, and a skip passes a run. So in CI
(environment ``CI=true``, which .ci/run sets) and locally with
``EDGELAB_REQUIRE_SERVICES=1``, every skip is turned into a failure whose
message is the skip's reason. This covers ``pytest.skip`` in tests and
fixtures, ``skip``/``skipif`` marks, ``pytest.importorskip`` and module-level
skips (those become one failing item named ``<module skip>`` in their
module, so the rest of the run still happens). Expected failures (xfail) are
left alone. Every run ends with one line counting the skips.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator

import pytest
from support.labtools import ansible_playbook
from support.mlflow_server import MlflowServer, running_mlflow

# Every `mlflow server` a test starts inherits this: MLflow's job runner (seven
# huey consumer processes for its GenAI jobs) is not used by edgelab, as role
# mlflow's unit turns it off too.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")

REQUIRE_VARIABLE = "EDGELAB_REQUIRE_SERVICES"
_TRUE = {"1", "true", "yes", "on"}
_SKIPS = pytest.StashKey[list[str]]()
_REQUIRED = "edgelab_required_skip"


def services_required() -> str | None:
    """Which setting asks for skips to fail (a description), or None."""
    if os.environ.get("CI", "").strip().lower() in _TRUE:
        return "CI=%s" % os.environ["CI"]
    if os.environ.get(REQUIRE_VARIABLE, "").strip().lower() in _TRUE:
        return "%s=%s" % (REQUIRE_VARIABLE, os.environ[REQUIRE_VARIABLE])
    return None


def skip_reason(longrepr: object) -> str:
    """The reason of a skip report (pytest stores (path, line, "Skipped: why"))."""
    text = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return str(text).removeprefix("Skipped: ")


def skip_location(longrepr: object) -> str:
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return "%s:%s: " % (longrepr[0], longrepr[1])
    return ""


def required_message(reason: str, setting: str) -> str:
    return "skipped, but %s requires every test to run: %s" % (setting, reason)


def _record(config: pytest.Config, reason: str) -> None:
    config.stash.setdefault(_SKIPS, []).append(reason)


class RequiredSkip(pytest.Item):
    """Stands for a module (or class, package) that skipped at collection."""

    def __init__(self, *, message: str, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.message = message

    def runtest(self) -> None:
        pytest.fail(self.message, pytrace=False)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: object = None) -> str:
        return self.message

    def reportinfo(self) -> tuple[str, int, str]:
        return str(self.path), 0, self.name


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if report.skipped:
        reason = skip_reason(report.longrepr)
        _record(collector.config, reason)
        setting = services_required()
        if setting is not None:
            message = skip_location(report.longrepr) + required_message(reason, setting)
            item = RequiredSkip.from_parent(collector, name="<module skip>", message=message)
            report.outcome = "passed"
            report.longrepr = None
            report.result = [item]
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None],
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = skip_reason(report.longrepr)
        _record(item.config, reason)
        setting = services_required()
        if setting is not None:
            report.outcome = "failed"
            report.longrepr = skip_location(report.longrepr) + required_message(reason, setting)
            setattr(report, _REQUIRED, True)
    return report


def pytest_report_teststatus(report: pytest.TestReport) -> tuple[str, str, str] | None:
    # A skip turned into a failure in setup is a FAILED test, not an ERROR.
    if getattr(report, _REQUIRED, False):
        return "failed", "F", "FAILED"
    return None


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    skips = config.stash.get(_SKIPS, [])
    setting = services_required()
    if setting is not None:
        note = "failed: %s requires every test to run" % setting if skips else "%s requires every test to run" % setting
    else:
        note = "allowed; CI=true or %s=1 makes them failures" % REQUIRE_VARIABLE
    terminalreporter.write_line("edgelab: %d skipped (%s)" % (len(skips), note))


@pytest.fixture(scope="session")
def playbook():
    return ansible_playbook


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """One `mlflow server` (support/mlflow_server.py) for every test that needs a plain
    tracking server with served artifacts; started at its first use, stopped at the end
    of the run. Tests name their models and experiments with unique_name()."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (requirements.txt)")
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as server:
        yield server
