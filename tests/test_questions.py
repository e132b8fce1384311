"""Plain-text questions over MQTT: parsing bounds, hybrid retrieval over the real knowledge
base (real MiniLM), answers grounded in an asset's real alerts, request/response over a
real broker by paho (MQTT 5 and 3.1.1) and by the stock mosquitto_rr."""

from __future__ import annotations

import json
import subprocess
import threading
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from faultline.agent.app import Agent
from faultline.agent.questions.parse import QuestionError, parse_question
from faultline.agent.transport.broker import MosquittoProcess
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.encoders.text import TextEncoder
from faultline.fault_library.knowledge_store import KnowledgeBase, load_entries, write_knowledge
from faultline.fault_library.library import FaultLibrary, open_current
from tests.collector import Collector
from tests.harness import agent_settings, publish_windows, record_windows, start_agent


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"x" * 5000, "question_too_large"),
        (b"\xff\xfe what", "bad_encoding"),
        (b"   ", "empty_question"),
        (b"{not json", "bad_json"),
        (b'{"question": 7}', "bad_question"),
        (b'{"question": "why?", "reply_to": "a/#"}', "bad_reply_to"),
        (("why " * 200).encode(), "question_too_long"),
    ],
)
def test_malformed_questions_are_refused_with_a_code(payload: bytes, code: str) -> None:
    with pytest.raises(QuestionError) as caught:
        parse_question(payload)
    assert caught.value.code == code


def test_plain_and_json_questions() -> None:
    plain = parse_question(b"  is pump-7\n getting worse? ")
    assert plain.text == "is pump-7 getting worse?"
    assert plain.reply_to is None
    body = b'{"question": "what is BPFO?", "asset": "p1", "reply_to": "r/1", "correlation_id": "c"}'
    q = parse_question(body)
    assert (q.text, q.asset, q.reply_to, q.correlation_id) == ("what is BPFO?", "p1", "r/1", "c")


