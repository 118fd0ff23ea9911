"""Rendering: golden outputs of the default templates, precedence, user templates, limits."""

from __future__ import annotations

import json
import os
import random
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from nmstream.config.models import NotificationManager, parse_resource
from nmstream.ingest.models import AlertRecord, GroupContext, WebhookPayload
from nmstream.render.engine import LIMITS, Choice, Renderer, TemplateError, choose
from nmstream.routing.models import AlertGroup, ReceiverRef
from tests.helpers import payload

GOLDEN = Path(__file__).parent / "data" / "golden"
NOW = datetime(2026, 1, 1, tzinfo=UTC)
PAYLOADS = ["alert.json", "alert1.json", "alerts-without-namespace.json", "alert-auditing.json"]


def group_of(name: str, channel: str = "slack") -> AlertGroup:
    parsed = WebhookPayload.model_validate_json(payload(name))
    context = GroupContext.model_validate_json(payload(name))
    records = [AlertRecord.build(a, context, "req", NOW) for a in parsed.alerts]
    ref = ReceiverRef(kind="X", name="golden", channel=channel, tenant=None, config_kind="Y",
                      config_name="c", targets={})
    return AlertGroup(group_id="g1", group_labels=parsed.group_labels, receiver=ref,
                      alerts=[r.alert for r in records], external_url=parsed.external_url,
                      flushed_at=NOW)


