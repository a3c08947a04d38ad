"""Real-time reasons over HTTP: ``python -m mmreason.serve [--run DIR] [--host 127.0.0.1] [--port 8000]``.

Loads the generator run, the recommender and the photo embeddings once (``serving.Service``), then serves

* ``GET /health``;
* ``GET /customers``: customers to pick from (most purchases first);
* ``GET /customers/{customer_id}/recommendations?k=10&explain=true[&day=YYYY-MM-DD]``: ranked articles with
  name, attributes, score, photo URL, the shown reason, whether it passed the filter and why not, and the
  customer's recent purchases;
* ``POST /explain`` ``{"customer_id", "article_ids", "day"?}``: reasons for chosen articles;
* ``GET /photos/{article_id}``: the product photo;
* ``GET /``: a page to pick a customer and see their recommendations with photos and reasons.

Reasons go through a dynamic batcher (``serving.Batcher``; ``--no-batching`` to compare). Bad input never
shows a stack trace: unknown customer or article -> 404, malformed ids, ``k`` out of range, bad dates,
too many ids -> 422, a body over ``MAX_BODY`` bytes -> 413; each with ``{"detail": "<one line>"}``.
``--loadtest`` runs the bounded loopback load test instead (``mmreason.loadtest``).
"""
from __future__ import annotations

import datetime as dt
import logging
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmreason import cli, paths
from mmreason.decoding.shown import Decoding
from mmreason.io import DataError, check_ranges
from mmreason.recsys.twotower import TwoTowerConfig
from mmreason.serving import loadtest
from mmreason.serving.service import Batcher, NotFound, Service

log = logging.getLogger("mmreason.serve")

MAX_K = 50            # articles per recommendation request
MAX_ARTICLES = 32     # article ids per /explain request (one full decoding batch)
MAX_BODY = 16 * 1024  # bytes per request body: 32 ids and a day fit many times over
CUSTOMER_ID = r"^[0-9a-f]{6,64}$"  # H&M ids are 64 hex digits; a unique prefix of 6+ also resolves
FIRST_DAY, LAST_DAY = dt.date(2000, 1, 1), dt.date(2100, 12, 31)  # pandas timestamps end in 2262
STATIC = Path(__file__).parent / "static"


# --------------------------------------------------------------------------- request and response models

class Reason(BaseModel):
    text: str
    passed_filter: bool
    filter: str = Field(description="'passed', or 'failed: <causes>' when no candidate passed")
    causes: list[str] = Field(description="why the shown reason failed the filter (empty when it passed)")
    rejected_before: int = Field(description="candidates the filter rejected before the shown one")
    hook: str = Field("model", description="'model': the model wrote the hook its evidence states; 'evidence': "
                                           "none of its candidates did, and the rule's hook from the same evidence is shown")


class Article(BaseModel):
    article_id: int
    name: str
    product_type: str
    colour: str
    pattern: str
    section: str
    photo_url: str


class RankedArticle(Article):
    rank: int
    score: float
    already_bought: bool
    reason: Reason | None = None


class Purchase(BaseModel):
    article_id: int
    day: str
    name: str
    product_type: str
    colour: str
    photo_url: str


class Recommendations(BaseModel):
    customer_id: str
    day: str
    model: str
    excluded_bought: bool
    recent_purchases: list[Purchase]
    articles: list[RankedArticle]


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: str = Field(pattern=CUSTOMER_ID)
    article_ids: list[int] = Field(min_length=1, max_length=MAX_ARTICLES)
    day: dt.date | None = None


class Explained(Article):
    reason: Reason


class ExplainResponse(BaseModel):
    customer_id: str
    day: str
    reasons: list[Explained]


class Customer(BaseModel):
    customer_id: str
    n_purchases: int


# --------------------------------------------------------------------------- helpers

def one_line(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors -> 'where: what' of the first one."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path"))
    return f"{where}: {err.get('msg', 'invalid')}" if where else str(err.get("msg", "invalid request"))


def check_day(day: dt.date | None) -> None:
    if day is not None and not FIRST_DAY <= day <= LAST_DAY:
        raise HTTPException(422, f"day: must be between {FIRST_DAY} and {LAST_DAY}")


