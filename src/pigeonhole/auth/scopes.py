"""What a caller may do: the scopes a token carries and the principal a request runs as."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Scope(StrEnum):
    READ = "read"  # look at datasets, models, jobs, usage
    WRITE = "write"  # change datasets, models, tokens; start training
    PREDICT = "predict"  # call predictions only
    ADMIN = "admin"  # admin views (only for admin users)


ALL_SCOPES = frozenset(Scope)
DEFAULT_TOKEN_SCOPES = (Scope.READ, Scope.WRITE, Scope.PREDICT)


@dataclass(frozen=True)
class Principal:
    """Who is calling and with which powers; plain data, safe to keep on ``request.state``."""

    user_id: str
    email: str
    is_admin: bool
    scopes: frozenset[Scope]
    token_id: str | None = None  # set when authenticated by an API token
    session_id: str | None = None  # set when authenticated by the browser session cookie

    def can(self, scope: Scope) -> bool:
        if scope is Scope.ADMIN and not self.is_admin:
            return False
        return scope in self.scopes
