"""Fast tests: the pure core, the simulator, the runtime on a simulated clock and
network, the state machines, the HTTP layer through StubTreq.  No process is started."""
