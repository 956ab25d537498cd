"""The model bundle manifest (manifest.json), signed detached as manifest.sig.

A bundle is a directory: manifest.json, manifest.sig and the files the manifest lists.
The signature covers the exact bytes of manifest.json; verifiers check it before parsing.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
RESERVED_NAMES = frozenset({MANIFEST_NAME, SIGNATURE_NAME})

_SAFE_PATH = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FileEntry(_Strict):
    """One file of the bundle, relative to the bundle root."""

    path: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)

    @field_validator("path")
    @classmethod
    def _relative_and_safe(cls, v: str) -> str:
        # Paths come from the network: no absolute paths, no "..", no odd characters.
        if not _SAFE_PATH.match(v) or any(part in ("..", ".") for part in v.split("/")):
            raise ValueError(f"unsafe bundle path {v!r}")
        if v.lower() in RESERVED_NAMES:
            # The signed manifest and its signature come from the announcement: a file entry of that name
            # would let a server's copy overwrite them in the staging directory.
            raise ValueError(f"reserved bundle path {v!r} (the manifest and its signature are not file entries)")
        return v


class TensorSpec(_Strict):
    """A model input or output as the runtime sees it (quantization read from the tensor)."""

    name: str
    shape: list[int]
    dtype: Literal["uint8", "int8", "float32", "float16", "int32", "int64"]
    scale: float | None = None
    zero_point: int | None = None


class Preprocess(_Strict):
    """How a frame becomes the input tensor. The agent and the builder use agent.inference.preprocess."""

    letterbox: bool = True
    pad_value: int = Field(default=114, ge=0, le=255)
    color: Literal["RGB", "BGR"] = "RGB"
    # "unit": float in [0, 1] (the float models); uint8/int8 models take raw pixels via their input quantization.
    scale: Literal["unit", "raw"] = "unit"


class OutputLayout(_Strict):
    """Which decoder in agent.inference.decode turns the raw outputs into boxes, with its parameters."""

    decoder: Literal["yolo_nas_raw", "ssd_postprocess"]
    num_classes: int = Field(ge=1)
    strides: list[int] = Field(default_factory=lambda: [8, 16, 32])
    reg_max: int = 16


class VariantMetrics(_Strict):
    """Measured on real predictions by the builder (never estimated)."""

    map50_95: float | None = None
    map50: float | None = None
    latency_ms: float | None = None
    size_bytes: int | None = None
    images: int | None = None


class GoldenTest(_Strict):
    """A self-test: run `input` through the model and compare with `expected` (both .npy files)."""

    input: str
    expected: str
    model: Literal["cpu", "edgetpu"] = "cpu"
    atol: float = Field(default=2.0, ge=0)
    max_latency_ms: float = Field(default=2000.0, gt=0)


class ModelFiles(_Strict):
    """Which bundle file each backend runs. `cpu` is required: it is the fallback."""

    cpu: str
    edgetpu: str | None = None


class Target(_Strict):
    kind: Literal["all", "group", "node"] = "all"
    value: str | None = None

    @model_validator(mode="after")
    def _value_when_needed(self) -> Target:
        if self.kind != "all" and not self.value:
            raise ValueError(f"target kind {self.kind!r} needs a value")
        return self

    @classmethod
    def parse(cls, text: str) -> Target:
        """Parse the CLI form: all | group:NAME | node:ID."""
        if text == "all":
            return cls()
        kind, _, value = text.partition(":")
        if kind not in ("group", "node") or not value:
            raise ValueError(f"target must be all, group:NAME or node:ID, not {text!r}")
        return cls(kind=kind, value=value)  # type: ignore[arg-type]

    def matches(self, node_id: str, groups: list[str]) -> bool:
        if self.kind == "all":
            return True
        if self.kind == "group":
            return self.value in groups
        return self.value == node_id

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind}:{self.value}"


class Manifest(_Strict):
    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")
    version: int = Field(ge=1, description="monotonic; agents refuse anything not above their high-water mark")
    created: datetime
    files: list[FileEntry]
    models: ModelFiles
    input: TensorSpec
    outputs: list[TensorSpec]
    class_names: list[str]
    layout: OutputLayout
    preprocess: Preprocess = Preprocess()
    metrics: dict[str, VariantMetrics] = Field(default_factory=dict)
    golden: GoldenTest | None = None
    min_agent_version: str = "0.0.0"
    expires: datetime | None = None
    target: Target = Target()

    @model_validator(mode="after")
    def _references_exist(self) -> Manifest:
        paths = {f.path for f in self.files}
        if len(paths) != len(self.files):
            raise ValueError("duplicate file paths in manifest")
        refs = [self.models.cpu, self.models.edgetpu]
        if self.golden:
            refs += [self.golden.input, self.golden.expected]
        for ref in refs:
            if ref is not None and ref not in paths:
                raise ValueError(f"manifest refers to {ref!r}, which is not in its file list")
        if len(self.class_names) != self.layout.num_classes:
            raise ValueError(
                f"{len(self.class_names)} class names for {self.layout.num_classes} classes"
            )
        return self

    def file(self, path: str) -> FileEntry:
        for f in self.files:
            if f.path == path:
                return f
        raise KeyError(path)

    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires

    def to_bytes(self) -> bytes:
        """Canonical serialisation written to manifest.json (what gets signed)."""
        return (self.model_dump_json(indent=2, exclude_none=False) + "\n").encode()
