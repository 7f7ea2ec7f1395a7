"""A real Kubernetes control plane (etcd + kube-apiserver) on loopback, for tests and demos.

It starts the binaries that `hack/build-tools` builds from their Go modules, the
way controller-runtime's envtest does: RBAC authorization, a static-token admin
in `system:masters`, service-account signing keys, TLS from a throwaway CA. There
is no kubelet, scheduler or controller-manager: pods stay exactly as written,
and namespaces never finish deleting.

This is a development tool, not operator code: it blocks on subprocesses.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from controller import crd

ADMIN_USER = "wa-admin"
STARTUP_TIMEOUT_S = 90.0
_LOG_TAIL_LINES = 60


class ControlPlaneError(RuntimeError):
    """The control plane could not start; the message carries the server's log."""


def tools_bin_dir() -> Path:
    """Where `hack/build-tools` puts kube-apiserver, etcd, kubectl and helm."""
    if explicit := os.environ.get("WA_TOOLS_BIN"):
        return Path(explicit)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    tools = Path(os.environ.get("WA_TOOLS_DIR", cache / "wa-controller" / "tools"))
    return tools / "bin"


def tool(name: str) -> Path:
    """Path of one built tool, or a clear error telling how to build it."""
    path = tools_bin_dir() / name
    if not os.access(path, os.X_OK):
        raise ControlPlaneError(f"{path} is missing: run hack/build-tools first")
    return path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write_certificates(cert_dir: Path) -> None:
    """A CA, a serving certificate for 127.0.0.1/localhost, and a service-account key."""
    cert_dir.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    validity = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=365))

    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "wa-controller-test-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )

    server_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(validity[0])
        .not_valid_after(validity[1])
        .add_extension(
            x509.SubjectAlternativeName([
                x509.DNSName("localhost"),
                x509.DNSName("kubernetes.default.svc"),
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            ]),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    (cert_dir / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "apiserver.crt").write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    (cert_dir / "apiserver.key").write_bytes(_pem_key(server_key))
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (cert_dir / "service-account.key").write_bytes(_pem_key(sa_key))
    for key_file in ("apiserver.key", "service-account.key"):
        (cert_dir / key_file).chmod(0o600)


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except FileNotFoundError:
        return f"({path} was never written)"
    return "\n".join(lines[-_LOG_TAIL_LINES:])


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path


class ControlPlane:
    """etcd and kube-apiserver under one working directory.

    `start()` returns once `/readyz` answers ok and the WAAccount CRD is
    established; `kubeconfig` is then an admin kubeconfig for it.
    """

    def __init__(self, workdir: Path, *, detached: bool = False) -> None:
        self.workdir = workdir
        self.detached = detached
        self.kubeconfig = workdir / "kubeconfig"
        self.token = secrets.token_hex(16)
        self.port = 0
        self._processes: list[_Process] = []

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "ca.crt"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        certs = self.workdir / "certs"
        _write_certificates(certs)
        etcd_port, peer_port = free_port(), free_port()
        self.port = free_port()
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)

        self._etcd_argv = [
                str(tool("etcd")),
                "--name=default",
                f"--data-dir={self.workdir / 'etcd-data'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
                f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
                f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
                "--unsafe-no-fsync=true",
                "--log-level=warn",
        ]
        self._etcd_health = f"http://127.0.0.1:{etcd_port}/health"
        try:
            self._spawn("etcd", self._etcd_argv)
            self._wait_until("etcd", lambda: self._get(self._etcd_health) is not None)
            self._spawn("kube-apiserver", [
                str(tool("kube-apiserver")),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--cert-dir={certs}",
                f"--tls-cert-file={certs / 'apiserver.crt'}",
                f"--tls-private-key-file={certs / 'apiserver.key'}",
                f"--secure-port={self.port}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                "--service-cluster-ip-range=10.0.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins=ServiceAccount",
                "--authorization-mode=RBAC",
                f"--token-auth-file={tokens}",
                f"--service-account-issuer=https://127.0.0.1:{self.port}/",
                f"--service-account-key-file={certs / 'service-account.key'}",
                f"--service-account-signing-key-file={certs / 'service-account.key'}",
                "--v=1",
            ])
            self._wait_until("kube-apiserver", self._ready)
            self._write_kubeconfig()
            self._install_crds()
        except BaseException:
            self.stop()
            raise

    def kill_etcd(self) -> None:
        """etcd dies (SIGKILL): the API server stays up and fails every write meanwhile."""
        etcd = next(p for p in self._processes if p.name == "etcd")
        etcd.popen.kill()
        etcd.popen.wait(timeout=10)
        self._processes.remove(etcd)

    def start_etcd(self) -> None:
        """etcd again, on its data: the API server reconnects by itself."""
        self._processes.insert(0, self._spawn_process("etcd", self._etcd_argv))
        self._wait_until("etcd", lambda: self._get(self._etcd_health) is not None)

    def stop(self) -> None:
        """Stop every process this control plane started (etcd last)."""
        for process in reversed(self._processes):
            _terminate(process.popen.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=10)
        self._processes.clear()

    @property
    def pids(self) -> list[int]:
        return [p.popen.pid for p in self._processes]

    def _spawn(self, name: str, argv: list[str]) -> None:
        self._processes.append(self._spawn_process(name, argv))

    def _spawn_process(self, name: str, argv: list[str]) -> _Process:
        log = self.workdir / f"{name}.log"
        with log.open("ab") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=self.detached,
            )
        return _Process(name, popen, log)

    def _wait_until(self, name: str, ready: Callable[[], bool]) -> None:
        process = next(p for p in self._processes if p.name == name)
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if process.popen.poll() is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {process.popen.returncode}; its log "
                    f"({process.log}) ends with:\n{_log_tail(process.log)}"
                )
            if ready():
                return
            time.sleep(0.2)
        raise ControlPlaneError(
            f"{name} was not ready within {STARTUP_TIMEOUT_S:.0f} s; its log "
            f"({process.log}) ends with:\n{_log_tail(process.log)}"
        )

    def _get(self, url: str, *, tls: bool = False) -> bytes | None:
        request = urllib.request.Request(url)  # noqa: S310 - loopback only
        context = None
        if tls:
            request.add_header("Authorization", f"Bearer {self.token}")
            context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(request, timeout=2, context=context) as answer:  # noqa: S310
                return bytes(answer.read())
        except OSError:
            return None

    def _ready(self) -> bool:
        return self._get(f"{self.server}/readyz", tls=True) == b"ok"

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{
                "name": "wa-controller-test",
                "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)},
            }],
            "users": [{"name": ADMIN_USER, "user": {"token": self.token}}],
            "contexts": [{
                "name": "wa-controller-test",
                "context": {"cluster": "wa-controller-test", "user": ADMIN_USER},
            }],
            "current-context": "wa-controller-test",
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this control plane; raise with its stderr on failure."""
        result = subprocess.run(
            [str(tool("kubectl")), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, timeout=120, check=False,
        )
        if result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def _install_crds(self) -> None:
        self.kubectl("apply", "-f", "-", stdin=crd.render())
        name = crd.custom_resource_definition()["metadata"]["name"]
        self.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")


def stop_process(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM,
                 timeout: float = 30) -> None:
    """Ask a child process to stop with `sig`, and kill it if it has not within `timeout`."""
    if process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


# --- `hack/control-plane up|down`: one control plane that outlives the command ---

def state_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("WA_CONTROL_PLANE_DIR", cache / "wa-controller" / "control-plane"))


def up() -> Path:
    """Start a detached control plane (or reuse the running one); return its kubeconfig."""
    workdir = state_dir()
    state_file = workdir / "state.json"
    if state_file.exists():
        state = json.loads(state_file.read_text())
        if all(alive(pid) for pid in state["pids"]):
            return Path(state["kubeconfig"])
        down()
    plane = ControlPlane(workdir, detached=True)
    plane.start()
    state_file.write_text(json.dumps({"pids": plane.pids, "kubeconfig": str(plane.kubeconfig)}))
    return plane.kubeconfig


def down() -> None:
    """Stop the detached control plane and forget its data."""
    workdir = state_dir()
    state_file = workdir / "state.json"
    if state_file.exists():
        stop_processes(reversed(json.loads(state_file.read_text())["pids"]))
    shutil.rmtree(workdir, ignore_errors=True)


def stop_processes(pids: Iterable[int], grace: float = 15.0) -> None:
    """SIGTERM each process, wait up to `grace` seconds, then SIGKILL what is left."""
    pids = list(pids)
    for pid in pids:
        _terminate(pid)
    deadline = time.monotonic() + grace
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as dead.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return True


def main(argv: list[str] | None = None) -> int:
    """`hack/control-plane up` prints the kubeconfig path; `down` stops everything."""
    import argparse

    parser = argparse.ArgumentParser(prog="hack/control-plane", description=main.__doc__)
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args(argv)
    if args.action == "up":
        try:
            print(up())
        except ControlPlaneError as error:
            print(f"control plane failed to start: {error}", file=sys.stderr)
            return 1
    else:
        down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
