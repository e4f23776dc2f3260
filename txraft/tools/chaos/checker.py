"""A linearizability checker for histories recorded against a real cluster.

Pure and deterministic: no clock, no I/O.  A history is a list of ``Op`` per partition (a
key of the store, one product's stock); a ``Model`` says what one operation does to the
partition's state.  ``check`` decides whether some total order of the operations (a
*linearization*) is legal for the model and respects real time: an operation that
completed before another was invoked comes first.

The search is Wing & Gong's, with Lowe's memoization as in Porcupine (Athalye, 2017):
depth-first over "which pending operation takes effect next", remembering every
(linearized set, state) pair already explored so no configuration is expanded twice.
Checking each partition on its own is sound and complete for these models because
linearizability is local (Herlihy & Wing 1990, Theorem 1): a history is linearizable iff
each object's sub-history is.

Outcomes (``Op.status``):

* ``OK``: the client saw the answer; the operation took effect exactly once, somewhere
  between its invocation and its completion, and its output is what the model produces;
* ``FAIL``: a definite error (the service promises no effect): dropped before the search;
* ``UNKNOWN``: a timeout or a lost connection; it may or may not have taken effect, at
  any point after its invocation.  It has no completion, so nothing ever forces it.
  "Never took effect" is the same as "took effect after everything else": once every
  operation with a known outcome is placed, whatever it does can no longer contradict
  anything.  So a model only needs the one transition "it happened" for an unknown
  operation, and the search succeeds once every known operation is placed.

The cost is exponential in the worst case (the problem is NP-complete, Gibbons & Korach
1997); it stays small when few operations on one partition overlap.  Workloads keep it so
(many keys, bounded histories per key, clients that resolve their timeouts by retrying
with an idempotency key) and ``check`` gives up after ``max_steps`` with no verdict
rather than guessing.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import attrs

OK = "ok"
FAIL = "fail"
UNKNOWN = "unknown"
STATUSES = (OK, FAIL, UNKNOWN)
INF = float("inf")

DEFAULT_MAX_STEPS = 10_000_000


class _Refused:
    """The model's answer when an operation cannot happen in a state with its output."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "REFUSED"


REFUSED = _Refused()


@attrs.frozen
class Op:
    """One client operation as seen from outside: when it was invoked and answered.

    ``complete`` is ``None`` exactly when ``status`` is ``UNKNOWN``.  ``input`` and
    ``output`` are the model's business (hashable values).
    """

    id: Any
    input: Any
    output: Any = None
    status: str = OK
    invoke: float = 0.0
    complete: Optional[float] = None
    process: Any = None

    def __attrs_post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError("status must be one of %s, not %r" % (STATUSES, self.status))
        if self.status == UNKNOWN:
            if self.complete is not None:
                raise ValueError("op %r: an unknown outcome has no completion time" % (self.id,))
        elif self.complete is None or self.complete < self.invoke:
            raise ValueError("op %r: completion %r before invocation %r"
                             % (self.id, self.complete, self.invoke))


@attrs.frozen
class Result:
    """The verdict on one partition.

    ``linearizable`` is ``None`` when the search ran out of its step budget (no verdict).
    ``linearization`` is a legal order of the operations' ids when linearizable; otherwise
    the longest legal prefix the search found, with ``state`` the state after it and
    ``stuck`` the ids of the operations that could have come next (the first of them is
    the one whose completion forbade going further).
    """

    partition: Any
    linearizable: Optional[bool]
    ops: int
    steps: int
    linearization: Tuple[Any, ...] = ()
    state: Any = None
    stuck: Tuple[Any, ...] = ()
    message: str = ""


class Model:
    """What an operation does to a partition's state (states are hashable values)."""

    name = "model"

    def init(self) -> Hashable:
        raise NotImplementedError

    def step(self, state: Hashable, op: Op) -> Any:
        """The state after ``op`` with its output, or ``REFUSED``.

        For an ``UNKNOWN`` op the output is not known: return the state after it took
        effect (the checker covers "it never did" by itself).
        """
        raise NotImplementedError

    def effect_free(self, op: Op) -> bool:
        """True when ``op`` never changes the state (an unknown one can be ignored)."""
        return False

    def is_no_op(self, op: Op) -> bool:
        """True when ``op``, with its known output, leaves every state it is legal in
        unchanged (a read, a refusal).  Must be False for unknown outcomes."""
        return op.status == OK and self.effect_free(op)

    def prune(self, ops: List[Op]) -> List[Op]:
        """Drop operations whose presence cannot change the verdict (optional)."""
        return ops

    def describe(self, op: Op) -> str:
        return "%r -> %r" % (op.input, op.output)


