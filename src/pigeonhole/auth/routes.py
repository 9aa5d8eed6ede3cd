"""HTTP routes for sign-up, sign-in, the current user and API tokens (thin: rules live in the service)."""

from __future__ import annotations

from datetime import timedelta

from fastapi import APIRouter, Query, Request, Response, status

from pigeonhole.api.deps import (
    CSRF_COOKIE,
    SESSION_COOKIE,
    AuthServiceDep,
    CurrentUser,
    DbSession,
    Reader,
    Writer,
    authenticate,
)
from pigeonhole.api.schemas import ListPage
from pigeonhole.auth import repository as repo
from pigeonhole.auth.schemas import Credentials, Me, TokenCreate, TokenCreated, TokenPublic, UserPublic
from pigeonhole.auth.service import NewSession
from pigeonhole.db.base import utcnow
from pigeonhole.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, paginate
from pigeonhole.db.tables import ApiToken, User
from pigeonhole.errors import Unprocessable
from pigeonhole.settings import Settings

router = APIRouter(prefix="/api/v1", tags=["auth"])
tokens_router = APIRouter(prefix="/api/v1", tags=["tokens"])


def _secure(request: Request, settings: Settings) -> bool:
    mode = settings.cookie_secure
    return mode == "always" or (mode == "auto" and request.url.scheme == "https")


def _set_session_cookies(request: Request, response: Response, session: NewSession, settings: Settings) -> None:
    max_age = int((session.expires_at - utcnow()).total_seconds())
    secure = _secure(request, settings)
    response.set_cookie(SESSION_COOKIE, session.secret, max_age=max_age, httponly=True, samesite="lax",
                        secure=secure, path="/")
    # Readable by the web app's JavaScript, which echoes it in X-CSRF-Token (double submit).
    response.set_cookie(CSRF_COOKIE, session.csrf_token, max_age=max_age, httponly=False, samesite="lax",
                        secure=secure, path="/")


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _user_public(user: User) -> UserPublic:
    return UserPublic(id=user.id, email=user.email, is_admin=user.is_admin, created_at=user.created_at)


@router.post("/auth/signup", status_code=status.HTTP_201_CREATED, response_model=UserPublic)
def signup(body: Credentials, request: Request, response: Response, auth: AuthServiceDep) -> UserPublic:
    """Create an account (the first one becomes the administrator) and sign in."""
    user = auth.signup(body.email, body.password)
    _set_session_cookies(request, response, auth.start_session(user), auth.settings)
    return _user_public(user)


@router.post("/auth/login", response_model=UserPublic)
def login(body: Credentials, request: Request, response: Response, auth: AuthServiceDep) -> UserPublic:
    """Sign in with email and password; sets the session cookie and the readable ``pgh_csrf`` cookie."""
    user = auth.login(body.email, body.password, _client_address(request))
    _set_session_cookies(request, response, auth.start_session(user), auth.settings)
    return _user_public(user)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(request: Request, auth: AuthServiceDep) -> Response:
    """End the browser session (its cookie stops working everywhere)."""
    secret = request.cookies.get(SESSION_COOKIE)
    if secret and auth.session_principal(secret) is not None:
        authenticate(request, auth)  # signing out is a state change: same CSRF proof as any other
        auth.end_session(secret)
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return response


@router.get("/me", response_model=Me)
def me(principal: CurrentUser, db: DbSession) -> Me:
    """Who is signed in, and with which powers."""
    user = repo.user_by_id(db, principal.user_id)
    assert user is not None  # authentication just loaded it
    return Me(**_user_public(user).model_dump(), auth="token" if principal.token_id else "session",
              scopes=sorted(principal.scopes))


def _token_public(token: ApiToken) -> TokenPublic:
    return TokenPublic(id=token.id, name=token.name, prefix=token.prefix, scopes=token.scopes,
                       created_at=token.created_at, expires_at=token.expires_at, last_used_at=token.last_used_at)


@tokens_router.post("/tokens", status_code=status.HTTP_201_CREATED, response_model=TokenCreated)
def create_token(body: TokenCreate, principal: Writer, auth: AuthServiceDep) -> TokenCreated:
    """Create an API token. The secret ``token`` is shown in this response only: store it now."""
    if body.expires_at is not None and body.expires_in_days is not None:
        raise Unprocessable("Give either 'expires_at' or 'expires_in_days', not both.", code="invalid_expiry")
    expires_at = body.expires_at
    if expires_at is not None and expires_at.tzinfo is None:
        raise Unprocessable("'expires_at' needs a time zone, for example 2030-01-01T00:00:00Z.",
                            code="invalid_expiry")
    if body.expires_in_days is not None:
        expires_at = utcnow() + timedelta(days=body.expires_in_days)
    token, plaintext = auth.create_token(principal, body.name, body.scopes, expires_at)
    return TokenCreated(**_token_public(token).model_dump(), token=plaintext)


@tokens_router.get("/tokens", response_model=ListPage[TokenPublic])
def list_tokens(principal: Reader, db: DbSession, cursor: str | None = None,
                limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> ListPage[TokenPublic]:
    """Your active API tokens (never their secrets), newest first, with when each was last used."""
    page = paginate(db, repo.tokens_readable_by(principal.user_id), ApiToken.id, cursor=cursor, limit=limit)
    return ListPage(items=[_token_public(t) for t in page.items], next_cursor=page.next_cursor)


@tokens_router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: str, principal: Writer, auth: AuthServiceDep) -> Response:
    """Revoke a token: it stops working at once."""
    auth.revoke_token(principal, token_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)

