"""Applications that ship with txraft and what every application shares.

Plain Python, no Twisted and no HTTP (``tests/unit/test_layering.py`` checks it):
``sqlite`` (the SQLite state-machine base), ``results`` (``Result``, ``Refusal``, the
error document), ``idempotency`` (``Idempotency-Key`` records), ``kv`` (the key-value
state machine) and ``application`` (``Application``).  The ``*_http`` modules are the
web side: ``kv_http``, the key-value store's HTTP API.
"""
