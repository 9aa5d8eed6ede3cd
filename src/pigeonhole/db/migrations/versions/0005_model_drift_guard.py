"""models: auto_retrain and retrain_suggested (drift guard)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing models keep today's behaviour: no automatic retrain, no suggestion yet.
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('auto_retrain', sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column('retrain_suggested', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('retrain_suggested')
        batch_op.drop_column('auto_retrain')
