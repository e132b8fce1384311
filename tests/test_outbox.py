"""The outbox on its own: real SQLite files, a real broker, real paho acknowledgements."""

from __future__ import annotations

import contextlib
import json
import resource
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultline.agent.outbox import ClassPolicy, Outbox, OutboxConfig
from faultline.agent.outbox.backlog import Backlog, Entry
from faultline.agent.outbox.store import NewRow, open_store
from faultline.agent.transport.broker import MosquittoProcess
from faultline.agent.transport.mqtt import MqttTransport
from tests.collector import Collector

POLICIES = {
    "alert": ClassPolicy(ttl_s=3600, on_full="drop_oldest"),
    "error": ClassPolicy(ttl_s=3600, on_full="reject_new"),
}


def _entry(order: int, cls: str = "alert", stream: str = "alert:a", size: int = 10) -> Entry:
    return Entry(order, f"id-{order}", cls, stream, order, "t", False, float(order), 1e12, size)


def _add(backlog: Backlog, entry: Entry) -> bool:
    admission = backlog.admit(entry.cls, entry.size)
    if admission.accepted:
        backlog.add(entry)
    return admission.accepted


# ---------------------------------------------------------------- the pure backlog


def test_backlog_keeps_stream_order_and_takes_streams_in_turn() -> None:
    backlog = Backlog(POLICIES, max_rows=100, max_bytes=10_000)
    for order, stream in enumerate(["alert:a", "alert:a", "alert:a", "alert:b"], start=1):
        _add(backlog, _entry(order, stream=stream))
    sent = []
    while (entry := backlog.next_ready(0.0, replay_before=0.0, may_replay=True)) is not None:
        sent.append(entry.order)
    # b's only message does not wait behind a's backlog; a's leave in order.
    assert sent == [1, 4, 2, 3]


def test_backlog_paces_replays_without_letting_live_messages_overtake() -> None:
    backlog = Backlog(POLICIES, max_rows=100, max_bytes=10_000)
    _add(backlog, _entry(1, stream="alert:a"))  # created at 1.0: a replay
    _add(backlog, _entry(5, stream="alert:a"))  # live, behind the replay
    _add(backlog, _entry(6, stream="alert:b"))  # live, another stream
    got = backlog.next_ready(0.0, replay_before=3.0, may_replay=False)
    assert got is not None
    assert got.order == 6
    assert backlog.next_ready(0.0, replay_before=3.0, may_replay=False) is None
    first = backlog.next_ready(0.0, replay_before=3.0, may_replay=True)
    assert first is not None
    assert first.order == 1


def test_drop_oldest_evicts_own_class_first_and_never_what_is_in_flight() -> None:
    backlog = Backlog(POLICIES, max_rows=3, max_bytes=10_000)
    for order in (1, 2):
        _add(backlog, _entry(order))
    _add(backlog, _entry(3, cls="error", stream="error:agent"))
    in_flight = backlog.next_ready(0.0, replay_before=0.0, may_replay=True)
    assert in_flight is not None
    assert in_flight.order == 1
    admission = backlog.admit("alert", 10)
    assert admission.accepted
    assert [e.order for e in admission.evicted] == [2]
    backlog.add(_entry(4))
    # Full of an in-flight alert, an error and a new alert: the next alert evicts alert 4.
    admission = backlog.admit("alert", 10)
    assert [e.order for e in admission.evicted] == [4]


def test_reject_new_refuses_and_ttl_expires_in_order() -> None:
    backlog = Backlog(POLICIES, max_rows=2, max_bytes=10_000)
    assert _add(backlog, _entry(1, cls="error", stream="error:agent"))
    assert _add(backlog, _entry(2, cls="error", stream="error:agent"))
    assert not _add(backlog, _entry(3, cls="error", stream="error:agent"))
    assert backlog.rows == 2
    short = Backlog(
        {"alert": ClassPolicy(ttl_s=1, on_full="drop_oldest")}, max_rows=9, max_bytes=99
    )
    for order in (1, 2, 3):
        entry = _entry(order)
        entry.expires_at = float(order)
        _add(short, entry)
    assert [e.order for e in short.expire(2.0)] == [1, 2]
    assert short.rows == 1


# ---------------------------------------------------------------- the outbox, for real


