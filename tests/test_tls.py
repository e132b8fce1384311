"""TLS, mutual TLS and ACLs against a real Mosquitto with certificates made in the test.

One broker serves the transport tests: a plain loopback listener (for the observers), a
server-only TLS listener and a mutual-TLS listener (``require_certificate true``, the
certificate's CN as user name). Each test reads what the agent logged, because what an
operator sees in the log is the point: a refusal must name its cause and the key to fix.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from faultline.agent.transport.broker import MosquittoProcess, free_port
from faultline.agent.transport.mqtt import MqttTransport
from faultline.agent.transport.tls import TlsParameters
from faultline.encoders.spectrum import SpectrumEncoder
from faultline.fault_library.library import FaultLibrary
from tests.collector import Collector
from tests.harness import agent_settings, publish_windows, record_windows, start_agent
from tests.pki import KEY_PASSWORD, Pki, make_pki, tls_listener

WAIT_S = 10.0
REFUSED_WAIT_S = 3.0  # long enough for several jittered attempts (reconnect_max_s 0.5)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


class TlsBroker:
    def __init__(self, broker: MosquittoProcess, tls_port: int, mtls_port: int) -> None:
        self.broker, self.tls_port, self.mtls_port = broker, tls_port, mtls_port


@pytest.fixture(scope="module")
def tls_broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsBroker]:
    tls_port, mtls_port = free_port(), free_port()
    conf = [
        *tls_listener(tls_port, pki, require_certificate=False),
        *tls_listener(mtls_port, pki, require_certificate=True),
    ]
    broker = MosquittoProcess(workdir=tmp_path_factory.mktemp("mosquitto-tls"), extra_conf=conf)
    broker.start()
    _wait_listening(tls_port)
    _wait_listening(mtls_port)
    try:
        yield TlsBroker(broker, tls_port, mtls_port)
    finally:
        broker.stop()


def _wait_listening(port: int) -> None:
    import socket

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"no listener on {port}")


def _transport(port: int, tls: TlsParameters | None, **kw: Any) -> MqttTransport:
    name = f"tls-{uuid.uuid4().hex[:8]}"
    return MqttTransport(
        host="127.0.0.1",
        port=port,
        client_id=name,
        status_topic=f"t/{name}/status",
        status_online=dict,
        on_message=lambda _m: None,
        reconnect_min_s=0.1,
        reconnect_max_s=0.5,
        tls=tls,
        **kw,
    )


def _connects(transport: MqttTransport, timeout: float = WAIT_S) -> bool:
    transport.start()
    try:
        return transport.wait_connected(timeout)
    finally:
        transport.stop()


def _log(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records)


def test_server_only_tls_carries_messages(tls_broker: TlsBroker, pki: Pki) -> None:
    topic = f"t/tls-{uuid.uuid4().hex[:8]}/x"
    observer = Collector("127.0.0.1", tls_broker.broker.port, [topic])
    transport = _transport(tls_broker.tls_port, TlsParameters(ca_certs=str(pki.ca)))
    transport.start()
    try:
        assert transport.wait_connected(WAIT_S)
        transport.publish(topic, b'{"over": "tls"}')
        observer.wait_for(lambda t, b: b == {"over": "tls"}, timeout=WAIT_S)
    finally:
        transport.stop()
        observer.close()


def test_mutual_tls_with_an_encrypted_key_connects_and_never_logs_the_password(
    tls_broker: TlsBroker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    params = TlsParameters(
        ca_certs=str(pki.ca),
        certfile=str(pki.client_cert),
        keyfile=str(pki.client_key_encrypted),
        keyfile_password=KEY_PASSWORD,
        min_version="1.3",
    )
    assert KEY_PASSWORD not in repr(params)
    assert _connects(_transport(tls_broker.mtls_port, params))
    assert KEY_PASSWORD not in _log(caplog)


def test_mutual_tls_without_a_client_certificate_says_one_is_required(
    tls_broker: TlsBroker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    transport = _transport(tls_broker.mtls_port, TlsParameters(ca_certs=str(pki.ca)))
    assert not _connects(transport, REFUSED_WAIT_S)
    text = _log(caplog)
    assert "client certificate" in text, text
    assert "mqtt.certfile" in text, text
    assert transport.stats["connects"] == 0


def test_a_client_certificate_of_another_ca_is_refused_with_a_clear_log(
    tls_broker: TlsBroker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    params = TlsParameters(
        ca_certs=str(pki.ca), certfile=str(pki.rogue_cert), keyfile=str(pki.rogue_key)
    )
    transport = _transport(tls_broker.mtls_port, params)
    assert not _connects(transport, REFUSED_WAIT_S)
    text = _log(caplog)
    assert "refused our client certificate" in text, text
    assert "mqtt.certfile" in text, text


def test_plain_mqtt_to_a_tls_port_is_named_as_such(
    tls_broker: TlsBroker, caplog: pytest.LogCaptureFixture
) -> None:
    transport = _transport(tls_broker.tls_port, None)
    assert not _connects(transport, REFUSED_WAIT_S)
    lines = [r.getMessage() for r in caplog.records if "speaks TLS" in r.getMessage()]
    assert len(lines) == 1, _log(caplog)  # once per failure streak, not at every retry
    assert "set mqtt.tls: true" in lines[0]


def test_tls_to_a_plain_port_is_named_as_such(
    tls_broker: TlsBroker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    transport = _transport(tls_broker.broker.port, TlsParameters(ca_certs=str(pki.ca)))
    assert not _connects(transport, REFUSED_WAIT_S)
    assert "does not speak TLS on this port" in _log(caplog)


def test_a_broker_certificate_from_an_untrusted_ca_is_refused(
    tls_broker: TlsBroker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    transport = _transport(tls_broker.tls_port, TlsParameters(ca_certs=str(pki.rogue_ca)))
    assert not _connects(transport, REFUSED_WAIT_S)
    text = _log(caplog)
    assert "not trusted" in text, text
    assert "mqtt.ca_certs" in text, text


def test_certificate_pinning_accepts_the_pin_and_refuses_another(
    tls_broker: TlsBroker, pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    good = TlsParameters(ca_certs=str(pki.ca), fingerprint_sha256=pki.server_fingerprint)
    assert _connects(_transport(tls_broker.tls_port, good))
    bad = TlsParameters(ca_certs=str(pki.ca), fingerprint_sha256="0" * 64)
    transport = _transport(tls_broker.tls_port, bad)
    assert not _connects(transport, REFUSED_WAIT_S)
    assert "fingerprint " in _log(caplog)
    assert "; not connecting\n" in _log(caplog) + "\n"  # the sentence, not a tuple repr


# ---------------------------------------------------------------------------- ACL


def _acl_broker(pki: Pki, workdir: Path, prefix: str) -> tuple[MosquittoProcess, int]:
    """mTLS listener whose user is the certificate's CN; that user may not publish alerts."""
    mtls_port = free_port()
    acl = workdir / "acl"
    workdir.mkdir(parents=True, exist_ok=True)
    acl.write_text(
        "# anonymous observers on the plain loopback port\n"
        "topic readwrite #\n"
        "user faultline-agent\n"
        f"topic deny {prefix}/alerts/#\n"
        "topic readwrite #\n",
        encoding="utf-8",
    )
    conf = [*tls_listener(mtls_port, pki, require_certificate=True), f"acl_file {acl}"]
    broker = MosquittoProcess(workdir=workdir, extra_conf=conf)
    broker.start()
    _wait_listening(mtls_port)
    return broker, mtls_port


