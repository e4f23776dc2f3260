"""The linearizability checker of ``txraft.tools.chaos.checker`` on known histories.

Each history is small enough to verify by hand (the docstrings say why it is or is not
linearizable); a property test compares the search against brute-force enumeration of
every order on random small histories, and histories generated from a real sequential
execution with random real-time windows must always pass.
"""

from __future__ import annotations

import itertools
import random

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.chaos.checker import (
    CONFLICT,
    FAIL,
    INSUFFICIENT,
    OK,
    PLACED,
    REFUSED,
    UNKNOWN,
    Op,
    RegisterModel,
    StockModel,
    check,
    check_partitions,
    partition_by,
)


def w(op_id, value, start, end=None, status=OK, process=None):
    """A write; ``end`` None means unknown outcome."""
    if end is None and status == OK:
        status = UNKNOWN
    return Op(op_id, ("write", value), None, status, start, end, process)


def r(op_id, value, start, end, process=None):
    return Op(op_id, ("read", None), value, OK, start, end, process)


def order(op_id, n, output, start, end=None, exclusive=True, status=OK):
    if end is None and status == OK:
        status = UNKNOWN
        output = None
    return Op(op_id, ("order", n, exclusive), output, status, start, end)


def stock_read(op_id, value, start, end):
    return Op(op_id, ("read",), value, OK, start, end)


