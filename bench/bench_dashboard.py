"""Dashboard under load: N SIMULATED nodes publish telemetry (and detections) every second through a real
Mosquitto; `edge-builder dashboard` runs as its own process. Measured, at each fleet size (default 50 and 1,000):

- staleness: for every telemetry message that reaches a page, arrival time minus the node's timestamp in
  it. Read from the SSE stream by this script (what EventSource receives), and, with --browser, inside
  headless Chromium by the page's own code: on arrival (window.dashboard.lags) and when a row in view shows
  it (window.nodeTable.shownLags); the page is scrolled through the node table meanwhile, and a row coming
  into view is timed separately (catch-up: into view -> drawn).
- Chromium's CPU (all its processes, % of one core) and its renderer's main-thread busy time;
- the dashboard process's CPU (user+system over wall time, % of one core) and RSS, idle and under load;
- a staged rollout (builder.rollout's engine in-process, --waves, --soak) to every simulated node, which
  answers like a node (loadgen): its wall time, whether it completed, the engine's slowest tick.

The nodes are builder.dashboard.loadgen's load generator: real payload models, made-up figures. Targets (in
bench/targets.py, from issues 8 and 12): page staleness p95 <= 1 s and max <= 2 s, Chromium <= 50 % of a core,
server RSS <= 300 MB, the rollout completed.

    python bench/bench_dashboard.py [--nodes 50,1000] [--duration 30] [--no-browser] [--no-rollout]

Writes bench/results/dashboard.json (50 nodes) and dashboard_N.json (other sizes); exit status 3 when a target
is missed.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from rollout_sim import run_rollout
from targets import (
    DASHBOARD_MAX_STALENESS_S,
    DASHBOARD_P95_SHOWN_S,
    DASHBOARD_PAGE_CPU_PERCENT,
    DASHBOARD_SERVER_RSS_MB,
    Target,
    finish,
)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.protocol.topics import Topics  # noqa: E402
from builder.fleet.devservices import LocalBroker, free_port, wait_port  # noqa: E402


def dashboard_cmd() -> list[str]:
    """`edge-builder dashboard`, run with this interpreter."""
    return [sys.executable, "-m", "builder.cli", "dashboard"]


class SSEProbe(threading.Thread):
    """Reads /api/events like a page would and records each telemetry message's delay."""

    def __init__(self, port: int, token: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.token = token
        self.lags: list[float] = []
        self.events = 0
        self.bytes = 0
        self.recording = False
        self.stop_flag = threading.Event()
        self._seen: dict[str, float] = {}

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.request("GET", "/api/events", headers={"Authorization": f"Bearer {self.token}"})
        resp = conn.getresponse()  # keep a reference: a collected response closes the stream
        while not self.stop_flag.is_set():
            line = resp.fp.readline()
            if not line:
                return
            if not line.startswith(b"data: "):
                continue
            now = time.time()
            ev = json.loads(line[6:])
            if not self.recording:
                continue
            self.events += 1
            self.bytes += len(line)
            for n in ev["nodes"]:
                t = n.get("telemetry")
                if t and self._seen.get(n["id"]) != t["ts"]:
                    self._seen[n["id"]] = t["ts"]
                    self.lags.append(now - t["ts"])


class FleetProcess:
    """The load generator in its own process, as real nodes are: its thousand MQTT connections and threads must
    not compete for this process's GIL with the SSE probe and the rollout engine being measured."""

    def __init__(self, broker_url: str, nodes: int, interval_s: float, update_delay_s: float) -> None:
        self.cmd = [sys.executable, "-m", "builder.dashboard.loadgen", "--broker", broker_url, "--nodes", str(nodes),
                    "--interval", str(interval_s), "--update-delay", str(update_delay_s), "--exit-with-stdin"]
        self.proc: subprocess.Popen[str] | None = None
        self.rounds: int | None = None

    def start(self) -> FleetProcess:
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"the load generator did not start: {line!r}")
        return self

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.rounds = next((int(x.split()[1]) for x in out.splitlines() if x.startswith("rounds ")), None)


def cpu_seconds(p: psutil.Process) -> float:
    t = p.cpu_times()
    return float(t.user + t.system)


def measure_cpu(p: psutil.Process, seconds: float) -> tuple[float, float]:
    """(% of one core, RSS MB) of process p over `seconds`."""
    c0, w0 = cpu_seconds(p), time.monotonic()
    time.sleep(seconds)
    c1, w1 = cpu_seconds(p), time.monotonic()
    return 100.0 * (c1 - c0) / (w1 - w0), p.memory_info().rss / 2**20


