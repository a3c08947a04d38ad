"""How fast the project runs against what the machine allows: ``python -m mmreason.bench``.

nanoGPT's ``bench.py`` is the model: one file that mirrors the training step, no Trainer magic except where
the Trainer itself is measured. Every figure is measured in one run, on the same weights and batches, and
written to ``results/bench/<device>.{json,md}``:

- the machine's limit: a square fp32 and bf16 GEMM (GFLOP/s on CPU, TFLOP/s on GPU); bf16 (its GEMM and rows)
  only where the CPU multiplies it in hardware, unless ``--bf16 yes`` (elsewhere it is emulated, and timing the
  emulation takes tens of minutes: 2 cores of an AVX2 EPYC spent over 10 without finishing the untimed priming);
- generator training, plain PyTorch loop: the settings before this bench ("before": dropout 0.1, on attention
  too, six-op GELU, per-tensor AdamW) against the default ones ("after"), fp32 against bf16 autocast, eager against
  ``torch.compile``; tokens/s (all and scored), FLOPs per token, MFU against the measured limit;
- the Lightning ``Trainer`` against the plain loop on the same model, batches, optimizer and clipping;
- decoding: ``generate.decode`` (our KV cache) against Hugging Face ``generate`` on the same weights and
  prompts, greedy at batch 1 and 64 and beam 4 at 64; reasons/s, ms per call p50/p95; greedy ids compared;
- the domain CLIP: training step and photo embedding, images/s;
- the ImageNet photo features (``photonet.py``) on real photos: the network as loaded against its folded form
  (``fold_for_inference``), images/s, and how far their features differ;
- the attribute texts the photo's copy is chosen among (``photochoice.candidates``): every article encoded
  (``retrieval.embed_articles``, before) against the store's rows reused (``retrieval.store_text_embeddings``),
  articles/s, and whether the candidates are the same;
- on CUDA only: the ``configs/gpu.yaml`` 124M model in bf16 + compile, tokens/s and MFU beside published anchors.

``--tiny`` shrinks every measurement (the tests run it on a tiny fixture run). Numbers from a loaded
machine are not the machine's: run it alone.

Longer than 400 lines: a command that measures several paths (the training step in a plain loop and in
Lightning, decoding against Hugging Face's twin, CLIP, the ImageNet features, the photo's copy's candidates,
GPT-2 124M on CUDA) and writes one report of them.
"""
from __future__ import annotations

import copy
import itertools
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from transformers import GPT2LMHeadModel
from transformers.activations import ACT2FN

from mmreason import cli, paths
from mmreason.io import DataError
from mmreason.machine import cpu_has_bf16, cpu_info, cpu_name
from mmreason.metrics import sentence_encoder
from mmreason.model.collate import EOS, collate, encode_example, token_id
from mmreason.decoding.generate import DecodeConfig, decode
from mmreason.training.module import ReasonModule
from mmreason.training.runs import load_run
from mmreason.model.network import SEG_REASON, ModelConfig, ReasonModel
from mmreason.features import photochoice, photodetails, photonet
from mmreason.features import retrieval as R
from mmreason.features.clip import load_clip

# Published single-H100 training throughput of GPT-2 124M (bf16), for the CUDA section.
ANCHORS = {"llm.c (GPT-2 124M, H100)": 468e3, "modded-nanogpt (GPT-2 124M, H100)": 330e3}


def device_name(device: torch.device, cpuinfo: str | None = None) -> str:
    """The GPU's name, or the CPU's (``machine.cpu_name``: model, architecture, bf16 in hardware or not)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_name(cpuinfo)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------- the machine's limit

def gemm_flops(device: torch.device, dtype: torch.dtype, n: int, seconds: float) -> float:
    """FLOP/s of an (n x n) @ (n x n) matmul in ``dtype``, best of repeats over ~``seconds``."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b  # warm-up (and oneDNN's kernel choice)
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n ** 3 / (time.perf_counter() - t0))
    return best


# ----------------------------------------------------------------------------- generator training

BEFORE_DROPOUT = 0.1  # the default run's dropout before this bench (configs/cpu.yaml now trains without it)


