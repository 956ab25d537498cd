"""The on-disk model store: atomic state, the crash rule at startup, keep-K pruning, inventory."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from agent.atomic import atomic_write
from agent.protocol.messages import UpdateState
from agent.updates.store import ModelRecord, ModelStore, PendingUpdate, StoreError, StoreState


def _install(store: ModelStore, version: int, name: str = "m") -> None:
    d = store.version_dir(version)
    d.mkdir(parents=True)
    (d / "manifest.json").write_text(json.dumps({"name": name, "version": version}))
    (d / "model.tflite").write_bytes(os.urandom(100))


def _committed(*versions: int) -> StoreState:
    recs = [ModelRecord(name="m", version=v) for v in versions]
    return StoreState(current=recs[-1], previous=recs[-2] if len(recs) > 1 else None, committed=recs,
                      high_water=max(versions))


def test_atomic_write_replaces_whole_file_and_leaves_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    atomic_write(p, b"old")
    atomic_write(p, b"new contents")
    assert p.read_bytes() == b"new contents"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["state.json"]


def test_state_round_trip_and_high_water_persisted(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    store.ensure_dirs()
    assert store.load_state() == StoreState()
    st = _committed(1, 2)
    st.high_water = 5
    store.save_state(st)
    again = ModelStore(tmp_path / "models").load_state()
    assert again.high_water == 5 and again.current and again.current.version == 2


def test_corrupt_state_is_a_clear_error(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_dirs()
    store.state_path.write_text("{not json")
    with pytest.raises(StoreError, match="corrupt"):
        store.load_state()


@pytest.mark.parametrize("phase", ["activating", "trial"])
def test_recover_rolls_back_uncommitted(tmp_path: Path, phase: str) -> None:
    store = ModelStore(tmp_path)
    store.ensure_dirs()
    for v in (1, 2, 3):
        _install(store, v)
    st = _committed(1, 2)
    st.high_water = 3
    st.pending = PendingUpdate(name="m", version=3, phase=phase)  # type: ignore[arg-type]
    store.save_state(st)
    rec = store.recover("node-1")
    assert rec.current and rec.current.version == 2 and rec.pending is None
    assert store.installed_versions() == [1, 2]
    assert rec.last_result and rec.last_result.state == UpdateState.ROLLED_BACK
    assert "restarted during" in (rec.last_result.reason or "")
    assert store.load_state().pending is None  # persisted
    assert rec.high_water == 3  # the rolled-back version is not retried by a replayed announcement


def test_recover_keeps_partial_download_for_resume(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_dirs()
    _install(store, 1)
    (store.staging_dir(2)).mkdir(parents=True)
    (store.staging_dir(2) / "model.tflite.part").write_bytes(b"half")
    (store.staging_dir(7)).mkdir(parents=True)  # a stale one from long ago
    st = _committed(1)
    st.pending = PendingUpdate(name="m", version=2, phase="downloading")
    store.save_state(st)
    rec = store.recover("n")
    assert rec.current and rec.current.version == 1 and rec.pending is None
    assert (store.staging_dir(2) / "model.tflite.part").read_bytes() == b"half"
    assert not store.staging_dir(7).exists()


def test_recover_never_deletes_a_committed_version_being_pinned(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_dirs()
    for v in (1, 2):
        _install(store, v)
    st = _committed(1, 2)
    st.pending = PendingUpdate(name="m", version=1, phase="trial", reason="rollback")
    store.save_state(st)
    rec = store.recover("n")
    assert store.installed_versions() == [1, 2] and rec.current and rec.current.version == 2


def test_recover_removes_orphan_versions(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_dirs()
    for v in (1, 4):
        _install(store, v)
    store.save_state(_committed(1))
    store.recover("n")
    assert store.installed_versions() == [1]


def test_prune_keeps_last_k_committed(tmp_path: Path) -> None:
    store = ModelStore(tmp_path, keep=2)
    store.ensure_dirs()
    for v in (1, 2, 3, 4):
        _install(store, v)
    st = _committed(1, 2, 3, 4)
    assert store.prune(st) == [1, 2]
    store.trim_committed(st)
    assert [r.version for r in st.committed] == [3, 4]
    inv = store.inventory(st)
    assert [(i["version"], i["current"], i["previous"]) for i in inv] == [(3, False, True), (4, True, False)]


def test_promote_is_one_rename(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_dirs()
    s = store.staging_dir(5)
    s.mkdir()
    (s / "f").write_text("x")
    dst = store.promote(5)
    assert (dst / "f").read_text() == "x" and not s.exists() and store.installed_versions() == [5]


# -- copies of the high-water mark and state loss (unsigned dirs: no keyring, so nothing is run or deleted) --
def test_counter_file_detects_damage(tmp_path: Path) -> None:
    from agent.updates.highwater import decode_counter, encode_counter

    data = encode_counter(42)
    assert decode_counter(data) == 42
    assert decode_counter(data.replace(b"42", b"43", 1)) is None  # digit flipped: checksum fails
    assert decode_counter(data[: len(data) // 2]) is None and decode_counter(b"") is None
    assert decode_counter(b"\xff\xfe") is None


def test_high_water_is_the_largest_readable_copy(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    store.ensure_dirs()
    st = _committed(1)
    st.high_water = 5
    store.save_state(st)
    assert store.counter.read() == 5
    assert not store.version_dir(1).exists()  # a commit mark is never written into a missing version
    stale = st.model_copy(update={"high_water": 3})
    store.state_path.write_text(stale.model_dump_json())  # an older state.json: the counter keeps 5
    assert store.load_state().high_water == 5
    store.counter.path.write_bytes(b"garbage")  # a corrupt counter: state.json's copy counts
    assert ModelStore(tmp_path).load_state().high_water == 3
    store.state_path.unlink()
    store.counter.path.write_bytes(b"")
    assert ModelStore(tmp_path).load_state().high_water == 0


def test_save_state_marks_committed_versions_and_raises_counter(tmp_path: Path) -> None:
    from agent.updates.highwater import COMMIT_MARK

    store = ModelStore(tmp_path)
    store.ensure_dirs()
    for v in (1, 2):
        _install(store, v)
    store.save_state(_committed(1))
    assert (store.version_dir(1) / COMMIT_MARK).is_file() and not (store.version_dir(2) / COMMIT_MARK).exists()
    store.save_state(_committed(1, 2))
    assert (store.version_dir(2) / COMMIT_MARK).is_file() and store.counter.read() == 2
    store.remove_version(2)
    assert store.installed_versions() == [1]


@pytest.mark.parametrize("damage", ["missing", "garbage", "wrong schema"])
def test_recover_after_state_loss_never_deletes_versions(tmp_path: Path, damage: str) -> None:
    store = ModelStore(tmp_path)  # no keyring: the bundles cannot be verified, so none is run
    store.ensure_dirs()
    for v in (1, 2):
        _install(store, v)
    store.save_state(_committed(1, 2))
    if damage == "missing":
        store.state_path.unlink()
    else:
        store.state_path.write_bytes(b"\x00garbage" if damage == "garbage" else b'{"current": null}')
    rec = store.recover("n")
    assert store.installed_versions() == [1, 2]
    assert rec.current is None and rec.high_water == 2
    assert "no keyring" in (store.last_recovery or "")
    assert rec.last_result and rec.last_result.state == UpdateState.FAILED
    assert len(list(tmp_path.glob("state.json.corrupt-*"))) == (0 if damage == "missing" else 1)


def test_new_node_is_not_a_state_loss(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.recover("n") == StoreState() and store.last_recovery is None
