"""``twistd raftnode``: the composition root that picks the real parts.

Everything below this module is injected (reactor, random source, storage, transport,
application); only here are the real ones chosen.  Misconfiguration is reported by
``Options.postOptions`` as one line (a ``UsageError``), before anything starts.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import random
import socket
import sys
import time
from typing import Any, Dict, Optional, Tuple

from twisted.application import internet, service
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer
from twisted.python import usage
from twisted.logger import Logger

from txraft.errors import ConfigError, RaftError
from txraft.runtime.node import Member, Timing

log = Logger()

#: Applications known by a short name; anything else is taken as ``module:attribute``.
#: Names, not imports: the library never imports the shop.
APPLICATIONS = {"kv": "txraft.apps.kv_http:application", "shop": "shop.app:application"}

SECRET_ENV = "TXRAFT_SECRET"

#: The shortest cluster secret (or admin token) accepted, in bytes.
MIN_SECRET_BYTES = 16

#: One command that prints a good secret, for the refusals to name.
MAKE_SECRET = 'python3 -c "import secrets; print(secrets.token_hex(32))"'

#: Secrets published with txraft (the value its .env once shipped): known to everyone.
PUBLISHED_SECRETS = frozenset({b"local-development-only-not-a-secret-3b9f1c7e"})


def parse_members(text: str, default_http_offset: int = 0) -> Dict[str, Member]:
    """Parse ``id=host:port[:http_port],...``; the HTTP port defaults to the UDP port."""
    members: Dict[str, Member] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        node_id, sep, address = item.partition("=")
        node_id = node_id.strip()
        if not sep or not node_id or not address:
            raise ConfigError("member %r is not of the form id=host:port[:http_port]" % item)
        if address.startswith("["):  # [v6]:port[:http]
            host, _, rest = address[1:].partition("]")
            parts = rest.lstrip(":").split(":") if rest else []
        else:
            host, *parts = address.split(":")
        if not host or not 1 <= len(parts) <= 2:
            raise ConfigError("member %r is not of the form id=host:port[:http_port]" % item)
        try:
            ports = [int(p) for p in parts]
        except ValueError:
            raise ConfigError("member %r has a port that is not a number" % item) from None
        if not all(0 < p < 65536 for p in ports):
            raise ConfigError("member %r has a port outside 1-65535" % item)
        if node_id in members:
            raise ConfigError("member id %r appears twice in --members" % node_id)
        http_port = ports[1] if len(ports) == 2 else ports[0]
        members[node_id] = Member(node_id, host, ports[0], http_port)
    if not members:
        raise ConfigError("--members names no member")
    return members


def _with_advertised(members: Dict[str, Member], text: str) -> Dict[str, Member]:
    import attrs
    from urllib.parse import urlsplit

    members = dict(members)
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        node_id, sep, url = item.partition("=")
        parts = urlsplit(url)
        if not sep or parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError("--advertise-urls item %r is not id=http://host:port" % item)
        if node_id not in members:
            raise ConfigError("--advertise-urls names %r, which is not a member" % node_id)
        members[node_id] = attrs.evolve(members[node_id], advertise_url=url.rstrip("/"))
    return members


def load_application(name: str) -> Any:
    target = APPLICATIONS.get(name, name)
    module_name, sep, attribute = target.partition(":")
    if not sep:
        raise ConfigError(
            "unknown application %r: use one of %s or module:attribute"
            % (name, ", ".join(sorted(APPLICATIONS)))
        )
    try:
        module = importlib.import_module(module_name)
        return getattr(module, attribute)
    except (ImportError, AttributeError) as e:
        raise ConfigError("cannot load application %r (%s): %s" % (name, target, e)) from None


def _leave_out_tls() -> bool:
    """Keep pyOpenSSL, and with it cryptography and service_identity, out of this process.

    txraft serves and forwards plain HTTP and authenticates datagrams with HMAC: it never
    uses TLS.  But when pyOpenSSL is installed, Twisted loads its TLS support with its
    first TCP or endpoint module: 12 MiB of an idle node's 59 MiB resident (measured).
    Marking the module absent makes Twisted take its no-TLS path.  Done only before
    Twisted's networking is loaded (under twistd, while options are parsed), never in a
    process that may already use TLS.  Returns whether it was done.
    """
    loaded = ("OpenSSL", "twisted.internet.tcp", "twisted.internet.endpoints")
    if any(name in sys.modules for name in loaded):
        return False
    sys.modules["OpenSSL"] = None  # type: ignore[assignment]
    return True


def _check_port_free(kind: int, host: str, port: int, label: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if kind == socket.SOCK_STREAM:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ConfigError("%s port %d on %s is already in use" % (label, port, host)) from None
        raise ConfigError("cannot bind %s port %d on %s: %s" % (label, port, host, e.strerror)) from None
    finally:
        sock.close()


def _strong(secret: bytes, where: str, remedy: str) -> bytes:
    """``secret`` from ``where``, unless it is too short to resist guessing or public;
    the refusal ends with ``remedy``, a command that makes a good one."""
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError("the secret in %s is %d bytes, fewer than %d: make a good one "
                          "with %s" % (where, len(secret), MIN_SECRET_BYTES, remedy))
    if secret in PUBLISHED_SECRETS:
        raise ConfigError("the secret in %s is the development value txraft once shipped "
                          "in .env, known to anyone: make your own with %s" % (where, remedy))
    return secret


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "Run one txraft node: Raft over UDP on --port, the application's HTTP API on TCP "
        "(--http-port, by default the same number). With no --members the node is a "
        "single-node cluster. Example 3-node cluster on one machine: make a secret, "
        "'python3 -c \"import secrets; print(secrets.token_hex(32))\" > cluster.secret', "
        "then run, for i in 1 2 3, 'twistd -n raftnode --id n$i --port 500$i "
        "--members n1=127.0.0.1:5001,n2=127.0.0.1:5002,n3=127.0.0.1:5003 "
        "--secret-file cluster.secret'."
    )
    optParameters = [
        ["port", "p", 5001, "UDP port for Raft; also the HTTP port unless --http-port.", int],
        ["http-port", None, None, "TCP port for the HTTP API [default: --port].", int],
        ["bind", None, "127.0.0.1", "Address to listen on (0.0.0.0 in a container)."],
        ["id", None, None,
         "This node's id [default: node1 alone; with --members, the member on --port]."],
        ["members", None, None,
         "All members, this node included: id=host:port[:http_port],... "
         "(host names are resolved, and again when a peer goes silent)."],
        ["join", None, None,
         "Join a running cluster instead of founding one: the HTTP URLs of some of its "
         "members (URL,URL,...). Needs --id and the cluster secret; the data directory "
         "must be new. The node is added as a learner and promoted once caught up; "
         "later starts use what it recorded (docs/operations.md)."],
        ["raft-address", None, None,
         "With --join: host[:port] where the other members reach this node's Raft "
         "[default: --bind, or this host's name when --bind is 0.0.0.0 or ::]."],
        ["advertise-urls", None, None,
         "URLs clients use to reach members, when not host:http_port (e.g. Docker port "
         "publishing): id=url,... Used in 307 redirects and /raft/status only."],
        ["data-dir", "d", None, "Directory for the Raft log and the app's database "
         "[default: ./data/<id>]."],
        ["app", None, "shop", "Application: shop (the store), kv, or module:attribute."],
        ["secret-file", None, None,
         "File holding the cluster secret (HMAC-SHA256 key for every datagram, at least "
         "%d bytes); or set %s. Needed by every cluster of more than one member."
         % (MIN_SECRET_BYTES, SECRET_ENV)],
        ["cluster-id", None, "txraft", "Cluster name; datagrams of other clusters are dropped."],
        ["election-timeout-ms", None, 150,
         "Minimum election timeout; each node draws from [T, 2T). Lower: faster failover, "
         "more spurious elections under load.", int],
        ["heartbeat-ms", None, 50, "Leader heartbeat interval (must be < election timeout).", int],
        ["tick-ms", None, 10, "Timer resolution of the Raft core.", int],
        ["max-datagram", None, 1400,
         "Largest UDP datagram sent (1400 fits a 1500-byte MTU, e.g. a Docker bridge); "
         "bigger messages are fragmented by txraft.", int],
        ["proposal-timeout-ms", None, 5000,
         "How long a write waits to commit before answering 'outcome unknown'.", int],
        ["read-timeout-ms", None, 2000,
         "How long a linearizable read waits for the leader to confirm itself.", int],
        ["snapshot-entries", None, 10000,
         "Snapshot the state machine and compact the log every this many applied entries. "
         "Lower: less disk and memory, more snapshot work.", int],
        ["snapshot-trailing-entries", None, 1000,
         "Log entries kept behind a snapshot, so a slightly lagging follower is repaired "
         "from the log rather than by a snapshot transfer.", int],
        ["max-body-bytes", None, 65536,
         "Largest request body; a larger one is answered 413 before it is stored.", int],
        ["header-timeout-ms", None, 10000,
         "How long a client has to send a whole request head (408 after).", int],
        ["request-timeout-ms", None, 60000,
         "How long a whole request may take, body and answer included (408, or 504 "
         "'outcome unknown' once it is being answered).", int],
        ["max-connections", None, 1024,
         "HTTP connections served at once; one more is answered 503.", int],
        ["access-log", None, None,
         "Write an HTTP access log (combined format) to this file. Off by default: one "
         "log line per request costs throughput."],
        ["admin-token-file", None, None,
         "Enable the fault-injection endpoint /admin/faults (chaos testing only): "
         "loopback clients presenting this file's token as a Bearer token. Off by default."],
    ]

    optFlags = [
        ["insecure-no-secret", None,
         "Run a cluster of several members without a secret: then any host that reaches "
         "a UDP port can forge datagrams, join, vote, and move a member's address (its "
         "real datagrams are then dropped as replayed until it restarts). Tests only."],
        ["with-tls", None,
         "Load Twisted's TLS support (pyOpenSSL) although txraft does not use it: only for "
         "an application that makes https requests itself."],
    ]

    def postOptions(self) -> None:
        if not self["with-tls"]:
            _leave_out_tls()
        try:
            self._validate()
        except ConfigError as e:
            if getattr(self, "parent", None) is not None:
                # Under twistd, which would print its whole usage before the line: the
                # operator gets the line alone, on stderr, and a failure status.
                sys.stderr.write("twistd raftnode: %s\n" % (e,))
                sys.stderr.flush()
                raise SystemExit(2)
            raise usage.UsageError(str(e)) from None

    def _validate(self) -> None:
        port = self["port"]
        if not 0 < port < 65536:
            raise ConfigError("--port must be between 1 and 65535")
        http_port = self["http-port"] if self["http-port"] is not None else port
        if not 0 < http_port < 65536:
            raise ConfigError("--http-port must be between 1 and 65535")
        if self["members"] and self["join"]:
            raise ConfigError("--join and --members exclude each other: --members founds a "
                              "new cluster, --join joins a running one")
        if self["members"]:
            members = parse_members(self["members"])
            node_id = self["id"]
            if node_id is None:
                on_port = [m.node_id for m in members.values() if m.port == port]
                if len(on_port) != 1:
                    raise ConfigError(
                        "--id is needed: %d members use port %d" % (len(on_port), port)
                    )
                node_id = on_port[0]
            if node_id not in members:
                raise ConfigError(
                    "--id %r is not among the members (%s)" % (node_id, ", ".join(sorted(members)))
                )
            me = members[node_id]
            if me.port != port:
                raise ConfigError(
                    "member %s is listed on port %d but --port is %d" % (node_id, me.port, port)
                )
            if self["http-port"] is not None and me.http_port != http_port:
                raise ConfigError(
                    "member %s is listed with HTTP port %d but --http-port is %d"
                    % (node_id, me.http_port, http_port)
                )
            http_port = me.http_port
        elif self["join"]:
            node_id, members = self._joining(port, http_port)
        else:
            node_id = self["id"] or "node1"
            members = {node_id: Member(node_id, self["bind"], port, http_port)}
        if self["raft-address"] and not self["join"]:
            raise ConfigError("--raft-address only goes with --join (with --members, each "
                              "member's address is in --members)")
        if self["advertise-urls"]:
            members = _with_advertised(members, self["advertise-urls"])
        self["node_id"] = node_id
        self["member_map"] = members
        self["http-port"] = http_port
        if self["heartbeat-ms"] <= 0 or self["tick-ms"] <= 0:
            raise ConfigError("--heartbeat-ms and --tick-ms must be positive")
        if self["heartbeat-ms"] >= self["election-timeout-ms"]:
            raise ConfigError("--heartbeat-ms must be shorter than --election-timeout-ms")
        if self["tick-ms"] > self["heartbeat-ms"]:
            raise ConfigError("--tick-ms must not exceed --heartbeat-ms")
        self["timing"] = Timing(
            tick_seconds=self["tick-ms"] / 1000.0,
            election_timeout_seconds=self["election-timeout-ms"] / 1000.0,
            heartbeat_seconds=self["heartbeat-ms"] / 1000.0,
            proposal_timeout_seconds=self["proposal-timeout-ms"] / 1000.0,
            read_timeout_seconds=self["read-timeout-ms"] / 1000.0,
            snapshot_entries=self["snapshot-entries"],
            snapshot_trailing_entries=self["snapshot-trailing-entries"],
        )
        if self["snapshot-entries"] < 1 or self["snapshot-trailing-entries"] < 0:
            raise ConfigError("--snapshot-entries must be positive and the trailing count >= 0")
        if min(self["max-body-bytes"], self["header-timeout-ms"], self["max-connections"]) < 1:
            raise ConfigError("--max-body-bytes, --header-timeout-ms and --max-connections "
                              "must be positive")
        if self["request-timeout-ms"] <= max(self["header-timeout-ms"],
                                             self["proposal-timeout-ms"],
                                             self["read-timeout-ms"]):
            raise ConfigError("--request-timeout-ms must be longer than --header-timeout-ms, "
                              "--proposal-timeout-ms and --read-timeout-ms (a request cut "
                              "short before they answer learns nothing)")
        self["application"] = load_application(self["app"])
        self["secret"] = self._secret()
        if len(members) > 1:
            self._check_cluster_secret()
        if self["join"] and not self["secret"]:
            raise ConfigError("--join needs the cluster secret (--secret-file or %s): the "
                              "cluster adds members only for those who hold it" % SECRET_ENV)
        self["admin-token"] = None
        if self["admin-token-file"]:
            self["admin-token"] = self._read_secret_file(self["admin-token-file"], "--admin-token-file")
        data_dir = self["data-dir"] or os.path.join("data", node_id)
        self["data-dir"] = os.path.abspath(data_dir)
        self._check_data_dir(self["data-dir"])
        from txraft.runtime.join import load_joined

        self["joined"] = load_joined(self["data-dir"])
        if self["join"] and self["joined"] is None and self["has-log"]:
            raise ConfigError(
                "the data directory %s already belongs to a cluster it did not --join (its "
                "Raft log is not empty): start it with the --members it was founded with, "
                "or give this node a new data directory" % self["data-dir"])
        if self["joined"] is not None and self["members"]:
            raise ConfigError(
                "the data directory %s joined a running cluster (--join): start it without "
                "--members; it knows its members from that record and its log"
                % self["data-dir"])
        if self["joined"] is not None and len(self["joined"][1].members) > 1:
            self._check_cluster_secret()
        _check_port_free(socket.SOCK_DGRAM, self["bind"], port, "UDP")
        _check_port_free(socket.SOCK_STREAM, self["bind"], http_port, "HTTP (TCP)")

    def _joining(self, port: int, http_port: int) -> Tuple[str, Dict[str, Member]]:
        """This node alone, as the cluster will know it once it has joined."""
        node_id = self["id"]
        if not node_id:
            raise ConfigError("--join needs --id: the name this node takes in the cluster")
        urls = [u.strip().rstrip("/") for u in self["join"].split(",") if u.strip()]
        if not urls or not all(u.startswith(("http://", "https://")) for u in urls):
            raise ConfigError("--join takes members' HTTP URLs, e.g. "
                              "--join http://10.0.0.1:5001,http://10.0.0.2:5002")
        self["join_urls"] = urls
        host, raft_port = self["bind"], port
        if host in ("0.0.0.0", "::", ""):
            host = socket.gethostname()
        if self["raft-address"]:
            from txraft.core.config import parse_address

            text = self["raft-address"].strip()
            address = parse_address(text)
            if address is not None:
                host, raft_port = address
            else:
                bare = text[1:-1] if text.startswith("[") and text.endswith("]") else text
                if not bare or (":" in bare and not text.startswith("[")) or parse_address(
                        "[%s]:1" % bare if ":" in bare else "%s:1" % bare) is None:
                    raise ConfigError("--raft-address must be host, host:port or [v6]:port, "
                                      "not %r" % text)
                host = bare
            if raft_port != port:
                raise ConfigError("--raft-address names port %d but --port is %d"
                                  % (raft_port, port))
        return node_id, {node_id: Member(node_id, host, port, http_port)}

    def _secret(self) -> Optional[bytes]:
        if self["secret-file"]:
            return self._read_secret_file(self["secret-file"], "--secret-file")
        env = os.environ.get(SECRET_ENV, "").strip()
        if not env:
            return None
        return _strong(env.encode("utf-8"), "$%s" % SECRET_ENV,
                       "export %s=$(%s)" % (SECRET_ENV, MAKE_SECRET))

    def _check_cluster_secret(self) -> None:
        """Several members need a secret: without one, a forged datagram is believed."""
        if not self["secret"] and not self["insecure-no-secret"]:
            raise ConfigError(
                "a cluster of several members needs a secret: make one with %s > "
                "cluster.secret and start every member with --secret-file cluster.secret "
                "(or set %s); --insecure-no-secret runs it open to forged datagrams"
                % (MAKE_SECRET, SECRET_ENV))

    def _read_secret_file(self, path: str, option: str) -> bytes:
        try:
            with open(path, "rb") as f:
                secret = f.read().strip()
        except OSError as e:
            raise ConfigError("cannot read %s %s: %s" % (option, path, e.strerror)) from None
        if not secret:
            raise ConfigError("%s %s is empty" % (option, path))
        return _strong(secret, "%s %s" % (option, path), "%s > %s" % (MAKE_SECRET, path))

    def _check_data_dir(self, data_dir: str) -> None:
        try:
            os.makedirs(data_dir, exist_ok=True)
        except OSError as e:
            raise ConfigError("cannot create data directory %s: %s" % (data_dir, e.strerror)) from None
        if not os.access(data_dir, os.W_OK | os.X_OK):
            raise ConfigError("data directory %s is not writable" % data_dir)
        from txraft.runtime.identity import FilePeerStore, open_identity
        from txraft.runtime.storage import FileLogStorage

        # The identity first, before anything else is written there: which node of
        # which cluster this directory is, and its uuid (a new one for an empty
        # directory, which peers that knew the old one then refuse).
        self["identity"] = open_identity(data_dir, self["node_id"], self["cluster-id"])
        self["peer-store"] = FilePeerStore(data_dir)

        # Opening takes the directory lock and checks every record: a busy or corrupt
        # directory is reported now, as one line, rather than as a traceback later.
        try:
            storage = FileLogStorage(os.path.join(data_dir, "raft"))
            try:
                hard_state, snapshot, entries = storage.load()
            finally:
                storage.close()
        except RaftError as e:
            raise ConfigError(str(e)) from None
        self["has-log"] = bool(hard_state.term or snapshot.index or entries)


class RaftNodeService(service.MultiService):
    """Owns the storage, the node, the UDP port and the HTTP site of one process."""

    def __init__(self, options: Options, reactor: Any):
        super().__init__()
        self.options = options
        self.reactor = reactor

    def startService(self) -> None:
        opts = self.options
        joined = opts["joined"]
        if joined is None and opts["join"]:
            # Nothing to serve until the cluster has taken this node: the node, its UDP
            # port and its HTTP API start once it has (txraft.runtime.join).
            service.Service.startService(self)
            self._join()
            return
        if opts["join"]:
            log.info("{node} joined its cluster before (configuration at index {index} "
                     "recorded in {data}): --join is not needed any more",
                     node=opts["node_id"], index=joined[0], data=opts["data-dir"])
        self._start_node(joined[1] if joined is not None else None)
        super().startService()

    def _join(self) -> None:
        from twisted.internet import defer, task
        from treq import content

        from txraft.core.config import LEARNER
        from txraft.core.config import Member as ConfigMember
        from txraft.runtime.identity import write_atomically
        from txraft.runtime.join import JoinRefused, join_cluster, save_joined

        opts = self.options
        reactor = self.reactor
        me = opts["member_map"][opts["node_id"]]
        host = "[%s]" % (me.host,) if ":" in me.host else me.host
        member = ConfigMember(me.node_id, LEARNER, "%s:%d" % (host, me.port), me.public_url,
                              opts["identity"].uuid)
        client = _ForwardingClient(reactor, _web_classes()[0])

        async def request(method, url, body, headers):
            data = json.dumps(body).encode("utf-8") if body is not None else None
            response = await client.request(
                method, url, headers={k: [v] for k, v in headers.items()}, data=data,
                timeout=10)
            raw = await content(response)
            try:
                doc = json.loads(raw)
            except ValueError:
                doc = None
            return response.code, doc

        def sleep(seconds):
            return task.deferLater(reactor, seconds, lambda: None)

        log.info("{node}: joining the cluster through {urls} as {address}",
                 node=me.node_id, urls=",".join(opts["join_urls"]), address=member.address)
        d = defer.ensureDeferred(join_cluster(
            opts["join_urls"], member, opts["secret"], request, sleep, reactor.seconds,
            log=lambda line: log.info("{line}", line=line)))

        def joined(result):
            config_index, conf = result
            save_joined(opts["data-dir"], config_index, conf, write_atomically)
            log.info("{node}: added to the cluster as a learner (configuration at index "
                     "{index}: {ids}); catching up", node=me.node_id, index=config_index,
                     ids=",".join(conf.ids))
            if self.running:
                self._start_node(conf)

        def refused(failure):
            line = str(failure.value) if failure.check(JoinRefused) else (
                "--join failed: %s" % (failure.getErrorMessage(),))
            log.critical("{line}", line=line)
            # twistd made sys.stderr the log: the operator's terminal is the real one.
            real = sys.__stderr__
            if real is not None:
                real.write("twistd raftnode: " + line + "\n")
                real.flush()
            reactor.callLater(0, os._exit, 2)

        d.addCallback(joined)
        d.addErrback(refused)
        self._joining = d

    def _start_node(self, founding: Any) -> None:
        """Open the storage and start the node, its UDP port and its HTTP API;
        ``founding``: the configuration this node joined with, or None (--members)."""
        # Imported here: twistd loads the plugin module just to list its options.
        from twisted.internet.threads import deferToThreadPool

        from txraft.runtime.codec import append_entries_overhead, encode_message
        from txraft.core.messages import SnapshotChunk
        from txraft.runtime.snapshot import SnapshotStore
        from txraft.core import CoreConfig
        from txraft.runtime.node import RaftNode
        from txraft.runtime.storage import FileLogStorage
        from txraft.runtime.transport import Faults, UDPTransport
        from txraft.runtime.trust import PeerIdentities

        _QuietPool, _Site = _web_classes()
        opts = self.options
        reactor = self.reactor
        data_dir = opts["data-dir"]
        application = opts["application"]
        members = opts["member_map"]
        node_id = opts["node_id"]
        if founding is not None:
            from txraft.runtime.node import member_of

            members = dict(members)
            for m in founding.members:
                found = member_of(m)
                if found is not None and m.id != node_id:
                    members[m.id] = found
        self.storage = FileLogStorage(os.path.join(data_dir, "raft"))
        self.state_machine = application.make_state_machine(data_dir)
        identity = opts["identity"]
        peer_identities = PeerIdentities(opts["peer-store"], node_id)
        receivers = []
        refusals = []
        transport = UDPTransport(
            node_id=node_id,
            cluster_id=opts["cluster-id"],
            peers={m.node_id: (m.host, m.port) for m in members.values()},
            secret=opts["secret"],
            deliver=lambda message: receivers[0](message),
            reactor=reactor,
            # Grows across restarts, which the transport's replay protection relies on.
            incarnation=next_incarnation(os.path.join(data_dir, "incarnation")),
            max_datagram=opts["max-datagram"],
            # Injected loss must be random: a deterministic every-n-th drop loses the
            # same fragment of every large message, so a snapshot chunk window or a big
            # AppendEntries would never get through at 5% loss.
            faults=Faults(random=random.Random(os.urandom(16))),
            node_uuid=identity.uuid_bytes,
            identities=peer_identities,
            on_identity_refused=lambda *args: refusals[0](*args),
        )
        longest = max(members, key=len)
        budget = transport.max_payload - append_entries_overhead(longest, longest)
        big = 2**63 - 1
        chunk_overhead = len(
            encode_message(SnapshotChunk(big, longest, longest, big, big, big, b"", done=True,
                                         read_seq=big))
        ) + 5  # the largest bin header
        chunk_bytes = transport.max_payload - chunk_overhead
        node = RaftNode(
            node_id,
            members,
            self.storage,
            self.state_machine,
            reactor,
            random.SystemRandom(),
            opts["timing"],
            core_config=CoreConfig(max_append_bytes=max(1, budget)),
            on_fatal=self._fatal,
            snapshots=SnapshotStore(os.path.join(data_dir, "snapshots")),
            snapshot_chunk_bytes=chunk_bytes,
            run_in_thread=lambda f: deferToThreadPool(reactor, reactor.getThreadPool(), f),
            identity=identity,
            peer_identities=peer_identities,
            founding=founding,
        )
        receivers.append(node.receive)
        refusals.append(node.identity_refused)
        node.transport = transport
        node.secret = opts["secret"]  # membership changes over HTTP need it (Bearer)
        self.node = node
        self.udp_port = transport.listen(opts["port"], opts["bind"])
        http_client = _ForwardingClient(reactor, _QuietPool)
        from txraft.http.requests import RequestGuard
        from txraft.http.site import HTTPLimits

        resource = RequestGuard(application.make_resource(node, reactor, http_client))
        if opts["admin-token"]:
            from txraft.http.admin import AdminRoot

            resource = AdminRoot(resource, transport, opts["admin-token"])
            log.warn("fault-injection admin endpoint enabled at /admin/faults")
        limits = HTTPLimits(
            body_bytes=opts["max-body-bytes"],
            header_timeout_seconds=opts["header-timeout-ms"] / 1000.0,
            request_timeout_seconds=opts["request-timeout-ms"] / 1000.0,
            max_connections=opts["max-connections"],
        )
        site = _Site(resource, limits=limits, logPath=opts["access-log"], reactor=reactor)
        site.noisy = False
        self.http_service = internet.TCPServer(
            opts["http-port"], site, interface=opts["bind"], reactor=reactor
        )
        self.http_service.setServiceParent(self)
        node.setServiceParent(self)
        log.info(
            "txraft node {node} ({app}) on UDP {bind}:{port}, HTTP {url}, data {data}, "
            "{n} member(s){secret}; data directory uuid {uuid} ({how})",
            node=node_id, app=opts["app"], bind=opts["bind"], port=opts["port"],
            url=members[node_id].http_url, data=data_dir, n=len(members),
            uuid=identity.uuid, how=identity.how,
            secret="" if opts["secret"] else " -- WITHOUT a cluster secret",
        )

    def stopService(self):
        # SIGTERM (docker stop, a Kubernetes rollout): a leader hands its leadership
        # over before it goes, so the cluster has a leader again within a round trip
        # instead of an election timeout (dissertation 3.10).
        d = self._hand_over()
        d.addBoth(lambda _: service.MultiService.stopService(self))

        def close(result):
            if getattr(self, "node", None) is None:
                return result  # stopped while joining: nothing was opened
            self.udp_port.stopListening()
            self.state_machine.close()
            self.storage.close()
            return result

        return d.addBoth(close)

    def _hand_over(self):
        from twisted.internet import defer

        node = getattr(self, "node", None)
        if node is None or not node.running or not node.is_leader() or not [
            v for v in node.core.voters if v != node.node_id
        ]:
            return defer.succeed(None)
        started = self.reactor.seconds()
        log.info("stopping: handing the leadership over first")
        d = node.transfer_leadership()

        def done(leader_and_term):
            log.info("stopping: {leader} leads term {term} ({ms:.0f} ms after the request)",
                     leader=leader_and_term[0], term=leader_and_term[1],
                     ms=1000 * (self.reactor.seconds() - started))

        def failed(failure):
            log.warn("stopping without handing the leadership over: {error}",
                     error=failure.value)

        return d.addCallbacks(done, failed)

    def _fatal(self, failure) -> None:
        log.critical("stopping the process: {error}", error=failure.value)
        # Exit at once with a failure status; a supervisor restarts us from disk.
        self.reactor.callLater(0, os._exit, 70)


class _ForwardingClient:
    """The treq client followers forward requests to the leader with, made on first use
    (a leader, and a node that is never asked to forward, does not load treq)."""

    def __init__(self, reactor: Any, pool_class: Any):
        self.reactor = reactor
        self.pool_class = pool_class
        self._client: Any = None

    def request(self, *args: Any, **kwargs: Any) -> Any:
        if self._client is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent

            reactor = self.reactor
            pool = self.pool_class(reactor, persistent=True)
            # Followers forward concurrent requests to the leader: keep enough
            # connections alive that a busy follower does not open and close one per
            # request.
            pool.maxPersistentPerHost = 128
            self._client = HTTPClient(
                Agent.usingEndpointFactory(reactor, _DirectEndpoints(reactor), pool=pool)
            )
        return self._client.request(*args, **kwargs)


def next_incarnation(path: str) -> int:
    """This start's transport incarnation: larger than any earlier start's, even when the
    clock was stepped back since; durable before the first datagram leaves."""
    try:
        with open(path, "rb") as f:
            last = int(f.read().strip() or b"0")
    except FileNotFoundError:
        last = 0
    except ValueError:
        log.warn("{path} is damaged; the incarnation falls back to the clock", path=path)
        last = 0
    incarnation = max(time.time_ns() // 1000, last + 1)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(b"%d\n" % incarnation)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    from txraft.runtime.storage import fsync_directory

    fsync_directory(os.path.dirname(os.path.abspath(path)))
    return incarnation


@implementer(IAgentEndpointFactory)
class _DirectEndpoints:
    """Connect straight to IP-literal members.

    Agent's default HostnameEndpoint resolves even "127.0.0.1" in a thread and reports a
    refused connection only after its 0.3 s attempt delay, so a follower forwarding to a
    leader that just died held every write for 0.3 s (measured: failover median 350 ms
    with it, 205 ms without).  Names still go through HostnameEndpoint.
    """

    def __init__(self, reactor: Any):
        self.reactor = reactor

    def endpointForURI(self, uri: Any) -> Any:
        from twisted.internet.abstract import isIPAddress, isIPv6Address
        from twisted.internet.endpoints import (
            HostnameEndpoint,
            TCP4ClientEndpoint,
            TCP6ClientEndpoint,
        )

        host = uri.host.decode("ascii")
        if isIPAddress(host):
            return TCP4ClientEndpoint(self.reactor, host, uri.port, timeout=5)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(self.reactor, host, uri.port, timeout=5)
        return HostnameEndpoint(self.reactor, uri.host, uri.port, timeout=5)


def _web_classes():
    from twisted.web.client import HTTPConnectionPool

    from txraft.http.site import NodeSite

    class QuietPool(HTTPConnectionPool):
        """A connection pool that does not log every connection it opens or closes."""

        class _factory(HTTPConnectionPool._factory):  # type: ignore[name-defined]
            noisy = False

    class QuietSite(NodeSite):
        """Logs requests only when an access log file was asked for."""

        def log(self, request):
            if self.logPath:
                super().log(request)

    return QuietPool, QuietSite


def makeService(options: Options) -> service.IService:
    from twisted.internet import reactor

    return RaftNodeService(options, reactor)
