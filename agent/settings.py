"""The one configuration model of the agent, and the loader that fills it.

Every key has a default, bounds and a description, and unknown keys are rejected, so a
typo on a gateway fails loudly at start-up instead of silently running on a default.
Values come, in rising precedence, from the model defaults, the packaged
``config/default.yaml`` (which mirrors them; a test keeps the two equal), a user YAML file
(argument or ``FAULTLINE_CONFIG``) and ``FAULTLINE__SECTION__KEY`` environment variables,
which is how balena device variables reach the agent.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    field_validator,
    model_validator,
)

from faultline.agent.settings_errors import ConfigError, ConfigProblem, KeyedValueError
from faultline.agent.settings_sources import CONFIG_ENV, load_layered
from faultline.agent.transport.tls import TlsMaterialError, TlsParameters, check_tls_material
from faultline.encoders.geometry import BEARING_PRESETS, BearingGeometry, bearing_preset
from faultline.fault_library.signing import SignatureError, SigningKey, Trust, load_public_key

__all__ = [
    "CONFIG_ENV",
    "AssetSettings",
    "ConfigCheck",
    "ConfigError",
    "ConfigProblem",
    "EncoderSettings",
    "GeometrySettings",
    "HealthSettings",
    "LibrarySettings",
    "LimitSettings",
    "MqttSettings",
    "PipelineSettings",
    "Settings",
    "TopicSettings",
    "VerdictSettings",
    "check_config",
    "default_yaml_text",
    "load_settings",
]

_CLIENT_ID_MAX = 64


class _Section(BaseModel):
    # Numbers coerce to text so `username: 1234` works; NaN/inf never make sense here.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, coerce_numbers_to_str=True)


def _ordered(section: BaseModel, low: str, high: str) -> None:
    lo, hi = getattr(section, low), getattr(section, high)
    if hi < lo:
        raise KeyedValueError((high,), f"a value >= {low} ({lo})", hi)


class MqttSettings(_Section):
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        max_length=253,
        description="Broker host name or IP address.",
    )
    port: int = Field(default=1883, ge=1, le=65535, description="Broker TCP port.")
    protocol: Literal["5", "3.1.1"] = Field(default="5", description="MQTT protocol version.")
    client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="Explicit client id; unset: one per gateway.",
    )
    username: str | None = Field(default=None, max_length=1024, description="Broker user.")
    password: SecretStr | None = Field(default=None, description="Broker password (not logged).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="Keep-alive interval, s.")
    session_expiry_s: int = Field(
        default=3600,
        ge=0,
        le=4_294_967_295,
        description="How long the broker keeps our session (and "
        "queues QoS>0 messages) while we are away, s.",
    )
    clean_start: bool = Field(default=False, description="Discard the old session at connect.")
    qos: Literal[0, 1, 2] = Field(default=1, description="QoS of subscriptions and alerts.")
    reconnect_min_s: float = Field(
        default=0.5, gt=0, le=3600, description="First reconnect delay; doubles with jitter."
    )
    reconnect_max_s: float = Field(
        default=2.0,
        gt=0,
        le=86400,
        description="Largest reconnect delay; >= reconnect_min_s. Small, so the agent is back "
        "within seconds of its broker (full jitter still spreads a fleet's returns).",
    )
    max_inflight: int = Field(default=20, ge=1, le=65535, description="QoS>0 messages in flight.")
    max_queued_messages: int = Field(
        default=10000,
        ge=0,
        le=10_000_000,
        description="Outgoing messages paho keeps in memory while offline (0: unbounded).",
    )
    tls: bool = Field(default=False, description="Connect with TLS.")
    ca_certs: Path | None = Field(default=None, description="CA bundle for TLS; unset: system.")
    certfile: Path | None = Field(
        default=None,
        description="Client certificate (PEM) for mutual TLS; may hold the key too.",
    )
    keyfile: Path | None = Field(default=None, description="Private key of certfile (PEM).")
    keyfile_password: SecretStr | None = Field(
        default=None, description="Password of an encrypted keyfile (not logged)."
    )
    tls_version: Literal["1.2", "1.3"] = Field(
        default="1.2", description="Lowest TLS version accepted."
    )
    tls_insecure: bool = Field(
        default=False,
        description="Skip checking that the broker's certificate names mqtt.host (the chain "
        "is still verified). For test rigs only.",
    )
    server_fingerprint_sha256: str | None = Field(
        default=None,
        description="Pin the broker's certificate: its sha256 fingerprint (64 hex digits, "
        "colons allowed); any other certificate is refused before the login is sent.",
    )

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_text(cls, value: Any) -> Any:
        # YAML and env give `5` as an int and `5.0` as a float; both mean MQTT 5.
        numeric = isinstance(value, int | float | str) and not isinstance(value, bool)
        if numeric and str(value).strip() in ("5", "5.0"):
            return "5"
        return value

    @field_validator("tls_version", mode="before")
    @classmethod
    def _version_text(cls, value: Any) -> Any:
        # YAML and env read an unquoted 1.2 as a float.
        if isinstance(value, float) and str(value) in ("1.2", "1.3"):
            return str(value)
        return value

    @field_validator("server_fingerprint_sha256")
    @classmethod
    def _fingerprint_form(cls, value: str | None) -> str | None:
        if value is None:
            return None
        digits = value.replace(":", "").strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", digits):
            raise ValueError("a sha256 fingerprint: 64 hex digits, colons allowed")
        return digits

    @model_validator(mode="after")
    def _backoff_order(self) -> MqttSettings:
        _ordered(self, "reconnect_min_s", "reconnect_max_s")
        return self

    @model_validator(mode="after")
    def _tls_material(self) -> MqttSettings:
        """TLS keys only with tls on; every file opened as the connection will open it."""
        tls_only = (
            *("ca_certs", "certfile", "keyfile", "keyfile_password"),
            *("server_fingerprint_sha256", "tls_insecure"),
        )
        used = [k for k in tls_only if getattr(self, k) not in (None, False)]
        if used and not self.tls:
            raise KeyedValueError(("tls",), f"true when mqtt.{used[0]} is set", False)
        for key in ("keyfile", "keyfile_password"):
            if getattr(self, key) is not None and self.certfile is None:
                raise KeyedValueError(
                    ("certfile",), f"a client certificate when mqtt.{key} is set", None
                )
        params = self.tls_parameters()
        if params is not None:
            try:
                check_tls_material(params)
            except TlsMaterialError as exc:
                raise KeyedValueError((exc.key,), str(exc), exc.value) from None
        return self

    def tls_parameters(self) -> TlsParameters | None:
        """The transport's TLS option group; None for plain MQTT."""
        if not self.tls:
            return None

        def text(path: Path | None) -> str | None:
            return str(path.expanduser()) if path is not None else None

        password = self.keyfile_password
        return TlsParameters(
            ca_certs=text(self.ca_certs),
            certfile=text(self.certfile),
            keyfile=text(self.keyfile),
            keyfile_password=password.get_secret_value() if password is not None else None,
            min_version=self.tls_version,
            insecure=self.tls_insecure,
            fingerprint_sha256=self.server_fingerprint_sha256,
        )


