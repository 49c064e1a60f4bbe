"""Open and click tracking: the key, the rewrite at delivery time and the events of each hit.

The rules (rewrite, token shapes, bot classification) are pure and live in
:mod:`commtunnel.domain.tracking`; this module adds what needs the outside:

* the signing key, derived with HKDF-SHA256 (RFC 5869) from
  ``COMMTUNNEL_SECRET_KEY`` when set, else from a random secret the server
  makes once and keeps in storage (``Storage.instance_secret``), so that every
  process on one database signs and verifies alike. Setting or changing
  ``COMMTUNNEL_SECRET_KEY`` later invalidates links already mailed (their
  clicks answer 400, their pixels record nothing);
* :meth:`TrackingService.prepare_email`, the dispatcher's hook: it rewrites
  the HTML of a tracked email on each attempt (tokens are deterministic, so
  a retried send carries the same links) and leaves the stored message alone;
* :meth:`TrackingService.record_open` / :meth:`TrackingService.record_click`:
  verify a token and append ``email_opened`` / ``email_clicked`` with its
  customer-webhook fan-out.
"""

from __future__ import annotations

import logging
import secrets
from typing import Any

import attrs

from commtunnel import crypto
from commtunnel.domain.events import TimelineEvent
from commtunnel.domain.messages import EmailContent, Message
from commtunnel.domain.tracking import (
    CLICK_PATH,
    EMAIL_CLICKED,
    EMAIL_OPENED,
    MAX_USER_AGENT_CHARS,
    OPEN_PATH,
    ClickToken,
    Kind,
    OpenToken,
    TokenSigner,
    classify_client,
)
from commtunnel.domain.tracking_html import rewrite_html
from commtunnel.ports import Clock, Storage
from commtunnel.services.timeline import message_event

log = logging.getLogger("commtunnel.tracking")

#: The name of the server-made secret in ``Storage.instance_secret``.
INSTANCE_SECRET_NAME = "tracking"  # noqa: S105 - a name, not a secret
_HKDF_INFO = b"commtunnel tracking tokens v1"


def derive_key(secret: str) -> bytes:
    """The 32-byte token key for a secret (:func:`commtunnel.crypto.derive_key`, its own ``info``).

    The ``info`` string differs from :class:`~commtunnel.crypto.SecretBox`'s, so
    the same ``COMMTUNNEL_SECRET_KEY`` yields unrelated keys for the two uses.
    """
    return crypto.derive_key(secret, _HKDF_INFO)


@attrs.frozen(kw_only=True)
class Click:
    """A verified click.

    Attributes:
        url: where to redirect: the URL inside the signed token, nothing else.
        event: the ``email_clicked`` event written; None when nothing was
            recorded (the message no longer exists, or a HEAD probe).
    """

    url: str
    event: TimelineEvent | None


