"""Manifest schema 2: nodes download only what they run (docs/UPDATES.md, "What a node downloads").

Schema 1 still parses byte for byte and still refuses unknown keys; schema 2 adds `needs`, the files each
backend's node fetches, covered by the signature like every other byte. A CPU node running the real daemon
asks the real HTTP server for its list only; a schema 1 announcement from the builder still updates it; a
node whose store holds schema 1 bundles and state (an old agent's) keeps running them after the upgrade,
then takes a schema 2 update, rolls back to and pins stored versions, and rebuilds a lost state from a
store holding a partial (CPU-only) version.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from helpers import wait_for
from helpers_updates import NodeHarness, Watcher, make_variant, write_video

from agent.inference.config import BackendConfig
from agent.protocol.manifest import Manifest, with_schema
from agent.security.bundle import Bundle, BundleError, file_entry, parse_manifest, write_manifest
from agent.security.signing import Keyring, SignatureError, SigningKey
from agent.updates.errors import UpdateRejected
from agent.updates.verify import authenticate, preferred_backend
from builder.convert.bundle import set_schema
from builder.fleet.publish import make_announcement, prepare, publish_bundle

SHARED = ["model_quant.tflite", "golden_input.npy", "golden_expected.npy"]


@pytest.fixture
def cpu_list(trained_bundle: Path) -> set[str]:
    """What a CPU node fetches of the trained bundle: the INT8 model, the golden files and, from a builder
    that ships one, the score reference."""
    ref = Bundle.load(trained_bundle).manifest.score_reference
    return set(SHARED) | ({ref} if ref else set())
FINAL = {"committed", "rolled_back", "failed", "rejected"}


def _doc(m: Manifest) -> dict[str, Any]:
    return json.loads(m.to_bytes())


def _refused(doc: dict[str, Any], match: str) -> None:
    with pytest.raises(BundleError, match=match):
        parse_manifest(json.dumps(doc).encode())


@pytest.fixture
def v1_bundle(tmp_path: Path, trained_bundle: Path, trained_bundle_key: Path) -> Path:
    """The trained bundle as schema 1, as an old builder wrote it (whichever schema the cached build has)."""
    root = tmp_path / "v1-bundle"
    shutil.copytree(trained_bundle, root)
    set_schema(root, 1, SigningKey.load(trained_bundle_key))
    return root


@pytest.fixture
def tpu_bundle(tmp_path: Path, trained_bundle: Path, trained_bundle_key: Path, coral_data: Path) -> Path:
    """The trained bundle plus a compiled Edge TPU model (Google's, as no edgetpu_compiler runs here), v1."""
    root = tmp_path / "tpu-bundle"
    shutil.copytree(trained_bundle, root)
    shutil.copy(coral_data / "mobilenet_v1_0.25_128_quant_edgetpu.tflite", root / "model_edgetpu.tflite")
    m = Bundle.load(root, check=False).manifest
    files = [*m.files, file_entry(root, "model_edgetpu.tflite")]
    models = m.models.model_copy(update={"edgetpu": "model_edgetpu.tflite"})
    write_manifest(root, m.model_copy(update={"files": files, "models": models}), SigningKey.load(trained_bundle_key))
    return root


# -- the schema ------------------------------------------------------------------------------------
def test_v1_parses_and_is_rewritten_byte_for_byte(v1_bundle: Path) -> None:
    b = Bundle.load(v1_bundle)
    assert b.manifest.schema_version == 1 and b.manifest.needs is None
    assert b.manifest.to_bytes() == b.manifest_bytes  # an old builder's bytes: no `needs: null` added
    v2 = with_schema(b.manifest, 2)
    assert with_schema(v2, 1).to_bytes() == b.manifest_bytes  # the builder's v1 is what old nodes read
    assert b.manifest.needed_files("cpu") == b.manifest.files  # v1: every node fetches every file


def test_v2_parses_with_each_backends_files(cpu_list: set[str], tpu_bundle: Path) -> None:
    m = parse_manifest(with_schema(Bundle.load(tpu_bundle).manifest, 2).to_bytes())
    assert m.schema_version == 2
    shared = SHARED + ([m.score_reference] if m.score_reference else [])
    assert m.needs == {"cpu": shared, "edgetpu": ["model_edgetpu.tflite", *shared]}
    assert {f.path for f in m.needed_files("cpu")} == cpu_list
    assert {f.path for f in m.needed_files("edgetpu")} == cpu_list | {"model_edgetpu.tflite"}
    assert len(m.needed_files(None)) == len(m.files)  # backend unknown: every file, never too few


def test_unknown_keys_refused_in_both_schemas(v1_bundle: Path) -> None:
    m1 = Bundle.load(v1_bundle).manifest
    doc = _doc(m1)
    _refused({**doc, "needs": {"cpu": ["model_quant.tflite"]}}, "not permitted in schema_version 1")
    _refused({**doc, "needs": None}, "not permitted in schema_version 1")
    _refused({**doc, "shiny": 1}, "Extra inputs are not permitted")
    v2 = _doc(with_schema(m1, 2))
    _refused({**v2, "shiny": 1}, "Extra inputs are not permitted")
    _refused({**v2, "schema_version": 3}, "Input should be 1 or 2")
    _refused({k: v for k, v in v2.items() if k != "needs"}, "requires `needs`")
    _refused({**v2, "needs": {"cpu": [*v2["needs"]["cpu"], "nowhere.bin"]}}, "not in its file list")
    _refused({**v2, "needs": {"cpu": ["model_quant.tflite", "golden_input.npy"]}}, "lacks 'golden_expected.npy'")
    _refused({**v2, "needs": {"edgetpu": v2["needs"]["cpu"]}}, "must have a `cpu` list")
    _refused({**v2, "needs": {**v2["needs"], "edgetpu": v2["needs"]["cpu"]}}, "has no edgetpu model")


def test_tpu_node_file_selection(cpu_list: set[str], tpu_bundle: Path) -> None:
    m = with_schema(Bundle.load(tpu_bundle).manifest, 2)
    tpu, cpu = SimpleNamespace(cfg=SimpleNamespace(backend=BackendConfig(prefer="edgetpu"))), \
        SimpleNamespace(cfg=SimpleNamespace(backend=BackendConfig(prefer="cpu")))
    assert preferred_backend(tpu) == "edgetpu" and preferred_backend(cpu) == "cpu"
    assert preferred_backend(SimpleNamespace(members=[tpu])) == "edgetpu"  # a TPU pool
    assert preferred_backend(None) is None
    off = BackendConfig(prefer="edgetpu", detectors={"edgetpu": {"enabled": False}})
    assert preferred_backend(SimpleNamespace(cfg=SimpleNamespace(backend=off))) == "cpu"
    fetched = {f.path for f in m.needed_files(preferred_backend(tpu))}
    assert fetched == cpu_list | {"model_edgetpu.tflite"}  # its model + the CPU fallback + the golden files
    assert not fetched & {"model_cpu.tflite", "model_dynamic.tflite", "report.json", "report.md"}
    # A bundle without a TPU model: a TPU node fetches the CPU list (it will run the CPU model).
    cpu_only = with_schema(m.model_copy(update={"models": m.models.model_copy(update={"edgetpu": None}),
                                                "needs": None}), 2)
    assert {f.path for f in cpu_only.needed_files("edgetpu")} == cpu_list


def test_tampered_needs_fail_the_signature(tmp_path: Path, trained_bundle: Path, trained_bundle_key: Path,
                                           trained_bundle_keys: Path) -> None:
    key = SigningKey.load(trained_bundle_key)
    ring = Keyring.load(trained_bundle_keys)
    _, data, sig = prepare(trained_bundle, Bundle.load(trained_bundle).manifest.target, key)
    ann = make_announcement(data, key, "http://127.0.0.1:1/")
    assert authenticate(ann.model_dump_json().encode(), ring)[1].schema_version == 2
    doc = json.loads(data)
    doc["needs"]["cpu"] = [p for p in doc["needs"]["cpu"] if p != "golden_expected.npy"] + ["golden_expected.npy"]
    doc["needs"]["cpu"].reverse()  # still a valid table, other bytes
    forged = ann.model_copy(update={"manifest_b64": base64.b64encode(json.dumps(doc, indent=2).encode()).decode()})
    with pytest.raises(UpdateRejected, match="signature"):
        authenticate(forged.model_dump_json().encode(), ring)
    # On disk too: a stored v2 bundle whose list was edited does not load.
    root = tmp_path / "b"
    shutil.copytree(trained_bundle, root)
    (root / "manifest.json").write_bytes(data)
    (root / "manifest.sig").write_bytes(sig)
    assert Bundle.load(root, ring).manifest.schema_version == 2
    (root / "manifest.json").write_text(json.dumps(doc, indent=2) + "\n")
    with pytest.raises(SignatureError):
        Bundle.load(root, ring)


def test_partial_bundle_checks(cpu_list: set[str], tmp_path: Path, trained_bundle: Path, trained_bundle_key: Path,
                               trained_bundle_keys: Path, v1_bundle: Path) -> None:
    ring = Keyring.load(trained_bundle_keys)
    root = tmp_path / "b"
    shutil.copytree(trained_bundle, root)
    set_schema(root, 2, SigningKey.load(trained_bundle_key))
    full = Bundle.load(root, ring, complete=True)
    not_needed = {f.path for f in full.manifest.files} - cpu_list
    (root / "model_cpu.tflite").write_bytes(b"tampered")  # a file present must still match
    with pytest.raises(BundleError, match="model_cpu.tflite: size"):
        Bundle.load(root, ring)
    for rel in not_needed:
        (root / rel).unlink()
    b = Bundle.load(root, ring)  # what a v2 CPU node holds: complete for the CPU
    assert b.held == cpu_list and sorted(b.absent()) == sorted(not_needed) and b.has("model_quant.tflite")
    with pytest.raises(BundleError, match="missing from bundle"):
        Bundle.load(root, ring, complete=True)  # what the builder publishes is always complete
    (root / "golden_expected.npy").unlink()
    with pytest.raises(BundleError, match="golden_expected.npy: missing from bundle"):
        Bundle.load(root, ring)
    # A v1 bundle has no lists: every file is needed.
    (v1_bundle / "report.md").unlink()
    with pytest.raises(BundleError, match="report.md: missing from bundle"):
        Bundle.load(v1_bundle, ring)


def test_builder_writes_v2_by_default_and_v1_on_request(tmp_path: Path, trained_bundle: Path, v1_bundle: Path,
                                                        trained_bundle_key: Path, trained_bundle_keys: Path) -> None:
    key, ring = SigningKey.load(trained_bundle_key), Keyring.load(trained_bundle_keys)
    target = Bundle.load(trained_bundle).manifest.target
    assert parse_manifest(prepare(trained_bundle, target, key)[1]).schema_version == 2
    data = prepare(trained_bundle, target, key, manifest_version=1)[1]
    assert parse_manifest(data).schema_version == 1 and b'"needs"' not in data
    root = tmp_path / "b"
    shutil.copytree(trained_bundle, root)
    assert set_schema(root, 2, key).schema_version == 2 and Bundle.load(root, ring).manifest.needs
    assert set_schema(root, 1, key).schema_version == 1
    assert (root / "manifest.json").read_bytes() == (v1_bundle / "manifest.json").read_bytes()
    Bundle.load(root, ring)


def test_publish_cli_manifest_version(tmp_path: Path, mqtt_broker: Any, http_server: Any, trained_bundle: Path,
                                      trained_bundle_key: Path) -> None:
    """`edge-builder publish` (the real CLI): schema 2 by default, 1 with `--manifest-version 1`."""
    from agent.protocol.messages import Announcement

    exe = Path(sys.executable).with_name("edge-builder")
    got = []
    for flag in ([], ["--manifest-version", "1"]):
        sub = subprocess.Popen(["mosquitto_sub", "-h", mqtt_broker.host, "-p", str(mqtt_broker.port), "-t",
                                "edgefleet/announce/all", "-R", "-C", "1", "-W", "10"], stdout=subprocess.PIPE)
        time.sleep(0.3)  # subscribed before the publish; -R: the previous retained one is skipped
        proc = subprocess.run([str(exe), "publish", str(trained_bundle), "--broker", mqtt_broker.url, "--key",
                               str(trained_bundle_key), "--http-base", http_server.base_url, *flag],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        payload = sub.communicate(timeout=15)[0]
        got.append(parse_manifest(Announcement.model_validate_json(payload).manifest_bytes()))
    assert [m.schema_version for m in got] == [2, 1]
    assert got[0].needs is not None and got[1].needs is None


# -- nodes -----------------------------------------------------------------------------------------
def _fetched(http: Any, version: int) -> set[str]:
    """The files the HTTP server was asked for under .../<version>/."""
    return {r[1].rsplit("/", 1)[1] for r in http.requests if r[0] == "GET" and f"/{version}/" in r[1]}


def _ship(watcher: Watcher, broker: Any, http: Any, bundle: Path, key: Path, tmp_path: Path, version: int,
          schema: int) -> dict[str, Any]:
    """Publish a copy of `bundle` as `version` with a schema `schema` manifest; the node's final status."""
    b = make_variant(bundle, tmp_path / f"v{version}", key, version)
    mark = watcher.mark()
    publish_bundle(b, broker.url, Bundle.load(bundle).manifest.target, key, http_base=http.base_url,
                   upload_dir=http.root, manifest_version=schema)
    return watcher.wait_update(FINAL, mark, version=version, timeout=90)


@pytest.fixture
def daemon(tmp_path: Path, mqtt_broker: Any, trained_bundle_keys: Path) -> Iterator[Any]:
    """Starts the real agent daemon on a bundle with a `backend.prefer`; stopped at the end."""
    from agent.config import AgentConfig
    from agent.service.daemon import AgentService
    from builder.data.synth import make_video

    started: list[Any] = []

    def start(bundle: Path, prefer: str) -> Any:
        video = tmp_path / "scene.avi"
        make_video(video, n_frames=40, size=(320, 240), fps=15, classes=Bundle.load(bundle).manifest.class_names,
                   seed=5)
        (tmp_path / "sys").mkdir()  # no Edge TPU: the TPU node runs its CPU fallback, degraded
        (tmp_path / "dev").mkdir()
        cfg = AgentConfig(
            node_id="cam-1", topic_prefix="edgefleet", broker={"url": mqtt_broker.url},
            camera={"source": str(video), "loop": True, "realtime": True},
            backend={"prefer": prefer, "edgetpu": {"sysfs_root": str(tmp_path / "sys"),
                                                  "dev_root": str(tmp_path / "dev")}},
            state_dir=tmp_path / "state", trusted_keys_dir=trained_bundle_keys, bundle=bundle,
            updates={"trial_frames": 10, "trial_seconds": 5, "clock_sync": "off"},
        )
        svc = AgentService(cfg)
        started.append(svc)
        svc.start()
        assert wait_for(lambda: svc.updater is not None and svc.updater.engine is not None, 30)
        return svc

    yield start
    for svc in started:
        svc.stop()


@pytest.mark.parametrize("prefer", ["cpu", "edgetpu"])
def test_daemon_fetches_only_its_files_and_still_takes_v1(cpu_list: set[str], daemon: Any, prefer: str, mqtt_broker: Any,
                                                          http_server: Any, tpu_bundle: Path,
                                                          trained_bundle_key: Path, tmp_path: Path) -> None:
    """CPU node: the CPU list. Edge TPU node (no TPU here, degraded to the CPU): its model + the CPU list."""
    svc = daemon(tpu_bundle, prefer)
    m1 = Bundle.load(tpu_bundle).manifest
    wanted = cpu_list | ({"model_edgetpu.tflite"} if prefer == "edgetpu" else set())
    watcher = Watcher(mqtt_broker.host, mqtt_broker.port)
    try:
        v2, v3 = m1.version + 1, m1.version + 2
        st = _ship(watcher, mqtt_broker, http_server, tpu_bundle, trained_bundle_key, tmp_path, v2, 2)
        assert st["state"] == "committed", st
        assert _fetched(http_server, v2) == wanted  # not model_cpu, model_dynamic, the reports
        # `--manifest-version 1`, for old nodes: a new node takes it too, fetching every file.
        st = _ship(watcher, mqtt_broker, http_server, tpu_bundle, trained_bundle_key, tmp_path, v3, 1)
        assert st["state"] == "committed", st
        assert _fetched(http_server, v3) == {f.path for f in m1.files}
        versions = {v["version"]: v for v in svc.updater.inventory()["versions"]}
        assert set(versions[v2]["not_fetched"]) == {f.path for f in m1.files} - wanted
        assert versions[v3]["not_fetched"] == []
    finally:
        watcher.close()


def test_stored_v1_state_survives_the_upgrade(tmp_path: Path, mqtt_broker: Any, http_server: Any,
                                              v1_bundle: Path, trained_bundle_key: Path,
                                              trained_bundle_keys: Path) -> None:
    """An old node (every file of v1 manifests) → the upgraded agent on the same store: runs it, takes v2."""
    m1 = Bundle.load(v1_bundle).manifest
    video = write_video(tmp_path / "scene.avi")
    watcher = Watcher(mqtt_broker.host, mqtt_broker.port)

    def node(initial: Path | None) -> NodeHarness:
        return NodeHarness(state_dir=tmp_path / "state", keys_dir=trained_bundle_keys, broker_host=mqtt_broker.host,
                           broker_port=mqtt_broker.port, video=video, initial_bundle=initial).start()

    def ship(version: int, schema: int) -> dict[str, Any]:
        return _ship(watcher, mqtt_broker, http_server, v1_bundle, trained_bundle_key, tmp_path, version, schema)

    old, new = m1.version + 1, m1.version + 2
    try:
        h = node(v1_bundle)
        try:
            assert ship(old, 1)["state"] == "committed"
        finally:
            h.stop()
        state_before = json.loads((tmp_path / "state" / "models" / "state.json").read_bytes())
        assert state_before["current"]["version"] == old

        h = node(None)  # the upgraded agent, same store, no seed bundle
        try:
            assert h.updater.state.current is not None and h.updater.state.current.version == old
            assert h.updater.state.high_water == state_before["high_water"]
            h.loop.wait_frames(5)
            assert h.loop.seen_versions == [old]
            h.updater.backend = "cpu"  # the harness's engine carries no backend config
            assert ship(new, 2)["state"] == "committed"
            assert _fetched(http_server, new) == set(SHARED)  # a schema 1 bundle re-announced as 2: no score reference
            for cmd, version in (({"command": "rollback"}, old), ({"command": "pin", "version": new}, new)):
                res = watcher.command(h.node, cmd, timeout=60)
                assert res["ok"], res
                assert wait_for(lambda v=version: h.loop.engine.model_version == v, 20)
        finally:
            h.stop()
        (tmp_path / "state" / "models" / "state.json").unlink()  # lost: rebuilt from the (partial) bundles
        h = node(None)
        try:
            assert h.updater.state.current is not None and h.updater.state.current.version == new
            assert {r.version for r in h.updater.state.committed} == {old, new}
            quarantine = tmp_path / "state" / "models" / "quarantine"
            assert not quarantine.exists() or not any(quarantine.iterdir())
            time.sleep(0.2)
            assert h.loop.engine.model_version == new
        finally:
            h.stop()
    finally:
        watcher.close()


def test_score_reference_is_a_v2_field_every_node_fetches(v1_bundle: Path) -> None:
    """The validation run's score histogram (agent/capture/reference): listed, signed, in every backend's list."""
    from agent.capture.reference import REFERENCE_FILE, ScoreReference
    from agent.protocol.manifest import default_needs

    m1 = Bundle.load(v1_bundle).manifest
    doc = _doc(m1)
    if REFERENCE_FILE not in {f.path for f in m1.files}:  # a bundle from a builder that did not ship one yet
        ref = ScoreReference(edges=[0.0, 0.5, 1.0], counts=[3, 7], min_score=0.2, images=4)
        (v1_bundle / REFERENCE_FILE).write_text(ref.model_dump_json())
        doc["files"].append(json.loads(file_entry(v1_bundle, REFERENCE_FILE).model_dump_json()))
    _refused({**doc, "score_reference": REFERENCE_FILE}, "score_reference: extra inputs are not permitted")
    m = Manifest.model_validate({**doc, "schema_version": 2, "score_reference": REFERENCE_FILE,
                                 "needs": default_needs(m1.models, m1.golden, REFERENCE_FILE)})
    assert m.needs is not None and all(REFERENCE_FILE in files for files in m.needs.values())
    assert parse_manifest(m.to_bytes()) == m
    old = with_schema(m, 1)  # for old nodes: no v2 key, the file still listed (v1 nodes fetch every file)
    assert old.score_reference is None and REFERENCE_FILE in {f.path for f in old.files}
    assert b"score_reference\"" not in old.to_bytes()
    assert with_schema(old, 2).needs == default_needs(m1.models, m1.golden)  # dropped with the key
    _refused({**_doc(m), "files": [f for f in doc["files"] if f["path"] != REFERENCE_FILE]}, "not in its file list")