class RegisterTests(SynchronousTestCase):
    def verdict(self, ops, initial=None):
        return check(ops, RegisterModel(initial)).linearizable

    def test_empty(self):
        """An empty history is linearizable."""
        self.assertTrue(self.verdict([]))

    def test_sequential(self):
        """Write then read of the written value, one after the other."""
        self.assertTrue(self.verdict([w(1, "a", 0, 1), r(2, "a", 2, 3)]))

    def test_read_of_absent_key(self):
        """Before any write the register holds its initial value (None: absent)."""
        self.assertTrue(self.verdict([r(1, None, 0, 1), w(2, "a", 2, 3)]))
        self.assertFalse(self.verdict([r(1, "a", 0, 1), w(2, "a", 2, 3)]))

    def test_stale_read(self):
        """The classic stale read: a write completed, then a later read returned the old
        value.  What a deposed leader serving local reads produces."""
        history = [w(1, "old", 0, 1), w(2, "new", 2, 3), r(3, "old", 4, 5)]
        result = check(history, RegisterModel())
        self.assertFalse(result.linearizable)
        self.assertIn("not linearizable", result.message)
        self.assertIn(3, result.stuck)

    def test_concurrent_read_may_see_either(self):
        """A read overlapping a write may return the old or the new value."""
        for seen in (None, "a"):
            self.assertTrue(self.verdict([w(1, "a", 0, 10), r(2, seen, 1, 2)]))

    def test_new_old_inversion(self):
        """Two reads during one write: once one sees the new value, a read that starts
        after it completed cannot see the old one."""
        self.assertTrue(self.verdict([w(1, "a", 0, 10), r(2, None, 1, 2), r(3, "a", 3, 4)]))
        self.assertFalse(self.verdict([w(1, "a", 0, 10), r(2, "a", 1, 2), r(3, None, 3, 4)]))

    def test_read_of_a_value_never_written(self):
        """A read cannot invent a value."""
        self.assertFalse(self.verdict([w(1, "a", 0, 1), r(2, "b", 2, 3)]))

    def test_lost_acknowledged_write(self):
        """An acknowledged write that a later read does not see was lost."""
        self.assertFalse(self.verdict([w(1, "a", 0, 1), w(2, "b", 2, 3), r(3, "a", 4, 5),
                                       r(4, "b", 6, 7)]))

    def test_concurrent_writes_any_order(self):
        """Overlapping writes may take effect in either order, but one order for all
        readers."""
        base = [w(1, "a", 0, 5), w(2, "b", 0, 5)]
        self.assertTrue(self.verdict(base + [r(3, "a", 6, 7), r(4, "a", 8, 9)]))
        self.assertTrue(self.verdict(base + [r(3, "b", 6, 7)]))
        self.assertFalse(self.verdict(base + [r(3, "a", 6, 7), r(4, "b", 8, 9)]))

    def test_unknown_write_may_have_happened(self):
        """A timed-out write may take effect, at any time after its invocation."""
        self.assertTrue(self.verdict([w(1, "a", 0), r(2, "a", 50, 51)]))
        self.assertTrue(self.verdict([w(1, "a", 0), r(2, None, 1, 2), r(3, "a", 50, 51)]))

    def test_unknown_write_may_not_have_happened(self):
        """A timed-out write may never take effect."""
        self.assertTrue(self.verdict([w(1, "a", 0), r(2, None, 50, 51)]))

    def test_unknown_write_takes_effect_once(self):
        """Seen, then overwritten: a timed-out write cannot take effect a second time."""
        history = [w(1, "a", 0), r(2, "a", 1, 2), w(3, "b", 3, 4), r(4, "a", 5, 6)]
        self.assertFalse(self.verdict(history))

    def test_unknown_write_cannot_act_before_its_invocation(self):
        """A read completed before the write was invoked cannot see it."""
        self.assertFalse(self.verdict([r(1, "a", 0, 1), w(2, "a", 2)]))

    def test_unknown_write_is_atomic_in_time(self):
        """Seen by one read, it has taken effect: a later read cannot miss it."""
        self.assertFalse(self.verdict([w(1, "a", 0), r(2, "a", 1, 2), r(3, None, 3, 4)]))

    def test_failed_write_never_happened(self):
        """A definite failure promises no effect: reading its value is a violation."""
        self.assertFalse(self.verdict([w(1, "a", 0, 1, status=FAIL), r(2, "a", 2, 3)]))
        self.assertTrue(self.verdict([w(1, "a", 0, 1, status=FAIL), r(2, None, 2, 3)]))

    def test_unknown_reads_are_ignored(self):
        """A read with no answer constrains nothing."""
        history = [w(1, "a", 0, 1), Op(2, ("read", None), None, UNKNOWN, 2, None)]
        self.assertTrue(self.verdict(history))

    def test_delete_is_a_write_of_none(self):
        """A delete makes the key absent again."""
        self.assertTrue(self.verdict([w(1, "a", 0, 1), w(2, None, 2, 3), r(3, None, 4, 5)]))

    def test_equal_times_are_concurrent(self):
        """A completion and an invocation at the same instant are not ordered."""
        self.assertTrue(self.verdict([w(1, "a", 0, 2), r(2, None, 2, 3)]))

    def test_pruning_keeps_unread_unknown_writes_out(self):
        """Timed-out writes whose value no read returned are dropped before the search
        (they can always go last), so thousands of them cost nothing."""
        history = [w(i, "v%d" % i, float(i)) for i in range(2000)]
        history.append(r(5000, None, 0.5, 3000))
        result = check(history, RegisterModel())
        self.assertTrue(result.linearizable)
        self.assertEqual(result.ops, 1)

    def test_memoization_keeps_wide_concurrency_cheap(self):
        """Twelve concurrent writes, then a read nobody can explain: without the (set,
        state) memo the search would try all 12! orders before refusing, with it at
        most the 2**12 sets."""
        history = [w(i, "x", 0, 100) for i in range(12)]
        history.append(r(99, "y", 101, 102))
        result = check(history, RegisterModel())
        self.assertFalse(result.linearizable)
        self.assertLess(result.steps, 100_000)

    def test_step_budget_gives_no_verdict(self):
        """Out of budget the checker says so rather than guessing."""
        history = [w(i, i % 3, 0, 100) for i in range(30)] + [r(99, 7, 101, 102)]
        result = check(history, RegisterModel(), max_steps=50)
        self.assertIsNone(result.linearizable)
        self.assertIn("no verdict", result.message)

    def test_linearization_is_returned(self):
        """A linearizable verdict comes with a legal order of every operation."""
        history = [w(1, "a", 0, 5), w(2, "b", 1, 6), r(3, "a", 7, 8)]
        result = check(history, RegisterModel())
        self.assertEqual(result.linearization, (2, 1, 3))
        self.assertEqual(result.state, "a")

    def test_invalid_ops(self):
        """An unknown op has no completion; a known one completes after it starts."""
        self.assertRaises(ValueError, Op, 1, ("read", None), None, UNKNOWN, 0, 1)
        self.assertRaises(ValueError, Op, 1, ("read", None), None, OK, 2, 1)
        self.assertRaises(ValueError, Op, 1, ("read", None), None, "maybe", 0, 1)


