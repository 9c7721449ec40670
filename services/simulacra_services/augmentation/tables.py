"""The augmentation service's tables: its dataset jobs (core.jobs layout)."""

from simulacra_services.core.jobs import job_table

AUGMENTATION_JOBS = job_table("augmentation_jobs")
