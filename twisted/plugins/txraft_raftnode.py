# A lazy drop-in so that `twistd` finds the plugin; the code is in txraft.plugins.raftnode.
# There must be no __init__.py under twisted/: that would shadow Twisted's own package.
from twisted.application.service import ServiceMaker

raftnode = ServiceMaker(
    "txraft node",
    "txraft.plugins.raftnode",
    "A Raft node over UDP serving a replicated application over HTTP",
    "raftnode",
)