def check_golden(name: str, text: str) -> None:
    """Compare with the reviewed file; NMSTREAM_UPDATE_GOLDEN=1 rewrites it for review."""
    path = GOLDEN / name
    if os.environ.get("NMSTREAM_UPDATE_GOLDEN"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    assert path.read_text() == text, f"{name} differs from the reviewed golden file"


@pytest.mark.parametrize("name", PAYLOADS)
def test_default_templates_match_the_golden_files(name: str) -> None:
    renderer = Renderer()
    stem = name.removesuffix(".json")
    (text,) = renderer.render("slack", choose("slack", None, None), group_of(name))
    check_golden(f"{stem}.nm.default.text.txt", text.body)
    (email,) = renderer.render("email", choose("email", None, None), group_of(name, "email"))
    assert email.subject is not None
    check_golden(f"{stem}.nm.default.subject.txt", email.subject)
    check_golden(f"{stem}.nm.default.html", email.body)
    (hook,) = renderer.render("webhook", choose("webhook", None, None), group_of(name))
    check_golden(f"{stem}.webhook.default.message.json", hook.body)


def test_text_follows_notification_managers_layout() -> None:
    (message,) = Renderer().render("slack", Choice(None, "nm.default.text"),
                                   group_of("alert1.json"))
    lines = message.body.split("\n")
    assert lines[0] == "1 alert for  alertname=KubePodCrashLooping  namespace=pp1 "
    assert lines[1:3] == ["Alerts Firing:", "Labels:"]
    assert "runbook_url" not in message.body
    assert "- message = Pod pp1/dd1-0 (busybox-3jb7u6) is restarting 1.07 times / 5 minutes." in (
        lines)


def test_webhook_message_is_an_alertmanager_webhook_payload() -> None:
    (message,) = Renderer().render("webhook", Choice(None, "webhook.default.message"),
                                   group_of("alert.json"))
    body = json.loads(message.body)
    original = json.loads(payload("alert.json"))
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["groupLabels"] == original["groupLabels"]
    assert body["commonLabels"] == original["commonLabels"]
    assert body["commonAnnotations"] == original["commonAnnotations"]
    assert list(body["commonLabels"]) == [  # in the first alert's order
        k for k in original["alerts"][0]["labels"] if k in original["commonLabels"]]
    assert [a["fingerprint"] for a in body["alerts"]] == [
        a["fingerprint"] for a in original["alerts"]]
    assert body["alerts"][0]["labels"] == original["alerts"][0]["labels"]


def test_user_templates_read_the_webhook_payload_as_a_mapping(tmp_path: Path) -> None:
    (tmp_path / "hook.j2").write_text(
        '{{ webhook_payload.alerts | length }} {{ webhook_payload["commonLabels"].namespace }} '
        '{{ webhook_payload | list | first }} {{ {"wrapped": webhook_payload} | tojson }}')
    group = group_of("alert.json", "webhook")
    (message,) = Renderer([tmp_path]).render("webhook", Choice(None, "hook"), group)
    count, namespace, first_key, wrapped = message.body.split(" ", 3)
    assert (int(count), namespace, first_key) == (len(group.alerts), "kube-system", "version")
    (default,) = Renderer().render("webhook", choose("webhook", None, None), group)
    assert json.loads(wrapped) == {"wrapped": json.loads(default.body)}
    assert list(json.loads(default.body)) == [  # Alertmanager's key order
        "version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels",
        "commonLabels", "commonAnnotations", "externalURL", "alerts"]


def test_resolved_alerts_get_their_own_section() -> None:
    group = group_of("alert1.json")
    resolved = group.alerts[0].model_copy(update={"status": "resolved"})
    mixed = group.model_copy(update={"alerts": [*group_of("alert.json").alerts[:1], resolved]})
    (message,) = Renderer().render("slack", Choice(None, "nm.default.text"), mixed)
    firing_at = message.body.index("Alerts Firing:")
    resolved_at = message.body.index("Alerts Resolved:")
    assert firing_at < message.body.index("CPUThrottlingHigh", firing_at) < resolved_at
    assert "KubePodCrashLooping" in message.body[resolved_at:]


def manager(options: dict[str, Any]) -> NotificationManager:
    result = parse_resource({"apiVersion": "notification.kubesphere.io/v2alpha1",
                             "kind": "NotificationManager", "metadata": {"name": "nm"},
                             "spec": {"receivers": {"options": options}}})
    assert isinstance(result, NotificationManager)
    return result


def receiver_spec(**fields: str) -> Any:
    return parse_resource({"apiVersion": "notification.kubesphere.io/v2alpha1",
                           "kind": "EmailReceiver", "metadata": {"name": "r"},
                           "spec": {"to": ["a@b.c"], **fields}}).spec


def test_template_precedence_receiver_then_channel_then_global_then_default() -> None:
    both = manager({"global": {"template": "g"}, "email": {"template": "e",
                                                           "subjectTemplate": "es"}})
    assert choose("email", receiver_spec(template="r", subjectTemplate="rs"), both) == Choice(
        "rs", "r")
    assert choose("email", receiver_spec(), both) == Choice("es", "e")
    assert choose("email", receiver_spec(), manager({"global": {"template": "g"}})) == Choice(
        "nm.default.subject", "g")
    assert choose("email", receiver_spec(), None) == Choice("nm.default.subject",
                                                            "nm.default.html")
    assert choose("slack", None, manager({"slack": {"template": "s"}})) == Choice(None, "s")
    assert choose("webhook", None, None) == Choice(None, "webhook.default.message")


def test_user_template_directory_overrides_and_reloads(tmp_path: Path) -> None:
    now = [100.0]
    renderer = Renderer([tmp_path], reload_check=1.0, clock=lambda: now[0])
    (tmp_path / "team.text.j2").write_text("{{ alerts | length }} for {{ receiver }}")
    group = group_of("alert.json")
    assert renderer.render("slack", Choice(None, "team.text"), group)[0].body == "9 for golden"
    generation = renderer.generation  # what a render ahead of time is checked against

    time.sleep(0.01)
    (tmp_path / "team.text.j2").write_text("v2: {{ status }}")
    stat = (tmp_path / "team.text.j2").stat()
    os.utime(tmp_path / "team.text.j2", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    now[0] += 0.5  # the file is not looked at again within reload_check
    assert not renderer.changed_since(generation)
    assert renderer.render("slack", Choice(None, "team.text"), group)[0].body == "9 for golden"
    now[0] += 0.5
    assert renderer.changed_since(generation)  # before any render loads it again
    assert renderer.render("slack", Choice(None, "team.text"), group)[0].body == "v2: firing"
    assert renderer.changed_since(generation)
    assert not renderer.changed_since(renderer.generation)

    (tmp_path / "nm.default.text.j2").write_text("overridden {{ alerts | length }}")
    assert renderer.render("slack", Choice(None, "nm.default.text"), group)[0].body == (
        "overridden 9")


@pytest.mark.parametrize(("source", "reason"), [
    ("{{ alerts | length ", "TemplateSyntaxError"),
    ("{{ no_such_variable }}", "UndefinedError"),
    ("{{ alerts.__class__.__mro__ }}", "SecurityError"),
])
def test_broken_templates_raise_a_template_error_naming_them(
    tmp_path: Path, source: str, reason: str
) -> None:
    (tmp_path / "broken.j2").write_text(source)
    with pytest.raises(TemplateError, match=rf"'broken'.*{reason}"):
        Renderer([tmp_path]).render("slack", Choice(None, "broken"), group_of("alert.json"))
    with pytest.raises(TemplateError, match="'missing' not found"):
        Renderer([tmp_path]).render("slack", Choice(None, "missing"), group_of("alert.json"))


@pytest.mark.parametrize("channel", sorted(LIMITS))
def test_groups_over_a_channel_limit_are_split_and_keep_every_alert(channel: str) -> None:
    base = group_of("alert.json")
    many = [a.model_copy(update={"labels": {**a.labels, "n": str(i)}, "fingerprint": f"f{i}"})
            for i in range(300) for a in base.alerts[:1]]
    group = base.model_copy(update={"alerts": many})
    size_limit, measure = LIMITS[channel]
    messages = Renderer().render(channel, Choice(None, "nm.default.text"), group)
    assert len(messages) > 1
    assert all(measure(m.body) <= size_limit for m in messages)
    carried = [a.fingerprint for m in messages for a in m.alerts]
    assert carried == [a.fingerprint for a in many]
    for message in messages:
        for alert in message.alerts:
            assert f"- n = {alert.labels['n']}\n" in message.body


@pytest.mark.parametrize("channel", sorted(LIMITS))
def test_split_messages_are_as_full_as_the_limit_allows(channel: str) -> None:
    """Alerts of very different sizes, one too large alone: every message but the last would
    exceed the limit with the next alert, and the large one goes alone, truncated."""
    base = group_of("alert.json").alerts[0]
    size_limit, measure = LIMITS[channel]
    sizes = [random.Random(i).choice([0, 10, 100, 400]) for i in range(400)]
    sizes[57] = size_limit * 2
    many = [base.model_copy(update={
        "labels": {**base.labels, "n": str(i)}, "fingerprint": f"f{i}",
        "annotations": {"message": "x" * size}}) for i, size in enumerate(sizes)]
    group = group_of("alert.json").model_copy(update={"alerts": many})
    renderer, choice = Renderer(), Choice(None, "nm.default.text")
    messages = renderer.render(channel, choice, group)
    assert [a.fingerprint for m in messages for a in m.alerts] == [a.fingerprint for a in many]
    assert all(measure(m.body) <= size_limit for m in messages)
    (alone,) = [m for m in messages if many[57] in m.alerts]
    assert alone.alerts == (many[57],) and alone.body.endswith("…(truncated)")
    taken = 0
    for message in messages[:-1]:
        taken += len(message.alerts)
        more = renderer.render(channel, choice, group.model_copy(update={
            "alerts": [*message.alerts, many[taken]]}))
        assert len(more) == 2, f"message {messages.index(message)} could take one more alert"


def test_a_single_alert_over_the_limit_is_truncated_not_dropped() -> None:
    base = group_of("alert1.json")
    huge = base.alerts[0].model_copy(update={"annotations": {"message": "x" * 5000}})
    (message,) = Renderer().render("wechat", Choice(None, "nm.default.text"),
                                   base.model_copy(update={"alerts": [huge]}))
    assert len(message.body.encode()) <= 2048
    assert message.body.endswith("…(truncated)")
    assert message.alerts == (huge,)
