"""Bytes per OTA update, manifest schema 1 (every node fetches every file) vs 2 (each backend's list).

Real agent daemons (AgentService: video-file camera, Engine, updater), a real Mosquitto and the project's
HTTP FileServer on loopback. Each node takes one update published with `--manifest-version 1`, then one
with schema 2 (`edge-builder publish`, library call); the bytes are the HTTP response bodies the server
sent for that version's files (from its request log: path and Range), the announcement is counted apart.

Nodes: a CPU node (`backend.prefer = "cpu"`) on the test bundle, and on the test bundle with an Edge TPU
model added; an Edge TPU node (`prefer = "edgetpu"`) on the latter. No TPU and no edgetpu_compiler here:
the Edge TPU model is Google's compiled MobileNet from tests/data/coral, a real Edge TPU file but much
smaller than a compiled YOLO-NAS would be (about the size of model_quant); the TPU node runs its CPU
fallback (degraded), which changes nothing in what it downloads.

    python bench/bench_update_bytes.py [--bundle DIR --key KEY --trusted DIR] [--min-cpu-ratio 3]

Writes bench/results/update_bytes.json; exit status 3 when a target is missed.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import targets
from bench_update import bundle_args, bundle_parser, find_bundle

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from agent.protocol.manifest import Target  # noqa: E402
from agent.security.bundle import Bundle, file_entry, write_manifest  # noqa: E402
from agent.security.signing import SigningKey  # noqa: E402
from builder.fleet.devservices import FileServer, LocalBroker  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "update_bytes.json"
CORAL_TPU_MODEL = ROOT / "tests" / "data" / "coral" / "mobilenet_v1_0.25_128_quant_edgetpu.tflite"
MIN_CPU_RATIO = 3.0  # issue 12: "roughly 4x less data per update" for a CPU node


def parse_args() -> argparse.Namespace:
    ap = bundle_parser(__doc__)
    ap.add_argument("--min-cpu-ratio", type=float, default=MIN_CPU_RATIO,
                    help=f"target: a CPU node's bytes per update, schema 1 over schema 2 (>= {MIN_CPU_RATIO:g})")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return bundle_args(ap)


def with_tpu_model(src: Path, dst: Path, key: Path) -> Path:
    """A copy of `src` with an Edge TPU model added to its files and `models`, re-signed (schema kept)."""
    shutil.copytree(src, dst)
    shutil.copy(CORAL_TPU_MODEL, dst / "model_edgetpu.tflite")
    m = Bundle.load(dst, check=False).manifest
    files = [f for f in m.files if f.path != "model_edgetpu.tflite"] + [file_entry(dst, "model_edgetpu.tflite")]
    models = m.models.model_copy(update={"edgetpu": "model_edgetpu.tflite"})
    write_manifest(dst, m.model_copy(update={"files": files, "models": models}), SigningKey.load(key))
    return dst


def as_version(src: Path, dst: Path, key: Path, version: int) -> Path:
    shutil.copytree(src, dst)
    m = Bundle.load(dst, check=False).manifest
    write_manifest(dst, m.model_copy(update={"version": version}), SigningKey.load(key))
    return dst


def body_bytes(http: FileServer, version: int) -> tuple[int, list[str]]:
    """Bytes of the response bodies for files under .../<version>/ and the files asked for."""
    total, files = 0, []
    for method, path, rng in http.requests:
        rel = path.split("?", 1)[0].lstrip("/")
        if method != "GET" or f"/{version}/" not in f"/{rel}":
            continue
        size = (http.root / rel).stat().st_size
        start = int(rng.split("=", 1)[1].split("-", 1)[0]) if rng else 0
        total += max(0, size - start)
        files.append(rel.rsplit("/", 1)[1])
    return total, sorted(files)


def run_node(kind: str, bundle: Path, key: Path, trusted: Path, work: Path) -> dict[str, Any]:
    """One node (`kind` = its backend.prefer) taking a schema 1 update, then a schema 2 one."""
    from helpers_updates import Watcher

    from agent.config import AgentConfig
    from agent.service.daemon import AgentService
    from builder.data.synth import make_video
    from builder.fleet.publish import publish_bundle

    broker = LocalBroker(work / "mosquitto").start()
    http = FileServer(work / "www").start()
    svc = watcher = None
    m0 = Bundle.load(bundle).manifest
    out: dict[str, Any] = {"backend_prefer": kind, "bundle_files": {f.path: f.size for f in m0.files}}
    try:
        video = work / "scene.avi"
        make_video(video, n_frames=40, size=(320, 240), fps=15, classes=m0.class_names, seed=3)
        cfg = AgentConfig(
            node_id=f"bench-{kind}", topic_prefix="edgefleet", broker={"url": broker.url},
            camera={"source": str(video), "loop": True, "realtime": True}, backend={"prefer": kind},
            state_dir=work / "state", trusted_keys_dir=trusted, bundle=bundle,
            updates={"trial_frames": 10, "trial_seconds": 5, "clock_sync": "off"},
        )
        svc = AgentService(cfg)
        svc.start()
        watcher = Watcher(broker.host, broker.port)
        deadline = time.monotonic() + 30
        while (svc.updater is None or svc.updater.engine is None) and time.monotonic() < deadline:
            time.sleep(0.05)
        for schema in (1, 2):
            version = m0.version + schema
            b = as_version(bundle, work / f"v{version}", key, version)
            mark = watcher.mark()
            res = publish_bundle(b, broker.url, Target(), key, http_base=http.base_url, upload_dir=http.root,
                                 manifest_version=schema)
            st = watcher.wait_update({"committed", "rolled_back", "failed", "rejected"}, mark, version=version,
                                     timeout=180)
            if st["state"] != "committed":
                raise SystemExit(f"{kind} node, schema {schema}: update ended {st['state']}: {st.get('reason')}")
            n, files = body_bytes(http, version)
            ann = (res.uploaded_to / "manifest.json").stat().st_size if res.uploaded_to else None
            out[f"v{schema}"] = {"version": version, "http_body_bytes": n, "files": files, "manifest_bytes": ann}
            print(f"{kind:>8} node, schema {schema}: {n:>11,} bytes over HTTP ({len(files)} files: {', '.join(files)})")
        out["ratio_v1_over_v2"] = out["v1"]["http_body_bytes"] / out["v2"]["http_body_bytes"]
        out["saved_bytes"] = out["v1"]["http_body_bytes"] - out["v2"]["http_body_bytes"]
    finally:
        if watcher:
            watcher.close()
        if svc:
            svc.stop()
        http.stop()
        broker.stop()
    return out


def main() -> int:
    args = parse_args()
    bundle, key, trusted = (args.bundle, args.key, args.trusted) if args.bundle else find_bundle()
    work = Path(tempfile.mkdtemp(prefix="bench-update-bytes-"))
    try:
        tpu_bundle = with_tpu_model(bundle, work / "tpu-bundle", key)
        nodes = {
            "cpu_node": run_node("cpu", bundle, key, trusted, work / "cpu"),
            "cpu_node_tpu_bundle": run_node("cpu", tpu_bundle, key, trusted, work / "cpu-tpu"),
            "tpu_node": run_node("edgetpu", tpu_bundle, key, trusted, work / "tpu"),
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
    m = Bundle.load(bundle).manifest
    for name, n in nodes.items():
        print(f"{name}: {n['v1']['http_body_bytes'] / 1e6:.2f} MB -> {n['v2']['http_body_bytes'] / 1e6:.2f} MB per "
              f"update ({n['ratio_v1_over_v2']:.2f}x less)")
    aims = [targets.Target("CPU node bytes per update, schema 1 / schema 2", nodes["cpu_node"]["ratio_v1_over_v2"],
                           args.min_cpu_ratio, at_most=False, unit="x")]
    result = {"bundle": f"{m.name} v{m.version}", "input": m.input.shape,
              "edgetpu_model": f"{CORAL_TPU_MODEL.name} (stand-in: no edgetpu_compiler here)", "nodes": nodes}
    return targets.finish(result, aims, args.out)


if __name__ == "__main__":
    sys.exit(main())
