"""The fleet keyring (TUF-style): `edge-builder keys ...` writes signed documents; nodes load them, refuse
revoked/expired/role-less signers, and accept a new document only when the current root signed it (and the
new root too, for a rotation), with a higher version, unexpired. Real keys, real files, real CLI processes."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import ROOT
from test_signing_bundle import make_bundle

from agent.security import keyring_store, signing
from agent.security.bundle import Bundle
from agent.security.keyring import (
    KEYRING_NAME,
    KEYRING_SIG_NAME,
    ROOT_PUB_NAME,
    KeyringDoc,
    public_to_b64,
    sign_document,
)
from agent.security.keyring_store import (
    HISTORY_DIR,
    KeyringMessage,
    install_keyring,
    load_trust,
    store_document,
)
from agent.security.signing import Keyring, SignatureError, SigningKey
from agent.security.trust import StaleKeyring
from agent.updates.errors import UpdateRejected
from agent.updates.verify import authenticate


def cli(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


def ok(*args: object) -> str:
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    return r.stdout


def fail(*args: object) -> str:
    r = cli(*args)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stderr


class Keys:
    """Key files in a directory: name.key + name.pub, loaded as SigningKey on demand."""

    def __init__(self, d: Path) -> None:
        self.d = d

    def path(self, name: str) -> Path:
        p = self.d / f"{name}.key"
        if not p.exists():
            SigningKey.generate().save(p)
        return p

    def __getitem__(self, name: str) -> SigningKey:
        return SigningKey.load(self.path(name))


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    (tmp_path / "k").mkdir()
    return Keys(tmp_path / "k")


@pytest.fixture
def ring_dir(tmp_path: Path, keys: Keys) -> Path:
    """A keyring made by the CLI: root key "root", bundle signer "s1" (given by its .pub)."""
    out = tmp_path / "ring"
    ok("keys", "init", "--root", keys.path("root"), "--signer", keys.path("s1").with_suffix(".pub"), "--out", out)
    return out


def signed_bundle(tmp_path: Path, key: SigningKey, name: str = "b") -> Path:
    make_bundle(tmp_path / name, key)
    return tmp_path / name


def doc_after(current: KeyringDoc, **changes: object) -> KeyringDoc:
    fields = current.model_dump() | {"version": current.version + 1} | changes
    return KeyringDoc.model_validate(fields)


def offer(node_dir: Path, doc: KeyringDoc, *signers: SigningKey, current: Keyring | None = None) -> KeyringDoc:
    data = doc.canonical_bytes()
    return install_keyring(node_dir, data, sign_document(data, signers).to_bytes(), current=current)


# ------------------------------------------------------------------------------------ bundles on a node


def test_init_then_a_bundle_by_the_signer_verifies(tmp_path: Path, keys: Keys, ring_dir: Path) -> None:
    assert sorted(p.name for p in ring_dir.iterdir()) == [HISTORY_DIR, KEYRING_NAME, KEYRING_SIG_NAME, ROOT_PUB_NAME]
    data = (ring_dir / KEYRING_NAME).read_bytes()
    assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":")).encode()  # canonical
    ring = Keyring.load(ring_dir)
    assert ring.version == 1 and list(ring.keys) == [keys["s1"].key_id]
    Bundle.load(signed_bundle(tmp_path, keys["s1"]), ring)
    with pytest.raises(SignatureError, match="unknown signing key"):  # the root key signs keyrings, not bundles
        Bundle.load(signed_bundle(tmp_path, keys["root"], "by-root"), ring)
    assert "keyring v1" in ok("keys", "show", ring_dir)
    assert json.loads(ok("keys", "show", ring_dir, "--json"))["signers"][keys["s1"].key_id]["roles"] == ["bundle"]


def test_revoked_signer_is_refused(tmp_path: Path, keys: Keys, ring_dir: Path) -> None:
    bundle = signed_bundle(tmp_path, keys["s1"])
    out = ok("keys", "revoke", ring_dir, keys["s1"].key_id, "--root", keys.path("root"))
    assert "keyring v2" in out and f"revoked: {keys['s1'].key_id}" in out
    with pytest.raises(SignatureError, match=f"signing key {keys['s1'].key_id} is revoked"):
        Bundle.load(bundle, Keyring.load(ring_dir))
    assert "already revoked" in fail("keys", "revoke", ring_dir, keys["s1"].key_id, "--root", keys.path("root"))
    assert "cannot be trusted again" in fail("keys", "add-signer", ring_dir, "--root", keys.path("root"),
                                             "--signer", keys.path("s1"))
    assert "rotate-root" in fail("keys", "revoke", ring_dir, keys["root"].key_id, "--root", keys.path("root"))


def test_the_updater_authenticates_announcements_with_the_keyring(tmp_path: Path, keys: Keys, ring_dir: Path) -> None:
    from agent.protocol.messages import Announcement

    def announce(key: SigningKey) -> bytes:
        data = (signed_bundle(tmp_path, key, key.key_id) / "manifest.json").read_bytes()
        return Announcement(manifest_b64=base64.b64encode(data).decode(), key_id=key.key_id, base_url="http://x/",
                            signature_b64=base64.b64encode(key.sign(data)).decode()).model_dump_json().encode()

    ring = Keyring.load(ring_dir)
    _, manifest = authenticate(announce(keys["s1"]), ring)
    assert manifest.name == "shapes"
    ok("keys", "revoke", ring_dir, keys["s1"].key_id, "--root", keys.path("root"))
    ring.replace_with(Keyring.load(ring_dir))  # what install_keyring does to the updater's object
    with pytest.raises(UpdateRejected, match="is revoked"):
        authenticate(announce(keys["s1"]), ring)


def test_expired_signer_or_document_and_roleless_signer_are_refused(tmp_path: Path, keys: Keys) -> None:
    now = datetime.now(UTC)

    def entry(name: str, **kw: object) -> dict[str, object]:
        return {"public_b64": public_to_b64(keys[name].private.public_key()), **kw}

    doc = KeyringDoc.model_validate({
        "version": 1, "expires": now + timedelta(days=1), "root": {keys["root"].key_id: entry("root")["public_b64"]},
        "signers": {keys["old"].key_id: entry("old", expires=now - timedelta(seconds=1)),
                    keys["norole"].key_id: entry("norole", roles=[]), keys["s1"].key_id: entry("s1")},
    })
    d = tmp_path / "node"
    store_document(d, doc.canonical_bytes(), sign_document(doc.canonical_bytes(), [keys["root"]]), doc)
    ring = Keyring.load(d)
    with pytest.raises(SignatureError, match=f"signing key {keys['old'].key_id} expired at"):
        Bundle.load(signed_bundle(tmp_path, keys["old"], "old"), ring)
    with pytest.raises(SignatureError, match="may not sign for 'bundle'"):
        Bundle.load(signed_bundle(tmp_path, keys["norole"], "norole"), ring)
    bundle = signed_bundle(tmp_path, keys["s1"])
    Bundle.load(bundle, ring)
    expired = doc.model_copy(update={"expires": now - timedelta(seconds=1)})
    store_document(d, expired.canonical_bytes(), sign_document(expired.canonical_bytes(), [keys["root"]]), expired)
    with pytest.raises(SignatureError, match="keyring document v1 expired at"):
        Bundle.load(bundle, Keyring.load(d))  # still loads (its root can accept a newer one), trusts nothing
    assert "EXPIRED" in ok("keys", "show", d)
    ok("keys", "renew", d, "--root", keys.path("root"))
    Bundle.load(bundle, Keyring.load(d))


def test_expiry_never_takes_away_a_model_the_node_already_runs(tmp_path: Path, keys: Keys) -> None:
    """An expired keyring or signer refuses new signatures, but a committed model keeps loading through
    Keyring.installed(); a revoked key is refused even there."""
    now = datetime.now(UTC)
    pub = {n: public_to_b64(keys[n].private.public_key()) for n in ("root", "s1")}
    doc = KeyringDoc.model_validate({
        "version": 1, "expires": now - timedelta(seconds=1), "root": {keys["root"].key_id: pub["root"]},
        "signers": {keys["s1"].key_id: {"public_b64": pub["s1"], "expires": now - timedelta(seconds=1)}},
        "revoked": [keys["old"].key_id],
    })
    d = tmp_path / "node"
    store_document(d, doc.canonical_bytes(), sign_document(doc.canonical_bytes(), [keys["root"]]), doc)
    ring = Keyring.load(d)
    committed = signed_bundle(tmp_path, keys["s1"])
    with pytest.raises(SignatureError, match="expired"):
        Bundle.load(committed, ring)  # what a node is offered: refused
    Bundle.load(committed, ring.installed())  # what it already runs: kept
    with pytest.raises(SignatureError, match="revoked"):
        Bundle.load(signed_bundle(tmp_path, keys["old"], "old"), ring.installed())


# ------------------------------------------------------------------------- new documents over the network


@pytest.fixture
def node(tmp_path: Path, ring_dir: Path) -> tuple[Keyring, Path]:
    """A node provisioned with the builder's v1 (read-only anchor) and an empty state dir for updates."""
    anchor = tmp_path / "etc-keys"
    shutil.copytree(ring_dir, anchor)
    return load_trust(anchor, tmp_path / "state"), tmp_path / "state"


