"""Snapshot transfer (``txraft.runtime.transfer``): an InstallSnapshot and its image in
chunks over a lossy, reordering datagram network (Raft section 7, Figure 13).

The transfer is pure: these tests drive both halves with a hand-made clock and lists as
the network, as the node and the simulator do with theirs.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from txraft.core.messages import InstallSnapshot, SnapshotChunk, SnapshotChunkAck, SnapshotMeta
from txraft.core.config import Configuration
from txraft.runtime.transfer import FINISHED, MOVING, SnapshotTransfers, encode_payload


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def seconds(self):
        return self.now


def transfers(image=b"x" * 1000, index=50, chunk_bytes=100, window=4):
    sent = []
    clock = FakeClock()
    latest = [(SnapshotMeta(index, 3), image)]
    t = SnapshotTransfers(
        "a", sent.append, clock.seconds, latest=lambda: latest[0],
        chunk_bytes=chunk_bytes, window=window, resend_after_seconds=0.05,
    )
    return t, sent, clock, latest


def offer(term, index, read_seq=0):
    """What the leader's core emits: the intent, without the image."""
    return InstallSnapshot(term, "a", "b", index, 3, read_seq=read_seq)


def ack(term, index, offset, done=False):
    return SnapshotChunkAck(term, "b", "a", index, offset, done=done)


class LeaderSideTests(SynchronousTestCase):
    def test_sends_a_window_of_chunks(self):
        """The leader sends a window of in-order chunks and more as they are acked."""
        t, sent, clock, _ = transfers()
        self.assertEqual(t.start(offer(7, 50)), SnapshotMeta(50, 3))
        self.assertEqual([m.offset for m in sent], [0, 100, 200, 300])
        self.assertTrue(all(type(m) is SnapshotChunk for m in sent))
        del sent[:]
        self.assertEqual(t.acknowledged(ack(7, 50, 200)), MOVING)
        self.assertEqual([m.offset for m in sent], [400, 500])

    def test_chunks_carry_the_offer_and_only_the_last_is_done(self):
        """Every chunk names the snapshot and the offer's ReadIndex round (the
        follower's core echoes it); ``done`` marks the last byte."""
        t, sent, clock, _ = transfers(image=b"y" * 250, window=8)
        t.start(offer(7, 50, read_seq=9))
        size = len(encode_payload(SnapshotMeta(50, 3), b"y" * 250))  # the header, then 250
        self.assertEqual([(m.offset, len(m.data), m.done) for m in sent],
                         [(0, 100, False), (100, 100, False), (200, size - 200, True)])
        self.assertEqual({(m.last_included_index, m.last_included_term, m.read_seq)
                          for m in sent}, {(50, 3, 9)})

    def test_follower_holding_all_of_it_finishes_the_transfer(self):
        """An acknowledgement with ``done`` ends the transfer: FINISHED is reported
        once, and later acknowledgements are not news."""
        t, sent, clock, _ = transfers()
        t.start(offer(7, 50))
        self.assertEqual(t.acknowledged(ack(7, 50, 1000, done=True)), FINISHED)
        self.assertEqual(t.outgoing, {})
        self.assertIsNone(t.acknowledged(ack(7, 50, 1000, done=True)))

    def test_offer_again_resumes_a_transfer_instead_of_restarting_it(self):
        """The core re-offers a snapshot after an election timeout without an answer; a
        transfer of the same term that covers the index goes on from the acknowledged
        byte, even when a newer image exists (regression: the 30-minute chaos soak
        restarted transfers 2,898 times for 105 installs)."""
        t, sent, clock, latest = transfers()
        t.start(offer(7, 50))
        t.acknowledged(ack(7, 50, 400))
        latest[0] = (SnapshotMeta(90, 3), b"y" * 2000)
        del sent[:]
        self.assertEqual(t.start(offer(7, 50)), SnapshotMeta(50, 3))
        self.assertEqual(sent[0].offset, 400)
        self.assertEqual({m.last_included_index for m in sent}, {50})
        self.assertEqual(t.stats["sent"], 1)

    def test_offer_for_a_newer_index_or_term_starts_over(self):
        """A transfer that no longer covers what the follower needs, or belongs to an
        earlier term, is replaced by the latest image from its first byte."""
        t, sent, clock, latest = transfers()
        t.start(offer(7, 50))
        t.acknowledged(ack(7, 50, 400))
        latest[0] = (SnapshotMeta(90, 3), b"y" * 2000)
        del sent[:]
        t.start(offer(7, 60))
        self.assertEqual((sent[0].offset, sent[0].last_included_index), (0, 90))
        del sent[:]
        t.start(offer(8, 60))
        self.assertEqual((sent[0].offset, sent[0].term), (0, 8))

    def test_no_stored_snapshot_is_reported(self):
        """start() returns None when no stored image covers the index."""
        t, sent, clock, _ = transfers(index=50)
        self.assertIsNone(t.start(offer(7, 51)))
        self.assertEqual(sent, [])

    def test_zero_offset_rewinds_to_the_first_byte(self):
        """A follower that holds none of the image (it restarted) answers a chunk from
        the middle with offset 0; the leader goes back to the first byte."""
        t, sent, clock, _ = transfers()
        t.start(offer(7, 50))
        t.acknowledged(ack(7, 50, 400))
        del sent[:]
        self.assertIsNone(t.acknowledged(ack(7, 50, 0)))
        self.assertEqual(sent[0].offset, 0)

    def test_stale_and_duplicate_acks_change_nothing(self):
        """Acks of another term or image, or repeating an offset, are ignored."""
        t, sent, clock, _ = transfers()
        t.start(offer(7, 50))
        t.acknowledged(ack(7, 50, 300))
        del sent[:]
        self.assertIsNone(t.acknowledged(ack(7, 50, 300)))
        self.assertIsNone(t.acknowledged(ack(7, 50, 100)))
        self.assertIsNone(t.acknowledged(ack(6, 50, 900)))
        self.assertIsNone(t.acknowledged(ack(7, 49, 900, done=True)))
        self.assertEqual(sent, [])

    def test_silence_resends_with_back_off_and_unwanted_transfers_stop(self):
        """Without acknowledgements the window is resent from the acknowledged byte,
        each time after twice the wait (up to the cap); a transfer the core no longer
        wants is dropped at the next tick."""
        t, sent, clock, _ = transfers()
        t.start(offer(7, 50))
        t.acknowledged(ack(7, 50, 200))
        resends = []
        for step in range(40):
            del sent[:]
            clock.now += 0.05
            t.tick(lambda peer, term: True)
            if sent:
                resends.append((round(clock.now, 2), sent[0].offset))
        self.assertEqual([offset for _, offset in resends], [200] * len(resends))
        gaps = [b[0] - a[0] for a, b in zip(resends, resends[1:])]
        self.assertEqual(gaps, sorted(gaps))
        self.assertLessEqual(max(gaps), t.max_backoff_seconds + 0.051)
        t.tick(lambda peer, term: False)
        self.assertEqual(t.outgoing, {})


