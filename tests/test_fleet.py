"""Fleet search: library shards spread over gateways, scattered and merged exactly.

The wire format and the merge are checked first on a real sharded library in this process
(each shard's reply goes through the JSON a holder sends). Then three real `faultline run`
gateways on a real Mosquitto, each holding part of a real CWRU library's shards
(``library.shards``): ``gw-a`` holds ``shard-00`` and coordinates, ``gw-b`` holds
``shard-01`` and ``shard-02``, ``gw-c`` a replica of ``shard-02``; the last two only serve.
A search sent to ``<prefix>/fleet/search`` with MQTT 5 request/response must come back
equal to one library holding every shard (ids, labels, order, scores) and to a one-shard
build of the same signatures, the replicas taking turns; a question cites what one
library holding every shard would cite; malformed searches and shard requests get an error
reply, never silence; with holders killed the answers still arrive within the deadline and
name the shards that did not reply.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from faultline.agent.fleet.coordinator import Coordinator
from faultline.agent.fleet.gather import Gather
from faultline.agent.fleet.protocol import (
    FleetError,
    SearchLimits,
    SearchRequest,
    encode_reply,
    parse_reply,
    parse_request,
)
from faultline.agent.questions.history import AssetHistory
from faultline.agent.questions.parse import Question
from faultline.agent.questions.worker import Found, QuestionWorker
from faultline.agent.settings import ConfigError, check_config, load_settings
from faultline.agent.transport.broker import MosquittoProcess
from faultline.agent.transport.mqtt import InboundMessage
from faultline.agent.transport.topics import build_topics
from faultline.encoders.dsp import magnitude_spectrum
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.encoders.text import TextEncoder
from faultline.fault_library.builder import build_library
from faultline.fault_library.catalog import read_manifest
from faultline.fault_library.knowledge_store import KNOWLEDGE_FILE, KnowledgeBase
from faultline.fault_library.library import FaultLibrary, open_current
from faultline.fault_library.recordings import iter_windows, read_recording
from tests.collector import Collector
from tests.harness import AgentProcess, agent_process_env, run_cli, wait_until

RECORDS = ("97", "105", "118", "130", "106", "131")  # 4 classes, loads 0 and 1 hp
LIMITS = SearchLimits(max_payload_bytes=65536, max_queries=8, max_k=50)
DEADLINE_S = 1.5

Matrix = npt.NDArray[np.float32]


# -- the library: real CWRU signatures, three shards (and one shard, for reference) ---------
@dataclass
class Libraries:
    root: Path  # three shards
    single: Path  # the same signatures in one shard
    queries: dict[str, Matrix]  # held-out windows (3-5 s), per view


@pytest.fixture(scope="module")
def libraries(
    cwru_dir: Path, tmp_path_factory: pytest.TempPathFactory, encoder: SpectrumEncoder
) -> Libraries:
    entries = [e for e in read_manifest(cwru_dir) if e.record_id in RECORDS]
    base = tmp_path_factory.mktemp("fleet-library")
    for name, n in (("sharded", 3), ("single", 1)):
        build_library(
            entries, base / name, encoder, segment=lambda _e: (0.0, 3.0), shards=n, progress=False
        )
    held = []
    for entry in entries:
        rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
        held += list(iter_windows(rec, "q", window_s=1.0, start_s=3.0, stop_s=5.0))
    queries = {
        "window": encoder.encode(held)[:8],
        "spectrum": encoder.encode([magnitude_spectrum(w) for w in held])[:8],
    }
    return Libraries(base / "sharded", base / "single", queries)


def _ids(library: FaultLibrary, view: str, queries: Matrix, k: int) -> list[list[str]]:
    return [[n.id for n in hits] for hits in library.search(view, queries, k)]


def _triples(library: FaultLibrary, view: str, queries: Matrix, k: int) -> list[list[Any]]:
    return [[(n.id, n.label, n.score) for n in hits] for hits in library.search(view, queries, k)]


def _answer_triples(answer: dict[str, Any]) -> list[list[Any]]:
    return [[(h["id"], h["label"], h["score"]) for h in hits] for hits in answer["results"]]


# -- in process: the wire format and the merge ---------------------------------------------------
@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"x" * 70_000, "request_too_large"),
        (b"\xff\xfe", "bad_encoding"),
        (b"not json", "bad_json"),
        (b"[1, 2]", "bad_json"),
        (b'{"vectors": [[0.1, 0.2]], "view": "audio"}', "bad_view"),
        (b'{"vectors": [[0.1, 0.2]], "k": 0}', "bad_k"),
        (b'{"vectors": [[0.1, 0.2]], "k": 51}', "bad_k"),
        (b'{"vectors": [[0.1, 0.2]], "k": true}', "bad_k"),
        (b'{"vectors": []}', "bad_vectors"),
        (b'{"vectors": [[0.1, 0.2, 0.3]]}', "bad_vectors"),
        (b'{"vectors": [[0.1, "a"]]}', "bad_vectors"),
        (b'{"vectors": [[0.1, 1e39]]}', "bad_vectors"),
        (json.dumps({"vectors": [[0.1, 0.2]] * 9}).encode(), "bad_vectors"),
        (b'{"vectors": [[0.1, 0.2]], "reply_to": "a/#"}', "bad_reply_to"),
        (b'{"vectors": [[0.1, 0.2]], "correlation_id": 7}', "bad_request"),
        (b"[" * 60_000, "bad_json"),
    ],
)
def test_malformed_requests_are_refused_with_a_code(payload: bytes, code: str) -> None:
    with pytest.raises(FleetError) as refused:
        parse_request(payload, LIMITS, {"window": 2, "spectrum": 2})
    assert refused.value.code == code


def _scatter(library: FaultLibrary, request: SearchRequest, shards: tuple[str, ...]) -> Gather:
    """What a coordinator gathers: each shard's reply, as bytes on the wire and back."""
    gather = Gather(request, library.all_shards, 0.0, 1.0)
    for shard in shards:
        found = library.search_shard(shard, request.view, request.vectors, request.k)
        wire = encode_reply(shard, "gw", found, library.version)
        reply, version, _agent = parse_reply(
            wire, max_bytes=1 << 20, n_queries=len(request.vectors), k=request.k
        )
        gather.add(shard, reply, version)
    return gather


