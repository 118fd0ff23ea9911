"""Each worker's own Secret values, never published: the config topic carries digests only.

Fed by a Secret-only source of the worker's own (the Kubernetes watcher limited to Secrets, or
the configuration directory), so senders resolve ``{name, key}`` references locally.
"""

from __future__ import annotations

import base64
import binascii
import logging

from nmstream.config.events import ResourceEvent
from nmstream.config.models import SecretKeySelector

log = logging.getLogger(__name__)


class MissingSecret(LookupError):
    """A reference names a Secret or key this worker does not know."""


class SecretStore:
    """``namespace/name`` → decoded data, kept current by a source's events."""

    def __init__(self, default_namespace: str) -> None:
        self.default_namespace = default_namespace
        self.values: dict[str, dict[str, bytes]] = {}

    async def __call__(self, event: ResourceEvent) -> None:
        """Apply a source event; other kinds are ignored."""
        if event.kind != "Secret":
            return
        where = f"{event.namespace}/{event.name}"
        if event.type == "DELETED" or event.obj is None:
            self.values.pop(where, None)
            return
        try:
            data = {k: base64.b64decode(v) for k, v in (event.obj.get("data") or {}).items()}
        except (binascii.Error, TypeError) as exc:
            log.warning("Secret %s has data that is not base64: %s", where, exc)
            return
        self.values[where] = data

    def get(self, ref: SecretKeySelector) -> bytes:
        """The value a reference points to."""
        where = f"{ref.namespace or self.default_namespace}/{ref.name}"
        try:
            return self.values[where][ref.key]
        except KeyError:
            raise MissingSecret(f"secret {where} key {ref.key} is not available") from None
