"""Fine-tune the reason generator on purchase feedback: ``python -m mmreason.rl [--steps N] [...]``.

Self-critical policy gradient (SCST; by default the leave-one-out variant: each prompt gets K samples
and each sample's baseline is the mean reward of the other K-1, Kool et al. 2019), with a KL penalty
to the supervised model. The reward of a reason r for (customer, article, day):

    reward = w_feedback * logit P(buy | customer, article, r)      (mmreason.feedback's model)
           + w_grounding * (names the article's true colour / type, minus wrong colour / type / pattern) / 2
           + w_reference * ROUGE-L F1(r, silver reason)             (grounding in the article's real copy and
                                                                     the customer's real purchases)
           - w_filter * [the post-filter rejects r]                 (mmreason.filters: empty, truncated,
                                                                     repetitive, wrong attribute, false history)

The reference term is there because without it the policy found a cheaper way up (measured, see the
README): generic copy ("fine knit containing some wool") that names no type or colour, and impersonal
hooks that make no history claim, pass the filter and cannot be wrong; reasons then became less
specific (unique-sentence ratio 0.73 -> 0.36, copy CIDEr 0.45 -> 0.38 on unseen products).

``part`` says what is rewarded. "reason" (the default): the whole sampled reason. "hook": what the deployed
offer shows for a run whose prompt retrieves copies, i.e. the sample's first sentence followed by the copy it
offers (``shown.offered``): the copy the photo chose for a run that sees the photo (``shown.photo_offer``, as
deployed; ``Prompts(offer_photo=True)``), else the prompt's first retrieved copy; the reward scores that text and
the gradient and the KL credit the hook's tokens only (the README's "hook" run predates the photo's copy). Measured on the default run (README): neither moves the deployed reward beyond noise
("reason", on the slot default: unseen 0.535 -> 0.539, temporal 0.620 -> 0.622; "hook", before the hook check:
-0.009 unseen); "reason" raises the sampled reward (0.237 -> 0.342), "hook" does not (0.447 -> 0.434): the
supervised hooks already match their evidence's (95% of shown ones), so the reward has little left to find in them.

Prompts are the supervised model's training examples (days before each customer's val/test day).
Before and after, the deployed decoding (beam + filter, as ``mmreason.evaluate``) is scored on the
unseen-product and temporal test sets: mean reward and its parts, grounding precision, filter
rejection, Distinct-2 / USR / Self-BLEU and copy quality. Writes ``<out>/checkpoints/last.ckpt``
(loadable like any run: ``lit.load_run``, ``recommend --explain --generator <out>``), ``<out>/log.csv``
and ``results/cpu/rl.{json,md}`` (``--results``). A rerun resumes from the last checkpoint of the same settings.
"""
from __future__ import annotations

import csv
import hashlib
import inspect
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from mmreason import metrics as M
from mmreason import paths
from mmreason.decoding.filters import Filter, vocab_from_items
from mmreason.decoding.generate import DecodeConfig, decode
from mmreason.decoding.shown import decoding, evidence_names, fill_slots, offered, photo_offer
from mmreason.evaluation.systems import histories, model_reasons, score
from mmreason.io import DataError, check_ranges, fingerprint, sha256_file
from mmreason.metrics import split_sentences
from mmreason.model.collate import EOS, RETRIEVED_SEPARATOR, collate, encode_example, token_id
from mmreason.model.network import SEG_REASON
from mmreason.recsys.feedback import FeedbackModel
from mmreason.recsys.feedback_train import FeedbackRun, run as train_feedback
from mmreason.recsys.twotower import load_photo_embeddings

GROUNDED_FIELDS = {"colour": "colour_group_name", "type": "product_type_name"}
PARTS = ("reason", "hook")


