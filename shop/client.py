"""A Python client for the shop (treq): finds the leader, follows 307s, retries safely.

Every write carries an ``Idempotency-Key`` (generated unless given), and a retry of the
same call reuses it, so a write whose first attempt timed out (504, or a connection that
broke after sending) is retried without risk of being applied twice.  Reads and writes
ask for ``?redirect=true``: a follower answers 307 naming the leader, and the client then
talks to the leader directly.  When a redirect target cannot be reached from here (an
address only valid inside the cluster's network, say), the client stops asking for
redirects and lets the nodes forward requests instead.

Errors are typed: ``NotFound``, ``Conflict`` (and ``InsufficientStock``,
``InvalidTransition``, ``DuplicateSku``, ``DuplicateEmail``), ``PreconditionFailed``,
``ValidationError``, ``BadRequest``; ``Unavailable`` when no attempt succeeded and nothing
was applied, ``OutcomeUnknown`` when the last attempts may have been applied.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple
from urllib.parse import urlencode, urlsplit

from twisted.internet import defer, task
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.web.client import RequestGenerationFailed, RequestNotSent, RequestTransmissionFailed

WRITE_METHODS = frozenset(("POST", "PUT", "PATCH", "DELETE"))
DEFAULT_URL = "http://127.0.0.1:5001"


class ShopError(Exception):
    """An answer that is an error: ``status``, ``code``, ``message``, ``field``."""

    def __init__(self, status: int, code: str, message: str, field: Optional[str] = None,
                 body: Any = None):
        super().__init__("%s%s: %s%s" % ("%d " % (status,) if status else "", code, message,
                                         " (field %s)" % (field,) if field else ""))
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.body = body


class BadRequest(ShopError):
    """400, 413 or 415: the request itself is malformed."""


class NotFound(ShopError):
    """404."""


class Conflict(ShopError):
    """409: the request conflicts with the current state; nothing changed."""


class InsufficientStock(Conflict):
    pass


class InvalidTransition(Conflict):
    pass


class DuplicateSku(Conflict):
    pass


class DuplicateEmail(Conflict):
    pass


class PreconditionFailed(ShopError):
    """412: the resource changed since the ETag given in If-Match."""


class ValidationError(ShopError):
    """422: a field is missing, unknown, of the wrong type or out of range."""


class Unavailable(ShopError):
    """No node could serve the request in the attempts allowed; nothing was applied."""


class OutcomeUnknown(ShopError):
    """The write may or may not have been applied (504 or a broken connection)."""


_BY_CODE = {
    "insufficient_stock": InsufficientStock,
    "invalid_transition": InvalidTransition,
    "duplicate_sku": DuplicateSku,
    "duplicate_email": DuplicateEmail,
}
_BY_STATUS = {400: BadRequest, 404: NotFound, 405: BadRequest, 409: Conflict,
              412: PreconditionFailed, 413: BadRequest, 415: BadRequest, 422: ValidationError,
              503: Unavailable, 504: OutcomeUnknown}


def error_for(status: int, body: Any) -> ShopError:
    """The typed error for an error answer."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"code": "http_%d" % (status,), "message": repr(body)[:200]}
    code = str(error.get("code"))
    cls = _BY_CODE.get(code) or _BY_STATUS.get(status, ShopError)
    return cls(status, code, str(error.get("message")), error.get("field"), body)


class Answer:
    """A successful answer: ``status``, ``headers`` (twisted Headers) and decoded ``body``."""

    def __init__(self, status: int, headers, body: Any):
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        values = self.headers.getRawHeaders(name)
        return values[0] if values else None

    @property
    def index(self) -> Optional[int]:
        """``X-Raft-Index`` of a write."""
        value = self.header("X-Raft-Index")
        return None if value is None else int(value)

    @property
    def etag(self) -> Optional[str]:
        return self.header("ETag")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return "%s://%s" % (parts.scheme, parts.netloc)


# The request certainly never reached a node whole: no effect.
_NOT_SENT = (ConnectError, DNSLookupError, RequestNotSent, RequestGenerationFailed,
             RequestTransmissionFailed)


