"""`wa-controller import`'s conversion, row by row: what becomes a WAAccount, what is
refused and why. Pure functions, no database."""

from __future__ import annotations

from typing import Any

import pytest

from controller.api import WAAccountSpec
from controller.importer import (
    Imported,
    Refusal,
    account_name,
    convert,
    country_code,
    plan,
    render,
)

SEED_ROW = {"id": 142, "uuid": "2b1f6f0e-8d1c-4a53-9a38-7a0d5c0c1f55",
            "session_id": "session_1732251234", "phone_number": "62811801641",
            "workspace_id": 17}


def one(row: dict[str, Any], *, namespace: str | None = "whatsapp",
        cc: str | None = None) -> Imported | Refusal:
    return convert(row, 1, namespace=namespace, default_country_code=cc)


def test_a_seed_row_becomes_a_manifest_with_every_value_as_it_was() -> None:
    assert one(SEED_ROW) == Imported("id=142", {
        "apiVersion": "wa-controller.io/v1alpha1", "kind": "WAAccount",
        "metadata": {"name": "session-1732251234", "namespace": "whatsapp"},
        "spec": {"sessionId": "session_1732251234", "phoneNumber": "62811801641",
                 "workspaceId": "17", "accountUuid": "2b1f6f0e-8d1c-4a53-9a38-7a0d5c0c1f55",
                 "desiredState": "Connected"}})


def test_without_a_namespace_the_manifest_names_none() -> None:
    result = one(SEED_ROW, namespace=None)
    assert isinstance(result, Imported)
    assert result.manifest["metadata"] == {"name": "session-1732251234"}


@pytest.mark.parametrize(("row", "spec"), [
    ({"session_id": "s1"}, {"sessionId": "s1", "desiredState": "Connected"}),
    ({"session_id": "s1", "phone_number": None, "workspace_id": "", "uuid": None},
     {"sessionId": "s1", "desiredState": "Connected"}),
    ({"session_id": "s1", "id": 7}, {"sessionId": "s1", "accountUuid": "7",
                                     "desiredState": "Connected"}),
    ({"session_id": "s1", "id": 7, "uuid": "u-1"},
     {"sessionId": "s1", "accountUuid": "u-1", "desiredState": "Connected"}),
    ({"session_id": "s1", "uuid": None, "id": 7},
     {"sessionId": "s1", "accountUuid": "7", "desiredState": "Connected"}),
    ({"session_id": "s1", "phone_number": "+62811801641"},
     {"sessionId": "s1", "phoneNumber": "+62811801641", "desiredState": "Connected"}),
    ({"session_id": "s1", "workspace_id": "tenant-a"},
     {"sessionId": "s1", "workspaceId": "tenant-a", "desiredState": "Connected"}),
    ({"session_id": b"s1", "status": "connected", "assigned_instance_url": "http://x:3001"},
     {"sessionId": "s1", "desiredState": "Connected"}),
    ({"session_id": 1732251234}, {"sessionId": "1732251234", "desiredState": "Connected"}),
])
def test_absent_values_are_left_out_and_numbers_written_out(row: dict[str, Any],
                                                            spec: dict[str, Any]) -> None:
    result = one(row)
    assert isinstance(result, Imported), result
    assert result.manifest["spec"] == spec
    WAAccountSpec.model_validate(spec)


@pytest.mark.parametrize(("phone", "cc", "expected"), [
    ("0816108641", "62", "+62816108641"),
    ("08161086412", "62", "+628161086412"),
    ("0412345678", "61", "+61412345678"),
    ("62816108641", "62", "62816108641"),  # already international: unchanged
    ("+62816108641", "62", "+62816108641"),
])
def test_a_local_number_is_converted_only_with_a_country_code(phone: str, cc: str,
                                                              expected: str) -> None:
    result = one({"id": 1, "session_id": "s1", "phone_number": phone}, cc=cc)
    assert isinstance(result, Imported), result
    assert result.manifest["spec"]["phoneNumber"] == expected