_FILTER_FORM = "a topic filter with exactly one '+' level (the asset id), no '#' and no leading '$'"


def _check_filter(value: str) -> str:
    levels = value.split("/")
    if (
        levels.count("+") != 1
        or any("+" in lv and lv != "+" for lv in levels)
        or "#" in value
        or value.startswith("$")
    ):
        raise ValueError(_FILTER_FORM)
    return value


Filter = Annotated[
    str, StringConstraints(min_length=1, max_length=512), AfterValidator(_check_filter)
]


class TopicSettings(_Section):
    prefix: str = Field(
        default="faultline",
        min_length=1,
        max_length=200,
        description="Root of every topic the agent publishes; '{prefix}' in "
        "a filter expands to it.",
    )
    window_filters: list[Filter] = Field(
        default=["{prefix}/sensors/+/window"],
        max_length=32,
        description="Raw window inputs; '+' is the asset id.",
    )
    spectrum_filters: list[Filter] = Field(
        default=["{prefix}/sensors/+/spectrum"],
        max_length=32,
        description="Spectrum inputs; '+' is the asset id.",
    )
    shared_group: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="Subscribe as $share/<group>/<filter> so N gateways split the load.",
    )

    @field_validator("prefix")
    @classmethod
    def _prefix_form(cls, value: str) -> str:
        if "+" in value or "#" in value or value.startswith(("$", "/")) or value.endswith("/"):
            raise ValueError(
                "a topic prefix without '+', '#', a leading '$' or a leading or trailing '/'"
            )
        return value

    @field_validator("shared_group")
    @classmethod
    def _group_form(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in "/+#"):
            raise ValueError("a share group name without '/', '+' or '#'")
        return value

    @field_validator("window_filters", "spectrum_filters", mode="before")
    @classmethod
    def _one_filter(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _some_input(self) -> TopicSettings:
        if not self.window_filters and not self.spectrum_filters:
            raise KeyedValueError(("window_filters",), "at least one window or spectrum filter", [])
        return self


class LimitSettings(_Section):
    max_payload_bytes: int = Field(
        default=2_097_152,
        ge=256,
        le=16_777_216,
        description="Larger MQTT payloads are rejected unread.",
    )
    min_samples: int = Field(
        default=1024, ge=64, le=4_194_304, description="Fewest samples a window may carry."
    )
    max_samples: int = Field(
        default=480_000,
        ge=64,
        le=4_194_304,
        description="Most samples a window may carry; >= min_samples.",
    )
    memory_mb: float = Field(
        default=768.0,
        gt=0,
        le=1_048_576,
        description=(
            "The agent refuses to start when its configuration allows more resident "
            "memory than this, MB (worst case: docs/ARCHITECTURE.md, Memory)."
        ),
    )
    min_fs: float = Field(default=1000.0, gt=0, le=10_000_000, description="Lowest rate, Hz.")
    max_fs: float = Field(
        default=200_000.0, gt=0, le=10_000_000, description="Highest sampling rate, Hz; >= min_fs."
    )
    min_rpm: float = Field(default=30.0, gt=0, le=1_000_000, description="Lowest shaft speed.")
    max_rpm: float = Field(
        default=60_000.0,
        gt=0,
        le=1_000_000,
        description="Highest plausible shaft speed, rpm; >= min_rpm.",
    )
    max_spectrum_bins: int = Field(
        default=262_145,
        ge=16,
        le=4_194_305,
        description="Most magnitude bins a spectrum may carry.",
    )
    errors_per_s: float = Field(
        default=5.0,
        gt=0,
        le=10_000,
        description=(
            "Rejections one source (asset, else topic) may publish per second; beyond it "
            "they are counted and summarised."
        ),
    )
    error_burst: int = Field(
        default=20, ge=1, le=100_000, description="Rejections one source may publish at once."
    )
    error_summary_s: float = Field(
        default=10.0,
        gt=0,
        le=3600,
        description="How often a source's summarised rejections are published, s.",
    )

    @model_validator(mode="after")
    def _ranges(self) -> LimitSettings:
        _ordered(self, "min_samples", "max_samples")
        _ordered(self, "min_fs", "max_fs")
        _ordered(self, "min_rpm", "max_rpm")
        return self


class PipelineSettings(_Section):
    queue_size: int = Field(
        default=256,
        ge=1,
        le=100_000,
        description="Windows waiting for a worker; when full, intake waits for room.",
    )
    queue_max_mb: float = Field(
        default=64.0,
        gt=0,
        le=65_536,
        description=(
            "Sample bytes the queue may hold, MB (one window is always admitted); with "
            "queue_size, bounds the queue's memory."
        ),
    )
    batch_max: int = Field(default=32, ge=1, le=1024, description="Most windows per batch.")
    batch_max_mb: float = Field(
        default=8.0,
        gt=0,
        le=4096,
        description=(
            "Most sample bytes per batch, MB (one window at least): a batch's diagnosis "
            "allocates about ten times its samples."
        ),
    )
    batch_wait_ms: float = Field(
        default=0.0,
        ge=0,
        le=1000,
        description=(
            "While a burst is arriving, how long a worker waits for each further window of "
            "its batch, ms; 0: take what is queued. A lone window never waits."
        ),
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=8,
        description=(
            "Worker threads per process. One keeps each asset's alerts in window order; "
            "the hot path holds the GIL, so use processes to use more cores."
        ),
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Agent processes on this gateway, sharing the sensor stream through one MQTT "
            "shared subscription (topics.shared_group, default: the client id)."
        ),
    )
    library_threads: int = Field(
        default=1,
        ge=1,
        le=64,
        description=(
            "Threads FAISS (OpenMP) and BLAS may use per process; 1 leaves the cores to "
            "processes and to the broker instead of spinning thread pools."
        ),
    )
    drain_timeout_s: float = Field(
        default=10.0, ge=0, le=600, description="Time allowed at stop to finish in-flight windows."
    )
    top_k: int = Field(default=10, ge=1, le=100, description="Neighbours retrieved per window.")