def before_settings(model: ReasonModel) -> ReasonModel:
    """A copy with the settings the default run used before this bench (same weights): dropout 0.1 on the
    embeddings, the residual branches and the attention probabilities (SDPA's unfused path), GPT-2's six-op
    "gelu_new", HF's plain SDPA and the padding mask built for every batch (no causal-only shortcut). The
    plain loop adds per-tensor AdamW and fp32."""
    m = copy.deepcopy(model)
    m.gpt2.transformer.drop.p = BEFORE_DROPOUT
    for blk in m.gpt2.transformer.h:
        blk.attn.attn_dropout.p = blk.attn.resid_dropout.p = blk.mlp.dropout.p = BEFORE_DROPOUT
        blk.mlp.act = ACT2FN["gelu_new"]
    m.gpt2.set_attn_implementation("sdpa")
    m.causal_shortcut = False
    return m


def train_flops(model: ReasonModel, batch: dict) -> float:
    """Model FLOPs of one training step (fwd + bwd = 3 x fwd), counted from the shapes of this batch:
    6 x weights per token through the blocks, 12 x L x C x T per token for attention (nanoGPT's count),
    and the LM head only on scored tokens (``scored_logits``), the mapper once per example."""
    c = model.gpt2.config
    B, T = batch["input_ids"].shape
    T += model.config.prefix_len if model.config.use_photo else 0
    blocks = sum(p.numel() for p in model.gpt2.transformer.h.parameters())
    n_tokens, n_scored = B * T, int((batch["labels"] != -100).sum())
    mapper = sum(p.numel() for p in model.mapper.parameters())
    return (6 * blocks * n_tokens + 12 * c.n_layer * c.n_embd * T * n_tokens
            + 6 * c.n_embd * c.vocab_size * n_scored + 6 * mapper * B)


def _counts(batches, prefix_len):
    tokens = sum(int(b["attention_mask"].sum()) + prefix_len * b["input_ids"].size(0) for b in batches)
    scored = sum(int((b["labels"] != -100).sum()) for b in batches)
    return tokens, scored


def plain_loop(model: ReasonModel, batches: list[dict], warmup: int, precision: str = "fp32", fused: bool = True,
               compiled: bool = False, device=torch.device("cpu")) -> dict:
    """The training step written out: AdamW (the module's groups and schedule), clip 1.0, no Trainer."""
    model = copy.deepcopy(model).to(device).train()
    module = ReasonModule(model=model, warmup_steps=2, lr_decay_steps=len(batches), fused_adamw=fused)
    opt_cfg = module.configure_optimizers()
    opt, sched = opt_cfg["optimizer"], opt_cfg["lr_scheduler"]["scheduler"]
    # compile the method the step calls (torch.compile(model) would compile forward() only)
    loss_fn = torch.compile(model.reason_loss, dynamic=True) if compiled else model.reason_loss
    t_compile = None
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else torch.enable_grad
    for i, b in enumerate(batches):
        b = {k: v.to(device) if torch.is_tensor(v) else v for k, v in b.items()}
        if i == warmup:
            _sync(device)
            t0 = time.perf_counter()
        t_step = time.perf_counter()
        with ctx():
            loss = loss_fn(b["photo_embedding"], b["has_photo"], b["input_ids"], b["segment_ids"],
                                   b["attention_mask"], b["labels"])[0]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if compiled and i == 0:
            t_compile = time.perf_counter() - t_step
    _sync(device)
    dt = time.perf_counter() - t0
    out = _throughput(model, batches[warmup:], dt)
    return out | ({"first_step_s (compile)": t_compile} if compiled else {})


def prime(model: ReasonModel, batches: list[dict], precisions=("fp32", "bf16")) -> None:
    """One untimed forward + backward of every batch in each of ``precisions`` (fp32, bf16 autocast). oneDNN builds
    (JIT-compiles) a kernel for each new matmul shape; without this the first row timed at a precision pays for
    every batch length once, and whichever loop runs later looks faster (the first bench read the Trainer 9% and
    15% *faster* than the same plain loop)."""
    m = copy.deepcopy(model).train()
    for b in batches:
        for precision in precisions:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = m.reason_loss(b["photo_embedding"], b["has_photo"], b["input_ids"], b["segment_ids"],
                                     b["attention_mask"], b["labels"])[0]
            loss.backward()
            m.zero_grad(set_to_none=True)


