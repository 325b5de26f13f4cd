"""The project's errors: one base class, and subclasses that carry the HTTP status they become at an API edge.

A handler catches the class it can do something about (`InvalidInput` for a bad file or argument, `Unavailable`
for a dependency that did not answer), not `(ValueError, KeyError, OSError)`, so a bug is not mistaken for bad
input. The input errors also derive from ValueError or KeyError, so code written against the built-in classes
(pydantic validators, callers of the pure rooms) keeps working. This module imports nothing of ours; every room
may import it.
"""

from __future__ import annotations


class RicardoError(Exception):
    """An error ricardo raises on purpose. `status`: the HTTP status it becomes, where one applies."""

    status: int | None = None


class InvalidInput(RicardoError, ValueError):
    """Data from outside is wrong: a request, a config file, a trace, a command-line argument."""

    status = 400


class NotFound(RicardoError, KeyError):
    """A name that is not known (a profile's hardware type, a workload, a pool)."""

    status = 404

    def __str__(self) -> str:  # KeyError quotes its message; this one is a sentence
        return str(self.args[0]) if self.args else ""


class Conflict(RicardoError):
    """A change that collides with the state in force."""

    status = 409


class Unavailable(RicardoError, RuntimeError):
    """A dependency (the shared store, a server) could not be reached: worth retrying later."""

    status = 503
