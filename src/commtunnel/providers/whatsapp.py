"""The ``whatsapp_cloud`` provider: Meta's WhatsApp Cloud API (Graph) over httpx.

Sends with the Cloud API "messages" endpoint
(https://developers.facebook.com/docs/whatsapp/cloud-api/reference/messages)::

    POST {graph_base_url}/{api_version}/{phone_number_id}/messages
    Authorization: Bearer {access_token of the line}
    Content-Type: application/json

    {"messaging_product": "whatsapp", "recipient_type": "individual",
     "to": "2348012345678", "type": "text",
     "text": {"preview_url": false, "body": "Your code is 123456"}}

or, for an approved message template (positional ``{{1}}`` parameters from a
list of variables, named ``{{first_name}}`` parameters from a dict)::

    {"messaging_product": "whatsapp", "to": "2348012345678", "type": "template",
     "template": {"name": "order_update", "language": {"code": "en_US"},
                  "components": [{"type": "body", "parameters": [
                      {"type": "text", "text": "Ada"},
                      {"type": "text", "parameter_name": "order", "text": "#1234"}]}]}}

and answers ``200`` with ``{"messaging_product": "whatsapp", "contacts":
[{"input": ..., "wa_id": ...}], "messages": [{"id": "wamid.…"}]}``; the
``wamid`` becomes the provider message id. The line (phone number id and
token) comes with each message, so one provider serves every tenant's line.

Graph errors are ``{"error": {"message", "type", "code", "error_subcode"?,
"error_data": {"messaging_product", "details"}, "fbtrace_id"}}``; Meta advises
classifying by ``code`` rather than by HTTP status or subcode
(https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes).
See :func:`classify_response` and :func:`classify_exception`:

==========================================================  ==================================
200 with ``messages[0].id``                                 accepted(wamid)
130429 throughput limit; 4 / 80007 app or WABA rate limit;  transient RATE_LIMITED, retry_after
HTTP 429 without a known code                               = Retry-After or 5 s
131056 pair rate limit (same business and customer number)  transient RATE_LIMITED, 6 s, and
                                                            the recipient is held (below)
131000 something went wrong; codes 1 / 2; HTTP 5xx          transient PROVIDER_OUTAGE
131047 re-engagement (24 h since the customer replied)      permanent TEMPLATE_REQUIRED
131026 undeliverable, 131049 ecosystem engagement limit     permanent UNDELIVERABLE
131048 spam rate limit, 368 blocked for policy violations   permanent POLICY_BLOCKED
131050 user stopped marketing messages                      permanent RECIPIENT_OPTED_OUT
190 token expired/invalid, 0 auth exception, HTTP 401       transient AUTH
100, 131008, 131009, 131051, 132000, 132001 and any other   permanent REJECTED
4xx carrying a Graph error body
a 4xx without a Graph error body, 1xx/3xx, 2xx without id   transient UNKNOWN
httpx timeouts                                              transient TIMEOUT
connection refused, DNS, reset, protocol errors             transient PROVIDER_OUTAGE
==========================================================  ==================================

AUTH is transient so nothing accepted is lost: the caller pauses the line
(and raises an alert) instead of retrying into the expired token, and the
queued messages go out once the operator sets a new token. A 4xx that is not
Graph's JSON (a proxy, a wrong ``graph_base_url``) says nothing against the
message, so it is retried like Twilio's.

**Pair rate limit.** WhatsApp allows about one message every 6 seconds from
one business number to one customer number. After a 131056 answer, further
sends from the same line to the same recipient within 6 seconds of that
answer (on the injected clock) return transient RATE_LIMITED with the
remaining wait, without calling Graph. Other recipients are unaffected.

Webhooks are parsed and verified by pure rules in :mod:`commtunnel.domain.whatsapp`.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from typing import Any

import attrs
import httpx

from commtunnel.domain.delivery import ErrorCategory, ProviderResult, retry_after_seconds
from commtunnel.domain.messages import WhatsAppContent
from commtunnel.ports import Clock, OutgoingWhatsApp
from commtunnel.providers._http import (
    HttpProvider,
    answer_text,
    check_http_url,
    check_timeout,
    classify_exception,
    classify_other_status,
    json_or_none,
    scrub,
)

__all__ = [
    "DEFAULT_API_VERSION",
    "DEFAULT_GRAPH_BASE_URL",
    "PAIR_RATE_LIMIT_SECONDS",
    "WhatsAppCloudProvider",
    "build_payload",
    "classify_exception",
    "classify_response",
]

DEFAULT_GRAPH_BASE_URL = "https://graph.facebook.com"
DEFAULT_API_VERSION = "v21.0"
DEFAULT_TIMEOUT = 15.0
#: seconds between two messages from one business number to one customer number (131056).
PAIR_RATE_LIMIT_SECONDS = 6.0
#: seconds to wait after a throughput limit (130429) when Graph sends no ``Retry-After``.
DEFAULT_RATE_LIMIT_WAIT = 5.0

_API_VERSION = re.compile(r"v[0-9]+\.[0-9]+")

# Graph error codes (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes)
_THROUGHPUT_CODES = frozenset({4, 80007, 130429})
_PAIR_RATE_CODE = 131056
_OUTAGE_CODES = frozenset({1, 2, 131000})
_REENGAGEMENT_CODE = 131047
_UNDELIVERABLE_CODES = frozenset({131026, 131049})
_POLICY_CODES = frozenset({131048, 368})
_MARKETING_OPT_OUT_CODE = 131050
_AUTH_CODES = frozenset({0, 190})
_REJECTED_CODES = frozenset({100, 131008, 131009, 131051, 132000, 132001})


# --------------------------------------------------------------------------- payloads


def _digits(to: str) -> str:
    """The recipient as Graph takes it: country code and number, no ``+``."""
    return to.strip().removeprefix("+")


def build_payload(content: WhatsAppContent) -> dict[str, Any]:
    """The JSON body Graph's messages endpoint is sent for ``content``.

    Args:
        content: ``kind`` ``text`` (with ``body``) or ``template`` (with
            ``template_name``, ``template_language`` and optional
            ``template_variables``: a list for positional parameters, a dict
            for named ones, in the dict's order).

    Returns:
        The request body (module docstring). A template without variables
        has no ``components``.

    Raises:
        ValueError: a text message without a body, a template without a name
            or language, or another ``kind`` (see :class:`WhatsAppCloudProvider`).
    """
    to = _digits(content.to)
    if content.kind == "text":
        if content.body is None:
            raise ValueError("a text message needs a body")
        return {
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": {"preview_url": False, "body": content.body},
        }
    if content.kind == "template":
        if not content.template_name or not content.template_language:
            raise ValueError("a template message needs a template name and language")
        template: dict[str, Any] = {
            "name": content.template_name,
            "language": {"code": content.template_language},
        }
        variables = content.template_variables
        if isinstance(variables, dict):
            parameters = [
                {"type": "text", "parameter_name": name, "text": value}
                for name, value in variables.items()
            ]
        else:
            parameters = [{"type": "text", "text": value} for value in variables or []]
        if parameters:
            template["components"] = [{"type": "body", "parameters": parameters}]
        return {"messaging_product": "whatsapp", "to": to, "type": "template", "template": template}
    raise ValueError(f"unsupported WhatsApp message kind {content.kind!r}")


# --------------------------------------------------------------------------- classification


@attrs.frozen(kw_only=True)
class _GraphError:
    code: int | None
    text: str


def _graph_error(response: httpx.Response) -> _GraphError | None:
    """Graph's ``error`` object as (code, "message (details) [fbtrace_id]"), or None."""
    payload = json_or_none(response)
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return None
    raw_code = error.get("code")
    code: int | None = None
    if isinstance(raw_code, int) and not isinstance(raw_code, bool):
        code = raw_code
    elif isinstance(raw_code, str) and raw_code.strip().isdigit():
        code = int(raw_code)
    text = str(error.get("message") or "").strip()
    error_data = error.get("error_data")
    details = error_data.get("details") if isinstance(error_data, dict) else None
    if isinstance(details, str) and details.strip() and details.strip() != text:
        text = f"{text} ({details.strip()})" if text else details.strip()
    trace = error.get("fbtrace_id")
    if isinstance(trace, str) and trace:
        text = f"{text} [fbtrace_id {trace}]"
    return _GraphError(code=code, text=text)


def classify_response(response: httpx.Response, *, now: datetime) -> ProviderResult:
    """Turn Graph's answer to a messages ``POST`` into a :class:`ProviderResult`.

    Args:
        response: the HTTP response (its body read).
        now: the current UTC time, for a ``Retry-After`` HTTP date.

    Returns:
        The classified result (table in the module docstring); ``retry_after``
        in seconds for rate limits (6 for 131056) and outages with a
        ``Retry-After``. ``error_message`` holds the HTTP status, the Graph
        code, Graph's message and details (never the access token).
    """
    return _classify(response, now=now)[0]


def _classify(response: httpx.Response, *, now: datetime) -> tuple[ProviderResult, int | None]:
    """:func:`classify_response`, and the Graph error code it read (None without one)."""
    status = response.status_code
    if 200 <= status < 300:
        payload: Any = json_or_none(response)
        messages = payload.get("messages") if isinstance(payload, dict) else None
        first = messages[0] if isinstance(messages, list) and messages else None
        wamid = first.get("id") if isinstance(first, dict) else None
        if isinstance(wamid, str) and wamid:
            return ProviderResult.accepted(wamid), None
        return ProviderResult.transient(
            ErrorCategory.UNKNOWN, f"HTTP {status} without messages[0].id: not Graph's answer"
        ), None
    error = _graph_error(response)
    code = error.code if error is not None else None
    words = error.text if error is not None else None
    text = answer_text(response, words, label=f"Graph error {code}" if code is not None else "")
    retry_after = retry_after_seconds(response.headers.get("Retry-After"), now=now)
    return _classify_error(status, code, text, retry_after, graph=error is not None), code


def _classify_error(
    status: int, code: int | None, text: str, retry_after: float | None, *, graph: bool
) -> ProviderResult:
    """The table of the module docstring, for a non-2xx answer."""
    if code == _PAIR_RATE_CODE:
        wait = max(PAIR_RATE_LIMIT_SECONDS, retry_after or 0.0)
        return ProviderResult.transient(
            ErrorCategory.RATE_LIMITED,
            f"pair rate limit: wait {wait:g} s before messaging this recipient again; {text}",
            retry_after=wait,
        )
    if code in _THROUGHPUT_CODES or (code is None and status == 429):
        wait = retry_after if retry_after is not None else DEFAULT_RATE_LIMIT_WAIT
        return ProviderResult.transient(ErrorCategory.RATE_LIMITED, text, retry_after=wait)
    if code in _OUTAGE_CODES:
        return ProviderResult.transient(
            ErrorCategory.PROVIDER_OUTAGE, text, retry_after=retry_after
        )
    if code == _REENGAGEMENT_CODE:
        return ProviderResult.permanent(
            ErrorCategory.TEMPLATE_REQUIRED,
            "a template message is needed: more than 24 hours have passed since the "
            f"customer last replied, so free-form messages are refused; {text}",
        )
    if code in _UNDELIVERABLE_CODES:
        return ProviderResult.permanent(ErrorCategory.UNDELIVERABLE, text)
    if code in _POLICY_CODES:
        return ProviderResult.permanent(ErrorCategory.POLICY_BLOCKED, text)
    if code == _MARKETING_OPT_OUT_CODE:
        return ProviderResult.permanent(
            ErrorCategory.RECIPIENT_OPTED_OUT,
            f"the recipient stopped marketing messages from this business; {text}",
        )
    if code in _AUTH_CODES or status == 401:
        return ProviderResult.transient(
            ErrorCategory.AUTH,
            f"the line's access token was refused (pause the line, set a new token); {text}",
        )
    if code in _REJECTED_CODES:
        return ProviderResult.permanent(ErrorCategory.REJECTED, text)
    # 5xx; any other 4xx is REJECTED if Graph's own error body says so, else (a proxy,
    # a wrong graph_base_url) it is retried like a 1xx/3xx.
    return classify_other_status(status, text, retry_after=retry_after, service_error=graph)


# --------------------------------------------------------------------------- provider


class WhatsAppCloudProvider(HttpProvider):
    """A :class:`~commtunnel.ports.WhatsAppProvider` for Meta's WhatsApp Cloud API.

    Each message carries its line (phone number id and bearer token), so one
    provider sends for the platform default line and every tenant's own line.
    One ``httpx.AsyncClient`` is made on the first send and reused until
    :meth:`aclose`.

    Categories the caller acts on: ``AUTH`` (Graph 190: the token expired or
    was revoked; transient so nothing is lost, and the caller pauses the line
    and raises an alert rather than retrying), ``POLICY_BLOCKED`` (flag the
    line), ``RECIPIENT_OPTED_OUT`` (record an opt-out), ``TEMPLATE_REQUIRED``
    (the 24-hour customer-service window is closed) and ``RATE_LIMITED``
    (131056 holds the recipient for 6 seconds; module docstring).

    Args:
        graph_base_url: the Graph API origin (a proxy, or a fake in tests).
        api_version: the Graph API version in the path, e.g. ``v21.0``.
        clock: where "now" comes from (pair-rate holds, ``Retry-After`` dates).
        timeout: seconds for connecting and for each read and write (0 < t <= 300).
        transport: a transport for the client (``httpx.MockTransport`` in tests).

    Raises:
        ValueError: a base URL that is not http(s) with a host (or has
            credentials, a query or a fragment), a version not shaped like
            ``v21.0``, or a timeout out of range.

    Attributes:
        name: ``"whatsapp_cloud"``, recorded on every attempt.
        graph_base_url: the Graph origin, without a trailing slash.
        api_version: the Graph API version in the path.
        timeout: the ``timeout`` given, seconds.
    """

    name = "whatsapp_cloud"

    def __init__(
        self,
        *,
        graph_base_url: str = DEFAULT_GRAPH_BASE_URL,
        api_version: str = DEFAULT_API_VERSION,
        clock: Clock,
        timeout: float = DEFAULT_TIMEOUT,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        check_http_url(graph_base_url, "graph_base_url")
        if not _API_VERSION.fullmatch(api_version):
            raise ValueError(f"api_version must look like v21.0, got {api_version!r}")
        check_timeout(timeout)
        super().__init__(
            timeout=timeout, transport=transport, headers={"Accept": "application/json"}
        )
        self.graph_base_url = graph_base_url.rstrip("/")
        self.api_version = api_version
        self._clock = clock
        # (phone_number_id, recipient digits) -> end of the 131056 hold (UTC)
        self._pair_holds: dict[tuple[str, str], datetime] = {}

    def __repr__(self) -> str:
        return f"WhatsAppCloudProvider({self.graph_base_url!r}, {self.api_version!r})"

    def messages_url(self, phone_number_id: str) -> str:
        """The messages endpoint of one line: ``{base}/{version}/{phone_number_id}/messages``."""
        return f"{self.graph_base_url}/{self.api_version}/{phone_number_id}/messages"

    async def send_whatsapp(self, message: OutgoingWhatsApp) -> ProviderResult:
        """Send ``message`` from its line and classify Graph's answer.

        Args:
            message: content and line (phone number id and access token).

        Returns:
            Accepted with the ``wamid.…``, or a transient or permanent failure
            (module docstring). A recipient held after a 131056 answer gets
            transient RATE_LIMITED with the remaining seconds and no request;
            content Graph cannot take is permanent REJECTED (missing body or
            template fields) or UNSUPPORTED (another kind), without a request.
            Never raises for delivery problems.
        """
        if self._closed:
            return ProviderResult.transient(
                ErrorCategory.UNKNOWN, "the WhatsApp Cloud provider is closed"
            )
        line = message.line
        content = message.content
        try:
            payload = build_payload(content)
        except ValueError as exc:
            category = (
                ErrorCategory.UNSUPPORTED
                if content.kind not in ("text", "template")
                else ErrorCategory.REJECTED
            )
            return ProviderResult.permanent(category, str(exc))

        key = (line.phone_number_id, payload["to"])
        held = self._held_for(key)
        if held is not None:
            return ProviderResult.transient(
                ErrorCategory.RATE_LIMITED,
                f"pair rate limit (Graph error 131056): this recipient is held for "
                f"{held:g} s more; not sent",
                retry_after=held,
            )
        answer = await self._post(
            self.messages_url(line.phone_number_id),
            secret=line.access_token,
            json=payload,
            headers={"Authorization": f"Bearer {line.access_token}"},
        )
        if isinstance(answer, ProviderResult):
            return answer
        now = self._clock.now()
        result, code = _classify(answer, now=now)
        if code == _PAIR_RATE_CODE:
            hold = result.retry_after or PAIR_RATE_LIMIT_SECONDS
            self._pair_holds[key] = now + timedelta(seconds=hold)
        return scrub(result, line.access_token)

    def _held_for(self, key: tuple[str, str]) -> float | None:
        """Seconds left on ``key``'s pair-rate hold, or None (expired holds are dropped)."""
        now = self._clock.now()
        for other, ends in list(self._pair_holds.items()):
            if ends <= now:
                del self._pair_holds[other]
        until = self._pair_holds.get(key)
        return None if until is None else (until - now).total_seconds()
