"""Receiver selection: notification-manager's tenancy rules, table-driven and property-based."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nmstream.config.models import LabelSelector, RoleBinding, parse_resource
from nmstream.config.selection import (
    Snapshot,
    Tenancy,
    channel_of,
    receiver_scope,
    select,
    tenants_of,
)
from nmstream.config.view import ConfigView

SEL = LabelSelector.model_validate


def receiver(kind: str, name: str, labels: dict[str, str], **spec: Any) -> Any:
    """A receiver CR of ``kind`` (EmailReceiver...) with the channel's minimal spec."""
    specs: dict[str, dict[str, Any]] = {
        "EmailReceiver": {"to": [f"{name}@example.org"]},
        "SlackReceiver": {"channel": f"#{name}"},
        "WebhookReceiver": {"url": f"http://127.0.0.1:9/{name}"},
    }
    base = specs[kind]
    return parse_resource({
        "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": kind,
        "metadata": {"name": name, "labels": labels}, "spec": {**base, **spec},
    })


def config(kind: str, name: str, labels: dict[str, str]) -> Any:
    """A config CR of ``kind`` (EmailConfig...) with the channel's minimal spec."""
    specs: dict[str, dict[str, Any]] = {
        "EmailConfig": {"from": "nm@example.org", "smartHost": {"host": "127.0.0.1",
                                                                "port": 25}},
        "SlackConfig": {"slackTokenSecret": {"name": "s", "key": "token"}},
        "WebhookConfig": {},
    }
    spec = specs[kind]
    return parse_resource({
        "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": kind,
        "metadata": {"name": name, "labels": labels}, "spec": spec,
    })


def binding(namespace: str, *subjects: tuple[str, str]) -> RoleBinding:
    return RoleBinding.model_validate({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": f"rb-{namespace}", "namespace": namespace},
        "subjects": [{"kind": k, "name": n, "apiGroup": "rbac.authorization.k8s.io"}
                     for k, n in subjects],
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
    })


DEFAULT_EMAIL = config("EmailConfig", "default-email", {"type": "default"})
GLOBAL_EMAIL = receiver("EmailReceiver", "global-email", {"type": "global"})
NS = Tenancy(tenant_key="namespace")
USER = Tenancy(tenant_key="user")


def names(labels: dict[str, str], snapshot: Snapshot) -> list[tuple[str, str, str | None]]:
    """(receiver, config, tenant) of every selected receiver."""
    return [(s.receiver.metadata.name, s.config.metadata.name, s.tenant)
            for s in select(labels, snapshot).selected]


def test_alert_without_namespace_goes_to_global_receivers_only() -> None:
    tenant = receiver("EmailReceiver", "ns1-email", {"type": "tenant", "namespace": "ns1"})
    snap = Snapshot(NS, [GLOBAL_EMAIL, tenant], [DEFAULT_EMAIL])
    assert names({"alertname": "KubeletDown"}, snap) == [
        ("global-email", "default-email", None)]


@pytest.mark.parametrize(("namespace", "expected"), [
    ("ns1", ["global-email", "ns1-email"]),
    ("ns2", ["global-email", "ns2-email"]),
    ("ns3", ["global-email"]),
])
def test_namespace_tenancy_routes_to_the_namespaces_receivers(
    namespace: str, expected: list[str]
) -> None:
    rcvs = [GLOBAL_EMAIL] + [
        receiver("EmailReceiver", f"{ns}-email", {"type": "tenant", "namespace": ns})
        for ns in ("ns1", "ns2")
    ]
    snap = Snapshot(NS, rcvs, [DEFAULT_EMAIL])
    assert [n for n, _, _ in names({"namespace": namespace}, snap)] == expected


