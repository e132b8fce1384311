"""Config model: defaults, YAML/env layering, and error messages a person can act on."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from faultline.agent.settings import (
    AssetSettings,
    ConfigError,
    GeometrySettings,
    Settings,
    check_config,
    default_yaml_text,
    load_settings,
)
from faultline.encoders.geometry import bearing_preset


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_error(path: Path | None, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env={} if env is None else env)
    return info.value


def model_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """The model's declared defaults, before any validator touches them."""
    out: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        factory = info.default_factory
        if isinstance(factory, type) and issubclass(factory, BaseModel):
            out[name] = model_defaults(factory)
        else:
            default = info.get_default(call_default_factory=True)
            if isinstance(default, dict):  # e.g. outbox.classes: name -> a small model
                default = {
                    k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in default.items()
                }
            out[name] = default
    return out


def test_defaults_load_without_any_file() -> None:
    settings = load_settings(None, env={})
    assert settings == Settings()
    assert (settings.mqtt.port, settings.mqtt.protocol, settings.mqtt.qos) == (1883, "5", 1)
    assert settings.mqtt.clean_start is False
    assert settings.topics.window_filters == ["{prefix}/sensors/+/window"]


def test_default_yaml_mirrors_every_model_default() -> None:
    raw = yaml.safe_load(default_yaml_text())
    expected = model_defaults(Settings)
    assert raw.keys() == expected.keys()
    for section, value in expected.items():
        if isinstance(value, dict) and value:
            assert raw[section].keys() == value.keys(), section
            for key, default in value.items():
                assert raw[section][key] == default, f"{section}.{key}"
                assert (
                    type(raw[section][key]) is type(default)
                    or default is None
                    or (isinstance(default, float) and isinstance(raw[section][key], int))
                ), f"{section}.{key}"
        else:
            assert raw[section] == value, section


def test_user_file_overrides_defaults_and_is_found_through_faultline_config(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "mqtt:\n  host: broker.plant\n  protocol: 3.1.1\n"
        "assets:\n  pump_1: {rpm: 1750, bearing: '6205'}\n",
    )
    other = write(tmp_path, "mqtt:\n  host: other\n", "other.yaml")
    via_env = load_settings(None, env={"FAULTLINE_CONFIG": str(path)})
    assert (via_env.mqtt.host, via_env.mqtt.protocol) == ("broker.plant", "3.1.1")
    assert via_env.mqtt.port == 1883  # untouched keys keep the defaults
    assert via_env.assets["pump_1"].rpm == 1750.0
    assert load_settings(other, env={"FAULTLINE_CONFIG": str(path)}).mqtt.host == "other"


def test_empty_file_gives_defaults_and_missing_file_is_an_error(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "# nothing yet\n"), env={}) == Settings()
    err = load_error(tmp_path / "absent.yaml")
    assert "absent.yaml: config file not found" in str(err)


def test_unknown_key_names_key_allowed_keys_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  host: a\n  prot: 1884\n")
    err = load_error(path)
    assert len(err.problems) == 1
    text = str(err)
    assert "mqtt.prot: unknown key; allowed keys here: host, port, protocol" in text
    assert "value 1884" in text
    assert f"{path} line 3" in text


def test_bad_port_names_key_expected_form_value_and_line(tmp_path: Path) -> None:
    path = write(
        tmp_path, "# gateway config\n\nlog_level: INFO\n\nmqtt:\n  host: a\n  port: 70000\n"
    )
    err = load_error(path)
    (problem,) = err.problems
    assert (problem.path, problem.given, problem.source) == ("mqtt.port", "70000", f"{path} line 7")
    assert problem.expected == "an integer between 1 and 65535"
    assert str(problem) == (
        f"mqtt.port: expected an integer between 1 and 65535, got 70000 ({path} line 7)"
    )


def test_every_problem_is_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path, "mqtt:\n  port: http\n  qos: 3\nlimits:\n  min_fs: -1\nlog_level: verbose\n"
    )
    err = load_error(path)
    paths = [p.path for p in err.problems]
    assert paths == ["mqtt.port", "mqtt.qos", "limits.min_fs", "log_level"]
    assert "expected one of 0, 1, 2, got 3" in str(err)
    assert "got 'verbose'" in str(err)  # shown as written, not as normalised
    assert [p.source for p in err.problems] == [f"{path} line {n}" for n in (2, 3, 5, 6)]