class FollowerSideTests(SynchronousTestCase):
    def follower(self):
        sent = []
        return SnapshotTransfers("b", sent.append, lambda: 0.0), sent

    def chunk(self, offset, data, done, term=3, leader="a", index=50, read_seq=0):
        return SnapshotChunk(term, leader, "b", index, 3, offset, data, done=done,
                             read_seq=read_seq)

    def test_whole_image_is_delivered_to_the_core_once(self):
        """In-order chunks are acknowledged one by one; the last one yields the whole
        InstallSnapshot, with the image and the offer's read_seq, for the core."""
        follower, sent = self.follower()
        conf = Configuration.of_voters(["a", "b", "c"])
        payload = encode_payload(SnapshotMeta(50, 3, configuration=conf, config_index=7),
                                 b"abcd")
        first, rest = payload[:5], payload[5:]
        self.assertIsNone(follower.received(self.chunk(0, first, False, read_seq=4), 3, "a", 0))
        whole = follower.received(self.chunk(5, rest, True, read_seq=4), 3, "a", 0)
        self.assertEqual(whole, InstallSnapshot(3, "a", "b", 50, 3, read_seq=4))
        self.assertEqual(whole.data, b"abcd")
        # Dissertation 5.1: the snapshot carries the configuration its entries held.
        self.assertEqual((whole.configuration, whole.config_index), (conf, 7))
        self.assertEqual([(m.next_offset, m.done) for m in sent],
                         [(5, False), (len(payload), True)])

    def test_a_payload_whose_header_does_not_decode_is_never_installed(self):
        """A whole payload with a header this node cannot read (a bug, another
        version) is counted and dropped, never handed to the core: the follower
        acknowledges none of it, so the leader starts over."""
        for payload in (b"", b"\x00\x00", b"\x00\x00\x00\x09abc",
                        b"\x00\x00\x00\x01\xc1image",
                        b"\x00\x00\x00\x04\x93\x01\x00\xa1xyz"):
            follower, sent = self.follower()
            self.assertIsNone(follower.received(self.chunk(0, payload, True), 3, "a", 0))
            self.assertEqual(follower.stats["malformed"], 1)
            self.assertEqual([(m.next_offset, m.done) for m in sent], [(0, False)])
            self.assertIsNone(follower.incoming)
        self.assertIsNone(follower.incoming)

    def test_out_of_order_chunk_is_answered_with_what_is_held(self):
        """A chunk that does not start where the image ends is not taken; the answer
        says how much is held (0 for a chunk of an image never started)."""
        follower, sent = self.follower()
        self.assertIsNone(follower.received(self.chunk(4, b"ef", False), 3, "a", 0))
        follower.received(self.chunk(0, b"ab", False), 3, "a", 0)
        self.assertIsNone(follower.received(self.chunk(4, b"ef", False), 3, "a", 0))
        self.assertEqual([m.next_offset for m in sent], [0, 2, 2])

    def test_a_snapshot_already_covered_is_not_received_again(self):
        """When the follower already holds everything a snapshot covers (its last answer
        was lost), the first chunk is answered done at once and the core gets the
        InstallSnapshot without an image, to answer it; later chunks change nothing."""
        follower, sent = self.follower()
        whole = follower.received(self.chunk(0, b"ab", False), 3, "a", 60)
        self.assertEqual(whole, InstallSnapshot(3, "a", "b", 50, 3))
        self.assertIsNone(whole.data)
        self.assertIsNone(follower.received(self.chunk(2, b"cd", True), 3, "a", 60))
        self.assertEqual([m.done for m in sent], [True, True])
        self.assertIsNone(follower.incoming)

    def test_chunks_of_another_term_or_leader_are_ignored(self):
        """Only the current leader of the current term may send chunks: the heartbeats
        bring the term and the leader first."""
        follower, sent = self.follower()
        self.assertIsNone(follower.received(self.chunk(0, b"ab", True, term=2), 3, "a", 0))
        self.assertIsNone(follower.received(self.chunk(0, b"ab", True, leader="c"), 3, "a", 0))
        self.assertEqual(sent, [])

    def test_partial_image_of_a_deposed_leader_is_dropped(self):
        """A follower forgets a half-received image once a new leader speaks, instead of
        holding its buffer forever."""
        follower, sent = self.follower()
        follower.received(self.chunk(0, b"x" * 10, False), 3, "a", 0)
        self.assertTrue(follower.receiving_from("a", 3))
        follower.received(self.chunk(10, b"y", False, term=4, leader="c", index=60), 4, "c", 0)
        self.assertIsNone(follower.incoming)
        self.assertFalse(follower.receiving_from("a", 3))

    def test_oversized_image_is_refused(self):
        """An image growing past ``max_snapshot_bytes`` is dropped, not buffered."""
        sent = []
        follower = SnapshotTransfers("b", sent.append, lambda: 0.0, max_snapshot_bytes=3)
        follower.received(self.chunk(0, b"ab", False), 3, "a", 0)
        self.assertIsNone(follower.received(self.chunk(2, b"cd", True), 3, "a", 0))
        self.assertIsNone(follower.incoming)
        self.assertEqual(sent[-1].next_offset, 0)


