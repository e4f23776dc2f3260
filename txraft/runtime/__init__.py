"""The node runtime: the executor that carries a ``Ready`` batch to disk, network and
state machine, the Twisted node that drives the core, storage, snapshots, the UDP
transport and its codec."""
