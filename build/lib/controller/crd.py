"""Generate the WAAccount CustomResourceDefinition from the pydantic models.

The models in `controller.api` are the one source of truth; `crds/` holds what
this module prints (`wa-controller crd > crds/waaccounts.wa-controller.io.yaml`).
"""

from __future__ import annotations

from typing import Any

import yaml
from pydantic import BaseModel

from controller import api

_DROPPED_KEYS = {"title", "$defs"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Turn pydantic's JSON schema into a structural OpenAPI v3 schema.

    Kubernetes refuses `$ref`, `anyOf` with null and `title`: references are
    inlined, `X | None` becomes plain X (optional by not being required), and
    null defaults are dropped.
    """
    if isinstance(node, list):
        return [_inline(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        return _inline({**target, **siblings}, defs)
    if "anyOf" in node:
        choices = [c for c in node["anyOf"] if c != {"type": "null"}]
        if len(choices) != 1:
            raise ValueError(f"cannot express a union in a structural schema: {node['anyOf']}")
        siblings = {k: v for k, v in node.items() if k != "anyOf"}
        return _inline({**choices[0], **siblings}, defs)
    schema = {
        key: _inline(value, defs) if key != "properties" else {
            name: _inline(prop, defs) for name, prop in value.items()
        }
        for key, value in node.items()
        if key not in _DROPPED_KEYS
    }
    if schema.get("default", ...) is None or schema.get("default") == []:
        del schema["default"]
    return schema


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of one model, as the API server wants it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _inline(raw, raw.get("$defs", {}))


def custom_resource_definition() -> dict[str, Any]:
    """The whole WAAccount CRD object."""
    spec = openapi_schema(api.WAAccountSpec)
    status = openapi_schema(api.WAAccountStatus)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{api.PLURAL}.{api.GROUP}"},
        "spec": {
            "group": api.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": api.KIND,
                "listKind": f"{api.KIND}List",
                "plural": api.PLURAL,
                "singular": api.SINGULAR,
                "shortNames": list(api.SHORT_NAMES),
                "categories": list(api.CATEGORIES),
            },
            "versions": [
                {
                    "name": api.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        _column("Phone", ".spec.phoneNumber", "Phone number of the account."),
                        _column("Phase", ".status.phase", "Observed phase of the account."),
                        _column("Instance", ".status.instance.pod", "Pod holding the session."),
                        _column("Session", ".status.sessionStatus", "The instance's word."),
                        {
                            "name": "Age",
                            "type": "date",
                            "jsonPath": ".metadata.creationTimestamp",
                        },
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "A WhatsApp account: which session it is, what state we want "
                                "it in, and which instance pod the controller found holding it."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": "Versioned schema of this object.",
                                },
                                "kind": {
                                    "type": "string",
                                    "description": "REST resource this object represents.",
                                },
                                "metadata": {"type": "object"},
                                "spec": spec,
                                "status": status,
                            },
                        }
                    },
                }
            ],
        },
    }


def _column(name: str, json_path: str, description: str) -> dict[str, str]:
    return {"name": name, "type": "string", "jsonPath": json_path, "description": description}


def render() -> str:
    """The CRD as the YAML document committed under `crds/`."""
    header = "# Generated from controller/api.py by `wa-controller crd`. Do not edit.\n"
    return header + yaml.safe_dump(custom_resource_definition(), sort_keys=False, width=100)