class EncoderSettings(_Section):
    target_fs: float = Field(
        default=12_000.0,
        ge=1000,
        le=200_000,
        description="Rate windows are resampled to before encoding, Hz.",
    )
    window_s: float = Field(default=1.0, ge=0.1, le=10, description="Encoder window length, s.")


class LibrarySettings(_Section):
    path: Path | None = Field(default=None, description="Library; unset: <data_dir>/library.")
    rebuild: bool = Field(default=False, description="Rebuild the library at start-up.")
    shards: list[str] | None = Field(
        default=None,
        description="Shard names this gateway serves (e.g. [shard-00, shard-01]); null: all.",
    )
    watch_interval_s: float = Field(
        default=5.0,
        ge=0,
        le=3600,
        description="How often to check for a newly published version (0: only on command).",
    )
    trusted_keys: list[Path] = Field(
        default=[],
        max_length=16,
        description="Ed25519 public keys (PEM) whose signatures on library versions and "
        "model manifests are accepted; several during a key rotation.",
    )
    require_signature: bool = Field(
        default=False,
        description="Serve only library versions signed by a trusted key (unsigned or "
        "wrongly signed versions are refused and reported; the old one keeps serving).",
    )
    require_signed_models: bool = Field(
        default=False,
        description="Start only if every model manifest in faultline.models has a "
        "<manifest>.sig by a trusted key.",
    )
    signing_key: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that `library build`, `add` and `reshard` "
        "sign new versions with; for the machine that builds libraries, not gateways.",
    )

    @field_validator("trusted_keys", mode="before")
    @classmethod
    def _one_key(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @model_validator(mode="after")
    def _keys_usable(self) -> LibrarySettings:
        for i, path in enumerate(self.trusted_keys):
            try:
                load_public_key(path.expanduser())
            except SignatureError as exc:
                reason = str(exc).removeprefix(f"{path.expanduser()}: ")
                raise KeyedValueError(
                    ("trusted_keys", i), f"an ed25519 public key file ({reason})", str(path)
                ) from None
        needs_keys = self.require_signature or self.require_signed_models
        if needs_keys and not self.trusted_keys:
            what = "require_signature" if self.require_signature else "require_signed_models"
            raise KeyedValueError(
                ("trusted_keys",), f"at least one public key file when library.{what} is true", []
            )
        if self.signing_key is not None:
            try:
                SigningKey.load(self.signing_key.expanduser())
            except SignatureError as exc:
                reason = str(exc).removeprefix(f"{self.signing_key.expanduser()}: ")
                raise KeyedValueError(
                    ("signing_key",),
                    f"an ed25519 private key file ({reason})",
                    str(self.signing_key),
                ) from None
        return self

    def trust(self, *, require: bool | None = None) -> Trust | None:
        """The keys this gateway trusts (None: nothing configured, nothing checked)."""
        required = self.require_signature if require is None else require
        if not self.trusted_keys and not required:
            return None
        return Trust.from_files([p.expanduser() for p in self.trusted_keys], require=required)

    def signer(self) -> SigningKey | None:
        return SigningKey.load(self.signing_key.expanduser()) if self.signing_key else None


OnFullPolicy = Literal["drop_oldest", "reject_new"]


class OutboxClassSettings(_Section):
    ttl_s: float = Field(
        gt=0, le=365 * 86400, description="How long a message may wait for the broker, s."
    )
    on_full: OnFullPolicy = Field(
        description="When the outbox is full: drop_oldest (evict the oldest waiting message) "
        "or reject_new (refuse this one)."
    )


def _default_classes() -> dict[str, OutboxClassSettings]:
    return {
        "alert": OutboxClassSettings(ttl_s=7 * 86400, on_full="drop_oldest"),
        "report": OutboxClassSettings(ttl_s=7 * 86400, on_full="drop_oldest"),
        "error": OutboxClassSettings(ttl_s=86400, on_full="drop_oldest"),
        "metric": OutboxClassSettings(ttl_s=3600, on_full="drop_oldest"),
        # An answer is worth something only while its asker waits.
        "answer": OutboxClassSettings(ttl_s=300, on_full="drop_oldest"),
    }


OUTBOX_CLASSES = ("alert", "report", "error", "metric", "answer")


class OutboxSettings(_Section):
    enabled: bool = Field(
        default=True,
        description="Write every outgoing message to disk before sending it (false: memory "
        "only, lost on restart).",
    )
    path: Path | None = Field(
        default=None, description="Outbox file; unset: <data_dir>/outbox.sqlite."
    )
    max_rows: int = Field(default=200_000, ge=1, le=100_000_000, description="Most messages held.")
    max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=4096, le=1 << 40, description="Most payload bytes held."
    )
    memory_max_rows: int = Field(
        default=10_000,
        ge=1,
        le=10_000_000,
        description="Messages held in memory while the disk cannot be written.",
    )
    replay_rate: float = Field(
        default=2000.0,
        ge=0,
        le=1_000_000,
        description="Backlog messages sent per second after an outage (0: unpaced; "
        "measured 4,481/s unpaced on 2 cores, so 2,000 leaves room for live traffic).",
    )
    window: int = Field(
        default=64, ge=1, le=10_000, description="Messages handed to MQTT and not yet acked."
    )
    commit_wait_ms: float = Field(
        default=2.0, ge=0, le=1000, description="Group commit: wait this long for company, ms."
    )
    synchronous: Literal["full", "normal"] = Field(
        default="full",
        description="SQLite synchronous: full survives power cuts; normal only process crashes.",
    )
    answered_retention_s: float = Field(
        default=7 * 86400,
        ge=0,
        le=365 * 86400,
        description="How long an answered window is remembered to answer a redelivery once, s.",
    )
    classes: dict[str, OutboxClassSettings] = Field(
        default_factory=_default_classes,
        description="Per message class (alert, report, error, metric, answer): ttl_s and on_full.",
    )

    @model_validator(mode="after")
    def _known_classes(self) -> OutboxSettings:
        unknown = sorted(set(self.classes) - set(OUTBOX_CLASSES))
        if unknown:
            raise KeyedValueError(
                ("classes", unknown[0]), f"one of {', '.join(OUTBOX_CLASSES)}", unknown[0]
            )
        self.classes = {**_default_classes(), **self.classes}
        return self


