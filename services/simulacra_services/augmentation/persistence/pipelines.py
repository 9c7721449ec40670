"""Stored pipelines: one JSON document per pipeline in the object store.

Key: ``augmentation/pipelines/{pipeline_id}.json``; the id is checked against
``[a-z][a-z0-9-]{0,62}`` before it reaches a key. The document holds the
canonical spec, so what is read back is exactly what was digested.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from dataclasses import dataclass
from typing import Any

from simulacra_services.augmentation.engine import PipelineSpec, canonical, digest, parse_spec
from simulacra_services.core import errors
from simulacra_services.core.storage.base import ObjectStore

PREFIX = "augmentation/pipelines/"
_PIPELINE_ID = re.compile(r"[a-z][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class StoredPipeline:
    pipeline_id: str
    description: str
    spec: PipelineSpec
    digest: str
    create_time: dt.datetime


def check_pipeline_id(pipeline_id: str, field: str = "pipeline_id") -> None:
    if not _PIPELINE_ID.fullmatch(pipeline_id):
        raise errors.InvalidArgument(
            "INVALID_PIPELINE_ID",
            f"{field}: pipeline ids are 1-63 characters of a-z 0-9 -, starting with a letter; got {pipeline_id[:80]!r}",
            {"field": field},
        )


class PipelineRepository:
    def __init__(self, objects: ObjectStore) -> None:
        self._objects = objects

    def create(self, pipeline_id: str, description: str, spec: PipelineSpec) -> StoredPipeline:
        """Store a pipeline; the same spec again returns the stored one, another is ALREADY_EXISTS."""
        check_pipeline_id(pipeline_id)
        if len(description) > 4096:
            raise errors.InvalidArgument("INVALID_DESCRIPTION", "pipeline.description: at most 4096 characters", {"field": "pipeline.description", "limit": 4096})
        existing = self.find(pipeline_id)
        wanted = digest(spec)
        if existing is not None:
            if existing.digest == wanted:
                return existing
            raise errors.AlreadyExists(
                "PIPELINE_EXISTS",
                f"pipelines/{pipeline_id} already holds a different pipeline (digest {existing.digest[:12]}...); pipelines are immutable",
                {"name": f"pipelines/{pipeline_id}", "digest": existing.digest},
            )
        stored = StoredPipeline(pipeline_id, description, spec, wanted, dt.datetime.now(dt.timezone.utc))
        document = {"description": description, "spec": canonical(spec), "digest": wanted, "create_time": stored.create_time.isoformat()}
        self._objects.put(self._key(pipeline_id), json.dumps(document, sort_keys=True).encode(), content_type="application/json")
        return stored

    def find(self, pipeline_id: str) -> StoredPipeline | None:
        check_pipeline_id(pipeline_id)
        if not self._objects.exists(self._key(pipeline_id)):
            return None
        return self._read(pipeline_id, json.loads(self._objects.get(self._key(pipeline_id))))

    def get(self, pipeline_id: str) -> StoredPipeline:
        found = self.find(pipeline_id)
        if found is None:
            raise errors.NotFound("PIPELINE_NOT_FOUND", f"no pipeline named pipelines/{pipeline_id}", {"name": f"pipelines/{pipeline_id}"})
        return found

    def list(self, after: str | None, limit: int) -> list[StoredPipeline]:
        """Pipelines ordered by id, those after ``after``."""
        start = self._key(after) if after else ""
        out = []
        for info in self._objects.list(PREFIX, start_after=start, limit=limit):
            pipeline_id = info.key[len(PREFIX) : -len(".json")]
            out.append(self._read(pipeline_id, json.loads(self._objects.get(info.key))))
        return out

    def delete(self, pipeline_id: str) -> None:
        self.get(pipeline_id)
        self._objects.delete(self._key(pipeline_id))

    @staticmethod
    def _key(pipeline_id: str) -> str:
        return f"{PREFIX}{pipeline_id}.json"

    @staticmethod
    def _read(pipeline_id: str, document: dict[str, Any]) -> StoredPipeline:
        return StoredPipeline(
            pipeline_id=pipeline_id,
            description=document["description"],
            spec=parse_spec(document["spec"]),
            digest=document["digest"],
            create_time=dt.datetime.fromisoformat(document["create_time"]),
        )
