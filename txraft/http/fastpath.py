"""The hot routes answered by plain twisted.web, without Klein.

Measured on this project's benchmark machine, Klein answers about half as many requests
per CPU second as plain twisted.web (werkzeug's matcher, its Deferred chain and two
``notifyFinish`` per request cost about as much CPU as the rest of a write on the
leader).  ``FastResource`` answers the routes its ``RouteTable`` marks ``fast`` (the
key-value store's ``/kv/<key>``, and the status, health, readiness and metrics polls,
which then never load Klein into an idle node) with a dictionary look-up, and hands
everything else to the Klein app made from the same table.  ``serve`` answers as Klein
would: errors through the table's ``on_error``, a client that disconnects cancels a
pending answer.
"""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource
from twisted.web.server import NOT_DONE_YET
from zope.interface import implementer

from txraft.http.routing import RouteTable, path_argument

log = Logger()


@implementer(IResource)
class FastResource:
    """The HTTP root of an application with fast routes (see the module docstring)."""

    isLeaf = True

    def __init__(self, routes: RouteTable):
        self.routes = routes
        fast = routes.fast_routes()
        self._static = fast.static
        self._prefix = fast.prefix or None  # None: no path starts with it
        self._prefix_size = len(fast.prefix)
        self._prefixed = fast.prefixed
        self._on_error = routes.on_error
        self._fallback = None

    @property
    def fallback(self):
        """The Klein app's resource, for everything the fast routes do not match."""
        if self._fallback is None:
            self._fallback = self.routes.klein_resource()
        return self._fallback

    def getChildWithDefault(self, name, request):  # pragma: no cover - isLeaf
        return self

    def putChild(self, path, child):  # pragma: no cover - never used
        raise NotImplementedError("FastResource has no children")

    def render(self, request):
        path = request.path
        if path[:self._prefix_size] == self._prefix:
            handler = self._prefixed.get(request.method)
            if handler is not None:
                argument = path_argument(path[self._prefix_size:])
                if argument is not None:
                    return serve(request, self._on_error, handler, argument)
        else:
            methods = self._static.get(path)
            if methods is not None:
                handler = methods.get(request.method)
                if handler is not None:
                    return serve(request, self._on_error, handler)
        return self.fallback.render(request)


def serve(request, on_error, handler, *args):
    """Answer ``request`` with ``handler(request, *args)`` as a Klein route would.

    The handler returns bytes, ``None`` or a Deferred of them, or raises; a failure is
    answered by ``on_error(request, failure)`` (which may return a Deferred, a forward);
    a client that disconnects cancels a pending answer.  Returns ``NOT_DONE_YET`` (the
    answer is written here, now or later).
    """
    gone = [False]
    try:
        result = handler(request, *args)
    except Exception:
        result = on_error(request, Failure())
    else:
        if isinstance(result, defer.Deferred):
            result.addErrback(_recover, request, on_error, gone)
    if isinstance(result, defer.Deferred):

        def finished(reason):
            gone[0] = True
            if isinstance(reason, Failure):
                result.cancel()

        request.notifyFinish().addBoth(finished)
        result.addCallback(_answer, request, gone)
        result.addErrback(_unanswered, request, gone)
    else:
        _answer(result, request, gone)
    return NOT_DONE_YET


_NO_ANSWER = object()


def _recover(failure, request, on_error, gone):
    if gone[0]:
        if not failure.check(defer.CancelledError):
            log.failure("error after the client left: {method} {uri}", failure,
                        method=request.method, uri=request.uri)
        return _NO_ANSWER
    return on_error(request, failure)


def _answer(result, request, gone) -> None:
    """Write what a handler returned and finish, unless the client has left."""
    if result is _NO_ANSWER or gone[0]:
        return
    if isinstance(result, str):
        result = result.encode("utf-8")
    if result:
        # A length instead of Klein's chunked framing: one write, no terminating chunk.
        request.setHeader(b"Content-Length", b"%d" % (len(result),))
        request.write(result)
    request.finish()


def _unanswered(failure, request, gone) -> None:
    if gone[0] and failure.check(defer.CancelledError):
        return  # an answer (a forward) cancelled because the client left
    log.failure("could not write the answer to {method} {uri}", failure,
                method=request.method, uri=request.uri)
