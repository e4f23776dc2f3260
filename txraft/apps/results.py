"""What a state machine answers, as plain values: ``Result``, ``Refusal`` and the error
document.

A command's outcome is decided when its entry is applied, identically on every replica,
and travels back to the client as data: a ``Result`` (a status, a JSON body, the log index
that produced it).  A ``Refusal`` is the exception an application raises, while
validating a request or applying a command, to refuse it with a status, a code, a message
and the field at fault; its ``document()`` is the error document every txraft answer
uses, ``{"error": {"code", "message", "field"?}}``.  The statuses are HTTP's numbers
because that is what clients see, but nothing here knows HTTP: the web layer
(``txraft.http``) turns these values into answers.
"""

from __future__ import annotations

from typing import Optional

import attrs


def error_document(code: str, message: str, field: Optional[str] = None) -> dict:
    """The JSON error shape every txraft application answers with."""
    error = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


@attrs.frozen
class Result:
    """The answer to one command: ``status``, JSON ``body`` (or None) and ``index``, the
    log index of the entry that produced it first (earlier than the current entry for an
    idempotent replay, then ``replayed`` is true)."""

    status: int
    body: Optional[dict]
    index: int
    replayed: bool = False


class Refusal(Exception):
    """A request or command refused, with the status and code it is answered with."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.field = field

    def document(self) -> dict:
        return error_document(self.code, self.message, self.field)
