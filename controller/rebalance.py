"""`wa-controller rebalance` and `wa-controller drain`: ask the operator to move sessions.

Neither moves anything itself. `rebalance` reads the accounts and instance pods from the
API server, plans the fewest moves that even out the load (`controller.moves`), prints
them, and with `--apply` marks each account to move with `wa-controller.io/move-to`;
`drain` marks a pod with `wa-controller.io/drain=true` (or takes it off). The operator
then moves each session stop-then-start, in waves, within its storage group.

With `auto_rebalance` on, the operator does the same by itself (`AutoRebalancer`).

Pure: `pod_loads`, `render_plan`, `under_way`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from kubernetes_asyncio import client

from controller import api
from controller.moves import Move, PodLoad, plan_rebalance, spread

HELD = (api.Phase.CONNECTED, api.Phase.PAIRING, api.Phase.STARTING, api.Phase.MOVING)
logger = logging.getLogger("wa_controller.rebalance")


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def pod_loads(accounts: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], *,
              default_capacity: int, default_group: str) -> list[PodLoad]:
    """The instance pods as the plan sees them: what their accounts' status says they
    hold, and which of those sessions may move (Connected, not already asked to move)."""
    held: dict[str, list[Mapping[str, Any]]] = {}
    for account in accounts:
        status = account.get("status") or {}
        pod = (status.get("instance") or {}).get("pod")
        if pod and status.get("phase") in HELD:
            held.setdefault(pod, []).append(account)
    loads = []
    for pod in pods:
        metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
        annotations = metadata.get("annotations") or {}
        name = metadata.get("name", "")
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in status.get("conditions") or [])
        draining = (annotations.get(api.DRAIN_ANNOTATION, "").lower() == "true"
                    or metadata.get("deletionTimestamp") is not None)
        mine = sorted(held.get(name, []), key=lambda a: a["metadata"]["name"])
        movable = tuple(str(a["spec"]["sessionId"]) for a in mine
                        if (a.get("status") or {}).get("phase") == api.Phase.CONNECTED
                        and api.MOVE_TO_ANNOTATION not in (
                            a["metadata"].get("annotations") or {}))
        loads.append(PodLoad(
            name=name, capacity=_int(annotations.get(api.CAPACITY_ANNOTATION),
                                     default_capacity),
            group=annotations.get(api.STORAGE_GROUP_ANNOTATION) or default_group,
            sessions=len(mine), movable=movable, accepts=ready and not draining))
    return loads


def render_plan(pods: Sequence[PodLoad], moves: Sequence[Move], threshold: float) -> str:
    after = {p.name: p.sessions for p in pods}
    for move in moves:
        after[move.source] -= 1
        after[move.target] += 1
    moved = [PodLoad(p.name, p.group, p.capacity, after[p.name], (), p.accepts) for p in pods]
    lines = [f"{'POD':<24} {'GROUP':<12} {'NOW':>9} {'AFTER':>9}"]
    lines += [f"{p.name:<24} {p.group:<12} {f'{p.sessions}/{p.capacity}':>9} "
              f"{f'{after[p.name]}/{p.capacity}':>9}" for p in pods]
    lines.append("")
    if not moves:
        lines.append(f"nothing to move: the spread is {spread(pods):.2f} "
                     f"(threshold {threshold:.2f})")
    else:
        lines += [f"{'SESSION':<40} {'FROM':<24} TO"]
        lines += [f"{m.session:<40} {m.source:<24} {m.target}" for m in moves]
        lines.append(f"\n{len(moves)} moves: spread {spread(pods):.2f} -> "
                     f"{spread(moved):.2f} (threshold {threshold:.2f})")
    return "\n".join(lines) + "\n"


async def gather(api_client: client.ApiClient, namespace: str, instance_selector: str
                 ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The namespace's accounts and instance pods, as plain dicts."""
    custom, core = client.CustomObjectsApi(api_client), client.CoreV1Api(api_client)
    accounts = (await custom.list_namespaced_custom_object(
        api.GROUP, api.VERSION, namespace, api.PLURAL))["items"]
    pods = await core.list_namespaced_pod(namespace, label_selector=instance_selector)
    return accounts, [api_client.sanitize_for_serialization(p) for p in pods.items]


