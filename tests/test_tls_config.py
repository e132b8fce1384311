"""TLS settings are checked at load: files exist and parse, key and certificate match, the
password decrypts; `check-config` and `run` exit 2 naming the key, never a traceback, and
never print a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from faultline.agent.settings import ConfigError, load_settings
from tests.harness import run_cli
from tests.pki import KEY_PASSWORD, Pki, make_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _problem(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"FAULTLINE__MQTT__TLS": "true", **env})
    return str(caught.value)


def test_a_complete_mutual_tls_config_loads(pki: Pki) -> None:
    settings = load_settings(
        None,
        env={
            "FAULTLINE__MQTT__TLS": "true",
            "FAULTLINE__MQTT__CA_CERTS": str(pki.ca),
            "FAULTLINE__MQTT__CERTFILE": str(pki.client_cert),
            "FAULTLINE__MQTT__KEYFILE": str(pki.client_key_encrypted),
            "FAULTLINE__MQTT__KEYFILE_PASSWORD": KEY_PASSWORD,
            "FAULTLINE__MQTT__TLS_VERSION": "1.3",
            "FAULTLINE__MQTT__SERVER_FINGERPRINT_SHA256": ":".join(
                pki.server_fingerprint[i : i + 2].upper() for i in range(0, 64, 2)
            ),
        },
    )
    params = settings.mqtt.tls_parameters()
    assert params is not None
    assert params.fingerprint_sha256 == pki.server_fingerprint  # colons and case folded
    assert (params.min_version, params.insecure) == ("1.3", False)
    assert KEY_PASSWORD not in repr(settings)
    assert KEY_PASSWORD not in repr(params)


@pytest.mark.parametrize(
    ("env", "key", "words"),
    [
        ({"FAULTLINE__MQTT__CA_CERTS": "/nonexistent/ca.pem"}, "mqtt.ca_certs", "no such file"),
        ({"FAULTLINE__MQTT__CA_CERTS": "{client_key}"}, "mqtt.ca_certs", "CA certificates"),
        ({"FAULTLINE__MQTT__CERTFILE": "{dir}"}, "mqtt.certfile", "not a regular file"),
        (
            {"FAULTLINE__MQTT__CERTFILE": "{client_key}", "FAULTLINE__MQTT__KEYFILE": "{ca}"},
            "mqtt.certfile",
            "no certificate parses",
        ),
        (
            {"FAULTLINE__MQTT__CERTFILE": "{client_cert}"},
            "mqtt.keyfile",
            "holds none",
        ),
        (
            {
                "FAULTLINE__MQTT__CERTFILE": "{client_cert}",
                "FAULTLINE__MQTT__KEYFILE": "{rogue_key}",
            },
            "mqtt.keyfile",
            "belongs to another",
        ),
        (
            {
                "FAULTLINE__MQTT__CERTFILE": "{client_cert}",
                "FAULTLINE__MQTT__KEYFILE": "{client_key_encrypted}",
            },
            "mqtt.keyfile_password",
            "password of the encrypted key",
        ),
        (
            {
                "FAULTLINE__MQTT__CERTFILE": "{client_cert}",
                "FAULTLINE__MQTT__KEYFILE": "{client_key_encrypted}",
                "FAULTLINE__MQTT__KEYFILE_PASSWORD": "wrong-" + KEY_PASSWORD,
            },
            "mqtt.keyfile_password",
            "does not",
        ),
        ({"FAULTLINE__MQTT__KEYFILE": "{client_key}"}, "mqtt.certfile", "client certificate"),
        (
            {"FAULTLINE__MQTT__SERVER_FINGERPRINT_SHA256": "abc"},
            "mqtt.server_fingerprint_sha256",
            "64 hex digits",
        ),
        ({"FAULTLINE__MQTT__TLS_VERSION": "1.1"}, "mqtt.tls_version", "'1.2', '1.3'"),
    ],
)
def test_bad_tls_material_names_the_key(
    pki: Pki, env: dict[str, str], key: str, words: str
) -> None:
    paths = {name: str(getattr(pki, name)) for name in Pki.__dataclass_fields__}
    paths["dir"] = str(pki.ca.parent)
    text = _problem({k: v.format(**paths) for k, v in env.items()})
    assert f"{key}:" in text, text
    assert words in text, text
    assert KEY_PASSWORD not in text


def test_tls_keys_without_tls_are_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, env={"FAULTLINE__MQTT__CERTFILE": str(pki.client_cert)})
    assert "mqtt.tls: expected true when mqtt.certfile is set" in str(caught.value)


def test_check_config_and_run_exit_2_naming_the_missing_file(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(
        "mqtt:\n"
        "  tls: true\n"
        "  ca_certs: /nonexistent/plant-ca.pem\n"
        f"  certfile: {pki.client_cert}\n"
        f"  keyfile: {pki.client_key_encrypted}\n"
        f"  keyfile_password: {KEY_PASSWORD}\n",
        encoding="utf-8",
    )
    checked = run_cli("check-config", str(config))
    assert checked.returncode == 2, checked.stderr
    assert "mqtt.ca_certs: expected a readable PEM file of CA certificates (no such file)" in (
        checked.stderr
    )
    assert "plant.yaml line 3" in checked.stderr
    ran = run_cli("run", "--config", str(config))
    assert ran.returncode == 2, ran.stderr
    assert "mqtt.ca_certs" in ran.stderr
    assert "Traceback" not in ran.stderr
    for out in (checked.stdout, checked.stderr, ran.stdout, ran.stderr):
        assert KEY_PASSWORD not in out


def test_check_config_reports_the_tls_setup(tmp_path: Path, pki: Pki) -> None:
    config = tmp_path / "plant.yaml"
    config.write_text(
        f"mqtt:\n  tls: true\n  port: 8883\n  ca_certs: {pki.ca}\n"
        f"  certfile: {pki.client_cert}\n  keyfile: {pki.client_key}\n",
        encoding="utf-8",
    )
    checked = run_cli("check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "mqtts://127.0.0.1:8883" in checked.stdout
    assert "client certificate" in checked.stdout
