"""Change the files of an existing, possibly signed bundle without ever leaving it half-changed.

The bundle is verified first (its signature against the key that will re-sign it, every file against
its sha256): re-signing vouches for the content, so tampered content is refused, not laundered. The
change is made on a copy beside the bundle, verified the way a node will verify it
(agent.security.bundle.Bundle.load), and only then swapped in by renames; any failure before the swap
leaves the old bundle untouched.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.atomic import fsync_dir
from agent.protocol.manifest import SIGNATURE_NAME, V2_KEYS, Manifest, ModelFiles, default_needs
from agent.security.bundle import Bundle, BundleError, file_entry, write_manifest
from agent.security.signing import Keyring, SignatureError, SigningKey, read_signature_file


class BundleEditError(RuntimeError):
    """The bundle cannot be changed (unverifiable, or the change failed); it is left as it was."""


def key_ring(key: SigningKey) -> Keyring:
    """Trust exactly `key`: what a node pinning its public key would accept."""
    return Keyring({key.key_id: key.private.public_key()})


def open_verified(root: Path, key: SigningKey | None) -> Bundle:
    """The bundle at `root`, its signature (if any) verified against `key` and every file against the manifest."""
    root = Path(root)
    ring = None
    if (root / SIGNATURE_NAME).exists():
        if key is None:
            raise BundleEditError(f"{root} is signed: give --key with the key that signed it, to re-sign the "
                                  "changed manifest")
        try:
            signer = read_signature_file(root / SIGNATURE_NAME).key_id
        except SignatureError as exc:
            raise BundleEditError(f"{root}: {exc}") from exc
        if signer != key.key_id:
            raise BundleEditError(f"{root} is signed by key {signer}, --key is key {key.key_id}: refusing to "
                                  "re-sign what another key vouched for")
        ring = key_ring(key)
    try:
        return Bundle.load(root, ring, complete=True)
    except (BundleError, SignatureError) as exc:
        raise BundleEditError(f"{root}: {exc}; refusing to re-sign content that is not what was signed") from exc


@dataclass(frozen=True)
class NewFile:
    src: Path  # a file anywhere
    dest: str  # its path inside the bundle


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel or a filesystem without it
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(new: Path, target: Path, scratch: Path) -> None:
    """Replace directory `target` by `new` (both on the same filesystem); the old one ends in `scratch`.

    Atomic where the kernel can exchange the two; else two renames with a moment without `target`."""
    if _exchange(new, target):
        fsync_dir(target.parent)
        return
    old = scratch / "old"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        os.rename(old, target)
        raise
    fsync_dir(target.parent)


def _changed_manifest(bundle: Bundle, stage: Path, add: list[NewFile], drop: list[str],
                      models: Mapping[str, str | None], version: int | None) -> Manifest:
    changed = {f.dest for f in add} | set(drop)
    files = [e for e in bundle.manifest.files if e.path not in changed]
    files += [file_entry(stage, f.dest) for f in add]
    # Per-backend file lists (schema 2) are derived again: a model added or dropped changes them.
    old = bundle.manifest
    data = old.model_dump(exclude=set(V2_KEYS))
    data.update(files=[e.model_dump() for e in files], models={**data["models"], **models})
    if version is not None:
        data["version"] = version
    if old.schema_version == 1:
        return Manifest.model_validate(data)  # re-validated: every referenced file is listed
    # Schema 2 directly (a v2-only decoder such as yolo_nas_sigmoid cannot pass through schema 1).
    lists = default_needs(ModelFiles.model_validate(data["models"]), old.golden, old.score_reference)
    return Manifest.model_validate({**data, "score_reference": old.score_reference, "needs": lists})


def edit_bundle(bundle: Bundle, key: SigningKey | None, add: list[NewFile], drop: Sequence[str] = (),
                models: Mapping[str, str | None] | None = None, version: int | None = None) -> Manifest:
    """Copy files in (replacing same-named ones), remove `drop`, update `manifest.models` (and the version),
    re-sign, swap in."""
    root = bundle.root.resolve()
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.edit-", dir=root.parent))
    try:
        stage = scratch / root.name
        shutil.copytree(root, stage, symlinks=True)
        for rel in drop:
            (stage / rel).unlink(missing_ok=True)
        for f in add:
            shutil.copyfile(f.src, stage / f.dest)
        manifest = _changed_manifest(bundle, stage, add, list(drop), models or {}, version)
        write_manifest(stage, manifest, key)
        try:
            Bundle.load(stage, key_ring(key) if key else None, complete=True)  # what a node will check
        except (BundleError, SignatureError) as exc:
            raise BundleEditError(f"the changed bundle does not verify: {exc}") from exc
        _swap_in(stage, root, scratch)
        return manifest
    except OSError as exc:
        raise BundleEditError(f"cannot change {root}: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
