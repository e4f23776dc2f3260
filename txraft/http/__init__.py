"""The HTTP layer shared by the applications, one responsibility a module: ``errors``,
``requests`` and ``responses`` (JSON in and out), ``node`` (``RaftHTTP``: reads and writes
through Raft), ``forwarding`` (to the leader), ``routing`` (one route table for Klein and
the fast path), ``fastpath`` (plain twisted.web), ``status`` and ``metrics``, and
``admin`` (fault injection for chaos runs)."""