@dataclass
class RLConfig:
    steps: int = 150
    prompts: int = 16              # prompts per step
    samples: int = 4               # sampled reasons per prompt
    baseline: str = "loo"          # "loo": mean reward of the prompt's other samples; "greedy": classic SCST
    temperature: float = 1.0
    max_new_tokens: int = 80
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_coef: float = 0.1           # per-token KL(policy || supervised), exact over the vocabulary
    w_feedback: float = 1.0
    w_grounding: float = 0.5
    w_reference: float = 2.0       # ROUGE-L F1 with the silver reason (real copy + real-history hook)
    w_filter: float = 0.5
    part: str = "reason"           # what is rewarded (module docstring): "reason" or "hook" (+ the retrieved copy)
    seed: int = 0

    def __post_init__(self):
        if self.part not in PARTS:
            raise ValueError(f"part must be one of {', '.join(PARTS)}, not {self.part!r}")
        if self.baseline not in ("loo", "greedy"):
            raise ValueError(f"baseline must be 'loo' or 'greedy', not {self.baseline!r}")
        # the reward's weights may take any sign (an experiment); steps 0 scores the supervised model only
        check_ranges(self, steps=">=0", prompts=">=1", samples=">=1", temperature=">0", max_new_tokens=">=1",
                         lr=">=0", weight_decay=">=0", grad_clip=">0", kl_coef=">=0", seed=">=0")
        if self.baseline == "loo" and self.samples < 2:
            raise ValueError("the leave-one-out baseline needs --samples >= 2")


# --------------------------------------------------------------------------- reward

# What a reward of this code means, for people: the number the README and rl.json report. Bump it whenever the
# reward or the filter scores other text (2: the catalogue's slash values are named by their parts,
# metrics.VALUE_ALIASES; 3: a part in a cited purchase's name backs a claim, and the evidence's own hook is not
# held to the history's sets; 4: a hook whose cited name has an unspaced full stop, "Aza.Low", is its evidence's
# after cleaning too). rl.main continues a checkpoint, and reuses the supervised model's scores, only when both
# this number and reward_code_sha256() are the same: a forgotten bump cannot continue a run under another reward.
REWARD_VERSION = 4


class Reward:
    """reward(texts, rows) for rows with customer_id, article_id, t_dat; also returns each part."""

    def __init__(self, feedback, items: pd.DataFrame, config: RLConfig):
        self.feedback, self.config = feedback, config
        self.items = items.set_index("article_id")
        self.vocab = vocab_from_items(items)
        self.filter = Filter(self.vocab)
        self.index = {f: M.value_index(self.vocab[f]) for f in GROUNDED_FIELDS}
        from rouge_score import rouge_scorer

        self.rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)

    def grounding(self, text: str, article: dict, causes: list[str]) -> float:
        """(true colour named + true type named - fields with a wrong value) / 2, in [-1.5, 1]."""
        named = sum(" ".join(M.tokenize(str(article[col]))) in M.mentioned_values(text, self.index[f])
                    for f, col in GROUNDED_FIELDS.items())
        wrong = sum(c in ("wrong_colour", "wrong_type", "wrong_pattern") for c in causes)
        return (named - wrong) / 2

    def __call__(self, texts: list[str], rows: list[dict], hists: list[dict]) -> dict[str, np.ndarray]:
        """rows: customer_id, article_id, t_dat, (for the reference term) reason, the silver target, and
        optionally hook, the evidence's hook sentence the filter holds a reason's hook to."""
        c = self.config
        arts = [self.items.loc[int(r["article_id"])].to_dict() for r in rows]
        causes = [self.filter.check(t, a, h, r.get("hook")) for t, a, h, r in zip(texts, arts, hists, rows)]
        passed = np.array([not cs for cs in causes], dtype=float)
        grounding = np.array([self.grounding(t, a, cs) for t, a, cs in zip(texts, arts, causes)])
        if self.feedback is not None:
            p = self.feedback.score_batch([r["customer_id"] for r in rows], [int(r["article_id"]) for r in rows],
                                          texts, [r["t_dat"] for r in rows])
        else:
            p = np.full(len(texts), 0.5)
        p = np.clip(p, 1e-6, 1 - 1e-6)
        logit = np.log(p / (1 - p))
        reference = np.array([self.rouge.score(r["reason"], t)["rougeL"].fmeasure if r.get("reason") else 0.0
                              for t, r in zip(texts, rows)])
        total = (c.w_feedback * logit + c.w_grounding * grounding + c.w_reference * reference
                 - c.w_filter * (1 - passed))
        return {"reward": total, "feedback": p, "feedback_logit": logit, "grounding": grounding,
                "reference": reference, "passed": passed, "causes": causes}


