"""Load test of the running demo: N concurrent clients calling /segment on 127.0.0.1.

    python benchmarks/app_load.py                      # launches `python app.py` on a free port, 20 x 5
    python benchmarks/app_load.py --app-args --preset tiny           # quick smoke run
    python benchmarks/app_load.py --client gradio_client             # one gradio_client thread per client
    python benchmarks/app_load.py --url http://127.0.0.1:7860/ --pid 1234   # attach to a running app
    python benchmarks/app_load.py --big-uploads 30 --big-mp 30     # then 30 uploads of distinct ~30 MP photos

Bounded: each client makes --requests requests (default 5), each request has a timeout, and the whole
run has a deadline (--deadline s); then it stops by itself. Loopback only: any other host is refused.
Reports wall-clock latency per request (p50/p95/max, what a client waits, queueing included), the
server's model time per request (latency_ms from the JSON), errors, throughput and the server's peak
memory (psutil if installed, else VmHWM from /proc/<pid>/status). The server it launched is stopped.

--big-uploads N: after the load, N sequential /segment requests, each with a DIFFERENT synthetic photo of
about --big-mp megapixels (a bundled example upscaled, with a moving patch so no two files are equal,
JPEG q90, written to a temporary folder and removed afterwards); the server's RSS is reported after them
(the issue: memory grew from ~950 MB to 1.3-1.5 GB over a session of large uploads).
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Dict, List, Optional

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "assets" / "examples"
TEXTS = ["the red circle", "all squares", "the two shapes on the left", "everything but the stars",
         "the purple elephant", "the big shape at the bottom", "the cat", "the woman", "the cup of coffee"]


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_seconds(pid: Optional[int]) -> Optional[float]:
    """User + system CPU seconds of a process (all its threads) from /proc/<pid>/stat, or None."""
    if not pid:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def peak_memory_mb(pid: int) -> Dict[str, Optional[float]]:
    """Peak and current resident memory of a process (MB)."""
    try:
        import psutil  # type: ignore

        p = psutil.Process(pid)
        info = p.memory_info()
        peak = getattr(info, "peak_wset", None)  # Windows only; Linux falls back to /proc below
        if peak is not None:
            return {"peak_rss_mb": peak / 2**20, "rss_mb": info.rss / 2**20, "source": "psutil"}
    except Exception:
        pass
    out: Dict[str, Optional[float]] = {"peak_rss_mb": None, "rss_mb": None, "source": "/proc"}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out["peak_rss_mb"] = int(line.split()[1]) / 1024
            elif line.startswith("VmRSS:"):
                out["rss_mb"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


def wait_ready(url: str, proc: Optional[subprocess.Popen], timeout: float) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the app exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "config", timeout=5) as r:
                if r.status == 200:
                    return
        except Exception:
            time.sleep(1.0)
    raise SystemExit(f"the app at {url} was not ready after {timeout:.0f} s")


def percentile(values: List[float], q: float) -> Optional[float]:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _load_inputs(requests: int, unique_texts: bool):
    """input_for(client, i) -> (image path, text) of that client's i-th request, the same for every client kind."""
    images = sorted(p for p in EXAMPLES.iterdir() if p.suffix in (".png", ".jpg"))[:4] or [EXAMPLES / "scene.png"]

    def input_for(cid: int, i: int):
        text = TEXTS[(cid * requests + i) % len(TEXTS)]
        if unique_texts:  # defeat the per-(image, text) output cache: every request is new model work
            text += f" number {cid * requests + i}"
        return images[(cid + i) % len(images)], text
    return input_for


def _summary(clients: int, requests: int, unique_texts: bool, client_kind: str, walls: List[float],
             model_ms: List[float], errors: List[str], elapsed: float) -> dict:
    return {
        "client": client_kind, "clients": clients, "requests_per_client": requests, "unique_texts": unique_texts,
        "completed": len(walls), "errors": len(errors),
        "error_samples": errors[:5], "elapsed_s": round(elapsed, 1),
        "throughput_rps": round(len(walls) / elapsed, 2) if elapsed > 0 else None,
        "wall_ms": {"p50": percentile(walls, 0.5), "p95": percentile(walls, 0.95), "max": max(walls, default=None)},
        "model_ms": {"p50": percentile(model_ms, 0.5), "p95": percentile(model_ms, 0.95),
                     "mean": statistics.fmean(model_ms) if model_ms else None},
    }


