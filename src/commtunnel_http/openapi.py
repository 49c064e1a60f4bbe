"""The OpenAPI 3.0.3 document served at ``GET /v1/public/openapi.json``.

It describes exactly the routes the app registers
(:class:`~commtunnel_http.routes.EmailRoutes`,
:class:`~commtunnel_http.sms_routes.SmsRoutes`,
:class:`~commtunnel_http.sms_webhooks.SmsWebhookRoutes`,
:class:`~commtunnel_http.whatsapp_routes.WhatsAppRoutes`,
:class:`~commtunnel_http.webhook_routes.WebhookRoutes`,
:class:`~commtunnel_http.tracking_routes.TrackingRoutes`; a test compares the
two). Limits are taken from the core's constants so the document cannot
drift from the rules it describes.
"""

from __future__ import annotations

import copy
from typing import Any

from commtunnel import __version__
from commtunnel.domain import sms as sms_rules
from commtunnel.domain.email import MAX_SUBJECT_CHARS
from commtunnel.domain.messages import Status
from commtunnel.domain.suppressions import (
    MAX_DETAIL_CHARS,
    MAX_PROVIDER_EVENTS,
    SuppressionReason,
)
from commtunnel.domain.suppressions import MAX_TOKEN_CHARS as UNSUBSCRIBE_TOKEN_CHARS
from commtunnel.domain.webhooks import (
    EVENT_TYPES,
    MAX_DESCRIPTION_LENGTH,
    MAX_URL_LENGTH,
    RESPONSE_BODY_LIMIT,
    DeliveryStatus,
)
from commtunnel.services import listing as listing_service
from commtunnel.services import sms as sms_service
from commtunnel.services import whatsapp as whatsapp_service
from commtunnel.services.channel import MAX_TIMELINE_LIMIT
from commtunnel.services.idempotency import MAX_KEY_CHARS
from commtunnel.services.webhooks import MAX_DELIVERY_PAGE


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


def _query(
    name: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _path(name: str, schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    parameter = {"name": name, "in": "path", "required": True, "schema": schema}
    return parameter if description is None else {**parameter, "description": description}


def _body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    """A required JSON request body."""
    return {"required": True, **_json(schema, description)}


def _cursor_paging(
    maximum: int, default: int, limit_description: str, cursor_description: str
) -> list[dict[str, Any]]:
    """``limit`` (1..``maximum``) and ``cursor``: a keyset-paged listing's parameters."""
    limit = {"type": "integer", "minimum": 1, "maximum": maximum, "default": default}
    return [
        _query("limit", limit, limit_description),
        _query("cursor", _STRING, cursor_description),
    ]


_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": "string", "nullable": True}
_UUID = {"type": "string", "format": "uuid"}
_TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "description": "UTC, ISO 8601 with milliseconds and Z: 2026-06-03T12:00:00.000Z",
}
_IDEMPOTENCY_KEY = {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS}
_SCHEDULED_AT = {
    "type": "string",
    "format": "date-time",
    "description": (
        "Hold the message (status SCHEDULED) until this time, then dispatch it: ISO 8601 with "
        "a timezone (Z or +hh:mm), in the future, at most COMMTUNNEL_SCHEDULE_HORIZON ahead "
        "(30 days by default). Cancel it before then with POST .../{id}/cancel."
    ),
}
_SCHEDULED_AT_SHOWN = {
    **_TIMESTAMP,
    "nullable": True,
    "description": "When a scheduled send is (or was) due; null for a send made at once.",
}
_DUPLICATE = {"type": "boolean", "description": "A replay of an earlier send."}
_ATTEMPTS = {"type": "array", "items": _ref("Attempt")}
#: what every channel's message shows besides id, channel, status and its content.
_MESSAGE_PROPERTIES: dict[str, Any] = {
    "sandbox": {"type": "boolean"},
    "providerMessageId": _NULLABLE_STRING,
    "attemptCount": {"type": "integer"},
    "lastError": _NULLABLE_STRING,
    "createdAt": _TIMESTAMP,
    "updatedAt": _TIMESTAMP,
}

_ID = _path("id", _STRING)
_LIMIT = _query(
    "limit",
    {"type": "integer", "minimum": 1, "maximum": MAX_TIMELINE_LIMIT, "default": 100},
    "Most events returned.",
)
_IDEMPOTENCY_HEADER = [{"$ref": "#/components/parameters/IdempotencyKey"}]

_TOO_LARGE = _error("PAYLOAD_TOO_LARGE (details.limitBytes)")
_AUTH_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": _error("INSUFFICIENT_SCOPE (details.requiredScope)"),
}
_BODY_ERRORS = {
    "400": _error("INVALID_JSON (body not a JSON object) or VALIDATION_ERROR (details per field)"),
    "413": _TOO_LARGE,
}
_SEND_ERRORS = {
    **_BODY_ERRORS,
    **_AUTH_ERRORS,
    "409": _error("IDEMPOTENCY_KEY_IN_USE: the key's first request is in flight"),
    "422": _error("IDEMPOTENCY_KEY_REUSED: the key was used with another payload"),
}


_SECONDS = {"type": "integer", "minimum": 0}
#: ``commtunnel_http.quota``: on every answer to an API-key request.
_RATE_LIMIT_HEADERS = {
    "RateLimit-Limit": {"description": "Requests allowed per window.", "schema": _SECONDS},
    "RateLimit-Remaining": {"description": "Requests left in the window.", "schema": _SECONDS},
    "RateLimit-Reset": {"description": "Seconds until a request frees up.", "schema": _SECONDS},
    "RateLimit-Policy": {"description": "limit;w=window seconds: 100;w=60.", "schema": _STRING},
}
_RATE_LIMITED = (
    "RATE_LIMITED: over the API key's request limit (default 100 a minute, sliding window, "
    "reads and sends alike); retryAfter echoes Retry-After"
)
_IP_NOT_ALLOWED = "IP_NOT_ALLOWED: the caller's address is outside the organization's IP allowlist"


def _with_access_rules(responses: dict[str, Any]) -> None:
    """An API-key operation's answers (its 401 is the shared Unauthorized) get the access rules.

    403 ``IP_NOT_ALLOWED`` and 429 ``RATE_LIMITED`` (with ``Retry-After``)
    join its refusals, and every answer carries the ``RateLimit-*`` headers.
    """
    if responses.get("401") != _AUTH_ERRORS["401"]:
        return
    for status, response in list(responses.items()):
        if status != "default" and "$ref" not in response:
            headers = {**response.get("headers", {}), **_RATE_LIMIT_HEADERS}
            responses[status] = {**response, "headers": headers}
    forbidden = responses.get("403")
    description = (
        _IP_NOT_ALLOWED if forbidden is None else f"{forbidden['description']}; {_IP_NOT_ALLOWED}"
    )
    responses["403"] = {**(forbidden or {}), **_error(description)}
    limited = responses.get("429")
    description = _RATE_LIMITED if limited is None else f"{limited['description']}; {_RATE_LIMITED}"
    responses["429"] = {
        **_error(description),
        "headers": {
            "Retry-After": {"description": "Seconds to wait.", "schema": _SECONDS},
            **_RATE_LIMIT_HEADERS,
        },
    }


def _read_errors(what: str) -> dict[str, Any]:
    """Refusals of a read of one message: no key, no scope, not the caller's ``what``."""
    return {**_AUTH_ERRORS, "404": _error(f"NOT_FOUND: no such {what} in your organization")}


def _timeline(operation_id: str, what: str, scope: str) -> dict[str, Any]:
    """The ``GET /{id}/timeline`` operation of a channel."""
    return {
        "get": {
            "operationId": operation_id,
            "summary": f"Lifecycle events of one {what}, oldest first (scope {scope}).",
            "parameters": [_ID, _LIMIT],
            "responses": {
                "200": _json(_ref("Timeline"), "The events."),
                "400": _error("VALIDATION_ERROR (details.limit)"),
                **_read_errors(what),
            },
        }
    }