class VerdictSettings(_Section):
    min_similarity: float = Field(
        default=0.5, ge=-1, le=1, description="Below this best similarity: unknown (novel)."
    )
    min_confidence: float = Field(
        default=0.5, ge=0, le=1, description="Below this vote share: unknown (ambiguous)."
    )
    line_check: bool = Field(
        default=True,
        description="Cross-check verdicts with the bearing's BPFO/BPFI lines (see docs).",
    )
    line_shift_db: float = Field(
        default=0.0,
        ge=-10,
        le=10,
        description="Move every line threshold by this many dB (positive: stricter).",
    )
    absence: bool = Field(
        default=True,
        description="Call an unenrolled window with no defect line and no impulsiveness "
        "'normal' (judged by absence of damage, whatever retrieval said).",
    )
    quality_gate: bool = Field(
        default=True,
        description="Answer constant, clipped, tonal or dropped-out windows 'unknown' with "
        "the quality code, never a fault class.",
    )


class GeometrySettings(_Section):
    n_balls: int = Field(ge=3, le=100, description="Rolling elements.")
    ball_diameter: float = Field(gt=0, le=10_000, description="Ball diameter (unit of pitch).")
    pitch_diameter: float = Field(gt=0, le=100_000, description="Pitch diameter; > ball_diameter.")
    contact_angle_deg: float = Field(default=0.0, ge=0, lt=90, description="Contact angle, deg.")

    @model_validator(mode="after")
    def _ball_fits(self) -> GeometrySettings:
        if self.pitch_diameter <= self.ball_diameter:
            raise KeyedValueError(
                ("pitch_diameter",),
                f"a number greater than ball_diameter ({self.ball_diameter})",
                self.pitch_diameter,
            )
        return self


