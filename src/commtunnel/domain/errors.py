"""The error tree: every failure Commtunnel reports carries a stable code.

::

    CommtunnelError                       code, http_status, details
    ├── ValidationError                   400 VALIDATION_ERROR (details: field -> reason)
    ├── InvalidJsonError                  400 INVALID_JSON
    ├── InvalidTrackingTokenError         400 INVALID_TRACKING_TOKEN (open/click links)
    ├── InvalidUnsubscribeTokenError      400 INVALID_UNSUBSCRIBE_TOKEN (unsubscribe links)
    ├── WebhookUrlNotAllowedError         400 WEBHOOK_URL_NOT_ALLOWED (private address, SSRF guard)
    ├── UnauthorizedError                 401 UNAUTHORIZED
    ├── InsufficientScopeError            403 INSUFFICIENT_SCOPE (details.requiredScope)
    ├── SenderNotVerifiedError            403 SENDER_NOT_VERIFIED
    ├── SmsSenderIdNotApprovedError       403 SMS_SENDER_ID_NOT_APPROVED
    ├── SmsBrandNotApprovedError          403 SMS_BRAND_NOT_APPROVED
    ├── SmsRecipientOptedOutError         403 SMS_RECIPIENT_OPTED_OUT
    ├── WebhookAuthError                  401 INVALID_WEBHOOK_TOKEN / INVALID_WEBHOOK_SIGNATURE
    │   └── WebhookVerificationError      403 INVALID_WEBHOOK_TOKEN (Meta's handshake)
    ├── NotFoundError                     404 NOT_FOUND
    ├── IdempotencyKeyInUseError          409 IDEMPOTENCY_KEY_IN_USE
    ├── IdempotencyKeyReusedError         422 IDEMPOTENCY_KEY_REUSED
    ├── InvalidTransitionError            409 INVALID_STATUS_TRANSITION
    ├── MessageNotRetryableError          409 MESSAGE_NOT_RETRYABLE (only FAILED messages)
    ├── WhatsAppDisabledError             409 WHATSAPP_CHANNEL_DISABLED
    ├── WhatsAppLineNotConfiguredError    409 WHATSAPP_LINE_NOT_CONFIGURED
    ├── WhatsAppLineInUseError            409 WHATSAPP_PHONE_NUMBER_ID_IN_USE
    ├── SecretKeyMissingError             409 SECRET_KEY_NOT_CONFIGURED
    ├── WhatsAppSendRejectedError         422 WHATSAPP_SEND_REJECTED (permanent Graph failure)
    ├── WhatsAppProviderError             502 WHATSAPP_PROVIDER_ERROR (transient; retried)
    ├── ConflictError                     409 CONFLICT (a name already taken)
    ├── PayloadTooLargeError              413 PAYLOAD_TOO_LARGE
    ├── RateLimitedError                  429 RATE_LIMITED
    │   └── OtpCooldownError              429 OTP_COOLDOWN
    ├── ProviderConfigError               500 PROVIDER_CONFIG_ERROR (bad provider URL)
    ├── StorageUnavailableError           503 STORAGE_UNAVAILABLE (database unreachable; retry)
    ├── SchemaTooNewError                 500 SCHEMA_TOO_NEW (database of a newer Commtunnel)
    └── InternalError                     500 INTERNAL_ERROR

The codes are part of the public contract (``../shared/DESIGN.md``, "Errors"):
they never change meaning once published.
"""

from __future__ import annotations

from typing import Any, ClassVar

