"""Fine-tune the reason generator on purchase feedback: ``python -m mmreason.rl [--steps N] [...]``.

The command; the library is ``mmreason.policy.reinforce``, whose docstring says what it does and why.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from mmreason import cli, paths
from mmreason.decoding.shown import Decoding, uses_photo_offers
from mmreason.evaluation.systems import test_frame
from mmreason.io import DataError, atomic_write_json, check_ranges, sha256_file, write_report
from mmreason.policy.reinforce import (
    KEY_METRICS,
    REWARD_VERSION,
    Prompts,
    Reward,
    RLConfig,
    deployed_scores,
    feedback_path,
    load_feedback,
    resumable,
    reward_code_sha256,
    rl_step,
    same_run,
    sampled_reward,
    save,
    scoring_code_sha256,
    write_log,
)
from mmreason.training.runs import find_checkpoint, load_run

TABLE = [("reward", "reward"), ("P(buy)", "feedback"), ("grounding", "grounding"), ("ROUGE-L ref.", "reference"),
         ("shown passes filter", "shown_passes_filter"), ("top cand. rejected", "first_choice_rejected"),
         ("hook repaired", "hook_repaired"),
         ("colour prec.", "grounding_colour_precision"), ("type prec.", "grounding_type_precision"),
         ("named-purchase prec.", "name_citation_precision"),
         ("Dist-2", "distinct2"), ("USR", "usr"), ("Self-BLEU-4", "self_bleu4"), ("CIDEr", "cider"),
         ("copy BLEU-4", "copy_bleu4"), ("copy CIDEr", "copy_cider"), ("detail prec.", "detail_precision"),
         ("contradicts its copy", "detail_contradiction")]


def markdown(before: dict, after: dict, train_before: dict, train_after: dict, meta: dict) -> str:
    def f(v):
        return "–" if v is None else (f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}")
    lines = [f"# RL fine-tuning on purchase feedback ({meta['steps']} steps)", "",
             f"Supervised run `{meta['run']}` -> `{meta['out']}`; config: {meta['config']}.", "",
             f"Rewarded and trained: {meta['rewarded']}.", "",
             "## Sampled reasons (the training distribution; validation prompts)", "",
             "| model | reward | P(buy) | grounding | ROUGE-L ref. | passes filter |", "|---|---|---|---|---|---|"]
    for name, m in (("supervised", train_before), ("RL", train_after)):
        lines.append(f"| {name} | {f(m['reward'])} | {f(m['feedback'])} | {f(m['grounding'])} | "
                     f"{f(m.get('reference'))} | {f(m['passed'])} |")
    lines += ["", "## Deployed reasons (beam + filter), before and after", "",
              "| test set | model | " + " | ".join(c for c, _ in TABLE) + " |", "|---|---|" + "---|" * len(TABLE)]
    for split in before:
        for name, m in (("supervised", before[split]), ("RL", after[split])):
            lines.append(f"| {split} | {name} | " + " | ".join(f(m.get(k)) for _, k in TABLE) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- CLI

@dataclass
class RLOptions:
    """Fine-tune the reason generator on purchase feedback: ``python -m mmreason.rl``.

    Args:
        run: supervised generator: run folder or checkpoint
        out: RL run folder (checkpoints/last.ckpt, log.csv)
        results: where rl.json / rl.md go (default results/cpu)
        feedback: feedback model (default artifacts/feedback/model.pkl; trained first if missing)
        n_eval: examples per test set for before/after (0 = all)
        n_val: validation prompts for the sampled-reward curve
        eval_every: steps between sampled-reward checks
        save_every: steps between checkpoints
        decode: deployed decoding for before/after
        progress: progress bars (--no-progress: a log line every 10 steps)
    """
    run: Path = Path("artifacts/runs/cpu")
    out: Path = Path("artifacts/runs/rl")
    results: str | None = None
    feedback: str | None = None
    n_eval: int = 300
    n_val: int = 128
    eval_every: int = 25
    save_every: int = 25
    decode: Decoding = "beam"
    progress: bool = True

    def __post_init__(self):  # artifacts/runs/<name> is under the artifacts root, whatever the working folder
        self.run, self.out = paths.resolve(self.run), paths.resolve(self.out)
        check_ranges(self, n_eval=">=0", n_val=">=1", eval_every=">=1", save_every=">=1")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(RLOptions, RLConfig, prog="python -m mmreason.rl", description=__doc__.split("\n")[0])


def main(argv=None) -> int:
    args, config = get_parser().parse(argv)
    paths.offline()
    t0 = time.time()
    base_path = find_checkpoint(args.run)
    if base_path is None:
        print(f"error: no supervised checkpoint in {args.run} (run `python -m mmreason.train` first)", file=sys.stderr)
        return 2
    torch.manual_seed(config.seed)
    reference, data = load_run(base_path)
    policy, _ = load_run(base_path)
    reference.requires_grad_(False)
    base_ckpt = torch.load(base_path, map_location="cpu", weights_only=False)
    base_sha = sha256_file(base_path)  # the weights themselves: a run retrained in the same folder is another run
    art = data.artifacts
    items, examples = art.items, art.examples
    interactions = pd.read_parquet(art.data_dir / "interactions.parquet")
    try:
        feedback = load_feedback(args.feedback, art.data_dir)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # what the reward is computed with, read once: a checkpoint or before.json of another is not reused
    reward_inputs = {"reward_code_sha256": reward_code_sha256(),
                     "feedback_sha256": sha256_file(feedback_path(args.feedback))}  # P(buy) is part of the reward
    reward = Reward(feedback, items, config)
    tok = data.tokenizer

    photo = config.part == "hook" and uses_photo_offers(policy, data)  # the copy a sampled hook is shown with
    train_prompts = Prompts(data, data.frame("train"), interactions, items, offer_photo=photo)
    val_frame = data.frame("val")
    val_prompts = Prompts(data, val_frame.sample(n=min(args.n_val, len(val_frame)), random_state=config.seed)
                          .sort_index(), interactions, items, offer_photo=photo)
    evals = {s: Prompts(data, test_frame(examples, s, args.n_eval, config.seed), interactions, items, offer_photo=photo)
             for s in ("unseen", "temporal")}
    print(f"[rl] {len(train_prompts)} training prompts, {len(val_prompts)} validation prompts, "
          f"{', '.join(f'{s} {len(p)}' for s, p in evals.items())} test examples; config {asdict(config)}")

    out = Path(args.out)
    last = out / "checkpoints" / "last.ckpt"
    optimizer = torch.optim.AdamW([p for p in policy.model.parameters() if p.requires_grad], lr=config.lr,
                                  weight_decay=config.weight_decay)
    step, log = 0, []
    if last.exists():
        ck = torch.load(last, map_location="cpu", weights_only=False)
        same = {k: v for k, v in ck.get("rl", {}).get("config", {}).items() if k != "steps"} == resumable(config)
        same = (same and same_run(ck["rl"].get("supervised_run", ""), base_path)
                and ck["rl"].get("supervised_sha256") == base_sha and ck["rl"].get("reward_version") == REWARD_VERSION
                and all(ck["rl"].get(k) == v for k, v in reward_inputs.items()))
        if same and ck["rl"]["step"] <= config.steps:
            policy.load_state_dict(ck["state_dict"])
            optimizer.load_state_dict(ck["rl"]["optimizer"])
            step, log = ck["rl"]["step"], ck["rl"]["log"]
            print(f"[rl] resuming {last} at step {step}")
        else:
            print(f"[rl] {last} was written with other settings, another reward or from another supervised checkpoint; "
                  f"starting afresh (it will be overwritten)")

    before_path = out / "before.json"  # the supervised model's scores; reused while the settings match
    key = {"run": paths.shown(base_path), "sha256": base_sha, "n_eval": args.n_eval, "n_val": args.n_val,
           "decode": args.decode, "config": resumable(config), "reward": REWARD_VERSION, **reward_inputs,
           "metrics": KEY_METRICS, "scoring": scoring_code_sha256()}  # what it reports and how, too
    before = json.loads(before_path.read_text()) if before_path.exists() else None
    if not before or before.get("key", {}) | {"run": key["run"]} != key or not same_run(before["key"]["run"], base_path):
        print("[rl] scoring the supervised model (before)")
        before = {"key": key, "sampled": sampled_reward(reference.model, val_prompts, reward, config, tok),
                  "deployed": {s: deployed_scores(reference, data, p, reward, items, args.decode,
                                                  args.progress) for s, p in evals.items()}}
        atomic_write_json(before_path, before)

    bar = tqdm(total=config.steps, initial=step, desc="rl", disable=not args.progress)
    while step < config.steps:
        t1 = time.time()
        row = rl_step(policy.model, reference.model, optimizer, train_prompts, reward, config, step, tok)
        step = row["step"]
        row["seconds"] = round(time.time() - t1, 2)
        if step % args.eval_every == 0 or step == config.steps:
            row |= {f"val_{k}": v for k, v in sampled_reward(policy.model, val_prompts, reward, config, tok).items()}
        log.append(row)
        bar.update(1)
        bar.set_postfix(reward=f"{row['reward']:.3f}", kl=f"{row['kl']:.3f}")
        if not args.progress and (step % 10 == 0 or step == 1):
            print(f"step {step}: reward {row['reward']:.3f}, P(buy) {row['feedback']:.3f}, grounding "
                  f"{row['grounding']:.3f}, ROUGE-L {row['reference']:.3f}, passes {row['passed']:.2f}, "
                  f"kl {row['kl']:.4f}, {row['seconds']:.1f}s")
        if step % args.save_every == 0 or step == config.steps:
            save(last, policy, base_ckpt, optimizer, config, step, log, str(base_path), base_sha, reward_inputs)
            write_log(out / "log.csv", log)
    bar.close()

    print("[rl] scoring the fine-tuned model (after)")
    policy.eval()
    after = {"sampled": sampled_reward(policy.model, val_prompts, reward, config, tok),
             "deployed": {s: deployed_scores(policy, data, p, reward, items, args.decode, args.progress) for s, p in evals.items()}}
    copy = "the copy its photo chose" if photo else "the prompt's first retrieved copy"
    rewarded = (f"the sampled hook followed by {copy}, as the deployed offer shows it "
                "(the hook's tokens credited)" if train_prompts.hook_only(config.part) else "the whole sampled reason")
    meta = {"run": paths.shown(base_path), "out": paths.shown(out), "steps": config.steps, "config": asdict(config), "rewarded": rewarded,
            "seconds": round(time.time() - t0), "train_seconds": round(sum(r.get("seconds", 0) for r in log)),
            "n_eval": args.n_eval, "decode": args.decode}
    table = markdown(before["deployed"], after["deployed"], before["sampled"], after["sampled"], meta)
    results = Path(args.results or paths.results_dir("cpu"))
    write_report(results, "rl", {"meta": meta, "before": before, "after": after, "log_tail": log[-5:]}, table)
    print(table)
    print(f"[rl] wrote {last}, {out / 'log.csv'}, {results / 'rl.json'} and rl.md ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
