"""Directory mode → nmstream-config → every worker's receivers view, on the real broker."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path

import yaml

from nmstream.broker import EmbeddedBroker
from tests.helpers import (
    EXAMPLE_RECEIVERS,
    EXAMPLES,
    Worker,
    make_worker,
    names,
    read_topic,
    receivers,
    usable,
    wait_for,
    wait_until,
    wait_usable,
)


def examples_worker(broker: EmbeddedBroker, tmp_path: Path, prefix: str) -> tuple[Worker, Path]:
    """A ready worker following a copy of ``examples/``, and that copy."""
    directory = tmp_path / "config"
    shutil.copytree(EXAMPLES, directory)
    worker = make_worker(broker, tmp_path, prefix, NMSTREAM_CONFIG_DIR=str(directory)).start()
    return worker, directory


def test_examples_become_the_view_and_follow_edits(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    worker, directory = examples_worker(broker, tmp_path, prefix)
    try:
        body = wait_for(worker, lambda b: usable(b, EXAMPLE_RECEIVERS))
        assert body["tenantKey"] == "namespace"
        by_name = {r["name"]: r for r in body["receivers"]}
        assert by_name["global-email-receiver"]["scope"] == "global"
        assert by_name["global-email-receiver"]["config"] == "default-email-config"
        assert by_name["kube-system-slack-receiver"]["tenant"] == "kube-system"
        assert by_name["kube-system-slack-receiver"]["config"] == "default-slack-config"
        assert by_name["global-webhook-receiver"]["problem"] is None
        assert "example-password" not in str(body)
        assert names(receivers(worker, "kube-system")) == {"kube-system-slack-receiver"}
        # receivers read before their Secrets at start were never reported broken
        time.sleep(1.0)  # the view reports half a second after the last change
        assert "cannot send" not in worker.log_text()

        # add a file
        (directory / "team.yaml").write_text(yaml.safe_dump({
            "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "WebhookReceiver",
            "metadata": {"name": "team-a-webhook", "labels": {"type": "tenant",
                                                              "namespace": "team-a"}},
            "spec": {"url": "http://127.0.0.1:18080/team-a"},
        }))
        wait_for(worker, lambda b: "team-a-webhook" in names(b))
        assert names(receivers(worker, "team-a")) == {"team-a-webhook"}

        # edit it
        text = (directory / "team.yaml").read_text().replace("/team-a", "/team-a-v2")
        (directory / "team.yaml").write_text(text)
        wait_for(worker, lambda b: any(r["spec"].get("url", "").endswith("/team-a-v2")
                                       for r in b["receivers"]))

        # an invalid resource is reported with its field; the rest keeps working
        (directory / "broken.yaml").write_text(yaml.safe_dump({
            "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "EmailConfig",
            "metadata": {"name": "broken-email", "labels": {"type": "default"}},
            "spec": {"from": "x@example.org"},
        }))
        body = wait_for(worker, lambda b: "EmailConfig//broken-email" in b["problems"])
        assert "smartHost" in body["problems"]["EmailConfig//broken-email"]
        assert names(body) == EXAMPLE_RECEIVERS | {"team-a-webhook"}

        # a missing secret disables that receiver only, with the reason, until it appears
        secrets = (directory / "secrets.yaml").read_text()
        (directory / "secrets.yaml").write_text(secrets.replace("default-slack-secret",
                                                                "renamed-slack-secret"))
        body = wait_for(worker, lambda b: any(r["problem"] for r in b["receivers"]))
        problems = {r["name"]: r["problem"] for r in body["receivers"] if r["problem"]}
        assert problems == {"kube-system-slack-receiver": "secret kubesphere-monitoring-system/"
                                                          "default-slack-secret not found"}
        wait_until(lambda: "receiver SlackReceiver/kube-system-slack-receiver cannot send" in (
            worker.log_text()), "the missing secret logged")
        (directory / "secrets.yaml").write_text(secrets)
        wait_for(worker, lambda b: not any(r["problem"] for r in b["receivers"]))

        # delete a file
        (directory / "team.yaml").unlink()
        wait_for(worker, lambda b: names(b) == EXAMPLE_RECEIVERS)
    finally:
        worker.stop()


def test_topic_carries_tombstones_and_never_secret_values(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    worker, directory = examples_worker(broker, tmp_path, prefix)
    try:
        wait_for(worker, lambda b: names(b) == EXAMPLE_RECEIVERS)
        (directory / "receivers.yaml").unlink()
        wait_for(worker, lambda b: names(b) == set())
    finally:
        worker.stop()
    records = read_topic(broker, f"{prefix}-config", expect=1, raw=True)
    keys = [r["key"] for r in records]
    assert "Secret/kubesphere-monitoring-system/default-email-secret" in keys
    tombstones = {r["key"] for r in records if r["value"] is None}
    assert tombstones == {f"{kind}//{name}" for kind, name in [
        ("EmailReceiver", "global-email-receiver"), ("WebhookReceiver", "global-webhook-receiver"),
        ("SlackReceiver", "kube-system-slack-receiver"),
        ("EmailReceiver", "auditing-email-receiver")]}
    everything = b"".join(r["value"] or b"" for r in records)
    for secret in (b"example-password", b"xoxb-example-token", b"example-appsecret"):
        assert secret not in everything
    import base64
    assert base64.b64encode(b"example-password") not in everything


def test_two_workers_see_the_same_receivers_and_a_restart_loses_no_update(
    broker: EmbeddedBroker, tmp_path: Path, prefix: str
) -> None:
    directory = tmp_path / "config"
    shutil.copytree(EXAMPLES, directory)
    first = make_worker(broker, tmp_path / "a", prefix, NMSTREAM_CONFIG_DIR=str(directory))
    second = make_worker(broker, tmp_path / "b", prefix, NMSTREAM_CONFIG_DIR=str(directory))
    first.start()
    second.start()
    try:
        for w in (first, second):
            wait_usable(w, EXAMPLE_RECEIVERS, timeout=40)
        # 60 more receivers, one file each, then compare both views
        for i in range(60):
            (directory / f"r{i}.yaml").write_text(yaml.safe_dump({
                "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "WebhookReceiver",
                "metadata": {"name": f"bulk-{i}", "labels": {"type": "global"}},
                "spec": {"url": f"http://127.0.0.1:18080/{i}"},
            }))
        expected = EXAMPLE_RECEIVERS | {f"bulk-{i}" for i in range(60)}
        views = [wait_for(w, lambda b: names(b) == expected, timeout=40) for w in (first, second)]
        assert views[0]["receivers"] == views[1]["receivers"]

        # kill -9 one worker, restart it: its view is rebuilt from the topic exactly
        second.stop(signal.SIGKILL)
        second.start()
        rebuilt = wait_for(second, lambda b: b["synced"], timeout=40)
        assert names(rebuilt) == expected
    finally:
        first.stop()
        second.stop()
