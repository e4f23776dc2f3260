"""``twistd raftnode`` refuses to run a cluster open: several members need a secret
(unless ``--insecure-no-secret`` says so), and a secret must be long and not public.

Without a secret nothing authenticates a datagram: one forged datagram moved a peer's
address and left the real peer's datagrams dropped as replayed until a restart.
"""

from __future__ import annotations

import io
import os

from twisted.python import usage
from twisted.trial.unittest import SynchronousTestCase

from txraft.plugins import raftnode

from tests.fakes import set_environ

TWO = "n1=127.0.0.1:7001,n2=127.0.0.1:7002"
GOOD = "0123456789abcdef"  # 16 bytes: the shortest accepted


class SecretOptionsTests(SynchronousTestCase):
    def setUp(self):
        self.patch(raftnode, "_check_port_free", lambda *args: None)
        self.dir = os.path.abspath(self.mktemp())
        self.environ(None)

    def environ(self, value):
        set_environ(self, raftnode.SECRET_ENV, value)

    def secret_file(self, content: bytes) -> str:
        path = os.path.abspath(self.mktemp())
        with open(path, "wb") as f:
            f.write(content)
        return path

    def parse(self, *args):
        options = raftnode.Options()
        options.parseOptions(["--app", "kv", "--data-dir", self.dir, "--port", "7001"]
                             + list(args))
        return options

    def refusal(self, *args) -> str:
        with self.assertRaises(usage.UsageError) as caught:
            self.parse(*args)
        line = str(caught.exception)
        self.assertNotIn("\n", line)
        return line

    def test_several_members_without_a_secret_are_refused(self):
        """--members naming two members, and neither --secret-file nor TXRAFT_SECRET:
        one line saying how to make a secret, and that --insecure-no-secret exists."""
        line = self.refusal("--members", TWO)
        self.assertIn("needs a secret", line)
        self.assertIn("secrets.token_hex", line)
        self.assertIn("--secret-file", line)
        self.assertIn("--insecure-no-secret", line)

    def test_insecure_no_secret_runs_it_open(self):
        """--insecure-no-secret is the explicit way to run several members without one."""
        options = self.parse("--members", TWO, "--insecure-no-secret")
        self.assertIsNone(options["secret"])
        self.assertEqual(sorted(options["member_map"]), ["n1", "n2"])

    def test_a_single_node_needs_no_secret(self):
        """`twistd raftnode` alone (no --members), and --members naming only this node,
        start without a secret: nobody else's datagrams are ever believed."""
        self.assertIsNone(self.parse()["secret"])
        self.dir = os.path.abspath(self.mktemp())
        self.assertIsNone(self.parse("--members", "n1=127.0.0.1:7001")["secret"])

    def test_several_members_with_a_secret(self):
        """A good secret from the file or the environment is taken as it is."""
        options = self.parse("--members", TWO,
                             "--secret-file", self.secret_file(GOOD.encode() + b"\n"))
        self.assertEqual(options["secret"], GOOD.encode())
        self.environ(GOOD + "x")
        self.dir = os.path.abspath(self.mktemp())
        self.assertEqual(self.parse("--members", TWO)["secret"], (GOOD + "x").encode())

    def test_short_secret_file_is_refused(self):
        """A --secret-file holding fewer than 16 bytes is refused, naming the file and a
        command that makes a good one, even on a single node."""
        path = self.secret_file(b"short-secret\n")
        for args in (("--members", TWO), ()):
            line = self.refusal("--secret-file", path, *args)
            self.assertIn(path, line)
            self.assertIn("12 bytes, fewer than 16", line)
            self.assertIn("secrets.token_hex", line)

    def test_short_secret_in_the_environment_is_refused(self):
        """TXRAFT_SECRET shorter than 16 bytes is refused the same way."""
        self.environ(GOOD[:-1])
        line = self.refusal("--members", TWO)
        self.assertIn("$TXRAFT_SECRET", line)
        self.assertIn("15 bytes, fewer than 16", line)
        self.assertIn("export TXRAFT_SECRET=", line)

    def test_the_published_development_secret_is_refused(self):
        """The value txraft's .env once shipped is public: refused from either source."""
        published = "local-development-only-not-a-secret-3b9f1c7e"
        self.environ(published)
        self.assertIn("known to anyone", self.refusal("--members", TWO))
        self.environ(None)
        line = self.refusal("--members", TWO, "--secret-file",
                            self.secret_file(published.encode() + b"\n"))
        self.assertIn("known to anyone", line)

    def test_short_admin_token_is_refused(self):
        """The fault endpoint's token is held to the same rule."""
        line = self.refusal("--admin-token-file", self.secret_file(b"token\n"))
        self.assertIn("--admin-token-file", line)
        self.assertIn("fewer than 16", line)

    def test_a_joined_directory_needs_its_secret(self):
        """A node that joined a cluster (its directory records several members) is
        refused when started again without the secret."""
        from txraft.core.config import Configuration
        from txraft.runtime.identity import write_atomically
        from txraft.runtime.join import save_joined

        secret = self.secret_file(GOOD.encode())
        self.parse("--id", "n2", "--secret-file", secret)  # makes the identity
        save_joined(self.dir, 3, Configuration.of_voters(["n1", "n2"]), write_atomically)
        self.assertIn("needs a secret", self.refusal("--id", "n2"))
        self.assertEqual(self.parse("--id", "n2", "--secret-file", secret)["joined"][0], 3)

    def test_under_twistd_the_refusal_is_one_line_on_stderr(self):
        """Parsed by twistd's own ServerOptions (whose handler would print the whole usage
        on stdout first), a refusal is one line on stderr and exit status 2."""
        from twisted.scripts.twistd import ServerOptions

        stderr = io.StringIO()
        self.patch(raftnode.sys, "stderr", stderr)
        with self.assertRaises(SystemExit) as caught:
            ServerOptions().parseOptions(["-n", "--pidfile=", "raftnode", "--app", "kv",
                                          "--data-dir", self.dir, "--port", "7001",
                                          "--members", TWO])
        self.assertEqual(caught.exception.code, 2)
        lines = stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith("twistd raftnode: a cluster of several members"))
