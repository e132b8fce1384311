"""Store-and-forward under faults: real processes, a real broker, a proxy the test can cut.

The agent runs as `faultline run`, as on a gateway; this process is the sensors and the
dashboard. Each test prints its counts (produced, delivered, duplicates, evicted,
expired, rejected, lost) and asserts lost == 0 wherever the policy promises it.

What "delivered" means: the alerts a persistent-session subscriber received, de-duplicated
by message id, as a consumer is told to (docs/ARCHITECTURE.md, "Delivery semantics").
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import resource
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from faultline.agent.simulator import encode_for_wire
from faultline.agent.transport.broker import MosquittoProcess
from faultline.encoders.signals import Window
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.library import FaultLibrary
from faultline.fault_library.recordings import iter_windows, read_recording
from tests.collector import Collector
from tests.harness import AgentProcess, agent_process_env, wait_until
from tests.netproxy import TcpProxy

pytestmark = pytest.mark.slow

# One asset per 3 hp record (the test library holds 0-2 hp): four streams of alerts.
ASSET_RECORDS = {"pump-1": "108", "pump-2": "133", "fan-1": "121", "fan-2": "200"}
BASE_WINDOWS = 6  # distinct windows per asset, re-sent with new timestamps


# ---------------------------------------------------------------- the sensors' side


@pytest.fixture(scope="module")
def base_windows(cwru_dir: Path) -> dict[str, list[Window]]:
    by_id = {e.record_id: e for e in read_manifest(cwru_dir)}
    windows = {}
    for asset, record in ASSET_RECORDS.items():
        entry = by_id[record]
        recording = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
        windows[asset] = list(iter_windows(recording, asset, window_s=1.0, hop_s=1.0))[
            :BASE_WINDOWS
        ]
    return windows


@dataclasses.dataclass(frozen=True)
class Produced:
    asset: str
    ts: float
    sent_at: float  # monotonic time the sensor handed it to its client


class Sensors:
    """One MQTT client standing in for the plant's sensors.

    A persistent session (clean session off) and paho's own queue: a window published while
    the broker is down is sent when it is back, and one the broker had not acknowledged is
    sent again; only the broker's PUBACK counts it as accepted.
    """

    def __init__(self, port: int, prefix: str, base: dict[str, list[Window]], qos: int = 1):
        self.prefix = prefix
        self.base = base
        self.qos = qos
        self.produced: list[Produced] = []
        self._sent = 0
        self._acked = 0
        self._lock = threading.Lock()
        self._client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"sensors-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        self._client.max_inflight_messages_set(100)
        self._client.reconnect_delay_set(0.1, 1)
        self._client.on_publish = self._on_publish
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()

    def _on_publish(self, *_args: object) -> None:
        with self._lock:
            self._acked += 1

    @property
    def acked(self) -> int:
        with self._lock:
            return self._acked

    def publish(self, n: int, *, rate: float, ts0: float = 1.7e9) -> None:
        """``n`` windows, assets in turn, at ``rate`` per second (0: as fast as possible)."""
        assets = sorted(self.base)
        start = time.monotonic()
        first, self._sent = self._sent, self._sent + n  # later calls continue the timestamps
        for i in range(first, first + n):
            if rate > 0:
                delay = start + (i - first) / rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            asset = assets[i % len(assets)]
            k = i // len(assets)
            window = self.base[asset][k % len(self.base[asset])]
            window = dataclasses.replace(window, ts=ts0 + k)
            topic = f"{self.prefix}/sensors/{asset}/window"
            self._client.publish(topic, encode_for_wire(window, "binary"), qos=self.qos)
            self.produced.append(Produced(asset, window.ts, time.monotonic()))

    def wait_acked(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.acked < len(self.produced) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.acked >= len(self.produced), f"broker acked {self.acked}/{len(self.produced)}"

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


# ---------------------------------------------------------------- the consumers' side


def alerts_by_id(collector: Collector) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Unique alerts (first copy of each message id), duplicates, and copies marked replay."""
    unique: dict[str, dict[str, Any]] = {}
    duplicates = replays = 0
    with collector._cond:  # a consistent snapshot while messages may still arrive
        messages = list(zip(collector.messages, collector.properties, strict=True))
    for (topic, body), props in messages:
        if "/alerts/" not in topic:
            continue
        if body.get("replay") or props.get("replay") == "true":
            replays += 1
        if body["message_id"] in unique:
            duplicates += 1
        else:
            unique[body["message_id"]] = body
    return unique, duplicates, replays


