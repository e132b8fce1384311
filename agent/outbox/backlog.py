"""What is waiting to be sent, and in what order: pure bookkeeping, no I/O, no threads.

The promises it keeps (docs/ARCHITECTURE.md, "Delivery semantics"):

* **Per-stream order.** A stream is a class and an asset (``alert:pump-1``); its messages
  leave strictly in the order they were accepted. Streams take turns (round robin), so a
  long backlog of one asset does not hold back another's live alerts.
* **Paced replay.** A message accepted before the link last came up is a replay; the caller
  says whether the replay budget (a token bucket) allows one now. A live message never
  overtakes an older message of its own stream, replayed or not.
* **Bounds.** Rows and bytes of everything not yet acknowledged. When a new message does not
  fit, its class's policy decides: ``reject_new`` refuses it; ``drop_oldest`` evicts the
  oldest waiting message of its own class, then of any other ``drop_oldest`` class. A message
  already handed to the broker is never evicted (it may be delivered; counting it as lost
  would break ``delivered + evicted + expired == produced``).
* **Time to live** per class: a waiting message past its expiry is removed and reported.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Literal

__all__ = ["Admission", "Backlog", "ClassPolicy", "Entry", "OnFull"]

OnFull = Literal["drop_oldest", "reject_new"]
State = Literal["waiting", "inflight", "gone"]


@dataclass(frozen=True, slots=True)
class ClassPolicy:
    """How long a class's messages live and what happens when the outbox is full."""

    ttl_s: float
    on_full: OnFull


@dataclass(slots=True, eq=False)
class Entry:
    """One accepted message; ``rowid`` None means it is held in memory only."""

    order: int
    msg_id: str
    cls: str
    stream: str
    seq: int
    topic: str
    retain: bool
    created_at: float
    expires_at: float
    size: int
    rowid: int | None = None
    payload: bytes | None = None
    correlation: bytes | None = None  # MQTT 5 correlation data of an answer
    state: State = "waiting"


@dataclass(frozen=True, slots=True)
class Admission:
    accepted: bool
    evicted: list[Entry]