# --------------------------------------------------------------------------- prompts

class Prompts:
    """Examples of one frame, encoded once: prompt ids, photo embeddings, rows and histories."""

    def __init__(self, data, frame: pd.DataFrame, interactions: pd.DataFrame, items: pd.DataFrame,
                 offer_photo: bool = False):
        """offer_photo: the copy offered after a sampled hook (``part="hook"``) is the one the photo chose
        (``shown.photo_offer``), as deployed for a run that sees the photo (``shown.uses_photo_offers``)."""
        self.frame = frame.reset_index(drop=True)
        # "hook": the evidence's hook sentence, which the filter holds a reason's hook to (filters.hook_span)
        self.rows = self.frame[["customer_id", "article_id", "t_dat", "reason", "hook"]].to_dict("records")
        # a slot run's samples spell collate.NAME_SLOT: shown (and rewarded) with the evidence's name filled in
        self.names = [evidence_names(r) for r in self.frame.to_dict("records")]
        self.hists = histories(self.frame, interactions, items)
        examples = [data.prompt_example(r) for r in self.frame.to_dict("records")]
        self.encoded = [encode_example(data.tokenizer, e, data.max_prompt_tokens, with_reason=False) for e in examples]
        self.retrieved = [e.get("retrieved") or None for e in examples]  # the prompt's retrieved copies; None: none
        # the copy offered after a sampled hook (part="hook"), as the deployed offer chooses it; None: nothing to offer
        self.offer = ([c or None for c in photo_offer(data, self.frame.to_dict("records"), examples)] if offer_photo
                      else [r.split(RETRIEVED_SEPARATOR)[0] if r else None for r in self.retrieved])
        self.photo, self.has_photo = data.artifacts.photo_lookup(self.frame["article_id"].to_numpy())

    def __len__(self):
        return len(self.frame)

    def hook_only(self, part: str) -> bool:
        """Whether ``part`` ("reason", "hook") rewards the hook + the retrieved copy (module docstring)."""
        if part == "hook" and not (all(self.retrieved) and all(self.offer)):
            raise ValueError('part="hook" needs a run whose prompt_fields include "retrieved"')
        return part == "hook"

    def batch(self, idx, pad_id: int) -> dict:
        b = collate([self.encoded[i] for i in idx], pad_id=pad_id, padding_side="left")
        b.pop("labels")
        t = torch.as_tensor(np.asarray(idx))
        return b | {"photo_embedding": self.photo[t], "has_photo": self.has_photo[t]}


def sequence_batch(prompts: Prompts, idx, samples: list[list[list[int]]], eos_id: int, pad_id: int,
                   max_new_tokens: int, eos: bool = True) -> dict:
    """Prompt + sampled reason rows (prompt-major: row i*K + j is sample j of prompt idx[i]), labels on the
    reason. A sample shorter than max_new_tokens stopped at EOS, so EOS is part of what the policy chose
    (eos=False: the samples are credited as given, e.g. hooks cut from longer reasons)."""
    rows, photo_rows = [], []
    for i, cands in zip(idx, samples):
        p = prompts.encoded[i]
        for ids in cands:
            reason = list(ids) + ([eos_id] if eos and len(ids) < max_new_tokens else [])
            rows.append({"input_ids": p["input_ids"] + reason, "segment_ids": p["segment_ids"] + [SEG_REASON] * len(reason),
                         "labels": [-100] * len(p["input_ids"]) + reason})
            photo_rows.append(i)
    b = collate(rows, pad_id=pad_id, padding_side="right")
    t = torch.as_tensor(photo_rows)
    return b | {"photo_embedding": prompts.photo[t], "has_photo": prompts.has_photo[t]}


