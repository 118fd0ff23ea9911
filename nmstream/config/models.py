"""pydantic models of notification-manager's ``notification.kubesphere.io/v2alpha1`` kinds.

Field names and shapes follow upstream v2alpha1 (notification-manager v0.8.0): camelCase on the
wire, snake_case here. Beyond v2alpha1 the models also accept

- nmstream's own NotificationManager settings (``groupLabels``, ``batchMaxSize``,
  ``batchMaxWait``, ``dedupWindow``) and a few receiver fields of later upstream versions that
  nmstream honours (``template``, ``subjectTemplate``, DingTalk ``atMobiles``/``atUsers``/
  ``atAll``) — the CRDs in ``crds/`` carry these too;
- later upstream shapes where they differ from v2alpha1 (WeChat recipient lists, Slack
  ``channels``, DingTalk ``chatids``, numeric SMTP ports) — the CRDs keep v2alpha1's.
"""

from __future__ import annotations

import base64
import binascii
from abc import abstractmethod
from collections.abc import Mapping
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

CHANNELS: tuple[str, ...] = ("email", "wechat", "slack", "webhook", "dingtalk")
API_VERSION = "notification.kubesphere.io/v2alpha1"


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


class LabelSelectorRequirement(_Model):
    """One ``matchExpressions`` entry."""

    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _values_fit_operator(self) -> LabelSelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"operator {self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"operator {self.operator} takes no values")
        return self

    def holds(self, labels: Mapping[str, str]) -> bool:
        """Kubernetes semantics: NotIn and DoesNotExist hold for an absent key."""
        present = self.key in labels
        match self.operator:
            case "In":
                return present and labels[self.key] in self.values
            case "NotIn":
                return not present or labels[self.key] not in self.values
            case "Exists":
                return present
            case _:
                return not present


class LabelSelector(_Model):
    """A Kubernetes label selector; the empty selector matches everything."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: list[LabelSelectorRequirement] = Field(
        default_factory=list, alias="matchExpressions"
    )

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether an object (or alert) with these labels is selected."""
        return all(labels.get(k) == v for k, v in self.match_labels.items()) and all(
            e.holds(labels) for e in self.match_expressions
        )


class SecretKeySelector(_Model):
    """A key of a Secret; the namespace defaults to the NotificationManager's secret namespace."""

    name: str = Field(min_length=1)
    key: str = Field(min_length=1)
    namespace: str | None = None


class ObjectMeta(_Model):
    """The metadata fields nmstream uses."""

    name: str = Field(min_length=1)
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = Field(None, alias="resourceVersion")
    generation: int | None = None


# --- shared pieces -------------------------------------------------------------------------


class ClientCertificate(_Model):
    """Client certificate and key for mutual TLS."""

    cert: SecretKeySelector | None = None
    key: SecretKeySelector | None = None


class TLSConfig(_Model):
    """TLS options of an SMTP or HTTP connection."""

    root_ca: SecretKeySelector | None = Field(None, alias="rootCA")
    client_certificate: ClientCertificate | None = Field(None, alias="clientCertificate")
    server_name: str | None = Field(None, alias="serverName")
    insecure_skip_verify: bool = Field(False, alias="insecureSkipVerify")


class BasicAuth(_Model):
    """HTTP basic authentication."""

    username: str
    password: SecretKeySelector | None = None


class HTTPClientConfig(_Model):
    """How the webhook sender authenticates and connects."""

    basic_auth: BasicAuth | None = Field(None, alias="basicAuth")
    bearer_token: SecretKeySelector | None = Field(None, alias="bearerToken")
    proxy_url: str | None = Field(None, alias="proxyUrl")
    tls_config: TLSConfig | None = Field(None, alias="tlsConfig")


class _ReceiverSpec(_Model):
    """What every receiver has: a config selector (named per channel) and an alert filter."""

    alert_selector: LabelSelector | None = Field(None, alias="alertSelector")
    template: str | None = Field(None, description="nmstream extension: the message template")

    @abstractmethod
    def config_selector(self) -> LabelSelector | None:
        """The receiver's ``xxxConfigSelector``."""


