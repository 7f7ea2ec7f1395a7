"""A throwaway PostgreSQL server for tests and the benchmark, from the Debian packages that
`hack/lib.sh` installs. It listens on loopback only and can be stopped and started again on
the same data (a database outage)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from devtools.control_plane import free_port, stop_process

SUPERUSER_PASSWORD = "postgres-test-pw"  # noqa: S105 - a throwaway local test server


class PostgresError(RuntimeError):
    pass


def _bin_dir() -> Path:
    if os.environ.get("WA_PG_BIN"):
        return Path(os.environ["WA_PG_BIN"])
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresError("PostgreSQL is not installed: run hack/test (it installs it), "
                            "or `apt-get install postgresql`")
    return Path(found[-1]).parent


class Postgres:
    """initdb + postgres under a private directory; `url()` builds connection URLs."""

    def __init__(self, *, log_statements: bool = False) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix="wa-pg-"))
        self.workdir.chmod(0o755)
        self.data = self.workdir / "data"
        self.port = free_port()
        self.log = self.workdir / "postgres.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log_statements = log_statements
        self._bin = _bin_dir()
        # PostgreSQL refuses to run as root: then it runs as the packages' postgres user.
        self._as: dict[str, Any] = (
            {"user": "postgres", "group": "postgres", "extra_groups": []}
            if os.geteuid() == 0 else {})

    def url(self, user: str = "postgres", password: str = SUPERUSER_PASSWORD,
            database: str = "postgres", driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{user}:{password}@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if not self.data.exists():
            self._initdb()
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(self._bin / "postgres"), "-D", str(self.data),
                 "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                 "-c", f"unix_socket_directories={self.workdir}", "-c", "fsync=off",
                 "-c", "full_page_writes=off",
                 "-c", f"log_statement={'all' if self._log_statements else 'none'}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self._as)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise PostgresError(f"postgres exited:\n{self.log.read_text()[-2000:]}")
            try:
                psycopg.connect(self.url(driver="postgresql"), connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                time.sleep(0.1)
        raise PostgresError(f"postgres did not accept connections:\n{self.log.read_text()[-2000:]}")

    def _initdb(self) -> None:
        self.data.mkdir()
        pwfile = self.workdir / "pw"
        pwfile.write_text(SUPERUSER_PASSWORD)
        if self._as:
            postgres = pwd.getpwnam("postgres")
            for path in (self.workdir, self.data, pwfile):
                os.chown(path, postgres.pw_uid, postgres.pw_gid)
        self.data.chmod(0o700)
        result = subprocess.run(
            [str(self._bin / "initdb"), "-D", str(self.data), "-U", "postgres",
             f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256",
             "--no-sync", "-E", "UTF8"],
            capture_output=True, text=True, check=False, cwd=self.workdir, **self._as)
        pwfile.unlink()
        if result.returncode != 0:
            raise PostgresError(f"initdb failed:\n{result.stdout}\n{result.stderr}")

    def statements_logged(self) -> int:
        """Statements the server has run so far (with `log_statements=True`)."""
        with self.log.open("rb") as log:
            return sum(b" statement: " in line for line in log)

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process, signal.SIGINT)  # SIGINT: fast shutdown
        self._process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def sql(self, statement: str, database: str = "postgres") -> list[tuple[object, ...]]:
        """Run one statement as the superuser (autocommit); rows if it returns any."""
        with psycopg.connect(self.url(database=database, driver="postgresql"),
                             autocommit=True) as connection:
            cursor = connection.execute(statement)  # type: ignore[arg-type]
            return cursor.fetchall() if cursor.description else []
