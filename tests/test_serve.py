"""``python -m mmreason.serve`` on a tiny generator run: every endpoint through FastAPI's test client, every
class of bad input (in one app, which keeps serving), the dynamic batcher, and the CLI's one-line errors."""
from __future__ import annotations

import asyncio
import json
import threading
import time

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from mmreason import serve, train
from mmreason.machine import cpu_name
from mmreason.recsys.twotower import TwoTowerConfig
from mmreason.serving.service import Batcher, Service

from conftest import CUSTOMERS, make_hm, work_in
from test_train import TINY

TINY_TWO_TOWER = TwoTowerConfig(dim=8, epochs=2, batch_size=4)  # the default's one-cycle schedule needs more pairs
TINY_TWO_TOWER_ARGS = ["--dim", "8", "--epochs", "2", "--batch-size", "4"]
A = CUSTOMERS[0]  # bought jeans (black, light blue), a strap top, wide trousers and a striped tee
TEE, BIKINI, DRESS = 300000001, 700000001, 400000001


def tiny_run(root):
    """A tiny generator run trained by the real CLI under ``root/run`` (artifacts in ``root/artifacts``)."""
    make_hm(root / "hm", broken_photo=False, missing_photo=False, bad_rows=False)
    with pytest.MonkeyPatch.context() as mp:
        work_in(mp, root)
        assert train.main([*TINY, "--data.pipeline.hm_dir", str(root / "hm"), "--trainer.max_epochs", "1",
                           "--trainer.default_root_dir", str(root / "run"), "--n_report", "0",
                           "--model.n_samples", "0", "--ckpt_path", "none"]) == 0
    return root


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tiny_run(tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def service(work):
    with pytest.MonkeyPatch.context() as mp:
        work_in(mp, work)
        return Service(work / "run", recommend_dir=work / "rec", two_tower=TINY_TWO_TOWER)


@pytest.fixture(scope="module")
def client(service):
    with TestClient(serve.create_app(service), raise_server_exceptions=False) as c:
        yield c


def one_line_error(r, status: int, *words) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    detail = r.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, detail
    for w in words:
        assert w in detail, detail
    return detail


# ----------------------------------------------------------------------------- endpoints

def test_health_and_page(client, work, monkeypatch):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["batching"] is True and h["model"] == "two_tower" and h["decode"] == "greedy+beam"
    assert h["run"] == str(work / "run")  # outside the artifacts root: as given
    monkeypatch.setenv("MMREASON_ARTIFACTS", str(work))
    assert client.get("/health").json()["run"] == "artifacts/run"  # inside: never the server's own folders
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="customer"' in page.text and "/customers/" in page.text and "/recommendations" in page.text


def test_customers_most_purchases_first(client, service):
    got = client.get("/customers", params={"limit": 3}).json()
    inter = service.explainer.tables["interactions"]
    counts = inter.groupby("customer_id").size()
    assert [c["customer_id"] for c in got][0] == A and len(got) == 3
    assert [c["n_purchases"] for c in got] == sorted(counts.to_numpy().tolist(), reverse=True)[:3]
    assert all(c["n_purchases"] == counts[c["customer_id"]] for c in got)


def test_recommendations_carry_the_explainers_reasons(client, service):
    r = client.get(f"/customers/{A}/recommendations", params={"k": 3})
    assert r.status_code == 200, r.text
    rec = r.json()
    arts = rec["articles"]
    assert [a["rank"] for a in arts] == [1, 2, 3] and rec["customer_id"] == A
    assert rec["day"] == str(service.next_day.date()) == "2019-06-08"  # the day after the fixture's last purchase
    assert [a["article_id"] for a in arts] == [x.article_id for x in service.rank(A, 3)]
    assert arts[0]["score"] >= arts[1]["score"] >= arts[2]["score"]
    # The reasons are the Explainer's (the same decode -> filter -> choose path as `recommend --explain`).
    ex = service.explainer.explain(A, [a["article_id"] for a in arts])
    for a, e in zip(arts, ex):
        assert a["reason"]["text"] == e.reason and a["reason"]["passed_filter"] == e.passed_filter
        assert a["reason"]["filter"] == ("passed" if e.passed_filter else "failed: " + ", ".join(e.rejected[0][1]))
        assert a["photo_url"] == f"/photos/{a['article_id']}"
        item = service.items.loc[a["article_id"]]
        assert (a["name"], a["colour"], a["product_type"]) == (item["prod_name"], item["colour_group_name"],
                                                               item["product_type_name"])
    # Her purchases, most recent first: the striped tee on 2019-04-01, then the light-blue jeans.
    recent = rec["recent_purchases"]
    assert [(p["article_id"], p["day"]) for p in recent[:2]] == [(TEE, "2019-04-01"), (100000002, "2019-03-01")]


def test_recommendations_as_of_a_day_and_without_reasons(client, service):
    r = client.get(f"/customers/{A}/recommendations", params={"k": 2, "day": "2019-03-01", "explain": "false"}).json()
    assert r["day"] == "2019-03-01" and all(a["reason"] is None for a in r["articles"])
    # strictly before the day: the jeans bought on 2019-03-01 are not history yet
    recent = [p["article_id"] for p in r["recent_purchases"]]
    assert recent[0] == 500000001 and sorted(recent[1:]) == [100000001, 200000001]  # 02-10, then two on 01-05
    assert [a["article_id"] for a in r["articles"]] == [x.article_id for x in service.rank(A, 2, "2019-03-01")]


def test_rank_past_the_catalogue_and_what_she_bought(service, monkeypatch):
    """k above the articles left: each article once, no padding; already_bought says whether she bought it
    before the day, and her purchases are left out where the recommender excludes them."""
    n_items, day = len(service.ctx.items), "2019-03-02"
    bought = {p["article_id"] for p in service.recent_purchases(A, day, n=10 ** 6)}
    assert len(bought) >= 2
    for exclude in (False, True):
        monkeypatch.setattr(service, "exclude_bought", exclude)
        ranked = service.rank(A, n_items + 5, day)
        ids = [r.article_id for r in ranked]
        assert len(set(ids)) == len(ids) == n_items - (len(bought) if exclude else 0)
        assert [r.already_bought for r in ranked] == [a in bought for a in ids]
        assert set(ids) >= set(service.ctx.items["article_id"]) - bought


def test_explain_chosen_articles_in_order(client, service):
    r = client.post("/explain", json={"customer_id": A, "article_ids": [BIKINI, TEE], "day": "2019-03-01"})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["day"] == "2019-03-01" and [x["article_id"] for x in got["reasons"]] == [BIKINI, TEE]
    ex = service.explainer.explain(A, [BIKINI, TEE], "2019-03-01")
    assert [x["reason"]["text"] for x in got["reasons"]] == [e.reason for e in ex]
    assert got["reasons"][0]["name"] == "Bikini top" and got["reasons"][0]["colour"] == "Black"


def test_photo_is_the_articles_file(client, work):
    r = client.get(f"/photos/{DRESS}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert r.content == (work / "hm" / "images" / "040" / f"{DRESS:010d}.jpg").read_bytes()


# ----------------------------------------------------------------------------- bad input

def test_every_bad_input_class_in_one_run_and_the_server_keeps_serving(client, service, monkeypatch, caplog):
    good = {"customer_id": A, "article_ids": [TEE]}
    rec = f"/customers/{A}/recommendations"
    # unknown customer or article -> 404
    one_line_error(client.get(f"/customers/{'e' * 64}/recommendations"), 404, "unknown customer_id")
    one_line_error(client.post("/explain", json=good | {"customer_id": "f" * 64}), 404, "unknown customer_id")
    one_line_error(client.post("/explain", json=good | {"article_ids": [TEE, 123456789]}), 404, "unknown article_id 123456789")
    one_line_error(client.get("/photos/123456789"), 404, "unknown article_id")
    with monkeypatch.context() as m:  # an article whose photo file is gone from the disk
        m.setattr(service, "items", service.items.assign(
            photo_path=service.items["photo_path"].where(service.items.index != DRESS, "/nowhere/gone.jpg")))
        one_line_error(client.get(f"/photos/{DRESS}"), 404, "has no photo")
    with monkeypatch.context() as m:  # a file the data step found unreadable (has_photo False) is not served
        m.setattr(service, "items", service.items.assign(has_photo=service.items.index != DRESS))
        one_line_error(client.get(f"/photos/{DRESS}"), 404, "has no photo")
    # malformed ids -> 422
    for bad in ["xyz!", "ABCDEF0123", "abc", "a" * 65]:
        one_line_error(client.get(f"/customers/{bad}/recommendations"), 422, "customer_id")
    one_line_error(client.post("/explain", json=good | {"customer_id": "not-an-id"}), 422, "customer_id")
    one_line_error(client.post("/explain", json=good | {"article_ids": ["abc"]}), 422, "article_ids")
    one_line_error(client.post("/explain", json=good | {"article_ids": [-5]}), 422, "article_id")
    one_line_error(client.post("/explain", json=good | {"article_ids": [10**12]}), 422, "article_id")
    one_line_error(client.get("/photos/abc"), 422, "article_id")
    one_line_error(client.get("/photos/0"), 422, "article_id")
    # k out of range or not a number -> 422
    for k in ["0", "51", "-1", "ten"]:
        one_line_error(client.get(rec, params={"k": k}), 422, "k")
    one_line_error(client.get("/customers", params={"limit": 0}), 422, "limit")
    # bad dates -> 422
    for day in ["2020-13-40", "yesterday", "1800-01-01", "9999-12-31"]:
        one_line_error(client.get(rec, params={"day": day}), 422, "day")
        one_line_error(client.post("/explain", json=good | {"day": day}), 422, "day")
    # bounded requests: article ids, unknown fields, malformed JSON, body size
    one_line_error(client.post("/explain", json=good | {"article_ids": []}), 422, "article_ids")
    one_line_error(client.post("/explain", json=good | {"article_ids": [TEE] * (serve.MAX_ARTICLES + 1)}), 422,
                   "article_ids")
    one_line_error(client.post("/explain", json=good | {"k": 3}), 422, "k")
    one_line_error(client.post("/explain", json={"article_ids": [TEE]}), 422, "customer_id")
    one_line_error(client.post("/explain", content=b"{not json", headers={"content-type": "application/json"}), 422)
    one_line_error(client.post("/explain", content=json.dumps(good | {"pad": "x" * serve.MAX_BODY}).encode(),
                               headers={"content-type": "application/json"}), 413, "request body over")
    # an unexpected failure inside: 500 with one line, nothing of the trace
    with monkeypatch.context() as m:
        m.setattr(service, "explain_many", lambda requests: 1 / 0)
        one_line_error(client.post("/explain", json=good), 500, "internal error")
        m.setattr(service, "rank", lambda *a: 1 / 0)
        with caplog.at_level("ERROR", logger="mmreason.serve"):
            one_line_error(client.get(rec), 500, "internal error")
        # the log names the route, never the customer in its path
        assert "GET /customers/{customer_id}/recommendations" in caplog.text and A not in caplog.text
    # and it still serves
    assert client.get("/health").json()["status"] == "ok"
    r = client.post("/explain", json=good)
    assert r.status_code == 200 and r.json()["reasons"][0]["reason"]["text"]
    assert client.get(rec, params={"k": 1}).status_code == 200


# ----------------------------------------------------------------------------- the batcher

def test_batcher_gathers_concurrent_requests_and_routes_results():
    calls, gate = [], threading.Event()

    def fn(requests):  # the first call blocks until the rest have queued up behind it
        calls.append([r[0] for r in requests])
        gate.wait(5)
        return [[f"{r[0]}:{a}" for a in r[1]] for r in requests]

    async def go(batcher, n):
        tasks = [asyncio.ensure_future(batcher.submit((f"c{i}", [i, i + 100], None))) for i in range(n)]
        await asyncio.sleep(0.2)
        gate.set()
        return await asyncio.gather(*tasks)

    b = Batcher(fn, max_batch=6, max_wait_ms=2000)  # a long wait: only the size closes the first batch
    out = asyncio.run(go(b, 5))
    b.close()
    assert out == [[f"c{i}:{i}", f"c{i}:{i + 100}"] for i in range(5)]
    assert calls == [["c0", "c1", "c2"], ["c3", "c4"]]  # 6 articles a batch, in arrival order

    calls.clear(), gate.clear()
    b = Batcher(fn, max_batch=6, max_wait_ms=50, enabled=False)
    assert asyncio.run(go(b, 4)) == [[f"c{i}:{i}", f"c{i}:{i + 100}"] for i in range(4)]
    b.close()
    assert calls == [["c0"], ["c1"], ["c2"], ["c3"]]


def test_batcher_isolates_a_failing_request():
    def fn(requests):
        if any(r[0] == "bad" for r in requests):
            raise KeyError("unknown customer_id 'bad'")
        time.sleep(0.05)
        return [[r[0]] for r in requests]

    async def go(batcher):
        tasks = [asyncio.ensure_future(batcher.submit((c, [1], None))) for c in ["x", "bad", "y", "z"]]
        # bounded: a batcher that settles no future fails here instead of hanging the suite
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 30)

    b = Batcher(fn, max_batch=8, max_wait_ms=100)
    try:
        x, bad, y, z = asyncio.run(go(b))
    finally:
        b.close()
    assert (x, y, z) == (["x"], ["y"], ["z"]) and isinstance(bad, KeyError)


def test_service_batches_real_requests(service):
    """Concurrent reason requests through the real service share decoding calls and get their own answers."""
    sizes = []

    def counted(requests):
        sizes.append(len(requests))
        return service.explain_many(requests)

    async def go(batcher):
        reqs = [(A, [TEE], None), (CUSTOMERS[1], [BIKINI, DRESS], None), (CUSTOMERS[2], [TEE], "2019-02-03")]
        return await asyncio.gather(*(batcher.submit(r) for r in reqs))

    b = Batcher(counted, max_batch=32, max_wait_ms=200)
    out = asyncio.run(go(b))
    b.close()
    assert sizes == [3]
    assert [[e.article_id for e in o] for o in out] == [[TEE], [BIKINI, DRESS], [TEE]]
    assert all(e.reason for o in out for e in o)


def test_service_decodes_large_batches_on_more_threads(service, monkeypatch):
    """``threads=(small, large, from)``: a decoding call of at least ``from`` articles runs on ``large`` torch
    threads, a smaller one on ``small``; None (the default) leaves torch's setting alone."""
    import torch

    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setattr(service.explainer, "explain_many", lambda requests: [[] for _ in requests])
    service.explain_many([(A, [TEE], None)])
    assert set_to == []
    monkeypatch.setattr(service, "threads", (1, 2, 3))
    service.explain_many([(A, [TEE], None)])
    service.explain_many([(A, [TEE, BIKINI], None), (CUSTOMERS[1], [DRESS], None)])
    service.explain_many([(A, [TEE, BIKINI], None)])
    assert set_to == [1, 2, 1]


# ----------------------------------------------------------------------------- CLI

def test_cli_without_a_run_fails_in_one_line(tmp_path, capsys, monkeypatch):
    work_in(monkeypatch, tmp_path)
    assert serve.main(["--run", str(tmp_path / "nothing"), "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no checkpoint") and "\n" not in err


def test_customer_counts_match_the_tables(service):
    inter = service.explainer.tables["interactions"]
    assert service.n_purchases[A] == (inter["customer_id"] == A).sum()
    assert isinstance(service.next_day, pd.Timestamp)


def test_a_reason_with_no_candidate_is_reported_not_raised():
    """Decoding can return no candidate (every beam ended under the constraint): the response says so
    instead of failing with an IndexError (seen in the load test on the grounded default run)."""
    from mmreason.serving.explainer import Explanation

    r = serve.reason_of(Explanation(123, "", False, []))
    assert r.passed_filter is False and r.causes == ["no candidate"] and r.rejected_before == 0
    assert r.filter == "failed: no candidate"
    ok = serve.reason_of(Explanation(123, "A fine reason.", True, [("bad", ["empty"])]))
    assert ok.causes == [] and ok.rejected_before == 1
    assert ok.hook == "model" and serve.reason_of(Explanation(123, "A fine reason.", True, hook="evidence")).hook == "evidence"


def test_load_test_report_names_the_flags_that_differ_from_the_defaults():
    from mmreason import serve
    from mmreason.serving import loadtest

    defaults = vars(serve.get_parser().parse_args([]))
    args = serve.get_parser().parse_args(["--loadtest", "--duration", "15", "--threads", "2", "--max-wait-ms", "2.5"])
    assert loadtest.command_line(args, defaults) == \
        "python -m mmreason.serve --loadtest --duration 15 --threads 2 --max-wait-ms 2.5"
    plain = serve.get_parser().parse_args(["--loadtest", "--duration", "15"])
    assert loadtest.command_line(plain, defaults) == "python -m mmreason.serve --loadtest --duration 15"


@pytest.mark.parametrize("errors", [0, 1])
def test_the_load_report_divides_with_by_without_batching_and_fails_on_errors(tmp_path, monkeypatch, errors):
    from mmreason.serving import loadtest

    async def measure(args, batching, two_tower):  # the server and its client, replaced by their numbers
        row = {"endpoint": "POST /explain (1 article)", "concurrency": 4, "requests": 10, "seconds": 1.0,
               "rps": 20.0 if batching else 8.0, "p50_ms": 1.0, "p95_ms": 2.0, "p99_ms": 3.0,
               "errors": errors if batching else 0}
        return [row | {"batching": batching}], {"status": "ok"}
    monkeypatch.setattr(loadtest, "measure", measure)
    args = serve.get_parser().parse_args(["--loadtest", "--duration", "1", "--out", str(tmp_path)])
    assert loadtest.run(args) == (1 if errors else 0)  # a request that failed fails the load test
    on, off = json.loads((tmp_path / "cpu.json").read_text())["rows"]
    assert on["batching"] and on["speedup_rps"] == 2.5 and "speedup_rps" not in off
    assert "| POST /explain (1 article) | 4 | on | 10 | 20.0 |" in (tmp_path / "cpu.md").read_text()
    # the machine it ran on, named as the bench names it (machine-bound numbers; before: "2 CPUs (unknown)")
    assert f"CPUs ({cpu_name()})" in (tmp_path / "cpu.md").read_text()


def test_a_load_cell_reports_the_latencies_it_timed(monkeypatch):
    """One closed-loop client on a fake clock: each request takes a known time, so the cell's count, rate,
    percentiles and errors are those of the known latencies (10, 20, ..., 200 ms; the 4th request fails)."""
    import types

    import numpy as np

    from mmreason.serving import loadtest

    clock = [0.0]
    monkeypatch.setattr(loadtest, "time", types.SimpleNamespace(monotonic=lambda: clock[0],
                                                                perf_counter=lambda: clock[0]))
    latencies = [0.01 * (i + 1) for i in range(20)]
    sent = []

    class Client:
        async def post(self, path, json):
            sent.append((path, json))
            clock[0] += latencies[len(sent) - 1]
            return types.SimpleNamespace(status_code=500 if len(sent) == 4 else 200)

    # the 20th request starts just before the end and runs past it: the rate is over the wall time, not duration
    duration = sum(latencies[:19]) + 1e-3
    r = asyncio.run(loadtest.cell(Client(), "explain", 1, duration, [("c1", 1), ("c2", 2)]))
    ms = np.array(latencies) * 1000
    assert r["requests"] == 20 and r["errors"] == 1
    assert sent[:2] == [("/explain", {"customer_id": "c1", "article_ids": [1]}),
                        ("/explain", {"customer_id": "c2", "article_ids": [2]})]
    for q in (50, 95, 99):
        assert r[f"p{q}_ms"] == pytest.approx(np.percentile(ms, q), abs=0.05), q
    assert r["rps"] == pytest.approx(20 / sum(latencies), abs=0.01)
    assert r["seconds"] == pytest.approx(sum(latencies), abs=0.05)
