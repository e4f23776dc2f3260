"""What an idle ``twistd raftnode --app kv`` process loads (its resident memory).

pyOpenSSL with cryptography (12 MiB) and Klein with werkzeug (5 MiB) are not needed by a
key-value node until something asks for them; these tests keep it that way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from tests import REPO_ROOT
from txraft.tools.localcluster import free_port
from txraft.plugins import raftnode



class FakeSys:
    def __init__(self, modules):
        self.modules = modules


class LeaveOutTLSTests(SynchronousTestCase):
    def test_marks_openssl_absent_before_networking(self):
        """Before Twisted's networking is loaded, pyOpenSSL is marked absent, so Twisted
        takes its no-TLS path."""
        fake = FakeSys({"twisted": object()})
        self.patch(raftnode, "sys", fake)
        self.assertTrue(raftnode._leave_out_tls())
        self.assertIsNone(fake.modules["OpenSSL"])

    def test_leaves_a_process_with_networking_alone(self):
        """Once TCP, endpoints or pyOpenSSL are loaded (a test run, an embedding program),
        nothing is changed: TLS may already be in use."""
        for loaded in ("twisted.internet.tcp", "twisted.internet.endpoints", "OpenSSL"):
            module = object()
            fake = FakeSys({loaded: module})
            self.patch(raftnode, "sys", fake)
            self.assertFalse(raftnode._leave_out_tls())
            self.assertEqual(fake.modules, {loaded: module})


CHILD = textwrap.dedent(
    """
    import json, sys
    from txraft.plugins.raftnode import Options
    options = Options()
    options.parseOptions(sys.argv[1:])
    from twisted.internet import reactor
    from twisted.internet.task import Clock
    from tests.fakes import FakeRaftNode
    app = options["application"]
    node = FakeRaftNode(app.make_state_machine(options["data-dir"]))
    resource = app.make_resource(node, Clock(), None)
    treq_before = "treq" in sys.modules
    from treq.testing import StubTreq  # the test's client, not the node's
    stub = StubTreq(resource)
    codes = []
    for method, path in (("PUT", "/kv/a"), ("GET", "/kv/a"), ("GET", "/raft/status"),
                         ("GET", "/health"), ("GET", "/ready")):
        d = stub.request(method, "http://n1" + path, data=b"v")
        stub.flush()
        d.addCallback(lambda response: codes.append(response.code))
    loaded = [name for name in ("OpenSSL", "cryptography", "klein", "werkzeug")
              if sys.modules.get(name) is not None]
    if treq_before:
        loaded.append("treq")
    print(json.dumps({"codes": codes, "loaded": sorted(loaded)}))
    """
)


class IdleNodeImportsTests(SynchronousTestCase):
    def run_child(self, *extra):
        data = tempfile.mkdtemp(prefix="txraft-imports-")
        self.addCleanup(subprocess.call, ["rm", "-rf", data])
        args = ["--app", "kv", "--port", str(free_port()), "--data-dir", data] + list(extra)
        env = dict(os.environ, PYTHONPATH=REPO_ROOT)
        out = subprocess.run([sys.executable, "-c", CHILD] + args, cwd=REPO_ROOT, env=env,
                             capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr.decode("utf-8", "replace"))
        return json.loads(out.stdout.decode("ascii").splitlines()[-1])

    def test_kv_node_loads_no_tls_and_no_klein(self):
        """A kv node that parsed its options and answered key-value, status, health and
        readiness requests has loaded neither pyOpenSSL nor Klein, werkzeug or treq."""
        result = self.run_child()
        self.assertEqual(result["codes"], [204, 200, 200, 200, 200])
        self.assertEqual(result["loaded"], [])

    def test_with_tls_loads_it(self):
        """--with-tls keeps Twisted's TLS support, for applications that need it."""
        result = self.run_child("--with-tls")
        self.assertIn("OpenSSL", result["loaded"])
