"""The chaos harness's token for the nodes' fault endpoint, without processes."""

from __future__ import annotations

import os
import random
import stat

from twisted.trial.unittest import SynchronousTestCase

from txraft.tools.chaos import harness
from txraft.tools.chaos.harness import ChaosRun, Config


class Started(Exception):
    """Raised by the stand-in cluster: the run stops before any process starts."""


class AdminTokenTests(SynchronousTestCase):
    def token_of_a_run(self, seed: int) -> str:
        seen = []

        def cluster(size, root, **options):
            seen.append(options["extra_args"])
            raise Started()

        self.patch(harness, "LocalCluster", cluster)
        root = os.path.abspath(self.mktemp())
        run = ChaosRun(Config(nodes=3, seed=seed, root=root), log=lambda *a: None)
        self.assertRaises(Started, run.execute)
        path = os.path.join(root, "admin.token")
        [args] = seen
        self.assertEqual(args[args.index("--admin-token-file") + 1], path)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        with open(path) as f:
            return f.read().strip()

    def test_the_token_is_not_a_function_of_the_seed(self):
        """Two runs with one seed get different tokens, neither derived from the seed
        (which is printed and saved with every failed run), each 128 bits of hex."""
        first, second = self.token_of_a_run(7), self.token_of_a_run(7)
        self.assertNotEqual(first, second)
        for token in (first, second):
            self.assertRegex(token, r"\A[0-9a-f]{32}\Z")
            self.assertNotEqual(token, "%032x" % random.Random(7).getrandbits(128))
