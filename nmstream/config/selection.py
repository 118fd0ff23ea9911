"""Which receivers get an alert, and with which config: notification-manager's rules, no I/O.

- An alert's tenants come from its ``namespace`` label: with ``tenantKey: user`` they are the
  User subjects of that namespace's RoleBindings, with any other key the namespace itself.
- Global receivers (matching ``globalReceiverSelector``) get every alert; tenant receivers
  (matching ``tenantReceiverSelector`` and labelled ``<tenantKey>: <tenant>``) get only their
  tenants' alerts; alerts without a namespace go to global receivers only.
- A receiver's config: for a global receiver, a default config (``defaultConfigSelector``)
  matching its ``xxxConfigSelector`` (any default config without one); for a tenant receiver,
  its tenant's configs matching its selector, else a default config.
- ``alertSelector`` filters what a receiver gets. Ties between configs go to the first by name.
- A receiver whose config (or itself) references a Secret or key that does not exist is
  skipped with the reason; other receivers are unaffected.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from pydantic import BaseModel

from nmstream.config.models import LabelSelector, ReceiversSpec, RoleBinding, SecretKeySelector

Scope = Literal["global", "tenant", "none"]
NAMESPACE_LABEL = "namespace"
USER_TENANT_KEY = "user"


_DEFAULTS = ReceiversSpec()
DEFAULT_CONFIGS = LabelSelector.model_validate({"matchLabels": {"type": "default"}})


@dataclass(frozen=True)
class Tenancy:
    """The NotificationManager's tenancy settings; defaults as a NotificationManager's."""

    tenant_key: str = _DEFAULTS.tenant_key
    global_receivers: LabelSelector = _DEFAULTS.global_receiver_selector
    tenant_receivers: LabelSelector = _DEFAULTS.tenant_receiver_selector
    default_configs: LabelSelector = DEFAULT_CONFIGS


@dataclass(frozen=True)
class Snapshot:
    """Everything selection looks at: receivers and configs per channel, and RoleBindings."""

    tenancy: Tenancy
    receivers: Sequence[Any]
    configs: Sequence[Any]
    role_bindings: Mapping[str, Sequence[RoleBinding]] = field(default_factory=dict)
    #: ``namespace/name`` of every known Secret → its keys; None: references are not checked.
    secrets: Mapping[str, frozenset[str]] | None = None
    #: Namespace of a secret reference that names none.
    secret_namespace: str = "kubesphere-monitoring-system"

    @cached_property
    def candidates(self) -> tuple[tuple[Any, Scope, str | None], ...]:
        """Receivers that can be routed to, by kind and name, with their scope and tenant."""
        ordered = sorted(self.receivers, key=lambda r: (r.kind, r.metadata.name))
        scoped = ((r, *receiver_scope(r, self.tenancy)) for r in ordered)
        return tuple((r, scope, tenant) for r, scope, tenant in scoped if scope != "none")

    @cached_property
    def _usable(self) -> dict[tuple[int, str | None], tuple[Any, str]]:
        return {}

    def usable(self, receiver: Any, tenant: str | None) -> tuple[Any, str]:
        """:func:`usable_config`, worked out once per receiver and tenant of this snapshot."""
        key = (id(receiver), tenant)
        if (found := self._usable.get(key)) is None:
            found = self._usable[key] = usable_config(receiver, tenant, self)
        return found


@dataclass(frozen=True)
class Selected:
    """A receiver that gets the alert, the config it sends with, and its tenant (None: global)."""

    receiver: Any
    config: Any
    tenant: str | None


@dataclass(frozen=True)
class Skipped:
    """A receiver that would get the alert but cannot send it, and why."""

    receiver: Any
    reason: str


@dataclass(frozen=True)
class Selection:
    """The outcome for one alert."""

    tenants: frozenset[str]
    selected: tuple[Selected, ...]
    skipped: tuple[Skipped, ...]


def channel_of(resource: Any) -> str:
    """``EmailReceiver`` / ``EmailConfig`` → ``email``."""
    kind: str = resource.kind
    return kind.removesuffix("Receiver").removesuffix("Config").lower()


def tenants_of(
    labels: Mapping[str, str], tenancy: Tenancy, role_bindings: Mapping[str, Sequence[RoleBinding]]
) -> frozenset[str]:
    """The tenants an alert belongs to; empty when it has no namespace."""
    namespace = labels.get(NAMESPACE_LABEL)
    if not namespace:
        return frozenset()
    if tenancy.tenant_key != USER_TENANT_KEY:
        return frozenset({namespace})
    return frozenset(
        subject.name
        for binding in role_bindings.get(namespace, ())
        for subject in binding.subjects
        if subject.kind == "User"
    )


def receiver_scope(receiver: Any, tenancy: Tenancy) -> tuple[Scope, str | None]:
    """Whether a receiver is global, a tenant's (and whose), or neither (never routed to)."""
    labels = receiver.metadata.labels
    if tenancy.global_receivers.matches(labels):
        return "global", None
    tenant = labels.get(tenancy.tenant_key)
    if tenant and tenancy.tenant_receivers.matches(labels):
        return "tenant", tenant
    return "none", None