def test_newer_document_installs_and_the_node_adopts_it(tmp_path: Path, keys: Keys, ring_dir: Path,
                                                        node: tuple[Keyring, Path]) -> None:
    ring, state = node
    bundle = signed_bundle(tmp_path, keys["s2"])
    with pytest.raises(SignatureError, match="unknown signing key"):
        Bundle.load(bundle, ring)
    ok("keys", "add-signer", ring_dir, "--root", keys.path("root"), "--signer", keys.path("s2"))
    msg = KeyringMessage.model_validate_json(ok("keys", "message", ring_dir))
    doc = msg.install(state, current=ring)
    assert doc.version == 2 and ring.version == 2
    Bundle.load(bundle, ring)  # the same object the updater holds
    assert load_trust(tmp_path / "etc-keys", state).version == 2  # after a restart too
    with pytest.raises(StaleKeyring, match="not newer than the installed v2"):  # the retained message again
        install_keyring(state, msg.document_bytes(), msg.signatures.to_bytes(), current=ring)


def test_lower_version_and_non_root_and_expired_documents_are_refused(keys: Keys, node: tuple[Keyring, Path]) -> None:
    ring, state = node
    assert ring.document is not None
    v1 = ring.document
    offer(state, doc_after(v1, version=3), keys["root"], current=ring)
    with pytest.raises(StaleKeyring, match="v2 is not newer than the installed v3"):
        offer(state, doc_after(v1), keys["root"], current=ring)
    with pytest.raises(SignatureError, match=r"signed by 0 of the current \(v3\) root key"):
        offer(state, doc_after(v1, version=4), keys["s1"], current=ring)
    stale = doc_after(v1, version=4, expires=datetime.now(UTC) - timedelta(minutes=1))
    with pytest.raises(SignatureError, match="v4 expired"):
        offer(state, stale, keys["root"], current=ring)
    with pytest.raises(SignatureError, match="legacy flat trust"):
        offer(state, doc_after(v1, version=5), keys["root"], current=Keyring.load(keys.path("s1").with_suffix(".pub")))
    assert ring.version == 3 and Keyring.load(state).version == 3


