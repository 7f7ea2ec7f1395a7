"""An API server that throttles (429 with Retry-After) in front of the operator: it waits as
asked, names the API server, not the database, and every account still gets `Mirrored`."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.kube import USER_AGENT
from devtools.apiproxy import ApiProxy
from devtools.control_plane import free_port
from devtools.harness import Accounts, Fleet, all_settled, operator_process, scrape, wait_for

pytestmark = pytest.mark.integration
IN_FLIGHT = 0.05  # seconds: a request this close after a 429 was already on its way


def test_a_throttling_api_server_is_waited_for_and_named_truthfully(
    namespace: str, fleet: Fleet, accounts: Accounts, proxy: ApiProxy, tmp_path: Path
) -> None:
    for name in ("wa-0", "wa-1"):
        fleet.add(name, auto_pair=0.2)
    proxy.throttle_every, proxy.retry_after = 4, 2
    port, log = free_port(), tmp_path / "operator.log"
    with operator_process(log, namespaces=namespace, operator_namespace=namespace,
                          probe_interval=1, liveness_port="off", metrics_port=port,
                          webhook_port="off", mirror_resync_interval=3,
                          database_url=f"sqlite:///{tmp_path / 'mirror.sqlite'}"):
        for index in range(40):
            accounts.create(f"burst-{index}")
        wait_for("all 40 Connected, each with its Mirrored condition",
                 lambda: all_settled(accounts, 40), timeout=180)
        metrics = scrape(port)
    text = log.read_text()
    assert proxy.throttled > 20, "the proxy throttled too little to tell anything"
    # The operator's own requests but events (kopf's are kopf's; events are posted side by
    # side by several posters, so a quick next POST there, already on its way when the 429
    # came, is another event, not a retry). Of the others, one of the same kind within
    # IN_FLIGHT of a 429 was sent before the 429 was read (two callers listing the accounts
    # at once): no retry comes that soon, the shortest backoff is a quarter second.
    ours = [(kind, gap) for kind, gap in proxy.retry_gaps
            if kind[3] == USER_AGENT and not kind[1].endswith("/events") and gap >= IN_FLIGHT]
    assert len(ours) > 5, "too few of the operator's own requests were throttled"
    assert [(kind, gap) for kind, gap in ours if gap < proxy.retry_after - 0.1] == [], \
        "Retry-After was not honoured"
    assert "DatabaseUnavailable" not in text
    assert "Traceback" not in text
    assert "the API server is throttling requests (HTTP 429" in text
    assert metrics['wa_controller_api_retries_total{reason="throttled"}'] > 0
    assert not any(series.startswith("wa_controller_mirror_failures_total")
                   and value for series, value in metrics.items())