class BothSidesTests(SynchronousTestCase):
    def test_lost_first_chunk_costs_one_resend(self):
        """Figure 13 over UDP: when a window's first chunk is lost the follower answers
        each later chunk with offset 0; the leader rewinds once, not once per answer
        (which sent 31 x 32 = 992 chunks for one lost datagram)."""
        to_follower, to_leader = [], []
        meta = SnapshotMeta(100, 3)
        leader = SnapshotTransfers("a", to_follower.append, lambda: 0.0,
                                   latest=lambda: (meta, b"x" * 64 * 40), chunk_bytes=64)
        receiver = SnapshotTransfers("b", to_leader.append, lambda: 0.0)
        self.assertIsNotNone(leader.start(InstallSnapshot(3, "a", "b", 100, 3)))
        self.assertEqual(len(to_follower), 32)
        del to_follower[0]  # lost
        for m in list(to_follower):
            receiver.received(m, 3, "a", 0)
        del to_follower[:]
        for r in to_leader:
            leader.acknowledged(r)
        self.assertLessEqual(len(to_follower), 32)

    def test_a_lossy_reordering_duplicating_link_delivers_the_whole_image(self):
        """Chunks and acknowledgements lost, duplicated and reordered on the way: the
        follower reassembles exactly the leader's image, and the leader hears that it
        finished."""
        image = bytes(range(256)) * 20
        leader, to_follower, clock, _ = transfers(image=image)
        to_leader = []
        follower = SnapshotTransfers("b", to_leader.append, clock.seconds)
        leader.start(offer(7, 50))
        whole = finished = None
        for turn in range(2000):
            batch = list(to_follower)
            del to_follower[:]
            if turn % 2:
                batch.reverse()
            for i, m in enumerate(batch + batch[:1]):
                if (turn + i) % 3 == 0:
                    continue  # lost
                got = follower.received(m, 7, "a", 0 if whole is None else 50)
                if got is not None and got.data is not None:
                    whole = got
            for i, m in enumerate(list(to_leader)):
                if (turn + i) % 4 != 0 and leader.acknowledged(m) == FINISHED:
                    finished = turn
            del to_leader[:]
            if whole is not None and finished is not None:
                break
            clock.now += 0.05
            leader.tick(lambda peer, term: True)
        self.assertEqual(whole.data, image)
        self.assertEqual((whole.last_included_index, whole.last_included_term), (50, 3))
        self.assertIsNotNone(finished)
