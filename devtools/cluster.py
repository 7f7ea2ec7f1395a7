"""A single-node Kubernetes cluster with a real kubelet on this machine (`hack/cluster`).

etcd and kube-apiserver as in `control_plane`, plus kube-controller-manager,
kube-scheduler, a kubelet and kube-proxy built from the same Kubernetes module,
Debian's containerd and runc, Debian's CNI bridge plugin on a bridge made here, and
CoreDNS as the cluster DNS. No Docker, no registry: images are imported into
containerd and pods use `imagePullPolicy: Never`.

Pods cannot reach the host's loopback, so kube-apiserver and CoreDNS listen on the
bridge's address (the node's address). CoreDNS runs as a host process there, like
the API server, rather than as a pod: no image, ServiceAccount or RBAC to bootstrap
before the cluster has DNS, and it answers only for cluster.local (no `forward`, so it
never looks up a name outside the cluster).

Everything the node changes on the host is recorded first and undone by `down`,
which then checks the host against the record (`devtools.host`).
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
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller import crd
from devtools import host, image
from devtools.control_plane import alive, free_port, stop_processes, tool

NODE_NAME = "wa-node"
BRIDGE = "wa-node0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/24"
SERVICE_CIDR = "10.96.0.0/24"
KUBERNETES_SERVICE_IP = "10.96.0.1"
CLUSTER_DOMAIN = "cluster.local"
API_PORT = 6443
CNI_NETWORK = "wa-node"
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
ADMIN_USER = "wa-admin"
# containerd's registry client goes through this proxy, a closed loopback port: an image
# that was not imported fails at once and nothing ever leaves the host to pull it.
NO_REGISTRY = {"HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9",
               "NO_PROXY": "", "https_proxy": "http://127.0.0.1:9",
               "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}
STARTUP_TIMEOUT_S = 120.0
# Stopped in this order: nothing recreates or reschedules pods while they are deleted.
STOP_ORDER = ("kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet",
              "coredns", "kube-apiserver", "etcd", "containerd")


class ClusterError(RuntimeError):
    """The cluster could not start or stop cleanly; the message says what and why."""


def state_dir() -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("WA_CLUSTER_DIR", cache / "wa-controller" / "cluster"))


@dataclass(frozen=True)
class Layout:
    """Where each part keeps its files, all under one state directory."""

    root: Path

    certs = property(lambda self: self.root / "certs")
    logs = property(lambda self: self.root / "logs")
    kubeconfig = property(lambda self: self.root / "kubeconfig")
    kubelet_root = property(lambda self: self.root / "kubelet")
    containerd_root = property(lambda self: self.root / "containerd")
    containerd_state = property(lambda self: self.root / "run" / "containerd")
    containerd_socket = property(lambda self: self.root / "run" / "containerd.sock")
    cni_conf_dir = property(lambda self: self.root / "cni" / "net.d")
    cni_ipam_dir = property(lambda self: self.root / "cni" / "ipam")
    pod_logs = property(lambda self: self.root / "pod-logs")
    snapshot_file = property(lambda self: self.root / "host-before.json")
    state_file = property(lambda self: self.root / "state.json")


# --- certificates and configuration (pure, apart from writing files) ------------------

def _pem_key(key: rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def write_certificates(certs: Path) -> None:
    """A CA; the API server's serving certificate for every name pods and the host use;
    client certificates for the kubelet (a Node identity) and for the API server calling
    kubelets; the service-account signing key."""
    certs.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    valid = (now - datetime.timedelta(hours=1), now + datetime.timedelta(days=365))
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_name = _name("wa-node-ca")
    ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(valid[0]).not_valid_after(valid[1])
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    (certs / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, subject: x509.Name, usage: x509.ObjectIdentifier,
              names: list[x509.GeneralName] | None = None) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(valid[0]).not_valid_after(valid[1])
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        (certs / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (certs / f"{stem}.key").write_bytes(_pem_key(key))
        (certs / f"{stem}.key").chmod(0o600)

    dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
           f"kubernetes.default.svc.{CLUSTER_DOMAIN}"]
    ips = ["127.0.0.1", NODE_IP, KUBERNETES_SERVICE_IP]
    issue("apiserver", _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH,
          [x509.DNSName(n) for n in dns] + [x509.IPAddress(ipaddress.ip_address(i)) for i in ips])
    issue("kubelet-client", _name(f"system:node:{NODE_NAME}", "system:nodes"),
          ExtendedKeyUsageOID.CLIENT_AUTH)
    issue("apiserver-kubelet-client", _name("kube-apiserver-kubelet-client", "system:masters"),
          ExtendedKeyUsageOID.CLIENT_AUTH)
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (certs / "service-account.key").write_bytes(_pem_key(sa_key))
    (certs / "service-account.key").chmod(0o600)


def kubeconfig(server: str, ca_file: Path, user: dict[str, str]) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "wa-node",
                      "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "wa-node", "context": {"cluster": "wa-node", "user": "user"}}],
        "current-context": "wa-node",
    }, indent=1)


def containerd_config(layout: Layout) -> str:
    """containerd for the kubelet on this VM: cgroupfs, a local pause image, no negative
    oom_score_adj (the VM lacks CAP_SYS_RESOURCE), no AppArmor profile loaded into the
    host's kernel, every path under the state directory."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""version = 2