class Backlog:
    """Entries not yet acknowledged by the broker, indexed three ways (stream, class, all)."""

    def __init__(self, policies: dict[str, ClassPolicy], *, max_rows: int, max_bytes: int) -> None:
        if max_rows < 1 or max_bytes < 1:
            raise ValueError("max_rows and max_bytes must be positive")
        self.policies = policies
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._streams: dict[str, deque[Entry]] = {}
        self._turns: deque[str] = deque()  # streams with waiting entries, in turn order
        self._waiting_by_class: dict[str, OrderedDict[int, Entry]] = {}
        self.rows = 0  # waiting + in flight
        self.bytes = 0
        self.inflight = 0

    # ------------------------------------------------------------------ admission
    def policy(self, cls: str) -> ClassPolicy:
        try:
            return self.policies[cls]
        except KeyError:
            raise ValueError(f"no outbox policy for message class {cls!r}") from None

    def admit(self, cls: str, size: int, *, essential: bool = False) -> Admission:
        """Reserve room for a ``size``-byte message of ``cls``, or say it cannot be had.

        Reserving comes before the write that makes the message durable, ``add`` after it
        (only then may it be sent). Evicted entries are removed here; the caller deletes
        their rows and counts them. An ``essential`` message (the outbox's own report of
        what it evicted, expired or could not write) is admitted beyond the bounds: the
        report of a loss must not be lost to the loss it reports. Its producer keeps it
        rare (one per kind every few seconds).
        """
        if essential:
            self.rows += 1
            self.bytes += size
            return Admission(True, [])
        if size > self.max_bytes:
            return Admission(False, [])
        policy = self.policy(cls)
        evicted: list[Entry] = []
        while self.rows + 1 > self.max_rows or self.bytes + size > self.max_bytes:
            if policy.on_full == "reject_new":
                break
            victim = self._oldest_evictable(cls)
            if victim is None:
                break
            self._remove(victim)
            evicted.append(victim)
        fits = self.rows + 1 <= self.max_rows and self.bytes + size <= self.max_bytes
        if fits:
            self.rows += 1
            self.bytes += size
        return Admission(fits, evicted)

    def _oldest_evictable(self, cls: str) -> Entry | None:
        own = self._waiting_by_class.get(cls)
        if own:
            return next(iter(own.values()))
        fronts = [
            next(iter(waiting.values()))
            for name, waiting in self._waiting_by_class.items()
            if waiting and self.policy(name).on_full == "drop_oldest"
        ]
        return min(fronts, key=lambda e: e.order) if fronts else None

    def add(self, entry: Entry) -> None:
        """Append an admitted (reserved) entry at the end of its stream: it may be sent."""
        stream = self._streams.get(entry.stream)
        if stream is None:
            stream = self._streams[entry.stream] = deque()
        if not stream:
            self._turns.append(entry.stream)
        stream.append(entry)
        self._waiting_by_class.setdefault(entry.cls, OrderedDict())[entry.order] = entry

    def restore(self, entry: Entry) -> None:
        """An entry an earlier process left in the file: reserved and queued as it was."""
        self.rows += 1
        self.bytes += entry.size
        self.add(entry)

    def evict(self, entry: Entry) -> None:
        """Take a waiting entry out by the caller's decision (memory cap while disk is down)."""
        if entry.state == "waiting":
            self._remove(entry)

    def requeue(self, entry: Entry) -> None:
        """An in-flight entry that could not be handed over goes back to its stream's head."""
        if entry.state != "inflight":
            return
        entry.state = "waiting"
        self.inflight -= 1
        stream = self._streams[entry.stream]
        if (not stream or stream[0].state != "waiting") and entry.stream not in self._turns:
            self._turns.append(entry.stream)
        stream.appendleft(entry)
        waiting = self._waiting_by_class[entry.cls]
        waiting[entry.order] = entry
        waiting.move_to_end(entry.order, last=False)

    # ------------------------------------------------------------------ sending
    def next_ready(self, now: float, *, replay_before: float, may_replay: bool) -> Entry | None:
        """The next entry to send (marked in flight), taking streams in turn.

        An entry accepted before ``replay_before`` is a replay and is only handed out when
        ``may_replay``; its stream then waits (order), the other streams do not.
        Expired heads met on the way are left for ``expire``.
        """
        for _ in range(len(self._turns)):
            name = self._turns.popleft()
            stream = self._streams[name]
            while stream and stream[0].state != "waiting":
                stream.popleft()
            if not stream:
                continue  # no longer waiting anything: drops out of the turns
            head = stream[0]
            self._turns.append(name)
            if head.expires_at <= now:
                continue
            if head.created_at < replay_before and not may_replay:
                continue
            stream.popleft()
            if not stream:
                self._turns.pop()
            self._waiting_by_class[head.cls].pop(head.order, None)
            head.state = "inflight"
            self.inflight += 1
            return head
        return None

    def done(self, entry: Entry) -> None:
        """The broker acknowledged (or refused) an in-flight entry: it leaves the backlog."""
        if entry.state == "inflight":
            self.inflight -= 1
            entry.state = "gone"
            self.rows -= 1
            self.bytes -= entry.size

    def expire(self, now: float) -> list[Entry]:
        """Remove and return every waiting entry whose time to live has run out."""
        gone: list[Entry] = []
        for waiting in self._waiting_by_class.values():
            # One class has one time to live, so its entries expire in acceptance order:
            # the scan stops at the first one still alive.
            while waiting:
                entry = next(iter(waiting.values()))
                if entry.expires_at > now:
                    break
                self._remove(entry)
                gone.append(entry)
        return gone

    def _remove(self, entry: Entry) -> None:
        """Take a waiting entry out (eviction, expiry); its stream skips it lazily."""
        self._waiting_by_class[entry.cls].pop(entry.order, None)
        entry.state = "gone"
        self.rows -= 1
        self.bytes -= entry.size

    # ------------------------------------------------------------------ views
    def waiting(self) -> list[Entry]:
        """Every waiting entry in acceptance order (for moving memory rows to disk)."""
        entries = [e for w in self._waiting_by_class.values() for e in w.values()]
        return sorted(entries, key=lambda e: e.order)

    def oldest_created(self) -> float | None:
        fronts = [next(iter(w.values())).created_at for w in self._waiting_by_class.values() if w]
        return min(fronts) if fronts else None

    @property
    def waiting_count(self) -> int:
        return self.rows - self.inflight
