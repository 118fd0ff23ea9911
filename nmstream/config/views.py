"""``GET /api/v2/receivers``: the current receivers view, secrets redacted."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from nmstream.app import app
from nmstream.config.agents import state
from nmstream.config.selection import channel_of, config_for, receiver_scope

SECRET_WORDS = ("password", "secret", "token", "appkey", "webhook")


def redact(value: Any, parent: str = "") -> Any:
    """Replace inline credential values by ``***``; references ({name, key}) stay visible."""
    if isinstance(value, dict):
        return {k: redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v, parent) for v in value]
    if isinstance(value, str) and (
        parent == "value" or any(word in parent.lower() for word in SECRET_WORDS)
    ):
        return "***"
    return value


@app.page("/api/v2/receivers")
class Receivers(View):
    """Every receiver with its scope, tenant and resolved config; ``?tenant=`` filters."""

    async def get(self, request: Request) -> Response:
        """The view as JSON, plus the resources that failed validation."""
        snapshot = state.view.snapshot()
        wanted = request.query.get("tenant")
        receivers = []
        for receiver in sorted(snapshot.receivers, key=lambda r: (r.kind, r.metadata.name)):
            scope, tenant = receiver_scope(receiver, snapshot.tenancy)
            if wanted is not None and tenant != wanted:
                continue
            chosen = config_for(receiver, tenant, snapshot) if scope != "none" else None
            receivers.append({
                "kind": receiver.kind,
                "name": receiver.metadata.name,
                "channel": channel_of(receiver),
                "scope": scope,
                "tenant": tenant,
                "labels": receiver.metadata.labels,
                "config": chosen.metadata.name if chosen is not None else None,
                "spec": redact(receiver.spec.model_dump(by_alias=True, exclude_none=True)),
            })
        return self.json({
            "synced": state.reader.synced.is_set(),
            "tenantKey": snapshot.tenancy.tenant_key,
            "receivers": receivers,
            "problems": dict(sorted(state.view.problems.items())),
            "sourceProblems": state.source_problems(),
        })