# -- models ---------------------------------------------------------------------------------


class RegisterModel(Model):
    """A read/write register; ``None`` is "absent" (the initial value, and a delete).

    Inputs: ``("write", value)`` and ``("read", None)``; a read's output is the value.
    """

    name = "register"

    def __init__(self, initial: Hashable = None):
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def step(self, state, op):
        f = op.input[0]
        if f == "write":
            return op.input[1]
        if f == "read":
            if op.status == UNKNOWN or op.output == state:
                return state
            return REFUSED
        raise ValueError("register: unknown operation %r" % (op.input,))

    def effect_free(self, op):
        return op.input[0] == "read"

    def prune(self, ops):
        # A write of unknown outcome whose value no read ever returned can be dropped:
        # in any linearization no read sits between it and the next write (it would have
        # returned its value), so removing it leaves a legal order; and any legal order
        # without it stays legal with it appended at the end.  With unique values this
        # removes almost every timed-out write, which keeps the search small.
        seen = {op.output for op in ops if op.input[0] == "read" and op.status == OK}
        return [
            op for op in ops
            if not (op.status == UNKNOWN and op.input[0] == "write" and op.input[1] not in seen)
        ]

    def describe(self, op):
        f, value = op.input
        if f == "write":
            return "write(%r)%s" % (value, "" if op.status == OK else " [%s]" % op.status)
        return "read() -> %r" % (op.output,)


PLACED = "placed"
INSUFFICIENT = "insufficient"
CONFLICT = "conflict"
REFUSED_OUTPUT = "refused"


_STOCK_NO_OPS = frozenset({("order", INSUFFICIENT), ("cancel", REFUSED_OUTPUT),
                           ("restock", CONFLICT), ("replace", INSUFFICIENT)})


class StockModel(Model):
    """One product's stock under orders, cancellations, compare-and-set restocks and reads.

    Inputs and outputs:

    * ``("order", n, exclusive)`` -> ``"placed"`` (needs ``stock >= n``; takes ``n``) or
      ``"insufficient"`` (no effect).  With ``exclusive`` (a single-line order, so this
      product alone decides) "insufficient" needs ``stock < n``: an unjustified refusal is a
      violation.  Lines of a multi-line order may be refused because of another product.
    * ``("cancel", n)`` -> ``"ok"`` (gives ``n`` back) or ``"refused"`` (no effect).
    * ``("replace", old, new)`` -> ``"ok"`` (an order's ``old`` units of this product
      come back and ``new`` are taken in one step: needs ``stock + old >= new``) or
      ``"insufficient"`` (no effect; needs ``stock + old < new``).
    * ``("restock", old, new)`` -> ``"ok"`` (an ``If-Match`` write based on a read of
      ``old``: it can only pass if nothing changed since, so needs ``stock == old``; sets
      ``new``) or ``"conflict"`` (412: no effect, always possible).
    * ``("read",)`` -> the stock.
    """

    name = "stock"

    def __init__(self, initial: int):
        self.initial = initial

    def init(self) -> Hashable:
        return self.initial

    def step(self, state, op):
        f = op.input[0]
        unknown = op.status == UNKNOWN
        out = op.output
        if f == "order":
            n, exclusive = op.input[1], op.input[2]
            if unknown:
                return state - n if state >= n else state
            if out == PLACED:
                return state - n if state >= n else REFUSED
            if out == INSUFFICIENT:
                return state if (state < n or not exclusive) else REFUSED
        elif f == "replace":
            old, new = op.input[1], op.input[2]
            enough = state + old >= new
            if unknown:
                return state + old - new if enough else state
            if out == OK:
                return state + old - new if enough else REFUSED
            if out == INSUFFICIENT:
                return state if not enough else REFUSED
        elif f == "cancel":
            if unknown or out == OK:
                return state + op.input[1]
            if out == REFUSED_OUTPUT:
                return state
        elif f == "restock":
            old, new = op.input[1], op.input[2]
            if unknown:
                return new if state == old else state
            if out == OK:
                return new if state == old else REFUSED
            if out == CONFLICT:
                return state
        elif f == "read":
            if unknown or out == state:
                return state
            return REFUSED
        raise ValueError("stock: unknown operation %r -> %r" % (op.input, op.output))

    def effect_free(self, op):
        return op.input[0] == "read"

    def is_no_op(self, op):
        if op.status != OK:
            return False
        f = op.input[0]
        return f == "read" or (f, op.output) in _STOCK_NO_OPS

    def describe(self, op):
        f = op.input[0]
        tag = "" if op.status == OK else " [%s]" % op.status
        if f == "order":
            return "order(%d%s) -> %s%s" % (
                op.input[1], "" if op.input[2] else ", multi-line", op.output, tag)
        if f == "cancel":
            return "cancel(+%d) -> %s%s" % (op.input[1], op.output, tag)
        if f == "replace":
            return "replace(%d -> %d) -> %s%s" % (op.input[1], op.input[2], op.output, tag)
        if f == "restock":
            return "restock(%d -> %d) -> %s%s" % (op.input[1], op.input[2], op.output, tag)
        return "read() -> %r%s" % (op.output, tag)


