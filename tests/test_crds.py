"""CRDs in ``crds/``: well-formed v1 CRDs with structural schemas, in step with the models, and
accepting every example of the seed README (``tests/data/seed``)."""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from nmstream.config.models import (
    API_VERSION,
    CHANNELS,
    CONFIG_KINDS,
    KINDS,
    RECEIVER_KINDS,
    EmailConfigSpec,
    LabelSelector,
    NotificationManager,
    Resource,
    Secret,
    parse_resource,
)

GROUP, VERSION = API_VERSION.split("/")
ROOT = Path(__file__).resolve().parents[1]
CRDS = ROOT / "crds"
SEED = Path(__file__).parent / "data" / "seed"
CR_KINDS = sorted(set(KINDS) - {"Secret", "RoleBinding"})
SHORT_NAMES = {
    "NotificationManager": "nm", "EmailConfig": "ec", "EmailReceiver": "er",
    "WechatConfig": "wcc", "WechatReceiver": "wcr", "SlackConfig": "sc", "SlackReceiver": "sr",
    "WebhookConfig": "wc", "WebhookReceiver": "wr", "DingTalkConfig": "dc",
    "DingTalkReceiver": "dr",
}
PATCH_MARKER = re.compile(r"^# nmstream-seed: merge-patch onto (\S+)$", re.M)


def load_crds() -> dict[str, dict[str, Any]]:
    """Kind → CRD, checking there is exactly one file per kind."""
    crds: dict[str, dict[str, Any]] = {}
    for path in sorted(CRDS.glob("*.yaml")):
        (doc,) = list(yaml.safe_load_all(path.read_text()))
        kind = doc["spec"]["names"]["kind"]
        assert kind not in crds, f"{path.name}: second CRD of {kind}"
        assert path.name == f"{GROUP}_{doc['spec']['names']['plural']}.yaml"
        crds[kind] = doc
    return crds


CRD_BY_KIND = load_crds()


def openapi_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRD_BY_KIND[kind]["spec"]["versions"][0]["schema"][
        "openAPIV3Schema"]
    return schema


