"""Bench-only applications that apply *proposed* product patches, to measure them first.

``twistd raftnode --app bench.patched:<app>_<patch>_<patch>...`` loads the ``kv`` or
``shop`` application with the named patches applied inside that node process only; the
product code is not changed.  The benchmarks take them as ``--txraft-patches`` and
``--variants``, e.g. ``python bench/cluster_http.py --variants content``.

The patches that landed in the node are gone from here (they changed nothing on a tree
that has them): ``direct``, ``parallel`` and ``normal`` (20c6160: direct TCP forwarding
with a pool of 128, the leader's AppendEntries before its own fsync, the state machine's
SQLite at ``synchronous=NORMAL``), ``quiet`` (ffaf52c: no access log unless
``--access-log``) and ``latecommit`` (10ca980: a leader's commit notices leave after the
answers to the writes they commit).

``content``
    ``Site.getContentFile`` defined (BytesIO below 100 kB, a temporary file above, as
    twisted.web itself chooses): ``Request.gotLength`` looks it up on every request and
    otherwise falls back through a caught AttributeError.
"""

from __future__ import annotations

from typing import Any, List

PATCHES = ("content",)


def _patch_content() -> None:
    import io
    import tempfile

    from twisted.web.server import Site

    def getContentFile(self, length):
        if length is not None and length < 100000:
            return io.BytesIO()
        return tempfile.TemporaryFile()

    Site.getContentFile = getContentFile


def apply(base: Any, patches: List[str]) -> Any:
    """``base`` (an ``Application``) with ``patches`` applied in this process."""
    from txraft.http.web import Application

    unknown = [p for p in patches if p not in PATCHES]
    if unknown:
        raise AttributeError("unknown patch(es) %s; known: %s" % (unknown, ", ".join(PATCHES)))
    if not patches:
        return base
    if "content" in patches:
        _patch_content()
    return Application("%s+%s" % (base.name, "+".join(patches)), base.make_state_machine,
                       base.make_resource)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    app_name, *patches = name.split("_")
    if app_name not in ("kv", "shop"):
        raise AttributeError("%s: the application must be kv or shop" % name)
    from txraft.plugins.raftnode import load_application

    return apply(load_application(app_name), patches)
