"""What the real node changes on this host, recorded before and undone after (`hack/cluster`).

A kubelet, containerd, the CNI bridge plugin and kube-proxy all change the host they run
on: sysctls, mounts, network namespaces, interfaces, iptables chains, cgroups, a few
directories. `snapshot()` records those before the node starts; after `down`,
`differences()` compares a fresh snapshot with it, so the teardown checks itself.

The pod network's guard lives here too: the bridge the pods hang on, and iptables
chains of our own (never a flush of anyone else's) that drop every packet from or to
the pods that would leave through another interface. Nothing is masqueraded.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

# The host settings the node's parts write: the kubelet's kernel tunables
# (setupKernelTunables), the CNI bridge plugin's forwarding, kube-proxy's route_localnet,
# the bridge netfilter switch the services need (replies between pods on one bridge).
SYSCTLS = (
    "vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes", "net/ipv4/ip_forward",
    "net/ipv4/conf/all/forwarding", "net/ipv4/conf/all/route_localnet",
    "net/ipv6/conf/all/forwarding", "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
)
# Directories the node's parts create outside its own state directory.
OUTSIDE_PATHS = ("/run/netns", "/var/log/containers", "/var/lib/cni", "/opt/cni",
                 "/etc/cni", "/opt/containerd", "/var/lib/kubelet")
IPTABLES_TABLES = ("filter", "nat", "mangle", "raw")
GUARD_CHAINS = {"FORWARD": "WA-NODE-FORWARD", "OUTPUT": "WA-NODE-OUTPUT"}


class HostError(RuntimeError):
    """A host change could not be made or undone."""


@dataclass(frozen=True)
class Snapshot:
    """The host settings the node may change, as one comparable value."""

    sysctls: dict[str, str]
    links: list[str]
    netns: list[str]
    mounts: list[str]
    chains: dict[str, list[str]]  # "iptables:nat" -> chain names
    paths: dict[str, bool]
    cgroups: list[str]  # kubepods hierarchies

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Snapshot:
        return cls(**json.loads(text))


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """Every way `after` differs from `before`, one readable line each (empty: none)."""
    found = []
    for name, value in before.sysctls.items():
        if after.sysctls.get(name) != value:
            found.append(f"sysctl {name} is {after.sysctls.get(name)}, was {value}")
    for label, old, new in (("interface", before.links, after.links),
                            ("network namespace", before.netns, after.netns),
                            ("mount", before.mounts, after.mounts),
                            ("cgroup", before.cgroups, after.cgroups)):
        found += [f"{label} {item} is left behind" for item in sorted(set(new) - set(old))]
        found += [f"{label} {item} is gone" for item in sorted(set(old) - set(new))]
    for table in sorted(set(before.chains) | set(after.chains)):
        old, new = set(before.chains.get(table, [])), set(after.chains.get(table, []))
        found += [f"{table} chain {chain} is left behind" for chain in sorted(new - old)]
        found += [f"{table} chain {chain} is gone" for chain in sorted(old - new)]
    for path, existed in before.paths.items():
        if after.paths.get(path) != existed:
            found.append(f"{path} {'is gone' if existed else 'is left behind'}")
    return found


# --- reading the host -----------------------------------------------------------------

def run(*argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise HostError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result


def read_sysctl(name: str) -> str | None:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return None


def write_sysctl(name: str, value: str) -> None:
    Path("/proc/sys", name).write_text(value)


def mountpoints() -> list[str]:
    """Every mount point of this mount namespace (octal escapes decoded)."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        raw = line.split()[4]
        points.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), raw))
    return points


def iptables_chains() -> dict[str, list[str]]:
    chains = {}
    for command in ("iptables", "ip6tables"):
        for table in IPTABLES_TABLES:
            saved = run(f"{command}-save", "-t", table, check=False).stdout
            chains[f"{command}:{table}"] = sorted(
                line[1:].split()[0] for line in saved.splitlines() if line.startswith(":"))
    return chains


def kubepods_cgroups() -> list[str]:
    root = Path("/sys/fs/cgroup")
    return sorted(str(path) for path in root.glob("*/kubepods*") if path.is_dir())


def snapshot() -> Snapshot:
    values = {name: value for name in SYSCTLS if (value := read_sysctl(name)) is not None}
    netns = Path("/run/netns")
    return Snapshot(
        sysctls=values,
        links=sorted(p.name for p in Path("/sys/class/net").iterdir()),
        netns=sorted(p.name for p in netns.iterdir()) if netns.is_dir() else [],
        mounts=sorted(set(mountpoints())),
        chains=iptables_chains(),
        paths={path: os.path.lexists(path) for path in OUTSIDE_PATHS},
        cgroups=kubepods_cgroups(),
    )


# --- the pod network ------------------------------------------------------------------

def create_bridge(bridge: str, gateway_cidr: str, service_cidr: str) -> None:
    """The pods' bridge with the node's address, and the service range routed onto it
    (so nothing addressed to a ClusterIP ever takes the default route)."""
    if not Path("/sys/class/net", bridge).exists():
        run("ip", "link", "add", bridge, "type", "bridge")
    run("ip", "addr", "replace", gateway_cidr, "dev", bridge)
    run("ip", "link", "set", bridge, "up")
    gateway = gateway_cidr.split("/")[0]
    run("ip", "route", "replace", service_cidr, "dev", bridge, "src", gateway)


