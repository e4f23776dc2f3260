"""txraft: the Raft consensus algorithm for Twisted, with a sans-I/O core.

Layout: ``messages`` (values), ``core`` (the pure algorithm), ``testing`` (a deterministic
cluster simulator), ``storage``/``transport``/``node`` (the runtime on Twisted), and
``plugins/raftnode.py`` (the ``twistd raftnode`` composition root).
"""

__version__ = "0.1.0"
