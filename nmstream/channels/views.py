"""``POST /api/v2/verify``: send a test notification through a receiver, answer the outcome.

Like notification-manager's verify API: the body names a configured receiver
(``{"receiver": "name", "kind": "WebhookReceiver"}``, kind optional when the name is unique)
or carries unsaved custom resources (``{"receiver": {...}, "config": {...}}``) to try before
applying them. Secrets are resolved from this worker's store. 200 when delivered; 502 with
the reason when the channel refused or failed; 4xx for a bad request.
"""

from __future__ import annotations

import json
from typing import Any

from faust.web import Request, Response, View
from pydantic import ValidationError

from nmstream.app import app
from nmstream.channels.agents import deliver
from nmstream.config.agents import state
from nmstream.config.models import RECEIVER_KINDS, parse_resource
from nmstream.config.selection import Selected, channel_of, receiver_scope, usable_config
from nmstream.ingest.models import Alert, utcnow
from nmstream.render.agents import notifications
from nmstream.render.engine import TemplateError
from nmstream.routing.agents import receiver_ref
from nmstream.routing.models import AlertGroup


class VerifyError(Exception):
    """A request that cannot be served; carries the status and the message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _configured(name: str, kind: str | None) -> tuple[Any, Any]:
    """A receiver of the view and its usable config."""
    found = [r for r in state.view.snapshot().receivers
             if r.metadata.name == name and kind in (None, r.kind)]
    if not found:
        raise VerifyError(404, f"no receiver named {name!r}")
    if len(found) > 1:
        kinds = ", ".join(sorted(r.kind for r in found))
        raise VerifyError(400, f"receiver name {name!r} is ambiguous ({kinds}): give kind")
    receiver = found[0]
    _, tenant = receiver_scope(receiver, state.view.snapshot().tenancy)
    config, problem = usable_config(receiver, tenant, state.view.snapshot())
    if config is None:
        raise VerifyError(409, f"receiver {name!r} cannot send: {problem}")
    return receiver, config


def _unsaved(receiver: Any, config: Any) -> tuple[Any, Any]:
    """Custom resources from the request body, validated."""
    try:
        parsed_receiver, parsed_config = parse_resource(receiver), parse_resource(config)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"])
        raise VerifyError(400, f"invalid resource: {field}: {err['msg']}") from exc
    if type(parsed_receiver) not in RECEIVER_KINDS.values():
        raise VerifyError(400, "receiver: not a receiver kind")
    if channel_of(parsed_config) != channel_of(parsed_receiver):
        raise VerifyError(400, "config: not the receiver's channel")
    return parsed_receiver, parsed_config


def test_group(receiver: Any, config: Any) -> AlertGroup:
    """A one-alert group announcing the test."""
    ref = receiver_ref(Selected(receiver, config, None))
    alert = Alert.model_validate({
        "status": "firing",
        "labels": {"alertname": "NotificationVerify", "severity": "info",
                   "receiver": receiver.metadata.name},
        "annotations": {"message": "nmstream test notification"},
        "startsAt": utcnow().isoformat(),
        "fingerprint": "0000000000000000",
    })
    return AlertGroup(group_id="verify", group_labels={"alertname": "NotificationVerify"},
                      receiver=ref, alerts=[alert], flushed_at=utcnow())


@app.page("/api/v2/verify")
class Verify(View):
    """Send a test notification synchronously."""

    async def post(self, request: Request) -> Response:
        """The outcome as JSON."""
        try:
            body = json.loads(await request.read())
            if not isinstance(body, dict) or "receiver" not in body:
                raise VerifyError(400, "receiver: required")
            if isinstance(body["receiver"], str):
                receiver, config = _configured(body["receiver"], body.get("kind"))
            elif isinstance(body.get("config"), dict) and isinstance(body["receiver"], dict):
                receiver, config = _unsaved(body["receiver"], body["config"])
            else:
                raise VerifyError(400, "receiver: a name, or a resource with a config resource")
            try:
                rendered = notifications(test_group(receiver, config), receiver)
            except TemplateError as exc:
                raise VerifyError(422, str(exc)) from exc
        except json.JSONDecodeError as exc:
            return self.json({"error": f"malformed JSON: {exc}"}, status=400)
        except VerifyError as exc:
            return self.json({"error": str(exc)}, status=exc.status)
        outcome = await deliver(rendered[0], config)
        answer = {"status": outcome.verdict.value, "reason": outcome.reason,
                  "failedTargets": list(outcome.failed_targets),
                  "receiver": f"{receiver.kind}/{receiver.metadata.name}",
                  "config": f"{config.kind}/{config.metadata.name}"}
        return self.json(answer, status=200 if outcome.verdict.value == "delivered" else 502)
