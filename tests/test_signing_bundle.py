"""Bundle verification: tampering, unknown keys, wrong signatures and altered files are each rejected."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from agent.protocol import Manifest, ModelFiles, OutputLayout, Target, TensorSpec
from agent.security.bundle import Bundle, BundleError, file_entry, write_manifest
from agent.security.signing import Keyring, SignatureError, SigningKey


def make_bundle(root: Path, key: SigningKey | None, version: int = 1) -> Manifest:
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_quant.tflite").write_bytes(b"TFL3" + bytes(range(256)) * 4)
    manifest = Manifest(
        name="shapes", version=version, created=datetime.now(UTC),
        files=[file_entry(root, "model_quant.tflite")],
        models=ModelFiles(cpu="model_quant.tflite"),
        input=TensorSpec(name="images", shape=[1, 160, 160, 3], dtype="uint8", scale=1 / 255, zero_point=0),
        outputs=[TensorSpec(name="cls8", shape=[1, 400, 3], dtype="uint8", scale=0.1, zero_point=200)],
        class_names=["circle", "square", "triangle"],
        layout=OutputLayout(decoder="yolo_nas_raw", num_classes=3),
        expires=datetime.now(UTC) + timedelta(days=1),
    )
    write_manifest(root, manifest, key)
    return manifest


@pytest.fixture
def key() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def ring(key: SigningKey) -> Keyring:
    r = Keyring()
    r.add_pem(key.public_pem())
    return r


def test_valid_bundle_verifies(tmp_path: Path, key: SigningKey, ring: Keyring) -> None:
    m = make_bundle(tmp_path / "b", key)
    b = Bundle.load(tmp_path / "b", ring)
    assert b.manifest == m
    assert b.manifest_bytes == (tmp_path / "b" / "manifest.json").read_bytes()


def test_tampered_manifest_rejected(tmp_path: Path, key: SigningKey, ring: Keyring) -> None:
    make_bundle(tmp_path / "b", key)
    mp = tmp_path / "b" / "manifest.json"
    doc = json.loads(mp.read_bytes())
    doc["version"] = 99
    mp.write_text(json.dumps(doc, indent=2) + "\n")
    with pytest.raises(SignatureError, match="bad signature"):
        Bundle.load(tmp_path / "b", ring)


def test_whitespace_change_is_tampering(tmp_path: Path, key: SigningKey, ring: Keyring) -> None:
    # The signature covers exact bytes, not the parsed meaning.
    make_bundle(tmp_path / "b", key)
    mp = tmp_path / "b" / "manifest.json"
    mp.write_bytes(mp.read_bytes() + b" ")
    with pytest.raises(SignatureError):
        Bundle.load(tmp_path / "b", ring)


def test_unknown_key_rejected(tmp_path: Path, ring: Keyring) -> None:
    stranger = SigningKey.generate()
    make_bundle(tmp_path / "b", stranger)
    with pytest.raises(SignatureError, match="unknown signing key"):
        Bundle.load(tmp_path / "b", ring)


def test_wrong_signature_rejected(tmp_path: Path, key: SigningKey, ring: Keyring) -> None:
    make_bundle(tmp_path / "b", key)
    sp = tmp_path / "b" / "manifest.sig"
    sig = json.loads(sp.read_text())
    raw = bytearray(base64.b64decode(sig["signature_b64"]))
    raw[0] ^= 0xFF
    sig["signature_b64"] = base64.b64encode(bytes(raw)).decode()
    sp.write_text(json.dumps(sig))
    with pytest.raises(SignatureError, match="bad signature"):
        Bundle.load(tmp_path / "b", ring)


def test_garbage_signature_file_rejected(tmp_path: Path, key: SigningKey, ring: Keyring) -> None:
    make_bundle(tmp_path / "b", key)
    (tmp_path / "b" / "manifest.sig").write_text("not json")
    with pytest.raises(SignatureError, match="cannot read signature"):
        Bundle.load(tmp_path / "b", ring)


def test_file_sha256_mismatch_rejected(tmp_path: Path, key: SigningKey, ring: Keyring) -> None:
    make_bundle(tmp_path / "b", key)
    mf = tmp_path / "b" / "model_quant.tflite"
    data = bytearray(mf.read_bytes())
    data[100] ^= 1  # same size, different content
    mf.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        Bundle.load(tmp_path / "b", ring)


def test_truncated_file_rejected(tmp_path: Path, key: SigningKey, ring: Keyring) -> None:
    make_bundle(tmp_path / "b", key)
    mf = tmp_path / "b" / "model_quant.tflite"
    mf.write_bytes(mf.read_bytes()[:-10])
    with pytest.raises(BundleError, match="size"):
        Bundle.load(tmp_path / "b", ring)


def test_unsafe_path_in_manifest_rejected() -> None:
    with pytest.raises(ValueError, match="unsafe"):
        from agent.protocol import FileEntry

        FileEntry(path="../../etc/passwd", sha256="0" * 64, size=1)


def test_key_roundtrip_and_key_id(tmp_path: Path, key: SigningKey) -> None:
    pub = key.save(tmp_path / "fleet.key")
    assert (tmp_path / "fleet.key").stat().st_mode & 0o777 == 0o600
    ring = Keyring.load(tmp_path)  # directory of *.pub
    assert list(ring.keys) == [key.key_id]
    loaded = SigningKey.load(tmp_path / "fleet.key")
    assert loaded.key_id == key.key_id
    assert pub.name == "fleet.pub"
    with pytest.raises(FileExistsError):
        key.save(tmp_path / "fleet.key")


def test_target_and_expiry(tmp_path: Path, key: SigningKey) -> None:
    m = make_bundle(tmp_path / "b", key)
    assert Target.parse("all").matches("n1", [])
    assert Target.parse("group:lab").matches("n1", ["lab"])
    assert not Target.parse("group:lab").matches("n1", ["yard"])
    assert Target.parse("node:n1").matches("n1", []) and not Target.parse("node:n2").matches("n1", [])
    with pytest.raises(ValueError):
        Target.parse("nodes:n1")
    assert not m.is_expired()
    assert m.is_expired(datetime.now(UTC) + timedelta(days=2))
