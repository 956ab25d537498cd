"""Losing or corrupting state.json: the node keeps its verified models, runs its highest committed one,
and its high-water mark (rollback protection) does not go down.

Real signed bundles (Coral MobileNet), the real updater (download over real HTTP, self-test, trial, commit)
and the real store; state.json is then deleted or damaged the ways an SD card does it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers_store import Fleet, make_fleet, run_update, start_node

from agent.protocol.messages import UpdateState
from agent.security.bundle import Bundle
from agent.updates.errors import UpdateRejected
from agent.updates.highwater import COMMIT_MARK
from agent.updates.store import ModelStore


@pytest.fixture
def fleet(tmp_path: Path, http_server: Any, coral_data: Path) -> Fleet:
    return make_fleet(tmp_path, http_server, versions=(1, 2, 3))


def _node_at_v2(fleet: Fleet) -> Path:
    """A node seeded with v1 that took v2 over the air (committed). Returns the store root."""
    root = fleet.tmp / "state" / "models"
    u, b = start_node(root, fleet.keyring, fallback=fleet.bundles[1])
    assert b is not None and b.manifest.version == 1
    run_update(u, fleet.announcement(2), fleet.video)
    st = u.store.load_state()
    assert st.current is not None and st.current.version == 2 and st.high_water == 2, st
    return root


def _assert_runs_v2(fleet: Fleet, root: Path, why: str) -> None:
    u, bundle = start_node(root, fleet.keyring)
    assert bundle is not None and bundle.manifest.version == 2
    st = u.store.load_state()
    assert st.current is not None and st.current.version == 2 and st.pending is None
    assert [r.version for r in st.committed] == [1, 2] and st.previous and st.previous.version == 1
    assert u.store.installed_versions() == [1, 2], "verified versions were deleted"
    assert st.high_water == 2
    assert st.last_result and st.last_result.state == UpdateState.FAILED and why in (st.last_result.reason or "")
    Bundle.load(u.store.version_dir(2), fleet.keyring)
    # Restarting again is a normal start: the rebuilt state is persisted.
    u2, again = start_node(root, fleet.keyring)
    assert again is not None and again.manifest.version == 2 and u2.store.last_recovery is None


def _replays_refused(fleet: Fleet, root: Path) -> None:
    u, _ = start_node(root, fleet.keyring)
    for old in (1, 2):
        with pytest.raises(UpdateRejected, match="high-water"):
            u.verify(fleet.announcement(old))
    u.verify(fleet.announcement(3))  # a newer one is still accepted


def test_missing_state_keeps_versions_and_runs_highest_committed(fleet: Fleet) -> None:
    root = _node_at_v2(fleet)
    (root / "state.json").unlink()
    _assert_runs_v2(fleet, root, "missing")
    _replays_refused(fleet, root)


CORRUPTIONS = {
    "garbage": lambda data: b"\x00\xff" * 40,
    "truncated": lambda data: data[: len(data) // 2],
    "empty": lambda data: b"",
    "wrong schema: empty object": lambda data: b"{}",
    "wrong schema: list": lambda data: b"[1, 2]",
    "wrong schema: bad types": lambda data: json.dumps({"committed": "v2", "high_water": "x"}).encode(),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_state_is_set_aside_and_rebuilt(fleet: Fleet, kind: str) -> None:
    root = _node_at_v2(fleet)
    state = root / "state.json"
    bad = CORRUPTIONS[kind](state.read_bytes())
    state.write_bytes(bad)
    _assert_runs_v2(fleet, root, "corrupt")
    aside = list(root.glob("state.json.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == bad, "the corrupt file is kept for diagnosis"
    _replays_refused(fleet, root)


@pytest.mark.parametrize("counter", ["deleted", "corrupt"])
def test_replay_refused_with_state_and_counter_lost(fleet: Fleet, counter: str) -> None:
    """With state.json and the counter both gone, the verified versions on disk still hold the mark."""
    root = _node_at_v2(fleet)
    (root / "state.json").write_bytes(b"{")
    if counter == "deleted":
        (root / "highwater").unlink()
    else:
        (root / "highwater").write_bytes(b"edge-fleet-highwater 1\n99\nnot-the-digest\n")
    _replays_refused(fleet, root)
    assert ModelStore(root).counter.read() == 2, "the counter is rewritten from the other copies"


def test_lost_counter_is_rewritten_and_never_lowers_the_mark(fleet: Fleet) -> None:
    root = _node_at_v2(fleet)
    store = ModelStore(root)
    st = store.load_state()
    st.high_water = 7  # e.g. v7 was seen, rejected at activation and removed
    store.save_state(st)
    (root / "highwater").unlink()
    _, b = start_node(root, fleet.keyring)
    assert b is not None and b.manifest.version == 2
    assert store.counter.read() == 7
    st.high_water = 1  # a stale state.json (restored from a backup) does not lower the counter's mark
    (root / "state.json").write_text(st.model_dump_json())
    u, _ = start_node(root, fleet.keyring)
    assert u.state.high_water == 7 and ModelStore(root).load_state().high_water == 7


def test_tampered_version_is_quarantined_and_reported(fleet: Fleet) -> None:
    root = _node_at_v2(fleet)
    model = root / "versions" / "2" / "model_quant.tflite"
    model.write_bytes(model.read_bytes()[:-10] + b"0123456789")
    (root / "state.json").unlink()
    u, bundle = start_node(root, fleet.keyring)
    assert bundle is not None and bundle.manifest.version == 1, "falls back to the committed v1"
    assert u.store.installed_versions() == [1]
    q = list((root / "quarantine").iterdir())
    assert len(q) == 1 and q[0].name.startswith("2-") and (q[0] / "model_quant.tflite").exists()
    reason = u.state.last_result.reason if u.state.last_result else ""
    assert "quarantined v2" in (reason or "") and "sha256" in (reason or "")
    assert u.state.high_water == 2, "the quarantined version still counts as seen"


def test_uncommitted_version_on_disk_is_not_run_after_state_loss(fleet: Fleet) -> None:
    """v3 promoted and on trial (no commit mark) when state.json was lost: v2 runs, v3 is not committed."""
    root = _node_at_v2(fleet)
    store = ModelStore(root)
    import shutil

    shutil.copytree(fleet.bundles[3], store.staging_dir(3))
    store.promote(3)
    assert not (store.version_dir(3) / COMMIT_MARK).exists()
    (root / "state.json").unlink()
    u, bundle = start_node(root, fleet.keyring)
    assert bundle is not None and bundle.manifest.version == 2
    assert [r.version for r in u.state.committed] == [1, 2] and u.state.high_water == 3
    with pytest.raises(UpdateRejected, match="high-water"):
        u.verify(fleet.announcement(3))


def test_without_keyring_nothing_is_deleted(fleet: Fleet) -> None:
    root = _node_at_v2(fleet)
    (root / "state.json").unlink()
    u, bundle = start_node(root, fleet.keyring, with_keyring=False)
    assert bundle is None, "nothing unverified is run"
    assert u.store.installed_versions() == [1, 2] and u.state.high_water == 2
    assert "no keyring" in (u.store.last_recovery or "")
    # Once the keyring is given, the node rebuilds and runs v2.
    (root / "state.json").unlink()
    _assert_runs_v2(fleet, root, "missing")