# -- the search -----------------------------------------------------------------------------


class _Node:
    """An event in the doubly linked lists the search lifts operations out of."""

    __slots__ = ("op", "bit", "is_call", "known", "match", "prev", "next")

    def __init__(self, op=None, bit=0, is_call=False, known=True):
        self.op = op
        self.bit = bit
        self.is_call = is_call
        self.known = known
        self.match = None
        self.prev = None
        self.next = None


def _lift(call: _Node) -> None:
    call.prev.next = call.next
    if call.next is not None:
        call.next.prev = call.prev
    ret = call.match
    if ret is not None:
        ret.prev.next = ret.next
        if ret.next is not None:
            ret.next.prev = ret.prev


def _unlift(call: _Node) -> None:
    ret = call.match
    if ret is not None:
        ret.prev.next = ret
        if ret.next is not None:
            ret.next.prev = ret
    call.prev.next = call
    if call.next is not None:
        call.next.prev = call


def _link(nodes: Sequence[_Node]) -> _Node:
    head = _Node()
    prev = head
    for node in nodes:
        prev.next = node
        node.prev = prev
        prev = node
    return head


def _prepare(ops: Sequence[Op], model: Model) -> List[Op]:
    kept = [op for op in ops if op.status != FAIL
            and not (op.status == UNKNOWN and model.effect_free(op))]
    return list(model.prune(kept))


def check(ops: Sequence[Op], model: Model, partition: Any = None,
          max_steps: int = DEFAULT_MAX_STEPS) -> Result:
    """Decide whether ``ops`` (one partition's history) is linearizable for ``model``.

    Two lists drive the search: the calls and completions of the operations with a
    known outcome, in time order, and the calls of the unknown ones (which never force
    anything).  The candidates to take effect next are the known calls before the first
    pending completion (the *deadline*: that operation must be placed before anything
    invoked later) and the unknown calls invoked by the deadline.

    Four rules cut the search without changing the verdict:

    * a candidate that cannot change any state (a read, a refusal: ``Model.is_no_op``)
      and is legal now is placed at once, with no alternative: any legal continuation
      can be reordered to place it first, since every pending operation completes after
      it was invoked and the state it leaves is the one it found;
    * known candidates are tried earliest completion first, unknown ones only after
      every known one failed: an unknown operation is placed only where it is needed;
    * of several pending unknown operations with the same input only the earliest is
      a candidate (they are interchangeable from then on);
    * every (placed set, state) pair is expanded at most once (the memo).
    """
    ops = _prepare(ops, model)
    n = len(ops)
    if n == 0:
        return Result(partition, True, 0, 0, (), model.init(), (), "empty history")
    # Known operations get the low bits, in invocation order, so the set of placed
    # ones is mostly "every bit below t" plus a narrow window: the memo key holds t and
    # the window instead of an n-bit number.  Unknown ones have their own bits.
    known = sorted((op for op in ops if op.status == OK), key=lambda op: op.invoke)
    unknown = sorted((op for op in ops if op.status != OK), key=lambda op: op.invoke)
    k = len(known)
    known_mask = (1 << k) - 1

    if not k:
        # Nothing with a known outcome: every operation may go last, or never happen.
        return Result(partition, True, n, 0, (), model.init(), (), "linearizable")
    events = []
    for i, op in enumerate(known):
        call = _Node(op, 1 << i, True, True)
        ret = _Node(op, 1 << i, False, True)
        call.match = ret
        # At equal times a call sorts before a completion: the two count as concurrent,
        # which can only make the verdict more lenient, never wrongly strict.
        events.append((op.invoke, 0, i, call))
        events.append((op.complete, 1, i, ret))
    events.sort(key=lambda e: e[:3])
    head = _link([e[3] for e in events])
    unknown_head = _link([_Node(op, 1 << (k + j), True, False)
                          for j, op in enumerate(unknown)])

    step = model.step
    is_no_op = model.is_no_op
    steps = 0

    def expand(state):
        """The current configuration's candidates: (nodes, forced, deadline)."""
        nonlocal steps
        cands = []
        node = head.next
        while node.is_call:
            cands.append(node)
            node = node.next
        steps += len(cands) + 1
        for c in cands:
            if is_no_op(c.op) and step(state, c.op) is not REFUSED:
                return [c], True, node.op.complete
        cands.sort(key=lambda c: c.op.complete)
        return cands, False, node.op.complete

    def unknown_candidates(deadline):
        # Of two unplaced unknown operations with the same input that are both
        # candidates, only the earlier is offered: from here on nothing tells them
        # apart (neither has a completion), so any order using the later one works with
        # the earlier one instead.  This turns 2**u subsets into a product over inputs.
        nonlocal steps
        out = []
        seen = set()
        node = unknown_head.next
        while node is not None and node.op.invoke <= deadline:
            steps += 1
            if node.op.input not in seen:
                seen.add(node.op.input)
                out.append(node)
            node = node.next
        return out

    state = model.init()
    linearized = 0
    left = k  # known operations not placed yet
    cache = set()
    frames: List[Tuple] = []
    best: Tuple[int, Tuple[Any, ...], Any] = (0, (), state)
    alts, forced, deadline = expand(state)
    i = 0
    extended = forced  # unknown candidates already appended (never at a forced level)
    while left:
        if steps > max_steps:
            return Result(partition, None, n, steps, best[1], best[2], (),
                          "no verdict: the search exceeded %d steps" % (max_steps,))
        placed = None
        while True:
            if i >= len(alts):
                if not extended:
                    extended = True
                    alts = alts + unknown_candidates(deadline)
                    continue
                break
            c = alts[i]
            i += 1
            steps += 1
            new_state = step(state, c.op)
            if new_state is REFUSED:
                continue
            done = linearized | c.bit
            low = done & known_mask
            t = ((low + 1) & ~low).bit_length() - 1
            key = (t, low >> t, done >> k, new_state)
            if key in cache:
                continue
            cache.add(key)
            placed = c
            break
        if placed is not None:
            frames.append((alts, i, extended, deadline, state, placed))
            state = new_state
            linearized = done
            if placed.known:
                left -= 1
            _lift(placed)
            if len(frames) > best[0]:
                best = (len(frames), tuple(f[5].op.id for f in frames), state)
            if left:
                alts, forced, deadline = expand(state)
                i = 0
                extended = forced
            continue
        # Every candidate failed here: undo the last placement, try its next sibling.
        if not frames:
            return _refusal(partition, ops, model, n, steps, best)
        alts, i, extended, deadline, state, undone = frames.pop()
        linearized &= ~undone.bit
        if undone.known:
            left += 1
        _unlift(undone)
    order = tuple(f[5].op.id for f in frames)
    return Result(partition, True, n, steps, order, state, (), "linearizable")