def run_load_http(url: str, clients: int, requests: int, deadline_s: float, timeout_s: float,
                  unique_texts: bool = True) -> dict:
    """The load as a browser makes it, over Gradio's HTTP API, all clients on one asyncio loop (httpx).

    Each request: upload the image (POST gradio_api/upload), start /segment (POST gradio_api/call/segment),
    read its server-sent events until `complete` or `error`, then download the mask PNG. Each client keeps
    one session hash for its requests, as a browser tab does (gradio_client does too). One event loop
    costs the machine far less CPU than N gradio_client threads, which matters when the load generator
    shares the server's cores.
    """
    import asyncio

    import httpx

    input_for = _load_inputs(requests, unique_texts)
    walls: List[float] = []
    model_ms: List[float] = []
    errors: List[str] = []
    end = time.time() + deadline_s
    payloads = {}

    async def segment(c: "httpx.AsyncClient", image: Path, text: str, session: str) -> dict:
        if image not in payloads:
            payloads[image] = image.read_bytes()
        r = await c.post(url + "gradio_api/upload", files={"files": (image.name, payloads[image])})
        r.raise_for_status()
        data = [{"path": r.json()[0], "meta": {"_type": "gradio.FileData"}}, text, 0.5]
        r = await c.post(url + "gradio_api/call/segment", json={"data": data, "session_hash": session})
        r.raise_for_status()
        event = None
        async with c.stream("GET", url + f"gradio_api/call/segment/{r.json()['event_id']}") as s:
            async for line in s.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event in ("complete", "error"):
                    out = json.loads(line[5:])
                    if event == "error":
                        raise RuntimeError(f"server error: {out}")
                    mask, info = out
                    (await c.get(mask["url"])).raise_for_status()  # what a client does with the answer
                    return info
        raise RuntimeError(f"the event stream ended without a result (last event {event!r})")

    async def client_loop(c: "httpx.AsyncClient", cid: int, start: "asyncio.Event") -> None:
        await start.wait()
        session = f"load-{cid}-{uuid.uuid4().hex[:10]}"  # one per client, as a browser tab keeps one
        for i in range(requests):
            if time.time() > end:
                errors.append(f"client {cid}: deadline reached before request {i}")
                break
            image, text = input_for(cid, i)
            t0 = time.perf_counter()
            try:
                limit = max(1.0, min(timeout_s, end - time.time()))
                info = await asyncio.wait_for(segment(c, image, text, session), limit)
                walls.append((time.perf_counter() - t0) * 1000)
                model_ms.append(float(info["latency_ms"]))
            except Exception as exc:
                errors.append(f"client {cid} request {i}: {type(exc).__name__}: {exc}"[:300])

    async def main() -> float:
        limits = httpx.Limits(max_connections=2 * clients + 4)
        async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as c:
            start = asyncio.Event()
            tasks = [asyncio.create_task(client_loop(c, cid, start)) for cid in range(clients)]
            t0 = time.time()
            start.set()
            await asyncio.gather(*tasks)
            return time.time() - t0

    elapsed = asyncio.run(main())
    return _summary(clients, requests, unique_texts, "http", walls, model_ms, errors, elapsed)


