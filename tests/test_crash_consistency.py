"""Power cuts at every point of a node's first boot and of a full over-the-air update (ALICE/CrashMonkey style).

The real updater runs the update (download over real HTTP, promote, self-test, swap, trial, commit, prune)
while tests/crash_model.py records every write, fsync, rename, mkdir, unlink and rmtree under the model
store. For every cut point the store directory is rebuilt as a power cut there leaves it (only fsynced
bytes and fsynced directory entries survive; un-synced files come back empty, or missing), and a node is
started on it: it must run a committed model whose bundle verifies with the keyring, and its high-water
mark must never go down from one cut to the next.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from crash_model import Image, Recorder
from helpers_store import Fleet, make_fleet, run_update, start_node
from helpers_updates import make_bundle

from agent.security.bundle import Bundle
from agent.updates.errors import UpdateRejected
from agent.updates.store import ModelStore

VARIANTS = ("empty", "missing")


def _restart(fleet: Fleet, image: Image, where: Path, fallback: Path | None) -> tuple[int, int]:
    """Start a node on a crashed store; return (running version, high-water mark)."""
    root = image.materialize(where)
    u, bundle = start_node(root, fleet.keyring, fallback=fallback)
    assert bundle is not None, "the node has no model to run"
    v = bundle.manifest.version
    st = ModelStore(root).load_state()
    assert st.pending is None, "an uncommitted update survived the power cut"
    assert st.current is not None and st.current.version == v and v in [r.version for r in st.committed]
    Bundle.load(u.store.version_dir(v), fleet.keyring)  # signature and every sha256, from disk
    assert u.state.high_water >= v and st.high_water == u.state.high_water
    with pytest.raises(UpdateRejected, match="high-water"):
        u.verify(fleet.announcement(1))  # a captured old announcement is refused after any cut
    return v, u.state.high_water


def _cuts(fleet: Fleet, rec: Recorder, tmp: Path, fallback: Path | None) -> dict[str, list[tuple[int, int, int]]]:
    """(cut, running version, high-water mark) per variant, for each distinct crash image."""
    results: dict[str, list[tuple[int, int, int]]] = {}
    seen: dict[tuple[Any, ...], tuple[int, int]] = {}
    for variant in VARIANTS:
        rows = results.setdefault(variant, [])
        for cut, image in rec.images(variant):
            key = image.key()
            if key not in seen:
                seen[key] = _restart(fleet, image, tmp / f"{variant}-{cut}", fallback)
            rows.append((cut, *seen[key]))
    print(f"{len(rec.ops)} ops, {len(rec.ops) + 1} cut points x {len(VARIANTS)} variants, {len(seen)} distinct images")
    return results


def _assert_monotonic(rows: list[tuple[int, int, int]], start: int) -> None:
    mark = start
    for cut, _v, hw in rows:
        assert hw >= mark, f"high-water mark went down from {mark} to {hw} at cut {cut}"
        mark = hw


@pytest.fixture
def fleet(tmp_path: Path, http_server: Any, coral_data: Path) -> Fleet:
    return make_fleet(tmp_path, http_server, versions=(1, 2, 3))


def test_power_cut_at_every_point_of_first_boot_and_update(fleet: Fleet, tmp_path: Path) -> None:
    root = (tmp_path / "node" / "models").resolve()
    root.mkdir(parents=True)
    # First boot: the model from the config is installed and committed.
    boot = Recorder(root)
    with boot.tracing():
        u, bundle = start_node(root, fleet.keyring, fallback=fleet.bundles[1])
    assert bundle is not None and bundle.manifest.version == 1
    for variant, rows in _cuts(fleet, boot, tmp_path / "boot-cuts", fleet.bundles[1]).items():
        assert {v for _c, v, _h in rows} == {1}, variant
        _assert_monotonic(rows, 1)
    # The update to v2, then to v3 (which prunes v1: keep_versions=2), through the real updater.
    _update_with_power_cuts(fleet, u, root, tmp_path, 2, {"write", "fsync", "rename", "mkdir"})
    _update_with_power_cuts(fleet, u, root, tmp_path, 3, {"write", "fsync", "rename", "rmtree"})
    # v4 fails its golden self-test: rolled back (its directory removed), v3 keeps running, v4 counts as seen.
    fleet.bundles[4] = make_bundle(tmp_path / "bundle-v4", fleet.key, 4, golden="bad",
                                   expires=datetime.now(UTC) + timedelta(days=1))
    rec = _record_update(fleet, u, root, 4, running=3)
    for variant, rows in _cuts(fleet, rec, tmp_path / "v4-cuts", None).items():
        _assert_monotonic(rows, 3)
        assert {v for _c, v, _h in rows} == {3}, f"{variant}: only the committed v3 may run"
        assert rows[-1][2] == 4, f"{variant}: the rolled-back v4 stays seen (mark 4)"


def _record_update(fleet: Fleet, u: Any, root: Path, version: int, running: int) -> Recorder:
    rec = Recorder(root)
    with rec.tracing():
        run_update(u, fleet.announcement(version), fleet.video)
    assert u.state.current is not None and u.state.current.version == running, u.state.last_result
    return rec


def _update_with_power_cuts(fleet: Fleet, u: Any, root: Path, tmp: Path, version: int, kinds: set[str]) -> None:
    before = version - 1
    rec = _record_update(fleet, u, root, version, running=version)
    assert kinds <= {op.kind for op in rec.ops}
    # The commit mark is written just before the state.json that commits the version.
    commit_at = next(i for i, op in enumerate(rec.ops) if op.path.startswith(f"versions/{version}/..committed"))
    for variant, rows in _cuts(fleet, rec, tmp / f"v{version}-cuts", None).items():
        _assert_monotonic(rows, before)
        assert all(v == before for cut, v, _h in rows if cut <= commit_at), f"{variant}: ran v{version} uncommitted"
        assert rows[-1][1:] == (version, version), f"{variant}: after the last op: v{version}, mark {version}"
        assert any(h == version for c, _v, h in rows if c <= commit_at), "seen (mark raised) before it runs"
