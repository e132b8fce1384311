"""Store-and-forward: every outgoing alert, report and error is on disk before it is sent.

Two threads, chosen on purpose:

* the **writer** owns the SQLite file. ``put`` only queues; the writer waits up to
  ``commit_wait_s`` for company and makes the whole group durable in one transaction (one
  fsync for many messages), numbers each message in its stream, then runs the callbacks
  that were waiting for durability (the inbound PUBACK of the window the alert answers);
* the **sender** hands durable messages to the MQTT client, oldest first per stream, at
  most ``window`` unacknowledged at a time, and paces replays with a token bucket. A
  message leaves the file only when the broker's PUBACK for it has come back.

When the file cannot be written (full or read-only disk, I/O error) the outbox keeps
serving from memory (bounded by ``memory_max_rows``), reports the fault, and retries the
disk every ``retry_s``; the rows held in memory are written as soon as it works again. The
connection stays open meanwhile (a full disk still reads, so the backlog already on disk is
still sent). A file that turns corrupt is moved aside; what could be read of its backlog is
held in memory and written to the new file. A file that could not be opened at start-up is
loaded when it first opens (its backlog replayed, its numbers continued).
"""

from __future__ import annotations

import json
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from faultline.agent.outbox.backlog import Backlog, ClassPolicy, Entry
from faultline.agent.outbox.store import (
    NewRow,
    OpenedStore,
    OutboxStore,
    open_store,
    quarantine,
)

__all__ = ["Outbox", "OutboxConfig", "Publisher"]

log = logging.getLogger(__name__)

REPLAY_PROPERTY = "replay"
_IDLE_S = 0.05
_ANNOUNCE_EVERY_S = 5.0
_PRUNE_EVERY_S = 60.0


class Publisher(Protocol):
    """What the sender needs from the transport: queue one QoS 1 message, get its mid."""

    def __call__(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool,
        user_properties: dict[str, str],
        correlation_data: bytes | None,
    ) -> int: ...


@dataclass(frozen=True)
class OutboxConfig:
    path: Path | None  # None: memory only (no durability; for a disk-less gateway)
    policies: dict[str, ClassPolicy]
    max_rows: int = 200_000
    max_bytes: int = 256 * 1024 * 1024
    memory_max_rows: int = 10_000
    replay_rate: float = 2000.0  # messages/s; 0 means unpaced
    window: int = 64  # messages handed to the MQTT client and not yet acknowledged
    commit_wait_s: float = 0.002
    synchronous: Literal["full", "normal"] = "full"
    retry_s: float = 1.0
    answered_keys: int = 100_000
    answered_retention_s: float = 7 * 86400.0
    payload_cache_bytes: int = 16 * 1024 * 1024


@dataclass(eq=False)
class _Pending:
    cls: str
    stream: str
    topic: str
    build: Callable[[int], bytes]
    msg_id: str
    retain: bool
    answers: str | None
    on_stored: Callable[[], None] | None
    created_at: float
    essential: bool = False
    correlation: bytes | None = None


@dataclass
class _Counts:
    """Everything the status topic says about delivery, per message class where it varies."""

    accepted: dict[str, int] = field(default_factory=dict)
    delivered: dict[str, int] = field(default_factory=dict)
    evicted: dict[str, int] = field(default_factory=dict)
    expired: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    refused_by_broker: dict[str, int] = field(default_factory=dict)
    unreadable: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    replayed: int = 0
    write_failures: int = 0

    def add(self, table: dict[str, int], cls: str, n: int = 1) -> None:
        table[cls] = table.get(cls, 0) + n


