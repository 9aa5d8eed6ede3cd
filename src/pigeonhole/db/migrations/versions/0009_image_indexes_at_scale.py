"""Indexes for datasets of a million images: newest-first pages, per-class pages, images in several classes

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 11:10:00.000000

Measured on PostgreSQL with 1,000,000 rows in one dataset beside 100,000 in another (benchmarks/scale.py):
the older dataset's first page of images walked the primary key backwards past the newer one's rows (456 ms);
counting images filed under several classes read every row through the sha256 index (3.1 s of the dataset page).
The uniqueness of (dataset, class, bytes) is unchanged; its index now leads with the bytes, so the images of one
dataset are read in sha256 order without touching the table.
"""

from __future__ import annotations

from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_constraint('uq_images_dataset_label_sha256', type_='unique')
        batch_op.create_unique_constraint('uq_images_dataset_sha256_label', ['dataset_id', 'sha256', 'label'])
        batch_op.drop_index('ix_images_dataset_label')
        batch_op.create_index('ix_images_dataset_label_id', ['dataset_id', 'label', 'id'], unique=False)
        batch_op.create_index('ix_images_dataset_id', ['dataset_id', 'id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('images', schema=None) as batch_op:
        batch_op.drop_index('ix_images_dataset_id')
        batch_op.drop_index('ix_images_dataset_label_id')
        batch_op.create_index('ix_images_dataset_label', ['dataset_id', 'label'], unique=False)
        batch_op.drop_constraint('uq_images_dataset_sha256_label', type_='unique')
        batch_op.create_unique_constraint('uq_images_dataset_label_sha256', ['dataset_id', 'label', 'sha256'])