class _Link:
    """A real transport and an outbox wired the way the agent wires them."""

    def __init__(self, port: int, path: Path | None, **config: Any) -> None:
        self.faults: list[tuple[str, str]] = []
        self.reported_under_lock: list[str] = []
        self.outbox = Outbox(
            OutboxConfig(path=path, policies=POLICIES, **config), on_fault=self._on_fault
        )
        self.transport = MqttTransport(
            host="127.0.0.1",
            port=port,
            client_id=f"outbox-test-{uuid.uuid4().hex[:8]}",
            status_topic=f"t/{uuid.uuid4().hex[:8]}/status",
            status_online=dict,
            on_message=lambda _m: None,
            on_connection_change=self.outbox.link_changed,
            on_published=self.outbox.published,
            reconnect_min_s=0.1,
            reconnect_max_s=0.5,
        )
        self.outbox.attach(
            lambda topic, payload, *, retain, user_properties, correlation_data: (
                self.transport.publish(
                    topic,
                    payload,
                    qos=1,
                    retain=retain,
                    user_properties=user_properties,
                    correlation_data=correlation_data,
                )
            )
        )

    def _on_fault(self, code: str, reason: str) -> None:
        """As the agent's: recorded, then the status published through the MQTT client.
        Also checks the outbox's lock is free meanwhile: paho holds its own lock while it
        runs the PUBACK callback that takes the outbox's, so a report made under the
        outbox's lock can deadlock against it."""
        self.faults.append((code, reason))
        taken: list[bool] = []

        def probe() -> None:
            taken.append(self.outbox._cond.acquire(timeout=2))
            if taken[0]:
                self.outbox._cond.release()

        prober = threading.Thread(target=probe)
        prober.start()
        prober.join()
        if not taken[0]:
            self.reported_under_lock.append(code)
        self.transport.publish_status()

    def start(self) -> _Link:
        self.outbox.start()
        self.transport.start()
        assert self.transport.wait_connected(10)
        return self

    def stop(self) -> int:
        left = self.outbox.stop(5.0)
        self.transport.stop()
        return left


def _put(
    outbox: Outbox, topic: str, n: int, asset: str = "a", first: int = 0, pad: int = 0
) -> None:
    for i in range(first, first + n):
        body = {"n": i, "replay": False, "pad": "x" * pad}
        outbox.put(
            "alert",
            asset,
            topic,
            lambda seq, body=body: json.dumps({**body, "seq": seq}).encode(),
            f"{asset}-{i}",
        )


def _leave_behind(path: Path, topic: str, n: int) -> None:
    """A process with no broker link accepts ``n`` messages and stops: they stay on disk."""
    offline = Outbox(OutboxConfig(path=path, policies=POLICIES), on_fault=lambda *_a: None)
    offline.start()
    _put(offline, topic, n)
    assert offline.stop(1.0) == n