class Outbox:
    """Durable, bounded, ordered outgoing messages; see the module doc for the threads."""

    def __init__(
        self,
        config: OutboxConfig,
        *,
        on_fault: Callable[[str, str], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._on_fault = on_fault
        self._clock = clock
        self._cond = threading.Condition()
        self._backlog = Backlog(
            config.policies, max_rows=config.max_rows, max_bytes=config.max_bytes
        )
        self._pending: list[_Pending] = []
        self._deletes: list[int] = []
        self._sequences: dict[str, int] = {}
        self._ids: set[str] = set()  # message ids in the backlog (waiting or in flight)
        self._answered: OrderedDict[str, None] = OrderedDict()
        self._claims: dict[str, list[Callable[[], None]]] = {}
        self._memory: deque[Entry] = deque()  # entries with no row (disk unavailable)
        self._acks: queue.SimpleQueue[tuple[int, bool]] = queue.SimpleQueue()
        self._inflight: dict[int, Entry] = {}
        self._order = 0
        self._counts = _Counts()
        self._unannounced: dict[str, dict[str, int]] = {
            "evicted": {},
            "expired": {},
            "rejected": {},
            "refused": {},
            "unreadable": {},
        }
        # Faults wait here for the writer to report them with no lock held (see _fault).
        self._faults: list[tuple[str, str]] = []
        self._last_announce = 0.0
        self._link_up = False
        self._link_up_at = float("inf")  # everything accepted before the link came up replays
        self._tokens = 0.0
        self._token_at = time.monotonic()
        self._payload_cache = 0
        self._publish: Publisher | None = None
        self._store: OutboxStore | None = None
        self._reader: sqlite3.Connection | None = None
        self._disk_fault: str | None = None
        self._retry_at = 0.0
        self._prune_at = 0.0
        self._quarantined: list[str] = []
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []
        self._writer_ident: int | None = None
        self._open()

    # ------------------------------------------------------------------ set-up
    def _open(self) -> None:
        """Open the file and load what an earlier process left: backlog, numbers, answers."""
        if self.config.path is None:
            return
        try:
            opened = open_store(self.config.path, self.config.synchronous)
        except (sqlite3.Error, OSError) as exc:
            self._enter_memory_mode(f"cannot open {self.config.path}: {exc}")
            return
        self._adopt(opened)

    def _adopt(self, opened: OpenedStore) -> None:
        """Use an opened file and take in what it holds.

        At start-up memory is empty. When the file first opens later (it could not be
        opened at start), numbers continue above both what the file and this run gave, and
        the file's backlog is replayed after what this run holds in memory.
        """
        self._store = opened.store
        if opened.quarantined is not None:
            self._quarantined.append(str(opened.quarantined))
            self._fault(
                "outbox_corrupt",
                f"outbox {self.config.path} was corrupt; moved to {opened.quarantined} "
                "(kept for recovery) and a new one started: messages in it were not replayed",
            )
        self._reader = opened.store.reader()
        for stream, value in opened.store.sequences().items():
            self._sequences[stream] = max(value, self._sequences.get(stream, 0))
        for key in opened.store.recent_answers(self.config.answered_keys):
            self._answered[key] = None
        loaded = 0
        for row in opened.store.rows():
            if row.msg_id in self._ids:
                continue
            self._order += 1
            entry = Entry(
                order=self._order,
                msg_id=row.msg_id,
                cls=row.cls,
                stream=row.stream,
                seq=row.seq,
                topic=row.topic,
                retain=row.retain,
                created_at=row.created_at,
                expires_at=row.expires_at,
                size=row.size,
                rowid=row.rowid,
                correlation=row.correlation,
            )
            if row.cls not in self.config.policies:
                log.warning("outbox row of unknown class %r kept as 'error'", row.cls)
                entry.cls = "error"
            self._backlog.restore(entry)
            self._ids.add(entry.msg_id)
            loaded += 1
        if loaded:
            log.info(
                "outbox %s: %d messages left by an earlier run will be replayed",
                self.config.path,
                loaded,
            )

    def attach(self, publish: Publisher) -> None:
        """The transport's publish; set before ``start`` (the transport needs our callbacks)."""
        self._publish = publish

    def start(self) -> None:
        if self._threads:
            return
        for name, target in (("writer", self._write_loop), ("sender", self._send_loop)):
            thread = threading.Thread(target=target, name=f"outbox-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)
        # Faults met while opening (a corrupt or unwritable file) had nobody to tell yet;
        # the caller holds no lock of ours here, so they are told before start returns.
        self._report_faults()

    def stop(self, timeout: float = 5.0) -> int:
        """Write what is queued, send what the link takes within ``timeout``, then end.

        Returns the messages still waiting (they stay in the file for the next start).
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._cond:
                if not self._pending and (not self._link_up or self._backlog.rows == 0):
                    break
            time.sleep(0.01)
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(max(0.1, deadline - time.monotonic()) + 1.0)
        self._threads = []
        with self._cond:
            self._drain_acks()
            self._write_now()
            left = self._backlog.rows
        self._close_store()
        self._stopped.set()
        return left

    # ------------------------------------------------------------------ intake
    def put(
        self,
        cls: str,
        stream_key: str,
        topic: str,
        build: Callable[[int], bytes],
        msg_id: str,
        *,
        retain: bool = False,
        answers: str | None = None,
        on_stored: Callable[[], None] | None = None,
        essential: bool = False,
        correlation: bytes | None = None,
    ) -> None:
        """Accept a message; ``build(seq)`` makes its payload once it is numbered.

        Returns at once. ``on_stored`` runs (on the writer thread) once the message is
        durable, or refused by policy, or held in memory while the disk is unavailable.
        ``essential``: admitted beyond the bounds (reports of the outbox's own faults).
        """
        self._backlog.policy(cls)  # an unknown class is a programming error: fail here
        item = _Pending(
            cls=cls,
            stream=f"{cls}:{stream_key}",
            topic=topic,
            build=build,
            msg_id=msg_id,
            retain=retain,
            answers=answers,
            on_stored=on_stored,
            created_at=self._clock(),
            essential=essential,
            correlation=correlation,
        )
        with self._cond:
            # Bounded: a writer far behind (a stalled disk) slows producers instead of
            # growing memory. The writer itself never waits on itself (fault reports).
            while (
                len(self._pending) >= self.config.memory_max_rows
                and threading.get_ident() != self._writer_ident
                and not self._stopping.is_set()
            ):
                self._cond.wait(0.1)
            self._pending.append(item)
            self._cond.notify_all()

    def claim(self, key: str, on_stored: Callable[[], None]) -> bool:
        """True: ``key`` (an inbound window) is new, answer it. False: it was answered or is
        being answered; ``on_stored`` runs once that answer is durable (at once if it is)."""
        with self._cond:
            if key in self._answered:
                self._counts.duplicates += 1
                run_now = True
            elif key in self._claims:
                self._counts.duplicates += 1
                self._claims[key].append(on_stored)
                return False
            else:
                self._claims[key] = []
                return True
        if run_now:
            _safely(on_stored)
        return False

    def release(self, key: str) -> None:
        """The claimed window will not be answered (agent stopping): forget the claim."""
        with self._cond:
            self._claims.pop(key, None)

    # ------------------------------------------------------------------ transport events
    def link_changed(self, up: bool) -> None:
        with self._cond:
            self._link_up = up
            if up:
                self._link_up_at = self._clock()
                self._tokens = min(self._tokens, 1.0)
            self._cond.notify_all()

    def published(self, mid: int, ok: bool) -> None:
        """The broker's PUBACK for ``mid`` (from the MQTT thread: only queued here)."""
        self._acks.put((mid, ok))
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ writer thread
    def _write_loop(self) -> None:
        self._writer_ident = threading.get_ident()
        while not self._stopping.is_set():
            with self._cond:
                if not self._pending and not self._deletes and not self._faults:
                    self._cond.wait(0.25)
            if self._pending and self.config.commit_wait_s > 0:
                time.sleep(self.config.commit_wait_s)  # group commit: let company arrive
            self._write_now()
            with self._cond:
                self._expire()
                self._announce_if_due()
            self._report_faults()

    def _write_now(self) -> None:
        """One group commit, by the writer thread (or by ``stop`` once it has ended).

        The lock is held for bookkeeping only. Building payloads and the SQLite commit
        with its fsync run outside it, so the MQTT thread's PUBACKs, the sender and the
        producers never wait for the disk (measured before: the MQTT thread spent 27 % of
        a replay waiting for the lock while the writer sat in COMMIT). Numbers are given
        by this thread alone (``put`` only queues), which is what makes that safe.
        """
        with self._cond:
            pending, self._pending = self._pending, []
            self._cond.notify_all()  # producers waiting for room
            numbered: list[tuple[_Pending, int]] = []
            stored_callbacks: list[Callable[[], None]] = []
            for item in pending:
                if item.msg_id in self._ids:
                    self._counts.duplicates += 1
                    if item.on_stored is not None:
                        stored_callbacks.append(item.on_stored)
                    continue
                # A refused message still uses its number: the gap it leaves tells
                # consumers that something of this stream was lost (announced with why).
                seq = self._sequences.get(item.stream, 0) + 1
                self._sequences[item.stream] = seq
                numbered.append((item, seq))
        payloads = [item.build(seq) for item, seq in numbered]
        with self._cond:
            now = self._clock()
            entries = self._admit(numbered, payloads, stored_callbacks)
            deletes, self._deletes = self._deletes, []
            if not self._writable:
                self._deletes = deletes
                self._hold_in_memory([entry for entry, _item in entries])
                self._retry_disk()
                write = None
            elif entries or deletes or numbered or now >= self._prune_at:
                write = self._prepare_commit(entries, deletes, now)
            else:
                write = None
        if write is not None:
            store, rows, sequences, prune = write
            try:
                ids: list[int | None] | BaseException = store.write(rows, deletes, sequences, prune)
                if prune is not None:  # once a minute: give back what drained rows left
                    store.reclaim()
            except (sqlite3.Error, OSError) as exc:
                ids = exc
        with self._cond:
            if write is not None:
                self._committed(entries, deletes, ids)
            for entry, item in entries:
                self._backlog.add(entry)
                self._counts.add(self._counts.accepted, entry.cls)
                if item.answers is not None:
                    self._answered[item.answers] = None
                    stored_callbacks.extend(self._claims.pop(item.answers, ()))
                if item.on_stored is not None:
                    stored_callbacks.append(item.on_stored)
            while len(self._answered) > self.config.answered_keys:
                self._answered.popitem(last=False)
            self._cond.notify_all()
        for callback in stored_callbacks:
            _safely(callback)

    def _admit(
        self,
        numbered: list[tuple[_Pending, int]],
        payloads: list[bytes],
        stored_callbacks: list[Callable[[], None]],
    ) -> list[tuple[Entry, _Pending]]:
        """Reserve room by each class's policy (called with the lock held)."""
        entries: list[tuple[Entry, _Pending]] = []
        dropped: list[Entry] = []
        for (item, seq), payload in zip(numbered, payloads, strict=True):
            admission = self._backlog.admit(item.cls, len(payload), essential=item.essential)
            dropped.extend(admission.evicted)
            if not admission.accepted:
                self._counts.add(self._counts.rejected, item.cls)
                self._counts.add(self._unannounced["rejected"], item.cls)
                if item.on_stored is not None:
                    stored_callbacks.append(item.on_stored)
                continue
            self._order += 1
            entry = Entry(
                order=self._order,
                msg_id=item.msg_id,
                cls=item.cls,
                stream=item.stream,
                seq=seq,
                topic=item.topic,
                retain=item.retain,
                created_at=item.created_at,
                expires_at=item.created_at + self._backlog.policy(item.cls).ttl_s,
                size=len(payload),
                payload=payload,
                correlation=item.correlation,
            )
            self._ids.add(entry.msg_id)
            entries.append((entry, item))
        for victim in dropped:
            self._forget(victim)
            self._counts.add(self._counts.evicted, victim.cls)
            self._counts.add(self._unannounced["evicted"], victim.cls)
            if victim.rowid is not None:
                self._deletes.append(victim.rowid)
        return entries

    def _prepare_commit(
        self, entries: list[tuple[Entry, _Pending]], deletes: list[int], now: float
    ) -> tuple[OutboxStore, list[NewRow], dict[str, int], float | None]:
        """What the commit writes, snapshotted under the lock."""
        assert self._store is not None
        rows = [
            NewRow(
                msg_id=e.msg_id,
                cls=e.cls,
                stream=e.stream,
                seq=e.seq,
                topic=e.topic,
                payload=e.payload or b"",
                retain=e.retain,
                created_at=e.created_at,
                expires_at=e.expires_at,
                answers=item.answers,
                correlation=e.correlation,
            )
            for e, item in entries
        ]
        prune = None
        if now >= self._prune_at:
            prune = now - self.config.answered_retention_s
            self._prune_at = now + _PRUNE_EVERY_S
        return self._store, rows, dict(self._sequences), prune

    def _committed(
        self,
        entries: list[tuple[Entry, _Pending]],
        deletes: list[int],
        ids: list[int | None] | BaseException,
    ) -> None:
        """After the commit (lock held): rows known, or the disk failed and memory serves."""
        if isinstance(ids, BaseException):
            self._counts.write_failures += 1
            self._deletes = deletes + self._deletes
            self._disk_failed(ids)
            self._hold_in_memory([entry for entry, _item in entries])
            return
        for (entry, _item), rowid in zip(entries, ids, strict=True):
            entry.rowid = rowid
            if self._payload_cache + entry.size <= self.config.payload_cache_bytes:
                self._payload_cache += entry.size
            else:
                entry.payload = None  # read back from the file when its turn comes

    @property
    def _writable(self) -> bool:
        return self._store is not None and self._disk_fault is None

    def _hold_in_memory(self, entries: list[Entry]) -> None:
        """Disk unavailable: keep entries in memory, evicting by policy beyond the cap."""
        self._memory.extend(entries)
        while len(self._memory) > self.config.memory_max_rows:
            victim = self._memory.popleft()
            if victim.state != "waiting":
                continue
            self._backlog.evict(victim)
            self._forget(victim)
            self._counts.add(self._counts.evicted, victim.cls)
            self._counts.add(self._unannounced["evicted"], victim.cls)

    def _forget(self, entry: Entry) -> None:
        self._ids.discard(entry.msg_id)
        if entry.payload is not None and entry.rowid is not None:
            self._payload_cache -= entry.size
        entry.payload = None

    def _disk_failed(self, exc: BaseException) -> None:
        """A write failed: run from memory and retry. The connection stays open (a full or
        read-only disk still reads, so the backlog on disk is still sent); a corrupt file
        is replaced at once."""
        reason = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, sqlite3.DatabaseError) and "malformed" in str(exc).lower():
            self._replace_corrupt_store(reason)
        self._enter_memory_mode(reason)

    def _close_store(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._store is not None:
            self._store.close()
        self._store = self._reader = None

    def _enter_memory_mode(self, reason: str) -> None:
        first = self._disk_fault is None
        self._disk_fault = reason
        self._retry_at = time.monotonic() + self.config.retry_s
        if first:
            log.error("outbox cannot write to disk (%s); holding messages in memory", reason)
            self._fault(
                "outbox_unwritable",
                f"outbox {self.config.path} cannot be written ({reason}); up to "
                f"{self.config.memory_max_rows} messages are held in memory until it can "
                "(they would not survive a restart)",
            )

    def _replace_corrupt_store(self, reason: str) -> None:
        """Move the corrupt file aside; what can still be read of its backlog is held in
        memory (written to the new file at the next retry), and none of its row numbers is
        used again: they would name other rows in the new file."""
        if self._store is None or self.config.path is None:
            return
        detached: list[Entry] = []
        for entry in self._backlog.waiting():
            if entry.rowid is None:
                continue
            payload = entry.payload if entry.payload is not None else self._read_payload(entry)
            self._detach(entry)
            if payload is None:
                self._lose_unreadable(entry)
                continue
            entry.payload = payload
            detached.append(entry)
        for entry in self._inflight.values():
            self._detach(entry)
        self._deletes = []
        self._close_store()
        moved = quarantine(self.config.path)
        self._quarantined.append(str(moved))
        self._hold_in_memory(detached)
        self._fault(
            "outbox_corrupt",
            f"outbox became corrupt ({reason}); moved to {moved}; {len(detached)} waiting "
            "messages read back are held in memory until a new file can be written",
        )

    def _detach(self, entry: Entry) -> None:
        """The entry no longer has a row (its file is gone); keep the payload cache true."""
        if entry.rowid is not None and entry.payload is not None:
            self._payload_cache -= entry.size
        entry.rowid = None

    def _read_payload(self, entry: Entry) -> bytes | None:
        if entry.rowid is None or self._reader is None:
            return None
        try:
            return OutboxStore.payload(self._reader, entry.rowid)
        except sqlite3.Error as exc:
            log.error("outbox: cannot read message %s back: %s", entry.msg_id, exc)
            return None

    def _lose_unreadable(self, entry: Entry) -> None:
        """A message whose row cannot be read back: gone, counted and announced."""
        self._backlog.evict(entry)
        self._forget(entry)
        self._counts.add(self._counts.unreadable, entry.cls)
        self._counts.add(self._unannounced["unreadable"], entry.cls)

    def _retry_disk(self) -> None:
        """Memory mode: every ``retry_s`` try to write the rows held in memory to disk."""
        if self.config.path is None or time.monotonic() < self._retry_at:
            return
        self._retry_at = time.monotonic() + self.config.retry_s
        if self._store is None:
            try:
                opened = open_store(self.config.path, self.config.synchronous)
            except (sqlite3.Error, OSError) as exc:
                self._disk_fault = f"{type(exc).__name__}: {exc}"
                return
            self._adopt(opened)
        store = self._store
        assert store is not None
        waiting = [e for e in self._memory if e.state == "waiting" and e.rowid is None]
        rows = [
            NewRow(
                e.msg_id,
                e.cls,
                e.stream,
                e.seq,
                e.topic,
                e.payload or b"",
                e.retain,
                e.created_at,
                e.expires_at,
                None,
                e.correlation,
            )
            for e in waiting
        ]
        try:
            ids = store.write(rows, self._deletes, self._sequences)
        except (sqlite3.Error, OSError) as exc:
            self._counts.write_failures += 1
            self._disk_fault = f"{type(exc).__name__}: {exc}"
            return
        self._deletes = []
        for entry, rowid in zip(waiting, ids, strict=True):
            entry.rowid = rowid
            if entry.payload is not None:
                self._payload_cache += entry.size
        self._memory.clear()
        fault, self._disk_fault = self._disk_fault, None
        log.warning("outbox writes to disk again (%d messages moved from memory)", len(rows))
        self._fault(
            "outbox_recovered",
            f"outbox {self.config.path} is writable again after: {fault}; "
            f"{len(rows)} messages held in memory are on disk",
        )

    # ------------------------------------------------------------------ sender thread
    def _send_loop(self) -> None:
        while not self._stopping.is_set():
            with self._cond:
                self._drain_acks()
                entry, replay = self._next_to_send()
                if entry is None:
                    self._cond.wait(_IDLE_S)
                    continue
            self._hand_over(entry, replay=replay)

    def _next_to_send(self) -> tuple[Entry | None, bool]:
        """The next entry and whether it is a replay (accepted before the link came up)."""
        if not self._link_up or self._publish is None:
            return None, False
        if len(self._inflight) >= self.config.window:
            return None, False
        may_replay = self._take_token(peek=True)
        entry = self._backlog.next_ready(
            self._clock(), replay_before=self._link_up_at, may_replay=may_replay
        )
        replay = entry is not None and entry.created_at < self._link_up_at
        if replay:
            self._take_token(peek=False)
        return entry, replay

    def _take_token(self, *, peek: bool) -> bool:
        rate = self.config.replay_rate
        if rate <= 0:
            return True
        mono = time.monotonic()
        # Burst of at most a tenth of a second's worth, so pacing holds from the start.
        self._tokens = min(max(1.0, rate / 10.0), self._tokens + (mono - self._token_at) * rate)
        self._token_at = mono
        if self._tokens < 1.0:
            return False
        if not peek:
            self._tokens -= 1.0
        return True

    def _hand_over(self, entry: Entry, *, replay: bool) -> None:
        assert self._publish is not None
        payload = entry.payload if entry.payload is not None else self._read_payload(entry)
        if payload is None:
            with self._cond:
                log.error("outbox: message %s cannot be read back; lost", entry.msg_id)
                self._finish(entry, delivered=None)
            return
        if replay:
            payload = _mark_replay(payload, self._clock())
        props = {
            "message_id": entry.msg_id,
            "seq": str(entry.seq),
            REPLAY_PROPERTY: str(replay).lower(),
        }
        try:
            mid = self._publish(
                entry.topic,
                payload,
                retain=entry.retain,
                user_properties=props,
                correlation_data=entry.correlation,
            )
        except Exception as exc:
            log.warning("outbox: hand-over of %s failed (%s); will retry", entry.msg_id, exc)
            with self._cond:
                self._backlog.requeue(entry)
                self._cond.wait(_IDLE_S)
            return
        with self._cond:
            self._inflight[mid] = entry
            if replay:
                self._counts.replayed += 1

    def _drain_acks(self) -> None:
        while True:
            try:
                mid, ok = self._acks.get_nowait()
            except queue.Empty:
                return
            entry = self._inflight.pop(mid, None)
            if entry is not None:
                self._finish(entry, delivered=ok)

    def _finish(self, entry: Entry, *, delivered: bool | None) -> None:
        """An in-flight entry is done: acknowledged (True), refused by the broker (False),
        or unreadable (None); the last two are announced as losses."""
        self._backlog.done(entry)
        self._forget(entry)
        if entry.rowid is not None:
            self._deletes.append(entry.rowid)
        if delivered:
            self._counts.add(self._counts.delivered, entry.cls)
        else:
            kind = "refused" if delivered is False else "unreadable"
            table = (
                self._counts.refused_by_broker if delivered is False else self._counts.unreadable
            )
            self._counts.add(table, entry.cls)
            self._counts.add(self._unannounced[kind], entry.cls)
        self._cond.notify_all()

    # ------------------------------------------------------------------ expiry, reports
    def _expire(self) -> None:
        expired = self._backlog.expire(self._clock())
        for entry in expired:
            self._forget(entry)
            if entry.rowid is not None:
                self._deletes.append(entry.rowid)
            self._counts.add(self._counts.expired, entry.cls)
            self._counts.add(self._unannounced["expired"], entry.cls)

    def _announce_if_due(self) -> None:
        """Once the link is up, say on the errors topic what was evicted, expired, refused."""
        if not self._link_up or not any(self._unannounced.values()):
            return
        mono = time.monotonic()
        if mono - self._last_announce < _ANNOUNCE_EVERY_S:
            return
        self._last_announce = mono
        for what, per_class in self._unannounced.items():
            if not per_class:
                continue
            total = sum(per_class.values())
            detail = ", ".join(f"{n} {cls}" for cls, n in sorted(per_class.items()))
            why = {
                "evicted": f"the outbox was full ({self.config.max_rows} rows / "
                f"{self.config.max_bytes} bytes) and the class policy is drop_oldest",
                "expired": "their time to live ran out before the broker could take them",
                "rejected": "the outbox was full and the class policy is reject_new "
                "(or the message alone exceeds max_bytes)",
                "refused": "the broker refused them (PUBACK with an error reason code: "
                "not authorised, quota, topic or payload invalid)",
                "unreadable": "their rows could not be read back from the outbox file",
            }[what]
            self._fault(f"outbox_{what}", f"{total} messages {what} ({detail}): {why}")
            per_class.clear()

    def _fault(self, code: str, reason: str) -> None:
        """Queue a fault for the writer to report once it holds no lock.

        Faults are met with ``_cond`` held, and the caller's error path publishes a status
        through the MQTT client, whose outgoing-message lock is held while paho runs our
        PUBACK callback, which takes ``_cond``: reporting here deadlocked the agent (seen
        once in CI, at the outbox_recovered of a full disk). Before ``start`` the error
        path does not exist yet (we are being built): the first writer turn reports them.
        """
        with self._cond:
            self._faults.append((code, reason))
            self._cond.notify_all()

    def _report_faults(self) -> None:
        """The writer thread (or ``start``), with no lock held: hand the queued faults to
        the caller's error path, which puts a message back into us (the writer's own put
        never waits). Each fault is taken off the queue once, whoever reports it."""
        with self._cond:
            faults, self._faults = self._faults, []
        for code, reason in faults:
            try:
                self._on_fault(code, reason)
            except Exception:
                log.exception("outbox fault report %s failed", code)

    # ------------------------------------------------------------------ status
    def stats(self) -> dict[str, object]:
        with self._cond:
            oldest = self._backlog.oldest_created()
            inflight_oldest = min((e.created_at for e in self._inflight.values()), default=None)
            if inflight_oldest is not None:
                oldest = inflight_oldest if oldest is None else min(oldest, inflight_oldest)
            c = self._counts
            return {
                "mode": "disk" if self._writable else "memory",
                "fault": self._disk_fault,
                "depth": self._backlog.rows,
                "bytes": self._backlog.bytes,
                "in_flight": len(self._inflight),
                "oldest_age_s": round(self._clock() - oldest, 3) if oldest is not None else None,
                "accepted": dict(c.accepted),
                "delivered": dict(c.delivered),
                "evicted": dict(c.evicted),
                "expired": dict(c.expired),
                "rejected": dict(c.rejected),
                "refused_by_broker": dict(c.refused_by_broker),
                "unreadable": dict(c.unreadable),
                "replayed": c.replayed,
                "duplicates": c.duplicates,
                "write_failures": c.write_failures,
                "file_bytes": self._store.disk_bytes() if self._store is not None else 0,
                "quarantined": list(self._quarantined),
            }

    def sequence(self, stream: str) -> int:
        """The last number given in ``stream`` (e.g. ``alert:pump-1``)."""
        with self._cond:
            return self._sequences.get(stream, 0)


def _mark_replay(payload: bytes, now: float) -> bytes:
    """A replayed JSON payload says so (``replay: true`` and when it was replayed)."""
    try:
        body = json.loads(payload)
    except ValueError:
        return payload
    if not isinstance(body, dict):
        return payload
    body["replay"] = True
    body["replayed_at"] = now
    return json.dumps(body, separators=(",", ":")).encode()


def _safely(callback: Callable[[], None]) -> None:
    try:
        callback()
    except Exception:
        log.exception("outbox callback failed")
