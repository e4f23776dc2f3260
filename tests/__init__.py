"""txraft's tests: ``unit/`` (no process is started) and ``integration/`` (real
processes), both run by ``python -m twisted.trial tests``."""

import os

#: The checkout the tests run from.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
