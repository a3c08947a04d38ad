"""The bounded loopback load test of ``python -m mmreason.serve --loadtest``.

Starts the server twice as a child process on 127.0.0.1 (dynamic batching on, then off), each time with
the same real workload: customers from ``/customers`` and the articles the recommender gives them. Each
cell runs ``--duration`` seconds at a fixed concurrency (closed loop: every client sends its next request
when the last one returns) and reports requests/s, p50/p95/p99 latency and errors (any status but 200).
Cells: ``POST /explain`` of one article at concurrency 1, 8 and 32; ``GET recommendations?k=10`` with
reasons at concurrency 1 and 8. Results: ``<out>/cpu.md`` and ``cpu.json``.
"""
from __future__ import annotations

import asyncio
import os
import platform
import random
import socket
import subprocess
import sys
import time
from dataclasses import asdict

import numpy as np

from mmreason.io import write_report
from mmreason.machine import cpu_name
from mmreason.recsys.twotower import TwoTowerConfig

EXPLAIN_CONCURRENCY = (1, 8, 32)
RECOMMEND_CONCURRENCY = (1, 8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# serve's flags that shape what the load test measures: each server gets them, a report names those not at default
SERVER_FLAGS = ("decode", "model", "threads", "batch_threads", "parallel_from", "max_batch", "max_wait_ms")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def start_server(args, batching: bool, port: int, two_tower: TwoTowerConfig) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "mmreason.serve", "--port", str(port)]
    for name in SERVER_FLAGS:
        cmd += [_flag(name), _value(getattr(args, name))]
    cmd += ["--run", args.run] if args.run else []
    cmd += ["--recommend-dir", args.recommend_dir] if args.recommend_dir else []
    cmd += [] if batching else ["--no-batching"]
    for f, v in asdict(two_tower).items():  # the recommender the command line asked for
        cmd += [_flag(f), str(v)]
    return subprocess.Popen(cmd)


async def wait_ready(client, proc, timeout: float = 900) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if (await client.get("/health")).status_code == 200:
                return
        except Exception:  # noqa: BLE001 -- not listening yet
            pass
        await asyncio.sleep(0.5)
    raise RuntimeError("the server did not come up")


async def workload(client, n_customers: int = 40, seed: int = 0) -> list[tuple[str, int]]:
    """(customer, article) pairs: real customers and the articles the recommender ranks for them."""
    customers = [c["customer_id"] for c in (await client.get("/customers", params={"limit": 1000})).json()]
    rng = random.Random(seed)
    pairs = []
    for cid in rng.sample(customers, min(n_customers, len(customers))):
        r = await client.get(f"/customers/{cid}/recommendations", params={"k": 10, "explain": "false"})
        pairs += [(cid, a["article_id"]) for a in r.json()["articles"]]
    rng.shuffle(pairs)
    return pairs


async def cell(client, kind: str, concurrency: int, duration: float, pairs) -> dict:
    """Closed-loop clients for ``duration`` seconds -> requests/s, latency percentiles, errors."""
    latencies, errors, counter = [], 0, iter(range(10**9))
    stop = time.monotonic() + duration

    async def one(i: int):
        cid, aid = pairs[i % len(pairs)]
        if kind == "explain":
            return await client.post("/explain", json={"customer_id": cid, "article_ids": [aid]})
        return await client.get(f"/customers/{cid}/recommendations", params={"k": 10, "explain": "true"})

    async def worker():
        nonlocal errors
        while time.monotonic() < stop:
            t = time.perf_counter()
            try:
                ok = (await one(next(counter))).status_code == 200
            except Exception:  # noqa: BLE001 -- a dropped connection is an error of the server
                ok = False
            latencies.append(time.perf_counter() - t)
            errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"endpoint": "POST /explain (1 article)" if kind == "explain" else "GET recommendations k=10 + reasons",
            "concurrency": concurrency, "requests": len(ms), "seconds": round(wall, 1),
            "rps": round(len(ms) / wall, 2), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": errors}