def test_gathered_replies_merge_to_the_one_library_answer_and_name_what_is_missing(
    libraries: Libraries, encoder: SpectrumEncoder
) -> None:
    with open_current(libraries.root, expected_model_id=encoder.model_id) as whole:
        assert whole.all_shards == ("shard-00", "shard-01", "shard-02")
        for view, queries in libraries.queries.items():
            request = SearchRequest(view, 10, queries, whole.version)
            gather = _scatter(whole, request, whole.all_shards)
            assert gather.complete
            answer = gather.answer(0.2, DEADLINE_S)
            assert answer["partial"] is False
            assert answer["missing_shards"] == []
            assert _answer_triples(answer) == _triples(whole, view, queries, 10)  # exact

        # One shard silent, one refusing: named, with why; the rest merged exactly.
        request = SearchRequest("window", 10, libraries.queries["window"], whole.version)
        gather = _scatter(whole, request, ("shard-00",))
        gather.add("shard-02", FleetError("busy", "32 waiting"), whole.version)
        answer = gather.answer(DEADLINE_S, DEADLINE_S)
        assert answer["partial"] is True
        assert answer["missing_shards"] == ["shard-01", "shard-02"]
        assert answer["missing"]["shard-01"]["code"] == "no_reply"
        assert answer["missing"]["shard-02"]["code"] == "busy"
        with open_current(libraries.root, shards=["shard-00"]) as part:
            assert _answer_triples(answer) == _triples(part, "window", request.vectors, 10)

        # A holder on another version is named, not merged.
        other = Gather(request, whole.all_shards, 0.0, 1.0)
        found = whole.search_shard("shard-01", "window", request.vectors, 10)
        other.add("shard-01", found, "20260101T000000Z-deadbeef")
        assert other.failures["shard-01"].code == "version_mismatch"


QUESTION = "Do we have recordings of ball faults at 0.007 in?"