def run_load(url: str, clients: int, requests: int, deadline_s: float, timeout_s: float,
             unique_texts: bool = True) -> dict:
    """The load from N gradio_client.Client objects, one thread each (heavier on the client side)."""
    from gradio_client import Client, handle_file

    input_for = _load_inputs(requests, unique_texts)
    lock = threading.Lock()
    walls: List[float] = []
    model_ms: List[float] = []
    errors: List[str] = []
    end = time.time() + deadline_s
    start_barrier = threading.Barrier(clients)

    def client_loop(cid: int) -> None:
        try:
            client = Client(url, verbose=False)
        except Exception as exc:
            with lock:
                errors.append(f"client {cid}: connect: {exc}")
            start_barrier.abort()
            return
        try:
            start_barrier.wait(timeout=120)
        except threading.BrokenBarrierError:
            pass
        for i in range(requests):
            if time.time() > end:
                with lock:
                    errors.append(f"client {cid}: deadline reached before request {i}")
                break
            image, text = input_for(cid, i)
            t0 = time.perf_counter()
            try:
                job = client.submit(handle_file(str(image)), text, 0.5, api_name="/segment")
                _mask, info = job.result(timeout=max(1.0, min(timeout_s, end - time.time())))
                with lock:
                    walls.append((time.perf_counter() - t0) * 1000)
                    model_ms.append(float(info["latency_ms"]))
            except Exception as exc:
                with lock:
                    errors.append(f"client {cid} request {i}: {type(exc).__name__}: {exc}"[:300])
        try:
            client.close()
        except Exception:
            pass

    t0 = time.time()
    threads = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=max(0.0, end - time.time()) + timeout_s + 30)
    elapsed = time.time() - t0
    return _summary(clients, requests, unique_texts, "gradio_client", walls, model_ms, errors, elapsed)


def make_big_photos(folder: Path, n: int, megapixels: float) -> List[Path]:
    """n distinct ~megapixels JPEGs from a bundled example (upscaled; a patch moves with the index)."""
    import cv2
    import numpy as np

    src = next((p for p in (EXAMPLES / "astronaut.jpg", EXAMPLES / "coffee.jpg", EXAMPLES / "scene.png")
                if p.is_file()), None)
    base = cv2.imread(str(src)) if src else np.full((480, 640, 3), 128, np.uint8)
    w = int(round((megapixels * 1e6 * 4 / 3) ** 0.5))
    h = int(round(w * 3 / 4))
    big = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    paths = []
    for i in range(n):
        img = big.copy()
        x = (i * 997) % max(1, w - 400)
        cv2.rectangle(img, (x, 100), (x + 300, 400), (0, (37 * i) % 256, 255 - (53 * i) % 256), -1)
        path = folder / f"big-{i:03d}.jpg"
        cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(path)
    return paths