MachineClass = Literal[
    "group1_rigid", "group1_flexible", "group2_rigid", "group2_flexible", "class_I"
]
AccelUnit = Literal["g", "m/s2"]


class MetricsSettings(_Section):
    enabled: bool = Field(default=False, description="Serve Prometheus metrics over HTTP.")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the metrics endpoint listens on (0.0.0.0: every interface).",
    )
    port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="Port of /metrics; with N processes, process i serves port + i; 0: any.",
    )


class DashboardSettings(_Section):
    """The local web dashboard (agent/dashboard/): alerts, reports, spectra, status."""

    enabled: bool = Field(default=False, description="Serve the dashboard over HTTP.")
    host: str = Field(
        default="127.0.0.1",
        min_length=1,
        description="Address the dashboard listens on (0.0.0.0: every interface).",
    )
    port: int = Field(
        default=8765, ge=0, le=65535, description="Port of the page; 0: any free port."
    )
    assets: int = Field(
        default=32, ge=1, le=1024, description="Assets kept (least recently heard dropped)."
    )
    history: int = Field(
        default=200, ge=1, le=10000, description="Recent alerts, and reports, kept for the page."
    )
    spectra: bool = Field(
        default=True,
        description="Draw spectra: the dashboard subscribes to the sensor topics while a "
        "page asks for them (one more copy of each window from the broker).",
    )
    spectra_idle_s: float = Field(
        default=60.0, gt=0, le=3600, description="Unsubscribe from windows after this idle."
    )
    points: int = Field(
        default=2048, ge=64, le=16384, description="Points per spectrum sent to the page."
    )