def test_text_searches_merge_like_one_library_and_keep_the_bounds(libraries: Libraries) -> None:
    with open_current(libraries.root) as whole:
        empty = np.zeros((0, 1), np.float32)
        request = SearchRequest("window", 20, empty, whole.version, text=QUESTION)
        gather = Gather(request, whole.all_shards, 0.0, 1.0)
        for shard in whole.all_shards:
            hits = whole.search_text_shard(shard, QUESTION, 20, any_word=True)
            wire = encode_reply(shard, "gw", hits, whole.version)
            reply, version, _agent = parse_reply(
                wire, max_bytes=1 << 20, n_queries=0, k=20, text=True
            )
            gather.add(shard, reply, version)
        answer = gather.answer(0.1, DEADLINE_S)
        expected = whole.search_text(QUESTION, 20, any_word=True)
        got = answer["results"][0]
        assert [(h["id"], h["rank"], h["shard"]) for h in got] == [
            (h["id"], h["rank"], h["shard"]) for h in expected
        ]
        assert len({h["shard"] for h in got}) == 3  # the best hits come from every shard
    for payload, code in (
        (b'{"text": ""}', "bad_text"),
        (json.dumps({"text": "x" * 501}).encode(), "bad_text"),
        (b'{"text": "ball", "vectors": [[0.1, 0.2]]}', "bad_request"),
    ):
        with pytest.raises(FleetError) as refused:
            parse_request(payload, LIMITS, {"window": 2})
        assert refused.value.code == code


def test_a_malformed_reply_is_refused() -> None:
    for payload in (b"{", b'{"ids": [["a"]], "labels": [["x"]], "scores": [[NaN]]}'):
        with pytest.raises(FleetError) as refused:
            parse_reply(payload, max_bytes=4096, n_queries=1, k=5)
        assert refused.value.code == "bad_reply"
    too_many = json.dumps({"ids": [["a"] * 6], "labels": [["x"] * 6], "scores": [[0.5] * 6]})
    with pytest.raises(FleetError, match="at most 5"):
        parse_reply(too_many.encode(), max_bytes=4096, n_queries=1, k=5)


# -- real gateways -------------------------------------------------------------------------------
class Requester:
    """An MQTT 5 client that asks and waits for the reply with its correlation data."""

    def __init__(self, port: int) -> None:
        self.inbox = f"replies/{uuid.uuid4().hex[:8]}"
        self._replies: dict[bytes, list[tuple[dict[str, Any], float]]] = {}
        self._cond = threading.Condition()
        subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._client.subscribe(self.inbox, qos=1)
        assert subscribed.wait(10)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        correlation = bytes(getattr(message.properties, "CorrelationData", b"") or b"")
        with self._cond:
            self._replies.setdefault(correlation, []).append(
                (json.loads(message.payload), time.monotonic())
            )
            self._cond.notify_all()

    def ask(
        self, topic: str, payload: bytes, timeout: float = 30.0
    ) -> tuple[dict[str, Any], float]:
        """The reply and the seconds it took."""
        return self.ask_all(topic, payload, 1, timeout)[0]

    def ask_all(
        self, topic: str, payload: bytes, count: int, timeout: float = 30.0
    ) -> list[tuple[dict[str, Any], float]]:
        """The first ``count`` replies (several gateways may answer) and when each came."""
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.inbox
        props.CorrelationData = correlation
        sent = time.monotonic()
        self._client.publish(topic, payload, qos=1, properties=props).wait_for_publish(5)
        with self._cond:
            if not self._cond.wait_for(
                lambda: len(self._replies.get(correlation, [])) >= count, timeout
            ):
                raise AssertionError(f"not {count} replies on {topic} within {timeout} s")
            return [(body, arrived - sent) for body, arrived in self._replies[correlation]]

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


@dataclass
class Fleet:
    port: int
    prefix: str
    gateways: dict[str, AgentProcess]
    requester: Requester
    libraries: Libraries


