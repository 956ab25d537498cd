"""Crash-isolated Edge TPU probe: does this libedgetpu work with this TFLite runtime, on this device?

libedgetpu is ABI-coupled to the TFLite version it was built against; loaded into another runtime it can
segfault or hang the whole process (oberluz/pycoral#13, google-coral/edgetpu#731). So before the daemon
loads the delegate in-process, `probe_tpu` does it in a throwaway child (`python -m
agent.inference.backends.probe`, see probe_child.py): load the delegate, build and allocate an interpreter
for a small compiled model, invoke once on a fixed input, compare with the expected outputs. The verdict
(ok / crashed / hung / failed / wrong_output) is cached per library file, runtime and device in a JSON file
under the state dir. Design and wiring: docs/TPU_PROBE.md.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from agent.atomic import atomic_write
from agent.inference import tflite
from agent.inference.backends.probe_child import MARK, runtime_version

Status = Literal["ok", "crashed", "hung", "failed", "wrong_output"]
# Properties of the library/runtime pair. "failed" and "hung" can also be the device's state (unplugged,
# held by another process, a stuck USB transfer), so those are retried after a while.
DEFINITIVE: frozenset[str] = frozenset({"ok", "crashed", "wrong_output"})
DEFAULT_TIMEOUT_S = 30.0  # child start + USB firmware upload + first invoke, with room on a Pi
RETRY_AFTER_S = 300.0
STATE_FILE = "tpu_probe.json"
MODEL_DIR = Path(__file__).with_name("probe_model")
_KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "LD_LIBRARY_PATH")
_MAX_CACHED = 32
# dlopen(3)'s trusted directories, searched after LD_LIBRARY_PATH and the ld.so cache.
_SYSTEM_LIB_DIRS = ("/lib", "/usr/lib", "/lib64", "/usr/lib64", "/usr/local/lib")


class LibraryIdentity(BaseModel):
    """Which file a library path names now; any change (package upgrade, rebuild, touch) means re-probe."""

    realpath: str
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, path: Path | str) -> LibraryIdentity | None:
        real = os.path.realpath(path)
        try:
            st = os.stat(real)
        except OSError:
            return None
        return cls(realpath=real, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino)

    @classmethod
    def find(cls, lib_path: str) -> LibraryIdentity | None:
        """The identity of the file dlopen would load for `lib_path` (see resolve_library)."""
        resolved = resolve_library(lib_path)
        return cls.of(resolved) if resolved is not None else None


def _ldconfig_paths(name: str) -> list[str]:
    """Paths the ld.so cache lists for a soname (`ldconfig -p`: "\tname (libc6,...) => /path")."""
    exe = shutil.which("ldconfig", path="/sbin:/usr/sbin:" + os.environ.get("PATH", ""))
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=10, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.rsplit("=> ", 1)[1].strip() for line in out.splitlines() if line.strip().startswith(name + " ")]


def resolve_library(lib_path: str) -> str | None:
    """The file dlopen would load for `lib_path`: a path as is, a bare soname ("libedgetpu.so.1") searched
    like dlopen does (LD_LIBRARY_PATH, the ld.so cache, the system dirs incl. multiarch ones); None if absent."""
    if "/" in lib_path:
        return lib_path if os.path.exists(lib_path) else None
    dirs = [d for d in os.environ.get("LD_LIBRARY_PATH", "").split(":") if d]
    found = [os.path.join(d, lib_path) for d in dirs] + _ldconfig_paths(lib_path)
    for d in _SYSTEM_LIB_DIRS:
        found += [os.path.join(d, lib_path)] + sorted(glob.glob(os.path.join(d, "*-linux-*", lib_path)))
    return next((f for f in found if os.path.isfile(f)), None)


class ProbeModel(BaseModel):
    """A compiled model to probe with; `expected` (.npy for output 0, .npz for several) is optional."""

    path: Path
    input: Path | None = None
    expected: Path | None = None
    atol: float = 0.1  # max |difference| of dequantized outputs
    top1: bool = False


def shipped_model(compiled: bool = True) -> ProbeModel:
    """Google's mobilenet_v1_0.25_128 pair (probe_model/README.md); compiled=False gives the CPU twin.

    Both share input.npy and expected.npy (the CPU twin's output): the same quantized graph. Tolerance:
    0.1 in softmax probability (25 of 256 steps) and the same top-1, whose margin is 194 steps, so Edge TPU
    rounding passes and a broken runtime (garbage or zeros) does not."""
    name = "mobilenet_v1_0.25_128_quant_edgetpu.tflite" if compiled else "mobilenet_v1_0.25_128_quant.tflite"
    d = MODEL_DIR
    return ProbeModel(path=d / name, input=d / "input.npy", expected=d / "expected.npy", atol=0.1, top1=True)


def current_runtime() -> tuple[str, str]:
    """(name, version) of the TFLite runtime this process imports, e.g. ("ai-edge-litert", "2.1.2")."""
    return tflite.RUNTIME, runtime_version(tflite.RUNTIME) if tflite.RUNTIME != "none" else "none"


class ProbeVerdict(BaseModel):
    status: Status
    reason: str
    library: str  # as configured
    identity: LibraryIdentity | None = None  # None: the library file was not found
    library_version: str | None = None  # libedgetpu's edgetpu_version(), when the child got that far
    runtime: str
    runtime_version: str
    device: str
    model: str
    stage: str = ""  # last step the child announced (dlopen, load_delegate, allocate, invoke, teardown)
    signal: int | None = None
    signal_name: str | None = None
    returncode: int | None = None
    max_abs_diff: float | None = None
    duration_s: float = 0.0
    probed_at: float = 0.0
    stderr_tail: str = ""
    from_cache: bool = False

    @property
    def cleared(self) -> bool:
        """The daemon may load this library in-process with this runtime on this device."""
        return self.status == "ok"

    @property
    def definitive(self) -> bool:
        return self.status in DEFINITIVE

    @property
    def key(self) -> str | None:
        if self.identity is None:
            return None
        return cache_key(self.identity, (self.runtime, self.runtime_version), self.device)


def cache_key(identity: LibraryIdentity, runtime: tuple[str, str], device: str) -> str:
    i = identity
    return f"{i.realpath}|ino={i.inode}|size={i.size}|mtime_ns={i.mtime_ns}|{runtime[0]}=={runtime[1]}|{device}"


@dataclass
class _Child:
    returncode: int | None  # None: killed after the timeout
    stdout: str
    stderr: str


def _child_env() -> dict[str, str]:
    """Only what the child needs: the parent's import path (same runtime), locale, library search path."""
    env = {k: os.environ[k] for k in _KEPT_ENV if k in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    return env


def _child_command(library: str, device: str, model: ProbeModel) -> list[str]:
    cmd = [sys.executable, "-X", "faulthandler", "-m", "agent.inference.backends.probe"]
    cmd += ["--library", library, "--device", device, "--model", str(model.path), "--atol", repr(model.atol)]
    if model.input is not None:
        cmd += ["--input", str(model.input)]
    if model.expected is not None:
        cmd += ["--expected", str(model.expected)]
    return cmd + (["--top1"] if model.top1 else [])


def _run_child(cmd: list[str], timeout: float) -> _Child:
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_child_env(),
        cwd="/", start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
        return _Child(proc.returncode, out, err)
    except subprocess.TimeoutExpired:
        # Own session: this kills the child and anything it forked, nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:  # stuck in the kernel (USB): give up on its output, not on us
            out, err = "", ""
        return _Child(None, out or "", err or "")


def _records(stdout: str) -> list[dict[str, Any]]:
    recs = []
    for line in stdout.splitlines():
        if line.startswith(MARK):
            with contextlib.suppress(ValueError):
                recs.append(json.loads(line[len(MARK) :]))
    return recs


def _judge(child: _Child, recs: list[dict[str, Any]], timeout: float) -> dict[str, Any]:
    """Verdict fields from how the child ended; the exit signal wins over anything it reported."""
    stage = next((r["stage"] for r in reversed(recs) if "stage" in r), "start")
    final = next((r for r in reversed(recs) if "status" in r), None)
    if child.returncode is None:
        return {"status": "hung", "stage": stage, "what": f"hung during {stage}: killed after {timeout:g} s"}
    if child.returncode < 0:
        num = -child.returncode
        name = signal.Signals(num).name if num in set(signal.Signals) else f"signal {num}"
        where = "at exit, after reporting" if final is not None else f"during {stage}"
        return {
            "status": "crashed", "stage": stage, "signal": num, "signal_name": name,
            "what": f"crashed with {name} (signal {num}) {where}",
        }
    if final is None:
        return {"status": "failed", "stage": stage, "what": f"probe exited with code {child.returncode}"}
    head = "cleared" if final["status"] == "ok" else str(final["status"]).replace("_", " ")
    return {
        "status": final["status"], "stage": stage, "max_abs_diff": final.get("max_abs_diff"),
        "what": f"{head}: {final.get('message', '')}",
    }


def _runtime_mismatch(recs: list[dict[str, Any]], runtime: tuple[str, str]) -> str | None:
    got = next(((r["runtime"], r["runtime_version"]) for r in recs if "runtime" in r), None)
    if got is None or tuple(got) == runtime:
        return None
    return f"failed: the probe process loaded {got[0]} {got[1]}, this process has {runtime[0]} {runtime[1]}"


def _verdict(library: str, device: str, model: ProbeModel, **fields: Any) -> ProbeVerdict:
    """A ProbeVerdict whose reason names the library, its version, the runtime and the device."""
    runtime = current_runtime()
    what = fields.pop("what")
    version = fields.get("library_version")
    lib_text = f"{library} ({version})" if version else f"{library} (version unknown)"
    reason = f"{what} - library {lib_text}, TFLite runtime {runtime[0]} {runtime[1]}, device {device or 'first'}"
    return ProbeVerdict(
        reason=reason, library=library, runtime=runtime[0], runtime_version=runtime[1], device=device,
        model=str(model.path), probed_at=time.time(), **fields,
    )


def probe_tpu(
    lib_path: str, device: str = "", model: ProbeModel | Path | str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> ProbeVerdict:
    """Probe `lib_path` on `device` ("usb:0", "pci:0", "" = first) in a child; never raises, never crashes.

    `model`: a bundle's model_edgetpu (run only: no expected outputs) or a ProbeModel; default the shipped
    mobilenet with its expected outputs. Must not run while this process holds the device (a USB Coral
    opens for one process at a time)."""
    probe_model = model if isinstance(model, ProbeModel) else shipped_model()
    if isinstance(model, str | Path):
        probe_model = ProbeModel(path=Path(model))
    identity = LibraryIdentity.find(lib_path)
    if identity is None:
        return _verdict(lib_path, device, probe_model, status="failed", what="failed: library file not found")
    t0 = time.monotonic()
    try:
        child = _run_child(_child_command(identity.realpath, device, probe_model), timeout)
    except OSError as exc:  # no interpreter to start, out of processes
        return _verdict(lib_path, device, probe_model, identity=identity, status="failed", what=f"failed: {exc}")
    recs = _records(child.stdout)
    fields = _judge(child, recs, timeout)
    mismatch = _runtime_mismatch(recs, current_runtime())
    if mismatch and fields["status"] == "ok":
        fields.update(status="failed", what=mismatch)
    version = next((r["library_version"] for r in recs if r.get("library_version")), None)
    return _verdict(
        lib_path, device, probe_model, identity=identity, library_version=version,
        returncode=child.returncode, duration_s=round(time.monotonic() - t0, 3),
        stderr_tail=child.stderr[-2000:], **fields,
    )


class VerdictCache:
    """Verdicts in <state_dir>/tpu_probe.json, keyed by cache_key; written atomically."""

    def __init__(self, state_dir: Path | str) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self) -> dict[str, ProbeVerdict]:
        try:
            raw = json.loads(self.path.read_text())
            return {k: ProbeVerdict.model_validate(v) for k, v in raw.get("verdicts", {}).items()}
        except (OSError, ValueError, ValidationError, AttributeError):
            return {}  # missing or unreadable: probe again rather than trust it

    def get(self, key: str) -> ProbeVerdict | None:
        v = self.load().get(key)
        return v.model_copy(update={"from_cache": True}) if v is not None else None

    def put(self, verdict: ProbeVerdict) -> None:
        key = verdict.key
        if key is None:
            return
        entries = self.load()
        entries[key] = verdict.model_copy(update={"from_cache": False})
        newest = sorted(entries.items(), key=lambda kv: kv[1].probed_at)[-_MAX_CACHED:]
        body = {"version": 1, "verdicts": {k: v.model_dump(mode="json") for k, v in newest}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, json.dumps(body, indent=1, sort_keys=True).encode())


def _current_key(lib_path: str, device: str) -> str | None:
    identity = LibraryIdentity.find(lib_path)
    return cache_key(identity, current_runtime(), device) if identity is not None else None


def cached_verdict(state_dir: Path | str, lib_path: str, device: str = "") -> ProbeVerdict | None:
    """The stored verdict for this library file, runtime and device as they are now, if any."""
    key = _current_key(lib_path, device)
    return VerdictCache(state_dir).get(key) if key is not None else None


def needs_probe(
    state_dir: Path | str, lib_path: str, device: str = "", retry_after_s: float = RETRY_AFTER_S,
    now: float | None = None,
) -> bool:
    """True without a stored verdict for the current identity, or when a non-definitive one has aged."""
    v = cached_verdict(state_dir, lib_path, device)
    if v is None:
        return True
    return not v.definitive and (time.time() if now is None else now) - v.probed_at >= retry_after_s


def probe_cached(
    state_dir: Path | str, lib_path: str, device: str = "", model: ProbeModel | Path | str | None = None,
    timeout: float = DEFAULT_TIMEOUT_S, retry_after_s: float = RETRY_AFTER_S,
) -> ProbeVerdict:
    """The stored verdict when it still holds (needs_probe False), else a fresh probe, stored."""
    if not needs_probe(state_dir, lib_path, device, retry_after_s):
        hit = cached_verdict(state_dir, lib_path, device)
        if hit is not None:
            return hit
    verdict = probe_tpu(lib_path, device, model, timeout)
    VerdictCache(state_dir).put(verdict)
    return verdict


def clearance(
    state_dir: Path | str, lib_path: str, device: str = "", *, device_held: bool,
    model: ProbeModel | Path | str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
    retry_after_s: float = RETRY_AFTER_S,
) -> ProbeVerdict | None:
    """What the daemon asks before loading the delegate in-process. The stored verdict while it holds;
    else a fresh probe, unless this process holds the TPU (a USB Coral opens for one process at a time,
    so the child would only see a busy device): then None, i.e. unknown, keep the TPU off, ask later."""
    if device_held and needs_probe(state_dir, lib_path, device, retry_after_s):
        return None
    return probe_cached(state_dir, lib_path, device, model, timeout, retry_after_s)


if __name__ == "__main__":
    from agent.inference.backends.probe_child import main

    raise SystemExit(main())


__all__ = [
    "DEFAULT_TIMEOUT_S", "LibraryIdentity", "ProbeModel", "ProbeVerdict", "VerdictCache", "cache_key",
    "cached_verdict", "clearance", "current_runtime", "needs_probe", "probe_cached", "probe_tpu", "resolve_library",
    "shipped_model",
]
