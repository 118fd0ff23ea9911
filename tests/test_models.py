"""Payload models, fingerprints and settings, without a broker."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from nmstream.ingest.models import (
    Alert,
    AlertRecord,
    GroupContext,
    WebhookPayload,
    encode_records,
    label_fingerprint,
)
from nmstream.settings import Settings, SettingsError, get_settings
from tests.helpers import TESTDATA, payload

NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "name", ["alert.json", "alert1.json", "alerts-without-namespace.json"]
)
def test_computed_fingerprint_equals_alertmanagers(name: str) -> None:
    alerts = json.loads(payload(name))["alerts"]
    assert alerts
    for alert in alerts:
        assert label_fingerprint(alert["labels"]) == alert["fingerprint"]


def test_fingerprint_depends_on_every_label_but_not_on_order() -> None:
    base = {"alertname": "A", "namespace": "n"}
    assert label_fingerprint(base) == label_fingerprint(dict(reversed(base.items())))
    assert label_fingerprint(base) != label_fingerprint({**base, "pod": "p"})
    assert label_fingerprint({"a": "bc"}) != label_fingerprint({"ab": "c"})


@pytest.mark.parametrize("name", sorted(p.name for p in TESTDATA.glob("*.json")))
def test_the_fast_encoder_writes_exactly_the_alert_records(name: str) -> None:
    """Ingest serialises the request's fields once (``encode_records``); the bytes must be the
    records' own, or consumers would read something other than the documented schema."""
    try:
        parsed = WebhookPayload.model_validate_json(payload(name))
    except ValidationError:
        pytest.skip(f"{name} is not a webhook payload")
    context = GroupContext.model_validate_json(payload(name))  # the fields but the alerts
    expected = [AlertRecord.build(a, context, "req-1", NOW) for a in parsed.alerts]
    # ingest passes the whole payload as the group: its alerts must be left out
    encoded = encode_records(parsed.alerts, parsed, "req-1", NOW)
    assert [(key, value) for key, value, _ in encoded] == [
        (r.fingerprint.encode(), r.to_bytes()) for r in expected]
    assert [AlertRecord.model_validate_json(v) for _, v, _ in encoded] == expected
    # what the router is handed is what it would decode
    assert [received for _, _, received in encoded] == [r.received() for r in expected]


def test_the_fast_encoder_escapes_fingerprints_that_are_not_hex() -> None:
    odd = ['a"b\\c', "naïve", "tab\there", "ok-1", "CAFE01"]
    alerts = [Alert(labels={"alertname": "A", "n": str(i)}, fingerprint=fp, status=status)
              for i, fp in enumerate(odd) for status in ("firing", "resolved")]
    expected = [AlertRecord.build(a, GroupContext(), "req", NOW) for a in alerts]
    encoded = encode_records(alerts, GroupContext(), "req", NOW)
    assert [(key, value) for key, value, _ in encoded] == [
        (r.fingerprint.encode(), r.to_bytes()) for r in expected]
    assert [received for _, _, received in encoded] == [
        AlertRecord.model_validate_json(value).received() for _, value, _ in encoded]
    assert [r.fingerprint for r in expected] == [fp for fp in odd for _ in range(2)]


def test_minimal_sender_alerts_get_distinct_computed_fingerprints() -> None:
    parsed = WebhookPayload.model_validate_json(payload("alert-auditing.json"))
    records = [AlertRecord.build(a, GroupContext(), "r", NOW) for a in parsed.alerts]
    assert {r.fingerprint_source for r in records} == {"computed"}
    assert len({r.fingerprint for r in records}) == len(records) == 6


@pytest.mark.parametrize(
    ("alert", "status"),
    [
        ({"labels": {"a": "b"}}, "firing"),
        ({"labels": {"a": "b"}, "endsAt": "0001-01-01T00:00:00Z"}, "firing"),
        ({"labels": {"a": "b"}, "endsAt": "2025-12-31T23:59:59Z"}, "resolved"),
        ({"labels": {"a": "b"}, "endsAt": "2026-01-01T00:00:01Z"}, "firing"),
        ({"labels": {"a": "b"}, "status": "resolved", "endsAt": "2999-01-01T00:00:00Z"},
         "resolved"),
    ],
)
def test_status_is_the_senders_or_follows_ends_at(alert: dict[str, object], status: str) -> None:
    parsed = WebhookPayload.model_validate({"alerts": [alert]})
    record = AlertRecord.build(parsed.alerts[0], GroupContext(), "r", NOW)
    assert record.alert.status == status


def test_record_keeps_alertmanager_field_names_on_the_wire() -> None:
    parsed = WebhookPayload.model_validate_json(payload("alert1.json"))
    context = GroupContext.model_validate_json(payload("alert1.json"))
    record = AlertRecord.build(parsed.alerts[0], context, "req", NOW)
    wire = json.loads(record.to_bytes())
    assert set(wire) == {"schema_version", "fingerprint", "fingerprint_source", "request_id",
                         "received_at", "alert", "group"}
    assert {"startsAt", "endsAt", "generatorURL", "fingerprint"} <= set(wire["alert"])
    assert {"groupLabels", "commonLabels", "commonAnnotations", "externalURL"} <= set(
        wire["group"])
    assert "alerts" not in wire["group"]
    assert AlertRecord.model_validate_json(record.to_bytes()) == record


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9092", "kafka://127.0.0.1:9092"),
        ("kafka://a:1;kafka://b:2", "kafka://a:1;kafka://b:2"),
        ("a:1,b:2", "kafka://a:1;kafka://b:2"),
    ],
)
def test_broker_setting_accepts_host_port_lists(value: str, expected: str) -> None:
    assert Settings(broker=value).broker == expected


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NMSTREAM_BROKER", "no-port"),
        ("NMSTREAM_WEB_PORT", "http"),
        ("NMSTREAM_WEB_PORT", "70000"),
        ("NMSTREAM_PARTITIONS", "0"),
        ("NMSTREAM_TOPIC_PREFIX", "bad prefix"),
        ("NMSTREAM_EVENT_LOOP", "trio"),
    ],
)
def test_invalid_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match=variable):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_settings_reject_out_of_range_values() -> None:
    with pytest.raises(ValidationError):
        Settings(produce_timeout=-1)
