"""The vocabulary state machines and the web layer share, as plain values: ``Result``,
``Refusal``, the error document, and the rule for an ``Idempotency-Key``.

Here, below both layers (``txraft.apps`` and ``shop`` produce these values,
``txraft.http`` renders them), so neither has to import the other.

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

import re
from typing import Any, Optional

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


# -- the Idempotency-Key rule (the records themselves: txraft.apps.idempotency) --------

MAX_KEY_CHARS = 255
HEADER = b"idempotency-key"
FIELD = "Idempotency-Key"

_KEY = re.compile(r"^[\x21-\x7e]+$")


def key_problem(key: Any) -> Optional[str]:
    """Why ``key`` cannot be an idempotency key, or None."""
    if type(key) is not str or not 1 <= len(key) <= MAX_KEY_CHARS or not _KEY.match(key):
        return "Idempotency-Key must be 1 to %d visible ASCII characters" % (MAX_KEY_CHARS,)
    return None
