"""Long-running jobs for every service: a job table, a runner with leases, progress, watch,
cancel, pause/resume, restart recovery and resume-from-checkpoint. No protobuf here.

How a service plugs in (the annotation-store's import/export jobs do exactly this):

1. Its table, in ``<service>/tables.py``, and a revision of its chain creating it::

       jobs = job_table("training_jobs")                      # core.jobs.table
       # migrations/NNNN_training_jobs.py: create_job_table_v1("training_jobs")

2. A handler per job kind::

       class TrainHandler:
           resumable = True                                   # False: a takeover fails it (INTERRUPTED)
           async def run(self, job: JobRecord, ctx: JobContext) -> dict:
               step = (ctx.checkpoint or {}).get("step", 0)   # resume where the last attempt saved
               while step < job.spec["steps"]:
                   ctx.check()                                # raises JobStopped on cancel/pause/stop
                   step = await train_some(step)
                   await ctx.progress(step, job.spec["steps"], "training")
                   await ctx.save_checkpoint({"key": f"ckpt/{job.job_id}/{step}", "step": step})
               return {"model": ...}                          # the result (JSON)
           async def discard(self, job: JobRecord) -> None:   # optional: undo what a failed/cancelled job left
               ...

3. Store and runner in ``register``, closed by its close hook::

       store = JobStore(engine, jobs, job_name=lambda kind, parent, job_id: f"trainingJobs/{job_id}")
       runner = JobRunner(store, {"train": TrainHandler()}, max_running=1, lease_seconds=30)
       await runner.start()                                   # recovers what dead runners left
       ...
       await runner.close()

4. The api/ layer: ``runner.create(kind, spec_dict, parent=..., request_id=...)``,
   ``store.get``/``store.list`` (pagination: ``core.api.pagination``), ``runner.cancel``,
   ``runner.pause``, ``runner.resume``, ``runner.watch`` (an async iterator of records:
   the snapshot, each change, ends after a terminal state), and ``JobRecord`` -> proto
   (``common.v1.JobState.Value(record.state)``, ``record.progress``, ``record.error``).

States, leases and outcomes: see ``model.py`` and ``runner.py``. Error reasons:
JOB_NOT_FOUND (NOT_FOUND), REQUEST_ID_REUSED (ALREADY_EXISTS), JOB_NOT_PAUSABLE,
JOB_NOT_RESUMABLE, JOB_NOT_FINISHED (FAILED_PRECONDITION), JOB_SPEC_TOO_LARGE,
INVALID_REQUEST_ID (INVALID_ARGUMENT); a job stopped by a service shutdown that
cannot resume ends FAILED with INTERRUPTED (ABORTED).
"""

from simulacra_services.core.jobs.model import (
    ACTIVE,
    CANCELLED,
    CANCELLING,
    FAILED,
    PAUSED,
    QUEUED,
    RUNNING,
    STATES,
    SUCCEEDED,
    TERMINAL,
    JobError,
    JobRecord,
    Progress,
)
from simulacra_services.core.jobs.runner import (
    JobCancelled,
    JobContext,
    JobHandler,
    JobInterrupted,
    JobPaused,
    JobRunner,
    JobStopped,
    LeaseLost,
    job_error,
)
from simulacra_services.core.jobs.store import JobStore
from simulacra_services.core.jobs.table import create_job_table_v1, drop_job_table_v1, job_table

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "CANCELLING",
    "FAILED",
    "PAUSED",
    "QUEUED",
    "RUNNING",
    "STATES",
    "SUCCEEDED",
    "TERMINAL",
    "JobCancelled",
    "JobContext",
    "JobError",
    "JobHandler",
    "JobInterrupted",
    "JobPaused",
    "JobRecord",
    "JobRunner",
    "JobStopped",
    "JobStore",
    "LeaseLost",
    "Progress",
    "create_job_table_v1",
    "drop_job_table_v1",
    "job_error",
    "job_table",
]