def test_user_tenancy_resolves_users_through_rolebindings() -> None:
    bindings = {"ns1": [binding("ns1", ("User", "alice"), ("Group", "devs"),
                                ("ServiceAccount", "bot"))],
                "ns2": [binding("ns2", ("User", "bob"))]}
    rcvs = [receiver("EmailReceiver", f"{u}-email", {"type": "tenant", "user": u})
            for u in ("alice", "bob", "devs", "bot")]
    snap = Snapshot(USER, rcvs, [DEFAULT_EMAIL], bindings)
    assert tenants_of({"namespace": "ns1"}, USER, bindings) == {"alice"}
    assert names({"namespace": "ns1"}, snap) == [("alice-email", "default-email", "alice")]
    assert names({"namespace": "ns2"}, snap) == [("bob-email", "default-email", "bob")]
    assert names({"namespace": "ns-without-bindings"}, snap) == []


def test_receivers_matching_neither_selector_or_lacking_the_tenant_label_get_nothing() -> None:
    rcvs = [receiver("EmailReceiver", "other", {"type": "other", "namespace": "ns1"}),
            receiver("EmailReceiver", "no-tenant", {"type": "tenant"})]
    assert names({"namespace": "ns1"}, Snapshot(NS, rcvs, [DEFAULT_EMAIL])) == []


def test_custom_selectors_of_the_notification_manager_apply() -> None:
    tenancy = Tenancy(tenant_key="namespace", global_receivers=SEL({"matchLabels": {"r": "adm"}}),
                      tenant_receivers=SEL({"matchLabels": {"r": "own"}}),
                      default_configs=SEL({"matchLabels": {"c": "base"}}))
    rcvs = [receiver("EmailReceiver", "admin", {"r": "adm"}),
            receiver("EmailReceiver", "owner", {"r": "own", "namespace": "ns1"}),
            GLOBAL_EMAIL]
    cfgs = [config("EmailConfig", "base", {"c": "base"}), DEFAULT_EMAIL]
    assert names({"namespace": "ns1"}, Snapshot(tenancy, rcvs, cfgs)) == [
        ("admin", "base", None), ("owner", "base", "ns1")]


def test_global_receiver_config_selector_picks_among_default_configs() -> None:
    cfgs = [DEFAULT_EMAIL, config("EmailConfig", "default-eu", {"type": "default", "zone": "eu"}),
            config("EmailConfig", "tenant-eu", {"type": "tenant", "namespace": "ns1",
                                                 "zone": "eu"})]
    eu = receiver("EmailReceiver", "eu", {"type": "global"},
                  emailConfigSelector={"matchLabels": {"zone": "eu"}})
    nowhere = receiver("EmailReceiver", "nowhere", {"type": "global"},
                       emailConfigSelector={"matchLabels": {"zone": "mars"}})
    result = select({"namespace": "ns1"}, Snapshot(NS, [eu, nowhere], cfgs))
    assert [(s.receiver.metadata.name, s.config.metadata.name) for s in result.selected] == [
        ("eu", "default-eu")]
    assert [(s.receiver.metadata.name, s.reason) for s in result.skipped] == [
        ("nowhere", "no email config matches")]


def test_tenant_receiver_uses_its_tenants_config_else_the_default() -> None:
    own = config("EmailConfig", "ns1-config", {"type": "tenant", "namespace": "ns1"})
    foreign = config("EmailConfig", "ns2-config", {"type": "tenant", "namespace": "ns2"})
    with_selector = receiver("EmailReceiver", "a", {"type": "tenant", "namespace": "ns1"},
                             emailConfigSelector={"matchLabels": {"type": "tenant"}})
    foreign_only = receiver("EmailReceiver", "b", {"type": "tenant", "namespace": "ns1"},
                            emailConfigSelector={"matchLabels": {"namespace": "ns2"}})
    no_selector = receiver("EmailReceiver", "c", {"type": "tenant", "namespace": "ns1"})
    snap = Snapshot(NS, [with_selector, foreign_only, no_selector], [DEFAULT_EMAIL, own, foreign])
    assert names({"namespace": "ns1"}, snap) == [
        ("a", "ns1-config", "ns1"), ("b", "default-email", "ns1"), ("c", "default-email", "ns1")]


