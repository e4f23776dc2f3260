"""Cost of the per-datagram path: codec, envelope, HMAC, in one process, no sockets.

Measures, for AppendEntries carrying 1 and 16 entries of 64 bytes: encode alone, decode
alone, and encode + envelope + HMAC + write + receive + verify + replay check + decode +
deliver through two ``UDPTransport`` objects joined by a fake datagram transport (with and
without a cluster secret).  Also the cost of one HMAC-SHA256 alone, three ways.

Run:  python bench/transport_bench.py [--quick]   (from any directory: it imports the txraft
of the checkout it lives in)
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet.task import Clock  # noqa: E402

from txraft.runtime.codec import decode_message, encode_message  # noqa: E402
from txraft.core.messages import AppendEntries, Entry  # noqa: E402
from txraft.runtime.transport import UDPTransport, _mac_pads  # noqa: E402

ADDRESSES = {"node1": ("10.0.0.1", 7000), "node2": ("10.0.0.2", 7000)}


class Wire:
    """A fake datagram transport that hands each datagram straight to the receiver."""

    def __init__(self, receiver, source):
        self.receiver = receiver
        self.source = source

    def write(self, data, addr):
        self.receiver.datagramReceived(data, self.source)


def pair(secret):
    clock = Clock()
    delivered = []
    a = UDPTransport(node_id="node1", cluster_id="shop", peers=ADDRESSES, secret=secret,
                     deliver=delivered.append, reactor=clock, incarnation=1,
                     log_interval_seconds=None)
    b = UDPTransport(node_id="node2", cluster_id="shop", peers=ADDRESSES, secret=secret,
                     deliver=lambda message: None, reactor=clock, incarnation=2,
                     log_interval_seconds=None)
    a.makeConnection(Wire(b, ADDRESSES["node1"]))
    b.makeConnection(Wire(a, ADDRESSES["node2"]))
    return a, b


def append_entries(n):
    entries = tuple(Entry(1000 + i, 7, bytes(64)) for i in range(n))
    return AppendEntries(7, "node1", "node2", 999, 7, entries, 1000, 42)


def best_of(fn, number, repeat):
    """Best time per call in microseconds over ``repeat`` runs of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best * 1e6


def report(name, micros):
    print("  %-44s %8.2f us   %10.0f /s" % (name, micros, 1e6 / micros))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="best of 3 runs of 2,000 calls (else of 7 runs of 20,000)")
    quick = parser.parse_args().quick
    number, repeat = (2000, 3) if quick else (20000, 7)
    print("txraft transport benchmark")
    print("  machine: %s, %s, %d CPUs" % (platform.platform(), platform.processor() or
                                         platform.machine(), os.cpu_count()))
    print("  python:  %s %s" % (platform.python_implementation(), platform.python_version()))
    print("  command: %s %s" % (sys.executable, " ".join(sys.argv)))
    print("  best of %d runs of %d calls each" % (repeat, number))

    for n in (1, 16):
        message = append_entries(n)
        data = encode_message(message)
        print("\nAppendEntries with %d x 64-byte entries (%d bytes encoded)" % (n, len(data)))
        report("encode", best_of(lambda: encode_message(message), number, repeat))
        report("decode", best_of(lambda: decode_message(data), number, repeat))
        for secret in (b"cluster secret", None):
            a, b = pair(secret)
            label = "send -> receive -> deliver (%s)" % ("HMAC" if secret else "no secret")
            report(label, best_of(lambda: a.send(message), number, repeat))
            assert b.stats["delivered"] == b.stats["received"], b.stats

    print("\nHMAC-SHA256 alone, one datagram")
    key = b"k" * 32
    inner, outer = _mac_pads(key)
    template = hmac.new(key, digestmod=hashlib.sha256)
    for size in (200, 1400):
        body = bytes(size)

        def pads():
            i = inner.copy()
            i.update(body)
            o = outer.copy()
            o.update(i.digest())
            return o.digest()

        def hmac_copy():
            m = template.copy()
            m.update(body)
            return m.digest()

        report("%d B: pre-keyed hashlib pads (used)" % size, best_of(pads, number, repeat))
        report("%d B: hmac.new(...).copy()" % size, best_of(hmac_copy, number, repeat))
        report("%d B: hmac.digest(key, msg, 'sha256')" % size,
               best_of(lambda: hmac.digest(key, body, "sha256"), number, repeat))


if __name__ == "__main__":
    main()
