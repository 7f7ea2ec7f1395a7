"""One real single-node cluster per e2e run (`hack/e2e`), with the operator's image built
here and imported, torn down at the end with the host checked against its record."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devtools import cluster, host, image
from devtools.control_plane import tool

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "wa-controller"  # the one hack/kind/ uses
RELEASE = "wa-controller"


@dataclass
class Node:
    """kubectl and helm against the real node, and what the tests need to know of it."""

    kubeconfig: Path
    containerd_socket: Path
    operator_image: image.BuiltImage
    api_key: str = ""

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True,
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", ["-n", NAMESPACE, *args], stdin, check, timeout)

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run("helm", [f"--namespace={NAMESPACE}", *args], None, check, 300)

    def json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def _run(self, name: str, args: list[str], stdin: str | None, check: bool,
             timeout: float) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([str(tool(name)), f"--kubeconfig={self.kubeconfig}", *args],
                                input=stdin, capture_output=True, text=True, timeout=timeout,
                                check=False)
        if check and result.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stderr}")
        return result


@pytest.fixture(scope="session")
def node(request: pytest.FixtureRequest) -> Iterator[Node]:
    """`hack/cluster up` (or the cluster already up, which is then left running), with
    the operator's image imported; `hack/cluster down` at the end, even after failures.
    What the node took in memory is printed before it goes."""
    layout = cluster.Layout(cluster.state_dir())
    already_up = cluster.is_running(layout)
    try:
        running = cluster.up(layout)
        built = image.operator_image()
        image.import_image(built, running.containerd_socket)
    except (cluster.ClusterError, host.HostError, image.ImageError) as error:
        pytest.fail(f"the real node did not start:\n{error}", pytrace=False)
    yield Node(running.kubeconfig, running.containerd_socket, built)
    used = cluster.memory(layout)
    parts = ", ".join(f"{name} {mib:.0f}" for name, mib in
                      sorted(used.items(), key=lambda item: -item[1]))
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled():  # past pytest's capture, onto the terminal
        print(f"\nreal node memory: {sum(used.values()):.0f} MiB ({parts})", flush=True)
    if not already_up:
        cluster.down(layout)


@pytest.fixture(scope="session")
def release(node: Node) -> Node:
    """The chart installed as the README documents it: a namespace, the Secret with the
    instances' API key, the webhook HMAC secret and the rediscover token, then
    `helm install` with its defaults and the locally imported image."""
    if node.kubectl("get", "namespace", NAMESPACE, check=False).returncode == 0:
        pytest.fail(f"namespace {NAMESPACE} is left from an earlier run on this cluster: "
                    "`hack/cluster down` first", pytrace=False)
    node.api_key = secrets.token_hex(16)
    node.kubectl("create", "namespace", NAMESPACE)
    node.kubectl("create", "secret", "generic", "wa-controller",
                 f"--from-literal=api-key={node.api_key}",
                 f"--from-literal=hmac-secret={secrets.token_hex(32)}",
                 f"--from-literal=rediscover-token={secrets.token_hex(16)}")
    node.helm("install", RELEASE, str(ROOT / "helm" / "wa-controller"),
              "--set", "image.repository=wa-controller", "--set", "image.tag=dev",
              "--set", "image.pullPolicy=Never", "--set", "secret.existingSecret=wa-controller")
    return node