class ReportSettings(_Section):
    """Diagnostic reports written on the gateway (agent/reports/)."""

    enabled: bool = Field(default=True, description="Publish reports on <prefix>/reports/<asset>.")
    llm: bool = Field(
        default=True, description="Let the local model write the prose (false: template only)."
    )
    model_path: Path | None = Field(
        default=None, description="A GGUF file; unset: the default of models/llm.json."
    )
    model_sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="Pin for model_path (64 hex digits); the default model is pinned already.",
    )
    threads: int = Field(default=1, ge=1, le=64, description="llama.cpp threads.")
    n_ctx: int = Field(default=1024, ge=256, le=32768, description="Context tokens.")
    max_tokens: int = Field(default=320, ge=32, le=4096, description="Tokens per report.")
    timeout_s: float = Field(default=30.0, gt=0, le=600, description="Wall-clock budget.")
    temperature: float = Field(default=0.2, ge=0, le=2, description="Sampling temperature.")
    seed: int = Field(default=7, ge=0, description="Sampling seed (reproducible reports).")
    min_interval_s: float = Field(
        default=600.0,
        ge=0,
        le=86400 * 7,
        description="A new report per asset when its verdict or severity changes, or after "
        "this long; never one per window.",
    )
    queue_size: int = Field(default=16, ge=1, le=10_000, description="Reports waiting.")


class SeveritySettings(_Section):
    """Defaults for assets that do not say (ISO zones: encoders/severity.py)."""

    machine_class: MachineClass = Field(
        default="group2_rigid",
        description="ISO zone table: group1_* (300 kW-50 MW), group2_* (15-300 kW), "
        "*_rigid or *_flexible support (ISO 20816-3 Annex A), class_I (up to 15 kW, "
        "ISO 10816-1 Annex B).",
    )
    accel_unit: AccelUnit = Field(default="g", description="Unit of the sensors' samples.")


class AssetSettings(_Section):
    rpm: float | None = Field(
        default=None, gt=0, le=1_000_000, description="Shaft speed when messages carry none."
    )
    bearing: str | None = Field(default=None, max_length=64, description="Bearing preset name.")
    geometry: GeometrySettings | None = Field(
        default=None, description="Bearing geometry; wins over bearing."
    )
    description: str = Field(default="", max_length=500, description="Free text for people.")
    machine_class: MachineClass | None = Field(
        default=None, description="ISO zone table for this asset; unset: severity.machine_class."
    )
    accel_unit: AccelUnit | None = Field(
        default=None, description="Unit of this asset's samples; unset: severity.accel_unit."
    )

    @field_validator("bearing")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                bearing_preset(value)
            except ValueError:
                known = ", ".join(sorted(BEARING_PRESETS))
                raise ValueError(f"a known bearing preset: {known}") from None
        return value

    def bearing_geometry(self) -> BearingGeometry | None:
        """The geometry to use for this asset: explicit numbers first, then the preset."""
        if self.geometry is not None:
            g = self.geometry
            return BearingGeometry(
                g.n_balls, g.ball_diameter, g.pitch_diameter, g.contact_angle_deg
            )
        return bearing_preset(self.bearing) if self.bearing is not None else None


AssetId = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$")
]


class HealthSettings(_Section):
    stuck_after_s: float = Field(
        default=60.0,
        ge=1,
        le=86400,
        description="Unhealthy when windows are queued and none finished for this long, s.",
    )
    offline_after_s: float = Field(
        default=60.0,
        ge=1,
        le=86400,
        description="Unhealthy when the broker has been unreachable this long, s.",
    )