def plan(accounts: Sequence[Mapping[str, Any]], pods: Sequence[Mapping[str, Any]], *,
         threshold: float, default_capacity: int, default_group: str
         ) -> tuple[list[PodLoad], list[Move]]:
    loads = pod_loads(accounts, pods, default_capacity=default_capacity,
                      default_group=default_group)
    return loads, plan_rebalance(loads, threshold)


async def apply(api_client: client.ApiClient, namespace: str,
                accounts: Sequence[Mapping[str, Any]], moves: Sequence[Move]) -> list[str]:
    """Mark each moving account with the pod to move to; returns kubectl-style lines."""
    custom = client.CustomObjectsApi(api_client)
    by_session = {str(a["spec"]["sessionId"]): a["metadata"]["name"] for a in accounts}
    said = []
    for move in moves:
        name = by_session[move.session]
        await custom.patch_namespaced_custom_object(
            api.GROUP, api.VERSION, namespace, api.PLURAL, name,
            {"metadata": {"annotations": {api.MOVE_TO_ANNOTATION: move.target}}},
            _content_type="application/merge-patch+json")
        said.append(f"waaccount.{api.GROUP}/{name} annotated ({api.MOVE_TO_ANNOTATION}="
                    f"{move.target})")
    return said


async def drain(api_client: client.ApiClient, namespace: str, pod: str, *, undo: bool
                ) -> str:
    """Mark the pod to be drained (or no longer)."""
    await client.CoreV1Api(api_client).patch_namespaced_pod(
        pod, namespace,
        {"metadata": {"annotations": {api.DRAIN_ANNOTATION: None if undo else "true"}}},
        _content_type="application/merge-patch+json")
    return f"pod/{pod} {'undrained' if undo else 'draining'}"


def under_way(accounts: Sequence[Mapping[str, Any]]) -> int:
    """Moves not finished: accounts still marked to move, or Moving."""
    return sum(1 for a in accounts
               if api.MOVE_TO_ANNOTATION in ((a.get("metadata") or {}).get("annotations") or {})
               or (a.get("status") or {}).get("phase") == api.Phase.MOVING)


class AutoRebalancer:
    """`auto_rebalance`: every `interval` seconds, in each namespace with instance pods,
    the same plan as `wa-controller rebalance`, applied when the spread exceeds the
    threshold and no move of an earlier round is under way (e.g. after pods were added).
    The moves go through the drain's waves. Only the replica that acts does it."""

    def __init__(self, api_client: client.ApiClient, *, namespaces: Callable[[], set[str]],
                 instance_selector: str, threshold: float, interval: float,
                 default_capacity: int, default_group: str, active: asyncio.Event) -> None:
        self._api_client = api_client
        self._namespaces = namespaces
        self._selector = instance_selector
        self._threshold = threshold
        self._interval = interval
        self._default_capacity = default_capacity
        self._default_group = default_group
        self._active = active
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="rebalancer")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self._active.wait()
            for namespace in sorted(self._namespaces()):
                try:
                    await self.round(namespace)
                except Exception as error:  # the API server failed: the next round tries
                    logger.warning("%s: automatic rebalance failed: %s", namespace,
                                   f"{type(error).__name__}: {error}"[:300])

    async def round(self, namespace: str) -> int:
        """One look at the namespace; returns the moves asked for."""
        accounts, pods = await gather(self._api_client, namespace, self._selector)
        if under_way(accounts):
            return 0  # one round at a time: the last one's moves finish first
        loads, moves = plan(accounts, pods, threshold=self._threshold,
                            default_capacity=self._default_capacity,
                            default_group=self._default_group)
        if moves:
            before = spread(loads)
            await apply(self._api_client, namespace, accounts, moves)
            logger.info("%s: the spread between instance pods is %.2f (threshold %.2f): "
                        "moving %d sessions", namespace, before, self._threshold, len(moves))
        return len(moves)