def test_root_rotation_only_when_cross_signed(tmp_path: Path, keys: Keys, node: tuple[Keyring, Path]) -> None:
    ring, state = node
    assert ring.document is not None
    new_root = {keys["root2"].key_id: public_to_b64(keys["root2"].private.public_key())}
    rotated = doc_after(ring.document, root=new_root)
    with pytest.raises(SignatureError, match="of the current"):
        offer(state, rotated, keys["root2"], current=ring)  # the new root alone
    with pytest.raises(SignatureError, match="new .v2. document's root"):
        offer(state, rotated, keys["root"], current=ring)  # the old root alone
    offer(state, rotated, keys["root"], keys["root2"], current=ring)
    assert ring.document is not None and set(ring.document.root) == set(new_root)
    assert list(signing.read_root_pub(state / ROOT_PUB_NAME)) == list(new_root)
    with pytest.raises(SignatureError, match="of the current"):  # the old root has no say any more
        offer(state, doc_after(ring.document), keys["root"], current=ring)
    offer(state, doc_after(ring.document), keys["root2"], current=ring)
    assert load_trust(tmp_path / "etc-keys", state).version == 3


def test_a_node_that_missed_root_rotations_follows_the_chain(tmp_path: Path, keys: Keys, ring_dir: Path,
                                                             node: tuple[Keyring, Path]) -> None:
    ring, state = node
    ok("keys", "rotate-root", ring_dir, "--old", keys.path("root"), "--new", keys.path("r2"))
    ok("keys", "add-signer", ring_dir, "--root", keys.path("r2"), "--signer", keys.path("s2"))
    ok("keys", "rotate-root", ring_dir, "--old", keys.path("r2"), "--new", keys.path("r3"))
    ok("keys", "renew", ring_dir, "--root", keys.path("r3"))
    msg = KeyringMessage.model_validate_json(ok("keys", "message", ring_dir))
    assert len(msg.chain) == 2  # v2 and v4 changed the root
    with pytest.raises(SignatureError, match=r"signed by 0 of the current \(v1\) root"):
        msg.model_copy(update={"chain": []}).install(state, current=ring)
    assert msg.install(state, current=ring).version == 5 and ring.version == 5
    Bundle.load(signed_bundle(tmp_path, keys["s2"]), ring)
    assert load_trust(tmp_path / "etc-keys", state).version == 5  # the stored chain is checked on start
    shutil.rmtree(state / HISTORY_DIR)
    with pytest.raises(SignatureError, match="does not chain from the provisioned v1"):
        load_trust(tmp_path / "etc-keys", state)


