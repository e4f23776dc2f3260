"""The HTTP layer shared by the applications: errors, routing, forwarding to the leader,
the fast path, status, health and metrics."""
