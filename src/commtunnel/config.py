"""Settings: defaults, overridden by ``COMMTUNNEL_*`` environment variables, then CLI flags.

Read only when asked (``Settings.from_env()``), never at import time.

| variable | default | meaning |
| --- | --- | --- |
| COMMTUNNEL_DB | ./commtunnel.db | SQLite path (or ``sqlite:///path``) or ``postgresql://...`` |
| COMMTUNNEL_DB_POOL_SIZE | 10 | PostgreSQL connections one process may open |
| COMMTUNNEL_EMAIL_PROVIDER | outbox://./outbox | provider URL for email |
| COMMTUNNEL_EMAIL_PROVIDERS | (none) | email provider URLs in failover order, comma-separated |
| COMMTUNNEL_HOST / COMMTUNNEL_PORT | 127.0.0.1 / 8025 | where ``serve`` listens |
| COMMTUNNEL_EMBEDDED_WORKER | true | run the dispatch worker inside ``serve`` |
| COMMTUNNEL_IDEMPOTENCY_RETENTION | 86400 | seconds an idempotency key is remembered |
| COMMTUNNEL_MAX_BODY_BYTES | 10485760 | request body limit, bytes (413 above) |
| COMMTUNNEL_MAX_ATTEMPTS | 8 | provider calls before a message is FAILED |
| COMMTUNNEL_RETRY_BASE_DELAY | 10 | seconds before the first retry (doubles each time) |
| COMMTUNNEL_RETRY_MAX_DELAY | 3600 | ceiling of one backoff wait, seconds |
| COMMTUNNEL_LEASE_SECONDS | 60 | a claimed job's lease, seconds |
| COMMTUNNEL_SEND_TIMEOUT | 30 | one provider call's limit, seconds |
| COMMTUNNEL_WORKER_CONCURRENCY | 16 | provider calls in flight per worker |
| COMMTUNNEL_SMS_PROVIDER | outbox://./outbox | SMS provider URL (twilio:, sms+https:) |
| COMMTUNNEL_SMS_PROVIDERS | (none) | ordered, comma-separated SMS provider URLs (failover) |
| COMMTUNNEL_BREAKER_FAILURES | 5 | consecutive provider-wide failures that open a circuit |
| COMMTUNNEL_BREAKER_COOLDOWN | 30 | seconds an open circuit waits before a half-open probe |
| COMMTUNNEL_SCHEDULE_HORIZON | 2592000 | how far ahead ``scheduledAt`` may be, seconds (30 days) |
| COMMTUNNEL_BATCH_MAX_MESSAGES | 100 | messages one ``POST /emails/batch`` may carry |
| COMMTUNNEL_RATE_LIMIT | 100/minute | default per-API-key request limit (``limits`` notation) |
| COMMTUNNEL_REDIS_URL | (none) | Redis for rate limits shared by several servers (else in memory) |
| COMMTUNNEL_TRUSTED_PROXIES | (none) | CIDRs (comma-separated) whose X-Forwarded-For is believed |
| COMMTUNNEL_RETENTION | 7776000 | seconds messages, events and attempts are kept (90 days) |
| COMMTUNNEL_PURGE_BATCH | 500 | messages one purge step deletes |
| COMMTUNNEL_PURGE_INTERVAL | 60 | seconds between the worker's purge passes |
| COMMTUNNEL_SMS_DEFAULT_SENDER_ID | (none) | platform sender ID every organization may use |
| COMMTUNNEL_OTP_COOLDOWN | 60 | seconds between OTPs to one number for one purpose |
| COMMTUNNEL_SMS_HELP_TEXT | (see below) | reply to HELP / INFO |
| COMMTUNNEL_SMS_STOP_TEXT | (see below) | reply confirming STOP |
| COMMTUNNEL_SMS_START_TEXT | (see below) | reply confirming START |
| COMMTUNNEL_PUBLIC_URL | (none) | this server's public base URL, for provider status callbacks |
| COMMTUNNEL_SECRET_KEY | (none) | key that encrypts stored secrets (tenant WhatsApp tokens) |
| COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE | 0,5,300,...,36000 | seconds before each webhook attempt |
| COMMTUNNEL_WEBHOOK_TIMEOUT | 15 | one webhook POST's limit, seconds |
| COMMTUNNEL_WEBHOOK_DISABLE_AFTER | 432000 | seconds failing before an endpoint is disabled |
| COMMTUNNEL_WEBHOOK_SECRET_GRACE | 86400 | seconds the old secret keeps signing after a rotation |
| COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE | false | allow webhook URLs on loopback/private addresses |
| WHATSAPP_CLOUD_API_ENABLED | false | turn the WhatsApp Cloud channel on |
| WHATSAPP_ACCESS_TOKEN | (none) | platform Graph API token (default line) |
| WHATSAPP_PHONE_NUMBER_ID | (none) | platform default line (Meta phone number id) |
| WHATSAPP_VERIFY_TOKEN | (none) | ``hub.verify_token`` for the webhook handshake |
| WHATSAPP_APP_SECRET | (none) | Meta app secret: checks ``X-Hub-Signature-256`` |
| WHATSAPP_LINE_MAP | (none) | ``pnid=org,...`` or JSON: phone number id -> org id or name |
| WHATSAPP_GRAPH_API_VERSION | v21.0 | Graph API version in request paths |
| WHATSAPP_GRAPH_BASE_URL | https://graph.facebook.com | Graph base URL (fakes, proxies) |
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import attrs

from commtunnel.domain.delivery import RetryPolicy
from commtunnel.domain.webhooks import DEFAULT_RETRY_SCHEDULE, parse_retry_schedule

DEFAULT_DB = "commtunnel.db"
DEFAULT_EMAIL_PROVIDER = "outbox://./outbox"
DEFAULT_SMS_PROVIDER = "outbox://./outbox"
DEFAULT_SMS_HELP_TEXT = (
    "Reply STOP to unsubscribe, START to subscribe again. Msg&data rates may apply."
)
DEFAULT_SMS_STOP_TEXT = (
    "You are unsubscribed and will receive no more messages. Reply START to resubscribe."
)
DEFAULT_SMS_START_TEXT = "You are subscribed again. Reply STOP to unsubscribe, HELP for help."


def is_postgres_url(db: str) -> bool:
    """Whether ``COMMTUNNEL_DB`` names a PostgreSQL database (else it is a SQLite path)."""
    return db.startswith(("postgresql://", "postgres://"))


def sqlite_path(db: str) -> str:
    """The file a SQLite ``COMMTUNNEL_DB`` names (``sqlite:///relative``, ``sqlite:////absolute``
    or a plain path)."""
    return db.removeprefix("sqlite:///")


def _bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"not a boolean: {value!r}")


def _url_list(value: str | None) -> list[str]:
    """Comma-separated URLs, blanks dropped (a comma inside a URL is written ``%2C``)."""
    if value is None:
        return []
    return [part.strip() for part in value.split(",") if part.strip()]


def _secret_key_length(_instance: object, _attribute: object, value: str | None) -> None:
    if value is not None and len(value) < 16:
        raise ValueError("COMMTUNNEL_SECRET_KEY must be at least 16 characters (use 32+ random)")


@attrs.frozen(kw_only=True)
class Settings:
    """Everything configurable, with units in the names' docs (see module table)."""

    db: str = DEFAULT_DB
    db_pool_size: int = 10
    email_provider: str = attrs.field(default=DEFAULT_EMAIL_PROVIDER, repr=False)
    host: str = "127.0.0.1"
    port: int = 8025
    embedded_worker: bool = True
    idempotency_retention: float = 86_400.0
    max_body_bytes: int = 10 * 1024 * 1024
    max_attempts: int = 8
    retry_base_delay: float = 10.0
    retry_max_delay: float = 3600.0
    lease_seconds: float = 60.0
    send_timeout: float = 30.0
    worker_concurrency: int = 16
    sms_provider: str = attrs.field(default=DEFAULT_SMS_PROVIDER, repr=False)  # may hold a token
    email_providers: str | None = attrs.field(default=None, repr=False)
    sms_providers: str | None = attrs.field(default=None, repr=False)
    breaker_failures: int = 5
    breaker_cooldown: float = 30.0
    schedule_horizon: float = 30 * 86_400.0
    batch_max_messages: int = 100
    rate_limit: str = "100/minute"
    redis_url: str | None = attrs.field(default=None, repr=False)
    trusted_proxies: str | None = None
    retention: float = 90 * 86_400.0
    purge_batch: int = 500
    purge_interval: float = 60.0
    sms_default_sender_id: str | None = None
    otp_cooldown: float = 60.0
    sms_help_text: str = DEFAULT_SMS_HELP_TEXT
    sms_stop_text: str = DEFAULT_SMS_STOP_TEXT
    sms_start_text: str = DEFAULT_SMS_START_TEXT
    public_url: str | None = None
    secret_key: str | None = attrs.field(default=None, repr=False, validator=_secret_key_length)
    webhook_retry_schedule: tuple[float, ...] = DEFAULT_RETRY_SCHEDULE
    webhook_timeout: float = 15.0
    webhook_disable_after: float = 5 * 86_400.0
    webhook_secret_grace: float = 86_400.0
    webhooks_allow_private: bool = False
    whatsapp_enabled: bool = False
    whatsapp_access_token: str | None = attrs.field(default=None, repr=False)
    whatsapp_phone_number_id: str | None = None
    whatsapp_verify_token: str | None = attrs.field(default=None, repr=False)
    whatsapp_app_secret: str | None = attrs.field(default=None, repr=False)
    whatsapp_line_map: str | None = None
    whatsapp_graph_api_version: str = "v21.0"
    whatsapp_graph_base_url: str = "https://graph.facebook.com"

    _ENV: ClassVar[dict[str, tuple[str, Any]]] = {
        "COMMTUNNEL_DB": ("db", str),
        "COMMTUNNEL_DB_POOL_SIZE": ("db_pool_size", int),
        "COMMTUNNEL_EMAIL_PROVIDER": ("email_provider", str),
        "COMMTUNNEL_HOST": ("host", str),
        "COMMTUNNEL_PORT": ("port", int),
        "COMMTUNNEL_EMBEDDED_WORKER": ("embedded_worker", _bool),
        "COMMTUNNEL_IDEMPOTENCY_RETENTION": ("idempotency_retention", float),
        "COMMTUNNEL_MAX_BODY_BYTES": ("max_body_bytes", int),
        "COMMTUNNEL_MAX_ATTEMPTS": ("max_attempts", int),
        "COMMTUNNEL_RETRY_BASE_DELAY": ("retry_base_delay", float),
        "COMMTUNNEL_RETRY_MAX_DELAY": ("retry_max_delay", float),
        "COMMTUNNEL_LEASE_SECONDS": ("lease_seconds", float),
        "COMMTUNNEL_SEND_TIMEOUT": ("send_timeout", float),
        "COMMTUNNEL_WORKER_CONCURRENCY": ("worker_concurrency", int),
        "COMMTUNNEL_SMS_PROVIDER": ("sms_provider", str),
        "COMMTUNNEL_EMAIL_PROVIDERS": ("email_providers", str),
        "COMMTUNNEL_SMS_PROVIDERS": ("sms_providers", str),
        "COMMTUNNEL_BREAKER_FAILURES": ("breaker_failures", int),
        "COMMTUNNEL_BREAKER_COOLDOWN": ("breaker_cooldown", float),
        "COMMTUNNEL_SCHEDULE_HORIZON": ("schedule_horizon", float),
        "COMMTUNNEL_BATCH_MAX_MESSAGES": ("batch_max_messages", int),
        "COMMTUNNEL_RATE_LIMIT": ("rate_limit", str),
        "COMMTUNNEL_REDIS_URL": ("redis_url", str),
        "COMMTUNNEL_TRUSTED_PROXIES": ("trusted_proxies", str),
        "COMMTUNNEL_RETENTION": ("retention", float),
        "COMMTUNNEL_PURGE_BATCH": ("purge_batch", int),
        "COMMTUNNEL_PURGE_INTERVAL": ("purge_interval", float),
        "COMMTUNNEL_SMS_DEFAULT_SENDER_ID": ("sms_default_sender_id", str),
        "COMMTUNNEL_OTP_COOLDOWN": ("otp_cooldown", float),
        "COMMTUNNEL_SMS_HELP_TEXT": ("sms_help_text", str),
        "COMMTUNNEL_SMS_STOP_TEXT": ("sms_stop_text", str),
        "COMMTUNNEL_SMS_START_TEXT": ("sms_start_text", str),
        "COMMTUNNEL_PUBLIC_URL": ("public_url", str),
        "COMMTUNNEL_SECRET_KEY": ("secret_key", str),
        "COMMTUNNEL_WEBHOOK_RETRY_SCHEDULE": ("webhook_retry_schedule", parse_retry_schedule),
        "COMMTUNNEL_WEBHOOK_TIMEOUT": ("webhook_timeout", float),
        "COMMTUNNEL_WEBHOOK_DISABLE_AFTER": ("webhook_disable_after", float),
        "COMMTUNNEL_WEBHOOK_SECRET_GRACE": ("webhook_secret_grace", float),
        "COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE": ("webhooks_allow_private", _bool),
        "WHATSAPP_CLOUD_API_ENABLED": ("whatsapp_enabled", _bool),
        "WHATSAPP_ACCESS_TOKEN": ("whatsapp_access_token", str),
        "WHATSAPP_PHONE_NUMBER_ID": ("whatsapp_phone_number_id", str),
        "WHATSAPP_VERIFY_TOKEN": ("whatsapp_verify_token", str),
        "WHATSAPP_APP_SECRET": ("whatsapp_app_secret", str),
        "WHATSAPP_LINE_MAP": ("whatsapp_line_map", str),
        "WHATSAPP_GRAPH_API_VERSION": ("whatsapp_graph_api_version", str),
        "WHATSAPP_GRAPH_BASE_URL": ("whatsapp_graph_base_url", str),
    }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults <- environment <- explicit ``overrides`` (None values are ignored).

        Raises:
            ValueError: a variable that does not parse (names the variable).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for var, (field, parse) in cls._ENV.items():
            if var in env and env[var] != "":
                try:
                    values[field] = parse(env[var])
                except ValueError as exc:
                    raise ValueError(f"{var}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def db_path(self) -> str:
        """The SQLite path (accepts ``sqlite:///relative`` and ``sqlite:////absolute``)."""
        return sqlite_path(self.db)

    @property
    def unshared_state_warning(self) -> str | None:
        """What a server or worker should warn about when it will not share state it should.

        Several processes on one database is what PostgreSQL is for; without
        Redis each would count API-key requests alone. None when all is shared.
        """
        if is_postgres_url(self.db) and self.redis_url is None:
            return (
                "COMMTUNNEL_DB is PostgreSQL but COMMTUNNEL_REDIS_URL is not set: each process "
                "enforces the rate limits alone (N processes allow N times the limit)"
            )
        return None

    @property
    def db_display(self) -> str:
        """The database for logs: the SQLite path, or the PostgreSQL URL without its password."""
        if is_postgres_url(self.db):
            from commtunnel.providers import redact_url

            return redact_url(self.db)
        return self.db_path

    @property
    def base_url(self) -> str:
        """Where this server is reached from outside, without a trailing slash.

        ``public_url`` when set, else ``http://host:port``; webhook and
        provider-callback URLs are this plus their path.
        """
        if self.public_url:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def email_provider_urls(self) -> list[str]:
        """The email providers in failover order: ``email_providers`` split, else the one."""
        return _url_list(self.email_providers) or [self.email_provider]

    @property
    def sms_provider_urls(self) -> list[str]:
        """The SMS providers in failover order: ``sms_providers`` split, else the one."""
        return _url_list(self.sms_providers) or [self.sms_provider]

    @property
    def retry_policy(self) -> RetryPolicy:
        """The retry policy these settings describe."""
        return RetryPolicy(
            max_attempts=self.max_attempts,
            base_delay=self.retry_base_delay,
            max_delay=self.retry_max_delay,
        )
