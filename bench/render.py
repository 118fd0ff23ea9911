"""Rendering an alert storm: one group of N alerts for each chat channel with a size limit.

A group over a channel's limit is split into messages holding as many whole alerts as fit;
this prints, per channel, how many messages that makes and how long the split takes (the
worker's event loop is busy meanwhile). Groups that large need a NotificationManager whose
``batchMaxSize`` is raised from its default of 100.

    python bench/render.py [--alerts 5000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time

from common import make_alerts, webhook_body

from nmstream.ingest.models import WebhookPayload, encode_records, utcnow
from nmstream.render.engine import LIMITS, Renderer, choose
from nmstream.routing.models import AlertGroup, ReceiverRef

KINDS = {"slack": "Slack", "dingtalk": "DingTalk", "wechat": "Wechat"}


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
    """Print messages and milliseconds per channel (best of ``--repeat``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    renderer = Renderer()
    print(f"one group of {args.alerts} alerts, default templates")
    print(f"{'channel':10} {'limit':>7} {'messages':>9} {'ms':>8}")
    for channel in sorted(KINDS):
        group, choice = storm(args.alerts, channel), choose(channel, None, None)
        best = float("inf")
        for _ in range(args.repeat):
            started = time.perf_counter()
            messages = renderer.render(channel, choice, group)
            best = min(best, time.perf_counter() - started)
        print(f"{channel:10} {LIMITS[channel][0]:>7} {len(messages):>9} {best * 1000:>8.0f}")


if __name__ == "__main__":
    main()
