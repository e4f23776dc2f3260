"""Reading requests: what reaches the routes, bodies, query parameters, headers.

* ``JSONRequest`` and ``RequestGuard`` act before any route: a request target that is
  not a path (``X/products``, ``http://host/products``) is a JSON 400 before twisted.web
  cuts its first byte off and routes the rest, a malformed form body reaches the
  application (which answers 415) instead of twisted.web's HTML 400, and a path or host
  that is not UTF-8 is a JSON 400 instead of Klein's plain-text one;
* request bodies with a size limit (413; by default the limit of the site serving the
  request, ``txraft.http.site``, which refuses a larger body before storing it), a JSON
  content type (415) and well-formed JSON (400);
* query parameters as text (400 when not UTF-8), ``?consistency=`` (422 unless
  ``linearizable`` or ``stale``), ``?redirect=`` (422 unless ``true`` or ``false``, on
  every node, before any route), and the ``Idempotency-Key`` header (422 when
  malformed).
"""

from __future__ import annotations

import json
from typing import Any, Optional
from urllib.parse import unquote_to_bytes

from twisted.web.resource import IResource
from twisted.web.server import Request
from zope.interface import implementer

from txraft import results
from txraft.http.errors import HTTPError, render_error
from txraft.http.responses import JSON_TYPE, json_response
from txraft.results import error_document

DEFAULT_BODY_LIMIT = 64 * 1024


def query_arg(request, name: bytes) -> Optional[str]:
    """The first value of query parameter ``name`` as text, or ``None`` when absent."""
    values = request.args.get(name)
    if not values:
        return None
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(
            400, "malformed_query", "query parameter is not UTF-8", field=name.decode("ascii")
        )


def is_stale(request) -> bool:
    """True for ``?consistency=stale``; linearizable (the default) otherwise."""
    value = query_arg(request, b"consistency")
    if value is None or value == "linearizable":
        return False
    if value == "stale":
        return True
    raise HTTPError(
        422, "invalid_value", "consistency must be 'linearizable' or 'stale'", field="consistency"
    )


def is_json_type(content_type: Optional[bytes]) -> bool:
    """``application/json`` or any ``application/*+json`` (e.g. merge-patch), any params."""
    if not content_type:
        return False
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == JSON_TYPE or (media.startswith(b"application/") and media.endswith(b"+json"))


def body_limit(request, limit: Optional[int] = None) -> int:
    """``limit``, or when None the body limit of the site serving ``request`` (its
    ``body_limit``), or ``DEFAULT_BODY_LIMIT`` for a site without one."""
    if limit is not None:
        return limit
    return getattr(request, "body_limit", DEFAULT_BODY_LIMIT)


def read_body(request, limit: Optional[int] = None) -> bytes:
    """The raw request body, or 413 when it is over ``body_limit(request, limit)``."""
    limit = body_limit(request, limit)
    length = request.getHeader(b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPError(400, "bad_request", "malformed Content-Length")
        if declared > limit:
            raise too_large(limit)
    content = request.content
    if content is None:
        return b""
    content.seek(0)
    data = content.read(limit + 1)
    if len(data) > limit:
        raise too_large(limit)
    return data


def too_large(limit: int) -> HTTPError:
    return HTTPError(413, "body_too_large", "request body is over the limit of %d bytes" % (limit,))


def read_json(request, limit: Optional[int] = None) -> Any:
    """The request body parsed as JSON: 413 too large, 415 not JSON, 400 malformed."""
    data = read_body(request, limit)
    if not is_json_type(request.getHeader(b"content-type")):
        raise HTTPError(
            415,
            "unsupported_media_type",
            "the request body must be JSON (Content-Type: application/json)",
        )
    try:
        return json.loads(data, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:
        raise HTTPError(400, "malformed_json", "request body is not valid JSON: %s" % (e,))


def _reject_constant(name):
    raise ValueError("%s is not JSON" % (name,))


def idempotency_key(request) -> Optional[str]:
    """The request's ``Idempotency-Key``, None without one; 422 ``invalid_value`` when
    it is not a valid key."""
    value = request.getHeader(results.HEADER)
    if value is None:
        return None
    key = value.decode("latin-1")
    problem = results.key_problem(key)
    if problem is not None:
        raise HTTPError(422, "invalid_value", problem, field=results.FIELD)
    return key


# -- before the routes ---------------------------------------------------------------------


@implementer(IResource)
class RequestGuard:
    """Wraps an application's root so that requests the routing layer cannot even decode
    (a path or host that is not UTF-8 once percent-decoded) get a JSON 400 like every
    other error, instead of Klein's plain-text one."""

    isLeaf = True

    def __init__(self, app: IResource):
        self.app = app

    def getChildWithDefault(self, name, request):  # pragma: no cover - isLeaf
        return self

    def putChild(self, path, child):  # pragma: no cover - never used
        raise NotImplementedError("RequestGuard has no children")

    def render(self, request):
        try:
            unquote_to_bytes(request.path).decode("utf-8")
            host = request.getHeader(b"host")
            if host is not None:
                host.decode("utf-8")
        except UnicodeDecodeError:
            return json_response(
                request,
                400,
                error_document("bad_request", "the request path or host is not UTF-8"),
            )
        return self.app.render(request)


def target_problem(uri: bytes) -> Optional[str]:
    """Why ``uri`` is not a request target this node serves, or None.

    Only the origin form, ``/path[?query]``: twisted.web drops the first byte of any
    target and routes the rest (``X/products`` is served as ``/products``), and a
    target spliced into the leader's URL could name another host or port.  ``//`` would
    read as a host in a URL, ``#`` as a fragment the leader never sees.
    """
    if not uri.startswith(b"/"):
        if b"://" in uri:
            return "the request target must be a path (/...), not an absolute URL"
        return "the request target must be a path starting with /"
    if uri.startswith(b"//"):
        return "the request target must not start with //"
    if b"#" in uri:
        return "the request target must not contain a fragment (#)"
    return None


@implementer(IResource)
class _Refused:
    """Renders one refusal, whatever the request."""

    isLeaf = True

    def __init__(self, error: HTTPError):
        self.error = error

    def render(self, request):
        return render_error(request, self.error)


def redirect_problem(args) -> Optional[HTTPError]:
    """``?redirect=`` is ``true`` (a follower answers 307 to the leader) or ``false``
    (the default: it forwards), once; anything else is refused on every node, leader
    included, rather than taken for ``false``."""
    values = args.get(b"redirect")
    if values is None or (len(values) == 1 and values[0] in (b"true", b"false")):
        return None
    return HTTPError(422, "invalid_value", "redirect must be 'true' or 'false', given once",
                     field="redirect")


class JSONRequest(Request):
    """A request that never parses form submissions and refuses a target that is not a
    path (``target_problem``), before any resource is looked up.

    txraft applications speak JSON, and twisted.web answers a malformed multipart body
    with a bare HTML 400 before any resource sees it.  Such a body now reaches the
    application, which answers 415.
    """

    def __init__(self, *args, **kwargs):
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)

    def process(self):
        problem = target_problem(self.uri)
        if problem is not None:
            error = HTTPError(400, "bad_request_target", problem)
        else:
            error = redirect_problem(self.args)
            if error is None:
                return super().process()
        self.site = self.channel.site
        self.prepath, self.postpath = [], []
        self.render(_Refused(error))