_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error", "code", "requestId"],
        "properties": {
            "error": {"type": "string", "description": "Human-readable message."},
            "code": {"type": "string", "description": "Stable code, e.g. VALIDATION_ERROR."},
            "requestId": {"type": "string", "description": "Also the X-Request-Id header."},
            "details": {
                "type": "object",
                "additionalProperties": True,
                "description": "Context; for validation errors, field name -> reason.",
            },
            "retryAfter": {
                "type": "integer",
                "description": "429 only: seconds to wait, as the Retry-After header.",
            },
        },
    },
    "Status": {"type": "string", "enum": [s.value for s in Status]},
    "SendEmailRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["from", "to"],
        "properties": {
            "from": {"type": "string", "description": "Verified sender: addr or 'Name <addr>'."},
            "to": {"type": "string", "description": "Recipient: addr or 'Name <addr>'."},
            "subject": {
                "type": "string",
                "maxLength": MAX_SUBJECT_CHARS,
                "description": "Required unless templateId is given; no line breaks.",
            },
            "html": {"type": "string", "description": "HTML body (html and/or text)."},
            "text": {"type": "string", "description": "Plain-text body."},
            "templateId": _UUID,
            "variables": {"type": "object", "additionalProperties": True},
            "tracking": {"type": "boolean", "default": False},
            "unsubscribe": {
                "type": "boolean",
                "default": False,
                "description": (
                    "Add List-Unsubscribe and List-Unsubscribe-Post (RFC 8058 one-click) "
                    "headers with a signed link; using it suppresses the recipient."
                ),
            },
            "sandboxMode": {"type": "boolean", "default": False},
            "scheduledAt": _SCHEDULED_AT,
            "idempotencyKey": _IDEMPOTENCY_KEY,
        },
    },
    "SendEmailResponse": {
        "type": "object",
        "required": ["id", "status", "createdAt", "duplicate"],
        "properties": {
            "id": _UUID,
            "status": _ref("Status"),
            "createdAt": _TIMESTAMP,
            "duplicate": _DUPLICATE,
        },
    },
    "PreviewEmailRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "subject": _STRING,
            "html": _STRING,
            "text": _STRING,
            "templateId": _UUID,
            "variables": {"type": "object", "additionalProperties": True},
            "tracking": {"type": "boolean", "default": False},
        },
    },
    "PreviewEmailResponse": {
        "type": "object",
        "required": ["subject", "html", "text", "trackingEnabled", "estimatedSizeBytes"],
        "properties": {
            "subject": _STRING,
            "html": _NULLABLE_STRING,
            "text": _NULLABLE_STRING,
            "trackingEnabled": {
                "type": "boolean",
                "description": (
                    "tracking was asked for and there is an HTML part; links and pixel are "
                    "rewritten at delivery, so html here is as stored."
                ),
            },
            "estimatedSizeBytes": {
                "type": "integer",
                "description": "UTF-8 bytes of subject, html and text plus about 300 for headers.",
            },
            "moderation": {
                "type": "object",
                "properties": {"blocked": {"type": "boolean"}, "token": _NULLABLE_STRING},
            },
        },
    },
    "Attempt": {
        "type": "object",
        "properties": {
            "number": {"type": "integer", "minimum": 1},
            "provider": _STRING,
            "status": {
                "type": "string",
                "enum": [s.value for s in Status],
                "nullable": True,
                "description": (
                    "The message's status this attempt left it in (SENT, RETRYING, FAILED, "
                    "BOUNCED); null for attempts recorded before it was kept."
                ),
            },
            "outcome": {"type": "string", "enum": ["accepted", "transient", "permanent"]},
            "errorCategory": _NULLABLE_STRING,
            "errorMessage": _NULLABLE_STRING,
            "durationMs": {"type": "number"},
            "timestamp": _TIMESTAMP,
        },
    },
    "Email": {
        "type": "object",
        "properties": {
            "id": _UUID,
            "channel": {"type": "string", "enum": ["email"]},
            "status": _ref("Status"),
            "from": _STRING,
            "to": _STRING,
            "subject": _STRING,
            "html": _NULLABLE_STRING,
            "text": _NULLABLE_STRING,
            "templateId": _NULLABLE_STRING,
            "tracking": {"type": "boolean"},
            "unsubscribe": {"type": "boolean"},
            "messageId": {"type": "string", "description": "The RFC 5322 Message-ID header."},
            "scheduledAt": _SCHEDULED_AT_SHOWN,
            **_MESSAGE_PROPERTIES,
            "attempts": _ATTEMPTS,
        },
    },
    "TimelineEvent": {
        "type": "object",
        "properties": {
            "id": _STRING,
            "type": {"type": "string", "description": "e.g. email_queued, email_sent"},
            "status": {
                "type": "string",
                "nullable": True,
                "description": "The email's Status after the event; null if it did not change.",
            },
            "createdAt": _TIMESTAMP,
            "details": {"type": "object", "additionalProperties": True},
        },
    },
    "Timeline": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "description": "The email id."},
            "events": {"type": "array", "items": _ref("TimelineEvent")},
        },
    },
    "EmailStats": {
        "type": "object",
        "properties": {
            "start": _TIMESTAMP,
            "end": _TIMESTAMP,
            "total": {"type": "integer", "description": "Emails created in [start, end)."},
            "byStatus": {"type": "object", "additionalProperties": {"type": "integer"}},
            "events": {
                "type": "object",
                "additionalProperties": {"type": "integer"},
                "description": "Events in [start, end) by type, bots included.",
            },
            "opens": {"type": "integer", "description": "email_opened events in the window."},
            "uniqueOpens": {"type": "integer", "description": "Distinct emails opened."},
            "clicks": {"type": "integer", "description": "email_clicked events in the window."},
            "uniqueClicks": {"type": "integer", "description": "Distinct emails clicked."},
            "includeBots": {
                "type": "boolean",
                "description": "Whether the four counts above include hits marked isBot.",
            },
        },
    },
    "Health": {
        "type": "object",
        "properties": {
            "status": {"type": "string", "enum": ["ok"]},
            "schemaVersion": {"type": "integer"},
            "pendingJobs": {"type": "integer"},
        },
    },
}


def _window(name: str, what: str) -> dict[str, Any]:
    return _query(
        name,
        {"type": "string", "format": "date-time"},
        f"Window {what}, ISO 8601 with a timezone.",
        required=True,
    )