def test_a_forged_installed_keyring_does_not_load(tmp_path: Path, keys: Keys, node: tuple[Keyring, Path]) -> None:
    _, state = node
    out = tmp_path / "forged"
    ok("keys", "init", "--root", keys.path("evil"), "--signer", keys.path("evil-signer"), "--out", out)
    ok("keys", "renew", out, "--root", keys.path("evil"))  # v2: newer than the provisioned v1
    shutil.copytree(out, state)
    with pytest.raises(SignatureError, match="does not chain from the provisioned v1"):
        load_trust(tmp_path / "etc-keys", state)


def test_cli_root_rotation_and_threshold(tmp_path: Path, keys: Keys, ring_dir: Path) -> None:
    bundle = signed_bundle(tmp_path, keys["s1"])
    assert "not root keys" in fail("keys", "renew", ring_dir, "--root", keys.path("s1"))
    ok("keys", "rotate-root", ring_dir, "--old", keys.path("root"), "--new", keys.path("a"), "--new", keys.path("b"),
       "--threshold", "2")
    assert "not root keys" in fail("keys", "renew", ring_dir, "--root", keys.path("root"))
    assert "needs 2" in fail("keys", "renew", ring_dir, "--root", keys.path("a"))
    assert "keyring v3" in ok("keys", "renew", ring_dir, "--root", keys.path("a"), "--root", keys.path("b"))
    Bundle.load(bundle, Keyring.load(ring_dir))
    assert "exists" in fail("keys", "init", "--root", keys.path("a"), "--out", ring_dir)
    assert "both root and bundle signer" in fail("keys", "add-signer", ring_dir, "--root", keys.path("a"),
                                                 "--root", keys.path("b"), "--signer", keys.path("a"))
    assert "threshold 3 is more than" in fail("keys", "init", "--root", keys.path("a"), "--threshold", "3",
                                              "--out", tmp_path / "x")


