"""What a large cluster and an alert storm cost: the receivers view, routing, and rendering.

- **Receivers view**: ``--tenants`` tenant webhook receivers, each with a config of its tenant,
  as the watcher publishes them; then how long the view takes to rebuild its snapshot and to
  report the receivers that cannot send (it does both after every change, on the worker's event
  loop).
- **Routing**: receiver selection for one alert of one tenant, with all those receivers, and
  the lookup of the NotificationManager in force.
- **Storm**: one group of ``--alerts`` alerts for each chat channel with a size limit, split
  into messages holding as many whole alerts as fit (groups that large need a
  NotificationManager whose ``batchMaxSize`` is raised from its default of 100).

    python bench/scale.py [--tenants 5000] [--alerts 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from typing import Any

from common import make_alerts, tenant_namespace, webhook_body

from nmstream.config.selection import select
from nmstream.config.view import ConfigView
from nmstream.ingest.models import WebhookPayload, encode_records, utcnow
from nmstream.render.engine import LIMITS, Renderer, choose
from nmstream.routing.models import AlertGroup, ReceiverRef

API = "notification.kubesphere.io/v2alpha1"
KINDS = {"slack": "Slack", "dingtalk": "DingTalk", "wechat": "Wechat"}


def best(repeat: int, run: Callable[[], Any]) -> float:
    """The fastest of ``repeat`` runs, in seconds."""
    fastest = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        fastest = min(fastest, time.perf_counter() - started)
    return fastest


def cluster(tenants: int) -> ConfigView:
    """A view holding a NotificationManager, a default webhook config, a global receiver and
    ``tenants`` tenant receivers with a config each."""
    view = ConfigView()

    def put(kind: str, name: str, labels: dict[str, str], spec: dict[str, Any]) -> None:
        view.apply(f"{kind}//{name}", json.dumps({
            "apiVersion": API, "kind": kind, "metadata": {"name": name, "labels": labels},
            "spec": spec}).encode())

    put("NotificationManager", "nm", {}, {"receivers": {"tenantKey": "namespace"}})
    put("WebhookConfig", "default", {"type": "default"}, {})
    put("WebhookReceiver", "global", {"type": "global"}, {"url": "http://127.0.0.1:9/"})
    for i in range(tenants):
        namespace = tenant_namespace(i)
        labels = {"type": "tenant", "namespace": namespace}
        put("WebhookReceiver", namespace, labels, {
            "url": "http://127.0.0.1:9/",
            "webhookConfigSelector": {"matchLabels": {"namespace": namespace}}})
        put("WebhookConfig", namespace, labels, {})
    return view


def storm(alerts: int, channel: str) -> AlertGroup:
    """One group of ``alerts`` benchmark alerts for a receiver of ``channel``."""
    payload = WebhookPayload.model_validate_json(webhook_body(make_alerts(alerts, 1)))
    records = encode_records(list(payload.alerts), payload, "bench", utcnow())
    kind = KINDS[channel]
    receiver = ReceiverRef(kind=f"{kind}Receiver", name="storm", channel=channel, tenant=None,
                           config_kind=f"{kind}Config", config_name="storm", targets={})
    return AlertGroup(group_id="storm", group_labels={"alertname": "BenchAlert00000"},
                      receiver=receiver, alerts=[r.alert for _, _, r in records],
                      received_at=utcnow(), flushed_at=utcnow())


def main() -> None:
    """Print the figures (best of ``--repeat``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tenants", type=int, default=5000)
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    view, labels = cluster(args.tenants), {"alertname": "A", "namespace": tenant_namespace(7)}
    assert [s.receiver.metadata.name for s in select(labels, view.snapshot()).selected] == [
        "global", tenant_namespace(7)]

    def changed() -> None:
        view.version += 1  # as any change does: the next read rebuilds the snapshot
        select(labels, view.snapshot())

    print(f"receivers view, {args.tenants} tenant receivers with a config each:")
    print(f"  first alert routed after a change  {best(args.repeat, changed) * 1000:8.1f} ms")
    print(f"  report of what cannot send         {best(args.repeat, view.report) * 1000:8.1f} ms")
    snapshot = view.snapshot()
    per_alert = best(args.repeat, lambda: [select(labels, snapshot) for _ in range(1000)])
    print(f"  routing an alert, then             {per_alert * 1000:8.1f} µs")
    lookup = best(args.repeat, lambda: [view.manager() for _ in range(1000)])
    print(f"  the NotificationManager in force   {lookup * 1000:8.2f} µs"
          " (asked by every render, send and history record)")

    renderer = Renderer()
    print(f"storm: one group of {args.alerts} alerts, default templates")
    print(f"  {'channel':10} {'limit':>7} {'messages':>9} {'ms':>8}")
    for channel in sorted(KINDS):
        group, choice = storm(args.alerts, channel), choose(channel, None, None)
        messages = renderer.render(channel, choice, group)
        took = best(args.repeat, functools.partial(renderer.render, channel, choice, group))
        print(f"  {channel:10} {LIMITS[channel][0]:>7} {len(messages):>9} {took * 1000:>8.0f}")


if __name__ == "__main__":
    main()
