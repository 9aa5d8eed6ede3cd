"""images.origin (upload or feedback) and models.grow_after_feedback

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 08:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.add_column(sa.Column('origin', sa.String(length=10), server_default='upload', nullable=False))
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('grow_after_feedback', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_column('grow_after_feedback')
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_column('origin')
