"""What ``python -m mmreason.serve`` serves, without the HTTP: the loaded models and the dynamic batcher.

``Service`` loads once what every request needs: the generator run (through ``explain.Explainer``, the
same decode -> filter -> choose path as ``recommend --user ID --explain``), the recommender (the two-tower
network of ``recommend``, trained or reused under ``artifacts/recommend`` as the CLI does) and the photo
embeddings. ``Batcher`` gathers concurrent reason requests (up to ``max_batch`` articles, or ``max_wait_ms``
after the first arrives) into one ``Explainer.explain_many`` call, the way model servers batch: decoding
a batch of 32 prompts costs far less than 32 single ones, because each decoding step's fixed cost (Python,
kernel launches) is shared. One worker thread owns the model, so requests never decode concurrently.

    svc = Service("artifacts/runs/cpu")
    batcher = Batcher(svc.explain_many, max_batch=32, max_wait_ms=5)
    reasons = await batcher.submit((customer_id, [article_id], None))   # -> list[Explanation]
"""
from __future__ import annotations

import asyncio
import json
import queue
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason import paths
from mmreason.recsys import api, baselines, context, ranking, twotower
from mmreason.serving.explainer import Explainer, Explanation


class NotFound(KeyError):
    """An unknown customer or article: the server answers 404 with this one-line message."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass
class Ranked:
    article_id: int
    score: float
    already_bought: bool


class Service:
    """The generator run, the recommender and the tables, loaded once."""

    def __init__(self, run=None, decode: str = "greedy+beam", model: str = "two_tower", recommend_dir=None,
                 two_tower: twotower.TwoTowerConfig | None = None, progress: bool = False,
                 threads: tuple[int, int, int] | None = None):
        # (threads, batch_threads, parallel_from): a decoding call of at least parallel_from articles runs on
        # batch_threads torch threads, a smaller one on threads; None leaves torch's setting alone
        self.threads = threads
        self.run = paths.resolve(run) if run is not None else paths.run_dir()
        self.explainer = Explainer(self.run, decode=decode)
        data_dir = self.explainer.data.artifacts.data_dir  # the tables the generator was trained on
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text())
        self.ctx = context.Context(self.explainer.tables, manifest.get("fingerprint", ""))
        self.items = self.explainer.items  # indexed by article_id
        self.next_day = self.explainer.next_day()
        self.model_name = model
        out_dir = Path(recommend_dir or paths.artifacts_dir() / "recommend")
        if model in api.LEARNED:
            emb = twotower.resolve_embeddings("auto", data_dir)  # as `recommend --user` finds them
            photo = twotower.photo_matrix(twotower.load_photo_embeddings(emb), self.ctx.items["article_id"]) if emb else None
            rec = twotower.two_tower(self.ctx, two_tower or twotower.TwoTowerConfig(), photo, out_dir, "next", progress=progress)
            self.scorer = baselines.repurchase_then(rec.scores) if model == "repurchase+two_tower" else rec.scores
        else:
            self.scorer = baselines.BASELINES[model]
        self.exclude_bought = api.default_exclusion(model, out_dir)
        self.base_task = self.ctx.task("next")  # every customer as of the day after the data ends
        self.customer_pos = {c: i for i, c in enumerate(self.base_task.customers)}
        self.n_purchases = pd.Series(np.diff(self.ctx.user_start), index=self.ctx.users["customer_id"].to_numpy())

    # -- look-ups (each raises NotFound with the message the client sees)
    def customer(self, customer_id: str) -> str:
        try:
            return self.ctx.resolve_user(customer_id)
        except context.UnknownUser as e:
            raise NotFound(e.args[0]) from None

    def check_articles(self, article_ids) -> None:
        unknown = [a for a in article_ids if a not in self.items.index]
        if unknown:
            raise NotFound(f"unknown article_id {unknown[0]}")

    def photo_path(self, article_id: int) -> Path:
        self.check_articles([article_id])
        row = self.items.loc[article_id]
        path = Path(row["photo_path"]) if row.get("has_photo", False) and row["photo_path"] else None
        if path is None or not path.is_file():
            raise NotFound(f"article {article_id} has no photo")
        return path

    def day(self, day) -> pd.Timestamp:
        return pd.Timestamp(day) if day is not None else self.next_day

    # -- recommender
    def _task(self, cid: str, day: pd.Timestamp) -> context.Task:
        """The customer's task as of ``day``: history = purchases strictly before it (like ``user_context``)."""
        i = self.customer_pos[cid]
        t = self.base_task
        cut = (day - pd.Timestamp("1970-01-01")).days  # context.day_number's units
        keep = t.history_days[i] < cut
        return replace(t, customers=[cid], user_rows=t.user_rows[i:i + 1], cutoff=np.array([cut]),
                       history=[t.history[i][keep]], history_days=[t.history_days[i][keep]], targets=[set()])

    def rank(self, customer_id: str, k: int, day=None) -> list[Ranked]:
        """The recommender's top ``k`` for the customer as of ``day`` (default: after the data ends)."""
        cid = self.customer(customer_id)
        task = self._task(cid, self.day(day))
        s = self.scorer(self.ctx, task, np.array([0]))
        rows = ranking.top_k(s, k, [task.history[0]] if self.exclude_bought else None)[0]
        rows = rows[rows >= 0]
        ids = self.ctx.items["article_id"].to_numpy()[rows]
        bought = np.isin(rows, task.history[0])
        return [Ranked(int(a), float(s[0, r]), bool(b)) for a, r, b in zip(ids, rows, bought)]

    def recent_purchases(self, customer_id: str, day=None, n: int = 5) -> list[dict]:
        """The customer's last ``n`` purchases before ``day``, most recent first."""
        cid = self.customer(customer_id)
        task = self._task(cid, self.day(day))
        rows, days = task.history[0][::-1][:n], task.history_days[0][::-1][:n]
        out = []
        for r, d in zip(rows, days):
            a = self.ctx.items.iloc[r]
            out.append({"article_id": int(a["article_id"]), "day": str(np.datetime64(int(d), "D")),
                        "name": a["prod_name"], "product_type": a["product_type_name"],
                        "colour": a["colour_group_name"]})
        return out

    # -- reasons
    def explain_many(self, requests) -> list[list[Explanation]]:
        """(customer_id, article_ids, day) requests -> reasons, in one decoding call."""
        if self.threads is not None:
            small, large, start = self.threads
            torch.set_num_threads(large if sum(len(ids) for _, ids, _ in requests) >= start else small)
        return self.explainer.explain_many([(self.customer(c), ids, self.day(d)) for c, ids, d in requests])