async def measure(args, batching: bool, two_tower: TwoTowerConfig) -> tuple[list[dict], dict]:
    import httpx

    port = free_port()
    proc = start_server(args, batching, port, two_tower)
    try:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits) as client:
            await wait_ready(client, proc)
            pairs = await workload(client)
            await cell(client, "explain", 1, min(3.0, args.duration), pairs)  # warm-up, not reported
            rows = []
            for c in EXPLAIN_CONCURRENCY:
                rows.append(await cell(client, "explain", c, args.duration, pairs))
                print(f"[loadtest] batching {'on ' if batching else 'off'} {rows[-1]}", flush=True)
            for c in RECOMMEND_CONCURRENCY:
                rows.append(await cell(client, "recommend", c, args.duration, pairs))
                print(f"[loadtest] batching {'on ' if batching else 'off'} {rows[-1]}", flush=True)
            health = (await client.get("/health")).json()
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return [r | {"batching": batching} for r in rows], health


def command_line(args, defaults: dict | None) -> str:
    """The command that reproduces a report: the flags that differ from serve's ``defaults`` (the run is named
    in the report's text)."""
    flags = [f"{_flag(name)} {_value(getattr(args, name))}" for name in SERVER_FLAGS
             if defaults is not None and getattr(args, name) != defaults.get(name)]
    return " ".join(["python -m mmreason.serve --loadtest", f"--duration {args.duration:g}", *flags])


def run(args, defaults: dict | None = None, two_tower: TwoTowerConfig | None = None) -> int:
    """The load test of ``args`` (serve's options) and ``two_tower`` (its recommender); ``defaults``: serve's
    defaults, to name in the report the flags that differ from them."""
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    load_before = os.getloadavg()
    rows, health = [], {}
    for batching in (True, False):
        r, health[str(batching)] = asyncio.run(measure(args, batching, two_tower or TwoTowerConfig()))
        rows += r
    load_after = os.getloadavg()
    on = {(r["endpoint"], r["concurrency"]): r for r in rows if r["batching"]}
    off = {(r["endpoint"], r["concurrency"]): r for r in rows if not r["batching"]}
    for key, r in on.items():
        r["speedup_rps"] = round(r["rps"] / off[key]["rps"], 2) if off[key]["rps"] else None
    machine = {"cpus": os.cpu_count(), "cpu": cpu_name(), "platform": platform.platform(),
               "torch_threads": args.threads, "batch_threads": args.batch_threads,
               "parallel_from": args.parallel_from, "load_avg_before": [round(x, 2) for x in load_before],
               "load_avg_after": [round(x, 2) for x in load_after]}
    payload = {"started": started, "duration_s": args.duration, "run": args.run or "artifacts/runs/cpu",
               "decode": args.decode, "model": args.model, "max_batch": args.max_batch,
               "max_wait_ms": args.max_wait_ms, "machine": machine, "health": health, "rows": rows}
    cols = ["endpoint", "concurrency", "batching", "requests", "rps", "p50_ms", "p95_ms", "p99_ms", "errors",
            "speedup_rps"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("on" if c == "batching" and r[c] else "off" if c == "batching"
                                       else str(r.get(c, "")) for c in cols) + " |")
    table = "\n".join(lines)
    command = command_line(args, defaults)
    md = (f"# Serving load test (CPU)\n\n`{command}`, "
          f"started {started}: the server on 127.0.0.1 (run `{payload['run']}`, {args.decode} decoding + filter, "
          f"{args.model} recommender, torch threads {args.threads}, {args.batch_threads} for batches of {args.parallel_from}+ articles), a closed-loop client in another process; "
          f"{args.duration:g} s per row; real customers and the articles the recommender gives them. "
          f"Dynamic batching: up to {args.max_batch} articles or {args.max_wait_ms:g} ms. `speedup_rps`: requests/s "
          f"with batching over without. Machine: {machine['cpus']} CPUs ({machine['cpu']}), "
          f"load average {machine['load_avg_before'][0]} before and {machine['load_avg_after'][0]} after "
          f"(other processes share these cores).\n\n{table}\n")
    write_report(args.out, "cpu", payload, md)
    print(md)
    print(f"[loadtest] wrote {args.out}/cpu.md and cpu.json")
    return 0 if all(r["errors"] == 0 for r in rows) else 1