class FleetSettings(_Section):
    enabled: bool = Field(
        default=False,
        description="Take part in fleet searches: serve the held shards' requests "
        "(<prefix>/shards/<shard>/search) and, with coordinate, scatter searches sent to "
        "<prefix>/fleet/search over every shard and merge them (MQTT 5 only).",
    )
    coordinate: bool = Field(
        default=True,
        description="Take fleet searches from <prefix>/fleet/search (false: hold shards and "
        "scatter only this gateway's own questions).",
    )
    group: str = Field(
        default="faultline-fleet",
        min_length=1,
        max_length=64,
        description="Share group of the fleet's search and shard topics ($share/<group>/...): "
        "one coordinator per search, one replica per shard request.",
    )
    deadline_s: float = Field(
        default=2.0,
        ge=0.05,
        le=60.0,
        description="How long a coordinator waits for the shard holders; then it answers "
        "naming the shards that did not reply.",
    )
    max_pending: int = Field(
        default=64, ge=1, le=10_000, description="Fleet searches waiting at once; more: busy."
    )
    max_queries: int = Field(
        default=32, ge=1, le=1024, description="Query vectors in one fleet search."
    )
    max_k: int = Field(default=100, ge=1, le=1000, description="Largest k a search may ask.")
    max_payload_bytes: int = Field(
        default=512 * 1024,
        ge=4096,
        le=16 * 2**20,
        description="Largest fleet search, shard request or shard reply, bytes.",
    )
    queue_size: int = Field(
        default=32, ge=1, le=10_000, description="Shard requests waiting for this holder."
    )

    @field_validator("group")
    @classmethod
    def _group_form(cls, value: str) -> str:
        if any(c in value for c in "/+#"):
            raise ValueError("a share group name without '/', '+' or '#'")
        return value