_PATHS: dict[str, Any] = {
    "/v1/public/emails/send": {
        "post": {
            "operationId": "sendEmail",
            "summary": "Queue an email for delivery (scope send:email).",
            "parameters": _IDEMPOTENCY_HEADER,
            "requestBody": _body(_ref("SendEmailRequest"), "The email."),
            "responses": {
                "202": _json(_ref("SendEmailResponse"), "Accepted; a replay has duplicate=true"),
                **_SEND_ERRORS,
                "403": _error(
                    "INSUFFICIENT_SCOPE, SENDER_NOT_VERIFIED, or EMAIL_RECIPIENT_SUPPRESSED: "
                    "the recipient is on the suppression list (details.to, details.reason); "
                    "sandbox sends are refused too"
                ),
            },
        }
    },
    "/v1/public/emails/preview": {
        "post": {
            "operationId": "previewEmail",
            "summary": "Render subject and bodies without queuing (scope send:email).",
            "requestBody": _body(_ref("PreviewEmailRequest"), "Sources."),
            "responses": {
                "200": _json(_ref("PreviewEmailResponse"), "The rendered email."),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/public/emails/stats": {
        "get": {
            "operationId": "emailStats",
            "summary": (
                "Counts by status and event type, opens and clicks, for a window "
                "(scope read:email)."
            ),
            "parameters": [
                _window("start", "start (inclusive)"),
                _window("end", "end"),
                _query(
                    "includeBots",
                    {"type": "boolean", "default": False},
                    "Count opens and clicks marked isBot (scanners, privacy proxies) too.",
                ),
            ],
            "responses": {
                "200": _json(_ref("EmailStats"), "Counts."),
                "400": _error("VALIDATION_ERROR (details per parameter)"),
                **_AUTH_ERRORS,
            },
        }
    },
    "/v1/public/emails/{id}": {
        "get": {
            "operationId": "getEmail",
            "summary": "Status, content and attempts of one email (scope read:email).",
            "parameters": [_ID],
            "responses": {"200": _json(_ref("Email"), "The email."), **_read_errors("email")},
        }
    },
    "/v1/public/emails/{id}/timeline": _timeline("getEmailTimeline", "email", "read:email"),
    "/v1/public/openapi.json": {
        "get": {
            "operationId": "getOpenApi",
            "summary": "This document.",
            "security": [],
            "responses": {"200": _json({"type": "object"}, "OpenAPI 3.0.3 document.")},
        }
    },
    "/healthz": {
        "get": {
            "operationId": "health",
            "summary": "Liveness, schema version and pending jobs.",
            "security": [],
            "responses": {"200": _json(_ref("Health"), "Healthy.")},
        }
    },
}

# --------------------------------------------------------------------------- SMS

_E164 = {"type": "string", "pattern": r"^\+[1-9][0-9]{1,14}$", "example": "+2348012345678"}
_FLOW = {"type": "string", "enum": list(sms_service.FLOWS)}
_QUERY_ERRORS = {"400": _error("VALIDATION_ERROR (details per parameter)"), **_AUTH_ERRORS}
_WEBHOOK_ERRORS = {
    "400": _error("INVALID_JSON or VALIDATION_ERROR: a malformed payload (details per field)"),
    "401": _error("INVALID_WEBHOOK_TOKEN: missing or unknown ?token="),
    "413": _TOO_LARGE,
}


def _page_of(item: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["data", "page", "pageSize", "total"],
        "properties": {
            "data": {"type": "array", "items": _ref(item)},
            "page": {"type": "integer", "minimum": 1},
            "pageSize": {"type": "integer", "minimum": 1, "maximum": sms_service.MAX_PAGE_SIZE},
            "total": {"type": "integer", "description": "Every match, across pages."},
        },
    }


_SMS_PROPERTIES: dict[str, Any] = {
    "id": _UUID,
    "channel": {"type": "string", "enum": ["sms"]},
    "status": _ref("Status"),
    "to": _E164,
    "senderId": {"type": "string", "description": "The sender ID, or the brand of an OTP."},
    "body": _STRING,
    "sendType": {"type": "integer", "enum": [int(t) for t in sms_rules.SendType]},
    "encoding": {"type": "string", "enum": [e.value for e in sms_rules.SmsEncoding]},
    "segments": {"type": "integer", "minimum": 1},
    "flow": _FLOW,
    "purpose": {
        "type": "string",
        "nullable": True,
        "enum": [*(p.value for p in sms_rules.OtpPurpose), None],
        "description": "OTP purpose; null for STANDARD messages.",
    },
    "scheduledAt": _SCHEDULED_AT_SHOWN,
    **_MESSAGE_PROPERTIES,
}
_MO_PROPERTIES: dict[str, Any] = {
    "sms_from": {
        "oneOf": [{"type": "string"}, {"type": "integer"}],
        "description": "The handset's number, E.164 (a missing + is added to digits).",
    },
    "sms_to": {"type": "string", "description": "Your short or long code."},
    "sms_message": {"type": "string", "maxLength": sms_rules.MAX_BODY_CHARACTERS},
}
_KEYWORD = {
    "type": "string",
    "nullable": True,
    "enum": [*(k.value for k in sms_rules.Keyword), None],
    "description": "STOP, START or HELP when the whole message was one; else null.",
}
_REPLY = {
    "type": "string",
    "description": "Reply for the handset (STOP/START/HELP answers); absent when none.",
}

_SCHEMAS.update(
    {
        "SendSmsRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["to", "senderId", "body"],
            "properties": {
                "to": {**_E164, "description": "Recipient; national formats are refused."},
                "senderId": {
                    "type": "string",
                    "maxLength": sms_rules.MAX_NUMERIC_SENDER,
                    "description": (
                        f"Alphanumeric <= {sms_rules.MAX_ALPHANUMERIC_SENDER} or numeric <= "
                        f"{sms_rules.MAX_NUMERIC_SENDER}; approved for the organization, or "
                        "the platform default."
                    ),
                },
                "body": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": sms_rules.MAX_BODY_CHARACTERS,
                },
                "sendType": {
                    "type": "integer",
                    "enum": [int(t) for t in sms_rules.SendType],
                    "default": 0,
                    "description": "0 normal, 1 flash, 2 unicode (UCS-2 forced).",
                },
                "sandboxMode": {"type": "boolean", "default": False},
                "scheduledAt": _SCHEDULED_AT,
                "idempotencyKey": _IDEMPOTENCY_KEY,
            },
        },
        "SendSmsResponse": {
            "type": "object",
            "required": [
                "id",
                "senderId",
                "status",
                "createdAt",
                "duplicate",
                "segments",
                "encoding",
            ],
            "properties": {
                "id": _UUID,
                "senderId": _STRING,
                "status": _ref("Status"),
                "createdAt": _TIMESTAMP,
                "duplicate": _DUPLICATE,
                "segments": {"type": "integer", "minimum": 1},
                "encoding": _SMS_PROPERTIES["encoding"],
            },
        },
        "SendOtpRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["to", "brandName", "otpCode"],
            "properties": {
                "to": _E164,
                "brandName": {
                    "type": "string",
                    "minLength": sms_rules.MIN_BRAND_CHARACTERS,
                    "maxLength": sms_rules.MAX_BRAND_CHARACTERS,
                    "description": "A brand approved for the OTP flow.",
                },
                "otpCode": {"type": "string", "pattern": "^[0-9]{4,8}$"},
                "purpose": {
                    "type": "string",
                    "enum": [p.value for p in sms_rules.OtpPurpose],
                    "default": "PHONE_VERIFICATION",
                },
                "sandboxMode": {"type": "boolean", "default": False},
                "idempotencyKey": _IDEMPOTENCY_KEY,
            },
        },
        "SendOtpResponse": {
            "type": "object",
            "required": ["id", "status", "createdAt", "duplicate", "cooldownSeconds"],
            "properties": {
                "id": _UUID,
                "status": _ref("Status"),
                "createdAt": _TIMESTAMP,
                "duplicate": _DUPLICATE,
                "cooldownSeconds": {
                    "type": "integer",
                    "description": "Seconds before another OTP to this number and purpose.",
                },
            },
        },
        "Sms": {"type": "object", "properties": _SMS_PROPERTIES},
        "SmsWithAttempts": {
            "type": "object",
            "properties": {**_SMS_PROPERTIES, "attempts": _ATTEMPTS},
        },
        "SmsPage": _page_of("Sms"),
        "SmsRetryResponse": {
            "type": "object",
            "required": ["id", "status"],
            "properties": {"id": _UUID, "status": _ref("Status")},
        },
        "InboundSms": {
            "type": "object",
            "properties": {
                "id": _UUID,
                "from": _E164,
                "to": _STRING,
                "body": _STRING,
                "keyword": _KEYWORD,
                "createdAt": _TIMESTAMP,
            },
        },
        "InboundSmsPage": _page_of("InboundSms"),
        "CreateSenderIdRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["senderId"],
            "properties": {
                "senderId": {
                    "type": "string",
                    "description": "A sender ID (flow STANDARD) or an OTP brand (flow OTP).",
                },
                "flow": {**_FLOW, "default": "STANDARD"},
                "reason": {"type": "string", "maxLength": 500},
            },
        },
        "SenderIdRequest": {
            "type": "object",
            "properties": {
                "id": _UUID,
                "organizationId": _STRING,
                "senderId": _STRING,
                "flow": _FLOW,
                "status": {"type": "string", "enum": ["PENDING", "APPROVED", "REJECTED"]},
                "reason": _NULLABLE_STRING,
                "createdAt": _TIMESTAMP,
                "reviewReason": _NULLABLE_STRING,
                "reviewedAt": {**_TIMESTAMP, "nullable": True},
            },
        },
        "SenderIdRequestList": {
            "type": "object",
            "properties": {"data": {"type": "array", "items": _ref("SenderIdRequest")}},
        },
        "ReviewSenderIdRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["decision"],
            "properties": {
                "decision": {"type": "string", "enum": ["approve", "reject"]},
                "reason": {"type": "string", "maxLength": 500},
            },
        },
        "ApprovedSenderId": {
            "type": "object",
            "properties": {
                "senderId": _STRING,
                "flow": _FLOW,
                "approvedAt": _TIMESTAMP,
                "requestId": _UUID,
            },
        },
        "ApprovedSenderIdList": {
            "type": "object",
            "properties": {"data": {"type": "array", "items": _ref("ApprovedSenderId")}},
        },
        "OptOut": {
            "type": "object",
            "properties": {
                "phone": _E164,
                "source": {
                    "type": "string",
                    "enum": ["api", "cli", "inbound_keyword", "inbound_opt_out", "provider"],
                },
                "createdAt": _TIMESTAMP,
            },
        },
        "OptOutPage": _page_of("OptOut"),
        "AddOptOutRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["phone"],
            "properties": {"phone": _E164},
        },
        "OptOutAdded": {
            "type": "object",
            "required": ["phone", "optedOut", "created"],
            "properties": {
                "phone": _E164,
                "optedOut": {"type": "boolean", "enum": [True]},
                "created": {"type": "boolean", "description": "False when already listed."},
            },
        },
        "OptOutRemoved": {
            "type": "object",
            "required": ["phone", "optedOut"],
            "properties": {"phone": _E164, "optedOut": {"type": "boolean", "enum": [False]}},
        },
        "MoMessage": {
            "type": "object",
            "required": ["sms_from", "sms_to", "sms_message"],
            "properties": _MO_PROPERTIES,
        },
        "MoFormMessage": {
            "type": "object",
            "required": ["sms_from", "sms_to", "sms_message"],
            "properties": {**_MO_PROPERTIES, "sms_from": _STRING},
        },
        "InboundWebhookResponse": {
            "type": "object",
            "required": ["id", "keyword"],
            "properties": {
                "id": {**_UUID, "description": "The stored inbound message."},
                "keyword": _KEYWORD,
                "optedOut": {
                    "type": "boolean",
                    "description": "The number's opt-out state after a STOP/START keyword.",
                },
                "sms_message": _REPLY,
            },
        },
        "InboundOptOutResponse": {
            "type": "object",
            "required": ["keyword", "recorded"],
            "properties": {
                "keyword": _KEYWORD,
                "recorded": {
                    "type": "boolean",
                    "description": "True when the list changed (the number had been sent to).",
                },
                "optedOut": {"type": "boolean"},
                "sms_message": _REPLY,
            },
        },
        "DeliveryReceipt": {
            "type": "object",
            "additionalProperties": False,
            "required": ["message_id", "status"],
            "properties": {
                "message_id": {
                    "type": "string",
                    "description": "The id send returned, or the provider's message id.",
                },
                "status": {
                    "type": "string",
                    "description": "DELIVERED, FAILED, SENT or an SMPP word (DELIVRD, UNDELIV...).",
                },
                "error_code": {"oneOf": [{"type": "string"}, {"type": "integer"}]},
                "error": _STRING,
            },
        },
        "DeliveryReceiptResult": {
            "type": "object",
            "required": ["messageId", "status", "applied"],
            "properties": {
                "messageId": _UUID,
                "status": _ref("Status"),
                "applied": {
                    "type": "boolean",
                    "description": "False for a duplicate or out-of-order receipt (no change).",
                },
            },
        },
        "ProviderCallbackResult": {
            "type": "object",
            "required": ["received", "applied"],
            "properties": {
                "received": {"type": "integer", "description": "Receipts in the callback."},
                "applied": {"type": "integer", "description": "Receipts that moved a message."},
            },
        },
    }
)

_TOKEN: list[dict[str, list[str]]] = [{"webhookToken": []}]


def _paging(default: int) -> list[dict[str, Any]]:
    return [
        _query("page", {"type": "integer", "minimum": 1, "default": 1}, "From 1."),
        _query(
            "pageSize",
            {
                "type": "integer",
                "minimum": 1,
                "maximum": sms_service.MAX_PAGE_SIZE,
                "default": default,
            },
            "Items per page.",
        ),
    ]


def _mo_body(description: str) -> dict[str, Any]:
    return {
        "required": True,
        "description": description,
        "content": {
            "application/json": {"schema": _ref("MoMessage")},
            "application/x-www-form-urlencoded": {"schema": _ref("MoFormMessage")},
            "multipart/form-data": {"schema": _ref("MoFormMessage")},
        },
    }


