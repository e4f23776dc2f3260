"""The import direction, enforced: the Raft core is sans-I/O, state machines are plain
Python, and txraft never imports the application.

STYLE.md principles 1 and 5: the core (every module of ``txraft/core/``), the runtime
pieces the simulator shares with the node (``txraft/runtime/executor.py``,
``transfer.py`` and the identity guard ``trust.py``) and the simulator (``txraft/testing/sim*.py``) import nothing that
reaches a clock, a socket, a file, a thread or the global random module, so the same
code runs deterministically under the simulator and in production; and no module under
``txraft/`` imports ``shop``, directly or through another module.

STYLE.md principle 9: the state-machine modules (``txraft/apps/*.py`` but the
``*_http.py`` ones, ``shop/state.py`` and ``shop/schema.py``) import neither Twisted,
Klein, treq, werkzeug nor the web layer (``txraft.http``), directly or through another
module, even while they open a database, apply commands and take snapshots."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from typing import Iterator, List, Sequence, Tuple

from twisted.trial.unittest import SynchronousTestCase

import txraft
from tests import REPO_ROOT

PACKAGE = os.path.dirname(os.path.abspath(txraft.__file__))

# Whole modules (and their submodules) the pure layer must not import.
FORBIDDEN = (
    "twisted", "socket", "time", "os", "threading", "asyncio", "shop", "select",
    "selectors", "subprocess", "multiprocessing", "datetime", "signal", "io", "pathlib",
    "sqlite3", "tempfile", "shutil", "urllib", "http",
)

#: Runtime modules the simulator runs as they are, so they must be pure too.
PURE_RUNTIME = ("executor.py", "transfer.py", "trust.py")

#: What a state machine must not import, nor anything it imports (whole packages).
NOT_IN_STATE_MACHINES = ("twisted", "klein", "treq", "werkzeug", "txraft.http")


def pure_modules() -> List[str]:
    core = sorted(
        os.path.join(PACKAGE, "core", name) for name in os.listdir(os.path.join(PACKAGE, "core"))
        if name.endswith(".py")
    )
    testing = os.path.join(PACKAGE, "testing")
    sims = sorted(
        os.path.join(testing, name) for name in os.listdir(testing)
        if name.startswith("sim") and name.endswith(".py")
    )
    runtime = [os.path.join(PACKAGE, "runtime", name) for name in PURE_RUNTIME]
    return core + runtime + sims


def state_machine_modules() -> List[str]:
    """The plain-Python modules: ``txraft/apps/`` but its HTTP APIs, the results
    vocabulary they share with the web layer, the shop's state machine and its data rules."""
    apps = os.path.join(PACKAGE, "apps")
    plain = sorted(
        os.path.join(apps, name) for name in os.listdir(apps)
        if name.endswith(".py") and name != "__init__.py" and not name.endswith("_http.py")
    )
    shop = os.path.join(REPO_ROOT, "shop")
    return plain + [os.path.join(PACKAGE, "results.py"), os.path.join(shop, "state.py"), os.path.join(shop, "schema.py")]


def module_name(path: str) -> str:
    return os.path.relpath(path, REPO_ROOT)[: -len(".py")].replace(os.sep, ".")


def within(module: str, packages: Sequence[str]) -> bool:
    """Whether ``module`` is one of ``packages`` or inside one of them."""
    return any(module == p or module.startswith(p + ".") for p in packages)


def loaded_by(code: str, packages: Sequence[str]) -> List[str]:
    """The modules of ``packages`` that running ``code`` in a fresh interpreter (from the
    checkout) leaves in ``sys.modules``."""
    script = code + textwrap.dedent("""
        import json, sys
        print(json.dumps(sorted(sys.modules)))
        """)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env,
                         capture_output=True, timeout=120)
    if out.returncode != 0:
        raise AssertionError(out.stderr.decode("utf-8", "replace"))
    modules = json.loads(out.stdout.decode("utf-8").splitlines()[-1])
    return [m for m in modules if within(m, packages)]