class StockTests(SynchronousTestCase):
    def verdict(self, ops, initial):
        return check(ops, StockModel(initial)).linearizable

    def test_orders_until_sold_out(self):
        """Two units: an order for two succeeds, then one for one is refused."""
        self.assertTrue(self.verdict(
            [order(1, 2, PLACED, 0, 1), order(2, 1, INSUFFICIENT, 2, 3)], 2))

    def test_oversell(self):
        """One unit, two concurrent orders both placed: stock went negative."""
        self.assertFalse(self.verdict(
            [order(1, 1, PLACED, 0, 2), order(2, 1, PLACED, 1, 3)], 1))

    def test_unjustified_insufficient_stock(self):
        """A refusal for lack of stock when the stock was there is a violation."""
        self.assertFalse(self.verdict([order(1, 1, INSUFFICIENT, 0, 1)], 2))
        self.assertFalse(self.verdict(
            [order(1, 1, PLACED, 0, 1), order(2, 1, INSUFFICIENT, 2, 3)], 2))

    def test_multi_line_refusal_is_not_judged_per_product(self):
        """A multi-line order may be refused because of another product."""
        self.assertTrue(self.verdict([order(1, 1, INSUFFICIENT, 0, 1, exclusive=False)], 2))
        self.assertFalse(self.verdict([order(1, 3, PLACED, 0, 1, exclusive=False)], 2))

    def test_refusal_justified_by_an_unknown_order(self):
        """A timed-out order may have taken the stock a later order was refused."""
        self.assertTrue(self.verdict([order(1, 2, None, 0), order(2, 1, INSUFFICIENT, 1, 2)], 2))

    def test_refusal_not_justified_by_a_failed_order(self):
        """A definitely failed order took nothing."""
        history = [order(1, 2, None, 0, 0.5, status=FAIL), order(2, 1, INSUFFICIENT, 1, 2)]
        self.assertFalse(self.verdict(history, 2))

    def test_unknown_order_may_not_have_happened(self):
        """A timed-out order may have taken nothing: the stock can still be read whole."""
        self.assertTrue(self.verdict([order(1, 2, None, 0), stock_read(2, 2, 5, 6)], 2))
        self.assertTrue(self.verdict([order(1, 2, None, 0), stock_read(2, 0, 5, 6)], 2))
        self.assertFalse(self.verdict([order(1, 2, None, 0), stock_read(2, 1, 5, 6)], 2))

    def test_cancel_returns_stock(self):
        """A cancelled order gives its units back."""
        history = [order(1, 2, PLACED, 0, 1), Op(2, ("cancel", 2), OK, OK, 2, 3),
                   order(3, 2, PLACED, 4, 5)]
        self.assertTrue(self.verdict(history, 2))
        history[1] = Op(2, ("cancel", 2), "refused", OK, 2, 3)
        self.assertFalse(self.verdict(history, 2))

    def test_replace_items(self):
        """Replacing an order's units of a product gives the old ones back and takes the
        new ones in one step, or does nothing for lack of stock."""
        placed = order(1, 1, PLACED, 0, 1)
        self.assertTrue(self.verdict(
            [placed, Op(2, ("replace", 1, 2), OK, OK, 2, 3), stock_read(3, 0, 4, 5)], 2))
        self.assertFalse(self.verdict([placed, Op(2, ("replace", 1, 3), OK, OK, 2, 3)], 2))
        self.assertTrue(self.verdict(
            [placed, Op(2, ("replace", 1, 3), INSUFFICIENT, OK, 2, 3), stock_read(3, 1, 4, 5)], 2))
        self.assertFalse(self.verdict([placed, Op(2, ("replace", 1, 2), INSUFFICIENT, OK, 2, 3)], 2))

    def test_restock_compare_and_set(self):
        """An If-Match restock passes only if the stock is what its read saw."""
        ok = [stock_read(1, 0, 0, 1), Op(2, ("restock", 0, 5), OK, OK, 2, 3),
              order(3, 5, PLACED, 4, 5)]
        self.assertTrue(self.verdict(ok, 0))
        stale = [order(1, 1, PLACED, 0, 1), Op(2, ("restock", 3, 8), OK, OK, 2, 3)]
        self.assertFalse(self.verdict(stale, 3))
        conflict = [Op(1, ("restock", 3, 8), CONFLICT, OK, 0, 1), stock_read(2, 3, 2, 3)]
        self.assertTrue(self.verdict(conflict, 3))

    def test_unknown_restock(self):
        """A timed-out restock may have applied (when its precondition held) or not."""
        base = [Op(1, ("restock", 3, 8), None, UNKNOWN, 0, None)]
        self.assertTrue(self.verdict(base + [stock_read(2, 8, 2, 3)], 3))
        self.assertTrue(self.verdict(base + [stock_read(2, 3, 2, 3)], 3))
        self.assertFalse(self.verdict(base + [stock_read(2, 8, 2, 3)], 4))

    def test_read_sees_committed_orders(self):
        """A read after an acknowledged order must see it."""
        self.assertFalse(self.verdict([order(1, 1, PLACED, 0, 1), stock_read(2, 5, 2, 3)], 5))

    def test_refusal_diagnosis_names_the_operation(self):
        """The explanation shows the state and the operation that cannot be placed."""
        result = check([order(1, 1, PLACED, 0, 1), order(2, 1, INSUFFICIENT, 2, 3)],
                       StockModel(2), partition="p1")
        self.assertFalse(result.linearizable)
        self.assertEqual(result.state, 1)
        self.assertEqual(result.stuck, (2,))
        self.assertIn("order(1) -> insufficient", result.message)

    def test_model_refuses_bad_outputs(self):
        """Outputs the model does not know are a bug in the projection, not a verdict."""
        model = StockModel(1)
        self.assertRaises(ValueError, model.step, 1, Op(1, ("order", 1, True), "maybe", OK, 0, 1))
        self.assertIs(model.step(1, order(1, 2, PLACED, 0, 1)), REFUSED)


