"""CRDs: generated from the models, structural, and accepting every seed and example manifest."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from nmstream.config.crds import manifests
from nmstream.config.events import CR_TYPES, GROUP, VERSION
from nmstream.config.models import LabelSelector, Secret, parse_resource

ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
SEED = Path(__file__).parent / "data" / "seed"


def crd_files() -> dict[str, dict[str, Any]]:
    docs = {p.name: yaml.safe_load(p.read_text()) for p in sorted(CRDS.glob("*.yaml"))
            if p.name != "kustomization.yaml"}
    return {d["spec"]["names"]["kind"]: d for d in docs.values()}


def schema_of(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = crd_files()[kind]["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]
    return schema


def documents(*directories: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(f"{p.parent.name}/{p.name}#{i}", doc)
            for d in directories for p in sorted(d.glob("*.yaml"))
            for i, doc in enumerate(yaml.safe_load_all(p.read_text())) if doc]


def test_checked_in_crds_are_what_the_models_generate() -> None:
    generated = manifests()
    assert sorted(p.name for p in CRDS.glob("*.yaml")) == sorted(generated)
    for name, text in generated.items():
        assert (CRDS / name).read_text() == text, (
            f"crds/{name} is stale: run python -m nmstream.config.crds crds")


def test_every_kind_has_a_cluster_scoped_v2alpha1_crd() -> None:
    crds = crd_files()
    assert set(crds) == {t.kind for t in CR_TYPES}
    for rtype in CR_TYPES:
        crd = crds[rtype.kind]
        assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
        assert crd["metadata"]["name"] == f"{rtype.plural}.{GROUP}"
        assert crd["spec"]["scope"] == "Cluster"
        assert crd["spec"]["names"]["plural"] == rtype.plural
        (version,) = crd["spec"]["versions"]
        assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)


def _assert_structural(node: dict[str, Any], path: str) -> None:
    assert "$ref" not in node and "anyOf" not in node, path
    if node.get("x-kubernetes-int-or-string"):
        return
    assert "type" in node, f"{path} has no type"
    for name, child in node.get("properties", {}).items():
        _assert_structural(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _assert_structural(node[key], f"{path}.{key}")


@pytest.mark.parametrize("kind", sorted(t.kind for t in CR_TYPES))
def test_schemas_are_structural(kind: str) -> None:
    _assert_structural(schema_of(kind), kind)


SEED_AND_EXAMPLES = documents(SEED, ROOT / "examples")


@pytest.mark.parametrize(("where", "doc"), SEED_AND_EXAMPLES, ids=[w for w, _ in SEED_AND_EXAMPLES])
def test_seed_and_example_manifests_validate(where: str, doc: dict[str, Any]) -> None:
    if doc["apiVersion"].startswith(GROUP):
        jsonschema.validate(doc, schema_of(doc["kind"]))
    parsed = parse_resource(doc)
    assert parsed.kind == doc["kind"]


def test_the_seed_covers_every_channel() -> None:
    kinds = {doc["kind"] for _, doc in documents(SEED)}
    assert {t.kind for t in CR_TYPES} - kinds == set()


@pytest.mark.parametrize(("doc", "field"), [
    ({"kind": "EmailConfig", "spec": {"from": "a@b.c"}}, "smartHost"),
    ({"kind": "EmailReceiver", "spec": {"to": "not-a-list"}}, "to"),
    ({"kind": "NotificationManager",
      "spec": {"receivers": {"options": {"email": {"deliveryType": "sometimes"}}}}},
     "deliveryType"),
    ({"kind": "SlackConfig", "spec": {"slackTokenSecret": {"name": "s"}}}, "key"),
])
def test_invalid_resources_fail_schema_and_model_naming_the_field(
    doc: dict[str, Any], field: str
) -> None:
    obj = {"apiVersion": f"{GROUP}/{VERSION}", "metadata": {"name": "bad"}, **doc}
    with pytest.raises(jsonschema.ValidationError) as schema_error:
        jsonschema.validate(obj, schema_of(doc["kind"]))
    assert field in str(schema_error.value.message) + str(list(schema_error.value.path))
    with pytest.raises(ValidationError) as model_error:
        parse_resource(obj)
    assert field in str(model_error.value)


@pytest.mark.parametrize(("doc", "message"), [
    ({"kind": "WebhookReceiver", "spec": {}}, "exactly one of url or service"),
    ({"kind": "WechatReceiver", "spec": {}}, "one of toUser, toParty, toTag"),
    ({"kind": "DingTalkReceiver", "spec": {"conversation": {}}}, "chatbot or conversation"),
    ({"kind": "EmailReceiver", "spec": {"to": ["a@b.c"], "alertSelector": {
        "matchExpressions": [{"key": "a", "operator": "In"}]}}}, "needs values"),
])
def test_rules_beyond_the_schema_are_enforced_by_the_models(
    doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_resource({"apiVersion": f"{GROUP}/{VERSION}", "metadata": {"name": "x"}, **doc})


SELECTOR_CASES = [
    ({}, {}, True),
    ({}, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchLabels": {"a": "1"}}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"},
     True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"},
     False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": "x"}, False),
    ({"matchLabels": {"a": "1"},
      "matchExpressions": [{"key": "b", "operator": "Exists"}]}, {"a": "1"}, False),
]


@pytest.mark.parametrize(("selector", "labels", "expected"), SELECTOR_CASES)
def test_label_selector_semantics(
    selector: dict[str, Any], labels: dict[str, str], expected: bool
) -> None:
    assert LabelSelector.model_validate(selector).matches(labels) is expected


def test_secret_decoding_prefers_string_data() -> None:
    secret = Secret.model_validate({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s", "namespace": "n"},
        "data": {"a": base64.b64encode(b"x").decode(), "b": base64.b64encode(b"old").decode()},
        "stringData": {"b": "new"}})
    assert secret.decoded() == {"a": b"x", "b": b"new"}
    with pytest.raises(ValidationError, match=r"data\.a is not base64"):
        Secret.model_validate({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "s"}, "data": {"a": "%%%"}})
