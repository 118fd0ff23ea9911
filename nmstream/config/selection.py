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
#: A receiver that can be routed to, its scope and its tenant (None: global).
Candidate = tuple[Any, Scope, str | None]
#: Sets of tenants whose reachable receivers (and namespaces whose users) a snapshot remembers.
REACHABLE_CACHE = 4096
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
    def candidates(self) -> tuple[Candidate, ...]:
        """Receivers that can be routed to, by kind and name, with their scope and tenant."""
        ordered = sorted(self.receivers, key=lambda r: (r.kind, r.metadata.name))
        scoped = ((r, *receiver_scope(r, self.tenancy)) for r in ordered)
        return tuple((r, scope, tenant) for r, scope, tenant in scoped if scope != "none")

    @cached_property
    def _by_tenant(self) -> dict[str | None, tuple[tuple[int, Candidate], ...]]:
        """:attr:`candidates` with their position, global ones under None, the others under
        their tenant."""
        index: dict[str | None, list[tuple[int, Candidate]]] = {None: []}
        for position, candidate in enumerate(self.candidates):
            index.setdefault(candidate[2], []).append((position, candidate))
        return {tenant: tuple(entries) for tenant, entries in index.items()}

    @cached_property
    def _users(self) -> dict[str, frozenset[str]]:
        return {}

    def tenants(self, labels: Mapping[str, str]) -> frozenset[str]:
        """:func:`tenants_of` an alert; with ``tenantKey: user``, each namespace's users are
        worked out once per snapshot (a namespace may have hundreds of RoleBindings)."""
        namespace = labels.get(NAMESPACE_LABEL)
        if not namespace or self.tenancy.tenant_key != USER_TENANT_KEY:
            return tenants_of(labels, self.tenancy, self.role_bindings)
        if (users := self._users.get(namespace)) is None:
            if len(self._users) >= REACHABLE_CACHE:
                self._users.clear()
            users = self._users[namespace] = tenants_of(labels, self.tenancy,
                                                        self.role_bindings)
        return users

    @cached_property
    def _reachable(self) -> dict[frozenset[str], tuple[Candidate, ...]]:
        return {}

    def candidates_for(self, tenants: frozenset[str]) -> tuple[Candidate, ...]:
        """The global receivers and those of these tenants, in :attr:`candidates` order: an
        alert costs the receivers it can reach, not every tenant's. Remembered per set of
        tenants (up to :data:`REACHABLE_CACHE` of them)."""
        if (found := self._reachable.get(tenants)) is not None:
            return found
        index = self._by_tenant
        entries = [*index[None]]
        for tenant in tenants:
            entries += index.get(tenant, ())
        entries.sort(key=lambda entry: entry[0])
        if len(self._reachable) >= REACHABLE_CACHE:
            self._reachable.clear()
        found = self._reachable[tenants] = tuple(candidate for _, candidate in entries)
        return found

    @cached_property
    def _configs(self) -> dict[str, list[Any]]:
        """Configs by channel, in :attr:`configs` order."""
        by_channel: dict[str, list[Any]] = {}
        for config in self.configs:
            by_channel.setdefault(channel_of(config), []).append(config)
        return by_channel

    @cached_property
    def channel_defaults(self) -> dict[str, list[Any]]:
        """Default configs (``defaultConfigSelector``) by channel."""
        matches = self.tenancy.default_configs.matches
        return {channel: [c for c in configs if matches(c.metadata.labels)]
                for channel, configs in self._configs.items()}

    @cached_property
    def tenant_configs(self) -> dict[tuple[str, str], list[Any]]:
        """Tenant configs (matching ``tenantReceiverSelector``) by channel and tenant."""
        tenancy, owned = self.tenancy, dict[tuple[str, str], list[Any]]()
        for channel, configs in self._configs.items():
            for config in configs:
                labels = config.metadata.labels
                tenant = labels.get(tenancy.tenant_key)
                if tenant is not None and tenancy.tenant_receivers.matches(labels):
                    owned.setdefault((channel, tenant), []).append(config)
        return owned

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
    channel = channel_of(receiver)
    defaults = snapshot.channel_defaults.get(channel, [])
    selector = receiver.spec.config_selector()
    if tenant is None:
        return _first_by_name(defaults, selector)
    if selector is not None:
        found = _first_by_name(snapshot.tenant_configs.get((channel, tenant), []), selector)
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
    tenants = snapshot.tenants(labels)
    selected: list[Selected] = []
    skipped: list[Skipped] = []
    for receiver, _, tenant in snapshot.candidates_for(tenants):
        alert_selector = receiver.spec.alert_selector
        if alert_selector is not None and not alert_selector.matches(labels):
            continue
        config, reason = snapshot.usable(receiver, tenant)
        if config is None:
            skipped.append(Skipped(receiver, reason))
        else:
            selected.append(Selected(receiver, config, tenant))
    return Selection(tenants, tuple(selected), tuple(skipped))