# Stable codes, importable as constants so callers never spell them by hand.
VALIDATION_ERROR = "VALIDATION_ERROR"
INVALID_JSON = "INVALID_JSON"
INVALID_TRACKING_TOKEN = "INVALID_TRACKING_TOKEN"  # noqa: S105 - an error code, not a secret
INVALID_UNSUBSCRIBE_TOKEN = "INVALID_UNSUBSCRIBE_TOKEN"  # noqa: S105 - an error code
WEBHOOK_URL_NOT_ALLOWED = "WEBHOOK_URL_NOT_ALLOWED"
UNAUTHORIZED = "UNAUTHORIZED"
INSUFFICIENT_SCOPE = "INSUFFICIENT_SCOPE"
IP_NOT_ALLOWED = "IP_NOT_ALLOWED"
SENDER_NOT_VERIFIED = "SENDER_NOT_VERIFIED"
NOT_FOUND = "NOT_FOUND"
IDEMPOTENCY_KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
IDEMPOTENCY_KEY_IN_USE = "IDEMPOTENCY_KEY_IN_USE"
INVALID_STATUS_TRANSITION = "INVALID_STATUS_TRANSITION"
CONFLICT = "CONFLICT"
RATE_LIMITED = "RATE_LIMITED"
PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
SMS_SENDER_ID_NOT_APPROVED = "SMS_SENDER_ID_NOT_APPROVED"
SMS_BRAND_NOT_APPROVED = "SMS_BRAND_NOT_APPROVED"
SMS_RECIPIENT_OPTED_OUT = "SMS_RECIPIENT_OPTED_OUT"
EMAIL_RECIPIENT_SUPPRESSED = "EMAIL_RECIPIENT_SUPPRESSED"
MESSAGE_NOT_CANCELABLE = "MESSAGE_NOT_CANCELABLE"
OTP_COOLDOWN = "OTP_COOLDOWN"
MESSAGE_NOT_RETRYABLE = "MESSAGE_NOT_RETRYABLE"
INVALID_WEBHOOK_TOKEN = "INVALID_WEBHOOK_TOKEN"  # noqa: S105 - an error code, not a secret
INVALID_WEBHOOK_SIGNATURE = "INVALID_WEBHOOK_SIGNATURE"
WHATSAPP_CHANNEL_DISABLED = "WHATSAPP_CHANNEL_DISABLED"
WHATSAPP_LINE_NOT_CONFIGURED = "WHATSAPP_LINE_NOT_CONFIGURED"
WHATSAPP_PHONE_NUMBER_ID_IN_USE = "WHATSAPP_PHONE_NUMBER_ID_IN_USE"
WHATSAPP_SEND_REJECTED = "WHATSAPP_SEND_REJECTED"
WHATSAPP_PROVIDER_ERROR = "WHATSAPP_PROVIDER_ERROR"
SECRET_KEY_NOT_CONFIGURED = "SECRET_KEY_NOT_CONFIGURED"  # noqa: S105 - an error code
PROVIDER_CONFIG_ERROR = "PROVIDER_CONFIG_ERROR"
INTERNAL_ERROR = "INTERNAL_ERROR"
STORAGE_UNAVAILABLE = "STORAGE_UNAVAILABLE"
SCHEMA_TOO_NEW = "SCHEMA_TOO_NEW"


class CommtunnelError(Exception):
    """Base of every error Commtunnel raises on purpose.

    Args:
        message: a human-readable sentence, safe to show to the API caller.
        details: machine-readable context (for validation: field name -> reason).

    Attributes:
        code: the stable error code (class constant).
        http_status: the HTTP status the HTTP adapter answers with.
    """

    code: ClassVar[str] = INTERNAL_ERROR
    http_status: ClassVar[int] = 500

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, code={self.code!r})"


class ValidationError(CommtunnelError):
    """A request field is missing or fails its rule; ``details`` maps field -> reason."""

    code = VALIDATION_ERROR
    http_status = 400

    @classmethod
    def from_fields(cls, problems: dict[str, str]) -> ValidationError:
        """Build the error for several invalid fields at once.

        Args:
            problems: field name (wire spelling, e.g. ``templateId``) -> reason.
        """
        names = ", ".join(sorted(problems))
        return cls(f"Validation failed: {names}", details=dict(problems))


class InvalidJsonError(CommtunnelError):
    """The request body is not a JSON object."""

    code = INVALID_JSON
    http_status = 400


class WebhookUrlNotAllowedError(CommtunnelError):
    """A webhook URL's host resolves to an address webhooks may not reach (SSRF guard).

    ``details``: ``url`` (the reason, e.g. ``loopback address 127.0.0.1``).
    Operators who need private receivers set ``COMMTUNNEL_WEBHOOKS_ALLOW_PRIVATE=true``.
    """

    code = WEBHOOK_URL_NOT_ALLOWED
    http_status = 400


class InvalidTrackingTokenError(CommtunnelError):
    """A tracking link's token is tampered with, truncated, of the other kind or foreign.

    The click route answers it with the envelope (never a redirect); the open
    route still answers the pixel, with status 400.
    """

    code = INVALID_TRACKING_TOKEN
    http_status = 400


class InvalidUnsubscribeTokenError(CommtunnelError):
    """An unsubscribe link's token is tampered with, truncated, of another kind or foreign.

    Both unsubscribe routes (the page and the one-click POST) answer it with
    the envelope.
    """

    code = INVALID_UNSUBSCRIBE_TOKEN
    http_status = 400


class UnauthorizedError(CommtunnelError):
    """No API key, an unknown one, or a revoked one."""

    code = UNAUTHORIZED
    http_status = 401


class InsufficientScopeError(CommtunnelError):
    """The API key lacks the scope the operation needs (``details.requiredScope``)."""

    code = INSUFFICIENT_SCOPE
    http_status = 403

    def __init__(self, scope: str) -> None:
        super().__init__(
            f"This API key lacks the '{scope}' scope", details={"requiredScope": scope}
        )


class SenderNotVerifiedError(CommtunnelError):
    """The ``from`` address is not a verified sender (address or domain) of the organization."""

    code = SENDER_NOT_VERIFIED
    http_status = 403


class SmsSenderIdNotApprovedError(CommtunnelError):
    """The ``senderId`` is neither approved for the organization nor the platform default."""

    code = SMS_SENDER_ID_NOT_APPROVED
    http_status = 403


class SmsBrandNotApprovedError(CommtunnelError):
    """The OTP ``brandName`` is not approved for the OTP flow in the organization."""

    code = SMS_BRAND_NOT_APPROVED
    http_status = 403


