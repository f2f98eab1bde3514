"""A private PostgreSQL server that a test may stop and start: initdb in a temporary directory,
a free loopback port, no Unix socket, trust authentication. The shared server on 5432 is never
touched.

PostgreSQL refuses to run as root, so as root every command runs as the ``postgres`` user
(``runuser -u postgres --``) on a directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support import free_port


def _bindir() -> Path:
    """The newest installed server's bin directory (Debian layout), else the PATH's."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    if initdb is None:
        pytest.fail(
            "the PostgreSQL server binaries (initdb, pg_ctl) are required for the outage test "
            "and were found neither in /usr/lib/postgresql/*/bin nor on PATH"
        )
    return Path(initdb).parent


class PostgresServer:
    user = "postgres"

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="webhook-worker-chaos-pg-"))
        self.data = self.root / "data"
        self.logfile = self.root / "server.log"
        self._as_postgres: list[str] = []
        if os.geteuid() == 0:
            runuser = shutil.which("runuser")
            if runuser is None:
                pytest.fail("runuser is required to run PostgreSQL as root's tests do")
            try:
                account = pwd.getpwnam(self.user)
            except KeyError:
                pytest.fail("a 'postgres' system user is required to run a private PostgreSQL")
            os.chown(self.root, account.pw_uid, account.pw_gid)
            self._as_postgres = [runuser, "-u", self.user, "--"]

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, timeout: float = 120) -> None:
        command = [*self._as_postgres, str(self.bindir / tool), *args]
        result = subprocess.run(
            command, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            log = self.logfile.read_text()[-3000:] if self.logfile.exists() else ""
            pytest.fail(f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}\n{log}")

    def init(self) -> None:
        self._run(
            "initdb",
            "-D", str(self.data),
            "-U", self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' "
            "-c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", "60",
            "-o", options, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast``: sessions are cut off, the server shuts down cleanly."""
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        if self.running():
            subprocess.run(
                [
                    *self._as_postgres,
                    str(self.bindir / "pg_ctl"),
                    "-D", str(self.data), "-w", "-t", "60", "-m", "immediate", "stop",
                ],
                cwd=self.root,
                capture_output=True,
                timeout=90,
                check=False,
            )  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)
