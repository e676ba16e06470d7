"""Who is calling: the name and role behind a bearer token, and what the token is scoped to."""

from __future__ import annotations

from dataclasses import dataclass

from phpo.schemas.api import Role


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role
    token_id: int | None = None
    sites: frozenset[str] | None = None  # agent tokens: the sites they may take jobs for (None: any)

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin

    @property
    def holder(self) -> str:
        """What a leased job records as its holder: the token itself (its name and id), so two
        agent tokens that share a name still cannot report into each other's jobs."""
        return self.name if self.token_id is None else f"{self.name}#{self.token_id}"

    def can_see(self, owner: str | None) -> bool:
        """A user sees only what they own; admins see everything."""
        return self.is_admin or (owner is not None and owner == self.name)

    def site_ok(self, site: str) -> bool:
        return self.sites is None or site in self.sites
