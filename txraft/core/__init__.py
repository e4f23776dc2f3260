"""The Raft algorithm, sans-I/O: messages, the log, replication progress and the core
state machine that turns inputs into ``Ready`` batches.

Nothing in this package imports Twisted, a socket, a clock, a file or the global random
module (``tests/unit/test_layering.py`` checks it).  ``txraft.core`` re-exports the
names a runtime needs; the modules are ``messages`` (the values), ``config`` (cluster
configurations and single-server changes), ``log`` (the in-memory log), ``progress`` (a leader's view of one follower) and ``raft`` (``RaftCore``).
"""

from txraft.core.config import (  # noqa: F401
    ADD_LEARNER,
    LEARNER,
    PROMOTE,
    REMOVE,
    VOTER,
    ConfigChangeError,
    Configuration,
    Member,
)
from txraft.core.raft import (  # noqa: F401
    CANDIDATE,
    FOLLOWER,
    LEADER,
    PRE_CANDIDATE,
    PROBE,
    REPLICATE,
    SNAPSHOT,
    Accepted,
    ChangeRefused,
    CoreConfig,
    CoreStatus,
    CoreError,
    NotLeaderOutcome,
    PeerStatus,
    Progress,
    RaftCore,
    Ready,
    SafetyViolation,
    SnapshotImage,
    SoftState,
)
