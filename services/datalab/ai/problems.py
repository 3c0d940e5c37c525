"""The ai service's refusals that more than one module raises."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from datalab.core.errors import Problem
from datalab.ml import training

INVALID_MODEL = "https://datalab.dev/problems/invalid-model"  # problem type of every refused model


def no_model(model_id: str) -> Problem:
    return Problem(404, f"No model {model_id!r}.")


@contextmanager
def unprocessable() -> Iterator[None]:
    """A TrainingError (what a request or its data cannot make, or prediction rows that do
    not fit) as a 422 saying why; a RowsError lists the first 100 bad values."""
    try:
        yield
    except training.RowsError as exc:
        raise Problem(422, str(exc), type_=INVALID_MODEL, errors=exc.errors[:100]) from None
    except training.TrainingError as exc:
        raise Problem(422, str(exc), type_=INVALID_MODEL) from None
