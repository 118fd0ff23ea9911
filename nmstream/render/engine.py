"""Jinja2 rendering of alert groups, with notification-manager's template names and precedence.

A template is a file ``<name>.j2``: the defaults live in ``nmstream/render/templates``; user
templates (``options.global.templateFile``: directories, e.g. a mounted ConfigMap) come first
and are reloaded when their files change (a template's modification time is checked at most
once a :data:`RELOAD_CHECK`, not on every render).
Templates run sandboxed, with undefined names an error, so a broken user template fails its
notification instead of sending something half-rendered.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, Field

from nmstream.config.models import NotificationManager
from nmstream.ingest.models import Alert
from nmstream.routing.models import AlertGroup

DEFAULTS = Path(__file__).parent / "templates"
SUFFIX = ".j2"

#: Per channel: (subject template, body template) when nothing else is configured.
DEFAULT_TEMPLATES: dict[str, tuple[str | None, str]] = {
    "email": ("nm.default.subject", "nm.default.html"),
    "webhook": (None, "webhook.default.message"),
    "slack": (None, "nm.default.text"),
    "wechat": (None, "nm.default.text"),
    "dingtalk": (None, "nm.default.text"),
}
#: Email's plain-text alternative to the HTML body.
EMAIL_TEXT = "nm.default.text"
#: Largest message body a channel accepts, and how it is measured.
LIMITS: dict[str, tuple[int, Callable[[str], int]]] = {
    "wechat": (2048, lambda text: len(text.encode())),
    "dingtalk": (20000, lambda text: len(text.encode())),
    "slack": (40000, len),
}
TRUNCATED = "\n…(truncated)"
#: Seconds a loaded template is used before its file's modification time is checked again.
RELOAD_CHECK = 1.0


class TemplateError(Exception):
    """A template is missing or failed to render; the notification goes to the DLQ."""


class _Loader(jinja2.FileSystemLoader):
    """Looks ``name`` up as ``name.j2`` in the user directories, then the defaults; a template
    counts as up to date for ``reload_check`` seconds after it was loaded or checked."""

    def __init__(self, dirs: Sequence[Path], reload_check: float,
                 clock: Callable[[], float]) -> None:
        super().__init__(dirs)
        self.reload_check, self.clock = reload_check, clock
        #: Templates loaded so far (a reload counts): a render ahead of time is current while
        #: this stays the same.
        self.loads = 0

    def get_source(
        self, environment: jinja2.Environment, template: str
    ) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template + SUFFIX)
        self.loads += 1
        checked = self.clock()

        def fresh() -> bool:
            nonlocal checked
            now = self.clock()
            if now - checked < self.reload_check:
                return True
            if not uptodate():
                return False  # until it is loaded again
            checked = now
            return True

        return source, filename, fresh


def sorted_pairs(mapping: Mapping[str, str]) -> list[tuple[str, str]]:
    """``(name, value)`` sorted by name, like Alertmanager's ``SortedPairs``."""
    return sorted(mapping.items())


class AlertList(list[Alert]):
    """The group's alerts, with ``.firing`` and ``.resolved`` as templates expect."""

    @property
    def firing(self) -> list[Alert]:
        """Alerts still firing."""
        return [a for a in self if a.status != "resolved"]

    @property
    def resolved(self) -> list[Alert]:
        """Resolved alerts."""
        return [a for a in self if a.status == "resolved"]


def _common(mappings: Sequence[Mapping[str, str]]) -> dict[str, str]:
    """The name/value pairs all mappings have, in the first one's order."""
    if not mappings:
        return {}
    first = mappings[0]
    shared = set(first.items())
    for other in mappings[1:]:
        shared &= other.items()
    return {k: v for k, v in first.items() if (k, v) in shared}


class _WebhookMessage(BaseModel):
    """Alertmanager's webhook v4 message, field for field and in its order (dumped by alias)."""

    version: str = "4"
    group_key: str = Field(serialization_alias="groupKey")
    truncated_alerts: int = Field(0, serialization_alias="truncatedAlerts")
    status: str
    receiver: str
    group_labels: dict[str, str] = Field(serialization_alias="groupLabels")
    common_labels: dict[str, str] = Field(serialization_alias="commonLabels")
    common_annotations: dict[str, str] = Field(serialization_alias="commonAnnotations")
    external_url: str = Field(serialization_alias="externalURL")
    alerts: list[Alert]