def _throughput(model, batches, seconds) -> dict:
    tokens, scored = _counts(batches, model.config.prefix_len if model.config.use_photo else 0)
    flops = sum(train_flops(model, b) for b in batches)
    return {"steps": len(batches), "seconds": seconds, "tokens_per_s": tokens / seconds,
            "scored_tokens_per_s": scored / seconds, "flops_per_token": flops / tokens,
            "model_flops_per_s": flops / seconds}


class _StepTimer(L.Callback):
    def __init__(self, warmup: int):
        self.warmup, self.t0, self.t1 = warmup, None, None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == self.warmup:
            self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.t1 = time.perf_counter()


def lightning_loop(model: ReasonModel, batches: list[dict], warmup: int, precision: str, workdir: Path,
                   progress: bool) -> dict:
    """The same steps through ``Trainer.fit`` as the default config sets it up (CSV logger, learning-rate
    monitor, progress bar, clipping), minus checkpoint writing and validation."""
    from lightning.pytorch.callbacks import LearningRateMonitor
    from lightning.pytorch.loggers import CSVLogger

    module = ReasonModule(model=copy.deepcopy(model), warmup_steps=2, lr_decay_steps=len(batches), n_samples=0)
    timer = _StepTimer(warmup)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), max_epochs=1, gradient_clip_val=1.0,
                        precision="bf16-mixed" if precision == "bf16" else "32-true", log_every_n_steps=20,
                        logger=CSVLogger(workdir, name="bench"), callbacks=[timer, LearningRateMonitor("step")],
                        enable_checkpointing=False, enable_progress_bar=progress, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=workdir)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None, shuffle=False))
    return _throughput(module.model, batches[warmup:], timer.t1 - timer.t0)


# ----------------------------------------------------------------------------- decoding

def hf_twin(model: ReasonModel) -> GPT2LMHeadModel:
    """The same weights as a plain Hugging Face GPT-2 that ``generate`` can drive from ``inputs_embeds``: new
    tokens get our reason-segment embedding (folded into an untied input table); the LM head keeps wte."""
    base = model.gpt2.get_base_model() if hasattr(model.gpt2, "get_base_model") else model.gpt2
    twin = copy.deepcopy(base).eval()
    twin.config.tie_word_embeddings = False
    twin.lm_head = torch.nn.Linear(twin.config.n_embd, twin.config.vocab_size, bias=False)
    twin.lm_head.weight = torch.nn.Parameter(base.lm_head.weight.detach().clone())
    inp = torch.nn.Embedding(twin.config.vocab_size, twin.config.n_embd)
    inp.weight = torch.nn.Parameter(base.get_input_embeddings().weight.detach()
                                    + model.segment.weight[SEG_REASON].detach())
    twin.transformer.wte = inp
    return twin


def prompt_batch(data, rows) -> dict:
    tok = data.tokenizer
    eos = token_id(tok, EOS)
    encoded = [encode_example(tok, data.prompt_example(r), max_prompt_tokens=data.max_prompt_tokens, with_reason=False)
               for r in rows]
    batch = collate(encoded, pad_id=eos, padding_side="left")
    batch.pop("labels")
    photo, has = data.artifacts.photo_lookup([r["article_id"] for r in rows])
    batch["photo_embedding"], batch["has_photo"] = photo, has
    return batch


@torch.no_grad()
def hf_generate(twin, model, batch, cfg: DecodeConfig, eos: int) -> list[list[int]]:
    x, mask, _ = model.embed_prefix(batch["photo_embedding"], batch["has_photo"], batch["input_ids"],
                                    batch["segment_ids"], batch["attention_mask"])
    out = twin.generate(inputs_embeds=x, attention_mask=mask, max_new_tokens=cfg.max_new_tokens, do_sample=False,
                        num_beams=cfg.num_beams if cfg.strategy == "beam" else 1, length_penalty=cfg.length_penalty,
                        no_repeat_ngram_size=cfg.no_repeat_ngram_size, eos_token_id=eos, pad_token_id=eos)
    ids = []
    for row in out.tolist():
        ids.append(row[:row.index(eos)] if eos in row else row)
    return ids


