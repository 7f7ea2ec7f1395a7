"""The WAAccount API as users meet it through kubectl, against the real API server."""

from __future__ import annotations

import json
import textwrap

import pytest

from controller import api
from tests.conftest import Kubectl

pytestmark = pytest.mark.integration


def account(name: str, spec: str) -> str:
    return textwrap.dedent(f"""\
        apiVersion: wa-controller.io/v1alpha1
        kind: WAAccount
        metadata:
          name: {name}
        spec:
        """) + textwrap.indent(textwrap.dedent(spec), "  ")


def get(kubectl: Kubectl, name: str) -> dict:
    return json.loads(kubectl.run("get", "waaccount", name, "-o", "json").stdout)


def test_valid_account_is_accepted_with_defaults_and_printer_columns(kubectl: Kubectl) -> None:
    kubectl.apply(account("shop", "sessionId: session_1732251234\nphoneNumber: '+62811801641'\n"))

    assert get(kubectl, "shop")["spec"]["desiredState"] == "Connected"
    for resource in ("waaccounts", "waa", "whatsapp"):
        header, row = kubectl.run("get", resource).stdout.splitlines()[:2]
        assert header.split() == ["NAME", "PHONE", "PHASE", "INSTANCE", "SESSION", "AGE"]
        assert row.split()[:2] == ["shop", "+62811801641"]


def test_printer_columns_show_the_observed_status(kubectl: Kubectl) -> None:
    kubectl.apply(account("shop", "sessionId: s1\nphoneNumber: '628118016410'\n"))
    status = {
        "phase": "Connected",
        "sessionStatus": "connected",
        "instance": {
            "pod": "wa-1", "url": "http://10.0.0.7:3000", "assignedAt": "2026-11-22T10:00:00Z"
        },
    }
    kubectl.run("patch", "waaccount", "shop", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": status}))

    row = kubectl.run("get", "waa", "shop", "--no-headers").stdout.split()
    assert row[:5] == ["shop", "628118016410", "Connected", "wa-1", "connected"]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("phoneNumber: '628118016410'\n", "spec.sessionId: Required value"),
        ("sessionId: s1\nphoneNumber: '62811abc'\n", "spec.phoneNumber: Invalid value"),
        ("sessionId: s1\ndesiredState: Paused\n", 'spec.desiredState: Unsupported value: "Paused"'),
        ("sessionId: " + "s" * 129 + "\n", "spec.sessionId: Too long"),
        ("sessionId: -leading-dash\n", "spec.sessionId: Invalid value"),
        ("sessionId: s1\nworkspaceId: " + "w" * 65 + "\n", "spec.workspaceId: Too long"),
        ("sessionId: s1\ninstanceSelector: {'bad key!': eu}\n",
         "spec.instanceSelector: Invalid value: \"object\": instanceSelector keys must be label "
         "keys"),
        # An explicit YAML key: an implicit one is at most 1024 characters long.
        ("sessionId: s1\ninstanceSelector:\n  ? " + "k" * 300_000 + "\n  : eu\n",
         "spec.instanceSelector: Invalid value: \"object\": instanceSelector keys must be label "
         "keys"),
        ("sessionId: s1\ninstanceSelector: {pool: 'not a value'}\n",
         "spec.instanceSelector.pool: Invalid value: \"not a value\""),
        ("sessionId: s1\ninstanceSelector: {pool: " + "v" * 64 + "}\n",
         "spec.instanceSelector.pool: Too long"),
        ("sessionId: s1\ninstanceSelector: {" + ", ".join(f"k{n}: v" for n in range(1000))
         + "}\n", "spec.instanceSelector: Too many: 1000: must have at most 16 items"),
    ],
    ids=["missing-session", "phone-letters", "unknown-state", "long-session", "bad-session",
         "long-workspace", "selector-key", "selector-key-300kB", "selector-value",
         "selector-value-64", "selector-1000-entries"],
)
def test_invalid_specs_are_rejected_naming_the_field(
    kubectl: Kubectl, spec: str, expected: str
) -> None:
    # create, not apply: apply would also store the object in an annotation, which a
    # 300 kB key makes too long before the schema is even looked at.
    result = kubectl.run("create", "-f", "-", stdin=account("bad", spec), check=False)

    assert result.returncode != 0
    assert expected in result.stderr
    assert kubectl.run("get", "waa", "bad", check=False).returncode != 0