def _rows(path: Path) -> int:
    """Messages in an outbox file; 0 while it does not exist yet (never creates one)."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    except sqlite3.OperationalError:
        return 0


@pytest.fixture
def broker(mosquitto: MosquittoProcess) -> MosquittoProcess:
    return mosquitto


def test_every_message_is_delivered_numbered_and_then_deleted(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    topic = f"t/{uuid.uuid4().hex[:8]}/alerts/a"
    collector = Collector("127.0.0.1", broker.port, [topic])
    link = _Link(broker.port, tmp_path / "outbox.sqlite").start()
    try:
        _put(link.outbox, topic, 500)
        got = collector.wait_for(lambda t, b: True, count=500, timeout=30)
        assert [b["seq"] for _t, b in got] == list(range(1, 501))
        assert [b["n"] for _t, b in got] == list(range(500))
        deadline = time.monotonic() + 10
        while link.outbox.stats()["depth"] and time.monotonic() < deadline:
            time.sleep(0.05)
        stats = link.outbox.stats()
        assert stats["depth"] == 0
        assert stats["delivered"] == {"alert": 500}
    finally:
        assert link.stop() == 0
        collector.close()
    assert _rows(tmp_path / "outbox.sqlite") == 0  # PUBACKed messages leave the file


def test_a_restart_replays_the_backlog_with_its_ids_and_numbers(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    path = tmp_path / "outbox.sqlite"
    topic = f"t/{uuid.uuid4().hex[:8]}/alerts/a"
    # No broker link at all: what is accepted stays on disk when the process stops.
    _leave_behind(path, topic, 5)
    assert _rows(path) == 5

    collector = Collector("127.0.0.1", broker.port, [topic])
    link = _Link(broker.port, path)
    assert link.outbox.stats()["depth"] == 5
    link.start()
    try:
        _put(link.outbox, topic, 2, first=5)  # new messages continue the numbers
        got = collector.wait_for(lambda t, b: True, count=7, timeout=20)
    finally:
        link.stop()
        collector.close()
    bodies = [b for _t, b in got]
    assert [b["seq"] for b in bodies] == list(range(1, 8))
    assert [b["replay"] for b in bodies] == [True] * 5 + [False] * 2
    assert all("replayed_at" in b for b in bodies[:5])


def test_a_corrupt_outbox_is_moved_aside_reported_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    path.write_bytes(b"this is not a database, it is a dying SD card" * 100)
    faults: list[tuple[str, str]] = []
    outbox = Outbox(
        OutboxConfig(path=path, policies=POLICIES), on_fault=lambda c, r: faults.append((c, r))
    )
    assert faults == []  # nobody to tell while the agent is still being built
    outbox.start()
    [(code, reason)] = faults
    assert code == "outbox_corrupt"
    [moved] = tmp_path.glob("outbox.sqlite.corrupt-*")
    assert moved.read_bytes().startswith(b"this is not a database")
    assert str(moved) in reason
    _put(outbox, "t/x", 3)
    outbox.stop(1.0)
    assert _rows(path) == 3  # the new file works


def test_a_redelivered_window_is_answered_once(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(OutboxConfig(path=path, policies=POLICIES), on_fault=lambda *_a: None)
    outbox.start()
    acks: list[str] = []
    stored = threading.Event()
    assert outbox.claim("window|a|1.0", lambda: acks.append("first"))
    # The copy redelivered while the first is being answered waits for that answer.
    assert not outbox.claim("window|a|1.0", lambda: acks.append("redelivered"))
    outbox.put(
        "alert",
        "a",
        "t/a",
        lambda seq: b"{}",
        "alert-1",
        answers="window|a|1.0",
        on_stored=lambda: (acks.append("first"), stored.set()),
    )
    assert stored.wait(5)
    assert sorted(acks) == ["first", "redelivered"]
    outbox.stop(1.0)
    # A new process remembers what was answered (the answers are in the same file).
    again = Outbox(OutboxConfig(path=path, policies=POLICIES), on_fault=lambda *_a: None)
    assert not again.claim("window|a|1.0", lambda: acks.append("after restart"))
    assert acks[-1] == "after restart"
    assert again.claim("window|a|2.0", lambda: None)


@pytest.fixture
def file_size_limit() -> Iterator[Any]:
    """Lower this process's RLIMIT_FSIZE (a disk that is full), always restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def limit(size: int | None) -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft if size is None else size, hard))

    try:
        yield limit
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def test_a_full_disk_is_survived_in_memory_reported_and_recovered(
    broker: MosquittoProcess, tmp_path: Path, file_size_limit: Any
) -> None:
    path = tmp_path / "outbox.sqlite"
    topic = f"t/{uuid.uuid4().hex[:8]}/alerts/a"
    collector = Collector("127.0.0.1", broker.port, [topic])
    link = _Link(broker.port, path, retry_s=0.2).start()
    try:
        _put(link.outbox, topic, 5)
        collector.wait_for(lambda t, b: True, count=5, timeout=10)
        size = sum(p.stat().st_size for p in tmp_path.glob("outbox.sqlite*"))
        file_size_limit(size)  # no file may grow: the disk is full
        _put(link.outbox, topic, 200, first=5, asset="a")
        collector.wait_for(lambda t, b: True, count=205, timeout=20)
        codes = [c for c, _r in link.faults]
        assert "outbox_unwritable" in codes, link.faults
        # The retry may already have found room again (SQLite reuses WAL pages below the
        # limit), so the memory mode itself is not asserted here; the failed write is.
        assert link.outbox.stats()["write_failures"] >= 1
        file_size_limit(None)  # space is back
        deadline = time.monotonic() + 10
        while link.outbox.stats()["mode"] != "disk" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.outbox.stats()["mode"] == "disk"
        assert "outbox_recovered" in [c for c, _r in link.faults]
        _put(link.outbox, topic, 5, first=205)
        got = collector.wait_for(lambda t, b: True, count=210, timeout=10)
    finally:
        file_size_limit(None)
        link.stop()
        collector.close()
    # Nothing lost, nothing numbered twice, in order.
    assert [b["n"] for _t, b in got] == list(range(210))
    assert [b["seq"] for _t, b in got] == list(range(1, 211))


