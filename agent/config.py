"""Agent configuration: one TOML file, overridable from the environment (EDGE_AGENT_*).

Precedence (highest first): explicit keyword arguments, environment, TOML file, defaults.
Nested keys use a double underscore in the environment, e.g. EDGE_AGENT_BROKER__URL or
EDGE_AGENT_BACKEND__DETECTORS__CPU__THREADS. One sub-model per backend, in the spirit of Frigate's detectors
(each defined beside its backend in agent/inference/backends/).
See docs/AGENT.md and docs/agent.example.toml.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from agent.camera.config import CameraConfig as CameraConfig  # each part's section, defined beside it
from agent.capture.config import CaptureConfig as CaptureConfig  # [capture] hard examples (docs/FLYWHEEL.md)
from agent.inference.backends.cpu import CpuConfig as CpuConfig
from agent.inference.backends.edgetpu import EdgeTpuConfig as EdgeTpuConfig
from agent.inference.config import BackendConfig as BackendConfig
from agent.inference.config import CameraEntry as CameraEntry
from agent.inference.config import DetectConfig as DetectConfig
from agent.inference.config import PublishConfig as PublishConfig
from agent.protocol.topics import DEFAULT_PREFIX, check_segment
from agent.updates.store import UpdatesConfig  # [updater] the [updates] section lives beside the model store

# The TOML path for the settings source of the current load (settings classes are static).
_TOML_PATH: ContextVar[Path | None] = ContextVar("_TOML_PATH", default=None)
log = logging.getLogger(__name__)


class ConfigError(Exception):
    """The configuration is unusable; the message names the key and the problem."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BrokerConfig(_Section):
    """MQTT broker. url: mqtt://host:port, mqtts://host:port (TLS), ws:// or wss:// (websockets)."""

    url: str = "mqtt://127.0.0.1:1883"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = Field(
        default=None, description="read the password from this file (systemd credential), if `password` is unset")
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    tls_insecure: bool = False
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    client_id: str | None = None
    reconnect_min_s: float = Field(default=1.0, gt=0)
    reconnect_max_s: float = Field(default=30.0, gt=0)
    outbox_size: int = Field(default=200, ge=1, description="messages queued while the link is slow")
    offline_buffer: int = Field(default=120, ge=0, description="telemetry kept while the broker is away; oldest dropped first")

    @field_validator("url")
    @classmethod
    def _check_url(cls, v: str) -> str:
        u = urlparse(v)
        if u.scheme not in ("mqtt", "mqtts", "tcp", "ssl", "ws", "wss") or not u.hostname:
            raise ValueError(f"broker url must look like mqtt://host:port, mqtts://, ws:// or wss://, not {v!r}")
        return v

    def secret_password(self) -> str | None:
        """The password, from `password` or else `password_file` (trailing newline stripped)."""
        if self.password is not None:
            return self.password.get_secret_value()
        if self.password_file is not None:
            return self.password_file.read_text().rstrip("\r\n")
        return None

    @property
    def tls(self) -> bool:
        return urlparse(self.url).scheme in ("mqtts", "ssl", "wss") or self.ca_file is not None

    @property
    def host(self) -> str:
        return urlparse(self.url).hostname or "127.0.0.1"

    @property
    def port(self) -> int:
        u = urlparse(self.url)
        if u.port:
            return u.port
        return {"mqtt": 1883, "tcp": 1883, "mqtts": 8883, "ssl": 8883, "ws": 80, "wss": 443}[u.scheme]

    @property
    def transport(self) -> Literal["tcp", "websockets"]:
        return "websockets" if urlparse(self.url).scheme in ("ws", "wss") else "tcp"

    @property
    def ws_path(self) -> str:
        return urlparse(self.url).path or "/mqtt"


class TelemetryConfig(_Section):
    """Telemetry, power, Home Assistant discovery and systemd integration (issue 7; docs/TELEMETRY.md)."""

    enabled: bool = True
    interval_s: float = Field(default=10.0, gt=0, description="seconds between telemetry messages")
    power_source: Literal["auto", "hwmon", "vcgencmd", "power_supply", "estimated"] = "auto"
    baseline_w: float = Field(default=2.7, ge=0, description="board draw for the estimate when no sensor exists")
    tpu_max_w: float = Field(default=2.0, ge=0, description="Edge TPU maximum draw for the estimate")
    hass_discovery: bool = True
    hass_prefix: str = "homeassistant"
    watchdog_interval_s: float | None = Field(
        default=None, gt=0, description="WATCHDOG=1 spacing; default half of systemd's WatchdogSec")


class AgentConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EDGE_AGENT_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    node_id: str = "node-1"
    groups: list[str] = Field(default_factory=list)
    topic_prefix: str = DEFAULT_PREFIX
    broker: BrokerConfig = BrokerConfig()
    camera: CameraConfig = CameraConfig()
    cameras: list[CameraEntry] = Field(
        default_factory=list, description="[[cameras]]: several named cameras; without it [camera] is one camera "
        "named `default`")
    backend: BackendConfig = BackendConfig()
    detect: DetectConfig = DetectConfig()
    publish: PublishConfig = PublishConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    updates: UpdatesConfig = UpdatesConfig()  # [updater] OTA limits, timeouts and trial policy
    capture: CaptureConfig = CaptureConfig()  # [capture] hard-example capture and upload (off by default)
    state_dir: Path = Path("/var/lib/edge-agent")
    trusted_keys_dir: Path = Path("/etc/edge-agent/keys")
    bundle: Path | None = Field(default=None, description="a bundle directory to run when the store has none")
    state_interval_s: float = Field(default=60.0, gt=0, description="republish the retained state this often")

    @field_validator("node_id")
    @classmethod
    def _node(cls, v: str) -> str:
        return check_segment(v, "node_id")

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        return [check_segment(g, "group") for g in v]

    @field_validator("topic_prefix")
    @classmethod
    def _prefix(cls, v: str) -> str:
        for part in v.split("/"):
            check_segment(part, "topic_prefix")
        return v

    @model_validator(mode="after")
    def _one_camera_form(self) -> AgentConfig:
        if self.cameras and "camera" in self.model_fields_set:
            raise ValueError("use either [camera] or [[cameras]], not both")
        names = [c.name for c in self.cameras]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"camera names must be unique: {', '.join(dup)}")
        return self

    def camera_entries(self) -> list[CameraEntry]:
        """The cameras to run: [[cameras]], or the single [camera] as one camera named `default`."""
        if self.cameras:
            return list(self.cameras)
        return [CameraEntry(name="default", **self.camera.model_dump())]

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml = _TOML_PATH.get()
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml))
        return tuple(sources)


def load_config(path: Path | str | None = None, **overrides: Any) -> AgentConfig:
    """Read the TOML file (if any), apply EDGE_AGENT_* env and keyword overrides, validate.

    Raises ConfigError with a readable message listing every bad key.
    """
    toml: Path | None = None
    if path is not None:
        toml = Path(path)
        if not toml.is_file():
            raise ConfigError(f"config file {toml} does not exist")
        import tomllib

        try:
            tomllib.loads(toml.read_text())  # parse once here for a clear syntax error
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml}: invalid TOML: {exc}") from exc
    token = _TOML_PATH.set(toml)
    try:
        return AgentConfig(**overrides)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, toml)) from exc
    finally:
        _TOML_PATH.reset(token)


def format_validation_error(exc: ValidationError, source: Path | None = None) -> str:
    where = f" in {source}" if source else ""
    lines = [f"invalid configuration{where}:"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(root)"
        lines.append(f"  {key}: {err['msg']}")
    return "\n".join(lines)