def run_big_uploads(url: str, paths: List[Path], timeout_s: float) -> dict:
    """Sequential /segment calls, one per file; what a session of large uploads does to the server."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    walls, errors = [], []
    for i, path in enumerate(paths):
        t0 = time.perf_counter()
        try:
            _mask, info = client.submit(handle_file(str(path)), "the woman on the left", 0.5,
                                        api_name="/segment").result(timeout=timeout_s)
            walls.append((time.perf_counter() - t0) * 1000)
        except Exception as exc:
            errors.append(f"upload {i}: {type(exc).__name__}: {exc}"[:300])
    client.close()
    return {"uploads": len(paths), "completed": len(walls), "errors": len(errors), "error_samples": errors[:3],
            "wall_ms": {"p50": percentile(walls, 0.5), "max": max(walls, default=None)}}


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="attach to a running app (loopback only) instead of launching one")
    ap.add_argument("--pid", type=int, help="the attached app's process id, for its memory")
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--requests", type=int, default=5, help="requests per client")
    ap.add_argument("--deadline", type=float, default=600.0, help="stop everything after this many seconds")
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request timeout (s)")
    ap.add_argument("--startup-timeout", type=float, default=300.0)
    ap.add_argument("--repeat-texts", action="store_true",
                    help="reuse a few texts (cache hits) instead of a new text per request")
    ap.add_argument("--client", choices=("http", "gradio_client"), default="http",
                    help="http: all clients on one asyncio loop over Gradio's HTTP API (light); gradio_client: "
                         "one gradio_client.Client thread per client (heavier on these shared cores)")
    ap.add_argument("--big-uploads", type=int, default=0, help="then this many uploads of distinct large photos")
    ap.add_argument("--big-mp", type=float, default=30.0, help="megapixels of each large photo")
    ap.add_argument("--json", help="also write the summary here")
    ap.add_argument("--server-log", help="write the launched app's output here (default: discarded)")
    ap.add_argument("--app-args", nargs=argparse.REMAINDER, default=[], help="extra arguments for app.py")
    args = ap.parse_args(argv)

    proc = None
    if args.url:
        url = args.url if args.url.endswith("/") else args.url + "/"
        if not _is_loopback(url):
            raise SystemExit(f"refusing to load-test {url}: only 127.0.0.1 / localhost / ::1 are allowed")
        pid = args.pid
    else:
        port = _free_port()
        url = f"http://127.0.0.1:{port}/"
        env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        log = open(args.server_log or os.devnull, "w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port),
                                 *args.app_args], cwd=str(ROOT), env=env, stdout=log, stderr=subprocess.STDOUT)
        pid = proc.pid
    try:
        t0 = time.time()
        wait_ready(url, proc, args.startup_timeout)
        startup = time.time() - t0
        idle = peak_memory_mb(pid) if pid else {}
        cpu0, own0 = cpu_seconds(pid), os.times()
        runner = run_load_http if args.client == "http" else run_load
        summary = runner(url, args.clients, args.requests, args.deadline, args.timeout,
                         unique_texts=not args.repeat_texts)
        cpu1, own1 = cpu_seconds(pid), os.times()
        if cpu0 is not None and cpu1 is not None and summary["completed"]:
            # CPU seconds the server spent per answered request (all its threads) and what the load
            # generator itself spent: on a machine of its own, the server alone would answer about
            # cores / server_cpu_s requests per second
            summary["server_cpu_ms_per_request"] = round(1000 * (cpu1 - cpu0) / summary["completed"], 1)
            summary["client_cpu_ms_per_request"] = round(
                1000 * ((own1.user + own1.system) - (own0.user + own0.system)) / summary["completed"], 1)
        summary["startup_s"] = round(startup, 1) if proc else None
        summary["memory_before_load"] = idle
        summary["memory"] = peak_memory_mb(pid) if pid else {"note": "pass --pid to report the server's memory"}
        if args.big_uploads > 0:
            import tempfile

            with tempfile.TemporaryDirectory(prefix="mabp-big-") as tmp:
                t1 = time.time()
                paths = make_big_photos(Path(tmp), args.big_uploads, args.big_mp)
                print(f"made {len(paths)} photos of {args.big_mp:g} MP in {time.time() - t1:.0f} s", file=sys.stderr)
                summary["big_uploads"] = run_big_uploads(url, paths, args.timeout)
            summary["big_uploads"]["megapixels"] = args.big_mp
            summary["memory_after_big_uploads"] = peak_memory_mb(pid) if pid else {}
        summary["url"] = url
        summary["server_alive_after"] = proc is None or proc.poll() is None
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    w, m = summary["wall_ms"], summary["model_ms"]
    fmt = lambda v: "n/a" if v is None else f"{v:.0f}"  # noqa: E731
    print(f"{summary['completed']}/{args.clients * args.requests} requests in {summary['elapsed_s']} s "
          f"({summary['throughput_rps']} req/s), {summary['errors']} errors")
    print(f"wall latency  p50 {fmt(w['p50'])} ms, p95 {fmt(w['p95'])} ms, max {fmt(w['max'])} ms")
    print(f"model time    p50 {fmt(m['p50'])} ms, p95 {fmt(m['p95'])} ms")
    if "server_cpu_ms_per_request" in summary:
        print(f"CPU per request: server {summary['server_cpu_ms_per_request']:.0f} ms, load generator "
              f"{summary['client_cpu_ms_per_request']:.0f} ms (both on this machine's {os.cpu_count()} cores)")
    mem = summary["memory"]
    if mem.get("peak_rss_mb"):
        print(f"server memory peak {mem['peak_rss_mb']:.0f} MB (idle {summary['memory_before_load'].get('rss_mb') or 0:.0f} MB, "
              f"{mem['source']})")
    if "memory_after_big_uploads" in summary:
        b, mb = summary["big_uploads"], summary["memory_after_big_uploads"]
        print(f"{b['completed']}/{b['uploads']} uploads of {b['megapixels']:g} MP, {b['errors']} errors, wall p50 "
              f"{fmt(b['wall_ms']['p50'])} ms; server memory now {mb.get('rss_mb') or 0:.0f} MB, "
              f"peak {mb.get('peak_rss_mb') or 0:.0f} MB")
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    big_errors = summary.get("big_uploads", {}).get("errors", 0)
    return 0 if summary["errors"] == 0 and big_errors == 0 and summary["server_alive_after"] else 1


if __name__ == "__main__":
    sys.exit(main())
