"""The JSON shapes of records, shared by the HTTP API and the CLI's ``--json`` output.

Wire rules (``../shared/DESIGN.md``, "Time" and "Wire format"): camelCase
field names; timestamps UTC ISO 8601 with milliseconds and ``Z``
(``2026-06-03T12:00:00.000Z``); enums as their value. One configured cattrs
converter (:func:`make_converter`) gives each flat record its public shape
(renamed fields, internal ones such as ``org_id`` or a secret left out);
:func:`delivery_json`, :func:`delivery_page_json` and
:func:`endpoint_with_secret_json` compose records for the webhook routes.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

import attrs
import cattrs
from cattrs.gen import make_dict_unstructure_fn, override

from commtunnel.domain.circuit import ProviderHealth
from commtunnel.domain.events import TimelineEvent, format_timestamp
from commtunnel.domain.messages import Attempt
from commtunnel.domain.suppressions import Suppression
from commtunnel.domain.webhooks import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from commtunnel.ports import DeliveryPage, InboundMessage, OptOut, SenderIdRequest
from commtunnel.services.webhooks import EndpointWithSecret


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _enum_value(member: enum.Enum) -> Any:
    return member.value


def make_converter() -> cattrs.Converter:
    """The converter for the wire: camelCase attrs classes, ms-Z datetimes, enum values.

    Attempts, timeline events, opt-outs, email suppressions (``address``
    as ``email``), inbound messages, sender-ID requests and webhook
    endpoints, deliveries and attempts get their public shapes here
    (renamed, and without internal fields such as ``org_id``, the
    reviewing key's id or a signing secret).
    """
    conv = cattrs.Converter()
    conv.register_unstructure_hook(datetime, format_timestamp)
    # StrEnum too: it subclasses str, which cattrs passes through before Enum.
    for base in (enum.Enum, enum.StrEnum):
        conv.register_unstructure_hook(base, _enum_value)

    def shaped(cls: type[Any], **changes: Any) -> Any:
        """camelCase names, with ``changes`` (renames, omissions) on top."""
        names = {a.name: override(rename=_camel(a.name)) for a in attrs.fields(cls)}
        return make_dict_unstructure_fn(cls, conv, **{**names, **changes})

    # Not ``shaped`` itself: cattrs hands its converter to a factory of two or more parameters.
    conv.register_unstructure_hook_factory(attrs.has, lambda cls: shaped(cls))
    conv.register_unstructure_hook(
        Attempt,
        shaped(
            Attempt,
            message_id=override(omit=True),
            started_at=override(rename="timestamp"),
        ),
    )
    conv.register_unstructure_hook(
        TimelineEvent,
        shaped(TimelineEvent, message_id=override(omit=True), org_id=override(omit=True)),
    )
    conv.register_unstructure_hook(OptOut, shaped(OptOut, org_id=override(omit=True)))
    conv.register_unstructure_hook(
        Suppression,
        shaped(Suppression, org_id=override(omit=True), address=override(rename="email")),
    )
    conv.register_unstructure_hook(
        InboundMessage,
        shaped(
            InboundMessage,
            org_id=override(omit=True),
            channel=override(omit=True),
            sender=override(rename="from"),
            recipient=override(rename="to"),
        ),
    )
    conv.register_unstructure_hook(
        WebhookEndpoint,
        shaped(
            WebhookEndpoint,
            org_id=override(omit=True),
            secret=override(omit=True),
            previous_secret=override(omit=True),
            previous_secret_expires_at=override(rename="secretRotatedUntil"),
            events=override(unstruct_hook=lambda events: None if events is None else list(events)),
        ),
    )
    conv.register_unstructure_hook(
        WebhookDelivery,
        shaped(WebhookDelivery, org_id=override(omit=True), payload=override(omit=True)),
    )
    conv.register_unstructure_hook(
        WebhookAttempt,
        shaped(
            WebhookAttempt,
            delivery_id=override(omit=True),
            started_at=override(rename="timestamp"),
        ),
    )
    conv.register_unstructure_hook(
        SenderIdRequest,
        shaped(
            SenderIdRequest,
            org_id=override(rename="organizationId"),
            reviewed_by=override(omit=True),
        ),
    )
    return conv


def endpoint_with_secret_json(
    conv: cattrs.Converter, created: EndpointWithSecret
) -> dict[str, Any]:
    """An endpoint with its ``whsec_`` secret: the answer to creation and rotation only."""
    shaped: dict[str, Any] = conv.unstructure(created.endpoint, WebhookEndpoint)
    return {**shaped, "secret": created.secret}


def delivery_json(
    conv: cattrs.Converter,
    delivery: WebhookDelivery,
    attempts: list[WebhookAttempt] | None = None,
) -> dict[str, Any]:
    """One delivery, with ``attempts`` (oldest first) when given."""
    shaped: dict[str, Any] = conv.unstructure(delivery, WebhookDelivery)
    if attempts is not None:
        shaped["attempts"] = conv.unstructure(attempts, list[WebhookAttempt])
    return shaped


def delivery_page_json(conv: cattrs.Converter, page: DeliveryPage) -> dict[str, Any]:
    """``{data: [...], nextCursor}``; ``nextCursor`` is absent on the last page."""
    body: dict[str, Any] = {"data": [delivery_json(conv, d, a) for d, a in page.items]}
    if page.next_cursor is not None:
        body["nextCursor"] = page.next_cursor
    return body


def provider_health_json(conv: cattrs.Converter, reports: list[ProviderHealth]) -> dict[str, Any]:
    """``{providers: [...]}``: each report camelCased, with ``errorRate`` (0..1, 4 places)."""
    providers = []
    for report in reports:
        shaped: dict[str, Any] = conv.unstructure(report, ProviderHealth)
        shaped["errorRate"] = round(report.error_rate, 4)
        providers.append(shaped)
    return {"providers": providers}