class WebhookPayload(Mapping[str, Any]):
    """The group in Alertmanager's webhook v4 shape, as templates see it: a mapping built
    when first read, which ``tojson`` writes straight from pydantic (see :func:`_dumps`)."""

    def __init__(self, group: AlertGroup, alerts: Sequence[Alert], status: str,
                 common_labels: dict[str, str], common_annotations: dict[str, str]) -> None:
        self._group, self._alerts, self._status = group, alerts, status
        self._common = common_labels, common_annotations

    @functools.cached_property
    def _message(self) -> _WebhookMessage:
        group, alerts = self._group, self._alerts
        return _WebhookMessage(
            group_key=group.group_id, status=self._status, receiver=group.receiver.name,
            group_labels=group.group_labels, common_labels=self._common[0],
            common_annotations=self._common[1], external_url=group.external_url or "",
            alerts=list(alerts),
        )

    @functools.cached_property
    def _mapping(self) -> dict[str, Any]:
        return self._message.model_dump(mode="json", by_alias=True)

    def __getitem__(self, key: str) -> Any:
        return self._mapping[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._mapping)

    def __len__(self) -> int:
        return len(self._mapping)

    def to_json(self) -> str:
        """The message as JSON, keys in Alertmanager's order."""
        return self._message.model_dump_json(by_alias=True)


def _dumps(obj: Any, **kwargs: Any) -> str:
    """JSON for ``tojson``: a :class:`WebhookPayload` from pydantic, anything else (payloads
    nested in it included) by :func:`json.dumps`."""
    if isinstance(obj, WebhookPayload):
        return obj.to_json()

    def plain(value: Any) -> Any:
        if isinstance(value, WebhookPayload):
            return dict(value)
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")

    return json.dumps(obj, default=plain, **kwargs)


def template_data(group: AlertGroup, alerts: Sequence[Alert]) -> dict[str, Any]:
    """What a template sees."""
    listed = AlertList(alerts)
    status = "firing" if listed.firing else "resolved"
    labels = _common([a.labels for a in alerts])
    annotations = _common([a.annotations for a in alerts])
    return {
        "alerts": listed,
        "group_labels": group.group_labels,
        "common_labels": labels,
        "common_annotations": annotations,
        "status": status,
        "receiver": group.receiver.name,
        "tenant": group.receiver.tenant,
        "external_url": group.external_url,
        "webhook_payload": WebhookPayload(group, alerts, status, labels, annotations),
    }


@dataclass(frozen=True)
class Choice:
    """The templates a receiver's notifications use."""

    subject: str | None
    body: str


def choose(channel: str, receiver_spec: Any, manager: NotificationManager | None) -> Choice:
    """notification-manager's precedence: receiver > options.<channel> > options.global >
    default; email also has a subject template, chosen the same way."""
    default_subject, default_body = DEFAULT_TEMPLATES[channel]
    options = manager.spec.receivers.options if manager is not None else None
    channel_options = getattr(options, channel, None) if options is not None else None
    global_options = options.global_ if options is not None else None
    body = (
        getattr(receiver_spec, "template", None)
        or getattr(channel_options, "template", None)
        or getattr(global_options, "template", None)
        or default_body
    )
    subject = default_subject and (
        getattr(receiver_spec, "subject_template", None)
        or getattr(channel_options, "subject_template", None)
        or default_subject
    )
    return Choice(subject, body)


@dataclass(frozen=True)
class Message:
    """One rendered message: subject and plain-text part (email only), body, its alerts."""

    subject: str | None
    body: str
    alerts: tuple[Alert, ...]
    text: str | None = None


