"""CustomResourceDefinitions generated from the pydantic models, so the two cannot drift.

``python -m nmstream.config.crds DIR`` writes one manifest per kind; a test checks that the
files in ``crds/`` are what this module generates. The models' JSON schemas are turned into
Kubernetes *structural* schemas: references inlined, optional fields without null branches,
no titles or defaults, ports accepted as integer or string.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from nmstream.config.events import CR_TYPES, GROUP, VERSION, ResourceType
from nmstream.config.models import CONFIG_KINDS, RECEIVER_KINDS, NotificationManager

MODELS: dict[str, type[Any]] = {
    NotificationManager.__name__: NotificationManager,
    **{m.__name__: m for m in (*CONFIG_KINDS.values(), *RECEIVER_KINDS.values())},
}
SHORT_NAMES = {
    "NotificationManager": "nm", "EmailConfig": "ec", "EmailReceiver": "er",
    "WechatConfig": "wcc", "WechatReceiver": "wcr", "SlackConfig": "sc", "SlackReceiver": "sr",
    "WebhookConfig": "wc", "WebhookReceiver": "wr", "DingTalkConfig": "dc",
    "DingTalkReceiver": "dr",
}
#: NotificationManager's deployment fields (image, resources, volumes...) are kept as written.
OPEN_SPECS = {"NotificationManager"}
DROPPED_KEYS = {"title", "default", "description", "discriminator"}
INT_OR_STRING = "x-kubernetes-int-or-string"


class _Dumper(yaml.SafeDumper):
    """Plain YAML: no anchors for repeated sub-schemas."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _structural(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """Inline ``$ref``s and drop what a structural schema may not carry."""
    if "$ref" in schema:
        return _structural(defs[schema["$ref"].rsplit("/", 1)[1]], defs)
    if schema.get(INT_OR_STRING):
        return {INT_OR_STRING: True}
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        if len(branches) == 1:
            return _structural(branches[0], defs)
        raise ValueError(f"cannot express union {schema} structurally")
    if "const" in schema:
        return {"type": "string", "enum": [schema["const"]]}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in DROPPED_KEYS or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and not {"properties", "additionalProperties"} & out.keys():
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def spec_schema(kind: str) -> dict[str, Any]:
    """The structural schema of ``kind``'s spec."""
    full = MODELS[kind].model_json_schema(by_alias=True, mode="validation")
    schema = _structural(full["properties"]["spec"], full.get("$defs", {}))
    if kind in OPEN_SPECS:
        schema["x-kubernetes-preserve-unknown-fields"] = True
    return schema


def crd(rtype: ResourceType) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    required = ["spec"] if "spec" in MODELS[rtype.kind].model_json_schema()["required"] else []
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{rtype.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Cluster",
            "names": {
                "kind": rtype.kind,
                "listKind": f"{rtype.kind}List",
                "plural": rtype.plural,
                "singular": rtype.kind.lower(),
                "shortNames": [SHORT_NAMES[rtype.kind]],
                "categories": ["notification-manager"],
            },
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "required": required,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema(rtype.kind),
                        "status": {"type": "object",
                                   "x-kubernetes-preserve-unknown-fields": True},
                    },
                }},
            }],
        },
    }


def manifests() -> dict[str, str]:
    """File name → YAML text of every CRD, and the kustomization that lists them."""
    files = {
        f"{GROUP}_{t.plural}.yaml": yaml.dump(crd(t), Dumper=_Dumper, sort_keys=False)
        for t in CR_TYPES
    }
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": sorted(files),
    }
    files["kustomization.yaml"] = yaml.dump(kustomization, Dumper=_Dumper, sort_keys=False)
    return files


def main(argv: list[str]) -> int:
    """Write the manifests into the directory given (default ``crds``)."""
    target = Path(argv[0] if argv else "crds")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in manifests().items():
        (target / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