def test_receiver_without_any_usable_config_is_skipped_with_a_reason() -> None:
    result = select({"namespace": "ns1"}, Snapshot(NS, [GLOBAL_EMAIL],
                                                   [config("SlackConfig", "slack", {"type":
                                                                                    "default"})]))
    assert result.selected == ()
    assert [s.reason for s in result.skipped] == ["no email config matches"]


def test_configs_of_another_channel_are_never_used() -> None:
    slack = receiver("SlackReceiver", "slack", {"type": "global"})
    snap = Snapshot(NS, [slack, GLOBAL_EMAIL],
                    [DEFAULT_EMAIL, config("SlackConfig", "default-slack", {"type": "default"})])
    assert names({}, snap) == [("global-email", "default-email", None),
                               ("slack", "default-slack", None)]


def test_ties_between_configs_go_to_the_first_by_name() -> None:
    cfgs = [config("EmailConfig", "zz", {"type": "default"}),
            config("EmailConfig", "aa", {"type": "default"})]
    assert names({}, Snapshot(NS, [GLOBAL_EMAIL], cfgs)) == [("global-email", "aa", None)]


@pytest.mark.parametrize(("alert_selector", "labels", "gets_it"), [
    ({"matchLabels": {"alerttype": "auditing"}}, {"alerttype": "auditing"}, True),
    ({"matchLabels": {"alerttype": "auditing"}}, {"alertname": "X"}, False),
    ({"matchExpressions": [{"key": "severity", "operator": "In",
                            "values": ["critical"]}]}, {"severity": "critical"}, True),
    ({"matchExpressions": [{"key": "severity", "operator": "NotIn",
                            "values": ["info"]}]}, {}, True),
    ({"matchExpressions": [{"key": "severity", "operator": "Exists"}]}, {}, False),
    ({"matchExpressions": [{"key": "severity", "operator": "DoesNotExist"}]},
     {"severity": "x"}, False),
])
def test_alert_selector_filters_what_a_receiver_gets(
    alert_selector: dict[str, Any], labels: dict[str, str], gets_it: bool
) -> None:
    filtered = receiver("EmailReceiver", "filtered", {"type": "global"},
                        alertSelector=alert_selector)
    assert bool(names(labels, Snapshot(NS, [filtered], [DEFAULT_EMAIL]))) is gets_it


TENANTS = ["t0", "t1", "t2", "t3"]
NAMESPACES = ["ns0", "ns1", "ns2"]
SEVERITIES = st.sampled_from(["critical", "warning"])


@st.composite
def worlds(draw: st.DrawFn) -> tuple[Snapshot, list[dict[str, str]]]:
    """Random receivers, configs, RoleBindings and alerts."""
    key = draw(st.sampled_from(["namespace", "user"]))
    tenant_values = NAMESPACES if key == "namespace" else TENANTS
    rcvs = []
    for i in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["EmailReceiver", "SlackReceiver", "WebhookReceiver"]))
        labels: dict[str, str] = {"type": draw(st.sampled_from(["global", "tenant", "other"]))}
        if draw(st.booleans()):
            labels[key] = draw(st.sampled_from(tenant_values))
        spec: dict[str, Any] = {}
        if draw(st.booleans()):
            selector_tenant = draw(st.sampled_from(tenant_values))
            spec[f"{kind.removesuffix('Receiver')[0].lower()}"
                 f"{kind.removesuffix('Receiver')[1:]}ConfigSelector"] = {
                "matchLabels": {key: selector_tenant}}
        if draw(st.booleans()):
            spec["alertSelector"] = {"matchLabels": {"severity": draw(SEVERITIES)}}
        rcvs.append(receiver(kind, f"r{i}", labels, **spec))
    cfgs = []
    for i in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["EmailConfig", "SlackConfig", "WebhookConfig"]))
        labels = {"type": draw(st.sampled_from(["default", "tenant"]))}
        if draw(st.booleans()):
            labels[key] = draw(st.sampled_from(tenant_values))
        cfgs.append(config(kind, f"c{i}", labels))
    bindings = {ns: [binding(ns, *[("User", t) for t in draw(st.sets(st.sampled_from(TENANTS)))])]
                for ns in NAMESPACES}
    alerts = [{"alertname": "A", "severity": draw(SEVERITIES),
               **({"namespace": ns} if ns else {})}
              for ns in draw(st.lists(st.sampled_from([*NAMESPACES, None]), min_size=1,
                                      max_size=4))]
    return Snapshot(Tenancy(tenant_key=key), rcvs, cfgs, bindings), alerts


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_no_alert_of_one_tenant_reaches_another_tenants_receiver(
    world: tuple[Snapshot, list[dict[str, str]]]
) -> None:
    snapshot, alerts = world
    key = snapshot.tenancy.tenant_key
    for labels in alerts:
        result = select(labels, snapshot)
        owners = tenants_of(labels, snapshot.tenancy, snapshot.role_bindings)
        for chosen in result.selected:
            receiver_labels = chosen.receiver.metadata.labels
            if receiver_labels["type"] == "global":
                assert chosen.tenant is None
                continue
            assert receiver_labels["type"] == "tenant"
            assert chosen.tenant in owners
            assert receiver_labels[key] == chosen.tenant
            config_labels = chosen.config.metadata.labels
            assert config_labels["type"] == "default" or config_labels.get(key) == chosen.tenant
        if "namespace" not in labels:
            assert all(s.tenant is None for s in result.selected)


