"""The command line as a platform runs it: any UID, no passwd entry."""

from __future__ import annotations

import pwd

import pytest
from kopf._core.engines.peering import detect_own_id

from controller.cli import operator_identity


def _no_passwd_entry(uid: int) -> pwd.struct_passwd:
    raise KeyError(f"getpwuid(): uid not found: {uid}")


@pytest.fixture
def unknown_uid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A UID with no passwd entry and no USER/LOGNAME, as in the image under `runAsUser`."""
    for name in ("USER", "LOGNAME", "LNAME", "USERNAME", "POD_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pwd, "getpwuid", _no_passwd_entry)


@pytest.mark.usefixtures("unknown_uid")
def test_the_peering_identity_needs_no_passwd_entry() -> None:
    with pytest.raises(KeyError, match="uid not found"):  # kopf's own guess: the crash
        detect_own_id(manual=False)
    assert operator_identity().startswith("uid")


@pytest.mark.usefixtures("unknown_uid")
def test_the_peering_identity_is_the_pod_name_in_a_cluster(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    monkeypatch.setenv("POD_ID", "wa-controller-7d9f-abcde")
    assert operator_identity() == "wa-controller-7d9f-abcde"