_PATHS.update(
    {
        "/v1/public/sms/send": {
            "post": {
                "operationId": "sendSms",
                "summary": "Queue an SMS (scope send:sms).",
                "parameters": _IDEMPOTENCY_HEADER,
                "requestBody": _body(_ref("SendSmsRequest"), "The SMS."),
                "responses": {
                    "202": _json(_ref("SendSmsResponse"), "Accepted; a replay has duplicate=true"),
                    **_SEND_ERRORS,
                    "403": _error(
                        "INSUFFICIENT_SCOPE, SMS_SENDER_ID_NOT_APPROVED or SMS_RECIPIENT_OPTED_OUT"
                    ),
                },
            }
        },
        "/v1/public/sms/otp/send": {
            "post": {
                "operationId": "sendOtp",
                "summary": "Queue a one-time passcode under an OTP brand (scope send:sms).",
                "parameters": _IDEMPOTENCY_HEADER,
                "requestBody": _body(_ref("SendOtpRequest"), "The OTP."),
                "responses": {
                    "202": _json(_ref("SendOtpResponse"), "Accepted; a replay has duplicate=true"),
                    **_SEND_ERRORS,
                    "403": _error(
                        "INSUFFICIENT_SCOPE, SMS_BRAND_NOT_APPROVED or SMS_RECIPIENT_OPTED_OUT"
                    ),
                    "429": {
                        **_error("OTP_COOLDOWN: an OTP to this number and purpose is too recent"),
                        "headers": {
                            "Retry-After": {
                                "description": "Seconds to wait.",
                                "schema": {"type": "integer"},
                            }
                        },
                    },
                },
            }
        },
        "/v1/public/sms/inbound": {
            "get": {
                "operationId": "listInboundSms",
                "summary": "Received (MO) messages, newest first (scope read:sms).",
                "parameters": _paging(50),
                "responses": {
                    "200": _json(_ref("InboundSmsPage"), "A page."),
                    **_QUERY_ERRORS,
                },
            }
        },
        "/v1/public/sms/opt-outs": {
            "get": {
                "operationId": "listSmsOptOuts",
                "summary": "The opt-out list, newest first (scope read:sms or opt_outs:manage).",
                "parameters": _paging(50),
                "responses": {"200": _json(_ref("OptOutPage"), "A page."), **_QUERY_ERRORS},
            },
            "post": {
                "operationId": "addSmsOptOut",
                "summary": "Put a number on the opt-out list (scope opt_outs:manage).",
                "requestBody": _body(_ref("AddOptOutRequest"), "The number, E.164."),
                "responses": {
                    "201": _json(_ref("OptOutAdded"), "Added."),
                    "200": _json(_ref("OptOutAdded"), "Already listed (created=false)."),
                    **_BODY_ERRORS,
                    **_AUTH_ERRORS,
                },
            },
        },
        "/v1/public/sms/opt-outs/{e164}": {
            "delete": {
                "operationId": "removeSmsOptOut",
                "summary": "Take a number off the opt-out list (scope opt_outs:manage).",
                "parameters": [
                    _path(
                        "e164",
                        _STRING,
                        "The number: %2B2348012345678, +2348012345678 or digits.",
                    )
                ],
                "responses": {
                    "200": _json(_ref("OptOutRemoved"), "Removed."),
                    "400": _error("VALIDATION_ERROR (details.phone)"),
                    **_AUTH_ERRORS,
                    "404": _error("NOT_FOUND: the number is not on the list"),
                },
            }
        },
        "/v1/public/sms/{id}": {
            "get": {
                "operationId": "getSms",
                "summary": "Status, content and attempts of one SMS (scope read:sms).",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("SmsWithAttempts"), "The SMS."),
                    **_read_errors("SMS"),
                },
            }
        },
        "/v1/public/sms/{id}/timeline": _timeline("getSmsTimeline", "SMS", "read:sms"),
        "/v1/public/sms/{id}/retry": {
            "post": {
                "operationId": "retrySms",
                "summary": "Re-queue a FAILED SMS (scope send:sms).",
                "parameters": [_ID],
                "responses": {
                    "202": _json(_ref("SmsRetryResponse"), "Re-queued."),
                    **_read_errors("SMS"),
                    "409": _error("MESSAGE_NOT_RETRYABLE: not FAILED (details.status)"),
                },
            }
        },
        "/v1/sms": {
            "get": {
                "operationId": "listSms",
                "summary": "SMS of the organization, newest first (scope read:sms).",
                "parameters": [
                    _query("flow", _FLOW, "Only this flow."),
                    _query("status", _ref("Status"), "Only this status."),
                    _query(
                        "query",
                        {"type": "string", "maxLength": 200},
                        "Substring of the recipient, body, id or provider id.",
                    ),
                    *_paging(20),
                ],
                "responses": {"200": _json(_ref("SmsPage"), "A page."), **_QUERY_ERRORS},
            }
        },
        "/v1/sms/sender-id-requests": {
            "post": {
                "operationId": "requestSenderId",
                "summary": "Ask for a sender ID or OTP brand (scope sender_ids:request).",
                "requestBody": _body(_ref("CreateSenderIdRequest"), "The request."),
                "responses": {
                    "201": _json(_ref("SenderIdRequest"), "Pending review."),
                    **_BODY_ERRORS,
                    **_AUTH_ERRORS,
                    "409": _error("CONFLICT: already pending or approved"),
                },
            },
            "get": {
                "operationId": "listSenderIdRequests",
                "summary": (
                    "Sender-ID requests, oldest first (scope sender_ids:request; "
                    "all=true needs platform:admin)."
                ),
                "parameters": [
                    _query(
                        "status",
                        {"type": "string", "enum": ["PENDING", "APPROVED", "REJECTED"]},
                        "Only this status.",
                    ),
                    _query(
                        "all",
                        {"type": "boolean", "default": False},
                        "Every organization's requests (platform:admin).",
                    ),
                ],
                "responses": {
                    "200": _json(_ref("SenderIdRequestList"), "The requests."),
                    **_QUERY_ERRORS,
                },
            },
        },
        "/v1/sms/sender-id-requests/{requestId}/review": {
            "post": {
                "operationId": "reviewSenderIdRequest",
                "summary": "Approve or reject a pending request (scope platform:admin).",
                "parameters": [_path("requestId", _STRING)],
                "requestBody": _body(_ref("ReviewSenderIdRequest"), "The decision."),
                "responses": {
                    "200": _json(_ref("SenderIdRequest"), "The reviewed request."),
                    **_BODY_ERRORS,
                    **_AUTH_ERRORS,
                    "404": _error("NOT_FOUND: no such request"),
                    "409": _error("CONFLICT: already reviewed"),
                },
            }
        },
        "/v1/sms/sender-ids": {
            "get": {
                "operationId": "listSenderIds",
                "summary": "Approved sender IDs and OTP brands (scope read:sms).",
                "parameters": [_query("flow", _FLOW, "Only this flow.")],
                "responses": {
                    "200": _json(_ref("ApprovedSenderIdList"), "Approved values."),
                    **_QUERY_ERRORS,
                },
            }
        },
        "/v1/webhooks/sms/inbound": {
            "post": {
                "operationId": "receiveInboundSms",
                "summary": "An MO message from the aggregator; STOP/START/HELP handled.",
                "security": _TOKEN,
                "requestBody": _mo_body("The MO message, as JSON or a form."),
                "responses": {
                    "200": _json(_ref("InboundWebhookResponse"), "Stored."),
                    **_WEBHOOK_ERRORS,
                },
            }
        },
        "/v1/webhooks/sms/inbound-opt-out": {
            "post": {
                "operationId": "receiveInboundOptOut",
                "summary": "Record STOP/START when the organization has sent to the number.",
                "security": _TOKEN,
                "requestBody": _mo_body("The MO message, as JSON or a form."),
                "responses": {
                    "200": _json(_ref("InboundOptOutResponse"), "Handled."),
                    **_WEBHOOK_ERRORS,
                },
            }
        },
        "/v1/webhooks/sms/dlr": {
            "post": {
                "operationId": "receiveSmsDeliveryReceipt",
                "summary": "A carrier delivery receipt; never moves a message backwards.",
                "security": _TOKEN,
                "requestBody": _body(_ref("DeliveryReceipt"), "The receipt."),
                "responses": {
                    "202": _json(_ref("DeliveryReceiptResult"), "Received."),
                    **_WEBHOOK_ERRORS,
                    "404": _error("NOT_FOUND: no SMS of the organization has this id"),
                },
            }
        },
        "/v1/webhooks/sms/provider": {
            "post": {
                "operationId": "receiveSmsProviderCallback",
                "summary": "A signed status callback from the SMS provider (e.g. Twilio).",
                "description": (
                    "The provider's signature (e.g. X-Twilio-Signature) is checked over "
                    "COMMTUNNEL_PUBLIC_URL + path when set, else the request URL."
                ),
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {"schema": {"type": "object"}},
                        "application/json": {"schema": {"type": "object"}},
                    },
                },
                "responses": {
                    "200": _json(_ref("ProviderCallbackResult"), "Received."),
                    "400": _error("VALIDATION_ERROR: not a status callback of this provider"),
                    "401": _error("INVALID_WEBHOOK_SIGNATURE: missing or wrong signature"),
                    "404": _error("NOT_FOUND: the provider has no signed status callbacks"),
                    "413": _TOO_LARGE,
                },
            }
        },
    }
)

# --------------------------------------------------------------------------- WhatsApp

_WA_READ_ERRORS = _read_errors("WhatsApp message")
# Mirrors WhatsAppService's checks (Meta's numeric phone number id, template names).
_PHONE_NUMBER_ID = {"type": "string", "pattern": "^[0-9]{1,32}$", "example": "106540352242922"}
_WA_GRAPH_ERRORS = {
    "422": _error(
        "WHATSAPP_SEND_REJECTED: Graph refused the message, now FAILED (details.messageId, "
        "details.errorCategory); IDEMPOTENCY_KEY_REUSED on send"
    ),
    "502": _error(
        "WHATSAPP_PROVIDER_ERROR: a transient Graph failure; the message is RETRYING and the "
        "worker retries it (details.messageId, details.errorCategory)"
    ),
}
_WA_LINE_ERRORS = (
    "WHATSAPP_CHANNEL_DISABLED, WHATSAPP_LINE_NOT_CONFIGURED or SECRET_KEY_NOT_CONFIGURED"
)