root = "{layout.containerd_root}"
state = "{layout.containerd_state}"
[grpc]
  address = "{layout.containerd_socket}"
[ttrpc]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{layout.root / 'opt'}"
[{cri}]
  sandbox_image = "{image.PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  disable_apparmor = true
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN_DIR}"
  conf_dir = "{layout.cni_conf_dir}"
  max_conf_num = 1
"""


def cni_config(layout: Layout) -> dict:
    """Debian's bridge plugin on our bridge: addresses from POD_CIDR, the node as gateway,
    no masquerading (the guard drops whatever would leave)."""
    return {
        "cniVersion": "1.0.0", "name": CNI_NETWORK,
        "plugins": [{
            "type": "bridge", "bridge": BRIDGE, "isGateway": True, "ipMasq": False,
            "hairpinMode": True,
            "ipam": {"type": "host-local", "dataDir": str(layout.cni_ipam_dir),
                     "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                     "routes": [{"dst": "0.0.0.0/0"}]},
        }],
    }


def kubelet_config(layout: Layout, healthz_port: int) -> dict:
    """What the kubelet needs on this VM: cgroup v1 allowed with the cgroupfs driver,
    swap tolerated, no host resolv.conf for pods, no KUBE-* iptables chains of its own,
    relaxed disk eviction, every path under the state directory."""
    certs = layout.certs
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": NODE_IP, "port": 10250, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": healthz_port,
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(certs / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "containerRuntimeEndpoint": f"unix://{layout.containerd_socket}",
        "cgroupDriver": "cgroupfs", "failCgroupV1": False, "failSwapOn": False,
        "resolvConf": "", "makeIPTablesUtilChains": False,
        "clusterDNS": [NODE_IP], "clusterDomain": CLUSTER_DOMAIN,
        "podCIDR": POD_CIDR, "podLogsDir": str(layout.pod_logs), "maxPods": 60,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "registerNode": True, "rotateCertificates": False,
    }


def kube_proxy_config(kubeconfig_file: Path, healthz_port: int, metrics_port: int) -> dict:
    """iptables mode; pod traffic (POD_CIDR) never masqueraded; no conntrack sysctls and
    no route_localnet written."""
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig_file)},
        "mode": "iptables", "clusterCIDR": POD_CIDR, "hostnameOverride": NODE_NAME,
        "bindAddress": NODE_IP,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "conntrack": {"maxPerCore": 0, "min": 0},
        "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
    }


def corefile(kubeconfig_file: Path, ready_port: int) -> str:
    return f""".:53 {{
    bind {NODE_IP}
    errors
    ready 127.0.0.1:{ready_port}
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig_file} wa-node
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    cache 5
}}
"""


# --- the running cluster --------------------------------------------------------------

def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} was never written)"


class Cluster:
    """The node's processes, started detached so that they outlive `hack/cluster up`."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.token = secrets.token_hex(16)
        self.pids: dict[str, int] = {}
        self.started: dict[str, str] = {}  # the kernel's start time of each, against pid reuse

    @property
    def server(self) -> str:
        return f"https://{NODE_IP}:{API_PORT}"

    def spawn(self, name: str, argv: list[str | Path],
              env: dict[str, str] | None = None) -> None:
        self.layout.logs.mkdir(parents=True, exist_ok=True)
        with (self.layout.logs / f"{name}.log").open("ab") as out:
            popen = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        self.pids[name] = popen.pid
        self.started[name] = _start_time(popen.pid)
        _save_pids(self.layout, self.pids, self.started)  # `down` finds them whatever happens

    def wait_until(self, name: str, ready: Callable[[], bool],
                   timeout: float = STARTUP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid = self.pids.get(name)
            if pid is not None and not alive(pid):
                raise ClusterError(f"{name} exited; {self.layout.logs / name}.log ends with:\n"
                                   f"{_log_tail(self.layout.logs / f'{name}.log')}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            time.sleep(0.5)
        raise ClusterError(f"{name} was not ready within {timeout:.0f} s; its log ends with:\n"
                           f"{_log_tail(self.layout.logs / f'{name}.log')}")

    def get(self, url: str) -> bytes:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {self.token}"})  # noqa: S310
        context = ssl.create_default_context(cafile=str(self.layout.certs / "ca.crt"))
        with urllib.request.urlopen(request, timeout=3, context=context) as answer:  # noqa: S310
            return bytes(answer.read())

    def kubectl(self, *args: str, stdin: str | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(tool("kubectl")), f"--kubeconfig={self.layout.kubeconfig}", *args],
            input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        if result.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)} failed:\n{result.stderr}")
        return result

    def start(self) -> None:
        layout = self.layout
        for directory in (layout.logs, layout.cni_conf_dir, layout.cni_ipam_dir,
                          layout.pod_logs, layout.kubelet_root, layout.containerd_state):
            directory.mkdir(parents=True, exist_ok=True)
        write_certificates(layout.certs)
        certs = layout.certs

        # The pod network: our bridge and its guard, bridged traffic through iptables.
        host.create_bridge(BRIDGE, f"{NODE_IP}/24", SERVICE_CIDR)
        host.install_guard(BRIDGE, POD_CIDR, SERVICE_CIDR)
        if host.read_sysctl("net/bridge/bridge-nf-call-iptables") is None:
            raise ClusterError("the br_netfilter kernel module is not loaded (Services "
                               "between pods on one bridge need it): modprobe br_netfilter")
        host.write_sysctl("net/bridge/bridge-nf-call-iptables", "1")
        (layout.cni_conf_dir / f"10-{CNI_NETWORK}.conflist").write_text(
            json.dumps(cni_config(layout), indent=1))

        # containerd, with the local pause image.
        (layout.root / "containerd.toml").write_text(containerd_config(layout))
        self.spawn("containerd", ["containerd", f"--config={layout.root / 'containerd.toml'}"],
                   env=NO_REGISTRY)
        self.wait_until("containerd", layout.containerd_socket.exists)
        image.import_image(image.pause_image(), layout.containerd_socket)

        # etcd and kube-apiserver on the node's address.
        etcd_port, peer_port = free_port(), free_port()
        self.spawn("etcd", [
            tool("etcd"), "--name=default", f"--data-dir={layout.root / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync=true", "--log-level=warn",
        ])
        tokens = layout.root / "tokens.csv"
        tokens.write_text(f'{self.token},{ADMIN_USER},{ADMIN_USER},"system:masters"\n')
        tokens.chmod(0o600)
        self.spawn("kube-apiserver", [
            tool("kube-apiserver"), f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            f"--cert-dir={certs}", f"--tls-cert-file={certs / 'apiserver.crt'}",
            f"--tls-private-key-file={certs / 'apiserver.key'}",
            f"--client-ca-file={certs / 'ca.crt'}",
            f"--secure-port={API_PORT}", f"--bind-address={NODE_IP}",
            f"--advertise-address={NODE_IP}",
            f"--service-cluster-ip-range={SERVICE_CIDR}", "--allow-privileged=true",
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            f"--token-auth-file={tokens}",
            f"--service-account-issuer=https://kubernetes.default.svc.{CLUSTER_DOMAIN}",
            f"--service-account-key-file={certs / 'service-account.key'}",
            f"--service-account-signing-key-file={certs / 'service-account.key'}",
            f"--kubelet-client-certificate={certs / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={certs / 'apiserver-kubelet-client.key'}",
            "--kubelet-preferred-address-types=InternalIP", "--v=1",
        ])
        self.wait_until("kube-apiserver", lambda: self.get(f"{self.server}/readyz") == b"ok")
        layout.kubeconfig.write_text(
            kubeconfig(self.server, certs / "ca.crt", {"token": self.token}))
        layout.kubeconfig.chmod(0o600)
        kubelet_kubeconfig = layout.root / "kubelet.kubeconfig"
        kubelet_kubeconfig.write_text(kubeconfig(self.server, certs / "ca.crt", {
            "client-certificate": str(certs / "kubelet-client.crt"),
            "client-key": str(certs / "kubelet-client.key")}))

        # The controllers, DNS, the kubelet and kube-proxy.
        self.spawn("kube-controller-manager", [
            tool("kube-controller-manager"), f"--kubeconfig={layout.kubeconfig}",
            f"--service-account-private-key-file={certs / 'service-account.key'}",
            f"--root-ca-file={certs / 'ca.crt'}", "--use-service-account-credentials=true",
            "--leader-elect=false", "--secure-port=0", "--allocate-node-cidrs=false", "--v=1",
        ])
        self.spawn("kube-scheduler", [
            tool("kube-scheduler"), f"--kubeconfig={layout.kubeconfig}",
            "--leader-elect=false", "--secure-port=0", "--v=1",
        ])
        dns_ready = free_port()
        (layout.root / "Corefile").write_text(corefile(layout.kubeconfig, dns_ready))
        self.spawn("coredns", [tool("coredns"), "-conf", layout.root / "Corefile"])
        kubelet_healthz = free_port()
        (layout.root / "kubelet.json").write_text(
            json.dumps(kubelet_config(layout, kubelet_healthz), indent=1))
        self.spawn("kubelet", [
            tool("kubelet"), f"--config={layout.root / 'kubelet.json'}",
            f"--kubeconfig={kubelet_kubeconfig}", f"--root-dir={layout.kubelet_root}",
            f"--hostname-override={NODE_NAME}", f"--node-ip={NODE_IP}", "--v=1",
        ])
        (layout.root / "kube-proxy.json").write_text(json.dumps(
            kube_proxy_config(layout.kubeconfig, free_port(), free_port()), indent=1))
        self.spawn("kube-proxy", [
            tool("kube-proxy"), f"--config={layout.root / 'kube-proxy.json'}", "--v=1"])

        self.wait_until("coredns", lambda: _http_ok(f"http://127.0.0.1:{dns_ready}/ready"))
        self.wait_until("kubelet", self.node_ready)
        self.wait_until("kube-controller-manager", lambda: bool(self.kubectl(
            "-n", "default", "get", "serviceaccount", "default", "-o", "name").stdout))
        self.kubectl("apply", "-f", "-", stdin=crd.render())

    def node_ready(self) -> bool:
        status = self.kubectl("get", "node", NODE_NAME, "-o",
                              "jsonpath={.status.conditions[?(@.type=='Ready')].status}")
        return status.stdout.strip() == "True"


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as answer:  # noqa: S310 - loopback only
        return bool(answer.status == 200)


