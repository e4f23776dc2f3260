"""The import direction, enforced: the Raft core is sans-I/O and txraft never imports
the application.

STYLE.md principles 1 and 5: the core (every module of ``txraft/core/``), the runtime
pieces the simulator shares with the node (``txraft/runtime/executor.py`` and
``transfer.py``) and the simulator (``txraft/testing/sim*.py``) import nothing that
reaches a clock, a socket, a file, a thread or the global random module, so the same
code runs deterministically under the simulator and in production; and no module under
``txraft/`` imports ``shop``.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from typing import Iterator, List, Tuple

from twisted.trial.unittest import SynchronousTestCase

import txraft

PACKAGE = os.path.dirname(os.path.abspath(txraft.__file__))

# Whole modules (and their submodules) the pure layer must not import.
FORBIDDEN = (
    "twisted", "socket", "time", "os", "threading", "asyncio", "shop", "select",
    "selectors", "subprocess", "multiprocessing", "datetime", "signal", "io", "pathlib",
    "sqlite3", "tempfile", "shutil", "urllib", "http",
)

#: Runtime modules the simulator runs as they are, so they must be pure too.
PURE_RUNTIME = ("executor.py", "transfer.py")


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
        code = ("import sys, txraft.testing.sim, txraft.testing.sim_faults; "
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
