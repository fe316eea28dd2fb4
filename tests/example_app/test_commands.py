"""The Flask CLI commands, the report script and ``python -m example_app`` (``make run``)."""

from __future__ import annotations

import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from flask import Flask

from tests.conftest import Observer

from .conftest import ROOT, login, run_module


def test_seed_fills_an_empty_database_once(empty_app: Flask, outside: Observer) -> None:
    """``flask seed`` adds the demo data; a second run adds nothing."""
    runner = empty_app.test_cli_runner()
    first = runner.invoke(args=["seed"])
    assert first.exit_code == 0, first.output
    assert "demo data added" in first.output
    counts = [outside.scalar(f"SELECT count(*) FROM example_{t}") for t in ("users", "captions")]
    second = runner.invoke(args=["seed"])
    assert "already present" in second.output
    assert [outside.scalar(f"SELECT count(*) FROM example_{t}") for t in ("users", "captions")] == (
        counts
    )
    assert counts == [2, 5]


def test_stats_prints_what_the_database_holds(app: Flask, outside: Observer) -> None:
    """``flask stats`` counts through the service inside the CLI's app context."""
    result = app.test_cli_runner().invoke(args=["stats"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["users"] == outside.scalar("SELECT count(*) FROM example_users") == 2
    assert stats["captions_pending"] == 4 and stats["captions_approved"] == 1


def test_create_user_command_adds_a_user_who_can_log_in(app: Flask) -> None:
    """``flask create-user`` stores a hashed password that the login form accepts."""
    result = app.test_cli_runner().invoke(
        args=["create-user", "grace", "--password", "hopper-1906"]
    )
    assert result.exit_code == 0, result.output
    assert "created user grace" in result.output
    client = app.test_client()
    assert login(client, "grace", "wrong").status_code == 401
    assert login(client, "grace", "hopper-1906").status_code == 302


def test_report_script_prints_counts_and_pending_captions(app: Flask, example_url: str) -> None:
    """The report runs without an app, closes every session (-W error) and lists the queue."""
    done = run_module("example_app.report", database_url=example_url)
    assert done.returncode == 0, done.stderr
    assert "captions_pending: 4" in done.stdout
    assert "pending #2: Morning light on the water" in done.stdout
    assert "newest caption id: 5" in done.stdout
    assert done.stderr == ""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start(url: str, port: int) -> subprocess.Popen[str]:
    env = {**os.environ, "DATABASE_URL": url, "PORT": str(port)}
    return subprocess.Popen(
        [sys.executable, "-m", "example_app"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_until_serving(base: str, server: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[0]
        try:
            with urllib.request.urlopen(base + "/health", timeout=5) as response:
                if response.read() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.1)
    raise AssertionError("python -m example_app did not start serving within 60 s")


def _stop(server: subprocess.Popen[str]) -> str:
    server.terminate()
    output, _ = server.communicate(timeout=30)
    return output


def test_python_m_example_app_seeds_once_and_serves(tmp_path: Path, outside: Observer) -> None:
    """``make run``'s command seeds, prints the address and login, serves, and re-seeds nothing."""
    url = f"sqlite:///{tmp_path / 'example.db'}"
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start(url, port)
    try:
        _wait_until_serving(base, server)
        jar = http.cookiejar.CookieJar()
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        with browser.open(base + "/") as page:
            assert "Harbour at dawn" in page.read().decode()
        form = urllib.parse.urlencode({"username": "demo", "password": "demo-password"})
        with browser.open(base + "/login", data=form.encode()) as page:
            assert "Log out" in page.read().decode()  # followed the redirect, logged in
        with browser.open(base + "/captions/2/approve", data=b"") as page:
            assert page.status == 200
    finally:
        output = _stop(server)
    assert f"open {base}" in output
    assert "demo / demo-password" in output
    assert "demo data added" in output
    assert outside.scalar("SELECT status FROM example_captions WHERE id = 2") == "approved"

    again = _start(url, port)
    try:
        _wait_until_serving(base, again)
    finally:
        output = _stop(again)
    assert "demo data already present" in output
    assert outside.scalar("SELECT count(*) FROM example_users") == 2