# --- up / down ------------------------------------------------------------------------

@dataclass(frozen=True)
class Running:
    kubeconfig: Path
    containerd_socket: Path


def is_running(layout: Layout) -> bool:
    """Whether every process of a cluster started from `layout` still runs."""
    pids = _our_processes(layout)
    return bool(pids) and len(pids) == len(_saved(layout).get("pids", {}))


def _saved(layout: Layout) -> dict:
    return json.loads(layout.state_file.read_text()) if layout.state_file.exists() else {}


def _our_processes(layout: Layout) -> dict[str, int]:
    """The recorded processes that still run and are still ours (a pid reused after a
    reboot by some other process has another start time, and is left alone)."""
    saved = _saved(layout)
    return {name: pid for name, pid in saved.get("pids", {}).items()
            if alive(pid) and _start_time(pid) == saved.get("started", {}).get(name)}


def _start_time(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    return ""


def up(layout: Layout | None = None) -> Running:
    """Start the cluster (or reuse the running one); the host is recorded first. What a
    cluster that died without `down` left behind is undone before."""
    layout = layout or Layout(state_dir())
    if is_running(layout):
        return Running(layout.kubeconfig, layout.containerd_socket)
    if layout.snapshot_file.exists():
        down(layout)
    layout.root.mkdir(parents=True, exist_ok=True)
    if not layout.snapshot_file.exists():  # a failed down keeps the first record
        layout.snapshot_file.write_text(host.snapshot().to_json())
    cluster = Cluster(layout)
    try:
        cluster.start()
    except BaseException:
        try:
            down(layout)
        except Exception as error:  # the start's error is the one to raise
            print(f"and the teardown after it failed too: {error}", file=sys.stderr)
        raise
    return Running(layout.kubeconfig, layout.containerd_socket)


def _save_pids(layout: Layout, pids: dict[str, int], started: dict[str, str]) -> None:
    layout.state_file.write_text(json.dumps({"pids": pids, "started": started}))


def down(layout: Layout | None = None) -> None:
    """Stop everything, undo every host change, and check the host against its record."""
    layout = layout or Layout(state_dir())
    if not layout.snapshot_file.exists():
        shutil.rmtree(layout.root, ignore_errors=True)
        return
    before = host.Snapshot.from_json(layout.snapshot_file.read_text())
    pids = _our_processes(layout)
    _delete_pods(layout, pids)
    for name in STOP_ORDER:
        if name == "containerd":
            _kill_containers(layout)
        if name in pids:
            stop_processes([pids[name]], grace=20)
    subprocess.run([str(tool("kube-proxy")), "--cleanup", "--v=0"], capture_output=True,
                   timeout=60, check=False)
    host.remove_guard()
    host.remove_new_chains(before)
    host.remove_netns(keep=before.netns)
    host.unmount_under([str(layout.root)])
    host.delete_bridge(BRIDGE)
    host.remove_cgroups(keep=before.cgroups)
    host.restore_sysctls(before)
    host.remove_created_paths(before)
    for result in Path("/var/lib/cni/results").glob(f"{CNI_NETWORK}-*"):
        result.unlink()
    problems = host.differences(before, host.snapshot())
    problems += [f"process {name} ({pid}) is still running"
                 for name, pid in pids.items() if alive(pid)]
    if problems:
        raise ClusterError("the host is not as it was before `hack/cluster up`:\n  "
                           + "\n  ".join(problems))
    shutil.rmtree(layout.root)


def _delete_pods(layout: Layout, pids: dict[str, int]) -> None:
    """Delete every pod through the API while the kubelet runs, so that CNI DEL, the
    unmounts and the container removals happen the normal way."""
    needed = ("kube-apiserver", "kubelet", "containerd")
    if not layout.kubeconfig.exists() or not all(
            name in pids and alive(pids[name]) for name in needed):
        return
    for name in ("kube-controller-manager", "kube-scheduler"):  # nothing recreates them
        if name in pids:
            stop_processes([pids[name]], grace=10)
    subprocess.run(
        [str(tool("kubectl")), f"--kubeconfig={layout.kubeconfig}", "delete", "pods", "--all",
         "--all-namespaces", "--grace-period=5", "--timeout=90s"],
        capture_output=True, timeout=120, check=False)


def _kill_containers(layout: Layout) -> None:
    """Whatever the kubelet left: processes in the kubepods cgroups, then the shims of
    our containerd (found by its socket address in their command line)."""
    for pid in host.processes_in_cgroups():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    stop_processes(_shims(layout), grace=10)


def _shims(layout: Layout) -> list[int]:
    """The containerd shims of our containerd (its socket address in their argv)."""
    socket = str(layout.containerd_socket).encode()
    shims = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                argv = (proc / "cmdline").read_bytes().split(b"\0")
                if argv[0].endswith(b"containerd-shim-runc-v2") and socket in argv:
                    shims.append(int(proc.name))
    return shims


def memory(layout: Layout | None = None) -> dict[str, float]:
    """MiB resident per part of the running node: its processes, the containerd shims, and
    the pods (the kubepods memory cgroup, page cache included)."""
    layout = layout or Layout(state_dir())
    used = {name: _rss_mib(pid) for name, pid in _our_processes(layout).items()}
    used["containerd shims"] = sum(_rss_mib(pid) for pid in _shims(layout))
    pods = Path("/sys/fs/cgroup/memory/kubepods/memory.usage_in_bytes")
    if pods.exists():
        used["pods"] = int(pods.read_text()) / 2**20
    return used


def _rss_mib(pid: int) -> float:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main(argv: list[str] | None = None) -> int:
    """`hack/cluster up` prints the admin kubeconfig; `down` undoes everything; `memory`
    prints what the running node takes."""
    import argparse

    parser = argparse.ArgumentParser(prog="hack/cluster", description=main.__doc__)
    parser.add_argument("action", choices=["up", "down", "memory"])
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            print(up().kubeconfig)
        elif args.action == "memory":
            used = memory()
            for name, mib in sorted(used.items(), key=lambda item: -item[1]):
                print(f"{mib:8.0f} MiB  {name}")
            print(f"{sum(used.values()):8.0f} MiB  in all")
        else:
            down()
    except (ClusterError, host.HostError, image.ImageError) as error:
        print(f"hack/cluster {args.action} failed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