def delete_bridge(bridge: str) -> None:
    """The bridge and any veth still attached to it (their routes go with them)."""
    attached = run("ip", "-o", "link", "show", "master", bridge, check=False).stdout
    for line in attached.splitlines():
        run("ip", "link", "delete", line.split(":")[1].strip().split("@")[0], check=False)
    if Path("/sys/class/net", bridge).exists():
        run("ip", "link", "delete", bridge)


def guard_rules(bridge: str, pod_cidr: str, service_cidr: str) -> dict[str, list[list[str]]]:
    """Our chains' rules: pod traffic stays on the bridge, host traffic to the cluster's
    ranges goes only through the bridge (or loopback, for the node's own address)."""
    return {
        "WA-NODE-FORWARD": [
            ["-i", bridge, "!", "-o", bridge, "-j", "DROP"],
            ["!", "-i", bridge, "-o", bridge, "-j", "DROP"],
        ],
        "WA-NODE-OUTPUT": [
            ["-o", "lo", "-j", "RETURN"],
            ["-o", bridge, "-j", "RETURN"],
            ["-d", pod_cidr, "-j", "DROP"],
            ["-d", service_cidr, "-j", "DROP"],
        ],
    }


def install_guard(bridge: str, pod_cidr: str, service_cidr: str) -> None:
    remove_guard()
    for chain, rules in guard_rules(bridge, pod_cidr, service_cidr).items():
        run("iptables", "-N", chain)
        for rule in rules:
            run("iptables", "-A", chain, *rule)
    for builtin, chain in GUARD_CHAINS.items():
        run("iptables", "-I", builtin, "1", "-j", chain)


def remove_guard() -> None:
    for builtin, chain in GUARD_CHAINS.items():
        while run("iptables", "-D", builtin, "-j", chain, check=False).returncode == 0:
            pass
        if run("iptables", "-F", chain, check=False).returncode == 0:
            run("iptables", "-X", chain)


# --- undoing what the node's parts did ------------------------------------------------

def unmount_under(prefixes: list[str]) -> None:
    """Unmount every mount at or below the prefixes, deepest first (lazily if busy)."""
    def under(point: str) -> bool:
        return any(point == p or point.startswith(p.rstrip("/") + "/") for p in prefixes)

    for _ in range(5):  # bind mounts can be stacked; repeat until none is left
        points = sorted({p for p in mountpoints() if under(p)}, key=len, reverse=True)
        if not points:
            return
        for point in points:
            if run("umount", point, check=False).returncode != 0:
                run("umount", "-l", point, check=False)


def remove_netns(keep: list[str]) -> None:
    """Network namespaces the CNI made (`/run/netns/cni-*`) that were not there before."""
    netns = Path("/run/netns")
    if not netns.is_dir():
        return
    for entry in netns.iterdir():
        if entry.name.startswith("cni-") and entry.name not in keep:
            unmount_under([str(entry)])
            entry.unlink(missing_ok=True)


def remove_cgroups(keep: list[str]) -> None:
    """The kubelet's kubepods cgroups (empty by now), innermost first."""
    for top in kubepods_cgroups():
        if top in keep:
            continue
        for directory in sorted((p for p in Path(top).rglob("*") if p.is_dir()),
                                key=lambda p: len(p.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()
        with contextlib.suppress(OSError):
            Path(top).rmdir()


def processes_in_cgroups() -> list[int]:
    pids = set()
    for top in kubepods_cgroups():
        for procs in Path(top).rglob("cgroup.procs"):
            with contextlib.suppress(OSError):
                pids.update(int(pid) for pid in procs.read_text().split())
    return sorted(pids)


def remove_new_chains(before: Snapshot) -> None:
    """iptables chains that appeared since `before` (the kubelet's KUBE-FIREWALL makes
    its own even without its utility chains): the rules that jump to them, then them."""
    for table_key, chains in iptables_chains().items():
        command, table = table_key.split(":")
        new = set(chains) - set(before.chains.get(table_key, []))
        if not new:
            continue
        saved = run(f"{command}-save", "-t", table).stdout.splitlines()
        for line in saved:
            words = shlex.split(line)
            if words[:1] == ["-A"] and words[1] not in new and _jump(words) in new:
                run(command, "-t", table, "-D", *words[1:], check=False)
        for chain in new:
            run(command, "-t", table, "-F", chain, check=False)
        for chain in new:
            run(command, "-t", table, "-X", chain, check=False)


def _jump(words: list[str]) -> str | None:
    for flag in ("-j", "-g"):
        if flag in words[:-1]:
            return words[words.index(flag) + 1]
    return None


def remove_created_paths(before: Snapshot) -> None:
    """Directories the node's parts created outside the state directory."""
    for path, existed in before.paths.items():
        if existed or not os.path.lexists(path):
            continue
        if os.path.ismount(path):
            unmount_under([path])
        shutil.rmtree(path, ignore_errors=True)


def restore_sysctls(before: Snapshot) -> None:
    for name, value in before.sysctls.items():
        if read_sysctl(name) != value:
            write_sysctl(name, value)