def test_env_overrides_parse_types_and_create_assets(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: 1999\n  protocol: 3.1.1\n")
    env = {
        "FAULTLINE__MQTT__PORT": "1884",
        "FAULTLINE__MQTT__TLS": "true",
        "FAULTLINE__MQTT__PROTOCOL": "5",
        "FAULTLINE__MQTT__PASSWORD": "0123",  # text keys are not YAML-parsed (not octal 83)
        "FAULTLINE__MQTT__USERNAME": "1234",
        "FAULTLINE__TOPICS__WINDOW_FILTERS": "[a/+/w, b/+/w]",
        "FAULTLINE__TOPICS__SPECTRUM_FILTERS": "{prefix}/spec/+",
        "FAULTLINE__ASSETS__PUMP_1__RPM": "1750",
        "faultline__assets__fan__bearing": "6203",
        "FAULTLINE_CWRU_DIR": "/not/config",  # single underscore: not an override
    }
    settings = load_settings(path, env=env)
    mqtt = settings.mqtt
    assert (mqtt.port, mqtt.tls, mqtt.protocol, mqtt.username) == (1884, True, "5", "1234")
    assert mqtt.password is not None
    assert mqtt.password.get_secret_value() == "0123"
    assert settings.topics.window_filters == ["a/+/w", "b/+/w"]
    assert settings.topics.spectrum_filters == ["{prefix}/spec/+"]
    assert settings.assets == {
        "pump_1": AssetSettings(rpm=1750.0),
        "fan": AssetSettings(bearing="6203"),
    }


def test_env_refines_an_asset_from_yaml_case_insensitively(tmp_path: Path) -> None:
    path = write(tmp_path, "assets:\n  Pump_1:\n    rpm: 1500\n")
    env = {"FAULTLINE__ASSETS__PUMP_1__BEARING": "6205", "FAULTLINE__ASSETS": "{fan: {}}"}
    assets = load_settings(path, env=env).assets
    assert assets == {"Pump_1": AssetSettings(rpm=1500.0, bearing="6205"), "fan": AssetSettings()}


def test_env_error_names_the_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: 1999\n")
    env = {"FAULTLINE__MQTT__PORT": "abc", "FAULTLINE__MQTT__PROTT": "5"}
    err = load_error(path, env)
    text = str(err)
    assert (
        "mqtt.port: expected an integer between 1 and 65535, got 'abc' "
        "(environment variable FAULTLINE__MQTT__PORT)"
    ) in text
    assert "mqtt.prott: unknown key; allowed keys here: host, port" in text
    assert "environment variable FAULTLINE__MQTT__PROTT" in text


def test_unknown_bearing_preset_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "assets:\n  pump_1:\n    rpm: 1750\n    bearing: '6999'\n")
    (problem,) = load_error(path).problems
    assert problem.path == "assets.pump_1.bearing"
    assert problem.expected == "a known bearing preset: 6203, 6205, UC204"
    assert (problem.given, problem.source) == ("'6999'", f"{path} line 4")


@pytest.mark.parametrize("bad", ["faultline/sensors/x/window", "a/+/+", "a/+/#", "a/x+/b"])
def test_filter_needs_exactly_one_plus_level_and_no_hash(tmp_path: Path, bad: str) -> None:
    path = write(tmp_path, f"topics:\n  window_filters:\n    - ok/+/w\n    - '{bad}'\n")
    (problem,) = load_error(path).problems
    assert problem.path == "topics.window_filters[1]"
    assert "exactly one '+'" in problem.expected
    assert problem.source == f"{path} line 4"


def test_yaml_syntax_error_gives_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  host: a\n port: 1883\n")
    (problem,) = load_error(path).problems
    assert problem.source == f"{path} line 3"
    assert str(problem).startswith(f"{path} line 3: invalid YAML")


def test_duplicate_key_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  port: 1\nlog_level: INFO\nmqtt:\n  host: b\n")
    (problem,) = load_error(path).problems
    assert problem.path == "mqtt"
    assert "duplicate key (first on line 1" in problem.expected
    assert problem.source == f"{path} line 4"


def test_reconnect_min_above_max_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  reconnect_min_s: 60\n  reconnect_max_s: 10\n")
    (problem,) = load_error(path).problems
    assert problem.path == "mqtt.reconnect_max_s"
    assert problem.expected == "a value >= reconnect_min_s (60.0)"
    assert problem.source == f"{path} line 3"


@pytest.mark.parametrize(
    ("written", "protocol"), [("5", "5"), ("5.0", "5"), ("'5'", "5"), ("3.1.1", "3.1.1")]
)
def test_protocol_accepts_its_natural_yaml_spellings(
    tmp_path: Path, written: str, protocol: str
) -> None:
    path = write(tmp_path, f"mqtt:\n  protocol: {written}\n")
    assert load_settings(path, env={}).mqtt.protocol == protocol


