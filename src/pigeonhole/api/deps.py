"""Request dependencies as Annotated aliases: ``DbSession``, ``CurrentUser``, ``Reader``, ``Writer`` …

Each auth alias names the one scope its route needs; the authorization tests read that scope off
the route table, so a route cannot silently skip the check.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from pigeonhole.auth.scopes import Principal, Scope
from pigeonhole.auth.service import AuthService, csrf_matches
from pigeonhole.errors import Forbidden, Unauthorized
from pigeonhole.settings import Settings

SESSION_COOKIE = "pgh_session"
CSRF_COOKIE = "pgh_csrf"
CSRF_HEADER = "X-CSRF-Token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def get_db(request: Request) -> Iterator[Session]:
    """One session per request: committed when the handler succeeds, rolled back otherwise."""
    db = request.app.state.session_factory()
    try:
        yield db
        db.commit()
    except Exception:
        db.rollback()
        raise
    finally:
        db.close()


# scope="function": the commit happens before the response is sent, so a client that sees a
# 2xx can rely on the change being stored.
DbSession = Annotated[Session, Depends(get_db, scope="function")]


async def get_settings(request: Request) -> Settings:
    """The one way a route reads settings (async: no thread hop, even on the prediction path)."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_auth_service(request: Request, db: DbSession, settings: SettingsDep) -> AuthService:
    return AuthService(db, settings, request.app.state.passwords, request.app.state.token_cache)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


def authenticate(request: Request, auth: AuthService, *, fresh: bool = False) -> Principal | None:
    """Who sent the request (token or session cookie); ``fresh`` reads the token from the database even when
    this process remembers it (administrator powers must end the moment they are taken away)."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthorized("Send the API token as 'Authorization: Bearer <token>'.", code="bad_auth_header")
        principal = auth.token_principal(value.strip(), fresh=fresh)
        if principal is None:
            raise Unauthorized("This API token is not valid: it may be mistyped, revoked or expired.",
                               code="invalid_token")
        return principal
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    found = auth.session_principal(secret)
    if found is None:
        return None
    principal, csrf_token = found
    if request.method not in SAFE_METHODS and not csrf_matches(csrf_token, request.headers.get(CSRF_HEADER)):
        raise Forbidden("This request is missing its security check (CSRF token). Reload the page and try again.",
                        code="csrf_failed")
    return principal


def _remembered_token(request: Request) -> Principal | None:
    """The principal of a bearer token this process has seen in the last few seconds, with no database and
    no thread: what makes a prediction call cheap. Anything else (cookies, new or malformed tokens) is None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    state = request.app.state
    return AuthService.remembered(state.settings, state.token_cache, value.strip())


def _authenticate_in_session(request: Request, fresh: bool) -> Principal | None:
    state = request.app.state
    with state.session_factory() as db:
        principal = authenticate(request, AuthService(db, state.settings, state.passwords, state.token_cache),
                                 fresh=fresh)
        db.commit()  # the token's or session's last use
        return principal


def require(scope: Scope | None) -> Callable[..., Awaitable[Principal]]:
    async def dependency(request: Request) -> Principal:
        fresh = scope is Scope.ADMIN
        principal = None if fresh else _remembered_token(request)
        if principal is None:
            principal = await run_in_threadpool(_authenticate_in_session, request, fresh)
        if principal is None:
            raise Unauthorized("Sign in, or send an API token, to use this.", code="not_authenticated")
        request.state.principal = principal  # read by the usage recorder
        if scope is Scope.ADMIN and not principal.is_admin:
            raise Forbidden("Only administrators can do this.", code="admin_only")
        if scope is not None and not principal.can(scope):
            raise Forbidden(f"This API token does not allow '{scope.value}'. Create a token with that scope.",
                            code="missing_scope")
        return principal

    dependency.required_scope = scope  # type: ignore[attr-defined]
    dependency.__name__ = f"require_{scope.value if scope else 'sign_in'}"
    return dependency


CurrentUser = Annotated[Principal, Depends(require(None))]
Reader = Annotated[Principal, Depends(require(Scope.READ))]
Writer = Annotated[Principal, Depends(require(Scope.WRITE))]
Predictor = Annotated[Principal, Depends(require(Scope.PREDICT))]
AdminUser = Annotated[Principal, Depends(require(Scope.ADMIN))]
