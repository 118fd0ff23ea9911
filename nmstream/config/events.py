"""The one event stream every configuration source produces (Kubernetes watch or a directory)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

GROUP = "notification.kubesphere.io"
VERSION = "v2alpha1"


@dataclass(frozen=True)
class ResourceType:
    """A kind the sources follow: its API group/version, plural, and whether it is namespaced."""

    kind: str
    plural: str
    group: str = GROUP
    version: str = VERSION
    namespaced: bool = False

    @property
    def api_version(self) -> str:
        """``group/version``, or ``v1`` for the core group."""
        return f"{self.group}/{self.version}" if self.group else self.version


#: Cluster-scoped notification-manager kinds.
CR_TYPES: tuple[ResourceType, ...] = tuple(
    ResourceType(kind, kind.lower() + "s")
    for kind in (
        "NotificationManager",
        "EmailConfig",
        "EmailReceiver",
        "WechatConfig",
        "WechatReceiver",
        "SlackConfig",
        "SlackReceiver",
        "WebhookConfig",
        "WebhookReceiver",
        "DingTalkConfig",
        "DingTalkReceiver",
    )
)
SECRET = ResourceType("Secret", "secrets", group="", version="v1", namespaced=True)
ROLE_BINDING = ResourceType(
    "RoleBinding", "rolebindings", group="rbac.authorization.k8s.io", version="v1",
    namespaced=True,
)
ALL_TYPES: tuple[ResourceType, ...] = (*CR_TYPES, SECRET, ROLE_BINDING)
TYPES_BY_KIND = {t.kind: t for t in ALL_TYPES}

EventType = Literal["ADDED", "MODIFIED", "DELETED"]


@dataclass(frozen=True)
class ResourceEvent:
    """One change of one object. ``obj`` is the full object as the API serves it (a dict with
    apiVersion, kind, metadata, spec/data...); on DELETED it is the last known state or None.
    """

    type: EventType
    kind: str
    name: str
    namespace: str | None = None
    obj: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        """``kind/namespace/name`` (namespace empty for cluster-scoped kinds)."""
        return f"{self.kind}/{self.namespace or ''}/{self.name}"
