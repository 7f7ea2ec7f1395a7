"""The CRD in crds/ is generated from the pydantic models and says everything about them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml

from controller import api, crd

CRD_FILE = Path(__file__).resolve().parent.parent / "crds" / "waaccounts.wa-controller.io.yaml"


def _schema() -> dict[str, Any]:
    document = yaml.safe_load(CRD_FILE.read_text())
    return document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found = []
    for name, prop in schema.get("properties", {}).items():
        found.append((f"{path}.{name}", prop))
        found.extend(_walk(prop, f"{path}.{name}"))
        if "items" in prop:
            found.extend(_walk(prop["items"], f"{path}.{name}[]"))
    return found


def test_committed_crd_is_what_the_models_generate() -> None:
    assert CRD_FILE.read_text() == crd.render(), (
        "crds/ is out of date with controller/api.py: "
        "run `wa-controller crd > crds/waaccounts.wa-controller.io.yaml`"
    )


@pytest.mark.parametrize(
    ("model", "section"), [(api.WAAccountSpec, "spec"), (api.WAAccountStatus, "status")]
)
def test_models_and_schema_have_the_same_fields(model: type, section: str) -> None:
    def nested_models(annotation: Any, path: str) -> list[tuple[type, str]]:
        """Models inside an annotation (X, X | None, list[X]) and the path they sit at."""
        if isinstance(annotation, type) and issubclass(annotation, api._Model):
            return [(annotation, path)]
        inner_path = f"{path}[]" if get_origin(annotation) is list else path
        return [found for arg in get_args(annotation) for found in nested_models(arg, inner_path)]

    def model_fields(m: type, prefix: str) -> set[str]:
        names = set()
        for field in m.model_fields.values():
            path = f"{prefix}.{field.alias}"
            names.add(path)
            for nested, nested_path in nested_models(field.annotation, path):
                names |= model_fields(nested, nested_path)
        return names

    in_schema = {path for path, _ in _walk(_schema()["properties"][section], f".{section}")}
    assert model_fields(model, f".{section}") == in_schema


def test_every_field_has_a_description() -> None:
    undescribed = [path for path, prop in _walk(_schema()) if path != ".metadata"
                   and not prop.get("description")]
    assert undescribed == []


def test_schema_is_structural() -> None:
    text = CRD_FILE.read_text()
    for forbidden in ("$ref", "anyOf", "title:", "default: null"):
        assert forbidden not in text


def test_required_fields_and_defaults() -> None:
    spec = _schema()["properties"]["spec"]
    assert spec["required"] == ["sessionId"]
    assert spec["properties"]["desiredState"]["default"] == "Connected"
    assert spec["properties"]["sessionId"]["x-kubernetes-validations"] == [
        {"rule": "self == oldSelf", "message": "sessionId is immutable"}
    ]
    conditions = _schema()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert conditions["items"]["required"] == [
        "type", "status", "reason", "message", "lastTransitionTime"
    ]