def test_essential_reports_are_admitted_beyond_the_bounds() -> None:
    backlog = Backlog(POLICIES, max_rows=1, max_bytes=10_000)
    assert _add(backlog, _entry(1, cls="error", stream="error:agent"))
    assert not backlog.admit("error", 10).accepted  # reject_new, full
    # The report that something was lost must not be lost to the same full outbox.
    assert backlog.admit("error", 10, essential=True).accepted
    assert backlog.rows == 2


def test_a_refused_message_leaves_a_persisted_gap(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    policies = {"alert": ClassPolicy(ttl_s=3600, on_full="reject_new")}
    outbox = Outbox(
        OutboxConfig(path=path, policies=policies, max_rows=2), on_fault=lambda *_a: None
    )
    outbox.start()
    _put(outbox, "t/a", 4)
    assert outbox.stop(1.0) == 2
    assert outbox.stats()["rejected"] == {"alert": 2}
    again = Outbox(OutboxConfig(path=path, policies=policies), on_fault=lambda *_a: None)
    # Numbers 3 and 4 were given to the refused messages: the next one is 5, so a consumer
    # sees 1, 2, 5 and knows two were lost.
    assert again.sequence("alert:a") == 4


def test_a_backlog_on_a_full_disk_is_still_sent(
    broker: MosquittoProcess, tmp_path: Path, file_size_limit: Any
) -> None:
    """Rows already on disk are read back while writes fail (a full disk still reads)."""
    path = tmp_path / "outbox.sqlite"
    topic = f"t/{uuid.uuid4().hex[:8]}/alerts/a"
    _leave_behind(path, topic, 20)
    collector = Collector("127.0.0.1", broker.port, [topic])
    link = _Link(broker.port, path, retry_s=30.0, payload_cache_bytes=0)
    try:
        file_size_limit(sum(p.stat().st_size for p in tmp_path.glob("outbox.sqlite*")))
        link.outbox.start()
        _put(link.outbox, topic, 300, first=20, pad=2000)  # cannot be written: in memory
        deadline = time.monotonic() + 10
        while link.outbox.stats()["mode"] != "memory" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert link.outbox.stats()["mode"] == "memory"
        link.transport.start()  # the link comes up only now, with the disk full
        got = collector.wait_for(lambda t, b: True, count=320, timeout=20)
        stats = link.outbox.stats()
    finally:
        file_size_limit(None)
        link.stop()
        collector.close()
    assert [b["n"] for _t, b in got] == list(range(320))
    assert stats["unreadable"] == {}
    assert stats["refused_by_broker"] == {}


def test_a_file_that_opens_late_is_adopted_and_its_numbers_continue(tmp_path: Path) -> None:
    state = tmp_path / "state"
    path = state / "outbox.sqlite"
    first = Outbox(OutboxConfig(path=path, policies=POLICIES), on_fault=lambda *_a: None)
    first.start()
    _put(first, "t/a", 5)
    assert first.stop(1.0) == 5
    # The state volume is not there at start-up (not mounted yet): a file stands in its way.
    state.rename(tmp_path / "unmounted")
    state.write_text("not a folder")
    faults: list[tuple[str, str]] = []
    late = Outbox(
        OutboxConfig(path=path, policies=POLICIES, retry_s=0.1),
        on_fault=lambda c, r: faults.append((c, r)),
    )
    late.start()
    assert [c for c, _r in faults] == ["outbox_unwritable"]  # said once started
    _put(late, "t/a", 3, first=5)  # numbered 1..3 in memory: the file's numbers are unknown
    state.unlink()
    (tmp_path / "unmounted").rename(state)  # mounted
    deadline = time.monotonic() + 10
    while late.stats()["mode"] != "disk" and time.monotonic() < deadline:
        _put(late, "t/a", 0)
        time.sleep(0.05)
    assert late.stats()["mode"] == "disk"
    assert "outbox_recovered" in [c for c, _r in faults]
    _put(late, "t/a", 1, first=8)
    assert late.stop(1.0) == 9  # the file's five and this run's four, none lost
    assert late.sequence("alert:a") == 6  # continues above the file's 5, never below
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT value FROM sequences WHERE stream='alert:a'").fetchone() == (6,)


def test_rows_of_a_file_that_turns_corrupt_are_kept_and_never_deleted_by_number(
    broker: MosquittoProcess, tmp_path: Path
) -> None:
    """The writer meets "malformed" mid-run (the handler is driven directly: SQLite's own
    detection of a torn page cannot be timed in a test). The waiting messages are read back,
    written to the new file, and sent; no acknowledgement deletes a row of the new file."""
    path = tmp_path / "outbox.sqlite"
    topic = f"t/{uuid.uuid4().hex[:8]}/alerts/a"
    link = _Link(broker.port, path, retry_s=0.1, payload_cache_bytes=0)
    link.outbox.start()
    _put(link.outbox, topic, 5)
    deadline = time.monotonic() + 5
    while _rows(path) < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    with link.outbox._cond:
        link.outbox._disk_failed(sqlite3.DatabaseError("database disk image is malformed"))
    deadline = time.monotonic() + 5  # the writer reports faults once it holds no lock
    while len(link.faults) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [c for c, _r in link.faults][:2] == ["outbox_corrupt", "outbox_unwritable"]
    assert link.reported_under_lock == []
    [moved] = [
        p for p in tmp_path.glob("outbox.sqlite.corrupt-*") if p.name[-4:] not in ("-wal", "-shm")
    ]
    _put(link.outbox, topic, 5, first=5)  # the retry writes all ten to a new file
    collector = Collector("127.0.0.1", broker.port, [topic])
    try:
        deadline = time.monotonic() + 10
        while _rows(path) < 10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _rows(path) == 10
        link.transport.start()
        got = collector.wait_for(lambda t, b: True, count=10, timeout=20)
        deadline = time.monotonic() + 10
        while _rows(path) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        link.stop()
        collector.close()
    assert [b["n"] for _t, b in got] == list(range(10))
    assert [b["seq"] for _t, b in got] == list(range(1, 11))
    assert _rows(path) == 0
    assert _rows(moved) == 5  # the old file is kept as it was, for an operator


def test_a_drained_file_gives_its_space_back(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite"
    store = open_store(path).store
    rows = [
        NewRow(f"id-{i}", "alert", "alert:a", i, "t", b"x" * 10_000, False, 0.0, 1e12, None)
        for i in range(3000)
    ]
    ids = store.write(rows, [], {"alert:a": 3000})
    store.write([], [i for i in ids if i is not None], {})
    full = path.stat().st_size
    while store.reclaim(keep_free_pages=0, at_most_pages=4096):
        store.write([], [], {})  # a commit checkpoints the WAL back into the file
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    store.close()
    assert full > 30_000_000
    assert path.stat().st_size < 1_000_000


def test_an_outbox_of_schema_1_is_migrated_with_its_rows(tmp_path: Path) -> None:
    """A gateway updated with messages waiting: the file gains the answers' column and
    keeps every row (written here as the previous agent wrote it)."""
    path = tmp_path / "outbox.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(
            """
            CREATE TABLE messages (id INTEGER PRIMARY KEY, msg_id TEXT NOT NULL UNIQUE,
                class TEXT NOT NULL, stream TEXT NOT NULL, seq INTEGER NOT NULL,
                topic TEXT NOT NULL, payload BLOB NOT NULL, retain INTEGER NOT NULL DEFAULT 0,
                created_at REAL NOT NULL, expires_at REAL NOT NULL);
            CREATE TABLE sequences (stream TEXT PRIMARY KEY, value INTEGER NOT NULL);
            CREATE TABLE answered (key TEXT PRIMARY KEY, msg_id TEXT NOT NULL, at REAL NOT NULL);
            INSERT INTO messages VALUES (1, 'm1', 'alert', 'alert:a', 1, 't', x'7b7d', 0, 1, 1e12);
            INSERT INTO sequences VALUES ('alert:a', 1);
            PRAGMA user_version=1;
            """
        )
    outbox = Outbox(OutboxConfig(path=path, policies=POLICIES), on_fault=lambda *_a: None)
    assert outbox.stats()["depth"] == 1
    assert outbox.sequence("alert:a") == 1
    outbox.start()
    outbox.put("alert", "a", "t", lambda seq: b"{}", "m2", correlation=b"\x00\x01")
    assert outbox.stop(1.0) == 2
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (2,)
        rows = conn.execute("SELECT msg_id, correlation FROM messages ORDER BY id").fetchall()
    assert rows == [("m1", None), ("m2", b"\x00\x01")]