def test_an_acl_denied_publish_is_counted_and_logged_with_its_topic(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = f"t/acl-{uuid.uuid4().hex[:8]}"
    broker, port = _acl_broker(pki, tmp_path / "mosquitto", prefix)
    outcomes: dict[int, bool] = {}
    heard = threading.Condition()

    def published(mid: int, ok: bool) -> None:  # the retained status's PUBACKs come too
        with heard:
            outcomes[mid] = ok
            heard.notify_all()

    params = TlsParameters(
        ca_certs=str(pki.ca), certfile=str(pki.client_cert), keyfile=str(pki.client_key)
    )
    transport = _transport(port, params, on_published=published)
    transport.start()
    try:
        assert transport.wait_connected(WAIT_S)
        denied = transport.publish(f"{prefix}/alerts/pump-1", b"{}")
        allowed = transport.publish(f"{prefix}/errors", b"{}")
        with heard:
            assert heard.wait_for(lambda: {denied, allowed} <= set(outcomes), WAIT_S)
    finally:
        transport.stop()
        broker.stop()
    assert (outcomes[denied], outcomes[allowed]) == (False, True)
    assert transport.refusals == {f"{prefix}/alerts/pump-1": {"Not authorized": 1}}
    assert transport.stats["publish_refused"] == 1
    text = _log(caplog)
    assert f"refused a publish to '{prefix}/alerts/pump-1': Not authorized" in text, text
    assert "ACL" in text


def test_the_agent_reports_alerts_its_acl_denies_on_the_errors_topic_and_status(
    pki: Pki,
    tmp_path: Path,
    cwru_dir: Path,
    test_library: FaultLibrary,
    encoder: SpectrumEncoder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The whole agent over mutual TLS, its user denied ``<prefix>/alerts/#``: the window
    is still answered, the refused alert is counted, logged with its topic, announced on the
    errors topic (which the ACL allows) and shown in the retained status."""
    prefix = f"t/acl-{uuid.uuid4().hex[:8]}"
    broker, port = _acl_broker(pki, tmp_path / "mosquitto", prefix)
    settings = agent_settings(
        port,
        prefix,
        FAULTLINE__MQTT__TLS="true",
        FAULTLINE__MQTT__CA_CERTS=str(pki.ca),
        FAULTLINE__MQTT__CERTFILE=str(pki.client_cert),
        FAULTLINE__MQTT__KEYFILE=str(pki.client_key_encrypted),
        FAULTLINE__MQTT__KEYFILE_PASSWORD=KEY_PASSWORD,
    )
    observer = Collector(
        "127.0.0.1", broker.port, [f"{prefix}/errors", f"{prefix}/status/#", f"{prefix}/alerts/#"]
    )
    agent = start_agent(settings, test_library, encoder)
    try:
        publish_windows(
            broker.port, prefix, record_windows(cwru_dir, "105", "pump-1", 1, ts0=time.time())
        )
        errors = observer.wait_for(
            lambda t, b: t == f"{prefix}/errors" and b.get("code") == "outbox_refused",
            timeout=30,
        )
        agent.transport.publish_status()
        status = observer.wait_for(
            lambda t, b: "/status/" in t and bool(b.get("refused_by_broker")), timeout=WAIT_S
        )
    finally:
        agent.stop()
        observer.close()
        broker.stop()
    assert "1 messages refused (1 alert)" in errors[0][1]["reason"], errors
    assert status[-1][1]["refused_by_broker"] == {f"{prefix}/alerts/pump-1": {"Not authorized": 1}}
    assert status[-1][1]["outbox"]["refused_by_broker"] == {"alert": 1}
    assert not [t for t, _b in observer.messages if "/alerts/" in t]
    text = _log(caplog)
    assert f"refused a publish to '{prefix}/alerts/pump-1': Not authorized" in text
    assert KEY_PASSWORD not in text
