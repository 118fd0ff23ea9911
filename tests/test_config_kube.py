"""Kubernetes mode end to end: the loopback API server → watcher → nmstream-config → view."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from nmstream.broker import EmbeddedBroker
from tests.helpers import (
    EXAMPLE_RECEIVERS,
    EXAMPLES,
    make_worker,
    names,
    read_topic,
    wait_for,
    wait_until,
    wait_usable,
)
from tests.kube_server import KubeServer


@pytest.fixture
def cluster() -> Iterator[KubeServer]:
    server = KubeServer().start()
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            server.apply(doc)
    yield server
    server.stop()


def kubeconfig(path: Path, server: KubeServer) -> Path:
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "loop",
        "clusters": [{"name": "loop", "cluster": {"server": server.url}}],
        "contexts": [{"name": "loop", "context": {"cluster": "loop", "user": "loop"}}],
        "users": [{"name": "loop", "user": {"token": "test-token"}}],
    }))
    return path


def receiver(name: str, namespace: str) -> dict[str, object]:
    return {"apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "WebhookReceiver",
            "metadata": {"name": name, "labels": {"type": "tenant", "namespace": namespace}},
            "spec": {"url": f"http://127.0.0.1:18080/{name}"}}


def test_cluster_changes_reach_the_view_through_the_config_topic(
    broker: EmbeddedBroker, cluster: KubeServer, tmp_path: Path, prefix: str
) -> None:
    worker = make_worker(
        broker, tmp_path, prefix, NMSTREAM_KUBERNETES="true",
        KUBECONFIG=str(kubeconfig(tmp_path / "kubeconfig", cluster)),
    ).start()
    try:
        wait_usable(worker, EXAMPLE_RECEIVERS)

        cluster.apply(receiver("team-a", "team-a"))
        wait_for(worker, lambda b: "team-a" in names(b))
        assert names(wait_for(worker, lambda b: True, tenant="team-a")) == {"team-a"}

        cluster.delete("WebhookReceiver", "team-a")
        wait_for(worker, lambda b: "team-a" not in names(b))

        # rotate a secret: a new record with a new digest, never the value
        cluster.apply({"apiVersion": "v1", "kind": "Secret",
                       "metadata": {"name": "default-email-secret",
                                    "namespace": "kubesphere-monitoring-system"},
                       "stringData": {"password": "rotated-password"}})
        wait_until(lambda: len(secret_digests(broker, prefix)) == 2, "the rotated digest")

        # cut off: changes and a compacted history while the watch is down → re-list
        cluster.stop()
        cluster.delete("EmailReceiver", "auditing-email-receiver")
        cluster.apply(receiver("team-b", "team-b"))
        cluster.expire_history()
        cluster.start()
        expected = (EXAMPLE_RECEIVERS - {"auditing-email-receiver"}) | {"team-b"}
        wait_for(worker, lambda b: names(b) == expected, timeout=30)
        assert any("watch=" not in r and "emailreceivers" in r for r in cluster.requests[-60:])
    finally:
        worker.stop()

    assert len(secret_digests(broker, prefix)) == 2
    records = read_topic(broker, f"{prefix}-config", expect=1, raw=True)
    everything = b"".join(r["value"] or b"" for r in records)
    assert b"rotated-password" not in everything and b"example-password" not in everything


def secret_digests(broker: EmbeddedBroker, prefix: str) -> set[str]:
    """The distinct digests of the example email secret's password on the config topic."""
    records = read_topic(broker, f"{prefix}-config", expect=1, settle=0.2, raw=True)
    key = "Secret/kubesphere-monitoring-system/default-email-secret"
    return {json.loads(r["value"])["dataDigest"]["password"]
            for r in records if r["key"] == key and r["value"]}