class PartitionTests(SynchronousTestCase):
    def test_partitions_are_checked_independently(self):
        """One bad key does not hide behind a good one, and results keep their keys."""
        parts = partition_by([
            ("a", w(1, 1, 0, 1)), ("a", r(2, 1, 2, 3)),
            ("b", w(3, 1, 0, 1)), ("b", r(4, 2, 2, 3)),
        ])
        results = check_partitions(parts, lambda key: RegisterModel())
        self.assertTrue(results["a"].linearizable)
        self.assertFalse(results["b"].linearizable)
        self.assertEqual(results["b"].partition, "b")


# -- against brute force ---------------------------------------------------------------------


def brute_force(ops, model):
    """Try every subset of unknown ops and every order that respects real time."""
    ops = [op for op in ops if op.status != FAIL]
    unknown = [op for op in ops if op.status == UNKNOWN]
    known = [op for op in ops if op.status == OK]
    for k in range(len(unknown) + 1):
        for chosen in itertools.combinations(unknown, k):
            members = known + list(chosen)
            for order_ in itertools.permutations(members):
                if _legal(order_, model):
                    return True
    return False


def _legal(order_, model):
    for i, a in enumerate(order_):
        for b in order_[i + 1:]:
            if b.complete is not None and b.complete < a.invoke:
                return False
    state = model.init()
    for op in order_:
        state = model.step(state, op)
        if state is REFUSED:
            return False
    return True


@st.composite
def register_histories(draw):
    n = draw(st.integers(1, 6))
    ops = []
    for i in range(n):
        start = draw(st.integers(0, 10))
        length = draw(st.integers(0, 6))
        status = draw(st.sampled_from([OK, OK, OK, UNKNOWN, FAIL]))
        end = None if status == UNKNOWN else float(start + length)
        if draw(st.booleans()):
            ops.append(Op(i, ("write", draw(st.integers(0, 2))), None, status, float(start), end))
        else:
            if status == UNKNOWN:
                status, end = OK, float(start + length)
            ops.append(Op(i, ("read", None), draw(st.sampled_from([None, 0, 1, 2])), status,
                          float(start), end))
    return ops


