"""Bench-only applications that apply *proposed* product patches, to measure them first.

``twistd raftnode --app bench.patched:<app>_<patch>_<patch>...`` loads the ``kv`` or
``shop`` application with the named patches applied inside that node process only; the
product code is not changed.  The benchmarks take it as ``--txraft-app``, e.g.
``python bench/cluster_http.py --txraft-app bench.patched:kv_parallel_normal``.

Patches (each one is a proposal in docs/benchmarks.md, measured before it is made).
``direct``, ``parallel`` and ``normal`` landed in main in 20c6160 and ``quiet`` in
ffaf52c; on such a main they change nothing (the wrapper finds no messages left to send
early, the pragma is already NORMAL) and stay useful for measuring older commits and as
the template for the next proposal:

``direct``
    Forward to the leader over a direct TCP endpoint (``TCP4ClientEndpoint``) for IP
    literal members, with up to 128 pooled keep-alive connections (as main now has).
    Twisted's ``HostnameEndpoint`` (what ``Agent`` uses) resolves even ``127.0.0.1`` in the
    reactor's thread pool and reports a refused connection only after its 0.3 s attempt
    delay, so every write sent to a follower while the leader is dead waits 0.3 s.
``quiet``
    No per-request access log line (``twisted.web.http.HTTPFactory.log``).  Main has done
    this itself since ffaf52c (``--access-log`` turns the log on), so on current main this
    patch changes nothing; it stays for measuring older commits.
``parallel``
    The leader sends its AppendEntries *before* fsyncing the same entries (Raft thesis
    section 10.2.1; what etcd's server does): the leader's fsync overlaps the followers'.
    Safe because the core counts the leader's own copy only in ``advance()``, after the
    driver persisted it; a Ready that changes the hard state still persists first.
``content``
    ``Site.getContentFile`` defined (BytesIO below 100 kB, a temporary file above, as
    twisted.web itself chooses): ``Request.gotLength`` looks it up on every request and
    otherwise falls back through a caught AttributeError.
``latecommit``
    A leader's commit notices (heartbeats sent only to tell followers a new commit index)
    leave in the reactor's next turn instead of before the apply: the answers to the
    writes just committed reach the socket first.  Only Readies whose messages are all
    empty AppendEntries and that change no hard state; everything they depend on is
    already durable, so sending them a turn later promises nothing new.
``normal``
    The state machine's SQLite file uses ``synchronous=NORMAL`` (WAL): no fsync per
    applied batch.  The Raft log is the durable record; after a power loss the state
    machine may be a few batches behind its log and re-applies them (the applied index
    commits in the same transaction), the way etcd replays its WAL into bbolt.
"""

from __future__ import annotations

from typing import Any, List

PATCHES = ("direct", "quiet", "parallel", "normal", "content", "latecommit")


def _direct_client(reactor: Any) -> Any:
    from treq.client import HTTPClient
    from twisted.internet.abstract import isIPAddress, isIPv6Address
    from twisted.internet.endpoints import (
        HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint,
    )
    from twisted.web.client import Agent, HTTPConnectionPool, _HTTP11ClientFactory
    from twisted.web.iweb import IAgentEndpointFactory
    from zope.interface import implementer

    @implementer(IAgentEndpointFactory)
    class DirectEndpoints:
        def endpointForURI(self, uri):
            host = uri.host.decode("ascii")
            if isIPAddress(host):
                return TCP4ClientEndpoint(reactor, host, uri.port, timeout=5)
            if isIPv6Address(host):
                return TCP6ClientEndpoint(reactor, host, uri.port, timeout=5)
            return HostnameEndpoint(reactor, uri.host, uri.port, timeout=5)

    class QuietFactory(_HTTP11ClientFactory):
        noisy = False

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 128
    pool._factory = QuietFactory
    return HTTPClient(Agent.usingEndpointFactory(reactor, DirectEndpoints(), pool=pool))


def _patch_quiet() -> None:
    from twisted.web import http

    http.HTTPFactory.log = lambda self, request: None


def _patch_content() -> None:
    import io
    import tempfile

    from twisted.web.server import Site

    def getContentFile(self, length):
        if length is not None and length < 100000:
            return io.BytesIO()
        return tempfile.TemporaryFile()

    Site.getContentFile = getContentFile


def _patch_latecommit() -> None:
    import attrs

    from txraft.core import LEADER
    from txraft.core.messages import AppendEntries
    from txraft.runtime.node import RaftNode

    if getattr(RaftNode, "_bench_latecommit", False):
        return
    original = RaftNode._execute

    def _execute(self, rd):
        if (rd.committed_entries and rd.messages and rd.hard_state is None
                and self.core.role == LEADER
                and all(type(m) is AppendEntries and not m.entries for m in rd.messages)):
            self.reactor.callLater(0, self._send_messages, rd.messages)
            rd = attrs.evolve(rd, messages=())
        return original(self, rd)

    RaftNode._execute = _execute
    RaftNode._bench_latecommit = True


def _patch_parallel() -> None:
    import attrs

    from txraft.core import LEADER
    from txraft.core.messages import InstallSnapshot
    from txraft.runtime.node import RaftNode

    if getattr(RaftNode, "_bench_parallel_send", False):
        return
    original = RaftNode._execute

    def _execute(self, rd):
        if (rd.entries and rd.messages and rd.hard_state is None and rd.snapshot is None
                and self.core.role == LEADER
                and not any(isinstance(m, InstallSnapshot) for m in rd.messages)):
            send = self.transport.send
            for message in rd.messages:
                send(message)
            self.counters["messages_sent"] += len(rd.messages)
            rd = attrs.evolve(rd, messages=())
        return original(self, rd)

    RaftNode._execute = _execute
    RaftNode._bench_parallel_send = True


def apply(base: Any, patches: List[str]) -> Any:
    """``base`` (an ``Application``) with ``patches`` applied in this process."""
    from txraft.http.web import Application

    unknown = [p for p in patches if p not in PATCHES]
    if unknown:
        raise AttributeError("unknown patch(es) %s; known: %s" % (unknown, ", ".join(PATCHES)))
    if not patches:
        return base
    if "quiet" in patches:
        _patch_quiet()
    if "parallel" in patches:
        _patch_parallel()
    if "content" in patches:
        _patch_content()
    if "latecommit" in patches:
        _patch_latecommit()

    def make_state_machine(data_dir):
        sm = base.make_state_machine(data_dir)
        if "normal" in patches and getattr(sm, "_db", None) is not None:  # SQLite ones
            sm._db.execute("PRAGMA synchronous=NORMAL")
        return sm

    def make_resource(node, clock, http_client):
        if "direct" in patches:
            http_client = _direct_client(clock)
        return base.make_resource(node, clock, http_client)

    return Application("%s+%s" % (base.name, "+".join(patches)), make_state_machine,
                       make_resource)


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    app_name, *patches = name.split("_")
    if app_name not in ("kv", "shop"):
        raise AttributeError("%s: the application must be kv or shop" % name)
    from txraft.plugins.raftnode import load_application

    return apply(load_application(app_name), patches)