_SCHEMAS.update(
    {
        "WhatsAppTemplate": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {
                    "type": "string",
                    "pattern": "^[a-z0-9_]{1,512}$",
                    "description": "An approved message template.",
                },
                "language": {
                    "type": "string",
                    "default": "en_US",
                    "pattern": "^[a-z]{2,3}(_[A-Za-z]{2,4})?$",
                },
                "variables": {
                    "oneOf": [
                        {"type": "array", "items": _STRING},
                        {"type": "object", "additionalProperties": _STRING},
                    ],
                    "nullable": True,
                    "description": "Body parameters: a list ({{1}}...) or named ({{name}}).",
                },
            },
        },
        "SendWhatsAppRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["to"],
            "description": "Give body (a text message) or template, not both.",
            "properties": {
                "to": {
                    "type": "string",
                    "description": "Recipient: E.164, or digits with the country code.",
                    "example": "+14155552671",
                },
                "body": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": whatsapp_service.MAX_TEXT_CHARACTERS,
                },
                "template": _ref("WhatsAppTemplate"),
                "idempotencyKey": _IDEMPOTENCY_KEY,
            },
        },
        "SendWhatsAppResponse": {
            "type": "object",
            "required": ["id", "status", "duplicate", "providerMessageId"],
            "properties": {
                "id": _UUID,
                "status": _ref("Status"),
                "duplicate": _DUPLICATE,
                "providerMessageId": {
                    "type": "string",
                    "nullable": True,
                    "description": "Meta's wamid.… (null on a replay not yet sent).",
                },
            },
        },
        "WhatsAppMessage": {
            "type": "object",
            "properties": {
                "id": _UUID,
                "channel": {"type": "string", "enum": ["whatsapp"]},
                "status": _ref("Status"),
                "to": _E164,
                "kind": {"type": "string", "enum": ["text", "template"]},
                "body": {**_NULLABLE_STRING, "description": "The text; null for templates."},
                "template": {"allOf": [_ref("WhatsAppTemplate")], "nullable": True},
                "phoneNumberId": {**_PHONE_NUMBER_ID, "description": "The line it is sent from."},
                **_MESSAGE_PROPERTIES,
                "attempts": _ATTEMPTS,
            },
        },
        "WhatsAppRetryResponse": {
            "type": "object",
            "required": ["id", "status", "providerMessageId"],
            "properties": {
                "id": _UUID,
                "status": _ref("Status"),
                "providerMessageId": _NULLABLE_STRING,
            },
        },
        "WhatsAppLine": {
            "type": "object",
            "required": [
                "whatsappPhoneNumberId",
                "usesPlatformDefault",
                "platformLineConfigured",
                "hasOwnAccessToken",
                "state",
            ],
            "properties": {
                "whatsappPhoneNumberId": {
                    **_PHONE_NUMBER_ID,
                    "nullable": True,
                    "description": "The organization's own line; null when it uses the default.",
                },
                "usesPlatformDefault": {"type": "boolean"},
                "platformLineConfigured": {"type": "boolean"},
                "hasOwnAccessToken": {
                    "type": "boolean",
                    "description": "Whether a token is stored (encrypted; never returned).",
                },
                "state": {
                    "type": "string",
                    "enum": ["ACTIVE", "PAUSED", "FLAGGED"],
                    "description": "PAUSED after an expired token; FLAGGED after a policy block.",
                },
            },
        },
        "UpdateWhatsAppLineRequest": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "description": "At least one field; null clears it.",
            "properties": {
                "whatsappPhoneNumberId": {**_PHONE_NUMBER_ID, "nullable": True},
                "whatsappAccessToken": {
                    "type": "string",
                    "nullable": True,
                    "minLength": 20,
                    "maxLength": 1024,
                    "description": "A Graph access token, stored encrypted.",
                },
            },
        },
        "WhatsAppWebhook": {
            "type": "object",
            "required": ["object", "entry"],
            "description": "Meta's webhook payload (entry[].changes[] with field 'messages').",
            "properties": {
                "object": {"type": "string", "enum": ["whatsapp_business_account"]},
                "entry": {"type": "array", "items": {"type": "object"}},
            },
        },
        "WhatsAppWebhookResult": {
            "type": "object",
            "required": ["statusesApplied", "statusesIgnored", "inboundStored"],
            "properties": {
                "statusesApplied": {
                    "type": "integer",
                    "description": "Status updates that moved a message forward.",
                },
                "statusesIgnored": {
                    "type": "integer",
                    "description": "Unknown, duplicate or out-of-order status updates.",
                },
                "inboundStored": {"type": "integer", "description": "Messages customers sent."},
            },
        },
    }
)


def _hub(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return _query(f"hub.{name}", schema, description, required=True)


_PATHS.update(
    {
        "/v1/public/whatsapp/send": {
            "post": {
                "operationId": "sendWhatsApp",
                "summary": "Send a WhatsApp text or template message now (scope send:whatsapp).",
                "description": (
                    "The message is handed to Meta's Graph API before the answer: 201 with "
                    "status SENT and the wamid, or the Error envelope when Graph failed."
                ),
                "parameters": _IDEMPOTENCY_HEADER,
                "requestBody": _body(_ref("SendWhatsAppRequest"), "The message."),
                "responses": {
                    "201": _json(_ref("SendWhatsAppResponse"), "Sent (status SENT)."),
                    "200": {
                        **_json(
                            _ref("SendWhatsAppResponse"),
                            "A replay: the earlier message, its status now, duplicate=true.",
                        ),
                        "headers": {
                            "Idempotent-Replayed": {"schema": {"type": "string", "enum": ["true"]}}
                        },
                    },
                    **_BODY_ERRORS,
                    **_AUTH_ERRORS,
                    "409": _error(f"IDEMPOTENCY_KEY_IN_USE, {_WA_LINE_ERRORS}"),
                    **_WA_GRAPH_ERRORS,
                },
            }
        },
        "/v1/public/whatsapp/{id}": {
            "get": {
                "operationId": "getWhatsApp",
                "summary": "Status, content and attempts of one message (scope read:whatsapp).",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("WhatsAppMessage"), "The message."),
                    **_WA_READ_ERRORS,
                },
            }
        },
        "/v1/public/whatsapp/{id}/timeline": _timeline(
            "getWhatsAppTimeline", "WhatsApp message", "read:whatsapp"
        ),
        "/v1/public/whatsapp/{id}/retry": {
            "post": {
                "operationId": "retryWhatsApp",
                "summary": "Send a FAILED message again now (scope send:whatsapp).",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("WhatsAppRetryResponse"), "Sent again."),
                    **_WA_READ_ERRORS,
                    "409": _error(
                        f"MESSAGE_NOT_RETRYABLE: not FAILED (details.status); {_WA_LINE_ERRORS}"
                    ),
                    **_WA_GRAPH_ERRORS,
                },
            }
        },
        "/v1/account/whatsapp-cloud-line": {
            "get": {
                "operationId": "getWhatsAppLine",
                "summary": "The organization's WhatsApp Cloud line (scope account:manage).",
                "responses": {"200": _json(_ref("WhatsAppLine"), "The line."), **_AUTH_ERRORS},
            },
            "patch": {
                "operationId": "updateWhatsAppLine",
                "summary": "Set or clear the phone number id and token (scope account:manage).",
                "requestBody": _body(_ref("UpdateWhatsAppLineRequest"), "The fields to change."),
                "responses": {
                    "200": _json(_ref("WhatsAppLine"), "The line after the change."),
                    **_BODY_ERRORS,
                    **_AUTH_ERRORS,
                    "409": _error(
                        "WHATSAPP_PHONE_NUMBER_ID_IN_USE: another organization has this line; "
                        "SECRET_KEY_NOT_CONFIGURED: no COMMTUNNEL_SECRET_KEY to encrypt the token"
                    ),
                },
            },
        },
        "/v1/webhooks/whatsapp": {
            "get": {
                "operationId": "verifyWhatsAppWebhook",
                "summary": "Meta's subscription check: echoes hub.challenge.",
                "security": [],
                "parameters": [
                    _hub("mode", {"type": "string", "enum": ["subscribe"]}, "Always subscribe."),
                    _hub("verify_token", _STRING, "Must equal WHATSAPP_VERIFY_TOKEN."),
                    _hub("challenge", _STRING, "Echoed back."),
                ],
                "responses": {
                    "200": {
                        "description": "The challenge, as plain text.",
                        "content": {"text/plain": {"schema": _STRING}},
                    },
                    "403": _error("INVALID_WEBHOOK_TOKEN: wrong mode or verify token"),
                },
            },
            "post": {
                "operationId": "receiveWhatsAppWebhook",
                "summary": "Status updates and inbound messages from Meta (signed).",
                "description": (
                    "X-Hub-Signature-256 must be sha256=<HMAC-SHA256 of the raw body with "
                    "WHATSAPP_APP_SECRET>. Status updates move a message forward only."
                ),
                "security": [],
                "parameters": [
                    {
                        "name": "X-Hub-Signature-256",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string", "pattern": "^sha256=[0-9a-fA-F]{64}$"},
                    }
                ],
                "requestBody": _body(_ref("WhatsAppWebhook"), "Meta's payload."),
                "responses": {
                    "200": _json(_ref("WhatsAppWebhookResult"), "Applied."),
                    "400": _error("VALIDATION_ERROR: not a WhatsApp Business webhook"),
                    "401": _error("INVALID_WEBHOOK_SIGNATURE: missing or wrong signature"),
                    "413": _TOO_LARGE,
                },
            },
        },
    }
)


_TRACKING_TOKEN = _query(
    "t", _STRING, "Signed tracking token, as written into the email.", required=True
)
_PIXEL = {"image/gif": {"schema": {"type": "string", "format": "binary"}}}
_NO_STORE = {"Cache-Control": {"schema": {"type": "string", "enum": ["no-store"]}}}