@pytest.fixture(scope="module")
def fleet(libraries: Libraries, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """gw-a: shard-00, coordinates; gw-b: shard-01 and shard-02, gw-c: shard-02, hold only.
    One broker for the module (the last test kills gw-b, then gw-c)."""
    work = tmp_path_factory.mktemp("fleet")
    broker = MosquittoProcess(workdir=work / "mosquitto")
    broker.start()
    prefix = f"t/fleet-{uuid.uuid4().hex[:8]}"
    held = {
        "gw-a": ("[shard-00]", "true"),
        "gw-b": ("[shard-01, shard-02]", "false"),
        "gw-c": ("[shard-02]", "false"),  # a replica: shares shard-02's requests with gw-b
    }
    gateways = {
        gw: AgentProcess(
            agent_process_env(
                broker.port,
                prefix,
                libraries.root,
                work / gw,
                FAULTLINE__MQTT__CLIENT_ID=gw,
                FAULTLINE__LIBRARY__SHARDS=shards,
                FAULTLINE__FLEET__ENABLED="true",
                FAULTLINE__FLEET__COORDINATE=coordinate,
                FAULTLINE__FLEET__DEADLINE_S=str(DEADLINE_S),
                FAULTLINE__FLEET__MAX_QUERIES=str(LIMITS.max_queries),
                FAULTLINE__FLEET__MAX_K=str(LIMITS.max_k),
                FAULTLINE__FLEET__MAX_PAYLOAD_BYTES=str(LIMITS.max_payload_bytes),
            ),
            work / f"{gw}.log",
        )
        for gw, (shards, coordinate) in held.items()
    }
    status = Collector("127.0.0.1", broker.port, [f"{prefix}/status/+"])
    requester = Requester(broker.port)
    try:
        for gateway in gateways.values():
            gateway.start()

        def online() -> bool:
            latest = {t.rsplit("/", 1)[1]: b.get("state") for t, b in list(status.messages)}
            return latest == dict.fromkeys(held, "online")

        wait_until(online, 120, "every gateway online")
        yield Fleet(broker.port, prefix, gateways, requester, libraries)
        for gw, gateway in gateways.items():
            if gateway.proc is not None and gateway.proc.poll() is None:
                assert gateway.stop(60) == 0, f"{gw}: {gateway.output()}"
    finally:
        for gateway in gateways.values():
            gateway.kill9()
        requester.close()
        status.close()
        broker.stop()


def _search(view: str, queries: Matrix, k: int) -> bytes:
    return json.dumps(
        {"view": view, "k": k, "vectors": queries.astype(np.float64).tolist()}
    ).encode()


@pytest.mark.slow
def test_a_fleet_search_equals_one_library_holding_every_shard(
    fleet: Fleet, encoder: SpectrumEncoder
) -> None:
    lib = fleet.libraries
    whole = open_current(lib.root, expected_model_id=encoder.model_id)
    single = open_current(lib.single, expected_model_id=encoder.model_id)
    holders: dict[str, set[str]] = {}
    try:
        for view, queries in [*lib.queries.items()] * 3:
            answer, took = fleet.requester.ask(
                f"{fleet.prefix}/fleet/search", _search(view, queries, 10)
            )
            for shard, agent in answer["holders"].items():
                holders.setdefault(shard, set()).add(agent)
            assert answer["schema"] == "faultline.search/1", answer
            assert answer["partial"] is False, answer["missing"]
            assert answer["missing_shards"] == []
            assert answer["answered_shards"] == ["shard-00", "shard-01", "shard-02"]
            assert answer["library_version"] == whole.version
            assert answer["agent_id"] == "gw-a"
            # Exactly one library holding every shard: ids, labels, order and scores.
            assert _answer_triples(answer) == _triples(whole, view, queries, 10)
            # And one index over all signatures (a one-shard build): same ids, same order.
            ids = [[h["id"] for h in hits] for hits in answer["results"]]
            assert ids == _ids(single, view, queries, 10)
            assert {h["shard"] for hits in answer["results"] for h in hits} == set(whole.shards)
            print(f"fleet search ({view}, {len(queries)} queries, k 10): {took * 1000:.0f} ms")
        # The replicas of shard-02 split its requests through their share group.
        assert holders == {"shard-00": {"gw-a"}, "shard-01": {"gw-b"}, "shard-02": {"gw-b", "gw-c"}}
    finally:
        whole.close()
        single.close()


@pytest.mark.slow
def test_malformed_searches_and_shard_requests_get_an_error_reply(fleet: Fleet) -> None:
    search = f"{fleet.prefix}/fleet/search"
    shard = f"{fleet.prefix}/shards/shard-01/search"
    vector = fleet.libraries.queries["window"][:1]
    cases = [
        (search, b"\xff\xfe", "bad_encoding"),
        (search, b"not json", "bad_json"),
        (search, b'{"vectors": []}', "bad_vectors"),
        (search, json.dumps({"vectors": [[0.5] * 3]}).encode(), "bad_vectors"),
        (search, _search("audio", vector, 10), "bad_view"),
        (search, _search("window", vector, 51), "bad_k"),
        (search, _search("window", np.repeat(vector, 9, axis=0), 5), "bad_vectors"),
        (search, b"x" * (LIMITS.max_payload_bytes + 1), "request_too_large"),
        (shard, b"{", "bad_json"),
        (shard, _search("window", vector, 0), "bad_k"),
        (
            shard,
            json.dumps(
                {"vectors": vector.astype(np.float64).tolist(), "version": "19990101T0-0"}
            ).encode(),
            "version_mismatch",
        ),
    ]
    for topic, payload, code in cases:
        reply, _took = fleet.requester.ask(topic, payload, timeout=10)
        assert reply.get("error", {}).get("code") == code, (topic, payload[:60], reply)
    print(f"{len(cases)} malformed requests, {len(cases)} error replies")


@pytest.mark.slow
def test_a_question_cites_signatures_of_every_shard_like_one_library(
    fleet: Fleet, encoder: SpectrumEncoder
) -> None:
    """``<prefix>/query`` is not shared here, so every gateway answers: each scatters the
    question's signature search over the fleet, so all cite what one gateway holding every
    shard would cite, though none holds them all."""
    replies = fleet.requester.ask_all(f"{fleet.prefix}/query", QUESTION.encode(), 3)
    answers = {body["agent_id"]: body for body, _took in replies}
    assert set(answers) == {"gw-a", "gw-b", "gw-c"}
    with open_current(fleet.libraries.root, expected_model_id=encoder.model_id) as whole:

        def everything(question: str) -> Found:
            hits = whole.search_text(question, 20, any_word=True)
            return Found([(str(h["id"]), str(h["description"])) for h in hits])

        worker = QuestionWorker(
            knowledge=lambda: KnowledgeBase(whole.path / KNOWLEDGE_FILE, TextEncoder()),
            knowledge_key=lambda: whole.path,
            history=AssetHistory(),
            reply=lambda *_a: None,
            signatures=everything,
        )
        alone = worker.answer(Question(QUESTION, None, None, None))
        cited = [c["id"] for c in alone.citations if c["kind"] == "signature"]
        assert cited, alone
        for agent, answer in answers.items():
            assert answer["partial"] is False, answer
            assert answer["missing_shards"] == []
            assert answer["answer"] == alone.text, agent
            assert [c["id"] for c in answer["citations"]] == [c["id"] for c in alone.citations]
        shards = {row["shard"] for row in whole.describe(cited)}
        assert shards - {"shard-00"}, "gw-a cites a signature it does not hold"
    print(f"question cites {cited} (shards {sorted(shards)}) from all three gateways")


@pytest.mark.slow
def test_library_search_fleet_asks_every_shard_from_the_command_line(
    fleet: Fleet, cwru_dir: Path, encoder: SpectrumEncoder, tmp_path: Path
) -> None:
    """`faultline library search FILE --fleet` (and `--text ... --fleet`) as a user runs it:
    a fresh process with the broker and prefix from the environment, no library of its own."""
    entry = next(e for e in read_manifest(cwru_dir) if e.record_id == "118")
    env = agent_process_env(fleet.port, fleet.prefix, tmp_path / "none", tmp_path / "data")
    args = ["--fs", str(entry.fs), "--rpm", str(entry.rpm), "--start", "3", "--windows", "2"]
    done = run_cli(
        "library", "search", str(entry.path), *args, "--k", "5", "--fleet", "--json", env=env
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    rec = read_recording(entry.path, fs=entry.fs, rpm=entry.rpm)
    windows = list(iter_windows(rec, "search", window_s=1.0, start_s=3.0))[:2]
    with open_current(fleet.libraries.root, expected_model_id=encoder.model_id) as whole:
        expected = whole.search("window", encoder.encode(windows), 5)
        assert answer["partial"] is False
        assert [[h["id"] for h in hits] for hits in answer["results"]] == [
            [n.id for n in hits] for hits in expected
        ]
        assert [[h["label"] for h in hits] for hits in answer["results"]] == [
            [n.label for n in hits] for hits in expected
        ]
        text = "ball 0.007"
        done = run_cli(
            "library", "search", "--text", text, "--k", "5", "--fleet", "--json", env=env
        )
        assert done.returncode == 0, done.stderr
        hits = json.loads(done.stdout)["results"][0]
        ranked = whole.search_text(text, 5, any_word=True)
        assert [(h["id"], h["shard"]) for h in hits] == [(h["id"], h["shard"]) for h in ranked]
    done = run_cli("library", "search", "--text", text, "--fleet", env=env)
    assert done.returncode == 0, done.stderr
    assert "3 of 3 shards answered (coordinator gw-a" in done.stdout, done.stdout
    print(done.stdout)


@pytest.mark.slow
def test_a_dead_shard_holder_is_named_within_the_deadline(fleet: Fleet) -> None:
    queries = fleet.libraries.queries["window"]
    search = f"{fleet.prefix}/fleet/search"
    with open_current(fleet.libraries.root, shards=["shard-00"]) as part:
        expected = _triples(part, "window", queries, 10)
    # gw-b dead: shard-01 has no holder left; shard-02 still has gw-c, but Mosquitto keeps
    # gw-b's session in the share group's round robin, so some of shard-02's requests wait
    # for gw-b (and expire) - named, never hidden.
    fleet.gateways["gw-b"].kill9()
    with ThreadPoolExecutor(6) as pool:
        answers = list(
            pool.map(
                lambda _i: fleet.requester.ask(search, _search("window", queries, 10), 10), range(6)
            )
        )
    shard_02 = {"answered": 0, "missing": 0}
    for answer, took in answers:
        assert took < DEADLINE_S + 1.0, took
        assert answer["partial"] is True
        assert answer["missing"]["shard-01"]["code"] == "no_reply"
        if "shard-02" in answer["missing_shards"]:
            shard_02["missing"] += 1
        else:
            shard_02["answered"] += 1
            assert answer["holders"]["shard-02"] == "gw-c"
    print(f"gw-b dead: 6 searches within {max(t for _a, t in answers):.2f} s; shard-02 {shard_02}")

    fleet.gateways["gw-c"].kill9()
    answer, took = fleet.requester.ask(search, _search("window", queries, 10), timeout=10)
    assert took < DEADLINE_S + 1.0, took
    assert answer["partial"] is True
    assert answer["missing_shards"] == ["shard-01", "shard-02"]
    assert {m["code"] for m in answer["missing"].values()} == {"no_reply"}
    assert answer["answered_shards"] == ["shard-00"]
    assert _answer_triples(answer) == expected
    print(
        f"gw-b, gw-c dead: answered in {took:.2f} s (deadline {DEADLINE_S} s), "
        "missing shard-01, shard-02"
    )
    # A question's signature search says the same: answered, with what it lacked named.
    answer, took = fleet.requester.ask(f"{fleet.prefix}/query", QUESTION.encode(), timeout=10)
    assert answer["agent_id"] == "gw-a"
    assert took < DEADLINE_S + 1.0, took
    assert answer["partial"] is True
    assert answer["missing_shards"] == ["shard-01", "shard-02"]
    print(f"question: answered in {took:.2f} s, missing {answer['missing_shards']}")


# -- bounds, in process: a coordinator whose requests reach nobody ------------------------------
def test_a_coordinator_answers_busy_beyond_max_pending_and_partial_at_its_deadline(
    libraries: Libraries,
) -> None:
    sent: list[tuple[str, bytes, int]] = []
    answers: list[tuple[bytes | None, dict[str, object], float]] = []
    started = time.monotonic()
    with open_current(libraries.root) as whole:
        coordinator = Coordinator(
            library=lambda: whole,
            shard_topic=lambda shard: f"p/shards/{shard}/search",
            # Published into the void: no holder ever replies.
            send_request=lambda topic, _body, correlation, expiry: sent.append(
                (topic, correlation, expiry)
            ),
            reply=lambda message, _request, body, ack: (
                answers.append((message.correlation_data, body, time.monotonic() - started)),
                ack(),
            ),
            limits=LIMITS,
            deadline_s=0.3,
            max_pending=1,
        )
        coordinator.start()
        acks: list[bytes] = []
        try:
            for n in (b"1", b"2"):
                message = InboundMessage(
                    topic="p/fleet/search",
                    payload=_search("window", libraries.queries["window"][:1], 3),
                    qos=1,
                    retain=False,
                    user_properties={},
                    content_type=None,
                    received_at=time.monotonic(),
                    mid=int(n),
                    correlation_data=n,
                )
                coordinator.offer(message, lambda n=n: acks.append(n))
            wait_until(lambda: len(answers) == 2, 5, "both answered")
        finally:
            coordinator.stop()
    # One request per shard, correlated, with the deadline as message expiry (>= 1 s).
    assert [t for t, _c, _e in sent] == [f"p/shards/shard-0{i}/search" for i in range(3)]
    assert len({c.split(b":")[0] for _t, c, _e in sent}) == 1
    assert {e for _t, _c, e in sent} == {1}
    by_id = {c: (body, at) for c, body, at in answers}
    busy, _at = by_id[b"2"]
    assert busy["error"]["code"] == "busy"  # type: ignore[index]
    late, at = by_id[b"1"]
    assert late["partial"] is True
    assert late["missing_shards"] == ["shard-00", "shard-01", "shard-02"]
    assert late["results"] == [[]]
    assert 0.3 <= at < 1.0, at
    assert sorted(acks) == [b"1", b"2"]
    assert coordinator.status()["pending"] == 0


def test_fleet_settings_are_bounded_and_set_by_environment_variables() -> None:
    env = {
        "FAULTLINE__FLEET__ENABLED": "true",
        "FAULTLINE__FLEET__DEADLINE_S": "0.5",
        "FAULTLINE__LIBRARY__SHARDS": "[shard-01, shard-02]",
    }
    settings = load_settings(None, env=env)
    assert settings.fleet.enabled
    assert settings.fleet.deadline_s == 0.5
    assert settings.library.shards == ["shard-01", "shard-02"]
    default = Path(__file__).resolve().parents[1] / "config" / "default.yaml"
    check = check_config(default, env)
    assert check.ok, check.text
    assert "fleet:   holds shards shard-01, shard-02, coordinates (deadline 0.5 s)" in check.text
    assert check.as_json()["fleet"].startswith("holds shards shard-01, shard-02")
    for key, value, named in (
        ("FAULTLINE__FLEET__DEADLINE_S", "0", "fleet.deadline_s"),
        ("FAULTLINE__FLEET__MAX_PENDING", "0", "fleet.max_pending"),
        ("FAULTLINE__FLEET__GROUP", "a/b", "fleet.group"),
        ("FAULTLINE__MQTT__PROTOCOL", "3.1.1", "fleet.enabled"),
    ):
        with pytest.raises(ConfigError, match=named.replace(".", r"\.")) as refused:
            load_settings(None, env={**env, key: value})
        assert key in str(refused.value) or "FAULTLINE__FLEET__ENABLED" in str(refused.value)
    topics = build_topics("plant", "gw-1", ["{prefix}/sensors/+/window"], [], fleet_group="f")
    assert topics.shard_of("plant/shards/shard-02/search") == "shard-02"
    assert topics.shard_of("plant/shards/a/b/search") is None
    assert topics.shard_of("plant/query") is None
    assert topics.fleet_subscriptions(("shard-00",), coordinate=False) == [
        "$share/f/plant/shards/shard-00/search",
        "plant/fleet/replies/gw-1",
    ]
    assert "$share/f/plant/fleet/search" in topics.fleet_subscriptions((), coordinate=True)
