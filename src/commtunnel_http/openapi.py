"""The OpenAPI 3.0.3 document served at ``GET /v1/public/openapi.json``.

It describes exactly the routes :class:`~commtunnel_http.routes.EmailRoutes`
registers (a test compares the two). Limits are taken from the core's
constants so the document cannot drift from the rules it describes.
"""

from __future__ import annotations

import copy
from typing import Any

from commtunnel import __version__
from commtunnel.domain.email import MAX_SUBJECT_CHARS
from commtunnel.domain.messages import Status
from commtunnel.services.email import MAX_TIMELINE_LIMIT
from commtunnel.services.idempotency import MAX_KEY_CHARS


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(_ref("Error"), description)


_STRING = {"type": "string"}
_NULLABLE_STRING = {"type": "string", "nullable": True}
_TIMESTAMP = {
    "type": "string",
    "format": "date-time",
    "description": "UTC, ISO 8601 with milliseconds and Z: 2026-06-03T12:00:00.000Z",
}
_AUTH_ERRORS = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "403": _error("INSUFFICIENT_SCOPE (details.requiredScope)"),
}
_READ_ERRORS = {**_AUTH_ERRORS, "404": _error("NOT_FOUND: no such email in your organization")}
_BODY_ERRORS = {
    "400": _error("INVALID_JSON (body not a JSON object) or VALIDATION_ERROR (details per field)"),
    "413": _error("PAYLOAD_TOO_LARGE (details.limitBytes)"),
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
            "templateId": {"type": "string", "format": "uuid"},
            "variables": {"type": "object", "additionalProperties": True},
            "tracking": {"type": "boolean", "default": False},
            "sandboxMode": {"type": "boolean", "default": False},
            "idempotencyKey": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
        },
    },
    "SendEmailResponse": {
        "type": "object",
        "required": ["id", "status", "createdAt", "duplicate"],
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "status": _ref("Status"),
            "createdAt": _TIMESTAMP,
            "duplicate": {"type": "boolean", "description": "A replay of an earlier send."},
        },
    },
    "PreviewEmailRequest": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "subject": _STRING,
            "html": _STRING,
            "text": _STRING,
            "templateId": {"type": "string", "format": "uuid"},
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
            "trackingEnabled": {"type": "boolean"},
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
            "status": {"type": "string", "enum": ["accepted", "transient", "permanent"]},
            "errorCategory": _NULLABLE_STRING,
            "errorMessage": _NULLABLE_STRING,
            "durationMs": {"type": "number"},
            "timestamp": _TIMESTAMP,
        },
    },
    "Email": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "channel": {"type": "string", "enum": ["email"]},
            "status": _ref("Status"),
            "from": _STRING,
            "to": _STRING,
            "subject": _STRING,
            "html": _NULLABLE_STRING,
            "text": _NULLABLE_STRING,
            "templateId": _NULLABLE_STRING,
            "tracking": {"type": "boolean"},
            "sandbox": {"type": "boolean"},
            "messageId": {"type": "string", "description": "The RFC 5322 Message-ID header."},
            "providerMessageId": _NULLABLE_STRING,
            "attemptCount": {"type": "integer"},
            "lastError": _NULLABLE_STRING,
            "createdAt": _TIMESTAMP,
            "updatedAt": _TIMESTAMP,
            "attempts": {"type": "array", "items": _ref("Attempt")},
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
            "events": {"type": "object", "additionalProperties": {"type": "integer"}},
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

_EMAIL_ID = {"name": "id", "in": "path", "required": True, "schema": _STRING}


def _window(name: str, what: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": True,
        "description": f"Window {what}, ISO 8601 with a timezone.",
        "schema": {"type": "string", "format": "date-time"},
    }


_PATHS: dict[str, Any] = {
    "/v1/public/emails/send": {
        "post": {
            "operationId": "sendEmail",
            "summary": "Queue an email for delivery (scope send:email).",
            "parameters": [{"$ref": "#/components/parameters/IdempotencyKey"}],
            "requestBody": {"required": True, **_json(_ref("SendEmailRequest"), "The email.")},
            "responses": {
                "202": _json(_ref("SendEmailResponse"), "Accepted; a replay has duplicate=true"),
                **_BODY_ERRORS,
                **_AUTH_ERRORS,
                "409": _error("IDEMPOTENCY_KEY_IN_USE: the key's first request is in flight"),
                "422": _error("IDEMPOTENCY_KEY_REUSED: the key was used with another payload"),
            },
        }
    },
    "/v1/public/emails/preview": {
        "post": {
            "operationId": "previewEmail",
            "summary": "Render subject and bodies without queuing (scope send:email).",
            "requestBody": {"required": True, **_json(_ref("PreviewEmailRequest"), "Sources.")},
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
            "summary": "Counts by status and event type for a window (scope read:email).",
            "parameters": [_window("start", "start (inclusive)"), _window("end", "end")],
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
            "parameters": [_EMAIL_ID],
            "responses": {"200": _json(_ref("Email"), "The email."), **_READ_ERRORS},
        }
    },
    "/v1/public/emails/{id}/timeline": {
        "get": {
            "operationId": "getEmailTimeline",
            "summary": "Lifecycle events of one email, oldest first (scope read:email).",
            "parameters": [
                _EMAIL_ID,
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {
                        "type": "integer",
                        "minimum": 1,
                        "maximum": MAX_TIMELINE_LIMIT,
                        "default": 100,
                    },
                },
            ],
            "responses": {
                "200": _json(_ref("Timeline"), "The events."),
                "400": _error("VALIDATION_ERROR (details.limit)"),
                **_READ_ERRORS,
            },
        }
    },
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

# Whatever else fails (404/405 from routing, 500) answers the envelope too.
for _item in _PATHS.values():
    for _operation in _item.values():
        _operation["responses"]["default"] = _error("Any other failure (e.g. 500 INTERNAL_ERROR).")

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "Commtunnel Public API",
        "version": __version__,
        "description": (
            "Transactional email. Every failure answers the Error envelope; every "
            "response carries X-Request-Id."
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
            }
        },
        "parameters": {
            "IdempotencyKey": {
                "name": "x-idempotency-key",
                "in": "header",
                "required": False,
                "description": "Deduplicates sends within the retention window (default 24 h).",
                "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY_CHARS},
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