class Settings(_Section):
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="Broker connection.")
    topics: TopicSettings = Field(default_factory=TopicSettings, description="Topic names.")
    limits: LimitSettings = Field(default_factory=LimitSettings, description="Payload bounds.")
    pipeline: PipelineSettings = Field(
        default_factory=PipelineSettings, description="Queues, batching and workers."
    )
    encoder: EncoderSettings = Field(default_factory=EncoderSettings, description="Encoder.")
    library: LibrarySettings = Field(default_factory=LibrarySettings, description="Library.")
    verdict: VerdictSettings = Field(
        default_factory=VerdictSettings, description="When a verdict is unknown."
    )
    outbox: OutboxSettings = Field(
        default_factory=OutboxSettings, description="Store-and-forward of outgoing messages."
    )
    severity: SeveritySettings = Field(
        default_factory=SeveritySettings, description="How severity is judged by default."
    )
    metrics: MetricsSettings = Field(
        default_factory=MetricsSettings, description="Prometheus metrics endpoint."
    )
    dashboard: DashboardSettings = Field(
        default_factory=DashboardSettings, description="Local web dashboard."
    )
    reports: ReportSettings = Field(
        default_factory=ReportSettings, description="Diagnostic reports (local LLM)."
    )
    health: HealthSettings = Field(
        default_factory=HealthSettings, description="What `faultline health` calls unhealthy."
    )
    fleet: FleetSettings = Field(
        default_factory=FleetSettings, description="Library shards searched across gateways."
    )
    assets: dict[AssetId, AssetSettings] = Field(
        default={},
        max_length=100_000,
        description="Per-asset speed and bearing, keyed by the asset id in the topic.",
    )
    data_dir: Path | None = Field(
        default=None,
        description="State folder; unset: $XDG_DATA_HOME/faultline or ~/.local/share/faultline.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )

    @model_validator(mode="after")
    def _fleet_needs_mqtt5(self) -> Settings:
        if self.fleet.enabled and self.mqtt.protocol != "5":
            raise KeyedValueError(
                ("fleet", "enabled"),
                "false with mqtt.protocol 3.1.1 (fleet search is MQTT 5 request/response)",
                True,
            )
        return self

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        # Accept `info`, but report a wrong level exactly as written.
        if isinstance(value, str) and value.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"):
            return value.upper()
        return value

    def resolved_client_id(self, env: Mapping[str, str] | None = None) -> str:
        """Stable per gateway so the broker resumes our session after a restart."""
        if self.mqtt.client_id:
            return self.mqtt.client_id
        env = os.environ if env is None else env
        uuid = env.get("BALENA_DEVICE_UUID", "").strip()
        if uuid:
            base = uuid[:12]
        else:
            # Hostnames repeat across a fleet (every Pi is "raspberrypi"); the machine id
            # does not, and it survives reboots, so the broker still resumes our session.
            base = socket.gethostname()
            machine_id = _machine_id()
            if machine_id:
                base = f"{base[:40]}-{hashlib.sha256(machine_id.encode()).hexdigest()[:8]}"
        base = re.sub(r"[^A-Za-z0-9_-]", "-", base).strip("-") or "gateway"
        return f"faultline-{base}"[:_CLIENT_ID_MAX]

    def resolved_data_dir(self, env: Mapping[str, str] | None = None) -> Path:
        """Configured data_dir, else the XDG data home (absolute only, per the spec)."""
        if self.data_dir is not None:
            return self.data_dir.expanduser()
        xdg = (os.environ if env is None else env).get("XDG_DATA_HOME", "")
        root = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".local" / "share"
        return root / "faultline"

    def resolved_outbox_path(self, env: Mapping[str, str] | None = None) -> Path:
        if self.outbox.path is not None:
            return self.outbox.path.expanduser()
        return self.resolved_data_dir(env) / "outbox.sqlite"

    def resolved_library_path(self, env: Mapping[str, str] | None = None) -> Path:
        if self.library.path is not None:
            return self.library.path.expanduser()
        return self.resolved_data_dir(env) / "library"


def _machine_id() -> str | None:
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(candidate).read_text(encoding="ascii").strip()
        except OSError:
            continue
        if value:
            return value
    return None


def default_yaml_text() -> str:
    return (files("faultline.config") / "default.yaml").read_text(encoding="utf-8")


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load and validate; raises ConfigError listing every problem with its source."""
    return load_layered(Settings, default_yaml_text(), path, os.environ if env is None else env)[0]


@dataclass(frozen=True, slots=True)
class ConfigCheck:
    """What ``faultline check-config`` found: every problem, or what the agent would run
    with. One source for its text (people) and its JSON (scripts)."""

    path: str
    problems: tuple[ConfigProblem, ...] = ()
    summary: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def text(self) -> str:
        if not self.ok:
            count = len(self.problems)
            head = f"{self.path}: invalid configuration ({count} problem{'s' * (count != 1)})"
            return f"{head}:\n{ConfigError(self.problems)}"
        b, t, a = self.summary["broker"], self.summary["topics"], self.summary["assets"]
        share = f" (shared group {t['shared_group']})" if t["shared_group"] else ""
        names = f" ({', '.join(a['names'][:8])})" if a["names"] else ""
        return "\n".join(
            [
                f"{self.path}: configuration OK",
                f"  broker:  {b['url']} (MQTT {b['protocol']}, client id {b['client_id']}, "
                f"QoS {b['qos']})",
                *([f"  tls:     {b['tls']}"] if b["tls"] else []),
                f"  topics:  {', '.join(t['inputs'])}{share}",
                f"  assets:  {a['count']}{names}",
                f"  library: {self.summary['library']}",
                *([f"  fleet:   {self.summary['fleet']}"] if self.summary.get("fleet") else []),
                f"  environment overrides: {self.summary['environment_overrides']}",
            ]
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.path,
            "ok": self.ok,
            "problems": [
                {
                    "key": p.path,
                    "expected": p.expected if p.is_form else None,
                    "given": p.given or None,
                    "source": p.source or None,
                    "message": str(p),
                }
                for p in self.problems
            ],
            **self.summary,
        }


def check_config(path: str | Path, env: Mapping[str, str] | None = None) -> ConfigCheck:
    """Validate ``path`` (plus env overrides) for ``faultline check-config``."""
    env = os.environ if env is None else env
    try:
        s, n_env = load_layered(Settings, default_yaml_text(), path, env)
    except ConfigError as exc:
        return ConfigCheck(str(path), tuple(exc.problems))
    m, t = s.mqtt, s.topics
    filters = t.window_filters + t.spectrum_filters
    summary = {
        "broker": {
            "url": f"{'mqtts' if m.tls else 'mqtt'}://{m.host}:{m.port}",
            "protocol": m.protocol,
            "client_id": s.resolved_client_id(env),
            "qos": m.qos,
            "tls": _tls_summary(m) if m.tls else None,
        },
        "topics": {
            "inputs": [f.replace("{prefix}", t.prefix) for f in filters],
            "shared_group": t.shared_group or None,
        },
        "assets": {"count": len(s.assets), "names": sorted(s.assets)},
        "library": str(s.resolved_library_path(env)),
        "fleet": _fleet_summary(s) if s.fleet.enabled else None,
        "environment_overrides": n_env,
    }
    return ConfigCheck(str(path), summary=summary)


def _fleet_summary(s: Settings) -> str:
    f = s.fleet
    held = ", ".join(s.library.shards) if s.library.shards else "all"
    role = f"coordinates (deadline {f.deadline_s:g} s)" if f.coordinate else "holds only"
    return f"holds shards {held}, {role}, share group {f.group}"


def _tls_summary(m: MqttSettings) -> str:
    parts = [f"TLS {m.tls_version} or later", f"CA {m.ca_certs or 'system store'}"]
    if m.certfile is not None:
        parts.append(f"client certificate {m.certfile}")
    if m.server_fingerprint_sha256:
        parts.append(f"pinned {m.server_fingerprint_sha256[:16]}...")
    if m.tls_insecure:
        parts.append("HOST NAME NOT CHECKED (tls_insecure)")
    return ", ".join(parts)