def _first_by_name(configs: Iterable[Any], selector: LabelSelector | None) -> Any:
    matching = [c for c in configs if selector is None or selector.matches(c.metadata.labels)]
    return min(matching, key=lambda c: c.metadata.name, default=None)


def config_for(receiver: Any, tenant: str | None, snapshot: Snapshot) -> Any:
    """The config a receiver sends with, or None when it has no usable one."""
    tenancy = snapshot.tenancy
    channel = channel_of(receiver)
    same_channel = [c for c in snapshot.configs if channel_of(c) == channel]
    defaults = [c for c in same_channel if tenancy.default_configs.matches(c.metadata.labels)]
    selector = receiver.spec.config_selector()
    if tenant is None:
        return _first_by_name(defaults, selector)
    if selector is not None:
        own = [
            c
            for c in same_channel
            if tenancy.tenant_receivers.matches(c.metadata.labels)
            and c.metadata.labels.get(tenancy.tenant_key) == tenant
        ]
        found = _first_by_name(own, selector)
        if found is not None:
            return found
    return _first_by_name(defaults, None)


def secret_refs(model: BaseModel) -> Iterator[SecretKeySelector]:
    """Every secret reference inside a spec."""
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, SecretKeySelector):
                yield item
            elif isinstance(item, BaseModel):
                yield from secret_refs(item)


def missing_secrets(receiver: Any, config: Any, snapshot: Snapshot) -> list[str]:
    """What the receiver and its config reference but the cluster lacks."""
    if snapshot.secrets is None:
        return []
    problems = []
    for ref in (*secret_refs(receiver.spec), *secret_refs(config.spec)):
        where = f"{ref.namespace or snapshot.secret_namespace}/{ref.name}"
        keys = snapshot.secrets.get(where)
        if keys is None:
            problems.append(f"secret {where} not found")
        elif ref.key not in keys:
            problems.append(f"secret {where} has no key {ref.key}")
    return problems


def usable_config(receiver: Any, tenant: str | None, snapshot: Snapshot) -> tuple[Any, str]:
    """The receiver's config, or None and the reason it cannot send."""
    config = config_for(receiver, tenant, snapshot)
    if config is None:
        return None, f"no {channel_of(receiver)} config matches"
    problems = missing_secrets(receiver, config, snapshot)
    if problems:
        return None, "; ".join(problems)
    return config, ""


def select(labels: Mapping[str, str], snapshot: Snapshot) -> Selection:
    """Receivers (with configs) that get an alert with these labels."""
    tenancy = snapshot.tenancy
    tenants = tenants_of(labels, tenancy, snapshot.role_bindings)
    selected: list[Selected] = []
    skipped: list[Skipped] = []
    for receiver, scope, tenant in snapshot.candidates:
        if scope == "tenant" and tenant not in tenants:
            continue
        alert_selector = receiver.spec.alert_selector
        if alert_selector is not None and not alert_selector.matches(labels):
            continue
        config, reason = snapshot.usable(receiver, tenant)
        if config is None:
            skipped.append(Skipped(receiver, reason))
        else:
            selected.append(Selected(receiver, config, tenant))
    return Selection(tenants, tuple(selected), tuple(skipped))