def stats(xs: list[float]) -> dict[str, float | int | None]:
    if not xs:
        return {"n": 0, "p50_s": None, "p95_s": None, "max_s": None}
    s = sorted(xs)
    return {"n": len(s), "p50_s": round(statistics.median(s), 4), "p95_s": round(s[int(0.95 * (len(s) - 1))], 4),
            "max_s": round(s[-1], 4)}


SCROLL_AT = (0.0, 0.5, 0.15, 0.85, 0.35, 1.0, 0.6, 0.05, 0.75, 0.25)  # of the node table's height, one every 2 s


# Diagnostic pass: the page with its "Latest detections" cards switched off (app.js draws one card per node; at
# 1,000 nodes that section, not the node table, is most of the page's work). Not the page operators get.
NO_CARDS = "window.renderDetections = () => {}; document.getElementById('detections').replaceChildren()"


def browser_page(url: str, seconds: float, setup: str | None = None) -> dict[str, Any]:
    """Open the page in headless Chromium for `seconds`, scrolling through the node table every 2 s: the page's own
    staleness samples, Chromium's CPU (all processes) and the renderer's main-thread busy time (CDP)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="edge-bench-chromium-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    drv = webdriver.Chrome(options=opts, service=Service("/usr/bin/chromedriver"))
    try:
        drv.get(url)
        time.sleep(5)  # page load + snapshot (megabytes at 1,000 nodes); not counted
        if setup:
            drv.execute_script(setup)
        drv.execute_script("window.dashboard.lags.length = 0; window.nodeTable.shownLags.length = 0;"
                           "window.nodeTable.catchUps.length = 0")
        drv.execute_cdp_cmd("Performance.enable", {})
        busy0 = _task_seconds(drv)
        procs = [p for p in psutil.Process(drv.service.process.pid).children(recursive=True)]
        c0 = sum(cpu_seconds(p) for p in procs if p.is_running())
        t0 = time.monotonic()
        for i in range(max(1, int(seconds / 2))):
            drv.execute_script("const t = document.querySelector('#nodes');"
                               "window.scrollTo(0, t.offsetTop + arguments[0] * (t.offsetHeight - innerHeight))",
                               SCROLL_AT[i % len(SCROLL_AT)])
            time.sleep(max(0.0, t0 + 2 * (i + 1) - time.monotonic()))
        wall = time.monotonic() - t0
        c1 = sum(cpu_seconds(p) for p in procs if p.is_running())
        busy = _task_seconds(drv) - busy0
        page = drv.execute_script("return {arrival: window.dashboard.lags.slice(), shown: window.nodeTable.shownLags."
                                  "slice(), catchUps: window.nodeTable.catchUps.slice(), rows: document."
                                  "querySelectorAll('#nodes tbody tr[data-node]').length}")
        errors = [e["message"] for e in drv.get_log("browser") if e["level"] == "SEVERE"]
        return {"arrival": stats(page["arrival"]), "shown": stats(page["shown"]), "catch_up": stats(page["catchUps"]),
                "rows": page["rows"], "chromium_cpu_percent": round(100.0 * (c1 - c0) / wall, 1),
                "main_thread_busy_percent": round(100.0 * busy / wall, 1), "page_errors": errors[:5]}
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _task_seconds(drv: Any) -> float:
    metrics = drv.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    return float(next(m["value"] for m in metrics if m["name"] == "TaskDuration"))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", default="50,1000", help="fleet sizes, comma-separated (default 50,1000)")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between each node's telemetry")
    ap.add_argument("--duration", type=float, default=30.0, help="measurement window in seconds")
    ap.add_argument("--browser", action=argparse.BooleanOptionalAction, default=None,
                    help="also measure inside headless Chromium (default: when chromium and selenium exist)")
    ap.add_argument("--rollout", action=argparse.BooleanOptionalAction, default=True,
                    help="also run a staged rollout to every simulated node (default on)")
    ap.add_argument("--waves", default="1,10%,rest", help="the rollout's waves (default 1,10%%,rest)")
    ap.add_argument("--soak", type=float, default=3.0, help="the rollout's soak per wave, seconds (default 3)")
    ap.add_argument("--max-staleness", type=float, default=DASHBOARD_MAX_STALENESS_S,
                    help=f"target: the largest staleness seen, seconds ({DASHBOARD_MAX_STALENESS_S:g})")
    ap.add_argument("--out", type=Path, default=None,
                    help="result file of a single size (default bench/results/dashboard[_N].json)")
    args = ap.parse_args()
    args.sizes = [int(x) for x in args.nodes.split(",") if x.strip()]
    if args.browser is None:
        import importlib.util

        args.browser = (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()
                        and importlib.util.find_spec("selenium") is not None)
    return args


def measure(args: argparse.Namespace, nodes: int, dash: psutil.Process, port: int, fleet: FleetProcess,
            rollout: Callable[[], dict[str, Any]] | None) -> dict[str, Any]:
    """Idle, then under the simulated fleet's load: staleness (SSE, and the page's own), server CPU and RSS;
    then the staged rollout."""
    idle_cpu, idle_rss = measure_cpu(dash, 3.0)
    started = time.monotonic()
    fleet.start()
    start_s = time.monotonic() - started
    probe = SSEProbe(port, args.token)
    probe.start()
    time.sleep(3.0)  # every node online and sending; the first snapshot is not a measurement
    probe.recording = True
    load_cpu, load_rss = measure_cpu(dash, args.duration)
    probe.recording = False
    probe.stop_flag.set()
    url, window = f"http://127.0.0.1:{port}/?token={args.token}", min(args.duration, 20.0)
    page = browser_page(url, window) if args.browser else None
    no_cards = browser_page(url, window, NO_CARDS) if args.browser else None
    rss_after_page = dash.memory_info().rss / 2**20
    return {
        "nodes": nodes, "interval_s": args.interval, "duration_s": args.duration,
        "telemetry_msgs_per_s": round(nodes / args.interval, 1), "loadgen_start_s": round(start_s, 1),
        "sse": {**stats(probe.lags), "events_per_s": round(probe.events / args.duration, 2),
                "kbytes_per_s": round(probe.bytes / args.duration / 1024, 1),
                "expected_msgs": int(nodes * args.duration / args.interval)},
        "browser": page,
        "browser_without_detection_cards": no_cards,
        "server_cpu_percent": {"idle": round(idle_cpu, 2), "load": round(load_cpu, 2)},
        "server_rss_mb": {"idle": round(idle_rss, 1), "load": round(max(load_rss, rss_after_page), 1)},
        "rollout": _rollout(rollout) if rollout else None,
        "target_staleness_s": args.max_staleness,
        "uptime_load": [round(x, 2) for x in os.getloadavg()],
        "host": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "note": "nodes are a load generator (builder.dashboard.loadgen): real MQTT, made-up figures",
    }


def _rollout(run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The rollout's figures; a rollout that cannot run is a missed target, not a lost measurement."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - reported in the result and judged as "not completed"
        return {"completed": False, "phase": "error", "error": f"{type(exc).__name__}: {exc}"}


def _ms(s: dict[str, Any] | None) -> str:
    if not s or not s["n"]:
        return "-"
    return f"{s['p50_s'] * 1000:.0f} / {s['p95_s'] * 1000:.0f} / {s['max_s'] * 1000:.0f}"


def rows_of(r: dict[str, Any]) -> list[tuple[str, str]]:
    b, ro, nc = r.get("browser") or {}, r.get("rollout") or {}, r.get("browser_without_detection_cards") or {}
    return [
        ("telemetry in (msg/s, + as many detections)", str(r["telemetry_msgs_per_s"])),
        ("staleness via SSE p50/p95/max (ms)", _ms(r["sse"])),
        ("page: arrival p50/p95/max (ms)", _ms(b.get("arrival"))),
        ("page: shown in view p50/p95/max (ms)", _ms(b.get("shown"))),
        ("page: scrolled row drawn p50/p95/max (ms)", _ms(b.get("catch_up"))),
        ("Chromium CPU (% of a core)", str(b.get("chromium_cpu_percent", "-"))),
        ("renderer main thread busy (%)", str(b.get("main_thread_busy_percent", "-"))),
        ("  without the detection cards: CPU, busy (%)", f"{nc.get('chromium_cpu_percent', '-')}, "
                                                       f"{nc.get('main_thread_busy_percent', '-')}"),
        ("  without the detection cards: shown p50/p95/max", _ms(nc.get("shown"))),
        ("SSE events/s, KiB/s", f"{r['sse']['events_per_s']}, {r['sse']['kbytes_per_s']}"),
        ("server CPU idle -> load (% of a core)", f"{r['server_cpu_percent']['idle']} -> {r['server_cpu_percent']['load']}"),
        ("server RSS idle -> load (MB)", f"{r['server_rss_mb']['idle']} -> {r['server_rss_mb']['load']}"),
        ("rollout waves, outcome", f"{ro.get('wave_sizes', '-')} {ro.get('phase', '-')}"),
        ("rollout wall time (s), slowest tick (s)", f"{ro.get('wall_s', '-')}, {ro.get('slowest_tick_s', '-')}"),
        ("load average (1/5/15 min)", " ".join(str(x) for x in r["uptime_load"])),
    ]


def print_side_by_side(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nDashboard bench: simulated nodes, telemetry every {args.interval:g} s, {args.duration:g} s window")
    cols = [rows_of(r) for r in results]
    w = max(len(k) for k, _ in cols[0])
    vw = [max(len(v) for _, v in c) + 2 for c in cols]
    print("  " + "".ljust(w) + "".join(f"{str(r['nodes']) + ' nodes':>{x}}" for r, x in zip(results, vw, strict=True)))
    for i, (k, _) in enumerate(cols[0]):
        print("  " + k.ljust(w) + "".join(f"{c[i][1]:>{x}}" for c, x in zip(cols, vw, strict=True)))


def targets_of(r: dict[str, Any], args: argparse.Namespace) -> list[Target]:
    n = r["nodes"]
    out = [Target(f"{n} nodes: staleness via SSE, max", r["sse"]["max_s"], args.max_staleness, at_most=True, unit=" s"),
           Target(f"{n} nodes: server RSS", r["server_rss_mb"]["load"], DASHBOARD_SERVER_RSS_MB, True, " MB")]
    if r["browser"]:
        b = r["browser"]
        out += [Target(f"{n} nodes: staleness in Chromium (arrival), max", b["arrival"]["max_s"], args.max_staleness,
                       at_most=True, unit=" s"),
                Target(f"{n} nodes: staleness in Chromium (shown in view), p95", b["shown"]["p95_s"],
                       DASHBOARD_P95_SHOWN_S, at_most=True, unit=" s"),
                Target(f"{n} nodes: Chromium rendering CPU", b["chromium_cpu_percent"], DASHBOARD_PAGE_CPU_PERCENT,
                       at_most=True, unit=" %"),
                Target(f"{n} nodes: page errors", len(b["page_errors"]), 0, at_most=True)]
    if r["rollout"]:
        out.append(Target(f"{n} nodes: staged rollout completed", float(r["rollout"]["completed"]), 1, at_most=False))
    return out


def run_size(args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    """One fleet size on its own broker and dashboard process."""
    topics = Topics()
    work = Path(tempfile.mkdtemp(prefix="edge-bench-dash-"))
    broker = LocalBroker(work / "mosquitto").start()
    port = free_port()
    args.token = secrets.token_urlsafe(24)  # the dashboard's login token, as an operator would set it
    proc = subprocess.Popen([*dashboard_cmd(), "--broker", broker.url, "--port", str(port),
                             "--audit-log", str(work / "audit.jsonl")], cwd=ROOT,
                            env={**os.environ, "EDGE_DASHBOARD_TOKEN": args.token},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Started after the idle measurement: its connections are load. Each node answers an announcement in 1 s.
    fleet = FleetProcess(broker.url, nodes, args.interval, update_delay_s=1.0)
    try:
        wait_port(port, 30)
        rollout = (lambda: run_rollout(broker.url, topics, nodes, work, args.waves, args.soak)) if args.rollout else None
        result = measure(args, nodes, psutil.Process(proc.pid), port, fleet, rollout)
        fleet.stop()
        return {**result, "loadgen_rounds": fleet.rounds}
    except BaseException:
        if proc.poll() is not None and proc.stderr:
            print(proc.stderr.read().decode(), file=sys.stderr)
        raise
    finally:
        fleet.stop()
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    args = parse_args()
    results, codes = [], []
    for nodes in args.sizes:
        print(f"== {nodes} simulated nodes", flush=True)
        result = run_size(args, nodes)
        results.append(result)
        out = args.out if args.out and len(args.sizes) == 1 else \
            ROOT / "bench" / "results" / ("dashboard.json" if nodes == 50 else f"dashboard_{nodes}.json")
        codes.append(finish(result, targets_of(result, args), out))
    print_side_by_side(results, args)
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