class SmsRecipientOptedOutError(CommtunnelError):
    """The recipient is on the organization's SMS opt-out list."""

    code = SMS_RECIPIENT_OPTED_OUT
    http_status = 403


class EmailRecipientSuppressedError(CommtunnelError):
    """The recipient is on the organization's email suppression list (``details.reason``)."""

    code = EMAIL_RECIPIENT_SUPPRESSED
    http_status = 403


class IpNotAllowedError(CommtunnelError):
    """The caller's address is outside the organization's IP allowlist (``details.ip``)."""

    code = IP_NOT_ALLOWED
    http_status = 403


class WebhookAuthError(CommtunnelError):
    """An inbound webhook (DLR, MO, provider callback) failed its token or signature check."""

    code = INVALID_WEBHOOK_TOKEN
    http_status = 401


class WebhookSignatureError(WebhookAuthError):
    """An inbound webhook's signature header is missing or does not match the body."""

    code = INVALID_WEBHOOK_SIGNATURE


class WebhookVerificationError(WebhookAuthError):
    """A webhook subscription check (Meta's ``hub.verify_token`` handshake) failed.

    Meta documents a 403 for a refused verification, so this one answers 403
    where the other webhook refusals answer 401.
    """

    http_status = 403


class NotFoundError(CommtunnelError):
    """No such record in the caller's organization (another organization's record included)."""

    code = NOT_FOUND
    http_status = 404


class IdempotencyKeyInUseError(CommtunnelError):
    """A request with the same idempotency key is still being processed."""

    code = IDEMPOTENCY_KEY_IN_USE
    http_status = 409


class IdempotencyKeyReusedError(CommtunnelError):
    """The idempotency key was already used with a different payload or endpoint."""

    code = IDEMPOTENCY_KEY_REUSED
    http_status = 422


class InvalidTransitionError(CommtunnelError):
    """A status change the status machine does not allow."""

    code = INVALID_STATUS_TRANSITION
    http_status = 409


class MessageNotRetryableError(CommtunnelError):
    """A retry was asked for a message that is not FAILED (``details.status``)."""

    code = MESSAGE_NOT_RETRYABLE
    http_status = 409


class MessageNotCancelableError(CommtunnelError):
    """A cancel was asked for a message no longer SCHEDULED or QUEUED (``details.status``)."""

    code = MESSAGE_NOT_CANCELABLE
    http_status = 409


class WhatsAppDisabledError(CommtunnelError):
    """The WhatsApp Cloud channel is not enabled on this server."""

    code = WHATSAPP_CHANNEL_DISABLED
    http_status = 409


class WhatsAppLineNotConfiguredError(CommtunnelError):
    """Neither the organization nor the platform has a line (phone number id + token)."""

    code = WHATSAPP_LINE_NOT_CONFIGURED
    http_status = 409


class WhatsAppLineInUseError(CommtunnelError):
    """Another organization already holds this Meta phone number id."""

    code = WHATSAPP_PHONE_NUMBER_ID_IN_USE
    http_status = 409


class SecretKeyMissingError(CommtunnelError):
    """A secret must be stored encrypted but ``COMMTUNNEL_SECRET_KEY`` is not set."""

    code = SECRET_KEY_NOT_CONFIGURED
    http_status = 409


class WhatsAppSendRejectedError(CommtunnelError):
    """Graph refused the message for good; it is FAILED (details: messageId, errorCategory)."""

    code = WHATSAPP_SEND_REJECTED
    http_status = 422


class WhatsAppProviderError(CommtunnelError):
    """Graph failed transiently; the message is RETRYING and the worker retries it."""

    code = WHATSAPP_PROVIDER_ERROR
    http_status = 502


class ConflictError(CommtunnelError):
    """A unique name (organization, template name) is already taken."""

    code = CONFLICT
    http_status = 409


class PayloadTooLargeError(CommtunnelError):
    """The request body exceeds the configured limit (``details.limitBytes``)."""

    code = PAYLOAD_TOO_LARGE
    http_status = 413


class RateLimitedError(CommtunnelError):
    """Too many requests; ``retry_after`` is in seconds."""

    code = RATE_LIMITED
    http_status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, details={"retryAfter": retry_after})
        self.retry_after = retry_after


class OtpCooldownError(RateLimitedError):
    """An OTP to the same recipient and purpose was sent within the cooldown."""

    code = OTP_COOLDOWN


class ProviderConfigError(CommtunnelError):
    """A provider URL names an unknown scheme or has invalid options."""

    code = PROVIDER_CONFIG_ERROR
    http_status = 500


class InternalError(CommtunnelError):
    """An unexpected failure; the message shown never includes a traceback."""

    code = INTERNAL_ERROR
    http_status = 500


class StorageUnavailableError(CommtunnelError):
    """The database could not be reached, even after retries on new connections.

    Nothing of the failed operation is stored, so the request may be retried
    as it was (with its idempotency key, a send is still made once).
    """

    code = STORAGE_UNAVAILABLE
    http_status = 503