def outcome(
    ledger: Collector, sensors: Sensors
) -> tuple[dict[str, dict[str, Any]], int, int, list[Produced]]:
    """Unique alerts, duplicates, replays, and the windows no alert answers."""
    unique, duplicates, replays = alerts_by_id(ledger)
    answered = {(b["asset"], b["window_ts"]) for b in unique.values()}
    missing = [p for p in sensors.produced if (p.asset, p.ts) not in answered]
    return unique, duplicates, replays, missing


def shut_down(sensors: Sensors, agent: AgentProcess, ledger: Collector) -> int:
    """Stop the sensors, the agent (SIGTERM) and the consumer; the agent's exit code."""
    sensors.close()
    exit_code = agent.stop()
    ledger.close()
    return exit_code


def assert_stream_order(unique: dict[str, dict[str, Any]], *, gaps_allowed: bool) -> None:
    """Per asset, first copies arrive in sequence order; each number names one alert."""
    per_asset: dict[str, list[int]] = defaultdict(list)
    for body in unique.values():  # dict order is first-arrival order
        per_asset[body["asset"]].append(body["seq"])
    for asset, seqs in per_asset.items():
        assert seqs == sorted(seqs), f"{asset}: alerts overtook each other: {seqs[:50]}"
        assert len(set(seqs)) == len(seqs), f"{asset}: a sequence number was given twice"
        if not gaps_allowed:
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"{asset}: gap in {seqs}"


def alert_copies(collector: Collector) -> int:
    return sum(1 for t, _b in collector.messages if "/alerts/" in t)


