"""A controllable stand-in for the node runtime, for tests of the HTTP layers.

``FakeRaftNode`` provides ``IRaftNode`` and applies each proposal straight to a real state
machine, as a one-node cluster would, with switches for the situations a real cluster
produces: being a follower (``NotLeader`` naming a leader), knowing no leader, commit
timeouts (with or without the entry having been applied: the outcome is unknown either
way), read timeouts, and held operations released on demand.  Every call is counted.
"""

from __future__ import annotations

import collections
import json
import os
from typing import List, Optional

from twisted.internet import defer
from zope.interface import implementer

from txraft.core.config import ConfigChangeError, Configuration
from txraft.core.config import Member as ConfigMember
from txraft.errors import (
    CommitTimeout,
    MembershipRefused,
    NotLeader,
    ProposalDropped,
    ReadTimeout,
    TransferFailed,
)
from txraft.interfaces import IRaftNode
from txraft.core.messages import ENTRY_NOOP, Entry


@implementer(IRaftNode)
class FakeRaftNode:
    def __init__(self, state_machine, node_id: str = "n1", url: str = "http://n1.test",
                 term: int = 1):
        self.node_id = node_id
        self.url = url
        self.state_machine = state_machine
        self.term = term
        self.role = "leader"
        self.leader_id: Optional[str] = node_id
        self.leader_url: Optional[str] = url
        self.leader_public_url: Optional[str] = None
        #: Fail proposals with CommitTimeout; with ``apply_on_timeout`` apply them first.
        self.commit_timeout = False
        self.apply_on_timeout = False
        #: Fail proposals with ProposalDropped (after applying them when asked to).
        self.drop_proposals = False
        self.read_timeout = False
        #: Keep proposals and barriers pending until ``release()``.
        self.hold = False
        self.held: List = []
        self.calls = collections.Counter()
        self.proposed: List[bytes] = []
        #: Every entry this node applied, in order (what a follower would replicate).
        self.log: List[Entry] = []
        self.ready = True
        #: What ``stale_read_refusal`` answers (None: stale reads are served).
        self.stale_refusal: Optional[str] = None
        #: What membership changes over HTTP must present (``txraft.http.membership``).
        self.secret: Optional[bytes] = b"cluster-secret"
        self.configuration = Configuration.of_voters(["n1", "n2"])
        self.config_index = 0
        #: ``(code, message)``: fail leadership transfers with ``TransferFailed``.
        self.transfer_failure = None

    # -- switches ---------------------------------------------------------------------

    def lead(self) -> None:
        self.role = "leader"
        self.leader_id, self.leader_url = self.node_id, self.url

    def follow(
        self, leader_id: str, leader_url: Optional[str], public_url: Optional[str] = None
    ) -> None:
        self.role = "follower"
        self.leader_id, self.leader_url = leader_id, leader_url
        self.leader_public_url = public_url

    def lose_leader(self) -> None:
        self.role = "follower"
        self.leader_id = self.leader_url = None

    def release(self) -> None:
        """Complete every held proposal and barrier, in order."""
        held, self.held = self.held, []
        for action in held:
            action()

    def noop(self) -> int:
        """Apply a NOOP entry, as a new leader does; return its index."""
        index = self.state_machine.applied_index() + 1
        self._apply(Entry(index, self.term, b"", ENTRY_NOOP))
        return index

    def catch_up(self, other: "FakeRaftNode") -> None:
        """Apply the entries ``other`` applied that this node lacks (replication)."""
        missing = [e for e in other.log if e.index > self.state_machine.applied_index()]
        if missing:
            self.state_machine.apply_batch(missing)
            self.log.extend(missing)

    def _apply(self, entry: Entry):
        [result] = self.state_machine.apply_batch([entry])
        self.log.append(entry)
        return result

    # -- IRaftNode --------------------------------------------------------------------

    def _not_leader(self):
        return defer.fail(NotLeader(self.leader_id, self.leader_url, self.leader_public_url))

    def change(self, op, member_id, address="", http_url="", expect_config_index=None,
               uuid=""):
        """A membership change judged as the core judges it (``Configuration.changed``),
        committed at once on a leader."""
        self.calls["change"] += 1
        if self.role != "leader":
            return self._not_leader()
        if expect_config_index is not None and expect_config_index != self.config_index:
            return defer.fail(MembershipRefused("config_changed", "the configuration moved"))
        try:
            self.configuration = self.configuration.changed(
                op, ConfigMember(member_id, address=address, http_url=http_url, uuid=uuid))
        except ConfigChangeError as e:
            return defer.fail(MembershipRefused(e.code, e.message))
        if self.commit_timeout:
            return defer.fail(CommitTimeout())
        self.config_index = self.state_machine.applied_index() + 1
        return defer.succeed(self.config_index)

    def transfer_leadership(self, target=None):
        """A leadership transfer judged by the configuration: to another voter it
        succeeds at once (this node then follows it); ``transfer_failure`` fails it."""
        self.calls["transfer"] += 1
        if self.role != "leader":
            return self._not_leader()
        if target == self.node_id:
            return defer.succeed((self.node_id, self.term))
        voters = [v for v in self.configuration.voters if v != self.node_id]
        if target is None:
            if not voters:
                return defer.fail(TransferFailed("no_target", "no other voter"))
            target = voters[0]
        if target not in self.configuration:
            return defer.fail(TransferFailed("unknown_member", "%r is not a member" % target))
        if target not in voters:
            return defer.fail(TransferFailed("not_voter", "%r is a learner" % target))
        if self.transfer_failure is not None:
            return defer.fail(TransferFailed(*self.transfer_failure))
        self.term += 1
        self.follow(target, None)
        return defer.succeed((target, self.term))

    def propose(self, data: bytes):
        self.calls["propose"] += 1
        if self.role != "leader":
            return self._not_leader()
        self.proposed.append(data)
        d = defer.Deferred()

        def commit():
            if (self.commit_timeout or self.drop_proposals) and not self.apply_on_timeout:
                d.errback(ProposalDropped() if self.drop_proposals else CommitTimeout())
                return
            index = self.state_machine.applied_index() + 1
            result = self._apply(Entry(index, self.term, data))
            if self.commit_timeout:
                d.errback(CommitTimeout())
            elif self.drop_proposals:
                d.errback(ProposalDropped())
            else:
                d.callback((index, result))

        if self.hold:
            self.held.append(commit)
        else:
            commit()
        return d

    def read_barrier(self):
        self.calls["read_barrier"] += 1
        if self.role != "leader":
            return self._not_leader()
        if self.read_timeout:
            return defer.fail(ReadTimeout())
        d = defer.Deferred()
        if self.hold:
            self.held.append(lambda: d.callback(self.state_machine.applied_index()))
        else:
            d.callback(self.state_machine.applied_index())
        return d

    def leader(self):
        self.calls["leader"] += 1
        return self.leader_id, self.leader_url

    def is_leader(self) -> bool:
        return self.role == "leader"

    def is_ready(self) -> bool:
        self.calls["is_ready"] += 1
        return self.ready and self.leader_id is not None

    def stale_read_refusal(self) -> Optional[str]:
        return self.stale_refusal

    def status_view(self):
        from txraft.core import CoreStatus
        from txraft.runtime.status import NodeStatus

        self.calls["status_view"] += 1
        applied = self.state_machine.applied_index()
        core = CoreStatus(id=self.node_id, role=self.role, term=self.term, voted_for=None,
                          leader_id=self.leader_id, commit_index=applied,
                          last_applied=applied, last_log_index=applied, last_log_term=self.term,
                          snapshot_index=0, voters=self.configuration.voters,
                          learners=self.configuration.learners,
                          config_index=self.config_index, configuration=self.configuration)
        return NodeStatus(core=core, applied_index=applied, leader_http_url=self.leader_url)

    def status(self) -> dict:
        self.calls["status"] += 1
        applied = self.state_machine.applied_index()
        return {
            "id": self.node_id,
            "role": self.role,
            "term": self.term,
            "leader_id": self.leader_id,
            "leader_url": self.leader_url,
            "commit_index": applied,
            "applied_index": applied,
            "last_log_index": applied,
            "peers": {},
        }


