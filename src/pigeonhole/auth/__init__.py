"""Users, sign-in sessions, API tokens, scopes."""
