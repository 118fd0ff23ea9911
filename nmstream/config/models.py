"""pydantic models of notification-manager's ``notification.kubesphere.io/v2alpha1`` kinds.

Field names follow the upstream v2alpha1 API (camelCase on the wire, snake_case here). Where
later upstream versions or the seed README use another shape, both are accepted: DingTalk
``chatid`` or ``chatids``, a port as string or number. NotificationManager also carries
nmstream's pipeline settings (``groupLabels``, ``batchMaxSize``, ``batchMaxWait``).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

CHANNELS: tuple[str, ...] = ("email", "wechat", "slack", "webhook", "dingtalk")


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
        """Whether an object (or alert) with these labels is selected. (A plain loop, and no
        generator for the usual no expressions: ``all()`` over generators cost three times as
        much, and every snapshot asks this of every receiver and config.)"""
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        return not self.match_expressions or all(e.holds(labels) for e in self.match_expressions)


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
    template: str | None = Field(None, description="the message template's name")

    def config_selector(self) -> LabelSelector | None:
        """The receiver's ``xxxConfigSelector``."""
        raise NotImplementedError


# --- email ---------------------------------------------------------------------------------


class HostPort(_Model):
    """SMTP server address; upstream's port is a string, numbers are accepted too."""

    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535, json_schema_extra={"x-kubernetes-int-or-string": True})

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
    subject_template: str | None = Field(None, alias="subjectTemplate")
    email_config_selector: LabelSelector | None = Field(None, alias="emailConfigSelector")

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
    """Users, parties and tags (``|``-separated, as the WeChat API takes them)."""

    to_user: str | None = Field(None, alias="toUser")
    to_party: str | None = Field(None, alias="toParty")
    to_tag: str | None = Field(None, alias="toTag")
    wechat_config_selector: LabelSelector | None = Field(None, alias="wechatConfigSelector")

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
    """The Slack bot token."""

    slack_token_secret: SecretKeySelector = Field(alias="slackTokenSecret")


class SlackReceiverSpec(_ReceiverSpec):
    """The channel (or user) to post to."""

    channel: str = Field(min_length=1)
    slack_config_selector: LabelSelector | None = Field(None, alias="slackConfigSelector")

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

    url: str | None = None
    service: ServiceReference | None = None
    http_config: HTTPClientConfig | None = Field(None, alias="httpConfig")
    webhook_config_selector: LabelSelector | None = Field(None, alias="webhookConfigSelector")

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
    """Chat ids; v2alpha1 has one ``chatid``, later versions a ``chatids`` list."""

    chat_ids: list[str] = Field(default_factory=list, alias="chatids")
    chat_id: str | None = Field(None, alias="chatid")

    def all_ids(self) -> list[str]:
        """Every chat id, either form."""
        return [*self.chat_ids, *([self.chat_id] if self.chat_id else [])]


class DingTalkReceiverSpec(_ReceiverSpec):
    """A chatbot and/or a conversation."""

    chatbot: DingTalkChatBot | None = None
    conversation: DingTalkConversation | None = None
    dingtalk_config_selector: LabelSelector | None = Field(None, alias="dingtalkConfigSelector")

    @model_validator(mode="after")
    def _has_a_target(self) -> DingTalkReceiverSpec:
        if self.chatbot is None and not (self.conversation and self.conversation.all_ids()):
            raise ValueError("chatbot or conversation.chatid(s) is required")
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


class Options(_Model):
    """Per-channel receiver options."""

    global_: GlobalOptions | None = Field(None, alias="global")
    email: EmailOptions | None = None
    wechat: _ChannelOptions | None = None
    slack: _ChannelOptions | None = None
    webhook: _ChannelOptions | None = None
    dingtalk: _ChannelOptions | None = None


def _type_selector(value: str) -> LabelSelector:
    return LabelSelector.model_validate({"matchLabels": {"type": value}})


class ReceiversSpec(_Model):
    """Tenancy: the tenant key and which receivers are global or a tenant's.

    Defaults as notification-manager documents them: tenants by ``namespace``, global
    receivers labelled ``type: global``, tenant receivers ``type: tenant``.
    """

    tenant_key: str = Field("namespace", alias="tenantKey", min_length=1)
    global_receiver_selector: LabelSelector = Field(
        default_factory=lambda: _type_selector("global"), alias="globalReceiverSelector"
    )
    tenant_receiver_selector: LabelSelector = Field(
        default_factory=lambda: _type_selector("tenant"), alias="tenantReceiverSelector"
    )
    options: Options | None = None