@pytest.mark.parametrize("crash_after", range(1, 7))
def test_a_power_cut_during_install_leaves_a_verifiable_keyring(keys: Keys, node: tuple[Keyring, Path],
                                                                monkeypatch: pytest.MonkeyPatch, crash_after: int) -> None:
    ring, state = node
    assert ring.document is not None
    offer(state, doc_after(ring.document), keys["root"], current=ring)  # v2 on disk
    real, writes = keyring_store.atomic_write, []

    def cut(path: Path, data: bytes) -> None:
        if len(writes) == crash_after:
            raise OSError("power cut")
        writes.append(path.name)
        real(path, data)

    monkeypatch.setattr(keyring_store, "atomic_write", cut)
    new_root = {keys["root2"].key_id: public_to_b64(keys["root2"].private.public_key())}
    with pytest.raises(OSError, match="power cut"):
        offer(state, doc_after(ring.document, root=new_root), keys["root"], keys["root2"], current=ring)
    # writes: history .sig and .json, keyring.json.sig (both), root.pub (both), keyring.json (commit), ...
    assert Keyring.load(state).version == (3 if crash_after >= 5 else 2)


# --------------------------------------------------------------------------- legacy trust, load errors


def test_legacy_pub_directory_still_loads_and_verifies(tmp_path: Path, keys: Keys) -> None:
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    shutil.copy(keys.path("s1").with_suffix(".pub"), legacy / "fleet.pub")
    ring = Keyring.load(legacy)
    assert ring.version is None and list(ring.keys) == [keys["s1"].key_id]
    Bundle.load(signed_bundle(tmp_path, keys["s1"]), ring)
    assert load_trust(legacy, tmp_path / "state").keys == ring.keys


def test_broken_keys_dirs_raise_clear_errors(tmp_path: Path, keys: Keys, ring_dir: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SignatureError, match="no \\*.pub keys in .*edge-builder keygen"):
        Keyring.load(tmp_path / "empty")
    with pytest.raises(SignatureError, match="No such file"):
        Keyring.load(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SignatureError, match="Not a directory"):  # a file where a directory is expected
        Keyring.load([tmp_path / "file" / "keys"])
    only_root = tmp_path / "only-root"
    only_root.mkdir()
    shutil.copy(ring_dir / ROOT_PUB_NAME, only_root / ROOT_PUB_NAME)
    with pytest.raises(SignatureError, match="keyring.json, keyring.json.sig missing"):  # never legacy trust
        Keyring.load(only_root)
    with pytest.raises(SignatureError, match="belongs to a keyring"):  # the root key never signs bundles
        Keyring.load(ring_dir / ROOT_PUB_NAME)
    with pytest.raises(SignatureError, match="belongs to a keyring"):
        Keyring.load([keys.path("s1").with_suffix(".pub"), ring_dir])
    doc = json.loads((ring_dir / KEYRING_NAME).read_bytes())
    doc["signers"] = {}
    (ring_dir / KEYRING_NAME).write_bytes(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    with pytest.raises(SignatureError, match="not signed by the pinned root"):
        Keyring.load(ring_dir)


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A directory an unprivileged user can reach (pytest's tmp_path base is 0700 root)."""
    d = Path(tempfile.mkdtemp(prefix="keyring-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


# Imports happen while still root (this interpreter may live under /root, 0700), then the child drops to nobody.
LOAD_AS_NOBODY = """
import os, sys
from pathlib import Path
from agent.security import signing
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    ring = signing.Keyring.load(Path(sys.argv[1]))
except signing.SignatureError as exc:
    print(exc); sys.exit(1)
print("loaded", len(ring.keys))
"""


@pytest.mark.parametrize("layout", ["legacy", "keyring"])
def test_unreadable_keys_dir_raises_instead_of_an_empty_keyring(world_dir: Path, keys: Keys, ring_dir: Path,
                                                               layout: str) -> None:
    d = world_dir / "keys"
    if layout == "keyring":
        shutil.copytree(ring_dir, d)
    else:
        d.mkdir()
        shutil.copy(keys.path("s1").with_suffix(".pub"), d / "fleet.pub")
    if os.geteuid() != 0:
        pytest.skip("needs root to drop to an unprivileged user")
    d.chmod(0o700)  # documented 0750 root:edge-agent; nobody is not in the group
    r = subprocess.run([sys.executable, "-c", LOAD_AS_NOBODY, str(d)], capture_output=True, text=True, cwd=ROOT,
                       timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"cannot read trusted keys dir {d}: Permission denied (uid 65534" in r.stdout
