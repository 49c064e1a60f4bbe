"""The SMS ingress routes: inbound MO, inbound opt-out, delivery receipts, provider callbacks.

Contract: ``../shared/seeds/000_427ee8481191f61a.txt`` ("SMS inbound (MO
receive)", the DLR webhook) and ``../shared/seeds/001_fc3b71c01ecf9734.txt``
(the DLR / provider / inbound-opt-out routes). No API key here:

* ``/inbound``, ``/inbound-opt-out`` and ``/dlr`` carry the organization's
  webhook token in ``?token=``; it is checked before the body is read, so a
  caller without it learns nothing about what the body should be;
* ``/provider`` is signed by the provider (e.g. ``X-Twilio-Signature``);
  :meth:`~commtunnel.ports.SmsProvider.parse_status_callback` checks it
  against the URL the provider POSTed to: ``settings.public_url`` + the
  path when it is set (what the dispatcher handed the provider), else the
  request's own URL.

MO bodies come as JSON or as a form (``application/x-www-form-urlencoded`` or
``multipart/form-data``), as aggregators differ. Multipart is parsed with the
standard library's ``email`` package (``multipart/form-data`` is MIME,
RFC 7578); file parts are refused.
"""

from __future__ import annotations

from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from commtunnel.client import Commtunnel
from commtunnel.domain.errors import InvalidJsonError, ValidationError
from commtunnel_http.handlers import Handlers, parse_json_object
from commtunnel_http.wire import Wire

PROVIDER_PATH = "/v1/webhooks/sms/provider"
FORM_URLENCODED = "application/x-www-form-urlencoded"
FORM_MULTIPART = "multipart/form-data"
#: An MO form has three fields; anything far beyond is not an MO message.
MAX_FORM_FIELDS = 50


def _form_error(reason: str) -> ValidationError:
    return ValidationError("Request body is not a valid form", details={"body": reason})


def _parse_urlencoded(body: bytes) -> dict[str, str]:
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS
        )
    except UnicodeDecodeError:
        raise _form_error("not UTF-8") from None
    except ValueError:  # more than MAX_FORM_FIELDS fields
        raise _form_error(f"more than {MAX_FORM_FIELDS} fields") from None
    return dict(pairs)


def _parse_multipart(body: bytes, content_type: str) -> dict[str, str]:
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1", "replace")
    message = BytesParser(policy=policy.HTTP).parsebytes(head + body)
    if not isinstance(message, EmailMessage) or not message.is_multipart():
        raise _form_error("not multipart/form-data with a boundary")
    parts = list(message.iter_parts())
    if len(parts) > MAX_FORM_FIELDS:
        raise _form_error(f"more than {MAX_FORM_FIELDS} fields")
    fields: dict[str, str] = {}
    for part in parts:
        name = part.get_param("name", header="content-disposition")
        if part.get_content_disposition() != "form-data" or not isinstance(name, str):
            raise _form_error("a part without Content-Disposition: form-data; name=...")
        if part.get_filename() is not None:
            raise _form_error(f"{name} is a file; only text fields are accepted")
        raw = part.get_payload(decode=True)
        if not isinstance(raw, bytes):  # pragma: no cover - a nested multipart part
            raise _form_error(f"{name} is not a text field")
        try:
            fields[name] = raw.decode(part.get_content_charset() or "utf-8")
        except (LookupError, UnicodeDecodeError):
            raise _form_error(f"{name} is not text in its declared charset") from None
    return fields


def parse_mo_body(body: bytes, content_type: str | None) -> dict[str, Any]:
    """An MO payload from a form (urlencoded or multipart) or a JSON object.

    Args:
        body: the raw request body.
        content_type: the ``Content-Type`` header; JSON when absent.

    Returns:
        Field name -> value (strings from a form; any JSON value from JSON).

    Raises:
        ValidationError: 400, a form that cannot be parsed (``details.body``):
            not UTF-8, more than :data:`MAX_FORM_FIELDS` fields, a multipart
            body without a boundary, a part that is not a named text field.
        InvalidJsonError: 400, a JSON body that is not an object, or another content type.
    """
    media = (content_type or "").partition(";")[0].strip().lower()
    if media == FORM_URLENCODED:
        return _parse_urlencoded(body)
    if media == FORM_MULTIPART and content_type is not None:
        return _parse_multipart(body, content_type)
    if media and media != "application/json" and not media.endswith("+json"):
        raise InvalidJsonError(
            f"Content-Type must be application/json, {FORM_URLENCODED} or {FORM_MULTIPART}",
            details={"contentType": media},
        )
    return parse_json_object(body, content_type)