class Renderer:
    """Renders groups with the default templates and the user's template directories."""

    def __init__(self, user_dirs: Sequence[str | os.PathLike[str]] = (),
                 reload_check: float = RELOAD_CHECK,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.user_dirs = [Path(d) for d in user_dirs]
        self.loader = _Loader([*self.user_dirs, DEFAULTS], reload_check, clock)
        self.env = SandboxedEnvironment(
            loader=self.loader,
            undefined=jinja2.StrictUndefined,
            autoescape=lambda name: name is not None and name.endswith("html" + SUFFIX),
            auto_reload=True,
        )
        self.env.filters["sorted_pairs"] = sorted_pairs
        self.env.policies["json.dumps_function"] = _dumps

    @property
    def generation(self) -> int:
        """Changes whenever a template is loaded or reloaded."""
        return self.loader.loads

    def changed_since(self, generation: int) -> bool:
        """Whether a template was loaded since ``generation``, or a loaded one's file changed
        (checked at most once a ``reload_check``, as on render)."""
        cache = self.env.cache
        return self.loader.loads != generation or (
            cache is not None and not all(t.is_up_to_date for t in cache.values()))

    def render_one(self, name: str, data: Mapping[str, Any]) -> str:
        """Render template ``name``; any failure is a :class:`TemplateError` naming it."""
        try:
            return self.env.get_template(name).render(data)
        except jinja2.TemplateNotFound as exc:
            raise TemplateError(f"template {name!r} not found") from exc
        except Exception as exc:  # syntax, undefined, sandbox, anything a template raises
            raise TemplateError(f"template {name!r} failed: {type(exc).__name__}: {exc}") from exc

    def _message(self, choice: Choice, group: AlertGroup, alerts: Sequence[Alert]) -> Message:
        data = template_data(group, alerts)
        subject = self.render_one(choice.subject, data) if choice.subject else None
        body = self.render_one(choice.body, {**data, "subject": subject or ""})
        text = self.render_one(EMAIL_TEXT, data) if group.receiver.channel == "email" else None
        return Message(subject, body, tuple(alerts), text)

    def render(self, channel: str, choice: Choice, group: AlertGroup) -> list[Message]:
        """The group's messages: one, or several when the channel's size limit requires,
        each carrying whole alerts, as many as fit; a single alert too large alone is
        truncated, never dropped."""
        whole = self._message(choice, group, group.alerts)
        limit = LIMITS.get(channel)
        if limit is None or limit[1](whole.body) <= limit[0]:
            return [whole]
        size_limit, measure = limit
        messages: list[Message] = []
        # the first guess in proportion to how far the whole group is over the limit
        start, guess = 0, len(group.alerts) * size_limit // max(measure(whole.body), 1)
        while start < len(group.alerts):
            messages.append(self._fill(choice, group, start, limit, guess))
            guess = len(messages[-1].alerts)
            start += guess
        return [self._fit(m, size_limit, measure) for m in messages]

    def _fill(self, choice: Choice, group: AlertGroup, start: int,
              limit: tuple[int, Callable[[str], int]], guess: int) -> Message:
        """The message of as many alerts from ``start`` on as fit within ``limit``, at least
        one."""
        size_limit, measure = limit
        rendered: dict[int, Message] = {}

        def fits(count: int) -> bool:
            message = rendered[count] = self._message(
                choice, group, group.alerts[start:start + count])
            return measure(message.body) <= size_limit

        return rendered[_most_that_fit(len(group.alerts) - start, fits, guess)]

    @staticmethod
    def _fit(message: Message, size_limit: int, measure: Callable[[str], int]) -> Message:
        body = message.body
        while measure(body) > size_limit:
            excess = measure(body) - size_limit + measure(TRUNCATED)
            body = body[: max(len(body) - excess, 0)]
            if measure(body + TRUNCATED) <= size_limit:
                body += TRUNCATED
                break
        return Message(message.subject, body, message.alerts, message.text)


def _most_that_fit(available: int, fits: Callable[[int], bool], guess: int) -> int:
    """The most alerts (of ``available``) a message holds, at least one, sizes growing with
    the count: from a guess (the previous message's count), up by doubling steps while they
    fit, then bisecting; a storm's group costs a few renders per message, not one per alert.
    ``fits`` has been asked about the count returned."""
    good, step = 0, 1
    probe = min(max(guess, 1), available)
    while fits(probe):
        good = probe
        if good == available:
            return good
        probe, step = min(good + step, available), step * 2
    bad = probe
    while bad - good > 1:
        middle = (good + bad) // 2
        if fits(middle):
            good = middle
        else:
            bad = middle
    return max(good, 1)