def report(name: str, **counts: object) -> None:
    print(f"\n[{name}] " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def wait_while_progress(count: Any, target: int, *, idle_s: float, cap_s: float = 240) -> None:
    """Wait until ``count()`` reaches ``target``, or stops growing for ``idle_s`` (then the
    assertions after it report what is missing instead of a bare timeout)."""
    last, last_change, start = count(), time.monotonic(), time.monotonic()
    while last < target and time.monotonic() - last_change < idle_s:
        if time.monotonic() - start > cap_s:
            break
        time.sleep(0.2)
        now = count()
        if now != last:
            last, last_change = now, time.monotonic()


def online_count(collector: Collector) -> int:
    return sum(1 for t, b in collector.messages if "/status/" in t and b.get("state") == "online")


@pytest.fixture
def ledger_topics(unique_prefix: str) -> list[str]:
    return [f"{unique_prefix}/alerts/+", f"{unique_prefix}/errors", f"{unique_prefix}/status/+"]


@pytest.fixture
def agent_env(unique_prefix: str, test_library: FaultLibrary, test_library_root: Path) -> Any:
    assert test_library.version  # the library is built before any agent starts

    def make(port: int, state: Path, **settings: str) -> dict[str, str]:
        return agent_process_env(
            port, unique_prefix, test_library_root, state, FAULTLINE__LOG_LEVEL="INFO", **settings
        )

    return make


# ---------------------------------------------------------------- the tests

BROKER_SAVE_WINDOW_S = 2.1  # autosave_interval 1: Mosquitto saves about every 2 s


def test_broker_killed_20_times_every_alert_arrives_in_order(
    base_windows: dict[str, list[Window]],
    agent_env: Any,
    ledger_topics: list[str],
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    """5,000 windows over four assets while the broker is killed (-9) and restarted 20 times.

    The broker persists sessions every second (autosave_interval 1, as balena/mosquitto.conf
    ships it); the agent reconnects within its 2 s backoff cap and answers every window.
    """
    rng = random.Random(10)
    broker = MosquittoProcess(persistence=True, workdir=tmp_path / "broker").start()
    ledger = Collector("127.0.0.1", broker.port, ledger_topics, persistent=True)
    agent = AgentProcess(agent_env(broker.port, tmp_path / "state"), tmp_path / "agent.log")
    sensors = Sensors(broker.port, unique_prefix, base_windows)
    n_windows, kills = 5000, 20
    restarts: list[float] = []
    kills_at: list[float] = []
    try:
        agent.start()
        wait_until(lambda: online_count(ledger) >= 1, 60, "the agent online")
        # Mosquitto saves at most every other second with autosave_interval 1 (it compares
        # whole seconds): killed before that first save, it forgets the agent's fresh
        # session, and windows sent before the agent subscribes again are not queued for it
        # (seen: 60 of 5,000; the agent reports it as broker_session_lost, tested below).
        time.sleep(2.5)
        producer = threading.Thread(target=sensors.publish, args=(n_windows,), kwargs={"rate": 100})
        producer.start()
        for _ in range(kills):
            time.sleep(rng.uniform(1.2, 2.4))
            broker.kill()
            kills_at.append(time.monotonic())
            time.sleep(rng.uniform(0.05, 0.5))
            broker.start()
            restarts.append(time.monotonic())
        producer.join()
        sensors.wait_acked(120)
        # A loaded CI machine is slower, not lossier: wait while alerts still come in.
        wait_while_progress(lambda: len(alerts_by_id(ledger)[0]), n_windows, idle_s=30)
    finally:
        exit_code = shut_down(sensors, agent, ledger)
        broker.stop()
    unique, duplicates, replays, lost = outcome(ledger, sensors)
    back_after = [
        t - r for r in restarts for t in [_first_online_after(ledger, r)] if t is not None
    ]
    report(
        "broker kill -9 x20",
        produced=n_windows,
        delivered=len(unique),
        duplicates=duplicates,
        replays=replays,
        lost=len(lost),
        agent_reconnected_after_s=f"median {sorted(back_after)[len(back_after) // 2]:.2f}, "
        f"max {max(back_after):.2f}",
    )
    # Where a loss falls against the kills says whose it is: the broker's own (what it had
    # acknowledged and not yet saved when killed) or the agent's.
    before_kill = [
        round(min((k - p.sent_at for k in kills_at if k >= p.sent_at), default=-1.0), 3)
        for p in lost
    ]
    # The broker's own documented loss ("What is not guaranteed"): a window it acknowledged
    # and had not yet saved nor handed to the agent when killed; Mosquitto saves about
    # every 2 s with autosave_interval 1. The agent answers whatever reached it, so any
    # other loss is the agent's. Seen once in many runs, on a loaded machine where the
    # agent lagged and the broker held more windows for it: 1 window, 0.075 s before a kill.
    brokers = [b for b in before_kill if 0 <= b <= BROKER_SAVE_WINDOW_S]
    assert len(brokers) == len(lost), (
        f"{len(lost)} windows never answered, e.g. {lost[:5]}; seconds before the next "
        f"broker kill: {before_kill[:20]}\n{agent.output()}"
    )
    assert len(lost) <= 0.002 * n_windows, f"{len(lost)} lost inside the broker: {before_kill}"
    assert len(unique) == n_windows - len(lost)  # one alert per window, whatever was resent
    assert_stream_order(unique, gaps_allowed=False)
    assert exit_code == 0, agent.output()
    # The reconnect follows the broker within the 2 s backoff cap (plus jitter and start-up),
    # not a 30 s one: every restart shows a fresh retained "online" status.
    assert len(back_after) == kills
    assert max(back_after) < 6.0


def test_a_broker_that_forgot_the_session_is_reported(
    agent_env: Any, ledger_topics: list[str], tmp_path: Path
) -> None:
    """The broker is killed before it ever saved the agent's session and restarts without
    it: the agent cannot get back what was sent meanwhile, but it says so, on the errors
    topic (and in its counters)."""
    # Mosquitto's own default: a save every 1,800 s (and at a clean exit), so a kill -9
    # restarts it from no save at all.
    broker = MosquittoProcess(
        persistence=True, autosave_interval_s=1800, workdir=tmp_path / "broker"
    ).start()
    first = Collector("127.0.0.1", broker.port, ledger_topics)
    agent = AgentProcess(agent_env(broker.port, tmp_path / "state"), tmp_path / "agent.log")
    try:
        agent.start()
        wait_until(lambda: online_count(first) >= 1, 60, "the agent online")
        first.close()
        broker.kill()  # the agent's session was never saved
        broker.start()
        # Subscribed within milliseconds; the agent's first reconnect waits at least
        # mqtt.reconnect_min_s (0.5 s), so its report cannot pass before we listen.
        ledger = Collector("127.0.0.1", broker.port, ledger_topics)
        [(_t, error)] = ledger.wait_for(
            lambda t, b: t.endswith("/errors") and b.get("code") == "broker_session_lost",
            timeout=30,
        )
        ledger.close()
    finally:
        exit_code = agent.stop()
        broker.stop()
    assert "subscribed again" in error["reason"]
    assert '"rejected.broker_session_lost": 1' in agent.output(), agent.output()
    assert exit_code == 0, agent.output()


def _first_online_after(collector: Collector, since: float) -> float | None:
    with collector._cond:
        pairs = list(zip(collector.messages, collector.arrived, strict=True))
    times = [a for (t, b), a in pairs if "/status/" in t and b.get("state") == "online"]
    later = [a for a in times if a >= since]
    return min(later) if later else None


def test_agent_killed_10_times_during_a_backlog_loses_nothing(
    mosquitto: MosquittoProcess,
    base_windows: dict[str, list[Window]],
    agent_env: Any,
    ledger_topics: list[str],
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    """`kill -9` of the agent at random moments while 2,000 windows wait at the broker and
    a paced replay (40 messages/s) keeps a backlog in the outbox across restarts."""
    rng = random.Random(11)
    ledger = Collector("127.0.0.1", mosquitto.port, ledger_topics)
    env = agent_env(mosquitto.port, tmp_path / "state", FAULTLINE__OUTBOX__REPLAY_RATE="40")
    agent = AgentProcess(env, tmp_path / "agent.log")
    sensors = Sensors(mosquitto.port, unique_prefix, base_windows)
    n_windows, kills = 2000, 10
    try:
        agent.start()
        wait_until(lambda: online_count(ledger) >= 1, 60, "the agent online")
        sensors.publish(n_windows, rate=0)
        sensors.wait_acked(60)
        for kill in range(kills):
            before = alert_copies(ledger)
            # A random moment after it started answering (or replaying) again.
            wait_until(lambda before=before: alert_copies(ledger) > before, 60, "alerts again")
            time.sleep(rng.uniform(0.0, 1.5))
            agent.kill9()
            print(f"kill {kill + 1}: {len(alerts_by_id(ledger)[0])} unique alerts so far")
            agent.start()
        wait_while_progress(lambda: len(alerts_by_id(ledger)[0]), n_windows, idle_s=30)
    finally:
        exit_code = shut_down(sensors, agent, ledger)
    unique, duplicates, replays, lost = outcome(ledger, sensors)
    report(
        "agent kill -9 x10",
        produced=n_windows,
        delivered=len(unique),
        duplicates=duplicates,
        replays=replays,
        lost=len(lost),
    )
    assert not lost, f"{len(lost)} windows never answered, e.g. {lost[:5]}\n{agent.output()}"
    assert len(unique) == n_windows
    # Numbers persisted across ten crashes: 1..n per asset, no gap, none reused.
    assert_stream_order(unique, gaps_allowed=False)
    assert all(
        min(b["seq"] for b in unique.values() if b["asset"] == a) == 1
        for a in answered_assets(unique)
    )
    assert replays > 0  # the kills did land during a backlog
    assert exit_code == 0, agent.output()


def answered_assets(unique: dict[str, dict[str, Any]]) -> set[str]:
    return {b["asset"] for b in unique.values()}


def _status_now(collector: Collector, sensors: Sensors, since: int) -> dict[str, Any] | None:
    """The newest online status received after message number ``since``."""
    with collector._cond:
        later = collector.messages[since:]
    found = [b for t, b in later if "/status/" in t and b.get("state") == "online"]
    return found[-1] if found else None


@pytest.mark.parametrize(
    ("on_full", "ttl_s", "max_rows"),
    [("drop_oldest", 3600, 150), ("reject_new", 3600, 150), ("drop_oldest", 3, 100_000)],
    ids=["drop_oldest", "reject_new", "ttl"],
)
def test_a_long_partition_with_a_small_cap_is_accounted_for(
    on_full: str,
    ttl_s: int,
    max_rows: int,
    mosquitto: MosquittoProcess,
    base_windows: dict[str, list[Window]],
    agent_env: Any,
    ledger_topics: list[str],
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    """Windows keep arriving while nothing the agent sends gets through (the uplink half
    of its connection stalled by the proxy: a full cut would stop the windows too, since
    they come through the same broker), with room for 150 messages or a 3 s time to live:
    what cannot wait is evicted, refused or expires by the policy, and every alert is accounted for:
    delivered + evicted + expired + rejected == produced."""
    proxy = TcpProxy(mosquitto.port).start()
    ledger = Collector("127.0.0.1", mosquitto.port, ledger_topics)
    env = agent_env(
        proxy.port,
        tmp_path / "state",
        FAULTLINE__OUTBOX__MAX_ROWS=str(max_rows),
        FAULTLINE__OUTBOX__CLASSES__ALERT__ON_FULL=on_full,
        FAULTLINE__OUTBOX__CLASSES__ALERT__TTL_S=str(ttl_s),
    )
    agent = AgentProcess(env, tmp_path / "agent.log")
    # QoS 0 windows: a QoS 1 window waits for the agent's PUBACK, which the stall holds, so
    # the broker would stop after its in-flight limit (20) and the cap would never fill.
    sensors = Sensors(mosquitto.port, unique_prefix, base_windows, qos=0)
    commands = f"{unique_prefix}/commands/all"
    try:
        agent.start()
        wait_until(lambda: online_count(ledger) >= 1, 60, "the agent online")
        sensors.publish(100, rate=50)
        proxy.stall_upstream()
        stalled_at = time.monotonic()
        sensors.publish(500, rate=50)  # ten seconds of windows the agent answers into a cap
        proxy.restore()
        restored_at = time.monotonic()
        sensors.publish(100, rate=50)
        sensors.wait_acked(60)
        produced = len(sensors.produced)

        def accounted() -> tuple[int, dict[str, Any]]:
            mark = len(ledger.messages)
            sensors._client.publish(commands, json.dumps({"command": "status"}), qos=1)
            wait_until(
                lambda: _status_now(ledger, sensors, mark) is not None,
                10,
                f"a status after message {mark}\n{agent.output()}",
            )
            status = _status_now(ledger, sensors, mark)
            assert status is not None
            box = status["outbox"]
            lost = sum(box[k].get("alert", 0) for k in ("evicted", "expired", "rejected"))
            return len(alerts_by_id(ledger)[0]) + lost, box

        try:
            wait_until(lambda: accounted()[0] >= produced, 60, "every alert accounted for")
        except AssertionError as exc:
            total, box = accounted()
            raise AssertionError(
                f"{exc}: {total} of {produced}, outbox {box}, "
                f"alerts {len(alerts_by_id(ledger)[0])}\n{agent.output()}"
            ) from None
        total, box = accounted()
        counts = {k: box[k].get("alert", 0) for k in ("evicted", "expired", "rejected")}

        def announced() -> dict[str, int]:
            """What the errors topic said was lost, summed over its announcements."""
            with ledger._cond:
                errors = [m for t, m in ledger.messages if t.endswith("/errors")]
            return {
                what: sum(
                    int(n)
                    for m in errors
                    if m["code"] == f"outbox_{what}"
                    for n in re.findall(r"(\d+) alert", m["reason"])
                )
                for what in counts
            }

        # Each loss is announced on the errors topic (every few seconds), with its count.
        wait_until(lambda: announced() == counts, 20, f"announcements of {counts}")
    finally:
        exit_code = shut_down(sensors, agent, ledger)
        proxy.close()
    unique, duplicates, _replays, missing = outcome(ledger, sensors)
    answered = {(b["asset"], b["window_ts"]) for b in unique.values()}
    report(
        f"partition {on_full} ttl {ttl_s}s",
        produced=produced,
        delivered=len(unique),
        duplicates=duplicates,
        **counts,
        lost=produced - len(unique) - sum(counts.values()),
    )
    assert total == produced == len(unique) + sum(counts.values())
    assert len(missing) == sum(counts.values())
    # Only the stall's (a window sent just before it may be answered once it began).
    assert all(stalled_at - 0.5 <= p.sent_at <= restored_at for p in missing)
    kept_in_stall = [
        p
        for p in sensors.produced
        if stalled_at <= p.sent_at <= restored_at - 0.5 and (p.asset, p.ts) in answered
    ]
    if ttl_s < 10:
        assert counts["expired"] > 0
        assert counts["evicted"] == counts["rejected"] == 0
    elif on_full == "drop_oldest":
        assert counts["evicted"] > 0
        assert counts["rejected"] == 0
        # The newest were kept: the last window answered during the stall is delivered.
        last_missing = max(p.sent_at for p in missing)
        assert any(p.sent_at > last_missing for p in kept_in_stall)
    else:
        assert counts["rejected"] > 0
        assert counts["evicted"] == 0
        # The oldest were kept: nothing produced after the first refusal got in.
        first_missing = min(p.sent_at for p in missing)
        assert not any(p.sent_at > first_missing + 0.5 for p in kept_in_stall)
    # A gap in each asset's numbers shows exactly what was lost.
    assert_stream_order(unique, gaps_allowed=True)
    for asset in answered_assets(unique):
        seqs = sorted(b["seq"] for b in unique.values() if b["asset"] == asset)
        lost_here = sum(1 for p in missing if p.asset == asset)
        assert seqs[-1] - seqs[0] + 1 - len(seqs) == lost_here, asset
    assert exit_code == 0, agent.output()


def test_a_full_disk_is_reported_served_from_memory_and_recovered(
    mosquitto: MosquittoProcess,
    base_windows: dict[str, list[Window]],
    agent_env: Any,
    ledger_topics: list[str],
    unique_prefix: str,
    tmp_path: Path,
) -> None:
    """The agent's files may not grow (RLIMIT_FSIZE on the running process, as a full disk):
    no crash, outbox_unwritable on the errors topic, alerts still flow; space returns:
    outbox_recovered, and no alert is missing."""
    ledger = Collector("127.0.0.1", mosquitto.port, ledger_topics)
    agent = AgentProcess(agent_env(mosquitto.port, tmp_path / "state"), tmp_path / "agent.log")
    sensors = Sensors(mosquitto.port, unique_prefix, base_windows)

    def errors(code: str) -> list[dict[str, Any]]:
        return [m for t, m in ledger.messages if t.endswith("/errors") and m["code"] == code]

    try:
        agent.start()
        wait_until(lambda: online_count(ledger) >= 1, 60, "the agent online")
        sensors.publish(40, rate=50)
        ledger.wait_for(lambda t, b: "/alerts/" in t, count=40, timeout=30)
        limit = max(p.stat().st_size for p in (tmp_path / "state").glob("outbox.sqlite*"))
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (limit, hard))
        sensors.publish(300, rate=50)
        wait_until(lambda: errors("outbox_unwritable"), 30, "outbox_unwritable")
        resource.prlimit(agent.pid, resource.RLIMIT_FSIZE, (hard, hard))
        wait_until(lambda: errors("outbox_recovered"), 30, "outbox_recovered")
        sensors.publish(40, rate=50)
        sensors.wait_acked(30)
        wait_until(lambda: len(alerts_by_id(ledger)[0]) >= 380, 60, "every alert")
    except AssertionError as exc:
        statuses = [m for t, m in ledger.messages if "/status/" in t]
        raise AssertionError(
            f"{exc}\nthe agent's log:\n{agent.output(60)}\nlast status: "
            f"{statuses[-1] if statuses else None}\n"
            f"errors: {[m['code'] for t, m in ledger.messages if t.endswith('/errors')]}"
        ) from exc
    finally:
        exit_code = shut_down(sensors, agent, ledger)
    unique, duplicates, _replays, lost = outcome(ledger, sensors)
    [unwritable] = errors("outbox_unwritable")
    report("disk full", produced=380, delivered=len(unique), duplicates=duplicates, lost=len(lost))
    print(f"  errors topic: {unwritable['reason']}")
    assert not lost
    assert "File too large" in unwritable["reason"] or "disk" in unwritable["reason"].lower()
    assert_stream_order(unique, gaps_allowed=False)
    assert exit_code == 0, agent.output()
