"""The report page opens in headless Chromium without console messages.

Skips where Chromium is absent, except under ``CI=true``: there a missing browser fails the run (``.ci/run``
installs Debian's ``chromium``), so CI never lands a report that no browser has opened.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cltm.report import build_report
from report_fixtures import FAMILIES, synthetic_runs, write_engine_results, write_finetune_dir

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
ON_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.fixture(autouse=True)
def _chromium_required() -> None:
    if CHROMIUM is not None:
        return
    if ON_CI:
        pytest.fail("CI=true but no Chromium on PATH: .ci/run installs it (Debian: apt-get install chromium)")
    pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")


CONSOLE = re.compile(r":CONSOLE[:(]")


def _open_in_chromium(page: Path, profile: Path) -> tuple[str, list[str]]:
    """Load ``page`` headless; return (dumped DOM, console lines Chromium logged)."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--allow-file-access-from-files",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout, [line for line in done.stderr.splitlines() if CONSOLE.search(line)]


def test_harness_sees_console_errors(tmp_path):
    """The check below can fail: a page that logs an error is caught."""
    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
        '<script>console.error("report-test-error")</script></body></html>'
    )
    _, console = _open_in_chromium(page, tmp_path / "profile")
    assert any("report-test-error" in line for line in console)


def test_report_opens_without_console_messages(tmp_path):
    results = write_engine_results(tmp_path / "results", 3, layers=[0, 1], seeds=2)
    runs, _ = synthetic_runs(3, layers=[0, 1], seeds=2, finetune_targets=2)
    finetune = write_finetune_dir(tmp_path / "ft", runs)
    index = build_report(results, tmp_path / "report", families=FAMILIES, finetune_dirs=[finetune])
    dom, console = _open_in_chromium(index, tmp_path / "profile")
    assert console == [], console
    assert "Cross-Lingual Transfer Matrices" in dom and "<img" in dom