def _refusal(partition, ops, model, n, steps, best) -> Result:
    depth, prefix, state = best
    placed = set(prefix)
    remaining = [op for op in ops if op.id not in placed]
    deadline = min((op.complete for op in remaining if op.complete is not None), default=INF)
    candidates = sorted(
        (op for op in remaining if op.invoke <= deadline),
        key=lambda op: (op.complete is None, op.complete or 0.0, op.invoke),
    )
    by_id = {op.id: op for op in ops}
    lines = ["not linearizable (%s model, %d operations, %d search steps)"
             % (model.name, n, steps)]
    lines.append("longest legal prefix: %d operations; state after it: %r" % (max(depth, 0), state))
    for op_id in prefix[-5:]:
        op = by_id[op_id]
        lines.append("  ... %s" % _line(op, model))
    lines.append("none of these can come next:")
    for op in candidates[:12]:
        lines.append("  %s" % _line(op, model))
    return Result(partition, False, n, steps, prefix, state,
                  tuple(op.id for op in candidates), "\n".join(lines))


def _line(op: Op, model: Model) -> str:
    end = "?" if op.complete is None else "%.4f" % op.complete
    return "#%s p=%s [%.4f, %s] %s" % (op.id, op.process, op.invoke, end, model.describe(op))


def check_partitions(partitions: Mapping[Any, Sequence[Op]],
                     model_for: Callable[[Any], Model],
                     max_steps: int = DEFAULT_MAX_STEPS) -> Dict[Any, Result]:
    """``check`` every partition with its own model; results keyed like the input."""
    return {
        key: check(ops, model_for(key), partition=key, max_steps=max_steps)
        for key, ops in sorted(partitions.items(), key=lambda kv: repr(kv[0]))
    }


def partition_by(ops: Iterable[Tuple[Any, Op]]) -> Dict[Any, List[Op]]:
    """Group ``(partition, op)`` pairs into ``{partition: [op, ...]}``."""
    out: Dict[Any, List[Op]] = {}
    for key, op in ops:
        out.setdefault(key, []).append(op)
    return out