class TrackingService:
    """Rewrites tracked emails and records their opens and clicks.

    Args:
        storage: messages, events (``append_event``) and the server-made secret.
        clock: every "now".
        base_url: this server's public base URL without a trailing slash
            (``Settings.base_url``); tracking links point at it.
        secret_key: ``COMMTUNNEL_SECRET_KEY``; None to use a server-made secret.
    """

    def __init__(
        self, storage: Storage, clock: Clock, *, base_url: str, secret_key: str | None = None
    ) -> None:
        self._storage = storage
        self._clock = clock
        self._base_url = base_url.rstrip("/")
        self._secret_key = secret_key
        self._signer: TokenSigner | None = None

    async def signer(self) -> TokenSigner:
        """The token signer, its key derived on first use.

        Returns:
            One signer for the service's lifetime.
        """
        if self._signer is None:
            secret = self._secret_key
            if secret is None:
                # Concurrent first uses may each offer a candidate: the first stored wins.
                secret = await self._storage.instance_secret(
                    INSTANCE_SECRET_NAME, secrets.token_urlsafe(32), self._clock.now()
                )
            self._signer = TokenSigner(derive_key(secret))
        return self._signer

    # ------------------------------------------------------------------ delivery

    def open_url(self, token: str) -> str:
        """``{base}/v1/track/open?t=<token>`` (tokens are URL-safe as they are)."""
        return f"{self._base_url}{OPEN_PATH}?t={token}"

    def click_url(self, token: str) -> str:
        """``{base}/v1/track/click?t=<token>``."""
        return f"{self._base_url}{CLICK_PATH}?t={token}"

    async def prepare_email(self, message: Message) -> EmailContent:
        """The content to hand the email provider: tracked when the message asks for it.

        The dispatcher's ``prepare_email`` hook, called on each attempt.

        Args:
            message: an email message (``message.email`` set).

        Returns:
            ``message.email`` unchanged without tracking or without an HTML
            part; else a copy whose HTML is rewritten (links and pixel) and
            whose text part is the original.

        Raises:
            ValueError: the message is not an email.
        """
        content = message.email
        if content is None:
            raise ValueError(f"message {message.id} has no email content")
        if not content.tracking or not content.html:
            return content
        signer = await self.signer()

        def click_url(index: int, url: str) -> str:
            token = ClickToken(
                org_id=message.org_id, message_id=message.id, link_index=index, url=url
            )
            return self.click_url(signer.sign_click(token))

        open_token = signer.sign_open(OpenToken(org_id=message.org_id, message_id=message.id))
        html = rewrite_html(content.html, click_url=click_url, open_url=self.open_url(open_token))
        return attrs.evolve(content, html=html)

    # ------------------------------------------------------------------ hits

    async def record_open(
        self, token: str, *, user_agent: str | None, client_ip: str | None, probe: bool = False
    ) -> TimelineEvent | None:
        """Verify an open pixel's token and record the open.

        Args:
            token: the ``t`` query parameter.
            user_agent: the request's ``User-Agent`` (None when absent).
            client_ip: the client's address, for bot classification.
            probe: a HEAD request: verify only, record nothing.

        Returns:
            The ``email_opened`` event written (details: ``userAgent``,
            ``isBot``, ``first``), or None when nothing was recorded: the
            message no longer exists, or ``probe``.

        Raises:
            InvalidTrackingTokenError: the token is tampered with, truncated,
                a click token, or signed with another key.
        """
        verified = (await self.signer()).read_open(token)
        if probe:
            return None
        details = self._client_details("open", user_agent, client_ip)
        return await self._append(verified.org_id, verified.message_id, EMAIL_OPENED, details)

    async def record_click(
        self, token: str, *, user_agent: str | None, client_ip: str | None, probe: bool = False
    ) -> Click:
        """Verify a link's token and record the click.

        Args:
            token: the ``t`` query parameter.
            user_agent: the request's ``User-Agent`` (None when absent).
            client_ip: the client's address, for bot classification.
            probe: a HEAD request (link checkers send them): verify only, record nothing.

        Returns:
            The URL to redirect to (from the token) and the ``email_clicked``
            event written (details: ``userAgent``, ``isBot``, ``first``,
            ``url``, ``linkIndex``), None when nothing was recorded.

        Raises:
            InvalidTrackingTokenError: the token is tampered with, truncated,
                an open token, or signed with another key.
        """
        verified = (await self.signer()).read_click(token)
        if probe:
            return Click(url=verified.url, event=None)
        details = self._client_details("click", user_agent, client_ip)
        details |= {"url": verified.url, "linkIndex": verified.link_index}
        event = await self._append(verified.org_id, verified.message_id, EMAIL_CLICKED, details)
        return Click(url=verified.url, event=event)

    @staticmethod
    def _client_details(
        kind: Kind, user_agent: str | None, client_ip: str | None
    ) -> dict[str, Any]:
        """``userAgent`` (at most 512 characters) and ``isBot`` for a hit."""
        agent = None if user_agent is None else user_agent[:MAX_USER_AGENT_CHARS]
        is_bot = classify_client(kind, user_agent, client_ip) is not None
        return {"userAgent": agent, "isBot": is_bot}

    async def _append(
        self, org_id: str, message_id: str, type_: str, details: dict[str, Any]
    ) -> TimelineEvent | None:
        """Append a hit's event with ``first`` set; None when the message no longer exists."""
        message = await self._storage.get_message(org_id, message_id)
        if message is None:
            return None
        event = message_event(message, type_, at=self._clock.now(), details=details)
        return await self._storage.append_event(event)  # sets details["first"]
