"""What one HTTP client can cost a node: a big upload, a trickled head, half-sent requests.

Starts ``twistd -n raftnode --app kv`` alone on free loopback ports (the txraft on
PYTHONPATH), then measures with raw sockets:

* a 40 MB upload with a Content-Length: the time to the first answer byte, its status,
  and the largest deleted (spooled) file the node held open meanwhile;
* a request head sent one byte per second: how long the node keeps the connection;
* 3000 connections each holding a half-sent request head: the node's resident memory
  before and after.

Usage: PYTHONPATH=<checkout> python bench/http_limits.py [--trickle-cap 40] [-- twistd options]
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def spooled_bytes(pid: int) -> int:
    """The size of the largest deleted file the process holds open."""
    largest = 0
    fd_dir = "/proc/%d/fd" % pid
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
            if target.endswith("(deleted)"):
                largest = max(largest, os.stat(os.path.join(fd_dir, name)).st_size)
        except OSError:
            pass
    return largest


def start_node(extra):
    port = free_port()
    data = tempfile.mkdtemp(prefix="http-limits-")
    twistd = ("import sys; from twisted.scripts.twistd import run; sys.argv = ['twistd', "
              "'-n', '--pidfile=', '--logfile=%s/log'] + sys.argv[1:]; run()" % data)
    proc = subprocess.Popen(
        [sys.executable, "-c", twistd, "raftnode", "--app", "kv", "--port", str(port),
         "--data-dir", data] + extra, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                if s.recv(100):
                    return proc, port, data
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the node did not start (its log: %s/log)" % data)


def upload(pid: int, port: int, size: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setblocking(False)
    head = (b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % size)
    pending = head
    sent = 0
    chunk = b"x" * 65536
    started = time.monotonic()
    answer = b""
    spooled = 0
    while time.monotonic() - started < 120:
        readable, writable, _ = select.select([s], [s] if sent < size else [], [], 1)
        if readable:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                data = b""
            answer += data
            break  # an answer, or the node closed the connection
        if writable:
            out = pending or chunk[: size - sent]
            try:
                n = s.send(out)
            except (BrokenPipeError, ConnectionResetError):
                break
            if pending:
                pending = pending[n:]
            else:
                sent += n
            spooled = max(spooled, spooled_bytes(pid))
    elapsed = time.monotonic() - started
    spooled = max(spooled, spooled_bytes(pid))
    s.close()
    print("upload of %d bytes: answer %r after %.2f s, %d body bytes sent, largest spooled "
          "file %d bytes" % (size, answer.split(b"\r\n", 1)[0], elapsed, sent, spooled))


def declared_nothing_sent(port: int) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"PUT /kv/big HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n")
    started = time.monotonic()
    try:
        answer = s.recv(200)
    except socket.timeout:
        answer = b"(nothing within 5 s)"
    print("50 MB declared, none sent: %r after %.2f s"
          % (answer.split(b"\r\n", 1)[0], time.monotonic() - started))
    s.close()


def trickle(port: int, cap: float) -> None:
    s = socket.create_connection(("127.0.0.1", port), timeout=1)
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
    started = time.monotonic()
    closed = None
    for byte in head:
        try:
            s.send(bytes([byte]))
        except OSError:
            closed = time.monotonic() - started
            break
        try:
            s.recv(200)  # an answer or the end: either way the node is done with us
            closed = time.monotonic() - started
            break
        except socket.timeout:
            pass
        if time.monotonic() - started > cap:
            break
    s.close()
    if closed is None:
        print("trickled head (1 byte/s): still open after %.0f s (gave up)" % (cap,))
    else:
        print("trickled head (1 byte/s): closed by the node after %.1f s" % (closed,))


def half_sent(pid: int, port: int, count: int) -> None:
    before = rss_kib(pid)
    sockets = []
    failed = 0
    for i in range(count):
        try:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"PUT /kv/k%d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\nX-Pad: " % i + b"p" * 1000)
            sockets.append(s)
        except OSError:
            failed += 1
    time.sleep(2)
    after = rss_kib(pid)
    states = {}
    for s in sockets:
        s.setblocking(False)
        try:
            data = s.recv(100)
            state = data.split(b"\r\n", 1)[0].decode("latin-1") if data else "closed"
        except BlockingIOError:
            state = "open, no answer"
        except OSError as e:
            state = type(e).__name__
        states[state] = states.get(state, 0) + 1
    print("%d half-sent requests (%d could not connect): RSS %d -> %d KiB (+%d KiB) after "
          "2 s; connections: %s" % (count, failed, before, after, after - before,
                                    ", ".join("%s: %d" % kv for kv in sorted(states.items()))))
    for s in sockets:
        s.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trickle-cap", type=float, default=40)
    parser.add_argument("extra", nargs="*")
    args = parser.parse_args()
    proc, port, data = start_node(args.extra)
    try:
        upload(proc.pid, port, 40 * 1000 * 1000)
        declared_nothing_sent(port)
        trickle(port, args.trickle_cap)
        half_sent(proc.pid, port, 3000)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