# --- email ---------------------------------------------------------------------------------


class HostPort(_Model):
    """SMTP server address; the port is a string upstream, numbers are accepted too."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)

    @field_validator("port", mode="before")
    @classmethod
    def _port_from_string(cls, value: Any) -> Any:
        return int(value) if isinstance(value, str) and value.strip().isdigit() else value


class EmailConfigSpec(_Model):
    """SMTP server, sender and credentials."""

    from_: str = Field(alias="from", min_length=1)
    smart_host: HostPort = Field(alias="smartHost")
    hello: str | None = None
    auth_username: str | None = Field(None, alias="authUsername")
    auth_identify: str | None = Field(None, alias="authIdentify")
    auth_password: SecretKeySelector | None = Field(None, alias="authPassword")
    auth_secret: SecretKeySelector | None = Field(None, alias="authSecret")
    require_tls: bool | None = Field(None, alias="requireTLS")
    tls: TLSConfig | None = None


class EmailReceiverSpec(_ReceiverSpec):
    """Recipient addresses."""

    to: list[str] = Field(min_length=1)
    email_config_selector: LabelSelector | None = Field(None, alias="emailConfigSelector")
    subject_template: str | None = Field(
        None, alias="subjectTemplate", description="nmstream extension: the subject template"
    )

    def config_selector(self) -> LabelSelector | None:
        """``emailConfigSelector``."""
        return self.email_config_selector


# --- wechat --------------------------------------------------------------------------------


class WechatConfigSpec(_Model):
    """WeChat Work application credentials."""

    wechat_api_url: str | None = Field(None, alias="wechatApiUrl")
    wechat_api_corp_id: str = Field(alias="wechatApiCorpId", min_length=1)
    wechat_api_agent_id: str = Field(alias="wechatApiAgentId", min_length=1)
    wechat_api_secret: SecretKeySelector = Field(alias="wechatApiSecret")


class WechatReceiverSpec(_ReceiverSpec):
    """Users, parties and tags, ``|``-separated as the WeChat API takes them (v2alpha1);
    later upstream lists are joined."""

    wechat_config_selector: LabelSelector | None = Field(None, alias="wechatConfigSelector")
    to_user: str | None = Field(None, alias="toUser")
    to_party: str | None = Field(None, alias="toParty")
    to_tag: str | None = Field(None, alias="toTag")

    @field_validator("to_user", "to_party", "to_tag", mode="before")
    @classmethod
    def _join_lists(cls, value: Any) -> Any:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return "|".join(value) or None
        return value

    @model_validator(mode="after")
    def _has_a_target(self) -> WechatReceiverSpec:
        if not (self.to_user or self.to_party or self.to_tag):
            raise ValueError("one of toUser, toParty, toTag is required")
        return self

    def config_selector(self) -> LabelSelector | None:
        """``wechatConfigSelector``."""
        return self.wechat_config_selector


# --- slack ---------------------------------------------------------------------------------


class SlackConfigSpec(_Model):
    """The Slack bot token (optional upstream, but nothing can be sent without it)."""

    slack_token_secret: SecretKeySelector = Field(alias="slackTokenSecret")


class SlackReceiverSpec(_ReceiverSpec):
    """The channel (or user) to post to: v2alpha1's ``channel``, or later upstream's list."""

    slack_config_selector: LabelSelector | None = Field(None, alias="slackConfigSelector")
    channel: str | None = Field(None, min_length=1)
    channels: list[str] | None = None

    @model_validator(mode="after")
    def _has_a_channel(self) -> SlackReceiverSpec:
        if not self.all_channels():
            raise ValueError("channel (or channels) is required")
        return self

    def all_channels(self) -> list[str]:
        """Every channel, either form, without repeats."""
        return list(dict.fromkeys([*([self.channel] if self.channel else []),
                                   *(self.channels or [])]))

    def config_selector(self) -> LabelSelector | None:
        """``slackConfigSelector``."""
        return self.slack_config_selector


# --- webhook -------------------------------------------------------------------------------


class WebhookConfigSpec(_Model):
    """Empty upstream: a webhook receiver carries its own endpoint."""


class ServiceReference(_Model):
    """An in-cluster Service as the webhook endpoint."""

    namespace: str = Field(min_length=1)
    name: str = Field(min_length=1)
    path: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    scheme: Literal["http", "https"] | None = None


class WebhookReceiverSpec(_ReceiverSpec):
    """Where to POST: ``url`` or ``service``, exactly one."""

    webhook_config_selector: LabelSelector | None = Field(None, alias="webhookConfigSelector")
    url: str | None = None
    service: ServiceReference | None = None
    http_config: HTTPClientConfig | None = Field(None, alias="httpConfig")

    @model_validator(mode="after")
    def _one_endpoint(self) -> WebhookReceiverSpec:
        if (self.url is None) == (self.service is None):
            raise ValueError("exactly one of url or service is required")
        return self

    def config_selector(self) -> LabelSelector | None:
        """``webhookConfigSelector``."""
        return self.webhook_config_selector


# --- dingtalk ------------------------------------------------------------------------------


class DingTalkApplicationConfig(_Model):
    """The DingTalk application used for conversations."""

    app_key: SecretKeySelector | None = Field(None, alias="appkey")
    app_secret: SecretKeySelector | None = Field(None, alias="appsecret")


class DingTalkConfigSpec(_Model):
    """Only needed to send to conversations."""

    conversation: DingTalkApplicationConfig | None = None


class DingTalkChatBot(_Model):
    """A custom chatbot: webhook URL (a secret), keywords, signing secret, @mentions."""

    webhook: SecretKeySelector
    keywords: list[str] = Field(default_factory=list)
    secret: SecretKeySelector | None = None
    at_mobiles: list[str] = Field(default_factory=list, alias="atMobiles")
    at_users: list[str] = Field(default_factory=list, alias="atUsers")
    at_all: bool = Field(False, alias="atAll")


class DingTalkConversation(_Model):
    """Chat ids: v2alpha1's single ``chatid`` or later upstream's ``chatids``."""

    chat_id: str | None = Field(None, alias="chatid", min_length=1)
    chat_ids: list[str] | None = Field(None, alias="chatids")

    @model_validator(mode="after")
    def _has_an_id(self) -> DingTalkConversation:
        if not self.all_ids():
            raise ValueError("conversation needs chatid (or chatids)")
        return self

    def all_ids(self) -> list[str]:
        """Every chat id, either form, without repeats."""
        return list(dict.fromkeys([*([self.chat_id] if self.chat_id else []),
                                   *(self.chat_ids or [])]))


class DingTalkReceiverSpec(_ReceiverSpec):
    """A chatbot and/or a conversation."""

    dingtalk_config_selector: LabelSelector | None = Field(None, alias="dingtalkConfigSelector")
    chatbot: DingTalkChatBot | None = None
    conversation: DingTalkConversation | None = None

    @model_validator(mode="after")
    def _has_a_target(self) -> DingTalkReceiverSpec:
        if self.chatbot is None and self.conversation is None:
            raise ValueError("chatbot or conversation is required")
        return self

    def config_selector(self) -> LabelSelector | None:
        """``dingtalkConfigSelector``."""
        return self.dingtalk_config_selector


# --- NotificationManager -------------------------------------------------------------------


class _ChannelOptions(_Model):
    notification_timeout: int | None = Field(None, ge=1, alias="notificationTimeout")
    template: str | None = None


class GlobalOptions(_Model):
    """Options for every channel."""

    template_files: list[str] = Field(default_factory=list, alias="templateFile")
    template: str | None = None
    cluster: str | None = None


class EmailOptions(_ChannelOptions):
    """Email delivery options."""

    delivery_type: Literal["bulk", "single"] | None = Field(None, alias="deliveryType")
    max_email_receivers: int | None = Field(None, ge=1, alias="maxEmailReceivers")
    subject_template: str | None = Field(None, alias="subjectTemplate")


class WechatOptions(_ChannelOptions):
    """WeChat options; ``tokenExpires`` is a Go duration in nanoseconds."""

    message_max_size: int | None = Field(None, alias="messageMaxSize")
    token_expires: int | None = Field(None, alias="tokenExpires")


class SlackOptions(_ChannelOptions):
    """Slack options."""


class WebhookOptions(_ChannelOptions):
    """Webhook options."""


class Throttle(_Model):
    """Flow control: ``threshold`` calls per ``unit``; durations in nanoseconds."""

    threshold: int | None = None
    unit: int | None = None
    max_wait_time: int | None = Field(None, alias="maxWaitTime")


class DingTalkOptions(_ChannelOptions):
    """DingTalk options; ``tokenExpires`` is a Go duration in nanoseconds."""

    token_expires: int | None = Field(None, alias="tokenExpires")
    conversation_message_max_size: int | None = Field(None, alias="conversationMessageMaxSize")
    chatbot_message_max_size: int | None = Field(None, alias="chatbotMessageMaxSize")
    chatbot_throttle: Throttle | None = Field(None, alias="chatBotThrottle")
    conversation_throttle: Throttle | None = Field(None, alias="conversationThrottle")


class ReceiverOptions(_Model):
    """Per-channel receiver options."""

    global_: GlobalOptions | None = Field(None, alias="global")
    email: EmailOptions | None = None
    wechat: WechatOptions | None = None
    slack: SlackOptions | None = None
    webhook: WebhookOptions | None = None
    dingtalk: DingTalkOptions | None = None


def _type_selector(value: str) -> LabelSelector:
    return LabelSelector.model_validate({"matchLabels": {"type": value}})


class ReceiversSpec(_Model):
    """Tenancy: the tenant key and which receivers are global or a tenant's.

    The CRD requires all three; the model defaults them as notification-manager documents
    (tenants by ``namespace``, receivers labelled ``type: global`` / ``type: tenant``), so a
    partial NotificationManager from a file still works.
    """

    tenant_key: str = Field("namespace", alias="tenantKey", min_length=1)
    global_receiver_selector: LabelSelector = Field(
        default_factory=lambda: _type_selector("global"), alias="globalReceiverSelector"
    )
    tenant_receiver_selector: LabelSelector = Field(
        default_factory=lambda: _type_selector("tenant"), alias="tenantReceiverSelector"
    )
    options: ReceiverOptions | None = None


class NotificationManagerSpec(_Model):
    """What nmstream reads of a NotificationManager (deployment fields are ignored)."""

    receivers: ReceiversSpec
    default_config_selector: LabelSelector | None = Field(None, alias="defaultConfigSelector")
    default_secret_namespace: str | None = Field(None, alias="defaultSecretNamespace")
    group_labels: list[str] | None = Field(None, alias="groupLabels")
    batch_max_size: int | None = Field(None, ge=1, alias="batchMaxSize")
    batch_max_wait: str | None = Field(None, alias="batchMaxWait")
    dedup_window: str | None = Field(
        None, alias="dedupWindow", description="nmstream: drop repeats within it; 0s disables"
    )


# --- kinds ---------------------------------------------------------------------------------

SpecT = TypeVar("SpecT")


class Resource(_Model, Generic[SpecT]):
    """A Kubernetes object nmstream reads: apiVersion, kind, metadata and its spec."""

    api_version: str = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: SpecT


class _NotificationResource(Resource[SpecT], Generic[SpecT]):
    api_version: Literal["notification.kubesphere.io/v2alpha1"] = Field(alias="apiVersion")


class NotificationManager(_NotificationResource[NotificationManagerSpec]):
    """The NotificationManager."""

    kind: Literal["NotificationManager"]


class EmailConfig(_NotificationResource[EmailConfigSpec]):
    """EmailConfig."""

    kind: Literal["EmailConfig"]


class EmailReceiver(_NotificationResource[EmailReceiverSpec]):
    """EmailReceiver."""

    kind: Literal["EmailReceiver"]


class WechatConfig(_NotificationResource[WechatConfigSpec]):
    """WechatConfig."""

    kind: Literal["WechatConfig"]


class WechatReceiver(_NotificationResource[WechatReceiverSpec]):
    """WechatReceiver."""

    kind: Literal["WechatReceiver"]


class SlackConfig(_NotificationResource[SlackConfigSpec]):
    """SlackConfig."""

    kind: Literal["SlackConfig"]


class SlackReceiver(_NotificationResource[SlackReceiverSpec]):
    """SlackReceiver."""

    kind: Literal["SlackReceiver"]


class WebhookConfig(_NotificationResource[WebhookConfigSpec]):
    """WebhookConfig; its spec is empty and may be left out."""

    kind: Literal["WebhookConfig"]
    spec: WebhookConfigSpec = Field(default_factory=WebhookConfigSpec)


class WebhookReceiver(_NotificationResource[WebhookReceiverSpec]):
    """WebhookReceiver."""

    kind: Literal["WebhookReceiver"]


class DingTalkConfig(_NotificationResource[DingTalkConfigSpec]):
    """DingTalkConfig; its spec may be left out (chatbots need no config)."""

    kind: Literal["DingTalkConfig"]
    spec: DingTalkConfigSpec = Field(default_factory=DingTalkConfigSpec)


class DingTalkReceiver(_NotificationResource[DingTalkReceiverSpec]):
    """DingTalkReceiver."""

    kind: Literal["DingTalkReceiver"]


class Subject(_Model):
    """A RoleBinding subject."""

    kind: str
    name: str
    namespace: str | None = None
    api_group: str | None = Field(None, alias="apiGroup")


class RoleRef(_Model):
    """The role a RoleBinding grants."""

    api_group: str = Field(alias="apiGroup")
    kind: str
    name: str


class RoleBinding(Resource[None]):
    """rbac.authorization.k8s.io/v1 RoleBinding: who belongs to a namespace (no spec)."""

    api_version: Literal["rbac.authorization.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["RoleBinding"]
    spec: None = Field(None, exclude=True)
    subjects: list[Subject] = Field(default_factory=list)
    role_ref: RoleRef = Field(alias="roleRef")


class Secret(Resource[None]):
    """core/v1 Secret (no spec); ``stringData`` wins over ``data`` as in the apiserver."""

    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Secret"]
    spec: None = Field(None, exclude=True)
    type: str | None = None
    data: dict[str, str] = Field(default_factory=dict)
    string_data: dict[str, str] = Field(default_factory=dict, alias="stringData")

    @field_validator("data")
    @classmethod
    def _base64(cls, data: dict[str, str]) -> dict[str, str]:
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except binascii.Error as exc:
                raise ValueError(f"data.{key} is not base64") from exc
        return data

    def decoded(self) -> dict[str, bytes]:
        """The values, decoded."""
        values = {k: base64.b64decode(v) for k, v in self.data.items()}
        values.update({k: v.encode() for k, v in self.string_data.items()})
        return values


RECEIVER_KINDS: dict[str, type[Resource[Any]]] = {
    "email": EmailReceiver,
    "wechat": WechatReceiver,
    "slack": SlackReceiver,
    "webhook": WebhookReceiver,
    "dingtalk": DingTalkReceiver,
}
CONFIG_KINDS: dict[str, type[Resource[Any]]] = {
    "email": EmailConfig,
    "wechat": WechatConfig,
    "slack": SlackConfig,
    "webhook": WebhookConfig,
    "dingtalk": DingTalkConfig,
}
_OTHER_KINDS: tuple[type[Resource[Any]], ...] = (NotificationManager, RoleBinding, Secret)
#: Every kind ``parse_resource`` knows, by ``kind``.
KINDS: dict[str, type[Resource[Any]]] = {
    m.__name__: m for m in (*_OTHER_KINDS, *CONFIG_KINDS.values(), *RECEIVER_KINDS.values())
}


def parse_resource(obj: Mapping[str, Any]) -> Resource[Any]:
    """The model of ``obj`` by its ``kind``: ValidationError naming the bad field, ValueError
    for a kind nmstream does not know."""
    kind = obj.get("kind")
    model = KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    return model.model_validate(obj)