@pytest.fixture(scope="module")
def knowledge(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    path = tmp_path_factory.mktemp("kb") / "knowledge.sqlite"
    entries, _sha = load_entries()
    encoder = TextEncoder()
    write_knowledge(path, entries, encoder)
    return KnowledgeBase(path, encoder)


def test_hybrid_retrieval_finds_the_entry_and_knows_what_it_does_not_know(
    knowledge: KnowledgeBase,
) -> None:
    hits = knowledge.search("What does a BPFO line at 3x mean?", 5)
    assert {"kb-outer-race", "kb-harmonics"} & {h.id for h in hits[:3]}
    assert knowledge.relevant(hits)
    for nonsense in ("What is on the canteen menu today?", "What is the wifi password?"):
        assert not knowledge.relevant(knowledge.search(nonsense, 5)), nonsense


@pytest.fixture
def asking_agent(
    mosquitto_session: MosquittoProcess,
    test_library: FaultLibrary,
    test_library_root: Path,
    encoder: SpectrumEncoder,
    unique_prefix: str,
) -> Any:
    # A library of its own: stopping an agent closes its library, and the session's is
    # shared by other tests (their searches never reach its SQLite; questions do).
    library = open_current(test_library_root, expected_model_id=encoder.model_id)
    assert library.version == test_library.version
    agent = start_agent(agent_settings(mosquitto_session.port, unique_prefix), library, encoder)
    yield agent
    agent.stop()


def _ask_v5(port: int, topic: str, text: bytes, correlation: bytes) -> tuple[dict[str, Any], bytes]:
    """An MQTT 5 requester: response topic and correlation data as properties."""
    response_topic = f"replies/{uuid.uuid4().hex[:8]}"
    got: list[mqtt.MQTTMessage] = []
    done, subscribed = threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda _c, _u, m: (got.append(m), done.set())
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(response_topic, qos=1)
    assert subscribed.wait(10)
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = response_topic
    props.CorrelationData = correlation
    client.publish(topic, text, qos=1, properties=props)
    assert done.wait(60), "no answer"
    client.loop_stop()
    client.disconnect()
    message = got[0]
    return json.loads(message.payload), bytes(message.properties.CorrelationData)


@pytest.mark.slow
def test_mqtt5_question_round_trip_echoes_correlation_data(
    asking_agent: Agent, mosquitto_session: MosquittoProcess, unique_prefix: str
) -> None:
    correlation = b"\x00\xffreq-42\x80"  # not UTF-8: must come back byte for byte
    answer, echoed = _ask_v5(
        mosquitto_session.port,
        f"{unique_prefix}/query",
        b"What does a BPFO line at 3x mean?",
        correlation,
    )
    assert echoed == correlation
    assert answer["schema"] == "faultline.answer/1"
    assert answer["known"] is True
    cited = [c["id"] for c in answer["citations"]]
    assert {"kb-outer-race", "kb-harmonics"} & set(cited)
    assert all(c in {e.id for e in load_entries()[0]} for c in cited)
    print("\n" + json.dumps(answer, indent=1))


@pytest.mark.slow
def test_an_asset_question_is_answered_from_its_real_alerts_and_nonsense_is_not(
    asking_agent: Agent,
    mosquitto_session: MosquittoProcess,
    cwru_dir: Path,
    unique_prefix: str,
) -> None:
    port = mosquitto_session.port
    collector = Collector("127.0.0.1", port, [f"{unique_prefix}/alerts/#"])
    publish_windows(port, unique_prefix, record_windows(cwru_dir, "133", "pump-7", 6, ts0=1.7e9))
    alerts = collector.wait_for(lambda t, b: True, count=6, timeout=60)
    collector.close()
    answer, _ = _ask_v5(port, f"{unique_prefix}/query", b"is pump-7 getting worse?", b"1")
    assert answer["known"] is True
    assert answer["asset"] == "pump-7"
    assert "outer_race" in answer["answer"]
    alert_ids = {b["message_id"] for _t, b in alerts}
    assert alert_ids & {c["id"] for c in answer["citations"] if c["kind"] == "alert"}
    print("\n" + json.dumps(answer, indent=1))
    unknown, _ = _ask_v5(port, f"{unique_prefix}/query", b"What is on the canteen menu?", b"2")
    assert unknown["known"] is False
    assert unknown["answer"].startswith("I don't know")
    assert unknown["citations"] == []


@pytest.mark.slow
def test_a_v311_client_asks_with_reply_to_and_bad_questions_get_an_error_reply(
    asking_agent: Agent, mosquitto_session: MosquittoProcess, unique_prefix: str
) -> None:
    port = mosquitto_session.port
    reply_to = f"{unique_prefix}/my-replies"
    collector = Collector("127.0.0.1", port, [reply_to, f"{unique_prefix}/answers"])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.connect("127.0.0.1", port)
    client.loop_start()
    question = {"question": "how much grease?", "reply_to": reply_to, "correlation_id": "c-9"}
    client.publish(f"{unique_prefix}/query", json.dumps(question), qos=1).wait_for_publish(5)
    client.publish(f"{unique_prefix}/query", b"x" * 5000, qos=1).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()
    [(_t, good)] = collector.wait_for(lambda t, b: t == reply_to, timeout=60)
    [(_t, bad)] = collector.wait_for(lambda t, b: t.endswith("/answers"), timeout=60)
    collector.close()
    assert good["correlation_id"] == "c-9"
    assert good["known"] is True
    assert bad["error"]["code"] == "question_too_large"


@pytest.mark.slow
def test_the_stock_mosquitto_rr_gets_an_answer(
    asking_agent: Agent, mosquitto_session: MosquittoProcess, unique_prefix: str
) -> None:
    command = [
        "mosquitto_rr",
        "-V", "mqttv5",
        "-h", "127.0.0.1",
        "-p", str(mosquitto_session.port),
        "-t", f"{unique_prefix}/query",
        "-e", f"{unique_prefix}/rr-{uuid.uuid4().hex[:6]}",
        "-D", "publish", "correlation-data", "rr-1",
        "-W", "60",
        "-m", "What does kurtosis tell me?",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["known"] is True
    assert any(c["kind"] == "knowledge" for c in answer["citations"])


@pytest.mark.slow
def test_a_question_about_the_library_cites_its_recordings(
    asking_agent: Agent, mosquitto_session: MosquittoProcess, unique_prefix: str
) -> None:
    answer, _ = _ask_v5(
        mosquitto_session.port,
        f"{unique_prefix}/query",
        b"Do we have recordings of ball faults at 0.014 in?",
        b"lib",
    )
    signatures = [c for c in answer["citations"] if c["kind"] == "signature"]
    assert signatures, answer
    assert "0.014" in answer["answer"]
    found = asking_agent.library.current.describe([c["id"] for c in signatures])
    assert all("ball" in str(row["label"]) for row in found), found
    print("\n" + answer["answer"])
