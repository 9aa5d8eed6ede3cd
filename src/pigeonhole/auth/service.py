"""Sign-up, sign-in, sessions and API tokens: the rules, independent of HTTP."""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pigeonhole.auth import repository as repo
from pigeonhole.auth.passwords import Passwords, password_problem
from pigeonhole.auth.scopes import ALL_SCOPES, DEFAULT_TOKEN_SCOPES, Principal, Scope
from pigeonhole.auth.secrets import (
    TOKEN_PREFIX,
    display_prefix,
    is_well_formed_token,
    keyed_digest,
    new_api_token,
    new_csrf_token,
    new_session_secret,
)
from pigeonhole.auth.token_cache import TokenCache
from pigeonhole.db.base import utcnow
from pigeonhole.db.tables import ApiToken, LoginFailure, User, WebSession
from pigeonhole.errors import Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized, Unprocessable
from pigeonhole.settings import Settings

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
MAX_EMAIL_LENGTH = 254
# last_used_at is refreshed at most this often, so token calls don't each cost a write.
LAST_USED_RESOLUTION = timedelta(seconds=60)
SESSION_TOUCH_RESOLUTION = timedelta(minutes=5)


def normalise_email(email: str) -> str:
    email = email.strip().lower()
    if len(email) > MAX_EMAIL_LENGTH or not _EMAIL.match(email):
        raise Unprocessable("This does not look like an email address, for example name@example.com.",
                            code="invalid_email")
    return email


def _check_password(password: str) -> None:
    problem = password_problem(password)
    if problem:
        raise Unprocessable(problem, code="weak_password")


@dataclass(frozen=True)
class NewSession:
    secret: str  # goes into the HttpOnly cookie
    csrf_token: str  # goes into the readable pgh_csrf cookie
    expires_at: datetime