_PATHS.update(
    {
        "/v1/track/open": {
            "get": {
                "operationId": "trackOpen",
                "summary": "Open pixel of a tracked email: records email_opened.",
                "description": (
                    "Answers a 1x1 transparent GIF. A HEAD request records nothing. The "
                    "event's details: userAgent, isBot, first."
                ),
                "security": [],
                "parameters": [_TRACKING_TOKEN],
                "responses": {
                    "200": {"description": "The pixel.", "content": _PIXEL, "headers": _NO_STORE},
                    "400": {
                        "description": (
                            "The pixel too for an invalid token (tampered, truncated, of the "
                            "click kind or signed with another key; nothing recorded); the "
                            "Error envelope (VALIDATION_ERROR) when t is missing."
                        ),
                        "content": {**_PIXEL, "application/json": {"schema": _ref("Error")}},
                    },
                },
            }
        },
        "/v1/track/click": {
            "get": {
                "operationId": "trackClick",
                "summary": "Link of a tracked email: records email_clicked, redirects.",
                "description": (
                    "Redirects to the URL signed into the token and nowhere else. A HEAD "
                    "request records nothing. The event's details: userAgent, isBot, first, "
                    "url, linkIndex."
                ),
                "security": [],
                "parameters": [_TRACKING_TOKEN],
                "responses": {
                    "302": {
                        "description": "To the original URL.",
                        "headers": {
                            "Location": {"schema": {"type": "string", "format": "uri"}},
                            **_NO_STORE,
                        },
                    },
                    "400": _error(
                        "INVALID_TRACKING_TOKEN: tampered, truncated, of the open kind or "
                        "signed with another key (no redirect); VALIDATION_ERROR: t missing"
                    ),
                },
            }
        },
    }
)


# --------------------------------------------------------------------------- customer webhooks

_WEBHOOK_EVENTS = {
    "type": "array",
    "nullable": True,
    "minItems": 1,
    "items": {"type": "string", "enum": sorted(EVENT_TYPES)},
    "description": "Event types to receive; null or omitted: every event.",
}
_WEBHOOK_URL = {"type": "string", "format": "uri", "maxLength": MAX_URL_LENGTH}
_WEBHOOK_DESCRIPTION = {"type": "string", "maxLength": MAX_DESCRIPTION_LENGTH}
_NULLABLE_TIMESTAMP = {**_TIMESTAMP, "nullable": True}
_ENDPOINT_PROPERTIES: dict[str, Any] = {
    "id": _UUID,
    "url": _WEBHOOK_URL,
    "description": _WEBHOOK_DESCRIPTION,
    "events": _WEBHOOK_EVENTS,
    "enabled": {"type": "boolean"},
    "disabledAt": _NULLABLE_TIMESTAMP,
    "disabledReason": {
        "type": "string",
        "nullable": True,
        "enum": ["manual", "gone", "failing", None],
        "description": "manual (PATCH), gone (the URL answered 410), failing (for too long).",
    },
    "failingSince": _NULLABLE_TIMESTAMP,
    "secretRotatedUntil": {
        **_NULLABLE_TIMESTAMP,
        "description": "Until when the previous secret also signs (after a rotation).",
    },
    "createdAt": _TIMESTAMP,
    "updatedAt": _TIMESTAMP,
}
_SCHEMAS.update(
    {
        "WebhookEndpoint": {
            "type": "object",
            "required": list(_ENDPOINT_PROPERTIES),
            "properties": _ENDPOINT_PROPERTIES,
        },
        "WebhookEndpointWithSecret": {
            "type": "object",
            "required": [*_ENDPOINT_PROPERTIES, "secret"],
            "properties": {
                **_ENDPOINT_PROPERTIES,
                "secret": {
                    "type": "string",
                    "pattern": "^whsec_",
                    "description": "The signing secret; shown at creation and rotation only.",
                },
            },
        },
        "WebhookEndpointList": {
            "type": "object",
            "required": ["data"],
            "properties": {"data": {"type": "array", "items": _ref("WebhookEndpoint")}},
        },
        "CreateWebhookRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["url"],
            "properties": {
                "url": _WEBHOOK_URL,
                "events": _WEBHOOK_EVENTS,
                "description": _WEBHOOK_DESCRIPTION,
                "enabled": {"type": "boolean", "default": True},
            },
        },
        "UpdateWebhookRequest": {
            "type": "object",
            "additionalProperties": False,
            "minProperties": 1,
            "properties": {
                "url": _WEBHOOK_URL,
                "events": _WEBHOOK_EVENTS,
                "description": _WEBHOOK_DESCRIPTION,
                "enabled": {"type": "boolean"},
            },
        },
        "WebhookDeleted": {
            "type": "object",
            "required": ["id", "deleted"],
            "properties": {"id": _UUID, "deleted": {"type": "boolean", "enum": [True]}},
        },
        "WebhookAttempt": {
            "type": "object",
            "required": [
                "number",
                "timestamp",
                "durationMs",
                "statusCode",
                "succeeded",
                "error",
                "responseBody",
            ],
            "properties": {
                "number": {"type": "integer", "minimum": 1},
                "timestamp": _TIMESTAMP,
                "durationMs": {"type": "number"},
                "statusCode": {"type": "integer", "nullable": True},
                "succeeded": {"type": "boolean"},
                "error": _NULLABLE_STRING,
                "responseBody": {
                    "type": "string",
                    "description": f"The first {RESPONSE_BODY_LIMIT} bytes of the answer.",
                },
            },
        },
        "WebhookDelivery": {
            "type": "object",
            "required": [
                "id",
                "endpointId",
                "eventId",
                "eventType",
                "messageId",
                "status",
                "attemptCount",
                "nextAttemptAt",
                "replayOf",
                "lastStatusCode",
                "lastError",
                "createdAt",
                "updatedAt",
            ],
            "properties": {
                "id": _UUID,
                "endpointId": _UUID,
                "eventId": {**_UUID, "description": "The webhook-id header and payload id."},
                "eventType": _STRING,
                "messageId": {**_UUID, "nullable": True},
                "status": {"type": "string", "enum": [str(s) for s in DeliveryStatus]},
                "attemptCount": {"type": "integer"},
                "nextAttemptAt": _NULLABLE_TIMESTAMP,
                "replayOf": {**_UUID, "nullable": True},
                "lastStatusCode": {"type": "integer", "nullable": True},
                "lastError": _NULLABLE_STRING,
                "createdAt": _TIMESTAMP,
                "updatedAt": _TIMESTAMP,
                "attempts": {"type": "array", "items": _ref("WebhookAttempt")},
            },
        },
        "WebhookDeliveryPage": {
            "type": "object",
            "required": ["data"],
            "properties": {
                "data": {"type": "array", "items": _ref("WebhookDelivery")},
                "nextCursor": {
                    "type": "string",
                    "description": "Pass as cursor for the next page; absent on the last.",
                },
            },
        },
    }
)

_WEBHOOK_NOT_FOUND = {"404": _error("NOT_FOUND: no such endpoint in your organization")}
_WEBHOOK_BODY_ERRORS = {
    "400": _error(
        "INVALID_JSON, VALIDATION_ERROR (details per field) or WEBHOOK_URL_NOT_ALLOWED "
        "(the host is not a public address; details.url)"
    ),
    "413": _TOO_LARGE,
}
_DELIVERY_PAGING = _cursor_paging(
    MAX_DELIVERY_PAGE, 50, "Page size.", "nextCursor of the previous page."
)
_DISABLED = {"409": _error("CONFLICT: the endpoint is disabled (details.disabledReason)")}

_PATHS.update(
    {
        "/v1/public/webhooks": {
            "post": {
                "operationId": "createWebhook",
                "summary": "Register an endpoint (scope webhooks:manage); returns its secret once.",
                "requestBody": _body(_ref("CreateWebhookRequest"), ""),
                "responses": {
                    "201": _json(_ref("WebhookEndpointWithSecret"), "Created."),
                    **_WEBHOOK_BODY_ERRORS,
                    **_AUTH_ERRORS,
                },
            },
            "get": {
                "operationId": "listWebhooks",
                "summary": "The organization's endpoints, oldest first (scope webhooks:manage).",
                "responses": {"200": _json(_ref("WebhookEndpointList"), "All."), **_AUTH_ERRORS},
            },
        },
        "/v1/public/webhooks/deliveries": {
            "get": {
                "operationId": "listWebhookDeliveries",
                "summary": "Deliveries newest first with their attempts, optionally of a message.",
                "parameters": [
                    _query("messageId", _UUID, "Only this message's deliveries."),
                    *_DELIVERY_PAGING,
                ],
                "responses": {
                    "200": _json(_ref("WebhookDeliveryPage"), "A page."),
                    "400": _error("VALIDATION_ERROR: limit or cursor"),
                    **_AUTH_ERRORS,
                },
            }
        },
        "/v1/public/webhooks/deliveries/{deliveryId}/replay": {
            "post": {
                "operationId": "replayWebhookDelivery",
                "summary": "Send a delivery's event again (same webhook-id) as a new delivery.",
                "parameters": [_path("deliveryId", _STRING)],
                "responses": {
                    "202": _json(_ref("WebhookDelivery"), "Queued."),
                    **_AUTH_ERRORS,
                    "404": _error("NOT_FOUND: no such delivery (or its endpoint is deleted)"),
                    **_DISABLED,
                },
            }
        },
        "/v1/public/webhooks/{id}": {
            "get": {
                "operationId": "getWebhook",
                "summary": "One endpoint, without its secret.",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("WebhookEndpoint"), "The endpoint."),
                    **_AUTH_ERRORS,
                    **_WEBHOOK_NOT_FOUND,
                },
            },
            "patch": {
                "operationId": "updateWebhook",
                "summary": "Change url, events, description and/or enabled.",
                "parameters": [_ID],
                "requestBody": _body(_ref("UpdateWebhookRequest"), ""),
                "responses": {
                    "200": _json(_ref("WebhookEndpoint"), "Changed."),
                    **_WEBHOOK_BODY_ERRORS,
                    **_AUTH_ERRORS,
                    **_WEBHOOK_NOT_FOUND,
                },
            },
            "delete": {
                "operationId": "deleteWebhook",
                "summary": "Delete an endpoint and its delivery log.",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("WebhookDeleted"), "Deleted."),
                    **_AUTH_ERRORS,
                    **_WEBHOOK_NOT_FOUND,
                },
            },
        },
        "/v1/public/webhooks/{id}/rotate-secret": {
            "post": {
                "operationId": "rotateWebhookSecret",
                "summary": "A new secret; the previous one also signs for the grace period.",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("WebhookEndpointWithSecret"), "Rotated."),
                    **_AUTH_ERRORS,
                    **_WEBHOOK_NOT_FOUND,
                },
            }
        },
        "/v1/public/webhooks/{id}/deliveries": {
            "get": {
                "operationId": "listEndpointDeliveries",
                "summary": "One endpoint's deliveries, newest first, with their attempts.",
                "parameters": [_ID, *_DELIVERY_PAGING],
                "responses": {
                    "200": _json(_ref("WebhookDeliveryPage"), "A page."),
                    "400": _error("VALIDATION_ERROR: limit or cursor"),
                    **_AUTH_ERRORS,
                    **_WEBHOOK_NOT_FOUND,
                },
            }
        },
        "/v1/public/webhooks/{id}/test": {
            "post": {
                "operationId": "sendWebhookTest",
                "summary": "Queue a webhook.test event for this endpoint, whatever its filter.",
                "parameters": [_ID],
                "responses": {
                    "202": _json(_ref("WebhookDelivery"), "Queued."),
                    **_AUTH_ERRORS,
                    **_WEBHOOK_NOT_FOUND,
                    **_DISABLED,
                },
            }
        },
    }
)


