"""What the node runtime hosts: an application is a state machine plus an HTTP root."""

from __future__ import annotations

from typing import Any, Callable

import attrs


@attrs.frozen
class Application:
    """What the node runtime needs to host an application.

    ``make_state_machine(data_dir)`` opens the durable ``IStateMachine``;
    ``make_resource(node, clock, http_client)`` builds the HTTP root ``IResource`` given
    the local ``IRaftNode``, an ``IReactorTime`` and a treq-like client (for forwarding).
    """

    name: str
    make_state_machine: Callable[[str], Any]
    make_resource: Callable[[Any, Any, Any], Any]