class AuthService:
    def __init__(self, db: Session, settings: Settings, passwords: Passwords, tokens: TokenCache | None = None):
        self.db = db
        self.settings = settings
        self.passwords = passwords
        self.tokens = tokens

    # --- users -------------------------------------------------------------------------------
    def signup(self, email: str, password: str) -> User:
        email = normalise_email(email)
        _check_password(password)
        first_user = repo.count_users(self.db) == 0
        if not first_user and not self.settings.signup_open:
            raise Forbidden("Sign-up is closed on this server. Ask an administrator to create your account.",
                            code="signup_closed")
        if repo.user_by_email(self.db, email) is not None:
            raise Conflict("An account with this email already exists. Sign in instead.", code="email_taken")
        user = User(email=email, password_hash=self.passwords.hash(password),
                    is_admin=not repo.admin_exists(self.db))
        self.db.add(user)
        try:
            self.db.flush()
        except IntegrityError as exc:  # a concurrent sign-up with the same email
            self.db.rollback()
            raise Conflict("An account with this email already exists. Sign in instead.",
                           code="email_taken") from exc
        return user

    def create_admin(self, email: str, password: str | None) -> tuple[User, bool]:
        """Create an admin, or promote an existing account (and reset its password when given)."""
        email = normalise_email(email)
        user = repo.user_by_email(self.db, email)
        if user is None:
            if password is None:
                raise Unprocessable("A password is needed to create a new account.", code="password_required")
            _check_password(password)
            user = User(email=email, password_hash=self.passwords.hash(password), is_admin=True)
            self.db.add(user)
            self.db.flush()
            return user, True
        if password is not None:
            _check_password(password)
            user.password_hash = self.passwords.hash(password)
        user.is_admin = True
        user.is_active = True
        return user, False

    # --- sign-in ------------------------------------------------------------------------------
    def login(self, email: str, password: str, address: str) -> User:
        email_key = email.strip().lower()[:MAX_EMAIL_LENGTH]
        address = address[:64]
        now = utcnow()
        window = timedelta(seconds=self.settings.login_failure_window_s)
        self._refuse_if_throttled(email_key, address, now, window)
        user = repo.user_by_email(self.db, email_key)
        ok = self.passwords.verify(user.password_hash if user else None, password)
        if not ok or user is None or not user.is_active:
            self.db.add(LoginFailure(email=email_key, address=address, created_at=now))
            repo.prune_failures(self.db, now - window)
            self.db.commit()  # the failure must count even though this request fails
            raise Unauthorized("The email or password is not correct.", code="bad_credentials")
        repo.clear_failures(self.db, email_key)
        if self.passwords.needs_rehash(user.password_hash):
            user.password_hash = self.passwords.hash(password)
        user.last_login_at = now
        return user

    def _refuse_if_throttled(self, email: str, address: str, now: datetime, window: timedelta) -> None:
        since = now - window
        checks = (
            (repo.failures_since(self.db, since=since, email=email), self.settings.login_max_failures_per_account,
             "Too many failed sign-ins for this account."),
            (repo.failures_since(self.db, since=since, address=address), self.settings.login_max_failures_per_address,
             "Too many failed sign-ins from your network."),
        )
        for (count, oldest), limit, sentence in checks:
            if count >= limit and oldest is not None:
                wait = int((oldest + window - now).total_seconds()) + 1
                minutes = max(1, round(wait / 60))
                raise TooManyRequests(f"{sentence} Wait about {minutes} minute(s) and try again.",
                                      retry_after_s=wait, code="login_throttled")

    # --- browser sessions ---------------------------------------------------------------------
    def start_session(self, user: User) -> NewSession:
        now = utcnow()
        secret = new_session_secret()
        csrf = new_csrf_token()
        expires = now + timedelta(seconds=self.settings.session_ttl_s)
        self.db.add(WebSession(id=self._digest(secret), user_id=user.id, csrf_token=csrf,
                               expires_at=expires, last_seen_at=now, created_at=now))
        repo.delete_expired_sessions(self.db, now)
        return NewSession(secret=secret, csrf_token=csrf, expires_at=expires)

    def session_principal(self, secret: str) -> tuple[Principal, str] | None:
        """The principal of a session cookie and the session's CSRF token, or None if invalid."""
        row = repo.session_by_id(self.db, self._digest(secret))
        now = utcnow()
        if row is None or row.expires_at <= now:
            return None
        user = repo.user_by_id(self.db, row.user_id)
        if user is None or not user.is_active:
            return None
        if now - row.last_seen_at > SESSION_TOUCH_RESOLUTION:
            row.last_seen_at = now
        scopes = ALL_SCOPES if user.is_admin else ALL_SCOPES - {Scope.ADMIN}
        principal = Principal(user_id=user.id, email=user.email, is_admin=user.is_admin,
                              scopes=frozenset(scopes), session_id=row.id)
        return principal, row.csrf_token

    def end_session(self, secret: str) -> None:
        repo.delete_session(self.db, self._digest(secret))

    # --- API tokens ---------------------------------------------------------------------------
    def create_token(self, principal: Principal, name: str, scopes: list[str] | None,
                     expires_at: datetime | None) -> tuple[ApiToken, str]:
        name = name.strip()
        if not name or len(name) > 100:
            raise Unprocessable("Give the token a name of 1 to 100 characters.", code="invalid_name")
        wanted = self._parse_scopes(scopes)
        if Scope.ADMIN in wanted and not principal.is_admin:
            raise Forbidden("Only administrators can create tokens with the 'admin' scope.", code="scope_not_allowed")
        missing = wanted - principal.scopes
        if missing:  # a token can never hand out more than its creator holds
            raise Forbidden(f"You cannot give a token scopes you do not have: {', '.join(sorted(missing))}.",
                            code="scope_not_allowed")
        if expires_at is not None and expires_at <= utcnow():
            raise Unprocessable("The expiry date must be in the future.", code="invalid_expiry")
        plaintext = new_api_token()
        token = ApiToken(user_id=principal.user_id, name=name, prefix=display_prefix(plaintext),
                         digest=self._digest(plaintext), scopes=sorted(wanted), expires_at=expires_at)
        self.db.add(token)
        self.db.flush()
        return token, plaintext

    @staticmethod
    def _parse_scopes(scopes: list[str] | None) -> frozenset[Scope]:
        if scopes is None:
            return frozenset(DEFAULT_TOKEN_SCOPES)
        if not scopes:
            raise Unprocessable("Give the token at least one scope.", code="invalid_scopes")
        unknown = [s for s in scopes if s not in {x.value for x in Scope}]
        if unknown:
            raise Unprocessable(f"Unknown scope(s): {', '.join(unknown)}. Use read, write, predict or admin.",
                                code="invalid_scopes")
        return frozenset(Scope(s) for s in scopes)

    @staticmethod
    def remembered(settings: Settings, tokens: TokenCache | None, plaintext: str) -> Principal | None:
        """The principal of a token seen within the cache's few seconds, without the database."""
        if tokens is None or not plaintext.startswith(TOKEN_PREFIX) or not is_well_formed_token(plaintext):
            return None
        return tokens.get(keyed_digest(settings.secret, plaintext))

    def token_principal(self, plaintext: str, *, fresh: bool = False) -> Principal | None:
        if not plaintext.startswith(TOKEN_PREFIX) or not is_well_formed_token(plaintext):
            return None
        digest = self._digest(plaintext)
        if not fresh and self.tokens is not None and (known := self.tokens.get(digest)) is not None:
            return known
        token = repo.token_by_digest(self.db, digest)
        now = utcnow()
        if token is None or token.revoked_at is not None:
            return None
        if token.expires_at is not None and token.expires_at <= now:
            return None
        user = repo.user_by_id(self.db, token.user_id)
        if user is None or not user.is_active:
            return None
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            token.last_used_at = now
        principal = Principal(user_id=user.id, email=user.email, is_admin=user.is_admin,
                              scopes=frozenset(Scope(s) for s in token.scopes), token_id=token.id)
        if self.tokens is not None:  # administrator routes ask with fresh=True: losing the powers is immediate
            self.tokens.put(digest, principal, token.expires_at)
        return principal

    def revoke_token(self, principal: Principal, token_id: str) -> None:
        token = repo.token_readable_by(self.db, principal.user_id, token_id)
        if token is None:
            raise NotFound("There is no such API token.", code="token_not_found")
        token.revoked_at = utcnow()
        if self.tokens is not None:
            self.tokens.clear()  # here at once; other API replicas within the cache's few seconds

    def _digest(self, value: str) -> str:
        return keyed_digest(self.settings.secret, value)


def csrf_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