def test_a_valid_instance_selector_is_accepted(kubectl: Kubectl) -> None:
    kubectl.apply(account("shop", "sessionId: s1\ninstanceSelector:\n  example.com/pool: eu-1\n"
                                  "  tier: ''\n  " + "n" * 63 + ": " + "v" * 63 + "\n"))

    assert get(kubectl, "shop")["spec"]["instanceSelector"]["example.com/pool"] == "eu-1"


def test_session_id_cannot_change_after_creation(kubectl: Kubectl) -> None:
    kubectl.apply(account("shop", "sessionId: s1\n"))

    result = kubectl.run("apply", "-f", "-", stdin=account("shop", "sessionId: s2\n"), check=False)

    assert result.returncode != 0
    assert "spec.sessionId" in result.stderr
    assert "sessionId is immutable" in result.stderr
    assert get(kubectl, "shop")["spec"]["sessionId"] == "s1"
    # Other fields stay editable.
    kubectl.apply(account("shop", "sessionId: s1\ndesiredState: Stopped\n"))
    assert get(kubectl, "shop")["spec"]["desiredState"] == "Stopped"


def test_explain_teaches_the_api(kubectl: Kubectl) -> None:
    session = kubectl.run("explain", "waaccount.spec.sessionId").stdout
    assert "Name of the session on the instance" in session
    assert "Immutable" in session
    spec = kubectl.run("explain", "waaccount.spec").stdout
    for field in ("desiredState", "phoneNumber", "accountUuid", "workspaceId", "instanceSelector"):
        assert field in spec


def test_status_changes_only_through_the_status_subresource(kubectl: Kubectl) -> None:
    kubectl.apply(account("shop", "sessionId: s1\n"))
    forged = json.dumps({"status": {"phase": "Connected", "message": "forged"}})

    kubectl.run("patch", "waaccount", "shop", "--type=merge", "-p", forged)
    assert "status" not in get(kubectl, "shop")

    kubectl.run("patch", "waaccount", "shop", "--subresource=status", "--type=merge", "-p", forged)
    assert get(kubectl, "shop")["status"] == {"phase": "Connected", "message": "forged"}

    spec_through_status = json.dumps({"spec": {"desiredState": "Stopped"}})
    kubectl.run("patch", "waaccount", "shop", "--subresource=status", "--type=merge",
                "-p", spec_through_status)
    assert get(kubectl, "shop")["spec"]["desiredState"] == "Connected"


def test_a_full_status_from_the_models_round_trips_through_the_server(kubectl: Kubectl) -> None:
    """Every model field survives the server's pruning: models and schema agree."""
    kubectl.apply(account("shop", textwrap.dedent("""\
        sessionId: s1
        phoneNumber: '+628118016410'
        desiredState: Stopped
        accountUuid: 2b1f6f0e-8d1c-4a53-9a38-7a0d5c0c1f55
        workspaceId: '17'
        instanceSelector: {pool: eu}
        """)))
    status = api.WAAccountStatus(
        phase=api.Phase.CONNECTED,
        instance=api.InstanceRef(pod="wa-1", url="http://10.0.0.7:3000",
                                 assigned_at="2026-11-22T10:00:00Z"),
        session_status="connected",
        observed_generation=1,
        message="session runs on wa-1",
        conditions=[api.Condition(type="Ready", status="True", reason="SessionWorking",
                                  message="working", last_transition_time="2026-11-22T10:00:01Z",
                                  observed_generation=1)],
    )
    wire = status.model_dump(mode="json", by_alias=True, exclude_none=True)
    kubectl.run("patch", "waaccount", "shop", "--subresource=status", "--type=merge",
                "-p", json.dumps({"status": wire}))

    stored = get(kubectl, "shop")
    assert api.WAAccountStatus.model_validate(stored["status"]) == status
    assert stored["status"] == wire
    spec = api.WAAccountSpec.model_validate(stored["spec"])
    assert spec.model_dump(mode="json", by_alias=True, exclude_none=True) == stored["spec"]