class HistoryReceiver(_Model):
    """Where the history of delivered notifications is posted (a virtual webhook receiver)."""

    webhook: WebhookReceiverSpec


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
    history: HistoryReceiver | None = None


# --- kinds ---------------------------------------------------------------------------------


class _Resource(_Model):
    api_version: Literal["notification.kubesphere.io/v2alpha1"] = Field(alias="apiVersion")
    metadata: ObjectMeta


class NotificationManager(_Resource):
    """The NotificationManager."""

    kind: Literal["NotificationManager"]
    spec: NotificationManagerSpec


class EmailConfig(_Resource):
    """EmailConfig."""

    kind: Literal["EmailConfig"]
    spec: EmailConfigSpec


class EmailReceiver(_Resource):
    """EmailReceiver."""

    kind: Literal["EmailReceiver"]
    spec: EmailReceiverSpec


class WechatConfig(_Resource):
    """WechatConfig."""

    kind: Literal["WechatConfig"]
    spec: WechatConfigSpec


class WechatReceiver(_Resource):
    """WechatReceiver."""

    kind: Literal["WechatReceiver"]
    spec: WechatReceiverSpec


class SlackConfig(_Resource):
    """SlackConfig."""

    kind: Literal["SlackConfig"]
    spec: SlackConfigSpec


class SlackReceiver(_Resource):
    """SlackReceiver."""

    kind: Literal["SlackReceiver"]
    spec: SlackReceiverSpec


class WebhookConfig(_Resource):
    """WebhookConfig."""

    kind: Literal["WebhookConfig"]
    spec: WebhookConfigSpec = Field(default_factory=WebhookConfigSpec)


class WebhookReceiver(_Resource):
    """WebhookReceiver."""

    kind: Literal["WebhookReceiver"]
    spec: WebhookReceiverSpec


class DingTalkConfig(_Resource):
    """DingTalkConfig."""

    kind: Literal["DingTalkConfig"]
    spec: DingTalkConfigSpec = Field(default_factory=DingTalkConfigSpec)


class DingTalkReceiver(_Resource):
    """DingTalkReceiver."""

    kind: Literal["DingTalkReceiver"]
    spec: DingTalkReceiverSpec


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


class RoleBinding(_Model):
    """rbac.authorization.k8s.io/v1 RoleBinding: who belongs to a namespace."""

    api_version: Literal["rbac.authorization.k8s.io/v1"] = Field(alias="apiVersion")
    kind: Literal["RoleBinding"]
    metadata: ObjectMeta
    subjects: list[Subject] = Field(default_factory=list)
    role_ref: RoleRef = Field(alias="roleRef")


class Secret(_Model):
    """core/v1 Secret; ``stringData`` wins over ``data`` as in the apiserver."""

    api_version: Literal["v1"] = Field(alias="apiVersion")
    kind: Literal["Secret"]
    metadata: ObjectMeta
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


Resource = Annotated[
    NotificationManager
    | EmailConfig
    | EmailReceiver
    | WechatConfig
    | WechatReceiver
    | SlackConfig
    | SlackReceiver
    | WebhookConfig
    | WebhookReceiver
    | DingTalkConfig
    | DingTalkReceiver
    | RoleBinding
    | Secret,
    Field(discriminator="kind"),
]
_RESOURCE: TypeAdapter[Resource] = TypeAdapter(Resource)

RECEIVER_KINDS: dict[str, type[_Resource]] = {
    "email": EmailReceiver,
    "wechat": WechatReceiver,
    "slack": SlackReceiver,
    "webhook": WebhookReceiver,
    "dingtalk": DingTalkReceiver,
}
CONFIG_KINDS: dict[str, type[_Resource]] = {
    "email": EmailConfig,
    "wechat": WechatConfig,
    "slack": SlackConfig,
    "webhook": WebhookConfig,
    "dingtalk": DingTalkConfig,
}


def parse_resource(obj: Mapping[str, Any]) -> Any:
    """The model of ``obj`` by its ``kind``; raises ValidationError naming the bad field."""
    return _RESOURCE.validate_python(obj)
