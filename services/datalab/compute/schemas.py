"""What the compute API reads: a job submission and the filters of a job list. (Jobs are
answered as `dispatch.view` shows them.)"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .dispatch import JOB_ID
from .jobs import JobTypeName

JobId = Annotated[str, StringConstraints(pattern=f"^{JOB_ID.pattern}$")]  # checked before Redis sees it
JobStatus = Literal["queued", "deferred", "scheduled", "started", "finished", "failed", "stopped", "canceled"]
QueueName = Literal["default", "heavy"]  # the ones a submission may ask for ("nomad" is the dispatcher's)


class JobSubmit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: JobTypeName
    params: dict[str, Any] = Field(default_factory=dict)
    dataset_id: str | None = Field(None, max_length=64)  # shorthand for params.dataset_id
    queue: QueueName | None = None
    depends_on: list[JobId] = Field(default_factory=list, max_length=20)
    retries: int | None = Field(None, ge=0, le=5)
    timeout: int | None = Field(None, ge=1)
