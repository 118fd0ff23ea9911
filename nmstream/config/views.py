"""``GET /api/v2/receivers``: the current receivers view, secrets redacted."""

from __future__ import annotations

from typing import Any

from faust.web import Request, Response, View

from nmstream.app import app
from nmstream.config.agents import state
from nmstream.config.selection import channel_of

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
        wanted = request.query.get("tenant")
        receivers = [
            {
                "kind": st.receiver.kind,
                "name": st.receiver.metadata.name,
                "channel": channel_of(st.receiver),
                "scope": st.scope,
                "tenant": st.tenant,
                "labels": st.receiver.metadata.labels,
                "config": st.config.metadata.name if st.config is not None else None,
                "problem": st.problem or None,
                "spec": redact(st.receiver.spec.model_dump(by_alias=True, exclude_none=True)),
            }
            for st in state.view.receiver_states()
            if wanted is None or st.tenant == wanted
        ]
        return self.json({
            "synced": state.reader.synced.is_set(),
            "tenantKey": state.view.snapshot().tenancy.tenant_key,
            "receivers": receivers,
            "problems": dict(sorted(state.view.problems.items())),
            "sourceProblems": state.source_problems(),
        })
