"""The builder's side of the flywheel (issue 15): uploads from a node's ring to the real collector over
loopback HTTP, harvest into a YOLO dataset with pseudo-labels from the test bundle's FP32 checkpoint, the
review API and the review page in headless Chromium.

Frames are real captures: the trained test bundle's TFLite engine over a synthetic video, kept by CaptureSink.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import wait_for
from helpers_flywheel import load_engine, video_results
from skip_policy import builder_stack

from agent.capture import CaptureConfig, CaptureSink, Uploader
from agent.capture.ring import CaptureRing
from agent.capture.uploader import UploadRequest, report_json, upload_topics
from agent.inference.frames import FrameResult
from builder.dashboard.auth import AccessPolicy
from builder.fleet.devservices import free_port
from builder.flywheel import review
from builder.flywheel.collector import Collector
from builder.flywheel.harvest import harvest
from builder.flywheel.inbox import collected

N = 6  # frames captured per ring
# The upload half runs in both venvs (the uploader is agent code, the Pi's Python); harvest and review need the
# builder's stack (torch for the pseudo-labels, PyYAML for data.yaml).
builder_only = pytest.mark.skipif(not builder_stack(), reason="no builder stack (torch, libreyolo) in this venv")
TOKEN = "review-token-0123456789"


@pytest.fixture(scope="module")
def results(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> list[FrameResult]:
    tmp = tmp_path_factory.mktemp("frames")
    eng = load_engine(trained_bundle, tmp)
    try:
        return video_results(eng, tmp, n_frames=N * 2)
    finally:
        eng.close()


def fill_ring(root: Path, results: list[FrameResult], node: str = "node-1") -> CaptureRing:
    cfg = CaptureConfig(enabled=True, band=(0.0, 1.0), burst=N, rate_per_min=1e6)
    sink = CaptureSink(cfg, CaptureRing(root, 50, 10**8), node, queue_size=N)  # no drop for a full queue
    for r in results[::2][:N]:  # every other frame: distinct images
        assert sink.observe(r.frame.image, r, "default")
    assert sink.flush()
    sink.close()
    assert sink.ring.count == N
    return sink.ring


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    col = Collector(tmp_path / "collected", port=free_port()).start()
    yield col
    col.stop()


def _stored(col: Collector) -> dict[str, str]:
    return {m.id: hashlib.sha256(p.read_bytes()).hexdigest() for m, p in collected(col.root)}


def test_upload_acknowledged_frames_leave_the_ring(results: list[FrameResult], collector: Collector,
                                                   tmp_path: Path) -> None:
    ring = fill_ring(tmp_path / "ring", results)
    shutil.copytree(ring.root, tmp_path / "backup")
    sent = {i: ring.read(i)[1] for i in ring.ids()}  # type: ignore[index]
    token = collector.credentials.add("node-1")
    assert json.loads((collector.root / "nodes.json").read_text())["nodes"]["node-1"]["sha256"] != token
    # A wrong token, or a node the collector does not know: refused, nothing leaves the ring.
    for node, tok in (("node-1", "not-the-token"), ("node-2", token)):
        rep = Uploader(ring, collector.url, node, tok, backoff_s=0.01).upload_all()
        assert rep.sent == 0 and "refused the credential" in (rep.error or "") and ring.count == N
    rep = Uploader(ring, collector.url, "node-1", token).upload_all()
    assert (rep.sent, rep.error, ring.count) == (N, None, 0)
    assert _stored(collector) == {i: hashlib.sha256(b).hexdigest() for i, b in sent.items()}
    # The same frames again (an acknowledgement lost on the way): acknowledged, not stored twice.
    again = CaptureRing(tmp_path / "backup", 50, 10**8)
    assert Uploader(again, collector.url, "node-1", token).upload_all().sent == N
    assert collector.counters["duplicate"] == N and len(_stored(collector)) == N


def test_upload_over_https(results: list[FrameResult], tmp_path: Path) -> None:
    """A collector with a certificate from a private CA: the node trusts it through `ca_file`, and only then."""
    from builder.dashboard.server import tls_context
    from builder.fleet.testpki import make_test_pki

    pki = make_test_pki(tmp_path / "pki")["server"]
    col = Collector(tmp_path / "collected", port=free_port(), tls=tls_context(pki.cert, pki.key)).start()
    try:
        assert col.url.startswith("https://")
        token = col.credentials.add("node-1")
        ring = fill_ring(tmp_path / "ring", results)
        untrusted = Uploader(ring, col.url, "node-1", token, attempts=1).upload_all()
        assert untrusted.sent == 0 and "CERTIFICATE_VERIFY_FAILED" in (untrusted.error or "") and ring.count == N
        rep = Uploader(ring, col.url, "node-1", token, ca_file=pki.ca).upload_all()
        assert (rep.sent, rep.error, ring.count, len(_stored(col))) == (N, None, 0, N)
    finally:
        col.stop()


class CuttingProxy:
    """A loopback TCP proxy that cuts its first connection after `cut` bytes of the request."""

    def __init__(self, target: int, cut: int) -> None:
        self.target, self.cut, self.cuts = target, cut, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.target))
        limit = self.cut if self.cuts == 0 else None
        if limit is not None:
            self.cuts += 1
        pump = threading.Thread(target=self._pipe, args=(upstream, client, None), daemon=True)
        pump.start()
        self._pipe(client, upstream, limit)
        if limit is not None:  # the cut: both sides see the connection die mid-request
            for s in (client, upstream):
                s.close()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        done = 0
        try:
            while limit is None or done < limit:
                data = src.recv(min(65536, limit - done) if limit else 65536)
                if not data:
                    break
                dst.sendall(data)
                done += len(data)
        except OSError:
            pass
        if limit is None:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


def test_a_truncated_upload_is_retried_and_a_dead_collector_loses_nothing(
        results: list[FrameResult], tmp_path: Path) -> None:
    ring = fill_ring(tmp_path / "ring", results)
    port = free_port()
    token_dir = tmp_path / "collected"
    from builder.flywheel.credentials import NodeCredentials

    token = NodeCredentials(token_dir).add("node-1")
    # Nothing listens yet: the round stops, every frame stays.
    rep = Uploader(ring, f"http://127.0.0.1:{port}", "node-1", token, attempts=2, backoff_s=0.01).upload_all()
    assert rep.sent == 0 and "unreachable" in (rep.error or "") and ring.count == N
    col = Collector(token_dir, port=port).start()
    proxy = CuttingProxy(port, cut=1500)  # headers + the start of the first frame's body
    try:
        rep = Uploader(ring, f"http://127.0.0.1:{proxy.port}", "node-1", token, backoff_s=0.01).upload_all()
        assert proxy.cuts == 1 and (rep.sent, rep.error, ring.count) == (N, None, 0)
        assert len(_stored(col)) == N and col.counters["stored"] == N
        # A body shorter than its Content-Length is refused and nothing is written.
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(f"PUT /api/v1/frames/{'1' * 19}-0000abcd HTTP/1.1\r\nHost: x\r\nX-Edge-Node: node-1\r\n"
                      f"Authorization: Bearer {token}\r\nX-Edge-Meta-Length: 10\r\nContent-Length: 5000\r\n\r\n"
                      "short".encode())
            s.shutdown(socket.SHUT_WR)
            assert b" 400 " in s.recv(4096).split(b"\r\n")[0] + b" "
        assert len(_stored(col)) == N
    finally:
        proxy.sock.close()
        col.stop()


def test_the_collector_refuses_what_it_must(results: list[FrameResult], collector: Collector, tmp_path: Path) -> None:
    import http.client

    token = collector.credentials.add("node-1")
    ring = fill_ring(tmp_path / "ring", results)
    meta, image = ring.read(ring.ids()[0])  # type: ignore[misc]

    def put(path: str, body: bytes, node: str = "node-1", meta_len: int | None = None) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", collector.port, timeout=10)
        conn.request("PUT", path, body=body, headers={
            "Authorization": f"Bearer {token}", "X-Edge-Node": node, "X-Edge-Sha256": hashlib.sha256(body).hexdigest(),
            "X-Edge-Meta-Length": str(meta_len if meta_len is not None else len(head))})
        status = conn.getresponse().status
        conn.close()
        return status

    head = meta.model_dump_json().encode()
    assert put("/api/v1/frames/../../nodes.json", head + image) == 404
    assert put(f"/api/v1/frames/{meta.id}", head + image, node="../etc") == 401
    other = meta.model_copy(update={"node": "node-2"}).model_dump_json().encode()
    assert put(f"/api/v1/frames/{meta.id}", other + image, meta_len=len(other)) == 403
    assert put(f"/api/v1/frames/{meta.id}", head + image[:-10], meta_len=len(head)) == 400  # image ≠ its sha
    collector.max_body = 1000
    assert put(f"/api/v1/frames/{meta.id}", head + image) == 413
    assert _stored(collector) == {} and not (collector.root / "frames" / "node-2").exists()


def test_upload_on_a_retained_request(results: list[FrameResult], collector: Collector, tmp_path: Path,
                                      mqtt_broker: object) -> None:
    """The request path the daemon wires: a retained MQTT message → Uploader.on_message → the upload thread."""
    import paho.mqtt.publish as publish

    from agent.config import BrokerConfig
    from agent.service.mqtt import MqttClient

    ring = fill_ring(tmp_path / "ring", results)
    up = Uploader(ring, collector.url, "node-1", collector.credentials.add("node-1")).start()
    port = mqtt_broker.port  # type: ignore[attr-defined]
    reports: list[dict[str, object]] = []
    up.on_report.append(lambda rep: reports.append(json.loads(report_json(rep))))
    publish.single(upload_topics("edgefleet", "node-1")[0], json.dumps({"request_id": "r1"}), retain=True,
                   hostname="127.0.0.1", port=port)
    client = MqttClient(BrokerConfig(url=f"mqtt://127.0.0.1:{port}"), client_id="capture-test")
    for topic in upload_topics("edgefleet", "node-1"):
        client.subscribe(topic, up.on_message)
    client.start()
    try:
        assert wait_for(lambda: ring.count == 0 and up.last is not None, 20)
        assert up.last is not None and up.last.sent == N and up.last.request_id == "r1"
        assert reports[0]["sent"] == N and reports[0]["remaining"] == 0 and reports[0]["error"] is None
        assert wait_for(lambda: not up.request(UploadRequest(request_id="r1")), 5)  # served once, even after restart
        # Clearing the retained request (an empty message) starts no round; a new id does.
        first = up.last
        publish.single(upload_topics("edgefleet", "node-1")[0], b"", retain=True, hostname="127.0.0.1", port=port)
        publish.single(upload_topics("edgefleet", "node-1")[1], json.dumps({"request_id": "r2"}), retain=True,
                       hostname="127.0.0.1", port=port)
        assert wait_for(lambda: up.last is not first, 10) and up.last is not None and up.last.request_id == "r2"
    finally:
        client.stop()
        up.stop()


@pytest.mark.builder
@builder_only
def test_the_builders_score_reference_matches_what_a_node_sees(
        results: list[FrameResult], trained_bundle: Path, trained_bundle_dir: Path, tmp_path: Path) -> None:
    """The builder's reference (bundle INT8 model, validation split) against the node's real engine on the same
    images with its default decode: no drift. The synthetic video is another scene: it does drift."""
    from agent.capture.reference import load_reference, tv_distance
    from agent.config import AgentConfig
    from agent.inference.engine import Engine
    from agent.inference.preprocess import load_image
    from agent.security.bundle import Bundle
    from builder.evaluate.score_reference import score_reference, write_reference

    ref = score_reference(trained_bundle / "model_quant.tflite", trained_bundle_dir / "dataset", min_score=0.2)
    assert ref.images > 0 and sum(ref.counts) > ref.images  # several objects per image
    write_reference(tmp_path, ref)
    assert load_reference(tmp_path) == ref
    cfg = AgentConfig(state_dir=tmp_path / "s", trusted_keys_dir=tmp_path / "k", detect={"score_threshold": 0.2},
                      backend={"prefer": "cpu", "detectors": {"cpu": {"threads": 1}}})
    eng = Engine.load(Bundle.load(trained_bundle), cfg)
    try:
        val = sorted((trained_bundle_dir / "dataset" / "images" / "val").glob("*.jpg"))
        node = [d.score for p in val for d in eng.infer(load_image(str(p)))]
        video = [d.score for r in results for d in eng.infer(r.frame.image)]
    finally:
        eng.close()
    same, other = tv_distance(ref, np.array(node), 0.2), tv_distance(ref, np.array(video), 0.2)
    print(f"score reference: {sum(ref.counts)} detections on {ref.images} images; TV distance of the node's "
          f"scores on the same images {same:.3f}, on the synthetic video {other:.3f}")
    threshold = CaptureConfig().drift_threshold
    assert same is not None and other is not None and same < threshold < other


def test_collect_command(results: list[FrameResult], tmp_path: Path) -> None:
    """`edge-builder collect add-node` prints a token the node uploads with to `edge-builder collect`."""
    cli = [sys.executable, "-m", "builder.cli", "collect"]
    add = subprocess.run([*cli, "add-node", "node-9", "--dir", str(tmp_path / "c")], capture_output=True, text=True)
    assert add.returncode == 0 and len(add.stdout.strip()) >= 40
    bad = subprocess.run([*cli, "add-node", "../x", "--dir", str(tmp_path / "c")], capture_output=True, text=True)
    assert bad.returncode == 2 and "node id" in bad.stderr
    port = free_port()
    server = subprocess.Popen([*cli, "--dir", str(tmp_path / "c"), "--listen", f"127.0.0.1:{port}"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert "collector listening on" in (server.stdout.readline() if server.stdout else "")
        ring = fill_ring(tmp_path / "ring", results, node="node-9")
        rep = Uploader(ring, f"http://127.0.0.1:{port}", "node-9", add.stdout.strip()).upload_all()
        assert (rep.sent, ring.count) == (N, 0) and len(list((tmp_path / "c" / "frames" / "node-9").glob("*.jpg"))) == N
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(15) == 0


# ---- harvest and review ------------------------------------------------------------------------------
def _checkpoint(bundle_dir: Path) -> Path:
    found = sorted(bundle_dir.glob("output/checkpoints/*/ckpt_best.pth")) + sorted(bundle_dir.rglob("*.pt"))
    if not found:
        pytest.skip(f"no FP32 checkpoint beside the test bundle in {bundle_dir}")
    return found[0]


@pytest.fixture(scope="module")
def harvested(results: list[FrameResult], trained_bundle_dir: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(collector dir, dataset, checkpoint): N frames uploaded for real, then `edge-builder harvest`."""
    tmp = tmp_path_factory.mktemp("harvest")
    col = Collector(tmp / "collected", port=free_port()).start()
    try:
        ring = fill_ring(tmp / "ring", results)
        assert Uploader(ring, col.url, "node-1", col.credentials.add("node-1")).upload_all().sent == N
    finally:
        col.stop()
    ckpt = _checkpoint(trained_bundle_dir)
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "harvest", "--collected", str(col.root), "--out",
                           str(tmp / "dataset"), "--checkpoint", str(ckpt), "--val-fraction", "0.3"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert f"harvested {N} new frames" in proc.stdout and f"] {N}/{N}" in proc.stderr  # the progress bar
    return col.root, tmp / "dataset", ckpt


