"""PlatformJob decides from a job's names alone: the platform's entry point with a known job
type runs, anything else is refused before the callable (or a callback) it names is imported.
(No Redis needed: RQ builds the job offline; the worker test runs it for real.)"""

import sys

import pytest
import redis
from rq import Callback
from rq.serializers import JSONSerializer

from datalab.compute.dispatch import EXECUTE, ON_FAILURE, PlatformJob
from datalab.compute.tasks import JobRefused, execute, on_failure

OFFLINE = redis.Redis(port=1)  # never connected to


def job(func=EXECUTE, *args, **options):
    return PlatformJob.create(func, args=args, connection=OFFLINE, serializer=JSONSerializer, **options)


def test_the_platforms_job_runs_execute():
    j = job(kwargs={"job_type": "noop", "params": {}}, on_failure=Callback(ON_FAILURE))
    assert j.refusal() is None and j.func is execute and j.failure_callback is on_failure


@pytest.mark.parametrize("make", [
    lambda: job("os.system", "id"),
    lambda: job("builtins.exec", "import os"),
    lambda: job(EXECUTE, "noop", {}),  # positional: not how the platform enqueues
    lambda: job(kwargs={"job_type": "nope", "params": {}}),
    lambda: job(kwargs={"job_type": ["noop"], "params": {}}),
    lambda: job(kwargs={"job_type": "noop", "params": {}, "extra": 1}),
    lambda: job(kwargs={"job_type": "noop", "params": {}}, on_success=Callback("builtins.print")),
    lambda: job(kwargs={"job_type": "noop", "params": {}}, on_failure=Callback("os.system")),
    lambda: job(kwargs={"job_type": "noop", "params": {}}, on_stopped=Callback("os.system")),
])
def test_anything_else_is_refused(make):
    j = make()
    assert j.refusal()
    with pytest.raises(JobRefused):
        j.func  # noqa: B018 - the property is what RQ calls


def test_a_refused_name_is_never_imported():
    name = "xml.dom.pulldom"  # a stdlib module nothing here imports
    sys.modules.pop(name, None)
    j = job(f"{name}.parseString", "<a/>", on_failure=Callback(f"{name}.parse"))
    with pytest.raises(JobRefused):
        j.func  # noqa: B018
    assert j.failure_callback is None and j.success_callback is None and j.stopped_callback is None
    assert name not in sys.modules