#: Imports every state-machine module, then uses the two state machines the way the
#: runtime does: lazy imports on the way would show.
USE_STATE_MACHINES = textwrap.dedent("""
    import os, sys, tempfile
    for name in sys.argv[1:]:
        __import__(name)
    from txraft.apps import kv
    from txraft.core.messages import Entry
    from shop import state
    folder = tempfile.mkdtemp()
    try:
        kv_sm = kv.open_state_machine(os.path.join(folder, "kv"))
        shop_sm = state.open_state_machine(os.path.join(folder, "shop"))
        product = {"name": "Mug", "price_cents": 100, "stock": 1}
        for sm, command in ((kv_sm, kv.encode_keyed(kv.encode_put(b"k", b"v"), 1, "w1")),
                            (shop_sm, state.encode_command("product.create", 1, data=product,
                                                           key="c1", fp=bytes(32)))):
            sm.apply_batch([Entry(1, 1, command), Entry(2, 1, b"not a command")])
            index, term, read = sm.begin_snapshot()
            sm.restore(index, term, read())
            sm.close()
    finally:
        import shutil
        shutil.rmtree(folder)
    """)


def imports(path: str) -> Iterator[Tuple[int, str, Tuple[str, ...]]]:
    """Yield (line, module, imported names) for every import in the file."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            module = "." * node.level + (node.module or "")
            yield node.lineno, module, tuple(alias.name for alias in node.names)


def random_uses(path: str) -> Iterator[Tuple[int, str]]:
    """Yield (line, attribute) for every ``random.<attr>`` other than ``Random``."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "random"
            and node.attr != "Random"
        ):
            yield node.lineno, node.attr


def top(module: str) -> str:
    return module.lstrip(".").split(".")[0]


