"""Start fully or not at all: every setting is checked and every port bound before the
operator acts; a bad one exits at once with one line naming it, having written nothing.
A served namespace that does not exist is said, and served once it appears."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
from kubernetes import client as k8s

from controller.api import Phase
from devtools.control_plane import ControlPlane, free_port
from devtools.harness import Accounts, Fleet, operator_process, scrape, wait_for

pytestmark = pytest.mark.integration

PASSWORD = "db-pass-3f9a1c"


def run_operator(namespace: str, tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "controller", "run", f"--namespaces={namespace}",
            f"--operator-namespace={namespace}", "--liveness-port=off", "--metrics-port=off",
            "--webhook-port=off", f"--database-url=sqlite:///{tmp_path / 'mirror.sqlite'}",
            *flags]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--metrics-port=70000"], "wa-controller: bad setting metrics_port (--metrics-port, "
         "WA_METRICS_PORT): Input should be less than or equal to 65535 (given: '70000')"),
        (["--liveness-port=0"], "wa-controller: bad setting liveness_port (--liveness-port, "
         "WA_LIVENESS_PORT): Input should be greater than or equal to 1 (given: '0')"),
        (["--metrics-port=9311", "--webhook-port=9311"], "wa-controller: bad settings: "
         "webhook_port and metrics_port are both 9311: each listener needs its own port"),
        (["--bind-address=999.1.1.1"], "wa-controller: bad setting bind_address "
         "(--bind-address, WA_BIND_ADDRESS): '999.1.1.1' is not an IPv4 or IPv6 address "
         "(given: '999.1.1.1')"),
        ([f"--database-url=postgresql://wa:{PASSWORD}@db:port/x"], "wa-controller: bad "
         "setting database_url (--database-url, WA_DATABASE_URL): not an SQLAlchemy database "
         "URL (dialect+driver://user:password@host:port/database)"),
        ([f"--database-url=nosuchdb://wa:{PASSWORD}@db/x"], "wa-controller: bad setting "
         "database_url (--database-url, WA_DATABASE_URL): unknown database dialect or driver "
         "(Can't load plugin: sqlalchemy.dialects:nosuchdb)"),
        (["--probe-interval=0"], "wa-controller: bad setting probe_interval "
         "(--probe-interval, WA_PROBE_INTERVAL): Input should be greater than 0 (given: '0')"),
        (["--mirror-resync-interval=-5"], "wa-controller: bad setting mirror_resync_interval "
         "(--mirror-resync-interval, WA_MIRROR_RESYNC_INTERVAL): Input should be greater than "
         "0 (given: '-5')"),
        (["--installation=two words"], "wa-controller: bad setting installation "
         "(--installation, WA_INSTALLATION): String should match pattern "
         "'^[A-Za-z0-9][A-Za-z0-9_./-]*$' (given: 'two words')"),
    ],
    ids=["port-range", "port-zero", "same-port", "bind-address", "database-url",
         "database-driver", "interval", "resync-interval", "installation"],
)
def test_a_bad_setting_exits_at_once_naming_it_and_writes_nothing(
    namespace: str, accounts: Accounts, tmp_path: Path, flags: list[str], expected: str
) -> None:
    accounts.create("untouched")

    result = run_operator(namespace, tmp_path, *flags)

    assert (result.returncode, result.stderr.splitlines()) == (2, [expected])
    assert PASSWORD not in result.stdout + result.stderr
    assert "status" not in accounts.get("untouched")
    assert not (tmp_path / "mirror.sqlite").exists()


def test_a_port_in_use_or_an_address_not_here_exits_naming_the_setting(
    namespace: str, accounts: Accounts, tmp_path: Path
) -> None:
    accounts.create("untouched")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        in_use = run_operator(namespace, tmp_path, "--bind-address=127.0.0.1",
                              f"--webhook-port={port}")
    elsewhere = run_operator(namespace, tmp_path, "--bind-address=192.0.2.77",
                             f"--metrics-port={free_port()}")

    assert (in_use.returncode, in_use.stderr.splitlines()) == (2, [
        f"wa-controller: bad setting webhook_port: cannot listen on 127.0.0.1 port {port}: "
        "Address already in use"])
    assert elsewhere.returncode == 2
    assert elsewhere.stderr.startswith("wa-controller: bad setting metrics_port: cannot "
                                       "listen on 192.0.2.77 port ")
    assert elsewhere.stderr.rstrip().endswith("Cannot assign requested address")
    assert "status" not in accounts.get("untouched")
    assert not (tmp_path / "mirror.sqlite").exists()


def test_a_missing_served_namespace_is_said_and_served_once_it_appears(
    control_plane: ControlPlane, namespace: str, fleet: Fleet, api_client: k8s.ApiClient,
    tmp_path: Path,
) -> None:
    later = f"t-{uuid.uuid4().hex[:8]}"
    port, log = free_port(), tmp_path / "operator.log"
    with operator_process(log, "--log-format=plain", namespaces=f"{namespace},{later}",
                          operator_namespace=namespace, probe_interval=1,
                          liveness_port="off", metrics_port=port, webhook_port="off",
                          database_url=f"sqlite:///{tmp_path / 'mirror.sqlite'}"):
        missing = f'wa_controller_namespace_missing{{namespace="{later}"}}'
        wait_for("the missing namespace in /metrics", lambda: _scraped(port, missing) == 1.0,
                 timeout=60)
        assert _scraped(port, f'wa_controller_namespace_missing{{namespace="{namespace}"}}') \
            == 0.0
        said = [line for line in log.read_text().splitlines() if later in line]
        assert said == [next(line for line in said if "does not exist" in line)]
        assert said[0][:4].isdigit(), "plain log lines begin with their timestamp"

        control_plane.kubectl("create", "namespace", later)
        Accounts(k8s.CustomObjectsApi(api_client), later).create("late")
        # No instance pod there: decided at once, Pending.
        wait_for("the account in the new namespace decided", lambda: (Accounts(
            k8s.CustomObjectsApi(api_client), later).status("late").get("phase")) == "Pending",
            timeout=30)
        wait_for("the namespace no longer missing", lambda: _scraped(port, missing) == 0.0,
                 timeout=10)
        phases = {labels.split('phase="')[1].rstrip('"}') for labels in scrape(port)
                  if labels.startswith(f'wa_controller_accounts{{namespace="{later}"')}
        assert phases == {phase.value for phase in Phase}


def _scraped(port: int, series: str) -> float | None:
    try:
        return scrape(port).get(series)
    except httpx.HTTPError:  # not listening yet
        return None