# --------------------------------------------------------------------------- listings

_LISTING_TIME = {"type": "string", "format": "date-time"}
_LISTING_FILTERS = [
    _query("status", _ref("Status"), "Only messages in this status now (any case)."),
    _query(
        "createdAfter",
        _LISTING_TIME,
        "Created at or after this instant (ISO 8601 with a timezone). Alias: after.",
    ),
    _query(
        "createdBefore",
        _LISTING_TIME,
        "Created at or before this instant (ISO 8601 with a timezone). Alias: before.",
    ),
]
_LISTING_PAGING = _cursor_paging(
    listing_service.MAX_LIMIT,
    listing_service.DEFAULT_LIMIT,
    "Messages per page.",
    "The cursor of the previous page, with the same filters; walk until it is absent.",
)
_LISTING_ERRORS = {
    "400": _error(
        "VALIDATION_ERROR (details per parameter; details.cursor: not from a previous page, "
        "or made for other filters)"
    ),
    **_AUTH_ERRORS,
}


def _listing_page(item: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["items"],
        "description": description,
        "properties": {
            "items": {"type": "array", "items": item},
            "cursor": {
                "type": "string",
                "description": "Pass as cursor for the next page; absent on the last page.",
            },
        },
    }


_SCHEMAS.update(
    {
        "MessagePage": _listing_page(
            {"oneOf": [_ref("Email"), _ref("SmsWithAttempts"), _ref("WhatsAppMessage")]},
            "Newest first; each item in its channel's GET shape, attempts included.",
        ),
        "EmailPage": _listing_page(_ref("Email"), "Newest first, attempts included."),
    }
)

_PATHS.update(
    {
        "/v1/public/messages": {
            "get": {
                "operationId": "listMessages",
                "summary": (
                    "Messages of your organization, newest first, of every channel the key "
                    "reads (read:email, read:sms, read:whatsapp); filters combine with AND."
                ),
                "parameters": [
                    _query(
                        "channel",
                        {"type": "string", "enum": ["email", "sms", "whatsapp"]},
                        "Only this channel (any case); the key must read it (else 403).",
                    ),
                    *_LISTING_FILTERS,
                    _query(
                        "to",
                        _STRING,
                        "Only messages to this recipient: an email address (its addr-spec, "
                        "ASCII case-insensitive) or an E.164 number.",
                    ),
                    *_LISTING_PAGING,
                ],
                "responses": {
                    "200": _json(_ref("MessagePage"), "A page."),
                    **_LISTING_ERRORS,
                },
            }
        },
        "/v1/public/emails": {
            "get": {
                "operationId": "listEmails",
                "summary": "Emails of your organization, newest first (scope read:email).",
                "parameters": [
                    *_LISTING_FILTERS,
                    _query(
                        "to",
                        _STRING,
                        "Only emails to this address (its addr-spec, ASCII case-insensitive).",
                    ),
                    *_LISTING_PAGING,
                ],
                "responses": {
                    "200": _json(_ref("EmailPage"), "A page."),
                    **_LISTING_ERRORS,
                },
            }
        },
    }
)


_SCHEMAS.update(
    {
        "ProviderHealth": {
            "type": "object",
            "properties": {
                "provider": {"type": "string", "description": "The provider's name in attempts[]."},
                "channel": {"type": "string", "enum": ["email", "sms"]},
                "state": {"type": "string", "enum": ["CLOSED", "OPEN", "HALF_OPEN"]},
                "consecutiveFailures": {"type": "integer", "minimum": 0},
                "openedUntil": {
                    **_TIMESTAMP,
                    "nullable": True,
                    "description": "When an open circuit lets a probe through.",
                },
                "calls": {"type": "integer", "description": "Calls in the last 5 minutes."},
                "failures": {"type": "integer", "description": "Provider faults among them."},
                "errorRate": {"type": "number", "minimum": 0, "maximum": 1},
                "lastError": _NULLABLE_STRING,
                "lastErrorCategory": _NULLABLE_STRING,
                "lastErrorAt": {**_TIMESTAMP, "nullable": True},
                "reportedBy": {
                    "type": "string",
                    "nullable": True,
                    "description": "The worker that reported; null before any report.",
                },
                "updatedAt": {**_TIMESTAMP, "nullable": True},
            },
        },
    }
)
_PATHS.update(
    {
        "/v1/public/providers/health": {
            "get": {
                "operationId": "getProviderHealth",
                "summary": (
                    "Each email and SMS provider's circuit breaker state, recent error rate "
                    "and last error, in failover order."
                ),
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "providers": {"type": "array", "items": _ref("ProviderHealth")}
                            },
                        },
                        "The providers.",
                    ),
                    **_AUTH_ERRORS,
                },
            }
        },
    }
)


# --------------------------------------------------------------------------- batches, cancels

_CANCEL_CONFLICT = {
    "409": _error(
        "MESSAGE_NOT_CANCELABLE: only SCHEDULED or QUEUED messages not yet claimed by a worker "
        "(details.status: the status now)"
    )
}

_SCHEMAS.update(
    {
        "EmailBatchRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["messages"],
            "properties": {
                "messages": {
                    "type": "array",
                    "minItems": 1,
                    "description": (
                        "The emails, each a send request without idempotencyKey and checked on "
                        "its own. At most COMMTUNNEL_BATCH_MAX_MESSAGES (100 by default)."
                    ),
                    "items": _ref("SendEmailRequest"),
                },
                "idempotencyKey": {
                    **_IDEMPOTENCY_KEY,
                    "description": "One key for the whole batch (or the x-idempotency-key header).",
                },
            },
        },
        "BatchItemError": {
            "type": "object",
            "required": ["error", "code", "details"],
            "description": "The error envelope of a refused item (the request id is the batch's).",
            "properties": {
                "error": _STRING,
                "code": {"type": "string", "description": "e.g. VALIDATION_ERROR"},
                "details": {"type": "object", "additionalProperties": True},
            },
        },
        "EmailBatchItem": {
            "type": "object",
            "required": ["index"],
            "description": (
                "One item's outcome: id, status, createdAt and scheduledAt when accepted; "
                "error when refused."
            ),
            "properties": {
                "index": {"type": "integer", "minimum": 0, "description": "Position in messages."},
                "id": _UUID,
                "status": _ref("Status"),
                "createdAt": _TIMESTAMP,
                "scheduledAt": _SCHEDULED_AT_SHOWN,
                "error": _ref("BatchItemError"),
            },
        },
        "EmailBatchResponse": {
            "type": "object",
            "required": ["id", "data", "accepted", "rejected", "duplicate"],
            "properties": {
                "id": {
                    **_UUID,
                    "nullable": True,
                    "description": "The batch; null when every item was refused (nothing stored).",
                },
                "data": {"type": "array", "items": _ref("EmailBatchItem")},
                "accepted": {"type": "integer", "minimum": 0},
                "rejected": {"type": "integer", "minimum": 0},
                "duplicate": {
                    "type": "boolean",
                    "description": "A replay of an earlier batch (statuses as they are now).",
                },
            },
        },
    }
)

_PATHS.update(
    {
        "/v1/public/emails/batch": {
            "post": {
                "operationId": "sendEmailBatch",
                "summary": (
                    "Queue several emails at once (scope send:email): each is checked on its own, "
                    "the accepted ones are committed together."
                ),
                "parameters": _IDEMPOTENCY_HEADER,
                "requestBody": _body(_ref("EmailBatchRequest"), "The emails."),
                "responses": {
                    "200": {
                        **_json(
                            _ref("EmailBatchResponse"),
                            "One result per item, in order; a replay has duplicate=true.",
                        ),
                        "headers": {
                            "Idempotent-Replayed": {
                                "description": "true on a replay.",
                                "schema": {"type": "string", "enum": ["true"]},
                            }
                        },
                    },
                    **_SEND_ERRORS,
                    "400": _error(
                        "INVALID_JSON, or VALIDATION_ERROR: messages missing, empty or too many, "
                        "unknown fields, a malformed idempotencyKey"
                    ),
                },
            }
        },
        "/v1/public/emails/{id}/cancel": {
            "post": {
                "operationId": "cancelEmail",
                "summary": "Cancel a scheduled or queued email (scope send:email).",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("Email"), "The email, CANCELED (an email_canceled event)."),
                    **_read_errors("email"),
                    **_CANCEL_CONFLICT,
                },
            }
        },
        "/v1/public/sms/{id}/cancel": {
            "post": {
                "operationId": "cancelSms",
                "summary": "Cancel a scheduled or queued SMS (scope send:sms).",
                "parameters": [_ID],
                "responses": {
                    "200": _json(_ref("SmsWithAttempts"), "The SMS, CANCELED (sms_canceled)."),
                    **_read_errors("SMS"),
                    **_CANCEL_CONFLICT,
                },
            }
        },
    }
)