@pytest.mark.builder
@builder_only
def test_harvest_makes_an_unverified_yolo_dataset(harvested: tuple[Path, Path, Path]) -> None:
    col_dir, ds, ckpt = harvested
    items = review.list_items(ds)
    assert len(items) == N and {i["status"] for i in items} == {"unverified"}
    assert not list(ds.glob("labels/*/*.txt")) and (ds / "train.txt").read_text() == ""  # nothing trains yet
    names = review.class_names(ds)
    for it in items:
        item = review.load_item(ds, it["key"])
        assert (ds / item.image).is_file() and item.boxes == item.pseudo
        assert all(0 <= b.class_id < len(names) and b.score is not None and b.score >= 0.25 for b in item.boxes)
        assert item.capture["node"] == "node-1" and "band" in item.capture["reasons"]  # type: ignore[operator]
    assert harvest(col_dir, ds, ckpt).skipped == N  # a second harvest adds nothing


@pytest.mark.builder
@builder_only
def test_review_api_writes_labels_on_accept(harvested: tuple[Path, Path, Path], tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    shutil.copytree(harvested[1], ds)
    k1, k2, k3 = (i["key"] for i in review.list_items(ds)[:3])
    a = review.apply(ds, k1, "accept")
    assert a.status == "accepted"
    assert (ds / "labels" / k1.split("/")[0] / f"{k1.split('/')[1]}.txt").read_text() == review.yolo_lines(a.boxes)
    box = {"class_id": 2, "box": [0.1, 0.2, 0.5, 0.6]}
    c = review.apply(ds, k2, "correct", [box])
    assert c.status == "corrected"
    assert (ds / "labels" / f"{k2}.txt").read_text() == "2 0.300000 0.400000 0.400000 0.400000\n"
    r = review.apply(ds, k3, "reject")
    assert r.status == "rejected" and not (ds / "labels" / f"{k3}.txt").exists()
    listed = {ln for split in ("train", "val") for ln in (ds / f"{split}.txt").read_text().splitlines()}
    assert listed == {a.image, c.image}
    review.apply(ds, k1, "reject")  # changing one's mind: the label and the listing go
    assert not (ds / "labels" / f"{k1}.txt").exists() and a.image not in (ds / "train.txt").read_text() + (
        ds / "val.txt").read_text()
    for bad in (("train/../../x", "accept", None), (k2, "accept", [{"class_id": 9, "box": [0, 0, 1, 1]}]),
                (k2, "bless", None), (k2, "correct", [{"class_id": 0, "box": [0.5, 0.5, 0.5, 0.9]}])):
        with pytest.raises(review.ReviewError):
            review.apply(ds, *bad)


@pytest.mark.builder
@builder_only
def test_review_page_in_chromium(harvested: tuple[Path, Path, Path], tmp_path: Path, artifacts_dir: Path) -> None:
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from test_dashboard_browser import CHROME_FLAGS, CHROMEDRIVER, CHROMIUM

    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.skip("Debian chromium + chromium-driver are not installed")
    ds = tmp_path / "ds"
    shutil.copytree(harvested[1], ds)
    col = Collector(tmp_path / "collected", port=free_port(), review_dataset=ds, access=AccessPolicy(TOKEN)).start()
    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in [*CHROME_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]:
        opts.add_argument(flag)
    drv = None
    for attempt in range(3):  # chromedriver can lose its port to another process starting at the same moment
        try:
            drv = webdriver.Chrome(options=opts, service=Service(str(CHROMEDRIVER)))
            break
        except WebDriverException:
            if attempt == 2:
                col.stop()
                raise
            time.sleep(1)
    assert drv is not None
    body = lambda: drv.find_element(By.TAG_NAME, "body")  # noqa: E731

    def press(keys: str, status: str) -> str:
        before = body().get_attribute("data-last")
        ActionChains(drv).send_keys(keys).perform()
        assert wait_for(lambda: body().get_attribute("data-last") not in (None, before), 10)
        key, _, got = (body().get_attribute("data-last") or "").partition(":")
        assert got == status
        return key

    try:
        drv.get(f"{col.url}/api/review/items")
        assert "login required" in drv.page_source  # no token, no data
        drv.get(f"{col.url}/review?token={TOKEN}")
        assert wait_for(lambda: body().get_attribute("data-ready") == "1", 15), drv.page_source[:500]
        k1 = press("a", "accepted")
        time.sleep(0.3)  # the next frame's image loads
        canvas = drv.find_element(By.ID, "view")
        w, h = canvas.size["width"], canvas.size["height"]
        ActionChains(drv).send_keys("Delete").perform()  # nothing selected: no-op
        (ActionChains(drv).move_to_element_with_offset(canvas, int(-w * 0.45), int(-h * 0.45)).click_and_hold()
         .move_by_offset(int(w * 0.2), int(h * 0.2)).release().perform())  # draw a box in the top-left corner
        ActionChains(drv).send_keys("1").perform()  # the drawn (selected) box becomes class 1
        drv.save_screenshot(str(artifacts_dir / "review.png"))
        k2 = press("a", "corrected")
        k3 = press("r", "rejected")
    finally:
        drv.quit()
        col.stop()
    assert (ds / "labels" / f"{k1}.txt").read_text() == review.yolo_lines(review.load_item(ds, k1).boxes)
    drawn = review.load_item(ds, k2).boxes[-1]
    assert drawn.class_id == 1 and drawn.score is None and drawn.box[0] < 0.2 and drawn.box[1] < 0.2
    assert (ds / "labels" / f"{k2}.txt").read_text().splitlines()[-1].startswith("1 ")
    assert review.load_item(ds, k3).status == "rejected" and not (ds / "labels" / f"{k3}.txt").exists()


@pytest.mark.builder
@builder_only
def test_the_dashboard_mounts_the_review_tab(harvested: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """`edge-builder dashboard --review DATASET`: the page and its API on the dashboard, behind its token."""
    import http.client

    from test_dashboard_access import _dashboard

    from builder.flywheel.review_http import ReviewRoutes

    ds = tmp_path / "ds"
    shutil.copytree(harvested[1], ds)
    access = AccessPolicy(TOKEN)
    for d in ("plain", "review"):
        (tmp_path / d).mkdir()
    plain = _dashboard(tmp_path / "plain", None, access=AccessPolicy(TOKEN))
    dash = _dashboard(tmp_path / "review", None, access=access, mounted=[ReviewRoutes(ds, access)])

    def call(d: object, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
        c = http.client.HTTPConnection("127.0.0.1", d.port, timeout=10)  # type: ignore[attr-defined]
        c.request(method, path, body=body, headers={"Host": f"127.0.0.1:{d.port}", **headers})  # type: ignore[attr-defined]
        r = c.getresponse()
        out = r.status, r.read()
        c.close()
        return out

    try:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert call(plain, "GET", "/review", {})[0] == 404  # no --review: no tab
        status, page = call(dash, "GET", "/review", {})
        assert status == 200 and b"review.js" in page
        assert call(dash, "GET", "/api/review/items", {})[0] == 401
        items = json.loads(call(dash, "GET", "/api/review/items", auth)[1])["items"]
        assert len(items) == N
        key = items[0]["key"]
        post = {**auth, "Content-Type": "application/json", "Origin": f"http://127.0.0.1:{dash.port}"}
        assert call(dash, "POST", f"/api/review/item?key={key}", {**post, "Origin": "http://evil.example"},
                    b'{"action": "accept"}')[0] == 403
        status, body = call(dash, "POST", f"/api/review/item?key={key}", post, b'{"action": "accept"}')
        assert status == 200 and json.loads(body)["status"] == "accepted"
        assert json.loads(call(dash, "GET", "/api/state", auth)[1]) is not None  # the dashboard's own API still answers
        # The header's link: listed for a logged-in browser only where the tab is mounted.
        assert json.loads(call(dash, "GET", "/api/session", auth)[1])["tabs"] == [["review", "/review"]]
        assert json.loads(call(plain, "GET", "/api/session", auth)[1])["tabs"] == []
    finally:
        dash.stop()
        plain.stop()


@pytest.mark.slow
def test_a_real_daemon_captures_and_uploads_on_request(collector: Collector, mqtt_broker: Any, trained_bundle: Path,
                                                       trained_bundle_keys: Path, tmp_path: Path) -> None:
    """`edge-agent run` with [capture]: the daemon wires the sink and the uploader; a retained request on its
    topic sends the ring to the collector and a retained status says how many went."""
    import paho.mqtt.client as mqtt
    import paho.mqtt.publish as publish
    from helpers_nodes import node_config, spawn_agent, stop_all
    from paho.mqtt.enums import CallbackAPIVersion

    from agent.protocol.manifest import MANIFEST_NAME
    from builder.data.synth import make_video

    names = json.loads((trained_bundle / MANIFEST_NAME).read_text())["class_names"]
    video = tmp_path / "camera.avi"
    make_video(video, n_frames=40, size=(320, 240), fps=5, classes=names, seed=5, write_json=False)
    cfg = node_config("cap-1", tmp_path, mqtt_broker.url, trained_bundle, trained_bundle_keys, video)
    (tmp_path / "token").write_text(collector.credentials.add("cap-1") + "\n")
    cfg.write_text(cfg.read_text() + f"""
[capture]
enabled = true
band = [0.0, 1.0]
rate_per_min = 600.0
burst = 5
max_frames = 8
collector_url = "{collector.url}"
credential_file = "{tmp_path / 'token'}"
""")
    statuses: list[dict[str, Any]] = []
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="capture-status-watch", protocol=mqtt.MQTTv5)
    watcher.on_message = lambda c, u, msg: statuses.append(json.loads(msg.payload)) if msg.payload else None
    watcher.on_connect = lambda c, u, f, rc, p: c.subscribe("edgefleet/node/cap-1/capture/status", qos=1)
    watcher.connect(mqtt_broker.host, mqtt_broker.port)
    watcher.loop_start()
    procs = [spawn_agent(cfg, tmp_path / "cap-1.log")]
    try:
        ring = tmp_path / "cap-1" / "capture"
        assert wait_for(lambda: len(list(ring.glob("*.json"))) >= 3, 60), (tmp_path / "cap-1.log").read_text()[-3000:]
        publish.single(upload_topics("edgefleet", "cap-1")[0], json.dumps({"request_id": "e2e"}), retain=True,
                       hostname=mqtt_broker.host, port=mqtt_broker.port)
        assert wait_for(lambda: len(collected(collector.root)) >= 3, 60), (tmp_path / "cap-1.log").read_text()[-3000:]
        metas = [m for m, _ in collected(collector.root)]
        assert {m.node for m in metas} == {"cap-1"} and all("band" in m.reasons for m in metas)
        assert wait_for(lambda: any(st.get("request_id") == "e2e" and st.get("sent", 0) >= 3 for st in statuses), 30)
    finally:
        stop_all(procs)
        watcher.loop_stop()
        watcher.disconnect()