def json_schema(node: Any) -> Any:
    """The CRD's OpenAPI schema as plain JSON Schema: x-kubernetes-* extensions dropped."""
    if isinstance(node, dict):
        return {k: json_schema(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [json_schema(v) for v in node]
    return node


def schema_errors(obj: dict[str, Any]) -> list[jsonschema.ValidationError]:
    validator = jsonschema.Draft4Validator(json_schema(openapi_schema(obj["kind"])))
    return list(validator.iter_errors(obj))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def seed_documents() -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """(where, document, base) of every seed document; ``base`` is set for README snippets
    that are changes to an earlier example rather than whole objects."""
    out = []
    for path in sorted(SEED.glob("*.yaml")):
        text = path.read_text()
        marker = PATCH_MARKER.search(text)
        base = yaml.safe_load((SEED / marker.group(1)).read_text()) if marker else None
        for i, doc in enumerate(yaml.safe_load_all(text)):
            if doc:
                out.append((f"{path.name}#{i}", doc, base))
    return out


SEED_DOCS = seed_documents()
SEED_IDS = [where for where, _, _ in SEED_DOCS]


# --- the CRD files ------------------------------------------------------------------------


def test_there_is_one_crd_per_kind_and_the_models_know_the_same_kinds() -> None:
    assert sorted(CRD_BY_KIND) == CR_KINDS
    assert set(RECEIVER_KINDS) == set(CONFIG_KINDS) == set(CHANNELS)
    models = {NotificationManager, *CONFIG_KINDS.values(), *RECEIVER_KINDS.values()}
    assert {KINDS[kind] for kind in CR_KINDS} == models


@pytest.mark.parametrize("kind", CR_KINDS)
def test_crd_is_a_cluster_scoped_v2alpha1_crd_of_the_group(kind: str) -> None:
    crd = CRD_BY_KIND[kind]
    plural = kind.lower() + "s"
    assert (crd["apiVersion"], crd["kind"]) == (
        "apiextensions.k8s.io/v1", "CustomResourceDefinition")
    assert crd["metadata"]["name"] == f"{plural}.{GROUP}"
    spec = crd["spec"]
    assert (spec["group"], spec["scope"]) == (GROUP, "Cluster")
    assert spec["names"] == {
        "kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
        "shortNames": [SHORT_NAMES[kind]], "categories": ["notification-manager"],
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == (VERSION, True, True)


def _assert_structural(node: dict[str, Any], path: str, root: bool = False) -> None:
    """Kubernetes' structural-schema rules, as far as these CRDs use the language."""
    assert not {"$ref", "anyOf", "oneOf", "allOf", "not", "definitions"} & node.keys(), path
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    assert "type" in node or node.get("x-kubernetes-int-or-string"), f"{path}: no type"
    assert not ("properties" in node and "additionalProperties" in node), path
    if node.get("type") == "object" and not preserve:
        assert "properties" in node or "additionalProperties" in node or path.endswith(
            ("status", "metadata", "WebhookConfig.spec")), f"{path}: object without fields"
    for name in node.get("required", []):
        assert name in node.get("properties", {}), f"{path}: required {name} is not a property"
    for name, child in node.get("properties", {}).items():
        if root and name == "metadata":
            assert child == {"type": "object"}, "metadata may only be typed at the root"
            continue
        _assert_structural(child, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            _assert_structural(node[key], f"{path}.{key}")


@pytest.mark.parametrize("kind", CR_KINDS)
def test_schema_is_structural_and_valid_json_schema(kind: str) -> None:
    schema = openapi_schema(kind)
    _assert_structural(schema, kind, root=True)
    assert schema["properties"]["spec"]["type"] == "object"
    jsonschema.Draft4Validator.check_schema(json_schema(schema))


def _fields(schema: dict[str, Any], defs: dict[str, Any], prefix: str = "") -> set[str]:
    """Dotted paths of every property under ``schema`` (``$ref`` and ``anyOf`` followed)."""
    if "$ref" in schema:
        return _fields(defs[schema["$ref"].rsplit("/", 1)[1]], defs, prefix)
    paths: set[str] = set()
    for branch in schema.get("anyOf", []):
        paths |= _fields(branch, defs, prefix)
    if isinstance(schema.get("items"), dict):
        paths |= _fields(schema["items"], defs, prefix + "[].")
    for name, child in schema.get("properties", {}).items():
        paths |= {prefix + name} | _fields(child, defs, f"{prefix}{name}.")
    return paths


#: Later upstream shapes the models accept but the v2alpha1 CRDs do not offer.
MODEL_ONLY = {"SlackReceiver": {"channels"}, "DingTalkReceiver": {"conversation.chatids"}}
#: NotificationManager fields about upstream's Deployment, which nmstream does not read.
DEPLOYMENT = {"affinity", "args", "image", "imagePullPolicy", "nodeSelector", "portName",
              "replicas", "resources", "serviceAccountName", "tolerations", "volumeMounts",
              "volumes"}


@pytest.mark.parametrize("kind", CR_KINDS)
def test_crd_and_model_have_the_same_spec_fields(kind: str) -> None:
    model = KINDS[kind].model_json_schema(by_alias=True)
    model_fields = _fields(model["properties"]["spec"], model.get("$defs", {}))
    crd_fields = _fields(openapi_schema(kind)["properties"]["spec"], {})
    assert model_fields - crd_fields == MODEL_ONLY.get(kind, set())
    expected_crd_only = DEPLOYMENT if kind == "NotificationManager" else set()
    assert {f.split(".")[0] for f in crd_fields - model_fields} == expected_crd_only


# --- the seed README's examples ------------------------------------------------------------


def test_the_seed_has_every_kind_and_says_where_each_file_comes_from() -> None:
    assert {doc["kind"] for _, doc, _ in SEED_DOCS} == {*CR_KINDS, "Secret"}
    for path in SEED.glob("*.yaml"):
        assert path.read_text().startswith("# Seed README, "), path.name


@pytest.mark.parametrize(("where", "doc", "base"), SEED_DOCS, ids=SEED_IDS)
def test_seed_example_validates_against_its_crd_and_parses(
    where: str, doc: dict[str, Any], base: dict[str, Any] | None
) -> None:
    whole = merge_patch(base, doc) if base is not None else doc
    parsed = parse_resource(whole)
    assert isinstance(parsed, Resource) and parsed.kind == doc["kind"]
    if doc["apiVersion"] == API_VERSION:
        assert [e.message for e in schema_errors(whole)] == []
        assert parse_resource(doc).kind == doc["kind"]
    else:
        assert isinstance(parsed, Secret) and parsed.decoded()


@pytest.mark.parametrize(("where", "doc", "base"), [d for d in SEED_DOCS if d[2] is not None],
                         ids=[w for w, _, b in SEED_DOCS if b is not None])
def test_partial_notification_managers_of_the_readme_need_their_base_for_the_crd(
    where: str, doc: dict[str, Any], base: dict[str, Any]
) -> None:
    """The README's snippets leave out what the v2alpha1 CRD requires; the model defaults it."""
    missing = {e.message for e in schema_errors(doc)}
    assert missing and all("is a required property" in m for m in missing)
    receivers = parse_resource(doc).spec.receivers
    assert receivers.global_receiver_selector.matches({"type": "global"})


def test_seed_secrets_decode_to_the_readme_values() -> None:
    secrets = {doc["metadata"]["name"]: Secret.model_validate(doc).decoded()
               for _, doc, _ in SEED_DOCS if doc["kind"] == "Secret"}
    assert secrets["default-email-secret"] == {"password": b"test"}
    webhook = secrets["default-webhook-secret"]
    assert webhook["ca"].startswith(b"-----BEGIN CERTIFICATE-----")
    assert webhook["key"].startswith(b"-----BEGIN EC PRIVATE KEY-----")
    assert secrets["default-dingtalk-secret"]["webhook"].startswith(
        b"https://oapi.dingtalk.com/robot/send?access_token=")


# --- invalid resources ---------------------------------------------------------------------


def _seed(kind: str) -> dict[str, Any]:
    return next(doc for _, doc, base in SEED_DOCS if doc["kind"] == kind and base is None)


def _with(doc: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = merge_patch(doc, patch)
    return result


INVALID = [
    ("EmailConfig", {"spec": {"smartHost": None}}, "smartHost"),
    ("EmailConfig", {"spec": {"smartHost": {"port": None}}}, "port"),
    ("NotificationManager",
     {"spec": {"receivers": {"options": {"email": {"deliveryType": "sometimes"}}}}},
     "deliveryType"),
    ("NotificationManager", {"spec": {"receivers": {"options": {"wechat": {
        "notificationTimeout": 0}}}}}, "notificationTimeout"),
    ("EmailReceiver", {"spec": {"to": "receiver1@xyz.com"}}, "to"),
    ("SlackConfig", {"spec": {"slackTokenSecret": {"key": None}}}, "key"),
    ("SlackReceiver", {"spec": {"channel": None}}, "channel"),
    ("WechatConfig", {"spec": {"wechatApiAgentId": 1000002}}, "wechatApiAgentId"),
    ("WebhookReceiver", {"spec": {"httpConfig": {"basicAuth": {"password": {
        "key": "password", "name": "default-webhook-secret"}}}}}, "username"),
    ("WebhookReceiver", {"spec": {"url": None, "service": {
        "namespace": "n", "name": "s", "scheme": "ftp"}}}, "scheme"),
    ("DingTalkReceiver", {"spec": {"chatbot": {"webhook": None}}}, "webhook"),
    ("EmailReceiver", {"spec": {"alertSelector": {"matchExpressions": [
        {"key": "a", "operator": "Matches", "values": ["b"]}]}}}, "operator"),
]


@pytest.mark.parametrize(("kind", "patch", "field"), INVALID,
                         ids=[f"{k}-{f}" for k, _, f in INVALID])
def test_invalid_resource_fails_schema_and_model_naming_the_field(
    kind: str, patch: dict[str, Any], field: str
) -> None:
    obj = _with(_seed(kind), patch)
    errors = schema_errors(obj)
    assert errors, "the CRD accepted it"
    assert any(field in e.message or field in e.path for e in errors), errors
    with pytest.raises(ValidationError) as model_error:
        parse_resource(obj)
    assert field in str(model_error.value)


MODEL_RULES = [
    ("WebhookReceiver", {"spec": {"url": None}}, "exactly one of url or service"),
    ("WebhookReceiver", {"spec": {"service": {"namespace": "n", "name": "s"}}},
     "exactly one of url or service"),
    ("WechatReceiver", {"spec": {"toUser": None, "toParty": None, "toTag": None}},
     "one of toUser, toParty, toTag"),
    ("DingTalkReceiver", {"spec": {"chatbot": None, "conversation": None}},
     "chatbot or conversation"),
    ("EmailReceiver", {"spec": {"to": []}}, "at least 1 item"),
    ("EmailReceiver", {"spec": {"alertSelector": {"matchExpressions": [
        {"key": "a", "operator": "In"}]}}}, "needs values"),
    ("EmailReceiver", {"spec": {"alertSelector": {"matchExpressions": [
        {"key": "a", "operator": "Exists", "values": ["b"]}]}}}, "takes no values"),
    ("SlackConfig", {"spec": {"slackTokenSecret": {"name": None}}}, "name"),
]


@pytest.mark.parametrize(("kind", "patch", "message"), MODEL_RULES,
                         ids=[f"{k}-{m}" for k, _, m in MODEL_RULES])
def test_rules_beyond_the_crd_are_enforced_by_the_models(
    kind: str, patch: dict[str, Any], message: str
) -> None:
    obj = _with(_seed(kind), patch)
    assert schema_errors(obj) == []
    with pytest.raises(ValidationError, match=message):
        parse_resource(obj)


LATER_SHAPES = [
    ("EmailConfig", {"spec": {"smartHost": {"port": 25}}},
     lambda spec: spec.smart_host.port == 25),
    ("WechatReceiver", {"spec": {"toUser": ["u1", "u2"], "toParty": None, "toTag": None}},
     lambda spec: spec.to_user == "u1|u2"),
    ("SlackReceiver", {"spec": {"channel": None, "channels": ["#a", "#b"]}},
     lambda spec: spec.all_channels() == ["#a", "#b"]),
    ("DingTalkReceiver", {"spec": {"conversation": {"chatid": None, "chatids": ["c1", "c2"]}}},
     lambda spec: spec.conversation.all_ids() == ["c1", "c2"]),
]


@pytest.mark.parametrize(("kind", "patch", "check"), LATER_SHAPES,
                         ids=[k for k, _, _ in LATER_SHAPES])
def test_models_accept_later_upstream_shapes_that_the_v2alpha1_crds_reject(
    kind: str, patch: dict[str, Any], check: Any
) -> None:
    obj = _with(_seed(kind), patch)
    assert schema_errors(obj)
    assert check(parse_resource(obj).spec)


def test_unknown_kind_is_a_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match="unknown kind 'EmailReceivers'"):
        parse_resource({"apiVersion": API_VERSION, "kind": "EmailReceivers",
                        "metadata": {"name": "x"}, "spec": {}})


@pytest.mark.parametrize("channel", CHANNELS)
def test_config_selector_is_the_channels_selector(channel: str) -> None:
    receiver = _seed(RECEIVER_KINDS[channel].__name__)
    assert parse_resource(receiver).spec.config_selector() is None
    selector_field = {"dingtalk": "dingtalkConfigSelector"}.get(
        channel, f"{channel}ConfigSelector")
    selected = _with(receiver, {"spec": {selector_field: {"matchLabels": {"type": "tenant"}}}})
    selector = parse_resource(selected).spec.config_selector()
    assert isinstance(selector, LabelSelector) and selector.match_labels == {"type": "tenant"}


# --- label selectors and secrets -----------------------------------------------------------


def _req(key: str, operator: str, *values: str) -> dict[str, Any]:
    return {"matchExpressions": [{"key": key, "operator": operator, "values": list(values)}]}


SELECTOR_CASES = [
    ({}, {}, True),
    ({}, {"a": "1"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchLabels": {"a": "1"}}, {}, False),
    ({"matchLabels": {"a": "1", "b": "2"}}, {"a": "1"}, False),
    (_req("a", "In", "1", "2"), {"a": "2"}, True),
    (_req("a", "In", "1"), {"a": "3"}, False),
    (_req("a", "In", "1"), {}, False),
    (_req("a", "NotIn", "1"), {"a": "2"}, True),
    (_req("a", "NotIn", "1"), {"a": "1"}, False),
    (_req("a", "NotIn", "1"), {}, True),
    (_req("a", "Exists"), {"a": ""}, True),
    (_req("a", "Exists"), {"b": "1"}, False),
    (_req("a", "DoesNotExist"), {}, True),
    (_req("a", "DoesNotExist"), {"a": "x"}, False),
    ({"matchLabels": {"a": "1"}, **_req("b", "Exists")}, {"a": "1"}, False),
    ({"matchLabels": {"a": "1"}, **_req("b", "Exists")}, {"a": "1", "b": "2"}, True),
    ({"matchExpressions": [*_req("a", "In", "1")["matchExpressions"],
                           *_req("b", "DoesNotExist")["matchExpressions"]]},
     {"a": "1", "b": "2"}, False),
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
        "stringData": {"b": "new", "c": "only"}})
    assert secret.decoded() == {"a": b"x", "b": b"new", "c": b"only"}
    assert Secret.model_validate({"apiVersion": "v1", "kind": "Secret",
                                  "metadata": {"name": "s"}}).decoded() == {}
    with pytest.raises(ValidationError, match=r"data\.a is not base64"):
        Secret.model_validate({"apiVersion": "v1", "kind": "Secret",
                               "metadata": {"name": "s"}, "data": {"a": "%%%"}})


def test_specs_are_frozen_and_accept_snake_case_names() -> None:
    spec = parse_resource(_seed("EmailConfig")).spec
    with pytest.raises(ValidationError):
        spec.hello = "x"
    same = EmailConfigSpec.model_validate({"from_": "a@b.c", "smart_host": {"host": "h",
                                                                            "port": 1}})
    assert same.smart_host.port == 1 and same.from_ == "a@b.c"