def test_protocol_rejects_other_versions(tmp_path: Path) -> None:
    (problem,) = load_error(write(tmp_path, "mqtt:\n  protocol: 4\n")).problems
    assert problem.expected == "one of '5', '3.1.1'"


def test_check_config_summarises_or_lists_problems(tmp_path: Path) -> None:
    good = write(
        tmp_path,
        "mqtt: {host: broker.plant, port: 8883, tls: true}\n"
        "topics: {prefix: plant7}\nassets: {p1: {rpm: 1500}, p2: {}}\n",
    )
    checked = check_config(good, env={"BALENA_DEVICE_UUID": "0123456789abcdef"})
    assert checked.ok
    text = checked.text
    assert "mqtts://broker.plant:8883 (MQTT 5, client id faultline-0123456789ab" in text
    assert "plant7/sensors/+/window, plant7/sensors/+/spectrum" in text
    assert "assets:  2 (p1, p2)" in text
    checked = check_config(write(tmp_path, "mqtt:\n  port: 0\n", "bad.yaml"), env={})
    assert not checked.ok
    text = checked.text
    assert "(1 problem)" in text
    assert "mqtt.port" in text
    assert "bad.yaml line 2" in text


def test_resolved_client_id_is_stable_and_explicit_wins() -> None:
    settings = Settings()
    assert settings.resolved_client_id({"BALENA_DEVICE_UUID": "abcdef0123456789"}) == (
        "faultline-abcdef012345"
    )
    from_host = settings.resolved_client_id({})
    assert re.fullmatch(r"faultline-[A-Za-z0-9_-]+", from_host)
    assert len(from_host) <= 64
    assert from_host == settings.resolved_client_id({})
    explicit = Settings.model_validate({"mqtt": {"client_id": "line3-gw"}})
    assert explicit.resolved_client_id({"BALENA_DEVICE_UUID": "x"}) == "line3-gw"


def test_data_dir_and_library_path_resolution(tmp_path: Path) -> None:
    xdg = {"XDG_DATA_HOME": str(tmp_path)}
    assert Settings().resolved_data_dir(xdg) == tmp_path / "faultline"
    assert Settings().resolved_data_dir({}) == Path.home() / ".local/share/faultline"
    assert Settings().resolved_library_path(xdg) == tmp_path / "faultline" / "library"
    chosen = Settings.model_validate({"data_dir": "/data", "library": {"path": "/lib"}})
    assert (chosen.resolved_data_dir(xdg), chosen.resolved_library_path(xdg)) == (
        Path("/data"),
        Path("/lib"),
    )


def test_bearing_geometry_prefers_explicit_numbers_over_preset() -> None:
    geometry = GeometrySettings(n_balls=8, ball_diameter=0.25, pitch_diameter=1.1)
    explicit = AssetSettings(bearing="6205", geometry=geometry).bearing_geometry()
    assert explicit is not None
    assert (explicit.n_balls, explicit.pitch_diameter) == (8, 1.1)
    assert AssetSettings(bearing="SKF 6205").bearing_geometry() == bearing_preset("6205")
    assert AssetSettings().bearing_geometry() is None


def test_geometry_needs_pitch_larger_than_ball(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "assets:\n  fan:\n    geometry:\n      n_balls: 8\n"
        "      ball_diameter: 2\n      pitch_diameter: 1\n",
    )
    (problem,) = load_error(path).problems
    assert problem.path == "assets.fan.geometry.pitch_diameter"
    assert problem.source == f"{path} line 6"


def test_secret_values_are_never_echoed(tmp_path: Path) -> None:
    path = write(tmp_path, "mqtt:\n  password: [hunter2]\n")
    text = str(load_error(path))
    assert "mqtt.password" in text
    assert "hunter2" not in text


def test_decision_switches_reach_the_policy_from_yaml_and_device_variables(
    tmp_path: Path,
) -> None:
    """The absence rule and the quality gate are config keys (balena device variables
    reach them as FAULTLINE__VERDICT__*); both on by default."""
    from faultline.agent.app import policy_from_settings

    default = policy_from_settings(load_settings(None, env={}))
    assert default.absence
    assert default.quality_gate
    path = write(tmp_path, "verdict:\n  absence: false\n")
    env = {"FAULTLINE__VERDICT__QUALITY_GATE": "false"}
    policy = policy_from_settings(load_settings(path, env=env))
    assert not policy.absence
    assert not policy.quality_gate
    with pytest.raises(ConfigError) as err:
        load_settings(None, env={"FAULTLINE__VERDICT__ABSENCE": "sometimes"})
    (problem,) = err.value.problems
    assert problem.path == "verdict.absence"
    assert problem.source == "environment variable FAULTLINE__VERDICT__ABSENCE"
