"""The model bundle manifest (manifest.json), signed detached as manifest.sig.

A bundle is a directory: manifest.json, manifest.sig and the files the manifest lists.
The signature covers the exact bytes of manifest.json; verifiers check it before parsing.

Schema versions (strict: unknown keys are an error in each, so a new field means a new version):
1: every node fetches every file. 2: adds `needs`, the files each backend's node fetches (its model, the
CPU fallback, the golden self-test files), so a node skips the reference variants and reports. Agents
read both; the builder writes 2 unless asked for 1 (nodes older than this schema refuse 2).
Decoder "yolo_nas_sigmoid" (the class sigmoid inside the graph) exists only in schema 2: a v1 node could not
decode it, so a v1 manifest cannot name it.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 2  # the newest schema: what agents read and the builder writes by default
SCHEMA_VERSIONS = (1, 2)
BackendName = Literal["cpu", "edgetpu"]  # the ModelFiles fields: one `needs` list per backend
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

    decoder: Literal["yolo_nas_raw", "yolo_nas_sigmoid", "ssd_postprocess"]
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


V2_KEYS = frozenset({"needs", "score_reference"})  # what a schema 1 manifest must not carry
V2_DECODERS = frozenset({"yolo_nas_sigmoid"})  # decoders a schema 1 manifest must not name (v1 nodes lack them)


def v1_decoder_error(decoder: str) -> str | None:
    """Why a schema 1 manifest cannot name `decoder` (None: it can)."""
    if decoder not in V2_DECODERS:
        return None
    return (f"layout.decoder {decoder!r} needs manifest schema_version 2 (nodes reading only schema 1 cannot decode "
            "it); convert with --class-head logits for schema 1 nodes")


class Manifest(_Strict):
    schema_version: Literal[1, 2] = 1
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
    # v2 only: the bundle files a node running each backend fetches (its model, the CPU fallback, golden files).
    needs: dict[BackendName, list[str]] | None = None
    # v2 only: the score histogram of the validation run, for the nodes' drift check (agent/capture/reference).
    score_reference: str | None = None

    @model_validator(mode="after")
    def _needs_fit_schema(self) -> Manifest:
        if self.schema_version == 1:
            for key in V2_KEYS & self.model_fields_set:  # v1 is frozen: a key it never had is an unknown key
                raise ValueError(f"{key}: extra inputs are not permitted in schema_version 1 (it is a v2 field)")
            problem = v1_decoder_error(self.layout.decoder)
            if problem:
                raise ValueError(problem)
            return self
        if not self.needs:
            raise ValueError("schema_version 2 requires `needs` (the files each backend fetches)")
        check_needs(self.needs, {f.path for f in self.files}, self.models, self.golden)
        return self

    @model_validator(mode="after")
    def _references_exist(self) -> Manifest:
        paths = {f.path for f in self.files}
        if len(paths) != len(self.files):
            raise ValueError("duplicate file paths in manifest")
        refs = [self.models.cpu, self.models.edgetpu, self.score_reference]
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

    def needed_paths(self, backend: str | None) -> frozenset[str] | None:
        """The paths a node preferring `backend` fetches; None = every file (v1, or no list applies)."""
        if self.needs is None or backend is None:
            return None
        if backend in self.needs:
            return frozenset(self.needs[backend])  # type: ignore[index]
        if getattr(self.models, backend, None) is None:
            return frozenset(self.needs["cpu"])  # no model for that backend in this bundle: it runs the CPU one
        return None  # a model without a list (an older builder's edit): fetch everything, never too little

    def needed_files(self, backend: str | None) -> list[FileEntry]:
        """The file entries a node preferring `backend` fetches, in manifest order."""
        paths = self.needed_paths(backend)
        return list(self.files) if paths is None else [f for f in self.files if f.path in paths]

    def runnable_with(self, held: set[str] | frozenset[str]) -> bool:
        """Whether a bundle directory holding `held` is complete for some node: v1 needs every file,
        v2 every file of at least one backend's list (each list holds the CPU model and golden files)."""
        if self.needs is None:
            return {f.path for f in self.files} <= held
        return any(set(paths) <= held for paths in self.needs.values())

    def is_expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires

    def to_bytes(self) -> bytes:
        """Canonical serialisation written to manifest.json (what gets signed). A v1 manifest is written
        without `needs`, byte for byte as v1 builders wrote it (v1 nodes refuse unknown keys)."""
        exclude = set(V2_KEYS) if self.schema_version == 1 else None
        return (self.model_dump_json(indent=2, exclude_none=False, exclude=exclude) + "\n").encode()


def check_needs(needs: dict[BackendName, list[str]], paths: set[str], models: ModelFiles,
                golden: GoldenTest | None) -> None:
    """A v2 `needs` table must let each node run and self-test: every list names listed files only, holds
    the CPU model (the fallback every node can run) and the golden files, and its own backend's model."""
    if "cpu" not in needs:
        raise ValueError("needs must have a `cpu` list (the CPU model is every node's fallback)")
    for backend, files in needs.items():
        model = getattr(models, backend)
        if model is None:
            raise ValueError(f"needs lists files for {backend!r}, but `models` has no {backend} model")
        if len(set(files)) != len(files):
            raise ValueError(f"needs.{backend} lists a file twice")
        unknown = [f for f in files if f not in paths]
        if unknown:
            raise ValueError(f"needs.{backend} refers to {unknown[0]!r}, which is not in its file list")
        required = [models.cpu, model] + ([golden.input, golden.expected] if golden else [])
        absent = [f for f in required if f not in files]
        if absent:
            raise ValueError(f"needs.{backend} lacks {absent[0]!r} (a node running {backend} needs it)")


def default_needs(models: ModelFiles, golden: GoldenTest | None,
                  score_reference: str | None = None) -> dict[BackendName, list[str]]:
    """What each backend's node fetches: its model, the CPU model (fallback), the golden self-test files and
    the score reference (a few hundred bytes every node's drift check reads)."""
    shared = [models.cpu] + ([golden.input, golden.expected] if golden else [])
    shared += [score_reference] if score_reference else []
    needs: dict[BackendName, list[str]] = {"cpu": shared}
    if models.edgetpu is not None:
        needs["edgetpu"] = [models.edgetpu, *shared]
    return needs


def with_schema(m: Manifest, schema_version: int) -> Manifest:
    """`m` as schema 1 (no `needs`: nodes fetch every file) or 2 (its `needs`, else `default_needs`).
    Validated again, so a `needs` table gone stale after an edit of `files` or `models` is an error, as is a
    schema 1 manifest naming a schema 2 decoder."""
    if schema_version not in SCHEMA_VERSIONS:
        raise ValueError(f"manifest schema_version must be one of {SCHEMA_VERSIONS}, not {schema_version}")
    data = m.model_dump(exclude={"needs"} if schema_version == 2 else set(V2_KEYS))
    data["schema_version"] = schema_version
    if schema_version == 2:
        # The default lists, except where `m` has its own for a backend it still has a model for.
        needs = default_needs(m.models, m.golden, m.score_reference)
        needs.update({k: v for k, v in (m.needs or {}).items() if getattr(m.models, k) is not None})
        data["needs"] = needs
    return Manifest.model_validate(data)