# --------------------------------------------------------------------------- suppressions

_SUPPRESSION_REASON = {"type": "string", "enum": [r.value for r in SuppressionReason]}
_SUPPRESSION_PROPERTIES: dict[str, Any] = {
    "email": {"type": "string", "description": "The address, normalized (lower case)."},
    "reason": _SUPPRESSION_REASON,
    "origin": {
        "type": "string",
        "description": "Who listed it: api, cli, provider, webhook or unsubscribe.",
    },
    "createdAt": _TIMESTAMP,
    "expiresAt": {**_TIMESTAMP, "nullable": True, "description": "Null: never expires."},
    "messageId": {**_UUID, "nullable": True, "description": "The message that caused it."},
    "detail": {"type": "string", "nullable": True, "maxLength": MAX_DETAIL_CHARS},
}
_SCHEMAS.update(
    {
        "Suppression": {"type": "object", "properties": _SUPPRESSION_PROPERTIES},
        "SuppressionPage": _page_of("Suppression"),
        "AddSuppressionRequest": {
            "type": "object",
            "additionalProperties": False,
            "required": ["email"],
            "properties": {
                "email": {"type": "string", "description": "addr or 'Name <addr>'."},
                "reason": {**_SUPPRESSION_REASON, "default": "MANUAL"},
                "expiresAt": {
                    "type": "string",
                    "format": "date-time",
                    "description": "In the future, with a timezone; omit for never.",
                },
                "detail": {"type": "string", "maxLength": MAX_DETAIL_CHARS},
            },
        },
        "SuppressionAdded": {
            "type": "object",
            "properties": {
                **_SUPPRESSION_PROPERTIES,
                "created": {
                    "type": "boolean",
                    "description": "False: an entry blocking at least as long was kept.",
                },
            },
        },
        "SuppressionRemoved": {
            "type": "object",
            "required": ["email", "suppressed"],
            "properties": {"email": _STRING, "suppressed": {"type": "boolean", "enum": [False]}},
        },
        "EmailProviderEvents": {
            "type": "object",
            "additionalProperties": False,
            "required": ["events"],
            "properties": {
                "events": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": MAX_PROVIDER_EVENTS,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type"],
                        "properties": {
                            "type": {"type": "string", "enum": ["bounce", "complaint"]},
                            "messageId": {
                                "type": "string",
                                "description": "Our message id or the Message-ID header we set.",
                            },
                            "email": {
                                "type": "string",
                                "description": "The recipient (else the message's).",
                            },
                            "bounceType": {
                                "type": "string",
                                "enum": ["hard", "soft"],
                                "default": "hard",
                            },
                            "diagnostic": {
                                "type": "string",
                                "description": "The ESP's words, kept in detail.",
                            },
                        },
                    },
                }
            },
        },
        "EmailProviderEventsResult": {
            "type": "object",
            "properties": {
                name: {"type": "integer", "minimum": 0}
                for name in ("received", "suppressed", "bounced", "complained", "ignored")
            },
        },
    }
)
_EMAIL_PATH = _path("email", _STRING, "The address (percent-encoded); matched case-insensitively.")
_NOT_LISTED = {"404": _error("NOT_FOUND: the address is not (or no longer) on the list")}
_BAD_EMAIL = {"400": _error("VALIDATION_ERROR (details.email)")}
_UNSUBSCRIBE_TOKEN = _path(
    "token",
    {"type": "string", "maxLength": UNSUBSCRIBE_TOKEN_CHARS},
    "The signed token of the List-Unsubscribe link.",
)
_HTML = {"text/html": {"schema": {"type": "string"}}}
_PATHS.update(
    {
        "/v1/public/suppressions": {
            "get": {
                "operationId": "listEmailSuppressions",
                "summary": (
                    "The email suppression list, newest first; expired entries are left out "
                    "(scope read:email or opt_outs:manage)."
                ),
                "parameters": [
                    _query("reason", _SUPPRESSION_REASON, "Only entries with this reason."),
                    *_paging(50),
                ],
                "responses": {
                    "200": _json(_ref("SuppressionPage"), "A page."),
                    **_QUERY_ERRORS,
                },
            },
            "post": {
                "operationId": "addEmailSuppression",
                "summary": "Put an address on the list (scope send:email or opt_outs:manage).",
                "requestBody": _body(_ref("AddSuppressionRequest"), "The address."),
                "responses": {
                    "201": _json(_ref("SuppressionAdded"), "Added (or an expired entry replaced)."),
                    "200": _json(_ref("SuppressionAdded"), "Already listed (created=false)."),
                    **_BODY_ERRORS,
                    **_AUTH_ERRORS,
                },
            },
        },
        "/v1/public/suppressions/{email}": {
            "get": {
                "operationId": "getEmailSuppression",
                "summary": "One entry (scope read:email or opt_outs:manage).",
                "parameters": [_EMAIL_PATH],
                "responses": {
                    "200": _json(_ref("Suppression"), "The entry."),
                    **_BAD_EMAIL,
                    **_AUTH_ERRORS,
                    **_NOT_LISTED,
                },
            },
            "delete": {
                "operationId": "removeEmailSuppression",
                "summary": "Take an address off the list (scope opt_outs:manage).",
                "parameters": [_EMAIL_PATH],
                "responses": {
                    "200": _json(_ref("SuppressionRemoved"), "Removed."),
                    **_BAD_EMAIL,
                    **_AUTH_ERRORS,
                    **_NOT_LISTED,
                },
            },
        },
        "/v1/webhooks/email/events": {
            "post": {
                "operationId": "receiveEmailProviderEvents",
                "summary": "Bounce and complaint reports from your ESP (token in ?token=).",
                "description": (
                    "A hard bounce lists the address as HARD_BOUNCE and moves the message "
                    "(SENT or DELIVERED) to BOUNCED; a complaint lists it as COMPLAINT and "
                    "records email_complained; a soft bounce changes nothing. The token is "
                    "the organization's email events token "
                    "(commtunnel suppressions webhook-token --org NAME)."
                ),
                "security": [],
                "parameters": [
                    _query(
                        "token", _STRING, "The organization's email events token.", required=True
                    )
                ],
                "requestBody": _body(_ref("EmailProviderEvents"), "The events."),
                "responses": {
                    "200": _json(_ref("EmailProviderEventsResult"), "Applied."),
                    **_WEBHOOK_ERRORS,
                },
            }
        },
        "/v1/unsubscribe/{token}": {
            "get": {
                "operationId": "unsubscribePage",
                "summary": "A page with an Unsubscribe button; changes nothing (no auth).",
                "security": [],
                "parameters": [_UNSUBSCRIBE_TOKEN],
                "responses": {
                    "200": {"description": "The page.", "content": _HTML},
                    "400": _error("INVALID_UNSUBSCRIBE_TOKEN"),
                },
            },
            "post": {
                "operationId": "unsubscribe",
                "summary": (
                    "One-click unsubscribe (RFC 8058; body List-Unsubscribe=One-Click) or the "
                    "page's button: lists the address as UNSUBSCRIBE (no auth)."
                ),
                "security": [],
                "parameters": [_UNSUBSCRIBE_TOKEN],
                "responses": {
                    "200": {"description": "Unsubscribed (an HTML page).", "content": _HTML},
                    "400": _error("INVALID_UNSUBSCRIBE_TOKEN"),
                },
            },
        },
    }
)


# Whatever else fails (404/405 from routing, 500) answers the envelope too.
for _item in _PATHS.values():
    for _operation in _item.values():
        _operation["responses"]["default"] = _error("Any other failure (e.g. 500 INTERNAL_ERROR).")
        _with_access_rules(_operation["responses"])

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Commtunnel Public API",
        "version": __version__,
        "description": (
            "Transactional email, SMS and WhatsApp. Every failure answers the Error envelope; "
            "every response carries X-Request-Id."
        ),
    },
    "servers": [{"url": "/"}],
    "security": [{"bearerAuth": []}],
    "paths": _PATHS,
    "components": {
        "securitySchemes": {
            "bearerAuth": {
                "type": "http",
                "scheme": "bearer",
                "description": "An API key: ct_live_... or ct_test_... (sandbox).",
            },
            "webhookToken": {
                "type": "apiKey",
                "in": "query",
                "name": "token",
                "description": (
                    "The organization's SMS webhook token (commtunnel sms token --org NAME)."
                ),
            },
        },
        "parameters": {
            "IdempotencyKey": {
                "name": "x-idempotency-key",
                "in": "header",
                "required": False,
                "description": "Deduplicates sends within the retention window (default 24 h).",
                "schema": _IDEMPOTENCY_KEY,
            }
        },
        "responses": {
            "Unauthorized": {
                **_error("UNAUTHORIZED: missing, malformed, unknown or revoked API key"),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            }
        },
        "schemas": _SCHEMAS,
    },
}


def openapi_document() -> dict[str, Any]:
    """A fresh copy of the document (callers may modify it)."""
    return copy.deepcopy(OPENAPI)
