"""Organizations, verified senders and templates (managed from the CLI)."""

from __future__ import annotations

from commtunnel.domain.email import parse_mailbox
from commtunnel.domain.errors import ConflictError, NotFoundError, ValidationError
from commtunnel.domain.keys import Organization
from commtunnel.ids import new_id
from commtunnel.ports import Clock, Sender, Storage, Template
from commtunnel.services.templates import TemplateRenderer


class AdminService:
    """Tenant set-up: organizations, senders, templates.

    Args:
        storage: the records.
        clock: creation times.
        renderer: checks template syntax when a template is stored.
    """

    def __init__(self, storage: Storage, clock: Clock, renderer: TemplateRenderer) -> None:
        self._storage = storage
        self._clock = clock
        self._renderer = renderer

    async def create_org(self, name: str) -> Organization:
        """Create an organization.

        Raises:
            ValidationError: empty name or one over 100 characters.
            ConflictError: the name is taken.
        """
        name = name.strip()
        if not name or len(name) > 100:
            raise ValidationError.from_fields({"name": "must be 1 to 100 characters"})
        org = Organization(id=new_id(), name=name, created_at=self._clock.now())
        await self._storage.create_org(org)
        return org

    async def get_org(self, name_or_id: str) -> Organization:
        """An organization by name or id.

        Raises:
            NotFoundError: no such organization.
        """
        org = await self._storage.get_org(name=name_or_id) or await self._storage.get_org(
            org_id=name_or_id
        )
        if org is None:
            raise NotFoundError(f"No organization '{name_or_id}'", details={"org": name_or_id})
        return org

    async def ensure_org(self, name: str) -> Organization:
        """The organization named ``name``, created if missing."""
        existing = await self._storage.get_org(name=name)
        if existing is not None:
            return existing
        try:
            return await self.create_org(name)
        except ConflictError:  # another process created it since the read
            created = await self._storage.get_org(name=name)
            if created is None:
                raise
            return created

    async def add_sender(self, org_id: str, address_or_domain: str) -> Sender:
        """Verify a sender: a full address (``a@b.com``) or a whole domain (``b.com``).

        Raises:
            ValidationError: neither a valid address nor a valid domain name.
        """
        value = address_or_domain.strip().lower()
        probe = value if "@" in value else f"postmaster@{value}"
        try:
            _name, normalized = parse_mailbox(probe)
        except ValueError as exc:
            raise ValidationError.from_fields({"sender": f"'{value}' {exc}"}) from None
        if "@" not in value:
            value = normalized.rsplit("@", 1)[1]
        sender = Sender(id=new_id(), org_id=org_id, value=value, created_at=self._clock.now())
        return await self._storage.add_sender(sender)

    async def list_senders(self, org_id: str) -> list[Sender]:
        """Verified senders of an organization."""
        return await self._storage.list_senders(org_id)

    async def add_template(
        self, org_id: str, *, name: str, subject: str, html: str | None, text: str | None
    ) -> Template:
        """Store a liquid template after checking that it parses.

        Raises:
            ValidationError: no name, no body, or a liquid syntax error
                (``details`` names the part).
            ConflictError: the name is taken in the organization.
        """
        problems: dict[str, str] = {}
        if not name.strip():
            problems["name"] = "is required"
        if html is None and text is None:
            problems["html"] = "provide html and/or text"
        for part, source in (("subject", subject), ("html", html), ("text", text)):
            if source is not None:
                reason = self._renderer.syntax_error(source)
                if reason:
                    problems[part] = reason
        if problems:
            raise ValidationError.from_fields(problems)
        now = self._clock.now()
        template = Template(
            id=new_id(),
            org_id=org_id,
            name=name.strip(),
            subject=subject,
            html=html,
            text=text,
            created_at=now,
            updated_at=now,
        )
        await self._storage.create_template(template)
        return template

    async def list_templates(self, org_id: str) -> list[Template]:
        """Templates of an organization."""
        return await self._storage.list_templates(org_id)
