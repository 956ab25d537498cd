"""The crash-isolated Edge TPU probe (agent.inference.backends.probe), against real shared libraries.

tests/native/fake_delegate.c is compiled with gcc here into libedgetpu stand-ins exporting the TFLite
external delegate plugin ABI: one segfaults, one hangs, one returns NULL, one returns a delegate that
claims no nodes (so a CPU model runs and its outputs can be checked). Each probe runs a real child
process; this process must survive all of them.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
from helpers_native import build, build_all

from agent.inference import tflite
from agent.inference.backends.probe import (
    RETRY_AFTER_S,
    STATE_FILE,
    LibraryIdentity,
    ProbeModel,
    cached_verdict,
    clearance,
    needs_probe,
    probe_cached,
    probe_tpu,
    resolve_library,
    shipped_model,
)

pytestmark = pytest.mark.skipif(tflite.Interpreter is None, reason="no TFLite runtime")


@pytest.fixture(scope="module")
def libs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_all(tmp_path_factory.mktemp("fake-libedgetpu"))


def runtime_text() -> str:
    return f"{tflite.RUNTIME} {metadata.version(tflite.RUNTIME)}"


def assert_names_everything(reason: str, lib: Path) -> None:
    assert str(lib) in reason
    assert runtime_text() in reason
    assert "BuildLabel(fake_delegate.c), RuntimeVersion(0)" in reason  # the library's edgetpu_version()


def test_shipped_expected_output_is_the_cpu_twins_output() -> None:
    m = shipped_model(compiled=False)
    assert m.input is not None and m.expected is not None
    out = tflite.run(tflite.make_interpreter(str(m.path)), np.load(m.input))[0]
    want = np.load(m.expected)
    np.testing.assert_array_equal(out, want)
    top = np.sort(want[0])[::-1]
    assert int(np.argmax(want)) == 89 and top[0] - top[1] > 150  # macaw, by a wide margin
    assert shipped_model().path.stat().st_size > 0


def test_segfaulting_library_is_crashed(libs: dict[str, Path]) -> None:
    v = probe_tpu(str(libs["crash"]), "usb:0", timeout=60)
    assert v.status == "crashed" and not v.cleared
    assert v.signal == signal.SIGSEGV and v.signal_name == "SIGSEGV"
    assert v.stage == "load_delegate"
    assert "SIGSEGV" in v.reason and "usb:0" in v.reason
    assert_names_everything(v.reason, libs["crash"])
    assert "Segmentation fault" in v.stderr_tail  # the child's faulthandler traceback, kept for the log


def test_hanging_library_is_killed_after_the_timeout(libs: dict[str, Path]) -> None:
    t0 = time.monotonic()
    v = probe_tpu(str(libs["hang"]), "pci:0", timeout=8)  # room for the child's imports on a busy host
    took = time.monotonic() - t0
    assert v.status == "hung" and not v.cleared and v.returncode is None
    assert 8 <= took < 20
    assert "killed after 8 s" in v.reason and v.stage == "load_delegate"
    assert_names_everything(v.reason, libs["hang"])


def test_library_returning_null_failed_with_its_message(libs: dict[str, Path]) -> None:
    v = probe_tpu(str(libs["null"]), "")
    assert v.status == "failed" and not v.cleared
    assert "fake_delegate: no Edge TPU here" in v.reason
    assert_names_everything(v.reason, libs["null"])


def test_working_delegate_with_matching_outputs_is_cleared(libs: dict[str, Path]) -> None:
    v = probe_tpu(str(libs["noop"]), "usb:0", model=shipped_model(compiled=False))
    assert v.status == "ok" and v.cleared, v.reason
    assert v.max_abs_diff == 0.0 and v.returncode == 0 and v.stage == "teardown"
    assert v.reason.startswith("cleared: outputs match within 0.1")
    assert_names_everything(v.reason, libs["noop"])


def test_compiled_model_without_an_edge_tpu_delegate_fails(libs: dict[str, Path]) -> None:
    # What a delegate that loads but does not claim the edgetpu-custom-op leaves behind.
    v = probe_tpu(str(libs["noop"]), "usb:0")
    assert v.status == "failed" and v.stage == "allocate"
    assert "edgetpu-custom-op" in v.reason


def test_different_outputs_are_wrong_output(libs: dict[str, Path], tmp_path: Path) -> None:
    twin = shipped_model(compiled=False)
    assert twin.expected is not None
    np.save(tmp_path / "other.npy", np.roll(np.load(twin.expected), 7))
    v = probe_tpu(str(libs["noop"]), "usb:0", model=twin.model_copy(update={"expected": tmp_path / "other.npy"}))
    assert v.status == "wrong_output" and not v.cleared
    assert "> tolerance 0.1" in v.reason and v.max_abs_diff is not None and v.max_abs_diff > 0.1


def test_top1_is_checked_even_within_the_tolerance(libs: dict[str, Path], tmp_path: Path) -> None:
    twin = shipped_model(compiled=False)
    assert twin.expected is not None
    want = np.load(twin.expected)
    flat = np.zeros_like(want)
    flat[0, 3] = 1  # argmax 3, every value within 0.8 of the real output
    np.savez(tmp_path / "flat.npz", flat)
    model = ProbeModel(path=twin.path, input=twin.input, expected=tmp_path / "flat.npz", atol=1.0, top1=True)
    v = probe_tpu(str(libs["noop"]), "usb:0", model=model)
    assert v.status == "wrong_output" and "top-1 89, expected 3" in v.reason


def test_bundle_model_without_expected_outputs_only_has_to_run(libs: dict[str, Path]) -> None:
    v = probe_tpu(str(libs["noop"]), "usb:0", model=shipped_model(compiled=False).path)
    assert v.status == "ok" and "no expected outputs" in v.reason and v.max_abs_diff is None


def test_missing_library_fails_without_a_child(tmp_path: Path) -> None:
    v = probe_tpu(str(tmp_path / "libedgetpu.so.1"), "usb:0")
    assert v.status == "failed" and "not found" in v.reason and v.identity is None and v.returncode is None
    assert needs_probe(tmp_path, str(tmp_path / "libedgetpu.so.1"))


def test_bare_soname_resolves_like_dlopen(libs: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_LIBRARY_PATH", f"/nonexistent:{libs['null'].parent}")
    assert resolve_library(libs["null"].name) == str(libs["null"])
    assert resolve_library("libdoes-not-exist.so.9") is None


def test_verdict_is_cached_until_the_library_file_changes(libs: dict[str, Path], tmp_path: Path) -> None:
    lib = tmp_path / "libedgetpu.so.1"
    shutil.copy(libs["crash"], lib)
    state = tmp_path / "state"
    assert needs_probe(state, str(lib), "usb:0") and cached_verdict(state, str(lib), "usb:0") is None
    first = probe_cached(state, str(lib), "usb:0")
    assert first.status == "crashed" and not first.from_cache
    assert (state / STATE_FILE).is_file() and not list(state.glob(".*.tmp"))

    assert not needs_probe(state, str(lib), "usb:0")
    again = probe_cached(state, str(lib), "usb:0")
    assert again.from_cache and again.probed_at == first.probed_at and again.status == "crashed"
    assert needs_probe(state, str(lib), "usb:1")  # another device, another entry

    st = lib.stat()
    os.utime(lib, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touch
    assert needs_probe(state, str(lib), "usb:0") and cached_verdict(state, str(lib), "usb:0") is None

    build("noop", lib)  # rebuilt in place: the new library is probed, not the old verdict reused
    fresh = probe_cached(state, str(lib), "usb:0", model=shipped_model(compiled=False))
    assert fresh.status == "ok" and not fresh.from_cache
    assert fresh.identity == LibraryIdentity.of(lib)
    hit = cached_verdict(state, str(lib), "usb:0")
    assert hit is not None and hit.cleared and hit.from_cache


def test_failed_verdict_is_retried_after_a_while(libs: dict[str, Path], tmp_path: Path) -> None:
    v = probe_cached(tmp_path, str(libs["null"]), "usb:0")
    assert v.status == "failed" and not v.definitive
    assert not needs_probe(tmp_path, str(libs["null"]), "usb:0", now=v.probed_at + 1)
    assert needs_probe(tmp_path, str(libs["null"]), "usb:0", now=v.probed_at + RETRY_AFTER_S + 1)


def test_unreadable_cache_means_probe_again(libs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_text("{not json")
    assert cached_verdict(tmp_path, str(libs["crash"]), "usb:0") is None
    assert needs_probe(tmp_path, str(libs["crash"]), "usb:0")


def test_clearance_never_probes_while_this_process_holds_the_tpu(libs: dict[str, Path], tmp_path: Path) -> None:
    lib, twin = str(libs["noop"]), shipped_model(compiled=False)
    # Unknown library and the device is ours (an update validating its new model): no child, no answer.
    assert clearance(tmp_path, lib, "usb:0", device_held=True, model=twin) is None
    assert not (tmp_path / STATE_FILE).exists()
    v = clearance(tmp_path, lib, "usb:0", device_held=False, model=twin)  # e.g. at start
    assert v is not None and v.cleared and not v.from_cache
    held = clearance(tmp_path, lib, "usb:0", device_held=True, model=twin)  # cleared before: no child needed
    assert held is not None and held.cleared and held.from_cache