class ShopClient:
    """Talks to a shop cluster given the base URLs of some of its nodes.

    ``http_client`` is treq-like (``treq`` itself, an ``HTTPClient`` or a ``StubTreq``);
    ``clock`` provides ``IReactorTime`` for timeouts and back-off.
    """

    def __init__(
        self,
        urls: Sequence[str] = (DEFAULT_URL,),
        http_client=None,
        clock=None,
        attempts: int = 8,
        timeout_seconds: float = 10.0,
        backoff_seconds: float = 0.05,
        max_backoff_seconds: float = 1.0,
        max_redirects: int = 5,
        new_key: Callable[[], str] = lambda: uuid.uuid4().hex,
    ):
        if not urls:
            raise ValueError("at least one node URL is needed")
        if http_client is None:
            import treq as http_client
        if clock is None:
            from twisted.internet import reactor as clock
        self.urls = [u.rstrip("/") for u in urls]
        self.http_client = http_client
        self.clock = clock
        self.attempts = attempts
        self.timeout_seconds = timeout_seconds
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.max_redirects = max_redirects
        self.new_key = new_key
        self.leader_url: Optional[str] = None
        self.use_redirects = True
        self._next = 0

    # -- the retry loop -------------------------------------------------------------------

    def _rotate(self) -> str:
        url = self.urls[self._next % len(self.urls)]
        self._next += 1
        return url

    def request(self, method: str, path: str, body: Any = None, params: Optional[dict] = None,
                headers: Optional[Dict[str, str]] = None,
                idempotency_key: Optional[str] = None) -> "defer.Deferred[Answer]":
        """One logical request, retried across nodes until it gets a definite answer."""
        return defer.ensureDeferred(
            self._request(method.upper(), path, body, params, headers, idempotency_key))

    async def _request(self, method, path, body, params, headers, key) -> Answer:
        send_headers = {"Accept": ["application/json"]}
        for name, value in (headers or {}).items():
            send_headers[name] = [value]
        if method in WRITE_METHODS:
            send_headers["Idempotency-Key"] = [key or self.new_key()]
        data = None
        if body is not None:
            data = json.dumps(body, separators=(",", ":")).encode("utf-8")
            send_headers["Content-Type"] = ["application/json"]
        query = {k: v for k, v in (params or {}).items() if v is not None}
        unknown_outcome = False
        last_error: Optional[ShopError] = None
        redirects = 0
        attempt = 0
        base = self.leader_url or self._rotate()
        while True:
            full_query = dict(query)
            if self.use_redirects:
                full_query["redirect"] = "true"
            url = base + path + ("?" + urlencode(full_query) if full_query else "")
            retry_after = None
            try:
                response, content = await self._send(method, url, send_headers, data)
            except Exception as e:
                if isinstance(e, _NOT_SENT):
                    last_error = Unavailable(0, "unreachable", "%s: %s" % (base, e))
                    if base == self.leader_url and base not in self.urls:
                        # A leader address learnt from a 307 that we cannot reach: let
                        # the nodes forward for us from now on.
                        self.use_redirects = False
                else:
                    if method in WRITE_METHODS:
                        unknown_outcome = True
                    last_error = OutcomeUnknown(0, "no_answer", "%s: %s" % (base, e))
                self.leader_url = None
            else:
                status = response.code
                location = response.headers.getRawHeaders("Location", [None])[0]
                if status == 307 and location and redirects < self.max_redirects:
                    redirects += 1
                    self.leader_url = base = _origin(location)
                    continue
                decoded = _decode(content, response)
                if status < 300:
                    return Answer(status, response.headers, decoded)
                if status == 307:
                    # Redirected round in circles: leadership is moving; wait and retry.
                    redirects = 0
                    status, decoded = 503, {"error": {"code": "no_leader",
                                                      "message": "too many redirects"}}
                error = error_for(status, decoded)
                if status not in (503, 504):
                    raise error
                if status == 504:
                    unknown_outcome = True
                last_error = error
                retry_after = response.headers.getRawHeaders("Retry-After", [None])[0]
                self.leader_url = None
            attempt += 1
            if attempt >= self.attempts:
                break
            await task.deferLater(self.clock, self._backoff(attempt, retry_after), lambda: None)
            base = self.leader_url or self._rotate()
        if unknown_outcome:
            raise OutcomeUnknown(last_error.status, "outcome_unknown",
                                 "gave up after %d attempts; the write may have been applied "
                                 "(last: %s)" % (self.attempts, last_error), body=last_error.body)
        raise Unavailable(last_error.status, last_error.code,
                          "gave up after %d attempts (last: %s)" % (self.attempts, last_error),
                          body=last_error.body)

    def _send(self, method, url, headers, data):
        d = self.http_client.request(method, url, headers=headers, data=data,
                                     allow_redirects=False)
        d.addCallback(lambda response: response.content().addCallback(
            lambda content: (response, content)))
        d.addTimeout(self.timeout_seconds, self.clock)
        return d

    def _backoff(self, attempt: int, retry_after: Optional[str]) -> float:
        delay = min(self.max_backoff_seconds, self.backoff_seconds * (2 ** (attempt - 1)))
        if retry_after is not None and retry_after.isdigit():
            delay = max(delay, min(float(retry_after), self.max_backoff_seconds))
        return delay

    # -- resources --------------------------------------------------------------------------

    def _body(self, answer: Answer):
        return answer.body

    def list(self, collection: str, **params) -> "defer.Deferred[dict]":
        """``GET /<collection>`` with filters/paging (and ``consistency``) as parameters."""
        return self.request("GET", "/" + collection, params=params).addCallback(self._body)

    def get(self, collection: str, ident: str, consistency: Optional[str] = None):
        return self.request("GET", "/%s/%s" % (collection, ident),
                            params={"consistency": consistency}).addCallback(self._body)

    def create(self, collection: str, fields: dict, idempotency_key: Optional[str] = None):
        return self.request("POST", "/" + collection, fields,
                            idempotency_key=idempotency_key).addCallback(self._body)

    def replace(self, collection: str, ident: str, fields: dict, if_match: Optional[int] = None,
                idempotency_key: Optional[str] = None):
        return self.request("PUT", "/%s/%s" % (collection, ident), fields,
                            headers=_if_match(if_match),
                            idempotency_key=idempotency_key).addCallback(self._body)

    def update(self, collection: str, ident: str, patch: dict, if_match: Optional[int] = None,
               idempotency_key: Optional[str] = None):
        """``PATCH``: a JSON merge patch (None clears an optional field)."""
        return self.request("PATCH", "/%s/%s" % (collection, ident), patch,
                            headers=_if_match(if_match),
                            idempotency_key=idempotency_key).addCallback(self._body)

    def delete(self, collection: str, ident: str, if_match: Optional[int] = None,
               idempotency_key: Optional[str] = None):
        return self.request("DELETE", "/%s/%s" % (collection, ident),
                            headers=_if_match(if_match),
                            idempotency_key=idempotency_key).addCallback(lambda _: None)

    def create_order(self, customer_id: str, items: Iterable[Tuple[str, int]],
                     idempotency_key: Optional[str] = None):
        return self.create("orders", {
            "customer_id": customer_id,
            "items": [{"product_id": p, "quantity": q} for p, q in items]}, idempotency_key)

    def set_order_status(self, order_id: str, status: str, if_match: Optional[int] = None):
        return self.update("orders", order_id, {"status": status}, if_match)

    # -- cluster ----------------------------------------------------------------------------

    def cluster_status(self) -> "defer.Deferred[List[Tuple[str, Any]]]":
        """``GET /raft/status`` of every configured node: ``(url, status dict or error)``."""
        return defer.ensureDeferred(self._cluster_status())

    async def members(self) -> dict:
        """``GET /raft/members`` from the leader when one of the nodes is (it adds each
        member's progress), else from the first node that answers."""
        first = None
        for url in self.urls:
            try:
                response, content = await self._send("GET", url + "/raft/members",
                                                     {"Accept": ["application/json"]}, None)
            except Exception as e:
                first = first or Unavailable(0, "unreachable", "%s: %s" % (url, e))
                continue
            body = _decode(content, response)
            if response.code != 200:
                first = first or error_for(response.code, body)
                continue
            if body.get("from_leader"):
                return body
            if not isinstance(first, dict):
                first = body
        if isinstance(first, dict):
            return first
        raise first or Unavailable(0, "unreachable", "no node answered")

    async def change_members(self, method: str, path: str, secret: str, body: Any = None,
                             expect_config_index: Optional[int] = None) -> dict:
        """A membership change (``POST /raft/members``, ``.../{id}/promote``,
        ``DELETE /raft/members/{id}``) with the cluster secret; the answer's body."""
        params = {"expect_config_index": expect_config_index}
        answer = await self._request(method, path, body, params,
                                     {"Authorization": "Bearer " + secret}, None)
        return answer.body

    async def _cluster_status(self):
        results = []
        for url in self.urls:
            try:
                response, content = await self._send("GET", url + "/raft/status",
                                                     {"Accept": ["application/json"]}, None)
                body = _decode(content, response)
                results.append((url, body if response.code == 200 else error_for(response.code, body)))
            except Exception as e:
                results.append((url, Unavailable(0, "unreachable", str(e) or type(e).__name__)))
        return results


def _if_match(version: Optional[int]) -> Optional[Dict[str, str]]:
    return None if version is None else {"If-Match": '"%d"' % (version,)}


def _decode(content: bytes, response) -> Any:
    content_type = (response.headers.getRawHeaders("Content-Type", [""])[0] or "").lower()
    if "json" in content_type and content:
        try:
            return json.loads(content)
        except ValueError:
            return content
    return content if content else None