@pytest.mark.parametrize(("row", "cc", "reason"), [
    ({"id": 142, "session_id": "s1", "phone_number": "0816108641"}, None,
     "phone_number '0816108641' is a local number (trunk prefix 0): pass "
     "--default-country-code (e.g. 62) to convert it to E.164, or fix the row"),
    ({"id": 1, "session_id": "s1", "phone_number": "0062816108641"}, "62",
     "phone_number '0062816108641' is refused by the WAAccount schema"),
    ({"id": 1, "session_id": "s1", "phone_number": "+62 811 801 641"}, None,
     "phone_number '+62 811 801 641' is refused by the WAAccount schema"),
    ({"id": 1, "session_id": "s1", "phone_number": "62-811-801641"}, None,
     "phone_number '62-811-801641' is refused by the WAAccount schema"),
    ({"id": 1, "session_id": "s1", "phone_number": "12345"}, None,
     "phone_number '12345' is refused by the WAAccount schema"),
    ({"id": 1, "session_id": "s1", "phone_number": "6281180164112345"}, None,
     "phone_number '6281180164112345' is refused by the WAAccount schema"),
    ({"id": 1, "session_id": "s1", "phone_number": "tel:62811801641"}, None,
     "phone_number 'tel:62811801641' is refused by the WAAccount schema"),
    ({"id": 1, "session_id": "s1", "phone_number": " 62811801641"}, None,
     "phone_number ' 62811801641' is refused by the WAAccount schema"),
    ({"id": 9}, None, "no session_id: nothing to adopt or start"),
    ({"id": 9, "session_id": ""}, None, "no session_id: nothing to adopt or start"),
    ({"id": 9, "session_id": "sesi baru!"}, None,
     "session_id 'sesi baru!' is refused by the WAAccount schema"),
    ({"id": 9, "session_id": "_hidden"}, None,
     "session_id '_hidden' is refused by the WAAccount schema"),
    ({"id": 9, "session_id": "s" * 129}, None,
     f"session_id '{'s' * 129}' is refused by the WAAccount schema"),
    ({"id": 9, "session_id": "s1", "workspace_id": "w" * 65}, None,
     f"workspace_id '{'w' * 65}' is refused by the WAAccount schema"),
    ({"id": 9, "session_id": "s1", "uuid": "u" * 65}, None,
     f"uuid/id '{'u' * 65}' is refused by the WAAccount schema"),
])
def test_values_the_crd_refuses_are_reported_never_changed(row: dict[str, Any],
                                                           cc: str | None, reason: str) -> None:
    result = one(row, cc=cc)
    assert isinstance(result, Refusal), result
    assert result.row == f"id={row['id']}"
    assert result.reason.startswith(reason), result.reason


def test_a_refusal_names_every_bad_value_of_the_row() -> None:
    result = one({"uuid": "u-7", "session_id": "bad id", "phone_number": "12"})
    assert isinstance(result, Refusal)
    assert result.row == "uuid=u-7"
    assert "session_id 'bad id'" in result.reason
    assert "phone_number '12'" in result.reason
    assert str(result).startswith("uuid=u-7: ")


def test_a_row_without_a_key_is_named_by_its_session_or_its_position() -> None:
    assert one({"session_id": "x y"}).row == "session_id=x y"  # type: ignore[union-attr]
    assert convert({}, 5, namespace=None, default_country_code=None) == Refusal(
        "row 5", "no session_id: nothing to adopt or start")


@pytest.mark.parametrize(("session", "name"), [
    ("session_1732251234", "session-1732251234"),
    ("Shop.Support_01", "shop-support-01"),
    ("a__b..c", "a-b-c"),
    ("x-", "x"),
    ("9abc", "9abc"),
    ("s" * 63, "s" * 63),
])
def test_account_names_are_dns_labels_made_from_the_session_id(session: str,
                                                               name: str) -> None:
    assert account_name(session) == name


def test_long_session_ids_get_distinct_names_that_fit() -> None:
    first, second = account_name("a" * 100 + "1"), account_name("a" * 100 + "2")
    assert first != second
    assert len(first) == len(second) == 63
    assert first.startswith("a" * 54 + "-")


def test_the_first_row_of_a_session_keeps_it_and_names_do_not_collide() -> None:
    rows = [
        {"id": 1, "session_id": "shop_1"},
        {"id": 2, "session_id": "shop_1", "phone_number": "62811801641"},
        {"id": 3, "session_id": "Shop_1"},  # another session, but the same name
        {"id": 4, "session_id": "bad id"},
        {"id": 5, "session_id": "shop_2"},
    ]
    result = plan(rows, namespace=None, default_country_code=None)
    assert [i.row for i in result.imported] == ["id=1", "id=5"]
    assert [str(r) for r in result.refused] == [
        "id=2: session 'shop_1' is also id=1: one account per session (the first row keeps it)",
        "id=3: its account name 'shop-1' is taken by id=1; import it by hand under another name",
        "id=4: session_id 'bad id' is refused by the WAAccount schema (sessionId: String should "
        "match pattern '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$')",
    ]


def test_render_is_one_yaml_stream_with_the_row_of_each_account() -> None:
    import yaml

    result = plan([SEED_ROW, {"id": 143, "session_id": "s2"}], namespace="wa",
                  default_country_code=None)
    text = render(result.imported, source="whatsapp_accounts")
    assert text.startswith("# from whatsapp_accounts id=142\n")
    assert "# from whatsapp_accounts id=143\n" in text
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(text)] == [
        "session-1732251234", "s2"]
    assert render([], source="t") == ""


@pytest.mark.parametrize(("given", "digits"), [("62", "62"), ("+62", "62"), ("1", "1"),
                                               (" 358 ", "358")])
def test_country_codes(given: str, digits: str) -> None:
    assert country_code(given) == digits


@pytest.mark.parametrize("given", ["0", "062", "6212", "+", "sixtytwo", ""])
def test_bad_country_codes_are_refused(given: str) -> None:
    with pytest.raises(ValueError, match="not a country calling code"):
        country_code(given)
