"""Who is calling: the name and role behind a bearer token."""

from __future__ import annotations

from dataclasses import dataclass

from phpo.schemas.api import Role


@dataclass(frozen=True)
class Caller:
    name: str
    role: Role

    @property
    def is_admin(self) -> bool:
        return self.role == Role.admin

    def can_see(self, owner: str | None) -> bool:
        """A user sees only what they own; admins see everything."""
        return self.is_admin or (owner is not None and owner == self.name)