# -- HTTP helpers -----------------------------------------------------------------------


def kv_leader_and_follower(testcase, leader_url: str, follower_url: str):
    """``(leader, follower)``: FakeRaftNodes n1 (leading, at ``leader_url``) and n2
    (following n1, at ``follower_url``) on kv state machines of their own."""
    from txraft.apps import kv

    base = testcase.mktemp()
    nodes = []
    for node_id, url in (("n1", leader_url), ("n2", follower_url)):
        sm = kv.open_state_machine(os.path.join(base, node_id), durable=False)
        testcase.addCleanup(sm.close)
        nodes.append(FakeRaftNode(sm, node_id, url))
    leader, follower = nodes
    follower.follow("n1", leader_url)
    return leader, follower


class FakeCluster:
    """Two nodes of an application: n1 leads, n2 follows and forwards to n1 through its
    own client; ``replicate()`` brings followers up to the leader."""

    def __init__(self, testcase, open_state_machine, make_resource):
        # Imported here: test_idle_imports measures a process that imports this module,
        # and treq is no part of an idle node.
        from treq.testing import StubTreq
        from twisted.internet.task import Clock

        self.testcase = testcase
        self.clock = Clock()
        self.clock.advance(1_795_689_172.5)
        base = testcase.mktemp()
        self.nodes = {}
        self.http = {}
        self.clients = {}
        for node_id in ("n1", "n2"):
            sm = open_state_machine(os.path.join(base, node_id), durable=False)
            testcase.addCleanup(sm.close)
            node = FakeRaftNode(sm, node_id, "http://%s.test" % (node_id,))
            self.nodes[node_id] = node
            self.clients[node_id] = RecordingClient()
            self.http[node_id] = StubTreq(make_resource(node, self.clock, self.clients[node_id]))
        for node_id, client in self.clients.items():
            other = "n2" if node_id == "n1" else "n1"
            client.inner = self.http[other]
        self.elect("n1")

    def elect(self, leader_id):
        for node_id, node in self.nodes.items():
            if node_id == leader_id:
                node.lead()
            else:
                node.follow(leader_id, "http://%s.test" % (leader_id,))

    def replicate(self):
        leader = next(n for n in self.nodes.values() if n.role == "leader")
        for node in self.nodes.values():
            if node is not leader:
                node.catch_up(leader)

    def __call__(self, method, path, node="n1", **kwargs):
        return request(self.testcase, self.http[node], method, "http://%s.test%s" % (node, path),
                       **kwargs)


