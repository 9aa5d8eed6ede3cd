"""Admin-only routes. Every one depends on ``AdminUser``, so others get 403."""

from __future__ import annotations

from fastapi import APIRouter, Query, status

from pigeonhole.admin.schemas import ExtractorWeights, WeightsStatus
from pigeonhole.api.deps import AdminUser, DbSession, SettingsDep
from pigeonhole.api.schemas import ListPage
from pigeonhole.auth import repository as repo
from pigeonhole.auth.schemas import UserPublic
from pigeonhole.compute import nodes
from pigeonhole.compute.builtin import SelfTestParams
from pigeonhole.compute.handlers import Resources
from pigeonhole.compute.schemas import NodePublic, SelfTestCreate, node_public
from pigeonhole.db.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, paginate
from pigeonhole.db.tables import Job, User
from pigeonhole.errors import NotFound
from pigeonhole.extractors import weights_report
from pigeonhole.jobs import repository as jobs_repo
from pigeonhole.jobs import service as jobs_service
from pigeonhole.jobs.schemas import JobAdmin, JobStatus, job_admin

router = APIRouter(prefix="/api/v1/admin", tags=["admin"])


@router.get("/users", response_model=ListPage[UserPublic])
def list_users(_: AdminUser, db: DbSession, cursor: str | None = None,
               limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)) -> ListPage[UserPublic]:
    """Every account on this server, newest first."""
    page = paginate(db, repo.users_statement(), User.id, cursor=cursor, limit=limit)
    return ListPage(items=[UserPublic(id=u.id, email=u.email, is_admin=u.is_admin, created_at=u.created_at)
                           for u in page.items], next_cursor=page.next_cursor)


@router.get("/nodes", response_model=ListPage[NodePublic])
def list_nodes(_: AdminUser, db: DbSession) -> ListPage[NodePublic]:
    """Compute nodes: state, drain flag, resources (total and available), cache disk, running jobs, cached data."""
    return ListPage(items=[node_public(n, running, cached) for n, running, cached in nodes.nodes_for_admin(db)])


def _drain(db: DbSession, node_id: str, draining: bool) -> NodePublic:
    if nodes.set_draining(db, node_id, draining) is None:
        raise NotFound("There is no compute node with this id.", code="node_not_found")
    found = {n.id: (n, r, c) for n, r, c in nodes.nodes_for_admin(db)}
    return node_public(*found[node_id])


@router.post("/nodes/{node_id}/drain", response_model=NodePublic)
def drain_node(node_id: str, _: AdminUser, db: DbSession) -> NodePublic:
    """Place no new work on this node; running work finishes. Survives restarts until undrained."""
    return _drain(db, node_id, True)


@router.post("/nodes/{node_id}/undrain", response_model=NodePublic)
def undrain_node(node_id: str, _: AdminUser, db: DbSession) -> NodePublic:
    """Let the dispatcher place work on this node again."""
    return _drain(db, node_id, False)


@router.get("/weights", response_model=WeightsStatus)
def list_weights(_: AdminUser, settings: SettingsDep) -> WeightsStatus:
    """The pretrained image extractors this server knows: present or missing, size, origin, how to get them."""
    return WeightsStatus(weights_dir=str(settings.resolved_weights_dir), fetch_allowed=settings.resolved_weights_fetch,
                         items=[ExtractorWeights(**row) for row in weights_report(settings)])


@router.get("/jobs", response_model=ListPage[JobAdmin])
def list_all_jobs(_: AdminUser, db: DbSession, status: JobStatus | None = None, user_id: str | None = None,
                  cursor: str | None = None, limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
                  ) -> ListPage[JobAdmin]:
    """Every user's jobs, newest first, with placement details."""
    statement = jobs_repo.all_jobs()
    if status is not None:
        statement = statement.where(Job.status == status)
    if user_id is not None:
        statement = statement.where(Job.owner_id == user_id)
    page = paginate(db, statement, Job.id, cursor=cursor, limit=limit)
    return ListPage(items=[job_admin(j) for j in page.items], next_cursor=page.next_cursor)


@router.post("/selftest", status_code=status.HTTP_202_ACCEPTED, response_model=JobAdmin)
def start_selftest(body: SelfTestCreate, principal: AdminUser, db: DbSession, settings: SettingsDep) -> JobAdmin:
    """Queue a diagnostic job that counts with progress: checks that the dispatcher and Ray cluster work."""
    job = jobs_service.create_job(db, principal.user_id, "selftest",
                                  SelfTestParams(steps=body.steps, step_s=body.step_s, busy=body.busy)
                                  .model_dump(mode="json"),
                                  dataset_id=body.dataset_id, resources=Resources(num_cpus=body.num_cpus),
                                  settings=settings)
    return job_admin(job)
