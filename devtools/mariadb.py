"""A throwaway MariaDB server for tests, from Debian's MariaDB server binaries that
`hack/lib.sh` installs. It listens on loopback only, keeps everything in a private
directory, and can be stopped and started again on the same data (a database outage).

The seed's application keeps its accounts in MySQL: the mirror and `wa-controller import`
are tested against a real server of that family.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pymysql

from devtools.control_plane import free_port, stop_process

ROOT_PASSWORD = "mariadb-test-pw"  # noqa: S105 - a throwaway local test server
SERVER = Path(os.environ.get("WA_MARIADB_BIN", "/usr/sbin/mariadbd"))
INSTALL_DB = Path(os.environ.get("WA_MARIADB_INSTALL_DB", "/usr/bin/mariadb-install-db"))
# As root, the server runs as this user (MariaDB refuses root unless told to, and a
# test server has no business being root).
UNPRIVILEGED_USER = "nobody"


class MariaDBError(RuntimeError):
    pass


class MariaDB:
    """mariadb-install-db + mariadbd under a private directory; `url()` builds URLs."""

    def __init__(self) -> None:
        for binary in (SERVER, INSTALL_DB):
            if not os.access(binary, os.X_OK):
                raise MariaDBError(f"{binary} is missing: run hack/test (it installs MariaDB), "
                                   "or `apt-get install mariadb-server-core mariadb-client-core`")
        self.workdir = Path(tempfile.mkdtemp(prefix="wa-mariadb-"))
        self.workdir.chmod(0o755)
        self.data = self.workdir / "data"
        self.socket = self.workdir / "mariadb.sock"
        self.log = self.workdir / "mariadb.log"
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(self.workdir, user.pw_uid, user.pw_gid)
            self._as = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def url(self, database: str = "", user: str = "root", password: str = ROOT_PASSWORD,
            driver: str = "mysql+pymysql") -> str:
        """A SQLAlchemy URL; utf8mb4, as Laravel's default connection."""
        return (f"{driver}://{user}:{password}@127.0.0.1:{self.port}/{database}"
                "?charset=utf8mb4")

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        fresh = not self.data.exists()
        if fresh:
            self._install_db()
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                [str(SERVER), "--no-defaults", f"--datadir={self.data}",
                 f"--port={self.port}", "--bind-address=127.0.0.1", f"--socket={self.socket}",
                 f"--pid-file={self.workdir / 'mariadb.pid'}", "--skip-name-resolve",
                 "--skip-log-bin", "--innodb-buffer-pool-size=32M",
                 "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0",
                 "--character-set-server=utf8mb4", "--collation-server=utf8mb4_unicode_ci",
                 # MySQL's strictness (Laravel turns it on): bad values are errors.
                 "--sql-mode=STRICT_TRANS_TABLES,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self._as)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise MariaDBError(f"mariadbd exited:\n{self._log_tail()}")
            try:
                # A fresh server's root has no password over TCP until it is given one.
                pymysql.connect(host="127.0.0.1", port=self.port, user="root",
                                password="" if fresh else ROOT_PASSWORD,
                                connect_timeout=1).close()
                break
            except pymysql.err.OperationalError:
                time.sleep(0.1)
        else:
            raise MariaDBError(f"mariadbd did not accept connections:\n{self._log_tail()}")
        if fresh:
            self._set_root_password()

    def _install_db(self) -> None:
        result = subprocess.run(
            [str(INSTALL_DB), "--no-defaults", f"--datadir={self.data}",
             "--auth-root-authentication-method=normal", "--skip-test-db",
             "--skip-name-resolve"],
            capture_output=True, text=True, check=False, cwd=self.workdir, **self._as)
        if result.returncode != 0:
            raise MariaDBError(f"mariadb-install-db failed:\n{result.stdout}\n{result.stderr}")

    def _set_root_password(self) -> None:
        with pymysql.connect(host="127.0.0.1", port=self.port, user="root", password="",
                             autocommit=True) as connection, connection.cursor() as cursor:
            # Accounts by host name are ignored under --skip-name-resolve: only these count.
            for host in ("localhost", "127.0.0.1", "::1"):
                cursor.execute("ALTER USER IF EXISTS 'root'@%s IDENTIFIED BY %s",
                               (host, ROOT_PASSWORD))

    def _log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            stop_process(self._process)  # SIGTERM: a clean shutdown
        self._process = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def sql(self, statement: str, database: str | None = None) -> list[tuple[object, ...]]:
        """Run one statement as root (autocommit); rows if it returns any."""
        with pymysql.connect(host="127.0.0.1", port=self.port, user="root",
                             password=ROOT_PASSWORD, database=database, autocommit=True,
                             charset="utf8mb4") as connection, connection.cursor() as cursor:
            cursor.execute(statement)
            return list(cursor.fetchall()) if cursor.description else []