class Answer:
    """A fully read HTTP answer: ``code``, ``headers`` (twisted ``Headers``), ``body``."""

    def __init__(self, code: int, headers, body: bytes):
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name)
        return None if not values else values[0]

    def json(self):
        return json.loads(self.body)

    @property
    def error_code(self) -> Optional[str]:
        return self.json()["error"]["code"]

    def __repr__(self):
        return "<Answer %d %r>" % (self.code, self.body[:200])


def start_request(stub, method: str, url: str, **kwargs):
    """Send a request through ``stub`` (a StubTreq); a Deferred firing with an Answer."""
    kwargs.setdefault("allow_redirects", False)
    d = stub.request(method, url, **kwargs)

    def read(response):
        return response.content().addCallback(
            lambda body: Answer(response.code, response.headers, body))

    return d.addCallback(read)


def request(testcase, stub, method: str, url: str, **kwargs) -> Answer:
    """Send a request through ``stub`` and return its answer, which must be complete."""
    d = start_request(stub, method, url, **kwargs)
    stub.flush()
    return testcase.successResultOf(d)


class RecordingClient:
    """A treq-like client that records requests and delegates to ``inner`` (or fails)."""

    def __init__(self, inner=None, failure: Optional[Exception] = None):
        self.inner = inner
        self.failure = failure
        self.requests: List[tuple] = []

    def request(self, method, url, **kwargs):
        self.requests.append((method, url, kwargs))
        if self.failure is not None:
            return defer.fail(self.failure)
        return self.inner.request(method, url, **kwargs)


def set_environ(testcase, name: str, value: Optional[str]) -> None:
    """Set environment variable ``name`` to ``value`` (unset it for None) until the end of
    ``testcase``."""
    previous = os.environ.get(name)

    def restore():
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous

    testcase.addCleanup(restore)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
