"""pool_images: images waiting for a label

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 08:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from pigeonhole.db.base import UTCDateTime

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'pool_images',
        sa.Column('dataset_id', sa.String(length=26), nullable=False),
        sa.Column('owner_id', sa.String(length=26), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('width', sa.Integer(), nullable=False),
        sa.Column('height', sa.Integer(), nullable=False),
        sa.Column('format', sa.String(length=10), nullable=False),
        sa.Column('mode', sa.String(length=4), nullable=False),
        sa.Column('original_name', sa.String(length=255), nullable=False),
        sa.Column('source', sa.String(length=10), nullable=False),
        sa.Column('id', sa.String(length=26), nullable=False),
        sa.Column('created_at', UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dataset_id', 'sha256', name='uq_pool_images_dataset_sha256'),
    )
    op.create_index('ix_pool_images_dataset_id', 'pool_images', ['dataset_id'])
    op.create_index('ix_pool_images_owner_id', 'pool_images', ['owner_id'])
    op.create_index('ix_pool_images_sha256', 'pool_images', ['sha256'])


def downgrade() -> None:
    op.drop_table('pool_images')
