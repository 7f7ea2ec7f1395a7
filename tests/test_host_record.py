"""The real node's self-check (`hack/cluster down`): what it counts as a host left changed."""

from __future__ import annotations

from devtools.host import Snapshot, differences


def host(**changes: object) -> Snapshot:
    base: dict[str, object] = {
        "sysctls": {"kernel/panic": "1", "net/ipv4/ip_forward": "0"},
        "links": ["eth0", "lo"], "netns": [], "mounts": ["/", "/proc"],
        "chains": {"iptables:filter": ["FORWARD", "INPUT", "OUTPUT"]},
        "paths": {"/run/netns": False}, "cgroups": [],
    }
    return Snapshot(**{**base, **changes})  # type: ignore[arg-type]


def test_an_unchanged_host_has_no_differences() -> None:
    assert differences(host(), host()) == []


def test_every_kind_of_leftover_is_named() -> None:
    after = host(
        sysctls={"kernel/panic": "10", "net/ipv4/ip_forward": "0"},
        links=["eth0", "lo", "wa-node0", "veth1234"], netns=["cni-1"],
        mounts=["/", "/proc", "/root/.cache/wa-controller/cluster/kubelet"],
        chains={"iptables:filter": ["FORWARD", "INPUT", "KUBE-FIREWALL", "OUTPUT"]},
        paths={"/run/netns": True}, cgroups=["/sys/fs/cgroup/memory/kubepods"],
    )
    assert differences(host(), after) == [
        "sysctl kernel/panic is 10, was 1",
        "interface veth1234 is left behind",
        "interface wa-node0 is left behind",
        "network namespace cni-1 is left behind",
        "mount /root/.cache/wa-controller/cluster/kubelet is left behind",
        "cgroup /sys/fs/cgroup/memory/kubepods is left behind",
        "iptables:filter chain KUBE-FIREWALL is left behind",
        "/run/netns is left behind",
    ]


def test_something_removed_from_the_host_is_a_difference_too() -> None:
    after = host(links=["lo"], chains={"iptables:filter": ["INPUT", "OUTPUT"]})
    assert differences(host(), after) == [
        "interface eth0 is gone", "iptables:filter chain FORWARD is gone"]


def test_a_snapshot_survives_its_file() -> None:
    assert Snapshot.from_json(host().to_json()) == host()