def check_article_id(article_id: int) -> None:
    if not 0 < article_id < 10**10:  # H&M article ids have 10 digits at most
        raise HTTPException(422, f"article_id: {article_id} is not an article id (1 to 10 digits)")


def reason_of(e) -> Reason:
    # no candidate at all (decoding returned none, e.g. every beam ended under the constraint): say so
    causes = [] if e.passed_filter else (e.rejected[0][1] if e.rejected else ["no candidate"])
    return Reason(text=e.reason, passed_filter=e.passed_filter, causes=causes,
                  filter="passed" if e.passed_filter else "failed: " + ", ".join(causes),
                  rejected_before=len(e.rejected) if e.passed_filter else max(len(e.rejected) - 1, 0), hook=e.hook)


def article_of(svc: Service, article_id: int) -> dict:
    a = svc.items.loc[article_id]
    return {"article_id": int(article_id), "name": a["prod_name"], "product_type": a["product_type_name"],
            "colour": a["colour_group_name"], "pattern": a["graphical_appearance_name"],
            "section": a["section_name"], "photo_url": f"/photos/{int(article_id)}"}


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes`` (by Content-Length, or counted as it streams)."""

    class TooLarge(Exception):
        pass

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._reject(send)
        seen, started = 0, False

        async def counted():
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.max_bytes:
                raise self.TooLarge
            return msg

        async def tracked(msg):
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counted, tracked)
        except self.TooLarge:
            if not started:
                await self._reject(send)

    async def _reject(self, send):
        body = f'{{"detail":"request body over {self.max_bytes} bytes"}}'.encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the app

def create_app(service: Service, batching: bool = True, max_batch: int = 32, max_wait_ms: float = 5.0) -> FastAPI:
    """The HTTP app around a loaded ``Service``; reasons go through one ``Batcher``."""
    batcher = Batcher(lambda requests: service.explain_many(requests),  # looked up per call (tests patch it)
                      max_batch=max_batch, max_wait_ms=max_wait_ms, enabled=batching)

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()

    app = FastAPI(title="mmreason", description="Personalised, photo-grounded recommendation reasons",
                  lifespan=lifespan)
    app.state.service, app.state.batcher = service, batcher
    app.add_middleware(BodyLimit, max_bytes=MAX_BODY)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        return JSONResponse({"detail": one_line(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):  # logged here, never shown to the client
        # the route's template ("/customers/{customer_id}/recommendations"): a customer id never reaches the log
        route = getattr(request.scope.get("route"), "path", "(no route)")
        log.exception("error serving %s %s", request.method, route)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    @app.get("/health")
    def health() -> dict:
        b = batcher.batches
        return {"status": "ok", "run": paths.shown(service.run), "model": service.model_name,
                "decode": service.explainer.decode_name, "batching": batcher.enabled, "max_batch": max_batch,
                "mean_requests_per_batch": round(sum(b) / len(b), 2) if b else None}

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    @app.get("/customers")
    def customers(limit: int = Query(100, ge=1, le=2000), offset: int = Query(0, ge=0)) -> list[Customer]:
        n = service.n_purchases.sort_values(ascending=False, kind="stable").iloc[offset:offset + limit]
        return [Customer(customer_id=c, n_purchases=int(v)) for c, v in n.items()]

    @app.get("/customers/{customer_id}/recommendations")
    async def recommendations(customer_id: str = PathParam(pattern=CUSTOMER_ID),
                              k: int = Query(10, ge=1, le=MAX_K), explain: bool = True,
                              day: dt.date | None = None) -> Recommendations:
        check_day(day)
        cid = service.customer(customer_id)
        ranked = service.rank(cid, k, day)
        reasons = [None] * len(ranked)
        if explain and ranked:
            reasons = [reason_of(e) for e in await batcher.submit((cid, [r.article_id for r in ranked], day))]
        recent = [Purchase(**p, photo_url=f"/photos/{p['article_id']}") for p in service.recent_purchases(cid, day)]
        return Recommendations(
            customer_id=cid, day=str(service.day(day).date()), model=service.model_name,
            excluded_bought=service.exclude_bought, recent_purchases=recent,
            articles=[RankedArticle(**article_of(service, r.article_id), rank=i + 1, score=r.score,
                                    already_bought=r.already_bought, reason=why)
                      for i, (r, why) in enumerate(zip(ranked, reasons))])

    @app.post("/explain")
    async def explain(body: ExplainRequest) -> ExplainResponse:
        check_day(body.day)
        for a in body.article_ids:
            check_article_id(a)
        cid = service.customer(body.customer_id)
        service.check_articles(body.article_ids)
        out = await batcher.submit((cid, body.article_ids, body.day))
        return ExplainResponse(customer_id=cid, day=str(service.day(body.day).date()),
                               reasons=[Explained(**article_of(service, e.article_id), reason=reason_of(e))
                                        for e in out])

    @app.get("/photos/{article_id}")
    def photo(article_id: int):
        check_article_id(article_id)
        return FileResponse(service.photo_path(article_id), media_type="image/jpeg",
                            headers={"Cache-Control": "max-age=86400"})

    return app


# --------------------------------------------------------------------------- CLI

@dataclass
class ServeOptions:
    """Serve reasons over HTTP: ``python -m mmreason.serve``.

    Args:
        run: generator run folder or checkpoint (default artifacts/runs/cpu)
        host: the address to listen on
        port: the port to listen on
        model: the recommender (default two_tower, as `recommend --user`)
        recommend_dir: where the two-tower model is kept (default artifacts/recommend)
        decode: decoding (default greedy+beam: greedy, and beam search where greedy's reason fails the filter;
            beam: as `recommend --explain`)
        batching: dynamic batching (--no-batching: decode each request alone, for comparison)
        max_batch: most articles decoded together
        max_wait_ms: how long a batch waits to fill
        threads: torch threads for small batches
        batch_threads: torch threads for a decoding batch of at least --parallel-from articles
        parallel_from: articles from which a batch decodes on --batch-threads threads
        loadtest: run the loopback load test (mmreason.loadtest) and exit
        duration: --loadtest: seconds per cell
        out: --loadtest: where cpu.md/cpu.json go
    """
    run: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    model: Literal["two_tower", "repurchase+two_tower", "repurchase", "popularity", "recent_popularity",
                   "itemknn"] = "two_tower"
    recommend_dir: str | None = None
    # greedy+beam: on validation as truthful as beam search (unseen: shown reasons pass 100% vs 99.7%, the same
    # colour and type precision; copy CIDEr 1.63 vs 1.71) at under half the latency (README, serving)
    decode: Decoding = "greedy+beam"
    batching: bool = True
    max_batch: int = 32
    max_wait_ms: float = 5.0
    # One intra-op thread for small batches: on 2 shared cores, 2 threads made a one-article beam decode 10x
    # slower whenever another process was busy (4.9 s vs 0.5 s, measured); a batch of 32 has the work to use a
    # second thread (load test: README)
    threads: int = 1
    batch_threads: int = 2
    parallel_from: int = 8
    loadtest: bool = False
    duration: float = 30.0
    out: str = field(default_factory=lambda: str(paths.results_dir("serve")))

    def __post_init__(self):
        check_ranges(self, port="port", max_batch=">=1", max_wait_ms=">=0", threads=">=1", batch_threads=">=1",
                         parallel_from=">=1", duration=">0")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(ServeOptions, TwoTowerConfig, prog="python -m mmreason.serve", description=__doc__.split("\n")[0])


def main(argv=None) -> int:
    args, cfg = get_parser().parse(argv)
    import torch
    import uvicorn


    torch.set_num_threads(args.threads)
    if args.loadtest:
        return loadtest.run(args, defaults=asdict(ServeOptions()), two_tower=cfg)
    try:
        service = Service(args.run, decode=args.decode, model=args.model, recommend_dir=args.recommend_dir, two_tower=cfg,
                          threads=(args.threads, args.batch_threads, args.parallel_from))
    except (DataError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    app = create_app(service, batching=args.batching, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms)
    print(f"[serve] http://{args.host}:{args.port}/  (run {service.run}, {service.model_name}, "
          f"{args.decode}, batching {'on' if args.batching else 'off'})", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
