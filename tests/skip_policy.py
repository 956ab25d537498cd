"""Which skips a run may have, and a count of them at the end of every run (a pytest plugin; conftest loads it).

A skip hides a test. Some are right: the agent-only venv (Python 3.11, `.[agent,dev]`, the Pi's view) has no
builder stack, so builder-only tests skip there; a tmpfs needs root. Others mean the machine lacks what the
project's own setup provides (`.ci/run` installs mosquitto, cloud-init, chromium, systemd; `make install`
the extras; `make test` builds the test bundle and the agent venv; the Coral files are in tests/data/coral).
In CI (env CI set, as CI services do) or with EDGE_STRICT_SKIPS=1 those fail the run instead of passing
quietly; EDGE_STRICT_SKIPS=0 turns the check off.
"""

from __future__ import annotations

import importlib.util
import os
from collections import Counter
from collections.abc import Generator
from typing import Any

import pytest

# Reason fragments (lower case) for things the project's setup provides in every venv.
REQUIRED = (
    "mosquitto",  # apt: mosquitto, mosquitto-clients
    "ejabberd",  # apt: ejabberd (the second MQTT 5 broker)
    "cloud-init",
    "chromium",  # apt: chromium, chromium-driver
    "chromedriver",
    "selenium",  # the dev extra
    "systemd-analyze",  # apt: systemd
    "coral test data",  # vendored in tests/data/coral
    "test bundle",  # make test-bundle
    "golden self-test",  # every bundle the builder makes carries one
    ".venv-agent",  # make test builds it before the builder suite
)
# Only the builder venv (`.[builder,dev]`) must have every module a test imports.
REQUIRED_WITH_BUILDER = ("could not import", "pyyaml")
# The agent venv's legitimate skips: builder-only tests.
BUILDER_ONLY = ("no builder stack",)

_skips: list[tuple[str, bool]] = []  # (reason, allowed) for every skip this session


def strict() -> bool:
    flag = os.environ.get("EDGE_STRICT_SKIPS")
    if flag is not None:
        return flag.strip().lower() not in ("", "0", "false", "no")
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def builder_stack() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("torch", "libreyolo"))


def skip_allowed(reason: str, *, builder_test: bool, has_builder: bool) -> bool:
    """May a run skip a test for `reason`? `builder_test`: marked `builder`; `has_builder`: this venv's stack."""
    r = reason.lower()
    if not has_builder and (builder_test or any(p in r for p in BUILDER_ONLY)):
        return True
    if any(p in r for p in REQUIRED):
        return False
    return not (has_builder and any(p in r for p in REQUIRED_WITH_BUILDER))


def _reason(longrepr: Any) -> str:
    text = str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
    return text.removeprefix("Skipped: ")


def _record(reason: str, builder_test: bool) -> bool:
    ok = skip_allowed(reason, builder_test=builder_test, has_builder=builder_stack())
    _skips.append((reason, ok))
    return ok


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    rep = outcome.get_result()
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return
    reason = _reason(rep.longrepr)
    if not _record(reason, item.get_closest_marker("builder") is not None) and strict():
        rep.outcome = "failed"
        rep.longrepr = (f"skipped for a missing prerequisite the project's setup provides: {reason}\n"
                        "(not allowed in CI or with EDGE_STRICT_SKIPS=1; see tests/skip_policy.py)")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """Module-level skips (importorskip at import time) never reach runtest: judged here, failed at the end."""
    if report.skipped:
        _record(_reason(report.longrepr), builder_test=False)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    refused = strict() and any(not ok for _, ok in _skips)
    if refused and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _skips:
        terminalreporter.write_sep("-", "no test skipped")
        return
    by_reason = Counter(_skips)
    terminalreporter.write_sep("-", f"{len(_skips)} skipped (module-level skips count once per file)")
    for (reason, ok), n in by_reason.most_common():
        verdict = "allowed" if ok else ("NOT ALLOWED: fails this run" if strict() else "would fail in CI")
        terminalreporter.write_line(f"  {n:4d} x {reason}  [{verdict}]")
