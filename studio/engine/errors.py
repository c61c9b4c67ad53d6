"""Errors the user can act on.

A `StudioError` carries two parts: what is wrong and what to do about it. The CLI prints it
as one line; the GUI shows it in a dialog. Anything that is not a `StudioError` is a bug and
is shown with its traceback in the log.
"""
from __future__ import annotations


class StudioError(Exception):
    """A problem with the user's input or environment, with a suggested fix."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.problem} {self.fix}".strip()

    def __reduce__(self):
        # Keep the fix (and a subclass's fields) when the error crosses a process boundary.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(cls, args, state):
    error = Exception.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class JobCancelled(StudioError):
    """Raised inside a job when the user cancels it; the job's inputs are left untouched."""

    def __init__(self, where: str = ""):
        super().__init__(f"Cancelled{(' during ' + where) if where else ''}.",
                         "Nothing was changed; run the job again when ready.")
