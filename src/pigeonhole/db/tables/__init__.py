"""All ORM tables; importing this package registers them on ``Base.metadata`` (Alembic needs that)."""

from pigeonhole.db.tables.auth import ApiToken, LoginFailure, User, WebSession
from pigeonhole.db.tables.datasets import Dataset, DatasetImage, PoolImage
from pigeonhole.db.tables.jobs import ComputeNode, DispatcherLease, Job, JobEvent, NodeCacheEntry
from pigeonhole.db.tables.models import Model, ModelVersion
from pigeonhole.db.tables.usage import UsageRecord

__all__ = [
    "ApiToken", "ComputeNode", "Dataset", "DatasetImage", "DispatcherLease", "Job", "JobEvent", "LoginFailure",
    "Model", "ModelVersion", "NodeCacheEntry", "PoolImage", "UsageRecord", "User", "WebSession",
]