class Batcher:
    """Dynamic batching: requests queue up; one worker thread takes the first, waits up to ``max_wait_ms``
    for more (while it decodes, later ones queue anyway), and runs them together, up to ``max_batch``
    articles. ``enabled=False`` runs each request alone through the same worker (for comparison)."""

    def __init__(self, fn, max_batch: int = 32, max_wait_ms: float = 5.0, enabled: bool = True):
        self.fn, self.max_batch, self.max_wait = fn, max_batch, max_wait_ms / 1000
        self.enabled = enabled
        self.queue: queue.Queue = queue.Queue()
        self.batches: list[int] = []  # requests per decoding call (the last 1000), for /health
        self._thread = threading.Thread(target=self._work, name="batcher", daemon=True)
        self._thread.start()

    async def submit(self, request):
        """One (customer_id, article_ids, day) request -> its list of ``Explanation``."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.queue.put((request, fut, loop))
        return await fut

    def close(self) -> None:
        self.queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first) -> list:
        jobs, size = [first], len(first[0][1])
        if not self.enabled:
            return jobs
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                job = self.queue.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if job is None:  # closing: finish what was gathered, then stop
                self.queue.put(None)
                break
            if size + len(job[0][1]) > self.max_batch:
                self._held = job  # does not fit: it opens the next batch
                break
            jobs.append(job)
            size += len(job[0][1])
        return jobs

    def _work(self) -> None:
        self._held = None
        while True:
            first, self._held = (self._held, None) if self._held is not None else (self.queue.get(), None)
            if first is None:
                return
            jobs = self._gather(first)
            self.batches = (self.batches + [len(jobs)])[-1000:]
            try:
                results = self.fn([req for req, _, _ in jobs])
                outcomes = [(r, None) for r in results]
            except Exception:  # noqa: BLE001 -- one bad request must not fail the others: run each alone
                outcomes = [self._alone(req) for req, _, _ in jobs] if len(jobs) > 1 else [self._alone(jobs[0][0])]
            for (_, fut, loop), (res, err) in zip(jobs, outcomes):
                loop.call_soon_threadsafe(_settle, fut, res, err)

    def _alone(self, request):
        try:
            return self.fn([request])[0], None
        except Exception as e:  # noqa: BLE001 -- handed to the request that caused it
            return None, e


def _settle(fut, result, error) -> None:
    if fut.done():  # the client went away
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)
