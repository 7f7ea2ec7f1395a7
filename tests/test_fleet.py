"""Reading pods and placing sessions, on plain data."""

from __future__ import annotations

from collections import Counter

import pytest

from controller.fleet import (
    InstanceDefaults,
    PodHealth,
    PodSnapshot,
    least_loaded,
    pod_view,
    selector_problem,
)
from controller.instances import ObservedSession, SessionState

DEFAULTS = InstanceDefaults(protocol="blazz", port=3000, capacity=50)
PROTOCOLS = ("blazz", "waha")


def pod_body(**overrides: object) -> dict:
    body = {
        "metadata": {"name": "wa-0", "namespace": "ns", "labels": {"pool": "eu"},
                     "annotations": {}},
        "spec": {"subdomain": "wa"},
        "status": {"podIP": "10.1.2.3", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    for key, value in overrides.items():
        section, _, field = key.partition("__")
        if field:
            body[section][field] = value
        else:
            body[section] = value
    return body


def test_url_is_built_from_the_pod_not_from_the_instance() -> None:
    view = pod_view(pod_body(), DEFAULTS, PROTOCOLS)

    assert view.url == "http://10.1.2.3:3000"
    assert view.ready
    assert not view.terminating
    assert view.problem is None


def test_url_template_gives_stable_statefulset_names() -> None:
    defaults = InstanceDefaults(url_template="http://{pod}.{subdomain}.{namespace}.svc:{port}")

    assert pod_view(pod_body(), defaults, PROTOCOLS).url == "http://wa-0.wa.ns.svc:3000"


def test_annotations_override_defaults() -> None:
    annotations = {"wa-controller.io/protocol": "waha", "wa-controller.io/port": "8080",
                   "wa-controller.io/capacity": "7"}
    view = pod_view(pod_body(metadata__annotations=annotations), DEFAULTS, PROTOCOLS)

    assert (view.protocol, view.port, view.capacity) == ("waha", 8080, 7)
    assert view.url == "http://10.1.2.3:8080"


@pytest.mark.parametrize(
    ("annotations", "problem"),
    [
        ({"wa-controller.io/port": "http"}, "is not a whole number"),
        ({"wa-controller.io/port": "70000"}, "outside 1..65535"),
        ({"wa-controller.io/capacity": "-1"}, "outside 0..100000"),
        ({"wa-controller.io/protocol": "evolution"}, "unknown protocol 'evolution'"),
    ],
)
def test_bad_annotations_make_the_pod_unusable_with_a_reason(
    annotations: dict[str, str], problem: str
) -> None:
    view = pod_view(pod_body(metadata__annotations=annotations), DEFAULTS, PROTOCOLS)

    assert problem in (view.problem or "")
    snapshot = PodSnapshot(view, PodHealth.OK)
    assert not snapshot.eligible
    assert problem in snapshot.why_not_eligible()


def test_not_ready_terminating_and_ipless_pods_are_seen_as_such() -> None:
    not_ready = pod_view(pod_body(status={"podIP": "10.1.2.3", "conditions": []}),
                         DEFAULTS, PROTOCOLS)
    no_ip = pod_view(pod_body(status={"conditions": [{"type": "Ready", "status": "True"}]}),
                     DEFAULTS, PROTOCOLS)
    terminating = pod_view(pod_body(metadata__deletionTimestamp="2026-11-22T10:00:00Z"),
                           DEFAULTS, PROTOCOLS)

    assert not not_ready.ready
    assert no_ip.url is None
    assert terminating.terminating


def snapshot(name: str, load: int, capacity: int = 10, pending: int = 0) -> PodSnapshot:
    view = pod_view(pod_body(metadata__name=name,
                             metadata__annotations={"wa-controller.io/capacity": str(capacity)}),
                    DEFAULTS, PROTOCOLS)
    sessions = {f"{name}-{i}": ObservedSession(f"{name}-{i}", SessionState.WORKING, "connected")
                for i in range(load)}
    return PodSnapshot(view, PodHealth.OK, sessions,
                       frozenset(f"{name}-p{i}" for i in range(pending)))


def test_least_loaded_uses_load_over_capacity() -> None:
    assert least_loaded([snapshot("a", 5, 10), snapshot("b", 8, 20)]).name == "b"


def test_ties_break_deterministically_by_name() -> None:
    assert least_loaded([snapshot("c", 1), snapshot("a", 1), snapshot("b", 1)]).name == "a"


def test_pending_placements_count_so_a_burst_spreads() -> None:
    pods = {name: snapshot(name, 0) for name in ("a", "b", "c")}
    placed: Counter[str] = Counter()
    for _ in range(30):
        target = least_loaded(list(pods.values()))
        placed[target.name] += 1
        pods[target.name] = snapshot(target.name, 0, pending=placed[target.name])

    assert placed == {"a": 10, "b": 10, "c": 10}


def test_stopped_sessions_do_not_count_as_load() -> None:
    base = snapshot("a", 0, capacity=1)
    stopped = {"s": ObservedSession("s", SessionState.STOPPED, "STOPPED")}

    assert PodSnapshot(base.view, PodHealth.OK, stopped).eligible


@pytest.mark.parametrize(
    ("selector", "problem"),
    [
        (None, None),
        ({}, None),
        ({"pool": "eu", "example.com/tier": "gold", "a": ""}, None),
        ({"a" * 63: "b" * 63}, None),
        ({f"{'d' * 253}/{'n' * 63}": "v"}, None),
        ({"a" * 64: "v"}, f"instanceSelector key '{'a' * 64}' is not a label key"),
        ({"x" * 300_000: "v"}, f"instanceSelector key '{'x' * 80}... (300000 characters)' is "
                               "not a label key"),
        ({"Upper.Case/name": "v"}, "instanceSelector key 'Upper.Case/name' is not a label key"),
        ({"-pool": "v"}, "instanceSelector key '-pool' is not a label key"),
        ({"pool": "v" * 64}, "instanceSelector value of 'pool' is not a label value"),
        ({"pool": "a b"}, "instanceSelector value of 'pool' is not a label value"),
        ({f"k{n}": "v" for n in range(1000)}, "instanceSelector has 1000 labels; at most 16"),
    ],
    ids=["none", "empty", "valid", "longest-name-and-value", "longest-prefix", "name-64",
         "key-300kB", "upper-prefix", "leading-dash", "value-64", "value-space", "1000-entries"],
)
def test_selector_problems_follow_the_kubernetes_label_rules(
        selector: dict[str, str] | None, problem: str | None) -> None:
    assert selector_problem(selector) == problem