def hook_length(tokenizer, ids: list[int]) -> int:
    """How many of ``ids`` spell the first sentence of their text (``metrics.split_sentences``): the shortest
    prefix whose decoded text is as long as that sentence (all of them for a one-sentence text)."""
    sentences = split_sentences(tokenizer.decode(ids, skip_special_tokens=True))
    if len(sentences) < 2:
        return len(ids)
    return next(j for j in range(1, len(ids) + 1)
                if len(tokenizer.decode(ids[:j], skip_special_tokens=True).strip()) >= len(sentences[0]))


def shown_samples(tokenizer, prompts: Prompts, idx, samples: list[list[list[int]]], hook: bool, eos_id: int
                  ) -> tuple[list[str], list[list[list[int]]]]:
    """What each sample would be shown as (flat, prompt-major) and the ids the policy is credited for (nested like
    ``samples``), a slot run's ``collate.NAME_SLOT`` filled as ``shown`` fills it. hook=False: the sampled reason,
    and its ids (``sequence_batch`` adds EOS where it stopped).
    hook=True: the reason's first sentence followed by the copy offered (``Prompts.offer``, ``shown.offered``), and
    the hook's ids alone, or EOS for an empty sample (stopping at once was the policy's only choice)."""
    texts, credited = [], []
    for i, cands in zip(idx, samples):
        credited.append([])
        for ids in cands:
            text = fill_slots(tokenizer.decode(ids, skip_special_tokens=True).strip(), prompts.names[i])
            if hook:
                # the sampled hook, never the evidence's (offered's repair): the reward must score what was sampled
                text = (offered(text, prompts.offer[i], 1) or [text])[0]
                ids = ids[:hook_length(tokenizer, ids)] or [eos_id]
            texts.append(text)
            credited[-1].append(ids)
    return texts, credited


