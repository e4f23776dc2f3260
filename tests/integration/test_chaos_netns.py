"""``python -m txraft.tools.chaos --net netns``: partitions made by the kernel.

Most of this needs no root: the names and addresses of one run, the commands that build
and remove it, which blackhole routes make which cut, the bookkeeping that lets a failed
or interrupted run remove exactly what it made, the stale-cleanup pass, and the one line
printed when the machine does not allow namespaces.  ``NetnsRoundTests`` is one short
real run (3 nodes, partitions only), skipped where ``ip netns add`` is not allowed.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from txraft.tools.chaos import netns
from txraft.tools.chaos.__main__ import main
from txraft.tools.chaos.harness import Config
from txraft.tools.chaos.nemesis import TransportFaults, one_way_cuts, partition_cuts
from txraft.tools.localcluster import HTTPResult

from tests.integration.test_chaos import assert_passed, run_round

IDS = ("n1", "n2", "n3", "n4", "n5")


class FakeRunner:
    """Records ``ip`` commands; answers listings; fails the commands it is told to."""

    def __init__(self, fail=(), listings=None):
        self.commands = []
        self.fail = [list(f) for f in fail]
        self.listings = listings or {}

    def __call__(self, argv):
        argv = list(argv)
        self.commands.append(argv)
        if argv in self.fail:
            raise netns.NetnsError("%s: RTNETLINK answers: Operation not permitted"
                                   % " ".join(argv))
        return subprocess.CompletedProcess(argv, 0, self.listings.get(tuple(argv), ""), "")


class LayoutTests(SynchronousTestCase):
    def test_names_and_addresses(self):
        """One run's names carry its pid; nodes get .11, .12... of one /24 whose .1 is
        the bridge (the harness's address)."""
        layout = netns.Layout.for_pid(0x1a2b, IDS[:3])
        self.assertEqual(layout.prefix, "txc1a2b")
        self.assertEqual(layout.namespace("n2"), "txc1a2b-n2")
        self.assertEqual(layout.bridge, "txc1a2b-br")
        self.assertEqual(layout.host_veth("n3"), "txc1a2b-h3")
        a, b = layout.subnet
        self.assertEqual(layout.bridge_address, "10.%d.%d.1" % (a, b))
        self.assertEqual([layout.address(i) for i in IDS[:3]],
                         ["10.%d.%d.%d" % (a, b, 11 + k) for k in range(3)])
        self.assertEqual(layout.exec_prefix("n1"), ["ip", "netns", "exec", "txc1a2b-n1"])

    def test_interface_names_fit(self):
        """Linux interface names have at most 15 characters, for the largest pid and a
        two-digit node count."""
        layout = netns.Layout.for_pid(4194304, ["n%d" % i for i in range(1, 20)])
        for node_id in layout.node_ids:
            for name in (layout.host_veth(node_id), layout.node_veth(node_id), layout.bridge):
                self.assertLessEqual(len(name), 15, name)

    def test_subnet_in_use_is_skipped(self):
        """A /24 that already has an address in the root namespace is not reused."""
        first = netns.Layout.for_pid(77, IDS)
        taken = "10.%d.%d.5/24" % first.subnet
        second = netns.Layout.for_pid(77, IDS, taken=["192.0.2.2/24", taken])
        self.assertNotEqual(second.subnet, first.subnet)

    def test_setup_commands(self):
        """Bridge with the harness's address, then per node: a namespace, a veth pair with
        one end moved in and renamed eth0, loopback up; each creation has its undo."""
        layout = netns.Layout("txc9", ("n1",), (150, 9))
        self.assertEqual(layout.setup_steps(), [
            (["ip", "link", "add", "txc9-br", "type", "bridge"], ["ip", "link", "del", "txc9-br"]),
            (["ip", "addr", "add", "10.150.9.1/24", "dev", "txc9-br"], None),
            (["ip", "link", "set", "txc9-br", "up"], None),
            (["ip", "netns", "add", "txc9-n1"], ["ip", "netns", "del", "txc9-n1"]),
            (["ip", "link", "add", "txc9-h1", "type", "veth", "peer", "name", "txc9-i1"],
             ["ip", "link", "del", "txc9-h1"]),
            (["ip", "link", "set", "txc9-i1", "netns", "txc9-n1"], None),
            (["ip", "link", "set", "txc9-h1", "master", "txc9-br", "up"], None),
            (["ip", "-n", "txc9-n1", "link", "set", "lo", "up"], None),
            (["ip", "-n", "txc9-n1", "link", "set", "txc9-i1", "name", "eth0"], None),
            (["ip", "-n", "txc9-n1", "addr", "add", "10.150.9.11/24", "dev", "eth0"], None),
            (["ip", "-n", "txc9-n1", "link", "set", "eth0", "up"], None),
        ])


class CutTests(SynchronousTestCase):
    """Which blackhole routes make which partition."""

    layout = netns.Layout("txc9", IDS, (150, 9))

    def routes(self, cuts):
        return sorted((ns.split("-")[1], "n%d" % (int(dest.split(".")[3][:-3]) - 10))
                      for ns, dest in self.layout.routes(cuts))

    def test_symmetric_partition(self):
        """Both sides blackhole the other side's addresses; nobody blackholes the
        bridge, so the harness reaches every node."""
        cuts = partition_cuts(["n1", "n2"], ["n3", "n4", "n5"])
        self.assertEqual(len(cuts), 12)
        routes = self.layout.routes(cuts)
        self.assertIn(("txc9-n1", "10.150.9.13/32"), routes)
        self.assertIn(("txc9-n3", "10.150.9.11/32"), routes)
        self.assertNotIn(("txc9-n1", "10.150.9.12/32"), routes)  # same side
        self.assertFalse(any(dest.startswith("10.150.9.1/") for _, dest in routes))

    def test_isolated_leader(self):
        """The leader alone: its routes to all, and everyone's route to it."""
        self.assertEqual(self.routes(partition_cuts(["n3"], ["n1", "n2", "n4", "n5"])), sorted(
            [("n3", o) for o in ("n1", "n2", "n4", "n5")]
            + [(o, "n3") for o in ("n1", "n2", "n4", "n5")]))

    def test_one_way(self):
        """A routes only in the sender's namespace: 'cannot reach' is the source's routes,
        'cannot hear' the targets' routes to the source."""
        self.assertEqual(self.routes(one_way_cuts("n1", ["n2", "n4"], deaf=False)),
                         [("n1", "n2"), ("n1", "n4")])
        self.assertEqual(self.routes(one_way_cuts("n1", ["n2", "n4"], deaf=True)),
                         [("n2", "n1"), ("n4", "n1")])

    def test_route_commands(self):
        self.assertEqual(self.layout.route_command("add", ("txc9-n2", "10.150.9.13/32")),
                         ["ip", "-n", "txc9-n2", "route", "add", "blackhole", "10.150.9.13/32"])

    def test_transport_backend_sets_both_ends(self):
        """The transport backend turns the same cuts into drop_to at the sender and
        drop_from at the receiver, as the nemesis always did."""

        class Node:
            paused = False

            def __init__(self, node_id):
                self.url = "http://127.0.0.1:1/" + node_id

            def alive(self):
                return True

        cluster = type("C", (), {"nodes": {i: Node(i) for i in IDS[:3]}})()
        sent = []

        def request(method, url, body=None, headers=None, timeout=0):
            sent.append((method, url.split("/")[3], body))
            return HTTPResult(200, {}, b"{}")

        faults = TransportFaults(cluster, "t", log=None, request=request)
        faults.cut(partition_cuts(["n1"], ["n2", "n3"]))
        self.assertEqual(sent, [
            ("PUT", "n1", b'{"drop_to": ["n2", "n3"], "drop_from": ["n2", "n3"]}'),
            ("PUT", "n2", b'{"drop_to": ["n1"], "drop_from": ["n1"]}'),
            ("PUT", "n3", b'{"drop_to": ["n1"], "drop_from": ["n1"]}')])
        del sent[:]
        faults.cut(one_way_cuts("n2", ["n3"], deaf=True))
        self.assertEqual(sent, [("PUT", "n2", b'{"drop_from": ["n3"]}'),
                                ("PUT", "n3", b'{"drop_to": ["n2"]}')])


class NetworkTests(SynchronousTestCase):
    """Creating, changing and removing one run's network, with a fake ``ip``."""

    layout = netns.Layout("txc9", ("n1", "n2"), (150, 9))

    def test_teardown_undoes_everything_in_reverse(self):
        """Each node's veth goes before its namespace (synchronously, not with the
        namespace's asynchronous cleanup), the bridge last; a second teardown does
        nothing."""
        runner = FakeRunner()
        network = netns.Network(self.layout, runner)
        network.setup()
        del runner.commands[:]
        self.assertEqual(network.teardown(), [])
        self.assertEqual(runner.commands[:5], [
            ["ip", "link", "del", "txc9-h2"], ["ip", "netns", "del", "txc9-n2"],
            ["ip", "link", "del", "txc9-h1"], ["ip", "netns", "del", "txc9-n1"],
            ["ip", "link", "del", "txc9-br"]])
        # then it checks that nothing named txc9-* is left
        self.assertEqual(runner.commands[5:], [["ip", "netns", "list"],
                                               ["ip", "-o", "link", "show"]] * 2)
        del runner.commands[:]
        network.teardown()
        self.assertFalse([c for c in runner.commands if "del" in c])

    def test_failed_setup_removes_what_was_made(self):
        """A command failing half-way: setup raises, and teardown removes exactly what
        had been created."""
        runner = FakeRunner(fail=[["ip", "netns", "add", "txc9-n2"]])
        network = netns.Network(self.layout, runner)
        self.assertRaises(netns.NetnsError, network.setup)
        self.assertEqual(network.created, [["ip", "link", "del", "txc9-br"],
                                           ["ip", "netns", "del", "txc9-n1"],
                                           ["ip", "link", "del", "txc9-h1"]])
        del runner.commands[:]
        network.teardown()
        self.assertEqual([c for c in runner.commands if "del" in c], [
            ["ip", "link", "del", "txc9-h1"], ["ip", "netns", "del", "txc9-n1"],
            ["ip", "link", "del", "txc9-br"]])

    def test_teardown_sweeps_its_own_leftovers_only(self):
        """Anything still named with this run's prefix (made just before a Ctrl-C, say)
        is removed; another run's resources are not touched."""
        runner = FakeRunner(listings={
            ("ip", "netns", "list"): "txc9-n1 (id: 3)\ntxc99-n1 (id: 4)\n",
            ("ip", "-o", "link", "show"): "7: txc9-h1@if6: <BROADCAST> mtu 1500\n"
                                          "9: txc99-br: <BROADCAST> mtu 1500\n"})
        netns.Network(self.layout, runner).teardown()
        deleted = [c for c in runner.commands if "del" in c]
        self.assertEqual(deleted[:2], [["ip", "netns", "del", "txc9-n1"],
                                       ["ip", "link", "del", "txc9-h1"]])
        self.assertFalse([c for c in deleted if "txc99" in " ".join(c)])

    def test_cuts_change_only_the_difference(self):
        """Moving from one cut to another adds and removes only the routes that differ;
        heal removes the rest."""
        runner = FakeRunner()
        network = netns.Network(netns.Layout("txc9", IDS[:3], (150, 9)), runner)
        network.set_cuts(one_way_cuts("n1", ["n2", "n3"], deaf=False))
        self.assertEqual(runner.commands, [
            ["ip", "-n", "txc9-n1", "route", "add", "blackhole", "10.150.9.12/32"],
            ["ip", "-n", "txc9-n1", "route", "add", "blackhole", "10.150.9.13/32"]])
        del runner.commands[:]
        added, removed = network.set_cuts(one_way_cuts("n1", ["n3"], deaf=False)
                                          | one_way_cuts("n2", ["n1"], deaf=False))
        self.assertEqual(runner.commands, [
            ["ip", "-n", "txc9-n1", "route", "del", "blackhole", "10.150.9.12/32"],
            ["ip", "-n", "txc9-n2", "route", "add", "blackhole", "10.150.9.11/32"]])
        del runner.commands[:]
        self.assertEqual(sorted(network.heal()), [("txc9-n1", "10.150.9.13/32"),
                                                  ("txc9-n2", "10.150.9.11/32")])
        self.assertEqual(network.routes, set())


class StaleCleanupTests(SynchronousTestCase):
    def test_only_dead_runs(self):
        """Names are matched by the pid they carry; a live run's are kept, and a bridge
        whose suffix looks like hex is not misread."""
        alive = {0x20}.__contains__
        self.assertEqual(netns.stale_names(
            ["txc10-n1", "txc20-n1", "txc10-br", "txc20-br", "eth0", "txcfoo", "txc10-probe"],
            alive), ["txc10-n1", "txc10-br", "txc10-probe"])

    def test_cleanup_kills_what_runs_inside(self):
        """A namespace whose run was SIGKILLed may still hold its nodes: they are killed,
        then the namespace and the links are removed."""
        runner = FakeRunner(listings={
            ("ip", "netns", "list"): "txc10-n1 (id: 0)\ntxc20-n1\n",
            ("ip", "-o", "link", "show"): "1: lo: <LOOPBACK> mtu 65536\n"
                                          "5: txc10-br: <BROADCAST> mtu 1500\n"
                                          "6: txc10-h1@if5: <BROADCAST> mtu 1500\n",
            ("ip", "netns", "pids", "txc10-n1"): "4242\n"})
        killed = []
        removed = netns.cleanup_stale(runner, alive={0x20}.__contains__,
                                      kill=lambda pid, sig: killed.append(pid))
        self.assertEqual(killed, [4242])
        self.assertEqual(removed, ["netns txc10-n1", "link txc10-br", "link txc10-h1"])


class AvailabilityTests(SynchronousTestCase):
    def test_not_root(self):
        reason = netns.unavailable(FakeRunner(), geteuid=lambda: 1000)
        self.assertIn("root", reason)

    def test_no_ip_command(self):
        reason = netns.unavailable(FakeRunner(), geteuid=lambda: 0, which=lambda name: None)
        self.assertIn("iproute2", reason)

    def test_netns_add_refused(self):
        """In a container without CAP_SYS_ADMIN, ``ip netns add`` fails: say what it said."""
        runner = FakeRunner(fail=[["ip", "netns", "add", "txc5-probe"]])
        reason = netns.unavailable(runner, geteuid=lambda: 0, which=lambda name: "/sbin/ip",
                                   pid=5)
        self.assertIn("`ip netns add` failed (RTNETLINK answers: Operation not permitted)",
                      reason)

    def test_available(self):
        """The probe namespace is removed again."""
        runner = FakeRunner()
        self.assertIsNone(netns.unavailable(runner, geteuid=lambda: 0,
                                            which=lambda name: "/sbin/ip", pid=5))
        self.assertEqual(runner.commands, [["ip", "netns", "add", "txc5-probe"],
                                           ["ip", "netns", "del", "txc5-probe"]])

    def test_command_says_why_in_one_line(self):
        """``--net netns`` on a machine that cannot: exit status 2, one line on stderr,
        nothing started."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        status = main(["--net", "netns", "--duration", "1"],
                      unavailable=lambda: "network namespaces need root (CAP_SYS_ADMIN)")
        self.assertEqual(status, 2)
        self.assertEqual(err.getvalue(),
                         "--net netns: network namespaces need root (CAP_SYS_ADMIN)\n")

    def test_replay_command_names_the_mode(self):
        self.assertEqual(Config(nodes=3, duration=20, seed=4, net="netns").command(),
                         "python -m txraft.tools.chaos --nodes 3 --duration 20 --seed 4 "
                         "--workload kv --clients 10 --net netns")
        self.assertNotIn("--net", Config().command())


class NetnsClusterTests(SynchronousTestCase):
    def test_nodes_run_in_their_namespace(self):
        """Each node is started by ``ip netns exec``, listens on 0.0.0.0 inside its
        namespace (its address and its loopback, for the admin endpoint), and the
        members and URLs name the namespace addresses."""
        layout = netns.Layout("txc9", IDS[:3], (150, 9))
        cluster = netns.NetnsCluster(layout, self.mktemp())
        node = cluster.nodes["n2"]
        self.assertEqual(node.url, "http://10.150.9.12:7001")
        self.assertEqual(node.loopback_url, "http://127.0.0.1:7001")
        self.assertEqual(cluster.members, "n1=10.150.9.11:7001:7001,n2=10.150.9.12:7001:7001,"
                                          "n3=10.150.9.13:7001:7001")
        command = cluster.command(node)
        self.assertEqual(command[:4], ["ip", "netns", "exec", "txc9-n2"])
        self.assertEqual(command[-2:], ["--bind", "0.0.0.0"])
        self.assertIn(cluster.members, command)


class NetnsFaultsTests(SynchronousTestCase):
    def test_cuts_are_routes_and_loss_goes_to_the_loopback_admin(self):
        """Cuts become blackhole routes; loss is set on the transport through the node's
        loopback from inside its namespace; heal removes both (loss only where set)."""
        layout = netns.Layout("txc9", IDS[:3], (150, 9))
        cluster = netns.NetnsCluster(layout, self.mktemp())
        for node in cluster.nodes.values():
            node.alive = lambda: True
        runner = FakeRunner()
        events, calls = [], []

        def in_namespace(namespace, function):
            calls.append(namespace)
            return function()

        def request(method, url, body=None, headers=None, timeout=0):
            calls.append((method, url, body, headers["Authorization"]))
            return HTTPResult(200, {}, b"{}")

        faults = netns.NetnsFaults(netns.Network(layout, runner), cluster, "tok",
                                   log=lambda action, **f: events.append((action, f)),
                                   request=request, in_namespace=in_namespace)
        faults.cut(partition_cuts(["n1"], ["n2", "n3"]))
        self.assertEqual(len(runner.commands), 4)
        self.assertEqual(events[0][0], "blackhole")
        faults.lossy(["n3"], 0.25)
        self.assertEqual(calls, ["txc9-n3", ("PUT", "http://127.0.0.1:7001/admin/faults",
                                            b'{"loss_rate": 0.25}', "Bearer tok")])
        del calls[:], runner.commands[:]
        faults.heal()
        self.assertEqual([c[4] for c in runner.commands], ["del"] * 4)
        self.assertEqual(calls, ["txc9-n3", ("DELETE", "http://127.0.0.1:7001/admin/faults",
                                            None, "Bearer tok")])
        del calls[:]
        faults.heal()
        self.assertEqual(calls, [])


class NetnsRoundTests(SynchronousTestCase):
    """One short real run in network namespaces (about 30 s)."""

    def test_partitions_three_nodes(self):
        """Symmetric, isolated-leader, one-way and crash-in-partition cuts made by the
        kernel: linearizable, live after healing, and every namespace, veth and bridge
        of the run removed afterwards."""
        reason = netns.unavailable()
        if reason:
            raise SkipTest("the machine does not allow network namespaces: " + reason)
        report = run_round(self, nodes=3, duration=15, seed=4, workload_name="kv",
                           clients=6, net="netns", out=self.mktemp(),
                           faults="partition,isolate_leader,one_way,crash_in_partition")
        assert_passed(self, report)
        self.assertGreaterEqual(sum(report.faults.values()), 3, report.table())
        prefix = "txc%x-" % os.getpid()
        namespaces, links = netns.list_resources()
        self.assertEqual([n for n in namespaces + links if n.startswith(prefix)], [])
