"""The shop as a txraft ``Application``: what ``twistd raftnode --app shop`` loads."""

from txraft.apps.application import Application

from shop.api import make_resource
from shop.state import open_state_machine

application = Application("shop", open_state_machine, make_resource)
