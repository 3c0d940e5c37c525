"""The routes services call on each other. Each service mounts its router at its prefix;
callers build paths with these functions, so a path is written once."""

from __future__ import annotations

API = "/api/v1"
GATEWAY = f"{API}/auth"
DATA = f"{API}/data"
AI = f"{API}/ai"
COMPUTE = f"{API}/compute"
VIZ = f"{API}/viz"


def dataset(dataset_id: str) -> str:
    return f"{DATA}/datasets/{dataset_id}"


def dataset_content(dataset_id: str) -> str:
    return f"{dataset(dataset_id)}/content"


def dataset_query(dataset_id: str) -> str:
    return f"{dataset(dataset_id)}/query"


def model(model_id: str) -> str:
    return f"{AI}/models/{model_id}"


def model_result(model_id: str) -> str:
    return f"{model(model_id)}/result"


def compute_jobs() -> str:
    return f"{COMPUTE}/jobs"


def compute_job(job_id: str) -> str:
    return f"{compute_jobs()}/{job_id}"
