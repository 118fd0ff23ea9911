"""Kubernetes manifests: they parse, carry what Kubernetes requires, grant nothing beyond the
read access nmstream needs, reference the CRDs, and declare every nmstream topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from nmstream.config.events import CR_TYPES
from nmstream.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
READ = ["get", "list", "watch"]


def build(directory: Path) -> list[dict[str, Any]]:
    """The objects a kustomization yields (resources followed recursively; patches applied
    the way this repository uses them: JSON-patch ``replace`` of a ConfigMap key)."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    objects: list[dict[str, Any]] = []
    for resource in kustomization["resources"]:
        path = (directory / resource).resolve()
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for patch in kustomization.get("patches", []):
        target = next(o for o in objects if o["kind"] == patch["target"]["kind"]
                      and o["metadata"]["name"] == patch["target"]["name"])
        for op in yaml.safe_load(patch["patch"]):
            assert op["op"] == "replace"
            _, field, key = op["path"].split("/")
            assert key in target[field], f"patch replaces a missing key {op['path']}"
            target[field][key] = op["value"]
    namespace = kustomization.get("namespace")
    for obj in objects:
        if namespace and obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding",
                                             "CustomResourceDefinition"):
            obj["metadata"]["namespace"] = namespace
    return objects


BASE = build(K8S / "base")
STRIMZI = build(K8S / "overlays" / "strimzi")


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def test_every_file_parses_and_every_object_has_the_required_fields() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc, f"{path}: empty document"
            assert doc.get("apiVersion") and doc.get("kind"), path
            if doc["kind"] != "Kustomization":
                assert doc["metadata"]["name"], path


def test_the_crds_are_part_of_the_base() -> None:
    crds = {o["spec"]["names"]["kind"] for o in BASE if o["kind"] == "CustomResourceDefinition"}
    assert crds == {t.kind for t in CR_TYPES}


def test_rbac_grants_read_access_to_exactly_what_nmstream_watches() -> None:
    role = one(BASE, "ClusterRole", "nmstream")
    granted = {(g, r): sorted(rule["verbs"]) for rule in role["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
    expected = {("notification.kubesphere.io", t.plural): READ for t in CR_TYPES}
    expected[("", "secrets")] = READ
    expected[("rbac.authorization.k8s.io", "rolebindings")] = READ
    assert granted == expected
    assert not [o for o in BASE if o["kind"] in ("Role", "RoleBinding")]
    binding = one(BASE, "ClusterRoleBinding", "nmstream")
    assert binding["roleRef"]["name"] == "nmstream"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "nmstream",
                                    "namespace": "kubesphere-monitoring-system"}]


def test_deployment_runs_the_worker_safely_with_probes_and_limits() -> None:
    deployment = one(BASE, "Deployment", "nmstream")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "nmstream"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["ports"] == [{"name": "webhook", "containerPort": 19093}]
    assert container["args"][0] == "worker"
    settings_map = container["envFrom"][0]["configMapRef"]["name"]
    data = one(BASE, "ConfigMap", settings_map)["data"]
    assert data["NMSTREAM_BROKER"].startswith("kafka://")
    Settings.model_validate({k.removeprefix("NMSTREAM_").lower(): v for k, v in data.items()})
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/var/lib/nmstream", "/tmp"} <= mounts  # writable places on a read-only root
    assert data["NMSTREAM_DATA_DIR"].startswith("/var/lib/nmstream")
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert one(BASE, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector


def test_service_keeps_notification_managers_name_and_port() -> None:
    service = one(BASE, "Service", "notification-manager-svc")
    assert service["metadata"]["namespace"] == "kubesphere-monitoring-system"
    assert service["spec"]["ports"][0]["port"] == 19093
    deployment = one(BASE, "Deployment", "nmstream")
    assert service["spec"]["selector"] == deployment["spec"]["template"]["metadata"]["labels"]


@pytest.fixture(scope="module")
def topic_specs() -> dict[str, Any]:
    """The topics a worker with the overlay's settings declares."""
    import os
    import subprocess
    import sys

    data = one(STRIMZI, "ConfigMap", "nmstream-settings")["data"]
    code = ("import json; from nmstream.topics import guard; print(json.dumps({s.name: "
            "[s.partitions, s.compacted] for s in guard.specs}))")
    env = {**os.environ, **{k: v for k, v in data.items() if k != "NMSTREAM_KUBERNETES"}}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=60)
    specs: dict[str, Any] = yaml.safe_load(out.stdout)
    return specs


def test_strimzi_overlay_declares_every_topic_as_nmstream_does(
    topic_specs: dict[str, Any]
) -> None:
    data = one(STRIMZI, "ConfigMap", "nmstream-settings")["data"]
    assert data["NMSTREAM_BROKER"] == (
        "kafka://nmstream-kafka-bootstrap.kubesphere-monitoring-system.svc:9092")
    kafka = one(STRIMZI, "Kafka", "nmstream")
    assert kafka["spec"]["kafka"]["config"]["auto.create.topics.enable"] is False
    topics = {o["metadata"]["name"]: o for o in STRIMZI if o["kind"] == "KafkaTopic"}
    assert set(topics) == set(topic_specs)
    for name, (partitions, compacted) in topic_specs.items():
        spec = topics[name]["spec"]
        assert spec["partitions"] == partitions, name
        assert (spec["config"].get("cleanup.policy") == "compact") is compacted, name
        assert topics[name]["metadata"]["labels"]["strimzi.io/cluster"] == "nmstream"