def test_missing_secret_or_key_skips_only_that_receiver() -> None:
    slack_cfg = config("SlackConfig", "default-slack", {"type": "default"})  # secret s/token
    email_cfg = parse_resource({
        "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "EmailConfig",
        "metadata": {"name": "default-email", "labels": {"type": "default"}},
        "spec": {"from": "a@b.c", "smartHost": {"host": "127.0.0.1", "port": "25"},
                 "authPassword": {"name": "mail", "key": "password", "namespace": "other"}}})
    rcvs = [GLOBAL_EMAIL, receiver("SlackReceiver", "slack", {"type": "global"})]
    ns = "kubesphere-monitoring-system"

    def outcome(secrets: dict[str, frozenset[str]]) -> tuple[list[str], list[str]]:
        result = select({}, Snapshot(NS, rcvs, [slack_cfg, email_cfg], secrets=secrets,
                                     secret_namespace=ns))
        return ([s.receiver.metadata.name for s in result.selected],
                [f"{s.receiver.metadata.name}: {s.reason}" for s in result.skipped])

    assert outcome({f"{ns}/s": frozenset({"token"}), "other/mail": frozenset({"password"})}) == (
        ["global-email", "slack"], [])
    assert outcome({f"{ns}/s": frozenset({"token"})}) == (
        ["slack"], ["global-email: secret other/mail not found"])
    assert outcome({f"{ns}/s": frozenset({"tok"}), "other/mail": frozenset({"password"})}) == (
        ["global-email"], [f"slack: secret {ns}/s has no key token"])