def _timed(fn, reps: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def _pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def decoding(model: ReasonModel, data, rows: list[dict], n_single: int, reps: int, max_new: int) -> dict:
    """Our decoding loop against Hugging Face ``generate`` on the same GPT-2 weights. HF has no copy head, so a
    model with one is compared without it (its LM head alone): the loops and the cache are what is measured."""
    if model.copy is not None:
        model = copy.deepcopy(model)
        model.copy = None
    model.eval()
    eos = token_id(data.tokenizer, EOS)
    twin = hf_twin(model)
    out = {}
    settings = [("greedy, batch 1", DecodeConfig("greedy", max_new_tokens=max_new, no_repeat_ngram_size=3), 1),
                ("greedy, batch 64", DecodeConfig("greedy", max_new_tokens=max_new, no_repeat_ngram_size=3), len(rows)),
                ("beam 4, batch 64", DecodeConfig("beam", num_beams=4, max_new_tokens=max_new, no_repeat_ngram_size=3),
                 len(rows))]
    for name, cfg, bs in settings:
        def run_batch(b, system, cfg=cfg):
            if system == "ours":
                return [c[0][0] for c in decode(model, b, cfg, eos)]
            return hf_generate(twin, model, b, cfg, eos)
        # the two systems alternate call by call, so a slower minute of a shared machine slows both alike
        times, ids = {"ours": [], "hf": []}, {"ours": [], "hf": []}
        if bs == 1:  # one call per prompt: per-reason latency as a customer would see it
            for r in rows[:n_single]:
                b = prompt_batch(data, [r])
                for system in times:
                    t, got = _timed(lambda b=b, system=system: run_batch(b, system), 1)
                    times[system] += t
                    ids[system] += got
        else:
            batch = prompt_batch(data, rows)
            for system in times:
                run_batch(batch, system)  # warm-up
            for _ in range(reps):
                for system in times:
                    t, ids[system] = _timed(lambda system=system: run_batch(batch, system), 1)
                    times[system] += t
        res = {}
        for system, ts in times.items():
            n_reasons = len(ts) * (1 if bs == 1 else len(rows))
            res[system] = {"reasons_per_s": n_reasons / sum(ts), "ms_per_call_p50": 1e3 * statistics.median(ts),
                           "ms_per_call_p95": 1e3 * _pct(ts, 0.95), "calls": len(ts), "batch": bs,
                           "tokens": sum(len(i) for i in ids[system]), "ids": ids[system]}
        res["speedup"] = res["ours"]["reasons_per_s"] / res["hf"]["reasons_per_s"]
        if cfg.strategy == "greedy":
            same = sum(a == b for a, b in zip(res["ours"]["ids"], res["hf"]["ids"]))
            res["greedy_same_ids"] = f"{same}/{len(res['ours']['ids'])}"
        for system in ("ours", "hf"):
            res[system].pop("ids")
        out[name] = res
    return out


# ----------------------------------------------------------------------------- CLIP

def clip_speed(clip_model: str, n: int, batch: int, steps: int, precisions=("fp32", "bf16")) -> dict:
    """Domain-CLIP training step and photo embedding, images/s, on random uint8 photos of the model's size
    (throughput does not depend on pixel values; photo decoding is not included)."""
    from open_clip.loss import ClipLoss


    model, preprocess, tokenizer = load_clip(clip_model, pretrained=None)
    size = preprocess.size
    photos = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    tokens = tokenizer(["a black jersey top with short sleeves"] * batch)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn, out = ClipLoss(), {}
    for precision in precisions:
        model.train()
        times = []
        for i in range(steps + 1):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_fn(*model(preprocess.normalize(photos), tokens))
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - t0)
        out[f"train step, {precision}"] = batch * steps / sum(times[1:])
        model.eval()
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            model.encode_image(preprocess.normalize(photos[:8]))
            t0 = time.perf_counter()
            for s in range(0, n, batch):
                model.encode_image(preprocess.normalize(photos[: min(batch, n - s)]))
        out[f"embed photos, {precision}"] = n / (time.perf_counter() - t0)
    return {"model": clip_model, "images_per_s": out, "batch": batch, "image_size": size}


# ----------------------------------------------------------------------------- ImageNet photo features

