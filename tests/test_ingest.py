"""Ingest through a running worker and the real embedded broker."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from nmstream.broker import EmbeddedBroker
from tests.helpers import Worker, make_worker, payload, read_topic

PAYLOADS = {
    "alert.json": 9,
    "alert1.json": 1,
    "alerts-without-namespace.json": 1,
    "alert-auditing.json": 6,
}
SMALL_LIMIT = 64 * 1024


@pytest.fixture(scope="module")
def worker(broker: EmbeddedBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """A worker shared by the tests of this module, with a small body limit."""
    prefix = f"m{uuid.uuid4().hex[:10]}"
    w = make_worker(
        broker,
        tmp_path_factory.mktemp("ingest"),
        prefix,
        NMSTREAM_MAX_BODY_BYTES=str(SMALL_LIMIT),
    )
    w.start()
    yield w
    w.stop()


def alerts_topic(worker: Worker) -> str:
    return f"{worker.env['NMSTREAM_TOPIC_PREFIX']}-alerts"


def metric(worker: Worker, name: str, labels: str = "") -> float:
    """A sample's value from the worker's /metrics."""
    text = worker.get("/metrics").text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.M)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_every_testdata_alert_lands_on_the_alerts_topic(worker: Worker) -> None:
    sent: dict[str, dict[str, str]] = {}
    for name, count in PAYLOADS.items():
        response = worker.post("/api/v2/alerts", payload(name))
        assert response.status_code == 200, response.text
        assert response.json()["alerts"] == count
        for alert in json.loads(payload(name))["alerts"]:
            sent[json.dumps(alert["labels"], sort_keys=True)] = alert

    records = read_topic(worker.broker, alerts_topic(worker), expect=len(sent))
    assert len(records) == sum(PAYLOADS.values()) == len(sent)
    by_labels = {json.dumps(r["value"]["alert"]["labels"], sort_keys=True): r for r in records}
    assert by_labels.keys() == sent.keys()
    for labels, original in sent.items():
        record = by_labels[labels]
        value = record["value"]
        assert value["schema_version"] == 1
        assert record["key"] == value["fingerprint"] == value["alert"]["fingerprint"]
        assert value["alert"]["annotations"] == original["annotations"]
        assert value["alert"]["status"] == original["status"]
        if "fingerprint" in original:
            assert value["fingerprint"] == original["fingerprint"]
            assert value["fingerprint_source"] == "sender"
        else:
            assert value["fingerprint_source"] == "computed"
            assert re.fullmatch(r"[0-9a-f]{16}", value["fingerprint"])
        assert value["received_at"]

    source = json.loads(payload("alert.json"))
    full = next(r["value"] for r in records if r["value"]["alert"]["labels"].get("pod", "").
                startswith("calico-kube-controllers"))
    for field in ("groupLabels", "commonLabels", "commonAnnotations", "externalURL", "receiver",
                  "status"):
        assert full["group"][field] == source[field]
    minimal = next(r["value"] for r in records if r["value"]["alert"]["labels"].get("alerttype"))
    assert minimal["group"]["receiver"] is None
    assert minimal["group"]["commonLabels"]["alerttype"] == "auditing"


def test_one_alerts_updates_share_a_key_and_partition(worker: Worker) -> None:
    labels = {"alertname": "KeyOrder", "namespace": "ns-order", "run": uuid.uuid4().hex}
    statuses = ["firing", "firing", "resolved"]
    for status in statuses:
        body = json.dumps({"alerts": [{"status": status, "labels": labels}]}).encode()
        assert worker.post("/api/v2/alerts", body).status_code == 200
    records = [
        r for r in read_topic(worker.broker, alerts_topic(worker), expect=1)
        if r["value"]["alert"]["labels"] == labels
    ]
    assert [r["value"]["alert"]["status"] for r in records] == statuses
    assert len({(r["key"], r["partition"]) for r in records}) == 1
    assert [r["offset"] for r in records] == sorted(r["offset"] for r in records)


def test_postable_alerts_array_with_status_from_ends_at(worker: Worker) -> None:
    run = uuid.uuid4().hex
    body = json.dumps([
        {"labels": {"alertname": "Ended", "run": run}, "endsAt": "2020-01-01T00:00:00Z"},
        {"labels": {"alertname": "Ongoing", "run": run}, "endsAt": "2999-01-01T00:00:00Z"},
    ]).encode()
    response = worker.post("/api/v2/alerts", body)
    assert response.status_code == 200, response.text
    records = [
        r["value"] for r in read_topic(worker.broker, alerts_topic(worker), expect=1)
        if r["value"]["alert"]["labels"].get("run") == run
    ]
    status = {r["alert"]["labels"]["alertname"]: r["alert"]["status"] for r in records}
    assert status == {"Ended": "resolved", "Ongoing": "firing"}


BAD_INPUTS = [
    pytest.param(b'{"alerts": [', 400, "malformed JSON", None, id="invalid-json"),
    pytest.param(b"", 400, "empty request body", None, id="empty-body"),
    pytest.param(b'{"receiver": "x"}', 400, "alerts", "alerts", id="missing-alerts"),
    pytest.param(b'{"alerts": []}', 400, "alerts", "alerts", id="empty-alerts"),
    pytest.param(b'{"alerts": {"labels": {}}}', 400, "alerts", "alerts", id="alerts-not-list"),
    pytest.param(b'{"alerts": [{"labels": {"a": 1}}]}', 400, "alerts.0.labels.a",
                 "alerts.0.labels.a", id="label-not-string"),
    pytest.param(b'{"alerts": [{"annotations": {}}]}', 400, "alerts.0.labels",
                 "alerts.0.labels", id="missing-labels"),
    pytest.param(b'{"alerts": [{"labels": {"a": "b"}, "status": "burning"}]}', 400,
                 "alerts.0.status", "alerts.0.status", id="bad-status"),
    pytest.param(b'{"alerts": [{"labels": {"a": "b"}, "startsAt": "yesterday"}]}', 400,
                 "alerts.0.startsAt", "alerts.0.startsAt", id="bad-time"),
    pytest.param(b'{"alerts": [{"labels": {"a": "b"}}], "groupLabels": []}', 400,
                 "groupLabels", "groupLabels", id="bad-group-labels"),
    pytest.param(b"[]", 400, "(body)", "(body)", id="empty-array"),
    pytest.param(b'"alerts"', 400, "(body)", "(body)", id="json-string"),
]


@pytest.mark.parametrize(("body", "status", "mentions", "field"), BAD_INPUTS)
def test_bad_input_gets_a_json_4xx_naming_the_problem(
    worker: Worker, body: bytes, status: int, mentions: str, field: str | None
) -> None:
    before = metric(worker, "nmstream_ingest_requests_total", '{outcome="bad_request"}')
    response = worker.post("/api/v2/alerts", body, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    error = response.json()
    assert mentions in error["error"]
    if field is not None:
        assert field in [e["field"] for e in error["errors"]]
    after = metric(worker, "nmstream_ingest_requests_total", '{outcome="bad_request"}')
    assert after == before + 1
    assert worker.get("/-/healthy").status_code == 200


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversize_body_is_413_and_the_worker_keeps_serving(worker: Worker, chunked: bool) -> None:
    alert = {"labels": {"alertname": "Big", "pad": "x" * 1000}}
    body = json.dumps({"alerts": [alert] * (SMALL_LIMIT // 1000 + 5)}).encode()
    assert len(body) > SMALL_LIMIT
    data = iter([body[i : i + 4096] for i in range(0, len(body), 4096)]) if chunked else body
    response = worker.post("/api/v2/alerts", data)
    assert response.status_code == 413
    assert response.json()["limit"] == SMALL_LIMIT
    assert worker.post("/api/v2/alerts", payload("alert1.json")).status_code == 200


def test_nothing_from_bad_requests_reaches_kafka(worker: Worker) -> None:
    marker = uuid.uuid4().hex
    bad = json.dumps({"alerts": [{"labels": {"m": marker}}, {"labels": {"m": 5}}]}).encode()
    assert worker.post("/api/v2/alerts", bad).status_code == 400
    good = json.dumps({"alerts": [{"labels": {"m": marker, "ok": "yes"}}]}).encode()
    assert worker.post("/api/v2/alerts", good).status_code == 200
    mine = [
        r for r in read_topic(worker.broker, alerts_topic(worker), expect=1)
        if r["value"]["alert"]["labels"].get("m") == marker
    ]
    assert [r["value"]["alert"]["labels"] for r in mine] == [{"m": marker, "ok": "yes"}]


def test_metrics_count_requests_alerts_and_produce_latency(worker: Worker) -> None:
    accepted = metric(worker, "nmstream_ingest_requests_total", '{outcome="accepted"}')
    ingested = metric(worker, "nmstream_alerts_ingested_total")
    observed = metric(worker, "nmstream_ingest_produce_seconds_count")
    assert worker.post("/api/v2/alerts", payload("alert.json")).status_code == 200
    assert metric(worker, "nmstream_ingest_requests_total", '{outcome="accepted"}') == accepted + 1
    assert metric(worker, "nmstream_alerts_ingested_total") == ingested + 9
    assert metric(worker, "nmstream_ingest_produce_seconds_count") == observed + 1
    assert metric(worker, "nmstream_ingest_requests_total", '{outcome="unavailable"}') == 0
    ready = worker.get("/-/ready")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"broker": "ok", "topics": "ok", "assignment": "ok"}
    assert "event loop: uvloop.Loop" in worker.log_text()  # NMSTREAM_EVENT_LOOP's default


def test_unknown_paths_and_methods_are_refused(worker: Worker) -> None:
    assert worker.get("/api/v2/alerts").status_code == 405
    assert worker.get("/table/").status_code == 404
    assert worker.get("/stats/").status_code == 404


def test_worker_restart_loses_and_duplicates_nothing(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    """Posts before a clean stop, before a kill -9 and after: the topic has each exactly once."""
    import signal

    def post_batch(w: Worker, tag: str) -> set[str]:
        alerts = [{"labels": {"alertname": "Restart", "batch": tag, "n": str(i)}}
                  for i in range(50)]
        response = w.post("/api/v2/alerts", json.dumps({"alerts": alerts}).encode())
        assert response.status_code == 200, response.text
        return {f"{tag}-{i}" for i in range(50)}

    expected: set[str] = set()
    w = make_worker(broker, tmp_path, prefix).start()
    expected |= post_batch(w, "before-term")
    assert w.stop(signal.SIGTERM) == 0
    w = make_worker(broker, tmp_path, prefix).start()
    expected |= post_batch(w, "before-kill")
    w.stop(signal.SIGKILL)
    w = make_worker(broker, tmp_path, prefix).start()
    expected |= post_batch(w, "after")
    w.stop()

    records = read_topic(broker, f"{prefix}-alerts", expect=len(expected))
    got = [f"{r['value']['alert']['labels']['batch']}-{r['value']['alert']['labels']['n']}"
           for r in records]
    assert len(got) == len(expected) == 150
    assert set(got) == expected