def plainly(labels: dict[str, str], snapshot: Snapshot) -> tuple[list[Any], list[str]]:
    """The rules applied the plain way, every receiver and every config looked at: what
    :func:`select` must give whatever it indexes (selected, and the names of the skipped)."""
    tenancy = snapshot.tenancy
    tenants = tenants_of(labels, tenancy, snapshot.role_bindings)

    def first(configs: list[Any], selector: LabelSelector | None) -> Any:
        matching = [c for c in configs
                    if selector is None or selector.matches(c.metadata.labels)]
        return min(matching, key=lambda c: c.metadata.name, default=None)

    selected, skipped = [], []
    for rcv in sorted(snapshot.receivers, key=lambda r: (r.kind, r.metadata.name)):
        scope, tenant = receiver_scope(rcv, tenancy)
        if scope == "none" or (scope == "tenant" and tenant not in tenants):
            continue
        if rcv.spec.alert_selector is not None and not rcv.spec.alert_selector.matches(labels):
            continue
        same = [c for c in snapshot.configs if channel_of(c) == channel_of(rcv)]
        defaults = [c for c in same if tenancy.default_configs.matches(c.metadata.labels)]
        selector = rcv.spec.config_selector()
        found = None
        if tenant is None:
            found = first(defaults, selector)
        else:
            if selector is not None:
                found = first([c for c in same
                               if tenancy.tenant_receivers.matches(c.metadata.labels)
                               and c.metadata.labels.get(tenancy.tenant_key) == tenant],
                              selector)
            found = found or first(defaults, None)
        if found is None:
            skipped.append(rcv.metadata.name)
        else:
            selected.append((rcv.metadata.name, found.metadata.name, tenant))
    return selected, skipped


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_selection_equals_the_rules_applied_to_every_receiver_and_config(
    world: tuple[Snapshot, list[dict[str, str]]]
) -> None:
    snapshot, alerts = world
    for labels in [*alerts, *alerts]:  # twice: the second time from what the snapshot kept
        result = select(labels, snapshot)
        assert (names(labels, snapshot), [s.receiver.metadata.name for s in result.skipped]) \
            == plainly(labels, snapshot)


def test_many_tenants_each_alert_reaches_its_own_tenants_receivers_in_order() -> None:
    """3,000 tenants: an alert gets the global receivers and its namespace's, ordered by kind
    and name as with a handful."""
    rcvs = [GLOBAL_EMAIL, receiver("WebhookReceiver", "global-hook", {"type": "global"})]
    for i in range(3000):
        labels = {"type": "tenant", "namespace": f"ns{i}"}
        rcvs += [receiver("WebhookReceiver", f"hook-{i}", labels),
                 receiver("EmailReceiver", f"mail-{i}", labels,
                          alertSelector={"matchLabels": {"severity": "critical"}})]
    cfgs = [DEFAULT_EMAIL, config("WebhookConfig", "default-hook", {"type": "default"}),
            config("WebhookConfig", "own-hook-7", {"type": "tenant", "namespace": "ns7"})]
    snap = Snapshot(NS, rcvs, cfgs)
    assert names({"namespace": "ns7", "severity": "critical"}, snap) == [
        ("global-email", "default-email", None), ("mail-7", "default-email", "ns7"),
        ("global-hook", "default-hook", None), ("hook-7", "default-hook", "ns7")]
    assert names({"namespace": "ns2999"}, snap) == [
        ("global-email", "default-email", None), ("global-hook", "default-hook", None),
        ("hook-2999", "default-hook", "ns2999")]
    assert names({"namespace": "elsewhere"}, snap) == names({}, snap) == [
        ("global-email", "default-email", None), ("global-hook", "default-hook", None)]
    assert names({"namespace": "ns7"}, snap) == plainly({"namespace": "ns7"}, snap)[0]


def test_the_views_notification_manager_follows_every_change() -> None:
    """Looked up once per change of the view, it is the first by name, whatever changed."""
    def manager(name: str, wait: str) -> bytes:
        return json.dumps({
            "apiVersion": "notification.kubesphere.io/v2alpha1", "kind": "NotificationManager",
            "metadata": {"name": name},
            "spec": {"receivers": {"tenantKey": "namespace"}, "batchMaxWait": wait}}).encode()

    def in_force(view: ConfigView) -> tuple[str, str | None] | None:
        found = view.manager()
        return None if found is None else (found.metadata.name, found.spec.batch_max_wait)

    view = ConfigView()
    assert in_force(view) is None
    view.apply("NotificationManager//b", manager("b", "2s"))
    assert in_force(view) == ("b", "2s")
    view.apply("NotificationManager//a", manager("a", "1s"))
    assert in_force(view) == ("a", "1s")
    view.apply("NotificationManager//a", manager("a", "3s"))
    assert in_force(view) == ("a", "3s")
    view.apply("NotificationManager//a", None)
    assert in_force(view) == ("b", "2s")
    view.apply("NotificationManager//b", None)
    assert in_force(view) is None
