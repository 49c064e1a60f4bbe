"""Provider discovery: a provider URL's scheme names an entry point.

Plugins register under the ``commtunnel.providers`` entry-point group; the
entry point's name is the URL scheme and its object is a class (or factory)
with a ``from_url(url, *, clock)`` classmethod returning a provider::

    [project.entry-points."commtunnel.providers"]
    acme = "commtunnel_acme:AcmeProvider"     # acme://key@region

Built in: ``outbox:`` (files on disk, the default, for email and SMS),
``smtp:`` and ``smtps:`` (email), ``twilio:``, ``sms+http:`` and ``sms+https:`` (SMS).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit, urlunsplit

from commtunnel.domain.errors import ProviderConfigError
from commtunnel.ports import Clock

GROUP = "commtunnel.providers"


def available_schemes() -> list[str]:
    """URL schemes of every installed provider, sorted."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_provider(url: str, *, clock: Clock) -> Any:
    """Build the provider a URL names.

    Args:
        url: e.g. ``smtp://user:pass@host:587?starttls=true`` or ``outbox:///var/mail/out``.
        clock: the clock the provider measures with.

    Returns:
        The provider instance (an ``EmailProvider`` for the email channel).

    Raises:
        ProviderConfigError: unknown scheme, or options the provider refuses.
    """
    scheme = urlsplit(url).scheme.lower()
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == scheme]
    if not matches:
        raise ProviderConfigError(
            f"No provider for scheme '{scheme}' in {redact_url(url)}",
            details={"known": available_schemes()},
        )
    factory = matches[0].load()
    try:
        return factory.from_url(url, clock=clock)
    except ProviderConfigError:
        raise
    except (ValueError, TypeError) as exc:
        raise ProviderConfigError(f"Invalid provider URL {redact_url(url)}: {exc}") from None


def redact_url(url: str, *, keep_user: bool = True) -> str:
    """The URL with its secret replaced by ``***`` (safe to log).

    Args:
        url: any URL; one without a user part comes back unchanged.
        keep_user: show the user name of a ``user:password@`` part (the password
            is masked). False masks the whole user part, for schemes whose user
            name may be the secret.

    Returns:
        The URL with ``user:***@`` or ``***@``. A user part with no password
        (``sms+https://TOKEN@host``, where the token *is* the credential) is
        always masked whole. Nothing after the ``@`` is changed (a secret in the
        query would be shown).
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    if parts.password is None or not keep_user:
        return urlunsplit(parts._replace(netloc=f"***@{host}"))
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


class Closing:
    """``async with`` for providers and senders: the block's end calls :meth:`aclose`.

    Subclasses override :meth:`aclose` to release what they hold
    (connections, pools); the port contracts ask for both forms.
    """

    async def aclose(self) -> None:
        """Release what the object holds (nothing here)."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