def photonet_speed(items, n: int, batch: int = 32) -> dict:
    """The ImageNet encoder's features (``photonet.py``: the first shown reason on a fresh checkout waits for
    them, once per photo set) on ``n`` real photos, images/s: the network as loaded before against
    ``photonet.fold_for_inference``, each row twice in turn; their largest feature difference; and the photos'
    decoding alone, which the rows do not include."""
    photos = items.loc[items["has_photo"].astype(bool), "photo_path"].sort_values().tolist()[:n]
    t0 = time.perf_counter()
    pixels = np.stack([photonet.load_pixels(p) for p in photos])
    decode_s = time.perf_counter() - t0
    models = {"before": photonet.load_encoder(folded=False), "folded": photonet.load_encoder()}
    rows, feats = {}, {}
    for name in ("before", "folded", "before (again)", "folded (again)"):
        model = models[name.split()[0]]
        photonet.encode(model, pixels[:2])  # untimed: the kernels' first call
        t0 = time.perf_counter()
        feats[name] = torch.cat([photonet.encode(model, pixels[s:s + batch]) for s in range(0, len(pixels), batch)])
        rows[name] = len(pixels) / (time.perf_counter() - t0)
    mean = lambda a, b: (rows[a] + rows[b]) / 2  # noqa: E731
    return {"model": photonet.MODEL, "photos": len(pixels), "batch": batch, "images_per_s": rows,
            "decode_images_per_s": len(pixels) / decode_s,
            "speedup_folded_vs_before": mean("folded", "folded (again)") / mean("before", "before (again)"),
            "max_abs_diff": float((feats["folded"] - feats["before"]).abs().max()),
            "mean_abs_feature": float(feats["before"].abs().mean())}


def candidates_speed(items, cache: dict, n: int) -> dict:
    """The attribute-text embeddings of ``n`` articles of the tables (drawn with seed 0), as the photo's copy table
    (``photodetails.ensure_offers``) computes them before choosing: every article through the sentence encoder
    (before) against the store's rows reused (``retrieval.store_text_embeddings``), each row twice in turn,
    articles/s; the largest difference of the vectors and whether ``photochoice.candidates`` are the same."""
    store = R.ensure_store(items, cache, progress=False)
    arts = items.sample(n=min(n, len(items)), random_state=0).reset_index(drop=True)
    encoder = sentence_encoder()
    R.encode_texts(R.article_texts(arts.iloc[:2]), encoder, progress=False)  # untimed: the kernels' first call
    ways = {"before": lambda: R.embed_articles(arts, encoder)[0],
            "store reused": lambda: R.store_text_embeddings(store, arts, encoder)}
    rows, vecs = {}, {}
    for name in ("before", "store reused", "before (again)", "store reused (again)"):
        t0 = time.perf_counter()
        vecs[name] = ways[name.removesuffix(" (again)")]()
        rows[name] = len(arts) / (time.perf_counter() - t0)
    mean = lambda a: (rows[a] + rows[f"{a} (again)"]) / 2  # noqa: E731
    cand = {w: photochoice.candidates(store, arts, photodetails.K, text=vecs[w]).copies for w in ("before", "store reused")}
    return {"articles": len(arts), "in_store": int(arts["article_id"].isin(store.article_id.tolist()).sum()),
            "articles_per_s": rows, "speedup_store_reused_vs_before": mean("store reused") / mean("before"),
            "max_abs_diff": float((vecs["store reused"] - vecs["before"]).abs().max()),
            "same_candidates": f"{sum(a == b for a, b in zip(cand['before'], cand['store reused']))}/{len(arts)}"}


# ----------------------------------------------------------------------------- CUDA: the 124M model

def cuda_gpt2_124m(steps: int) -> dict:
    """configs/gpu.yaml's decoder on random tokens in bf16 + compile: tokens/s and MFU beside the anchors."""
    dev = torch.device("cuda")
    cfg = yaml.safe_load((paths.REPO_ROOT / "configs" / "gpu.yaml").read_text())["model"]["config"]
    mc = ModelConfig(**{k: v for k, v in cfg.items() if k in ModelConfig.__dataclass_fields__}, vocab_size=50304)
    model = ReasonModel(mc).to(dev)
    B, T = 16, 1024 - mc.prefix_len
    batches = [{"photo_embedding": torch.randn(B, mc.clip_dim), "has_photo": torch.ones(B, dtype=torch.bool),
                "input_ids": torch.randint(0, 50304, (B, T)), "segment_ids": torch.full((B, T), SEG_REASON),
                "attention_mask": torch.ones(B, T, dtype=torch.long), "labels": torch.randint(0, 50304, (B, T))}
               for _ in range(steps)]
    res = plain_loop(model, batches, warmup=3, precision="bf16", compiled=True, device=dev)
    peak = gemm_flops(dev, torch.bfloat16, 8192, 2.0)
    return res | {"mfu_vs_measured_bf16": res["model_flops_per_s"] / peak, "measured_bf16_flops": peak,
                  "anchors_tokens_per_s": ANCHORS}