class SmsWebhookRoutes(Handlers):
    """Handlers of the SMS ingress webhooks, bound to one facade.

    Args:
        ct: the facade (its SMS service, provider and settings).
        wire: the response shapes (a fresh :class:`~commtunnel_http.wire.Wire` by default).
    """

    def __init__(self, ct: Commtunnel, wire: Wire | None = None) -> None:
        super().__init__(ct, wire)
        self.sms = ct.sms_service

    async def _token(self, request: Request) -> str | None:
        """The ``?token=`` value, refused (401) before anything else is read.

        Raises:
            WebhookAuthError: 401 ``INVALID_WEBHOOK_TOKEN``, no token or an unknown one.
        """
        token = request.query_params.get("token")
        await self.sms.org_for_token(token)
        return token

    async def _mo_body(self, request: Request) -> dict[str, Any]:
        return parse_mo_body(await self.body(request), request.headers.get("content-type"))

    async def inbound(self, request: Request) -> Response:
        """``POST /v1/webhooks/sms/inbound?token=`` -> 200 ``{id, keyword, optedOut?, ...}``."""
        token = await self._token(request)
        result = await self.sms.receive_inbound(token, await self._mo_body(request))
        return JSONResponse(self.wire.inbound_result(result))

    async def inbound_opt_out(self, request: Request) -> Response:
        """``POST /v1/webhooks/sms/inbound-opt-out?token=`` -> 200 ``{keyword, recorded, ...}``."""
        token = await self._token(request)
        result = await self.sms.inbound_opt_out(token, await self._mo_body(request))
        return JSONResponse(self.wire.inbound_opt_out_result(result))

    async def dlr(self, request: Request) -> Response:
        """``POST /v1/webhooks/sms/dlr?token=`` (JSON) -> 202 ``{messageId, status, applied}``."""
        token = await self._token(request)
        result = await self.sms.receive_dlr(token, await self.json_body(request))
        return JSONResponse(self.wire.receipt_result(result), status_code=202)

    def callback_url(self, request: Request) -> str:
        """The URL the provider signed: public URL + path + query, else the request's URL."""
        public = self.ct.settings.public_url
        if public is None:
            return str(request.url)
        query = request.url.query
        return public.rstrip("/") + PROVIDER_PATH + (f"?{query}" if query else "")

    async def provider(self, request: Request) -> Response:
        """``POST /v1/webhooks/sms/provider`` (signed) -> 200 ``{received, applied}``.

        ``received`` counts the receipts the callback carried, ``applied`` those
        that moved a message.

        Raises:
            NotFoundError: 404, no SMS provider, a provider without signed
                callbacks, or receipts none of which names a message here.
            WebhookSignatureError: 401, a missing or wrong signature.
            ValidationError: 400, not a status callback of this provider.
        """
        received, applied = await self.sms.receive_provider_callback(
            self.ct.sms_provider,
            url=self.callback_url(request),
            headers=request.headers,
            body=await self.body(request),
        )
        return JSONResponse({"received": received, "applied": applied})

    def routes(self) -> list[BaseRoute]:
        """The route table."""
        return [
            Route("/v1/webhooks/sms/inbound", self.inbound, methods=["POST"]),
            Route("/v1/webhooks/sms/inbound-opt-out", self.inbound_opt_out, methods=["POST"]),
            Route("/v1/webhooks/sms/dlr", self.dlr, methods=["POST"]),
            Route(PROVIDER_PATH, self.provider, methods=["POST"]),
        ]