def token_logprobs(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (log-probs over the vocabulary (N, V) at the N reason positions, the chosen tokens (N,), row of each (N,))."""
    lp, targets, scored = model.scored_logprobs(batch["photo_embedding"], batch["has_photo"], batch["input_ids"],
                                                batch["segment_ids"], batch["attention_mask"], batch["labels"], full=True)
    return lp, targets, scored.nonzero()[:, 0]


# --------------------------------------------------------------------------- one update

def step_generator(seed: int, step: int) -> torch.Generator:
    """Each step draws from its own seeded stream, so a resumed run samples what an uninterrupted one would."""
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def rl_step(policy, reference, optimizer, prompts: Prompts, reward: Reward, config: RLConfig, step: int,
            tokenizer) -> dict:
    eos_id = token_id(tokenizer, EOS)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    rng = np.random.default_rng([config.seed, step])
    idx = rng.choice(len(prompts), size=min(config.prompts, len(prompts)), replace=False).tolist()
    K = config.samples
    sampler = DecodeConfig("sample", temperature=config.temperature, max_new_tokens=config.max_new_tokens,
                           num_return_sequences=K)
    prompt_batch = prompts.batch(idx, pad_id)
    samples = [[ids for ids, _ in c] for c in decode(policy, prompt_batch, sampler, eos_id, step_generator(config.seed, step))]
    hook = prompts.hook_only(config.part)
    texts, credited = shown_samples(tokenizer, prompts, idx, samples, hook, eos_id)
    rows = [prompts.rows[i] for i in idx for _ in range(K)]
    hists = [prompts.hists[i] for i in idx for _ in range(K)]
    r = reward(texts, rows, hists)
    R = torch.as_tensor(r["reward"], dtype=torch.float32).view(len(idx), K)          # (B, K)
    if config.baseline == "loo":
        base = (R.sum(1, keepdim=True) - R) / (K - 1)                                  # (B, K)
    else:
        greedy = decode(policy, prompt_batch, DecodeConfig("greedy", max_new_tokens=config.max_new_tokens), eos_id)
        g_texts, _ = shown_samples(tokenizer, prompts, idx, [[c[0][0]] for c in greedy], hook, eos_id)
        g = reward(g_texts, [prompts.rows[i] for i in idx], [prompts.hists[i] for i in idx])["reward"]
        base = torch.as_tensor(g, dtype=torch.float32)[:, None].expand_as(R)
    adv = (R - base).flatten()                                                         # (B*K,)

    batch = sequence_batch(prompts, idx, credited, eos_id, pad_id, config.max_new_tokens, eos=not hook)
    policy.eval()  # no dropout: the log-probs must be those of the policy that sampled
    logp_all, targets, row = token_logprobs(policy, batch)                             # (N, V), (N,), (N,)
    with torch.no_grad():
        ref_all, _, _ = token_logprobs(reference, batch)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)                             # (N,)
    seq_logp = torch.zeros(len(adv)).index_add(0, row, logp)                           # (B*K,)
    kl_tok = (logp_all.exp() * (logp_all - ref_all)).sum(-1)                           # (N,)
    n_tok = row.numel()
    pg_loss = -(adv * seq_logp).sum() / n_tok
    kl = kl_tok.mean()
    loss = pg_loss + config.kl_coef * kl
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), config.grad_clip)
    optimizer.step()
    return {"step": step + 1, "reward": float(R.mean()), "feedback": float(r["feedback"].mean()),
            "grounding": float(r["grounding"].mean()), "reference": float(r["reference"].mean()),
            "passed": float(r["passed"].mean()), "kl": float(kl.detach()), "pg_loss": float(pg_loss.detach()), "grad_norm": float(grad_norm),
            "tokens_per_sample": n_tok / len(adv), "distinct2": M.distinct(texts, 2)}


# --------------------------------------------------------------------------- evaluation

def sampled_reward(model, prompts: Prompts, reward: Reward, config: RLConfig, tokenizer, batch: int = 32) -> dict:
    """Mean reward (and parts) of reasons sampled as in training (temperature, K=1, shown as ``config.part``
    says), seed-fixed."""
    eos_id = token_id(tokenizer, EOS)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    cfg = DecodeConfig("sample", temperature=config.temperature, max_new_tokens=config.max_new_tokens)
    gen, texts, hook = torch.Generator().manual_seed(config.seed), [], prompts.hook_only(config.part)
    for s in range(0, len(prompts), batch):
        idx = list(range(s, min(s + batch, len(prompts))))
        samples = [[c[0][0]] for c in decode(model, prompts.batch(idx, pad_id), cfg, eos_id, gen)]
        texts += shown_samples(tokenizer, prompts, idx, samples, hook, eos_id)[0]
    r = reward(texts, prompts.rows, prompts.hists)
    return {k: float(np.mean(r[k])) for k in ("reward", "feedback", "grounding", "reference", "passed")}


KEY_METRICS = ["grounding_colour_precision", "grounding_type_precision", "grounding_colour_mention_rate",
               "history_claim_precision", "name_citation_precision", "distinct2", "usr", "self_bleu4", "bleu4", "cider", "hook_cider",
               "copy_bleu4", "copy_cider", "detail_precision", "detail_contradiction"]
# The code that turns shown reasons into those metrics (under the package): the supervised model's scores
# (rl.py's before.json) are reused only while it is the same, so a metric defined anew is rescored
PACKAGE = paths.REPO_ROOT / "mmreason"
SCORING_CODE = ("metrics.py", "evaluation/systems.py")


# The code a reward is computed by, besides Reward itself: the filter (and its vocabulary) and the metrics'
# value matching. An RL checkpoint, and the supervised model's scores, are reused only while it is the same
REWARD_CODE = ("decoding/filters.py", "metrics.py")


def scoring_code_sha256() -> str:
    return fingerprint({rel: sha256_file(PACKAGE / rel) for rel in SCORING_CODE})


def reward_code_sha256() -> str:
    """Moves with any edit of ``REWARD_CODE``'s files or of the ``Reward`` class (its source, so an edit elsewhere
    in this module, e.g. to the training step, keeps a run resumable)."""
    files = {rel: sha256_file(PACKAGE / rel) for rel in REWARD_CODE}
    return fingerprint(files | {"Reward": hashlib.sha256(inspect.getsource(Reward).encode()).hexdigest(),
                                "GROUNDED_FIELDS": GROUNDED_FIELDS})


def deployed_scores(module, data, prompts: Prompts, reward: Reward, items: pd.DataFrame, n_decode: str = "beam",
                    progress: bool = True) -> dict:
    """The reasons users would see (``evaluate``'s decoding + filter), scored with the reward and the metrics."""
    decode_cfg, fallback = decoding(n_decode)
    hyps, report = model_reasons(module, data, prompts.frame, items, prompts.hists, reward.filter, decode_cfg,
                                 progress=progress, fallback=fallback)
    r = reward(hyps, prompts.rows, prompts.hists)
    m = score(hyps, prompts.frame, items, prompts.hists, reward.vocab, with_embedding=False)
    out = {"reward": float(np.mean(r["reward"])), "feedback": float(np.mean(r["feedback"])),
           "grounding": float(np.mean(r["grounding"])), "reference": float(np.mean(r["reference"])),
           "shown_passes_filter": float(np.mean(r["passed"])),
           "first_choice_rejected": report["first_choice_rejected_rate"],
           "hook_repaired": report["evidence_hook_share"],  # the model's hook failed: the evidence's is shown
           **{k: m[k] for k in KEY_METRICS if k in m}}
    return out | {"samples": [{"article_id": int(a), "generated": h, "silver": s} for a, h, s in
                              list(zip(prompts.frame["article_id"], hyps, prompts.frame["reason"]))[:8]]}


# --------------------------------------------------------------------------- checkpoints

def resumable(config: RLConfig) -> dict:
    """The settings a checkpoint must share to be continued (``steps`` may grow: a run can be extended)."""
    return {k: v for k, v in asdict(config).items() if k != "steps"}


def same_run(recorded: str, base_path: Path) -> bool:
    """A recorded supervised checkpoint is ``base_path`` (records before issue 16 say ``artifacts/runs/...``)."""
    return paths.resolve(recorded).resolve() == Path(base_path).resolve()


def save(path: Path, module, base_ckpt: dict, optimizer, config: RLConfig, step: int, log: list[dict], run: str,
         run_sha256: str, reward: dict[str, str]) -> None:
    """``reward``: what the reward was computed with, ``{"reward_code_sha256", "feedback_sha256"}`` (rl.main's)."""
    # settings and the recorded artifacts (ReasonDataModule's state) of the supervised run
    ckpt = {k: v for k, v in base_ckpt.items() if k in ("hyper_parameters", "datamodule_hyper_parameters", "ReasonDataModule")}
    ckpt["state_dict"] = module.state_dict()
    ckpt["rl"] = {"config": asdict(config), "step": step, "optimizer": optimizer.state_dict(), "log": log,
                  "supervised_run": run, "supervised_sha256": run_sha256,  # rl.main resumes only from the same weights
                  "reward_version": REWARD_VERSION, **reward}              # and the same reward (code, P(buy))
    tmp = path.with_suffix(".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, tmp)
    tmp.replace(path)


def write_log(path: Path, log: list[dict]) -> None:
    if not log:
        return
    keys = list(dict.fromkeys(k for row in log for k in row))
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(log)
    tmp.replace(path)


def feedback_path(path) -> Path:
    """The feedback model's file: ``path``, or the default's (``python -m mmreason.feedback``'s)."""
    return Path(path) if path else paths.artifacts_dir() / "feedback" / "model.pkl"


def load_feedback(path, data_dir: Path):
    """The feedback model at ``path``; without one, the default's, trained first if missing (a path the user
    names is never trained into: a typo would write a model beside it)."""
    if path and not Path(path).is_file():
        raise DataError(f"{path}: no feedback model (python -m mmreason.feedback --out DIR writes DIR/model.pkl)")
    path = feedback_path(path)
    if not path.exists():
        print(f"[rl] no feedback model at {path}: training one (python -m mmreason.feedback)")
        if train_feedback(FeedbackRun(data=str(data_dir), out=str(path.parent), progress=False)) != 0:  # embeddings: auto
            raise DataError("training the feedback model failed (see above)")
    meta = path.parent / "metrics.json"
    emb = json.loads(meta.read_text()).get("embeddings") if meta.exists() else None
    photo = load_photo_embeddings(emb) if emb else None
    return FeedbackModel.load(path, data_dir=data_dir, photo_embeddings=photo)
