"""One route table per application: the Klein app and the fast dispatcher are both made
from it, so the two cannot drift apart.

A ``Route`` is a method and a werkzeug path pattern (``/kv/<path:key>``) bound to a
handler ``handler(request, **arguments)``; ``fast=True`` marks a route the plain
twisted.web dispatcher (``txraft.http.fastpath``) may answer without Klein.
``RouteTable.klein()`` registers every route with Klein, then the error handlers: werkzeug's
routing errors as JSON 404/405, and the table's ``on_error`` for everything else.
``RouteTable.fast_routes()`` compiles the fast routes: a fixed path (``/health``) into a
dictionary, matched exactly; the one ``prefix/<path:name>`` family by its prefix, with
``path_argument`` decoding the rest as werkzeug's ``path`` converter would.  A request the
fast routes do not match goes to the Klein app, which is therefore always right; a
table in which the fast dispatcher could pick another route than Klein's router (a
pattern it cannot match, a second fast prefix, another route under the fast prefix) is
refused when it is compiled.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Optional, Tuple
from urllib.parse import unquote_to_bytes

import attrs

from txraft.results import error_document
from txraft.http.errors import method_not_allowed, not_found, render_error
from txraft.http.responses import json_response

#: A handler ``(request, *arguments) -> bytes, None or a Deferred of them``.
Handler = Callable[..., Any]


@attrs.frozen
class Route:
    """``method`` on paths matching ``pattern`` (werkzeug's syntax) is ``handler``'s."""

    method: str
    pattern: str
    handler: Handler = attrs.field(eq=False, repr=False)
    endpoint: str
    fast: bool = False


@attrs.frozen
class FastRoutes:
    """The fast routes, compiled: ``static[path][method]`` for fixed paths (a path there
    that a method has no fast handler for belongs to Klein), and the one fast prefix
    with its handlers by method (``prefix`` empty when the table has none)."""

    static: Dict[bytes, Dict[bytes, Handler]]
    prefix: bytes
    prefixed: Dict[bytes, Handler]


class RouteTable:
    """An application's routes and the handler of their errors,
    ``on_error(request, failure)``."""

    def __init__(self, routes: Iterable[Route], on_error: Callable[[Any, Any], Any]):
        self.routes = tuple(routes)
        self.on_error = on_error
        self._klein = None

    def klein(self):
        """The Klein app serving every route, built on first use: the fast path answers
        the hot routes without it, and Klein with werkzeug is ~5 MiB of an idle node."""
        if self._klein is None:
            from klein import Klein
            from werkzeug.exceptions import HTTPException, MethodNotAllowed

            app = Klein()
            for route in self.routes:
                app.route(route.pattern, methods=[route.method],
                          endpoint=route.endpoint)(route.handler)
            # Klein tries these in order, the next one when one raises.
            app.handle_errors(MethodNotAllowed)(_method_not_allowed)
            app.handle_errors(HTTPException)(_routing_error)
            app.handle_errors(Exception)(self.on_error)
            self._klein = app
        return self._klein

    def klein_resource(self):
        return self.klein().resource()

    def fast_routes(self) -> FastRoutes:
        """Compile the fast routes; ``ValueError`` for a table they could misroute.

        One fast prefix at most (the hot route family), and everything else under it of
        the same form (``prefix<path:name>``, other methods for Klein): then a path that
        starts with the prefix can only be that route's, as for werkzeug, with no fixed
        path to look for first; one compare per request, no loop.
        """
        static: Dict[bytes, Dict[bytes, Handler]] = {}
        prefixed: Dict[bytes, Handler] = {}
        prefixes = set()
        for route in self.routes:
            head, argument = _split(route.pattern)
            if argument is None:
                methods = static.setdefault(head.encode("utf-8"), {})
                if route.fast:
                    methods[route.method.encode("ascii")] = route.handler
            elif route.fast:
                if not argument:
                    raise ValueError("%s %s: the fast path serves fixed paths and "
                                     "<prefix>/<path:name> only" % (route.method, route.pattern))
                prefixes.add(head)
                prefixed[route.method.encode("ascii")] = route.handler
        if len(prefixes) > 1:
            raise ValueError("one fast prefix per table, not %s" % (", ".join(sorted(prefixes)),))
        prefix = prefixes.pop() if prefixes else ""
        if prefix:
            for route in self.routes:
                head, argument = _split(route.pattern)
                if head == prefix and argument:
                    continue  # the fast route's pattern, with another method
                if route.pattern.startswith(prefix) or (
                        argument is not None and prefix.startswith(head)):
                    # Klein's router could give this route a path the fast one takes.
                    raise ValueError("%s %s: overlaps the fast prefix %s"
                                     % (route.method, route.pattern, prefix))
        return FastRoutes(static, prefix.encode("utf-8"), prefixed)


def _split(pattern: str) -> Tuple[str, Optional[str]]:
    """``(pattern, None)`` for a fixed path; ``(prefix, name)`` for ``prefix/<path:name>``;
    ``(prefix, "")`` for any other pattern with arguments."""
    head, sep, tail = pattern.partition("<")
    if not sep:
        return pattern, None
    if (head.endswith("/") and tail.startswith("path:") and tail.endswith(">")
            and tail[5:-1].isidentifier()):
        return head, tail[5:-1]
    return head, ""


def path_argument(raw: bytes) -> Optional[str]:
    """What werkzeug's ``<path:...>`` converter would match in ``raw`` (the path after the
    route's prefix), or ``None`` when that route would not match it as is (nothing, a
    leading slash werkzeug redirects, a newline, not UTF-8): those go to Klein."""
    if b"%" in raw:
        raw = unquote_to_bytes(raw)
    if not raw or raw[:1] == b"/" or b"\n" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


# -- werkzeug's routing errors, raised by Klein's router only --------------------------------


def _method_not_allowed(request, failure):
    return render_error(request, method_not_allowed(failure.value.valid_methods or ()))


def _routing_error(request, failure):
    error = failure.value
    code = error.code or 500
    if code == 404:
        return render_error(request, not_found(request.path))
    return json_response(
        request, code, error_document("http_error", error.description or error.name)
    )
