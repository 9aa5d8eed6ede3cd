"""Database access: engine per app (never at import), ORM tables, Alembic migrations."""