# ----------------------------------------------------------------------------- report

NO_BF16 = "not measured (`--bf16 auto` measures bf16 on bf16 hardware only; `--bf16 yes` times its emulation)"


def markdown(r: dict) -> str:
    lim = r["limit"]
    unit, scale = ("TFLOP/s", 1e12) if r["device"] == "cuda" else ("GFLOP/s", 1e9)
    f = lambda x: f"{x / scale:,.1f}"  # noqa: E731
    lines = [f"# Speed on {r['machine']} ({r['threads']} threads, torch {r['torch']})", "",
             f"`{r['command']}`, {r['date']}. Every figure below was measured in this one run.", "",
             "## The machine's limit", "", f"| GEMM {r['gemm_n']}² | {unit} |", "| --- | --- |",
             f"| fp32 | {f(lim['fp32'])} |",
             f"| bf16 | {f(lim['bf16']) if 'bf16' in lim else NO_BF16} |",
             "",
             "## Generator training", "",
             f"{r['train']['batches']} real training batches of the run (batch {r['train']['batch_size']}, "
             f"{r['train']['warmup']} warm-up steps not timed). MFU = model FLOP/s over the measured GEMM limit of "
             "the same precision.", "",
             f"| loop | settings | precision | tokens/s | scored tokens/s | FLOPs/token | {unit} | limit | MFU |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in r["train"]["runs"].items():
        loop, settings, precision = name.split(" | ")
        peak = lim["bf16" if precision.startswith("bf16") else "fp32"]
        lines.append(f"| {loop} | {settings} | {precision} | {v['tokens_per_s']:,.0f} | {v['scored_tokens_per_s']:,.0f} "
                     f"| {v['flops_per_token'] / 1e6:.2f}M | {f(v['model_flops_per_s'])} | {f(peak)} "
                     f"| {v['model_flops_per_s'] / peak:.1%} |")
    t = r["train"]
    lines += ["", f"- Default settings ({t.get('default_precision', 'fp32')}) against before (fp32), plain loop, mean "
              f"of each row and its rerun: **{t['speedup_after_vs_before']:.2f}x** tokens/s.",
              f"- Lightning `Trainer` against the plain loop (same settings and precision): overhead "
              f"**{t['lightning_overhead']:+.1%}**.",
              f"- Padding: {t['padding_share']:.1%} of the positions in these batches are padding (length bucketing).",
              ""]
    lines += ["## Decoding", "", f"{r['decode']['n_prompts']} unseen-product test prompts, {r['decode']['max_new']} new "
              "tokens at most, n-gram ban 3; ours = `generate.decode`, HF = `GPT2LMHeadModel.generate` on the same "
              "weights, the two called in turn. Latency is per call (one call = one batch).", "",
              "| setting | system | reasons/s | ms/call p50 | ms/call p95 | speed-up | greedy ids equal |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, v in r["decode"]["settings"].items():
        for s in ("ours", "hf"):
            d = v[s]
            lines.append(f"| {name} | {s} | {d['reasons_per_s']:,.1f} | {d['ms_per_call_p50']:,.1f} "
                         f"| {d['ms_per_call_p95']:,.1f} | {v['speedup']:.2f}x | {v.get('greedy_same_ids', '')} |"
                         if s == "ours" else
                         f"| | {s} | {d['reasons_per_s']:,.1f} | {d['ms_per_call_p50']:,.1f} | {d['ms_per_call_p95']:,.1f} | | |")
    c = r["clip"]
    lines += ["", f"## Domain CLIP ({c['model']}, {c['image_size']}px, batch {c['batch']})", "", "| work | images/s |",
              "| --- | --- |"] + [f"| {k} | {v:,.0f} |" for k, v in c["images_per_s"].items()]
    p = r.get("photonet")
    if p:
        lines += ["", f"## ImageNet photo features ({p['model']}, {p['photos']} real photos, batch {p['batch']})", "",
                  "The features the photo's copy is chosen by, computed once per photo set (`photonet.py`); decoding "
                  "the photos is not included.", "", "| network | images/s |", "| --- | --- |"]
        lines += [f"| {k} | {v:,.1f} |" for k, v in p["images_per_s"].items()]
        lines += ["", f"- Folded (`fold_for_inference`) against as loaded before, mean of each row and its rerun: "
                  f"**{p['speedup_folded_vs_before']:.2f}x**; largest feature difference {p['max_abs_diff']:.1e} "
                  f"(mean feature size {p['mean_abs_feature']:.3f}).",
                  f"- Decoding the photos alone: {p['decode_images_per_s']:,.0f} images/s."]
    c = r.get("candidates")
    if c:
        lines += ["", f"## The photo's copy: its candidates' attribute texts ({c['articles']:,} articles of the tables, "
                  f"{c['in_store']:,} in the store)", "",
                  "Embedded as `photodetails.ensure_offers` embeds them before choosing among the text's nearest copies "
                  "(`photochoice.candidates`).", "", "| embedding | articles/s |", "| --- | --- |"]
        lines += [f"| {k} | {v:,.1f} |" for k, v in c["articles_per_s"].items()]
        lines += ["", f"- The store's rows reused against every article encoded, mean of each row and its rerun: "
                  f"**{c['speedup_store_reused_vs_before']:.2f}x**; largest vector difference {c['max_abs_diff']:.1e}; "
                  f"the same candidates for {c['same_candidates']} articles."]
    lines += ["", "## CUDA: GPT-2 124M (configs/gpu.yaml)", ""]
    g = r.get("cuda")
    if g:
        lines += [f"{g['tokens_per_s']:,.0f} tokens/s, MFU {g['mfu_vs_measured_bf16']:.1%} of the measured bf16 "
                  f"limit; anchors: " + ", ".join(f"{k} {v:,.0f}" for k, v in g["anchors_tokens_per_s"].items())]
    else:
        lines += ["Not measured: no CUDA device in this run."]
    return "\n".join(lines) + "\n"


@dataclass
class BenchOptions:
    """Speed against the machine's measured limit: ``python -m mmreason.bench``.

    Args:
        run: a trained run (folder or .ckpt)
        out: folder for <device>.json and <device>.md
        tiny: a few steps and prompts (tests, smoke runs)
        compile: the torch.compile row (--no-compile skips it: it compiles for minutes)
        cuda: the CUDA 124M section where CUDA is present (--no-cuda skips it)
        bf16: the bf16 GEMM and rows: auto = where the CPU multiplies bf16 in hardware (elsewhere bf16 is
            emulated, and its rows time the emulation for tens of minutes), yes, no
    """
    run: Path = field(default_factory=paths.run_dir)
    out: Path = field(default_factory=lambda: paths.results_dir("bench"))
    tiny: bool = False
    compile: bool = True
    cuda: bool = True
    bf16: Literal["auto", "yes", "no"] = "auto"

    def __post_init__(self):
        self.run = paths.resolve(self.run)  # artifacts/runs/<name> is under the artifacts root


def get_parser() -> cli.ArgumentParser:
    return cli.parser(BenchOptions, prog="python -m mmreason.bench", description=BenchOptions.__doc__.split("\n")[0])


def main(argv=None) -> int:
    args, = get_parser().parse(argv)
    paths.offline()
    tiny = args.tiny
    steps, warmup = (6, 2) if tiny else (40, 5)
    torch.manual_seed(0)
    try:
        module, data = load_run(args.run)
    except (FileNotFoundError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    model = module.model.cpu()
    data.setup("fit")
    device = torch.device("cpu")
    info = cpu_info()  # read once: the header's CPU and whether bf16 is measured
    hw_bf16 = cpu_has_bf16(info)
    r = {"machine": device_name(device, info), "device": "cpu", "threads": torch.get_num_threads(),
         "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M"), "run": paths.shown(args.run),
         "command": "python -m mmreason.bench" + (" " + " ".join(argv) if argv else "")}
    n = 256 if tiny else 2048
    bf16 = args.bf16 == "yes" or (args.bf16 == "auto" and hw_bf16)
    precisions = ("fp32", "bf16") if bf16 else ("fp32",)
    r["bf16_rows"] = bf16
    print(f"[bench] GEMM {n}² fp32{' / bf16' if bf16 else ''} ...", flush=True)
    r["gemm_n"], r["limit"] = n, {"fp32": gemm_flops(device, torch.float32, n, 1 if tiny else 4)}
    if bf16:
        r["limit"]["bf16"] = gemm_flops(device, torch.bfloat16, n, 1 if tiny else 4)
    batches = list(itertools.islice(data.train_dataloader(), steps))
    batches = list(itertools.islice(itertools.cycle(batches), steps))  # a tiny run has fewer batches
    before = before_settings(model)
    # the default run's precision (configs/cpu.yaml: bf16-mixed, fp32 on CPUs without bf16 hardware)
    default = "bf16" if bf16 and hw_bf16 else "fp32"
    prec = {"fp32": "fp32", "bf16": "bf16 autocast"}
    runs = {}
    plan = [("plain | before | fp32", lambda: plain_loop(before, batches, warmup, "fp32", fused=False)),
            ("plain | after | fp32", lambda: plain_loop(model, batches, warmup, "fp32")),
            *([("plain | after | bf16 autocast", lambda: plain_loop(model, batches, warmup, "bf16"))] if bf16 else []),
            *([("plain | after + compile | fp32", lambda: plain_loop(model, batches, warmup, "fp32", compiled=True))]
              if args.compile and not tiny else []),
            (f"Lightning | after | {prec[default]}", lambda: lightning_loop(model, batches, warmup, default, Path(tmp),
                                                                            progress=not tiny)),
            (f"plain | after | {prec[default]} (again)", lambda: plain_loop(model, batches, warmup, default)),
            ("plain | before | fp32 (again)", lambda: plain_loop(before, batches, warmup, "fp32", fused=False))]
    tmp = tempfile.mkdtemp(prefix="mmreason-bench-")  # the Trainer's CSV logs; not a result
    print("[bench] priming kernels for every batch shape (untimed) ...", flush=True)
    prime(model, batches, precisions)
    prime(before, batches, precisions)
    for name, fn in plan:
        print(f"[bench] training: {name} ...", flush=True)
        runs[name] = fn()
        print(f"[bench]   {runs[name]['tokens_per_s']:,.0f} tokens/s", flush=True)
    tps = lambda *names: statistics.mean(runs[n]["tokens_per_s"] for n in names)  # noqa: E731
    plain = tps(f"plain | after | {prec[default]}", f"plain | after | {prec[default]} (again)")
    before_tps = tps("plain | before | fp32", "plain | before | fp32 (again)")
    padded = sum(b["attention_mask"].numel() for b in batches)
    r["train"] = {"batches": steps, "warmup": warmup, "batch_size": data.batch_size, "runs": runs,
                  "default_precision": prec[default],
                  "padding_share": 1 - sum(int(b["attention_mask"].sum()) for b in batches) / padded,
                  "speedup_after_vs_before": plain / before_tps,
                  "lightning_overhead": plain / runs[f"Lightning | after | {prec[default]}"]["tokens_per_s"] - 1}
    ex = data.artifacts.examples
    test = ex[ex["split_unseen"] == "test"]
    n_prompts = 4 if tiny else 64
    rows = test.sample(n=min(n_prompts, len(test)), random_state=0).to_dict("records")
    max_new = 8 if tiny else 80
    print(f"[bench] decoding {len(rows)} prompts ...", flush=True)
    r["decode"] = {"n_prompts": len(rows), "max_new": max_new,
                   "settings": decoding(model, data, rows, n_single=2 if tiny else 16, reps=1 if tiny else 5,
                                        max_new=max_new)}
    print("[bench] CLIP ...", flush=True)
    r["clip"] = clip_speed(data.artifacts.clip_model, n=16 if tiny else 512, batch=8 if tiny else 128,
                           steps=1 if tiny else 4, precisions=precisions)
    print("[bench] ImageNet photo features ...", flush=True)
    r["photonet"] = photonet_speed(data.artifacts.items, n=8 if tiny else 256, batch=4 if tiny else 32)
    print("[bench] the photo's copy's candidates ...", flush=True)
    r["candidates"] = candidates_speed(data.artifacts.items, data.artifacts.cache, n=16 if tiny else 2000)
    if torch.cuda.is_available() and args.cuda:
        r["cuda"] = cuda_gpt2_124m(steps=6 if tiny else 30)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cpu.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "cpu.md").write_text(markdown(r))
    print(markdown(r))
    print(f"[bench] wrote {out / 'cpu.md'} and {out / 'cpu.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
