"""Shared fixtures: one real control plane per test run, a fresh namespace per test."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.control_plane import ControlPlane, ControlPlaneError, tool

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """etcd + kube-apiserver built from their Go modules, with the CRDs installed."""
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    try:
        plane.start()
    except ControlPlaneError as error:
        pytest.fail(f"the test control plane did not start:\n{error}", pytrace=False)
    yield plane
    plane.stop()


class Kubectl:
    """The real kubectl binary, pointed at the test control plane and one namespace."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(tool("kubectl")), f"--kubeconfig={self.kubeconfig}", f"-n={self.namespace}"]
        result = subprocess.run(
            [*argv, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def apply(self, manifest: str) -> subprocess.CompletedProcess[str]:
        return self.run("apply", "-f", "-", stdin=manifest)


@pytest.fixture
def namespace(control_plane: ControlPlane) -> Iterator[str]:
    """A fresh namespace per test. It is deleted after the test but, with no
    controller-manager, never finishes terminating; nothing else sees it."""
    name = f"t-{secrets.token_hex(4)}"
    control_plane.kubectl("create", "namespace", name)
    yield name
    control_plane.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture
def kubectl(control_plane: ControlPlane, namespace: str) -> Kubectl:
    return Kubectl(control_plane.kubeconfig, namespace)


@pytest.fixture
def unanswered_kubeconfig(control_plane: ControlPlane, tmp_path: Path) -> Path:
    """The test cluster's kubeconfig, pointing at a loopback port nothing listens on."""
    import json

    from devtools.control_plane import free_port

    config = json.loads(control_plane.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{free_port()}"
    path = tmp_path / "unanswered.kubeconfig"
    path.write_text(json.dumps(config))
    return path


# --- the operator's world: API clients, instance simulators, accounts ---------------

import base64  # noqa: E402
import os  # noqa: E402

from kubernetes import client as k8s  # noqa: E402
from kubernetes import config as k8s_config  # noqa: E402

from devtools.harness import Accounts, Fleet  # noqa: E402

API_KEY = "test-api-key-7f3a"


@pytest.fixture(scope="session")
def api_client(control_plane: ControlPlane) -> Iterator[k8s.ApiClient]:
    # The operator (kopf and its own client) finds the cluster the way it would
    # outside one: through KUBECONFIG.
    os.environ["KUBECONFIG"] = str(control_plane.kubeconfig)
    configuration = k8s.Configuration()
    k8s_config.load_kube_config(str(control_plane.kubeconfig),
                                client_configuration=configuration)
    with k8s.ApiClient(configuration) as api_client:
        yield api_client


@pytest.fixture
def core(api_client: k8s.ApiClient) -> k8s.CoreV1Api:
    return k8s.CoreV1Api(api_client)


@pytest.fixture
def accounts(api_client: k8s.ApiClient, namespace: str) -> Accounts:
    return Accounts(k8s.CustomObjectsApi(api_client), namespace)


@pytest.fixture
def api_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "api-key"
    path.write_text(API_KEY)
    return path


@pytest.fixture
def fleet(core: k8s.CoreV1Api, namespace: str, api_key_file: Path) -> Iterator[Fleet]:
    """Instance pods backed by simulators; the API key Secret the operator reads."""
    core.create_namespaced_secret(namespace, {
        "metadata": {"name": "wa-controller-instances"},
        "data": {"api-key": base64.b64encode(API_KEY.encode()).decode()},
    })
    instances = Fleet(core, namespace, api_key_file)
    yield instances
    instances.stop_all()


# --- PostgreSQL for the mirror ------------------------------------------------------

from devtools.postgres import Postgres, PostgresError  # noqa: E402


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    server = Postgres()
    try:
        server.start()
    except PostgresError as error:
        pytest.fail(f"the test PostgreSQL did not start:\n{error}", pytrace=False)
    yield server
    server.remove()


@pytest.fixture
def pg_database(postgres: Postgres) -> Iterator[str]:
    """A fresh, empty database per test; yields its name."""
    name = f"t_{secrets.token_hex(4)}"
    postgres.sql(f"CREATE DATABASE {name}")
    yield name
    if postgres.running:
        postgres.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# --- a fault-injecting proxy in front of the API server -------------------------------

from devtools.apiproxy import ApiProxy  # noqa: E402


@pytest.fixture
def proxy(control_plane: ControlPlane, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
          ) -> Iterator[ApiProxy]:
    """The operator (in-process or started by the test) reaches the API server through a
    proxy that can hold status writes or throttle."""
    with ApiProxy(control_plane) as running:
        monkeypatch.setenv("KUBECONFIG", str(running.kubeconfig(tmp_path / "proxied")))
        yield running


# --- MariaDB: the seed's database family --------------------------------------------

from devtools.mariadb import MariaDB, MariaDBError  # noqa: E402


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    try:
        server = MariaDB()
    except MariaDBError as error:
        pytest.fail(str(error), pytrace=False)
    try:
        server.start()
    except Exception as error:
        server.remove()
        pytest.fail(f"the test MariaDB did not start:\n{error}", pytrace=False)
    yield server
    server.remove()


@pytest.fixture
def mariadb_database(mariadb: MariaDB) -> Iterator[str]:
    """A fresh, empty database per test; yields its SQLAlchemy URL (mysql+pymysql)."""
    name = f"t_{secrets.token_hex(4)}"
    mariadb.sql(f"CREATE DATABASE {name} CHARACTER SET utf8mb4")
    yield mariadb.url(name)
    if mariadb.running:
        mariadb.sql(f"DROP DATABASE IF EXISTS {name}")
