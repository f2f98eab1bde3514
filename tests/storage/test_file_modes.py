"""The embedded SQLite directory and files are private to the service user.

Without SECRETS_KEY the file holds tool secrets in plaintext. A real ``webhook-worker run``
(and ``migrate``) on a DATA_DIR of the test's own, under an ordinary or an empty umask: the
directory it creates is 0700, the database and its -wal and -shm files 0600 once events are
stored. A DATA_DIR that already exists is left as it is, with a warning at start that names it
and says how to fix it.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.cli.test_cli import clean_env
from tests.support import eventually_sync, free_port
from webhook_worker.constants import EMBEDDED_DB_FILENAME

EVENTS = 3


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes(data_dir: Path) -> dict[str, int]:
    """The mode of the database file and of the files SQLite keeps beside it."""
    db = data_dir / EMBEDDED_DB_FILENAME
    return {suffix: mode(db.with_name(db.name + suffix)) for suffix in ("", "-wal", "-shm")}


@contextmanager
def running(data_dir: Path, log_path: Path, umask: int) -> Iterator[httpx.Client]:
    """``webhook-worker run`` on ``data_dir`` (embedded SQLite, no SECRETS_KEY) under
    ``umask``, with a tool ``files`` that holds a secret and ``EVENTS`` events stored."""
    port = free_port()
    env = clean_env(DATA_DIR=str(data_dir), API_ADDR=f"127.0.0.1:{port}", LOG_FORMAT="text")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "webhook_worker", "run"],
            env=env,
            stdout=log,
            stderr=log,
            preexec_fn=lambda: os.umask(umask),
        )
        http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5)

        def live() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"`run` exited {process.returncode}: {log_path.read_text()}")
            try:
                return http.get("/health/live").status_code == 200
            except httpx.TransportError:
                return False

        try:
            eventually_sync(live, within=30, what="`webhook-worker run` to start", interval=0.05)
            tool = {"id": "files", "auth": {"type": "token", "header": "X-Token", "secret": "s3"}}
            created = http.post("/api/v1/tools", json=tool)
            assert created.status_code == 201, created.text
            for number in range(EVENTS):
                sent = http.post("/webhooks/files", json={"n": number}, headers={"X-Token": "s3"})
                assert sent.status_code == 202, sent.text

            def stored() -> bool:
                items = http.get("/api/v1/events", params={"status": "processed"}).json()["items"]
                return len(items) == EVENTS

            eventually_sync(stored, within=30, what=f"{EVENTS} events stored", interval=0.05)
            yield http
        finally:
            http.close()
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_run_creates_a_private_data_dir(tmp_path: Path) -> None:
    for umask in (0o022, 0o000):
        data_dir = tmp_path / f"umask-{umask:03o}" / "data"
        with running(data_dir, tmp_path / f"run-{umask:03o}.log", umask):
            assert mode(data_dir) == 0o700
            assert modes(data_dir) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
        assert "chmod 700" not in (tmp_path / f"run-{umask:03o}.log").read_text()


def test_migrate_creates_a_private_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "nested" / "data"
    result = subprocess.run(
        [sys.executable, "-m", "webhook_worker", "migrate"],
        env=clean_env(DATA_DIR=str(data_dir)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        preexec_fn=lambda: os.umask(0),
    )
    assert result.returncode == 0, result.stderr
    assert mode(data_dir) == 0o700
    assert mode(data_dir / EMBEDDED_DB_FILENAME) == 0o600


def test_an_open_data_dir_is_kept_and_warned_about(tmp_path: Path) -> None:
    data_dir = tmp_path / "shared"
    data_dir.mkdir()
    data_dir.chmod(0o755)  # made by the user: theirs to change
    # a database an older release left readable by everyone (a valid, empty, SQLite file)
    (data_dir / EMBEDDED_DB_FILENAME).touch()
    (data_dir / EMBEDDED_DB_FILENAME).chmod(0o644)
    log_path = tmp_path / "run.log"
    with running(data_dir, log_path, 0o022):
        assert modes(data_dir) == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
        assert mode(data_dir) == 0o755
    warnings = [line for line in log_path.read_text().splitlines() if "chmod 700" in line]
    assert len(warnings) == 1, log_path.read_text()
    assert f"DATA_DIR {data_dir} is open to other users (mode 755)" in warnings[0]
    assert f"run chmod 700 {data_dir}" in warnings[0]
