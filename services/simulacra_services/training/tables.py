"""The training service's database tables: only its jobs (the registry lives in object storage)."""

from simulacra_services.core.jobs.table import job_table

TRAINING_JOBS = job_table("training_jobs")
