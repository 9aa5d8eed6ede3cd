"""Request and response bodies for sign-in, the current user and API tokens."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from pigeonhole.api.schemas import Text
from pigeonhole.auth.scopes import Scope


class Credentials(BaseModel):
    email: Text = Field(max_length=320, examples=["ada@example.com"])
    password: Text = Field(max_length=256)


class UserPublic(BaseModel):
    id: str
    email: str
    is_admin: bool
    created_at: datetime


class Me(UserPublic):
    auth: Literal["session", "token"]
    scopes: list[Scope]


class TokenCreate(BaseModel):
    name: Text = Field(max_length=200, examples=["CI pipeline"])
    scopes: list[Text] | None = Field(default=None, description="default: read, write, predict",
                                     examples=[["predict"]])
    expires_at: datetime | None = Field(default=None, description="optional expiry (ISO 8601 with time zone)")
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class TokenPublic(BaseModel):
    id: str
    name: str
    prefix: str
    scopes: list[str]
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenPublic):
    token: str = Field(description="the secret token; shown only in this response")