@st.composite
def stock_histories(draw):
    n = draw(st.integers(1, 6))
    ops = []
    for i in range(n):
        start = float(draw(st.integers(0, 10)))
        status = draw(st.sampled_from([OK, OK, OK, UNKNOWN, FAIL]))
        end = None if status == UNKNOWN else start + draw(st.integers(0, 6))
        kind = draw(st.sampled_from(["order", "cancel", "restock", "replace", "read"]))
        if kind == "order":
            inp = ("order", draw(st.integers(1, 3)), draw(st.booleans()))
            out = draw(st.sampled_from([PLACED, INSUFFICIENT]))
        elif kind == "cancel":
            inp, out = ("cancel", draw(st.integers(1, 3))), draw(st.sampled_from([OK, "refused"]))
        elif kind == "restock":
            inp = ("restock", draw(st.integers(0, 4)), draw(st.integers(0, 6)))
            out = draw(st.sampled_from([OK, CONFLICT]))
        elif kind == "replace":
            inp = ("replace", draw(st.integers(1, 3)), draw(st.integers(1, 4)))
            out = draw(st.sampled_from([OK, INSUFFICIENT]))
        else:
            inp, out = ("read",), draw(st.integers(0, 6))
            if status == UNKNOWN:
                status, end = OK, start + 1
        if status == UNKNOWN:
            out = None
        ops.append(Op(i, inp, out, status, start, end))
    return ops


class BruteForceTests(SynchronousTestCase):
    @settings(max_examples=400, deadline=None)
    @given(register_histories())
    def test_register_agrees_with_brute_force(self, ops):
        """The memoized search and exhaustive enumeration agree on registers."""
        model = RegisterModel()
        self.assertEqual(check(ops, model).linearizable, brute_force(ops, model), ops)

    @settings(max_examples=400, deadline=None)
    @given(stock_histories(), st.integers(0, 4))
    def test_stock_agrees_with_brute_force(self, ops, initial):
        """The memoized search and exhaustive enumeration agree on stock counters."""
        model = StockModel(initial)
        self.assertEqual(check(ops, model).linearizable, brute_force(ops, model), ops)


def simulate(seed, n_ops, n_processes, kind, loss=0.1):
    """A history of a correct system: each op takes effect at one instant inside its
    window, in that order; some answers are then lost (unknown)."""
    rng = random.Random(seed)
    free_at = [0.0] * n_processes
    planned = []
    for i in range(n_ops):
        p = rng.randrange(n_processes)
        start = free_at[p] + rng.random()
        point = start + rng.random() * 3
        end = point + rng.random() * 3
        free_at[p] = end
        planned.append((point, i, p, start, end))
    planned.sort()
    value = None if kind == "register" else 10
    ops = []
    for point, i, p, start, end in planned:
        lost = rng.random() < loss
        if kind == "register":
            if rng.random() < 0.5:
                value = "v%d" % i
                op = Op(i, ("write", value), None, OK, start, end, p)
            else:
                op = Op(i, ("read", None), value, OK, start, end, p)
                lost = False
        else:
            choice = rng.random()
            if choice < 0.5:
                n = rng.randint(1, 3)
                out = PLACED if value >= n else INSUFFICIENT
                value -= n if value >= n else 0
                op = Op(i, ("order", n, True), out, OK, start, end, p)
            elif choice < 0.65:
                n = rng.randint(1, 3)
                value += n
                op = Op(i, ("cancel", n), OK, OK, start, end, p)
            elif choice < 0.75:
                old = value if rng.random() < 0.7 else value + 1
                out = OK if old == value else CONFLICT
                if out == OK:
                    value = old + 5
                op = Op(i, ("restock", old, old + 5), out, OK, start, end, p)
            else:
                op = Op(i, ("read",), value, OK, start, end, p)
                lost = False
        if lost:
            op = Op(op.id, op.input, None, UNKNOWN, op.invoke, None, p)
        ops.append(op)
    return ops


class SimulatedTests(SynchronousTestCase):
    def test_correct_executions_are_linearizable(self):
        """Histories produced by an atomic execution pass, for both models, with lost
        answers, at sizes like a chaos run's partitions."""
        for seed in range(20):
            ops = simulate(seed, 300, 8, "register")
            self.assertTrue(check(ops, RegisterModel()).linearizable, seed)
            ops = simulate(seed, 300, 8, "stock")
            self.assertTrue(check(ops, StockModel(10)).linearizable, seed)

    def test_a_corrupted_read_is_caught(self):
        """Changing one read of a long correct history to a value nobody wrote fails."""
        ops = simulate(3, 300, 8, "stock")
        index = max(i for i, op in enumerate(ops) if op.input[0] == "read")
        bad = ops[index]
        ops[index] = Op(bad.id, bad.input, bad.output + 1000, OK, bad.invoke, bad.complete)
        self.assertFalse(check(ops, StockModel(10)).linearizable)
