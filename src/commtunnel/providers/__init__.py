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

from collections.abc import Sequence
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


def load_named_providers(urls: Sequence[str], *, clock: Clock) -> list[tuple[str, Any]]:
    """Build a channel's providers, in failover order, each with its name in ``attempts[]``.

    A URL's fragment names its provider (``smtp://mx1.example.com#primary``);
    the fragment is not passed on. Without one a provider is named after its
    kind (``smtp``), and when several of one kind are unnamed they are
    numbered in order (``smtp-1``, ``smtp-2``).

    Args:
        urls: one or more provider URLs (``Settings.email_provider_urls``).
        clock: the clock the providers measure with.

    Returns:
        (name, provider) pairs in the order of ``urls``.

    Raises:
        ProviderConfigError: an unknown scheme, options a provider refuses, a
            name that is not 1-64 letters, digits, ``.``, ``_`` or ``-``, or
            two providers with one name.
    """
    from commtunnel.services.routing import NAME_PATTERN

    named: list[tuple[str | None, Any]] = []
    for url in urls:
        base, _, fragment = url.partition("#")
        if fragment and not NAME_PATTERN.fullmatch(fragment):
            raise ProviderConfigError(
                f"Provider name '{fragment}' in {redact_url(base)}#... must be 1-64 letters, "
                "digits, '.', '_' or '-'"
            )
        named.append((fragment or None, load_provider(base, clock=clock)))
    kinds = [str(provider.name) for name, provider in named if name is None]
    counters: dict[str, int] = {}
    result: list[tuple[str, Any]] = []
    for name, provider in named:
        if name is None:
            kind = str(provider.name)
            counters[kind] = counters.get(kind, 0) + 1
            name = kind if kinds.count(kind) == 1 else f"{kind}-{counters[kind]}"
        result.append((name, provider))
    names = [name for name, _ in result]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ProviderConfigError(f"Provider names must be unique: {', '.join(duplicates)}")
    return result


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