class LayeringTests(SynchronousTestCase):
    def test_pure_modules_exist(self):
        """The list of checked modules is not silently empty (the test would pass)."""
        names = [os.path.relpath(p, PACKAGE) for p in pure_modules()]
        for expected in ("core/raft.py", "core/log.py", "core/messages.py", "core/progress.py",
                         "runtime/executor.py", "runtime/transfer.py", "testing/sim.py"):
            self.assertIn(expected, names)

    def test_core_and_simulator_import_no_io(self):
        """STYLE.md principle 1 (sans-I/O): the core and the simulator import nothing
        from Twisted, socket, time, os, threading, asyncio or other I/O, nor shop."""
        bad = []
        for path in pure_modules():
            for line, module, _ in imports(path):
                if top(module) in FORBIDDEN:
                    bad.append("%s:%d imports %s" % (os.path.relpath(path, PACKAGE), line, module))
        self.assertEqual(bad, [])

    def test_simulator_loads_no_io_at_all(self):
        """Transitively: importing the simulator (and with it the core, the executor and
        the snapshot transfer it shares with the node) loads no Twisted module."""
        code = ("import sys, txraft.testing.sim, txraft.testing.sim_faults, "
                "txraft.testing.sim_wipes; "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('twisted', 'klein', 'treq', 'sqlite3')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             cwd=os.path.dirname(PACKAGE), check=True)
        self.assertEqual(out.stdout.strip(), "[]", out.stderr)

    def test_core_does_not_import_random(self):
        """STYLE.md principle 6: the core draws randomness only from the injected
        source; it does not import the random module at all."""
        bad = []
        for path in pure_modules():
            name = os.path.relpath(path, PACKAGE)
            if not name.startswith("core"):
                continue
            for line, module, _ in imports(path):
                if top(module) == "random":
                    bad.append("%s:%d imports %s" % (name, line, module))
        self.assertEqual(bad, [])

    def test_simulator_uses_only_seeded_random(self):
        """STYLE.md principle 6: the simulator may construct ``random.Random(seed)`` but
        never touches the global random functions (``from random import randint`` or
        ``random.randint``), whose state no seed controls."""
        bad = []
        for path in pure_modules():
            rel = os.path.relpath(path, PACKAGE)
            for line, module, names in imports(path):
                if top(module) == "random" and set(names) - {"Random"}:
                    bad.append("%s:%d from random import %s" % (rel, line, ", ".join(names)))
            for line, attr in random_uses(path):
                bad.append("%s:%d uses random.%s" % (rel, line, attr))
        self.assertEqual(bad, [])

    def test_library_never_imports_the_application(self):
        """STYLE.md principle 5: no module under txraft/ imports shop."""
        bad = []
        for root, _, files in os.walk(PACKAGE):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(root, name)
                    for line, module, _ in imports(path):
                        if top(module) == "shop":
                            bad.append("%s:%d imports %s"
                                       % (os.path.relpath(path, PACKAGE), line, module))
        self.assertEqual(bad, [])

    def test_library_never_loads_the_application(self):
        """STYLE.md principle 5, transitively: importing every module of txraft loads no
        module of shop."""
        code = textwrap.dedent("""
            import pkgutil, txraft
            for module in pkgutil.walk_packages(txraft.__path__, "txraft."):
                __import__(module.name)
            """)
        self.assertEqual(loaded_by(code, ("shop",)), [])

    def test_state_machine_modules_exist(self):
        """The list of plain-Python modules is the expected one (not silently empty)."""
        names = [module_name(p) for p in state_machine_modules()]
        for expected in ("txraft.apps.sqlite", "txraft.results", "txraft.apps.idempotency",
                         "txraft.apps.kv", "shop.state", "shop.schema"):
            self.assertIn(expected, names)
        self.assertNotIn("txraft.apps.kv_http", names)

    def test_state_machines_import_no_twisted_and_no_web(self):
        """STYLE.md principle 9: no state-machine module imports Twisted, Klein, treq,
        werkzeug or txraft.http."""
        bad = []
        for path in state_machine_modules():
            for line, module, _ in imports(path):
                if within(module, NOT_IN_STATE_MACHINES):
                    bad.append("%s:%d imports %s" % (os.path.relpath(path, REPO_ROOT), line,
                                                     module))
        self.assertEqual(bad, [])

    def test_state_machines_load_no_twisted_and_no_web(self):
        """STYLE.md principle 9, transitively: a process that imports every state-machine
        module, then opens the key-value and shop state machines, applies commands (with
        an idempotency key, and one that does not decode), snapshots and restores them,
        has loaded no module of Twisted, Klein, treq, werkzeug or txraft.http."""
        code = "import sys\nsys.argv[1:] = %r\n" % (
            [module_name(p) for p in state_machine_modules()],) + USE_STATE_MACHINES
        self.assertEqual(loaded_by(code, NOT_IN_STATE_MACHINES), [])

    def test_state_machine_checks_catch_a_violation(self):
        """The checks above can fail: a module importing twisted, klein or the web layer
        is reported, and so is a process that loads them (or shop) through another
        module."""
        sample = self.mktemp()
        with open(sample, "w", encoding="utf-8") as f:
            f.write("from twisted.internet import defer\nimport klein\nimport sqlite3\n"
                    "from txraft.http.errors import HTTPError\nimport txraft.httpx\n")
        found = [module for _, module, _ in imports(sample)]
        self.assertEqual([m for m in found if within(m, NOT_IN_STATE_MACHINES)],
                         ["twisted.internet", "klein", "txraft.http.errors"])
        # txraft.apps.kv_http imports no Twisted itself, but what it imports does.
        loaded = loaded_by("import txraft.apps.kv_http\n", NOT_IN_STATE_MACHINES)
        self.assertIn("twisted", loaded)
        self.assertIn("txraft.http", loaded)
        self.assertIn("shop.state", loaded_by("import shop.api\n", ("shop",)))

    def test_checker_catches_a_forbidden_import(self):
        """The checks above can fail: a module importing time, twisted or the global
        random functions is reported."""
        sample = self.mktemp()
        with open(sample, "w", encoding="utf-8") as f:
            f.write("import time\nfrom twisted.internet import reactor\n"
                    "from random import randint\nimport random\nx = random.random()\n")
        found = [module for _, module, _ in imports(sample)]
        self.assertEqual([m for m in found if top(m) in FORBIDDEN],
                         ["time", "twisted.internet"])
        self.assertEqual([attr for _, attr in random_uses(sample)], ["random"])
