"""Loss-based membership inference against trained generators: ``python -m mmreason.membership``.

How much does a generator give away about who was in its training data? The attack (Yeom et al. 2018)
scores an example by the model's loss on its reason: lower loss, "member". Its AUC is 0.5 when the
model behaves the same on members and non-members, 1.0 when it separates them perfectly.

Members and non-members come from one population: ``privacy.held_out_customers`` keeps a hashed 20% of
customers (``--holdout``, the value the runs were trained with) out of training, whole. Both groups are
drawn from training-stage examples (temporal split ``train``, products seen in training), so they cover
the same period and, customers being assigned at random, the same articles' distribution. Up to
``--per-customer`` examples of each of ``--customers`` customers per group are scored. Three AUCs per run:

* example: each example's score alone (the unit DP-SGD protects here);
* hook: the same on the loss of the hook's tokens alone, the first sentence, which states the customer's
  purchases; the product copy after it is the same for every customer who bought the product, and it
  dilutes the whole reason's loss;
* customer: the mean score over a customer's examples (the unit a customer cares about).

Controls, in the same table: the reason's length in tokens as a model-free "attack" (0.5 if the groups
match); each run's attack on test-period examples of both groups, which no run trained on (0.5 if the
groups differ only by membership); and a run trained on every customer (``artifacts/runs/names``): for it both groups are members,
so any distance from 0.5 is a difference between the groups, not leakage. 95% intervals: bootstrap
over customers. Utility beside it: validation perplexity, and copy CIDEr and attribute grounding of
greedy reasons (no post-filter) for ``--n-gen`` unseen-product test examples.
Writes ``<out>/cpu.json`` and ``<out>/cpu.md``.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from tqdm.auto import tqdm

from mmreason import cli, paths
from mmreason.decoding.filters import vocab_from_items
from mmreason.decoding.generate import preset
from mmreason.decoding.shown import sample_reasons
from mmreason.evaluation.systems import histories, score, test_frame
from mmreason.io import DataError, check_ranges, write_report
from mmreason.model.collate import EOS, encode_example
from mmreason.training.datamodule import Collator, ReasonDataset
from mmreason.training.privacy import epsilon, held_out_customers
from mmreason.training.runs import find_checkpoint, load_run

# the first: the default's settings with names written out in the targets (evaluation.systems.VARIANTS "names"), as
# configs/dp.yaml trains the privacy runs; trained on every customer, it is also the calibration's reference
DEFAULT_RUNS = ["artifacts/runs/names", "artifacts/runs/privacy-nodp", "artifacts/runs/privacy-nodp-150",
                "artifacts/runs/privacy-dp8", "artifacts/runs/privacy-dp1", "artifacts/runs/privacy-user-dp8",
                "artifacts/runs/privacy-user-dp1"]  # README, privacy: how each is trained


def attack_population(examples: pd.DataFrame, holdout: float, n_customers: int, per_customer: int,
                      seed: int = 0, period: str = "train") -> pd.DataFrame:
    """Examples of ``n_customers`` held-out and as many member customers (``member`` column), at most
    ``per_customer`` each, drawn with ``seed``: training-stage examples (``period`` "train"), or the same
    customers' test-period examples ("test"), which no run trained on: the control for a difference between
    the two groups of customers that is not membership."""
    df = examples[(examples["split_temporal"] == period) & (examples["split_unseen"] == "train")]
    out = held_out_customers(examples["customer_id"], holdout, seed)
    df = df.assign(member=~df["customer_id"].isin(out))
    rng = np.random.default_rng(seed)
    parts = []
    for member in (True, False):
        custs = np.sort(df.loc[df["member"] == member, "customer_id"].unique())
        custs = rng.permutation(custs)[:n_customers]
        g = df[df["customer_id"].isin(set(custs))]
        parts.append(g.sample(frac=1.0, random_state=seed).groupby("customer_id").head(per_customer))
    if any(len(p) == 0 for p in parts):
        raise DataError(f"no {'member' if not len(parts[0]) else 'held-out'} customers with training examples "
                        f"(holdout {holdout})")
    return pd.concat(parts).sort_values("example_id").reset_index(drop=True)


@torch.no_grad()
def losses(module, data, frame: pd.DataFrame, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Under ``module``, for each example: its mean reason-token loss (N,), its number of reason tokens (N,),
    and the mean loss over its hook's tokens alone (N,): the reason's first sentence, the part that states
    the customer's purchases (the copy after it is the product's, the same for every customer)."""
    tok = data.tokenizer
    records = frame.to_dict("records")
    encoded = [encode_example(tok, data.prompt_example(r), data.max_prompt_tokens, data.max_reason_tokens)
               for r in records]
    n_hook = np.array([len(tok.encode(r.get("hook") or r["reason"], add_special_tokens=False)) for r in records])
    photo, has = data.artifacts.photo_lookup(frame["article_id"].to_numpy())
    ds = ReasonDataset(encoded, photo, has)
    collate = Collator(ds, tok.convert_tokens_to_ids(EOS))
    order = np.argsort([len(e["input_ids"]) for e in encoded], kind="stable")  # little padding
    loss, hook, n = np.zeros(len(frame)), np.zeros(len(frame)), np.zeros(len(frame), dtype=int)
    module.model.eval()
    for s in tqdm(range(0, len(order), batch_size), desc="membership losses", leave=False):
        idx = order[s:s + batch_size].tolist()
        b = collate(idx)
        lp, _, scored = module.model.scored_logprobs(b["photo_embedding"], b["has_photo"], b["input_ids"],
                                                     b["segment_ids"], b["attention_mask"], b["labels"])
        n[idx] = scored.sum(1).numpy()
        loss[idx], hook[idx] = row_losses(-lp.float().numpy(), n[idx], n_hook[idx])
    return loss, n, hook


def row_losses(token_loss: np.ndarray, counts: np.ndarray, n_hook: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows' scored-token losses, concatenated in order (sum(counts),) -> (each row's mean (B,), each row's
    mean over its first n_hook tokens, at least one and at most all of them (B,))."""
    rows = np.split(token_loss, np.cumsum(counts)[:-1])
    k = np.clip(n_hook, 1, counts)
    return np.array([r.mean() for r in rows]), np.array([r[:j].mean() for r, j in zip(rows, k)])


def auc_with_interval(score: np.ndarray, member: np.ndarray, groups: np.ndarray, n_boot: int = 200,
                      seed: int = 0) -> tuple[float, float, float]:
    """ROC AUC of ``score`` for ``member``, and a 95% bootstrap interval resampling whole ``groups``."""
    auc = float(roc_auc_score(member, score))
    rng = np.random.default_rng(seed)
    uniq, inv = np.unique(groups, return_inverse=True)
    rows = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rows[g] for g in rng.integers(0, len(uniq), len(uniq))])
        if member[idx].all() or not member[idx].any():
            continue
        boots.append(roc_auc_score(member[idx], score[idx]))
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return auc, float(lo), float(hi)


def attack(frame: pd.DataFrame, loss: np.ndarray, hook: np.ndarray | None = None) -> dict:
    """Example- and customer-level AUC of the loss attack (score = -loss); with ``hook``, the example-level
    AUC of the same attack on the hook's loss alone."""
    member = frame["member"].to_numpy()
    cust = frame["customer_id"].to_numpy()
    ex = auc_with_interval(-loss, member, cust)
    per = pd.DataFrame({"c": cust, "s": -loss, "m": member}).groupby("c").agg(s=("s", "mean"), m=("m", "first"))
    cu = auc_with_interval(per["s"].to_numpy(), per["m"].to_numpy(), per.index.to_numpy())
    out = {"example_auc": ex[0], "example_auc_ci": ex[1:], "customer_auc": cu[0], "customer_auc_ci": cu[1:],
           "member_loss": float(loss[member].mean()), "nonmember_loss": float(loss[~member].mean())}
    if hook is not None:
        hk = auc_with_interval(-hook, member, cust)
        out |= {"hook_auc": hk[0], "hook_auc_ci": hk[1:]}
    return out


@torch.no_grad()
def reference_losses(run: str, path: Path | None, frame: pd.DataFrame, control: pd.DataFrame) -> dict:
    """The reference run's losses on the attack population and the control (calibration, ``calibrated``);
    ``path``: its checkpoint (``find_checkpoint(run)``)."""
    if path is None:
        raise DataError(f"{run}: no checkpoint for the reference (train it, or --reference none)")
    module, data = load_run(path)
    if float(data.hparams.get("holdout_customers", 0.0)):
        raise DataError(f"{run} held customers out: the reference must be trained on every customer")
    return {"path": Path(path), "loss": losses(module, data, frame)[0],
            "control": losses(module, data, control)[0] if len(control) else None, "slots": bool(data.slots)}


def calibrated(frame, loss, control, closs, ref: dict | None, same: bool) -> dict:
    """The loss attack calibrated by each example's difficulty (Watson et al. 2022): score = reference loss
    - the run's loss, the reference trained on every customer (both groups in). What makes an example easy
    or hard (a long history, a copy the retrieved copies hold) moves both losses, and drops out; what is
    left is how much closer the run comes to a model that trained on the example. The uncalibrated attack
    also scores the two groups' differences (this split's held-out customers have longer histories: the
    test-period control and a model-free score show it), which no training can remove."""
    nan = float("nan")
    if ref is None or same:
        return {"calibrated_example_auc": nan, "calibrated_example_auc_ci": (nan, nan),
                "calibrated_customer_auc": nan, "calibrated_customer_auc_ci": (nan, nan),
                "control_calibrated_example_auc": nan}
    a = attack(frame, loss - ref["loss"])
    out = {"calibrated_example_auc": a["example_auc"], "calibrated_example_auc_ci": a["example_auc_ci"],
           "calibrated_customer_auc": a["customer_auc"], "calibrated_customer_auc_ci": a["customer_auc_ci"],
           "control_calibrated_example_auc": nan}
    if closs is not None and ref["control"] is not None:
        out["control_calibrated_example_auc"] = attack(control, closs - ref["control"])["example_auc"]
    return out


@torch.no_grad()  # before: autograd kept every batch's graph until float(loss), and warned at each
def val_perplexity(module, data) -> float:
    """exp of the token-weighted mean reason-token loss over the run's validation set."""
    module.model.eval()
    total, count = 0.0, 0
    for b in tqdm(data.val_dataloader(), desc="val ppl", leave=False):
        loss, n = module.model.reason_loss(b["photo_embedding"], b["has_photo"], b["input_ids"], b["segment_ids"],
                                           b["attention_mask"], b["labels"])
        total, count = total + float(loss) * int(n), count + int(n)
    return float(np.exp(total / max(count, 1)))


def utility(module, data, n_gen: int, seed: int) -> dict:
    """Validation perplexity; copy CIDEr and attribute grounding of greedy reasons on unseen products."""
    out = {"val_ppl": val_perplexity(module, data)}
    if n_gen:
        art = data.artifacts
        frame = test_frame(art.examples, "unseen", n_gen, seed)
        # greedy, one candidate, unconstrained, no retrieved copy offered: the reason as the model decoded it,
        # passed or not (not the shown one, which may be a retrieved copy after the evidence's hook: the same for
        # every run, so it would hide what training cost the model)
        hyps = [(s.candidates or [""])[0] for s in sample_reasons(module.model, data, frame, preset("greedy"),
                                                                   constrain=False, offer_retrieved=0)]
        inter = pd.read_parquet(art.data_dir / "interactions.parquet")
        m = score(hyps, frame, art.items, histories(frame, inter, art.items), vocab_from_items(art.items),
                  with_embedding=False)
        out |= {k: m[k] for k in ("copy_cider", "grounding_overall_precision", "grounding_colour_precision",
                                  "grounding_colour_mention_rate")}
        out["generated"] = hyps[:3]
    return out


def markdown(rows: list[dict], meta: dict) -> str:
    def ci(x):
        return f"[{x[0]:.3f}, {x[1]:.3f}]"

    def cal(r, key):  # the reference's own row has no calibrated score
        return "n/a (reference)" if np.isnan(r[key]) else f"{r[key]:.3f} {ci(r[key + '_ci'])}"

    lines = [f"Membership inference (loss attack) and utility; {meta['n_members']} member and "
             f"{meta['n_nonmembers']} held-out examples ({meta['customers']} customers per group, up to "
             f"{meta['per_customer']} each); length-only control AUC {meta['length_auc']:.3f}. Test-period control: "
             f"the same attack on {meta['n_control']} test-period examples of both groups (no run trained on "
             f"them): what the groups differ by without membership. Calibrated: score = loss under "
             f"{meta['reference']} (trained on every customer) - the run's loss. "
             f"Utility: {meta['n_gen']} unseen-product test examples, greedy, no filter.", "",
             "| run | training | epsilon (delta = 1/N) | example AUC [95%] | hook AUC [95%] | "
             "customer AUC [95%] | calibrated example AUC [95%] | calibrated customer AUC [95%] | "
             "test-period control: example / customer / calibrated AUC | val ppl | copy CIDEr | "
             "attr. precision | colour precision |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        eps = f"{r['epsilon']:.2f} per {r.get('unit') or 'example'}" if r.get("epsilon") is not None else "inf (no DP)"
        lines.append(f"| {r['name']} | {r['training']} | {eps} | {r['example_auc']:.3f} {ci(r['example_auc_ci'])} | "
                     f"{r['hook_auc']:.3f} {ci(r['hook_auc_ci'])} | "
                     f"{r['customer_auc']:.3f} {ci(r['customer_auc_ci'])} | "
                     f"{cal(r, 'calibrated_example_auc')} | {cal(r, 'calibrated_customer_auc')} | "
                     f"{r['control_example_auc']:.3f} / {r['control_customer_auc']:.3f} / "
                     f"{r['control_calibrated_example_auc']:.3f} | {r['val_ppl']:.2f} | "
                     f"{r.get('copy_cider', float('nan')):.3f} | {r.get('grounding_overall_precision', float('nan')):.3f} | "
                     f"{r.get('grounding_colour_precision', float('nan')):.3f} |")
    return "\n".join(lines) + "\n"


def describe(module, data, ckpt: dict) -> tuple[str, float | None, str | None]:
    """(what the run was trained on, its epsilon and protected unit if DP) from its checkpoint."""
    steps = int(ckpt.get("global_step", 0))
    hold = float(data.hparams.get("holdout_customers", 0.0))
    who = "every customer" if not hold else f"{1 - hold:.0%} of customers"
    dp = module.hparams.get("dp")
    if not dp:
        return f"{steps} steps of {data.batch_size}, {who}", None, None
    acc = ckpt.get("privacy")
    if acc is None:  # checkpoints from before the accounting was saved: a finished run's noise was set for its steps
        from opacus.accountants.utils import get_noise_multiplier

        n = len(data.dataset("train"))
        q, delta = min(1.0, data.batch_size / n), dp.get("delta") or 1.0 / n
        sigma = dp.get("noise_multiplier") or get_noise_multiplier(
            target_epsilon=dp["target_epsilon"], target_delta=delta, sample_rate=q, steps=steps,
            accountant=dp.get("accountant", "rdp"), epsilon_tolerance=0.005)
        acc = {"noise_multiplier": sigma, "epsilon": epsilon(sigma, q, steps, delta, dp.get("accountant", "rdp"))}
    unit = acc.get("unit", "example")
    batch = f"~{data.batch_size}" + (" customers, one example each" if unit == "customer" else "")
    return (f"DP-SGD, {steps} Poisson steps of {batch}, clip {dp['max_grad_norm']}, "
            f"noise {acc['noise_multiplier']:.3f}, {who}", float(acc["epsilon"]), unit)


@dataclass
class MembershipOptions:
    """The loss-based membership attack beside utility: ``python -m mmreason.membership``.

    Args:
        runs: run folders or checkpoints
        holdout: the held-out customer fraction the runs used
        customers: customers per group
        per_customer: examples per customer at most
        n_gen: unseen-product test examples decoded for utility (0: none)
        seed: seed of the populations and the decoding
        reference: a run trained on every customer, for the calibrated attack ("none": no calibration)
        out: folder for cpu.json / cpu.md (default results/privacy)
    """
    runs: list[str] = field(default_factory=lambda: list(DEFAULT_RUNS))
    reference: str = "artifacts/runs/names"
    holdout: float = 0.2
    customers: int = 200
    per_customer: int = 5
    n_gen: int = 80
    seed: int = 0
    out: str | None = None

    def __post_init__(self):
        check_ranges(self, holdout="(0,1)", customers=">=1", per_customer=">=1", n_gen=">=0", seed=">=0")


def get_parser() -> cli.ArgumentParser:
    return cli.parser(MembershipOptions, prog="python -m mmreason.membership",
                      description=MembershipOptions.__doc__.split("\n")[0])


def main(argv=None) -> int:
    args, = get_parser().parse(argv)
    paths.offline()
    torch.manual_seed(args.seed)
    t0 = time.time()
    rows, frame, control, length_auc, ref = [], None, None, None, None
    try:
        for run in args.runs:
            path = find_checkpoint(run)
            if path is None:
                raise DataError(f"{run}: no checkpoint (train it first; see README, privacy)")
            module, data = load_run(path)
            ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
            if frame is None:
                frame = attack_population(data.artifacts.examples, args.holdout, args.customers, args.per_customer,
                                          args.seed)
                try:
                    control = attack_population(data.artifacts.examples, args.holdout, args.customers,
                                                args.per_customer, args.seed, period="test")
                except DataError:  # a group without test-period examples (tiny data): no control
                    control = frame.iloc[:0]
            hold = float(data.hparams.get("holdout_customers", 0.0))
            if hold and (hold != args.holdout or data.seed != args.seed):
                raise DataError(f"{run} held out {hold} of customers with seed {data.seed}, "
                                f"not --holdout {args.holdout} --seed {args.seed}")
            print(f"[membership] {run}: {len(frame)} examples")
            loss, n_tok, hook = losses(module, data, frame)
            if length_auc is None:
                length_auc = float(roc_auc_score(frame["member"], n_tok))
            training, eps, unit = describe(module, data, ckpt)
            row = {"name": run, "training": training, "epsilon": eps, "unit": unit} | attack(frame, loss, hook)
            closs = losses(module, data, control)[0] if len(control) else None
            ctrl = attack(control, closs) if len(control) else {}
            row |= {"control_example_auc": ctrl.get("example_auc", float("nan")),
                    "control_customer_auc": ctrl.get("customer_auc", float("nan"))}
            if ref is None and args.reference not in ("none", None):
                ref_path = find_checkpoint(args.reference)
                if ref_path is not None and Path(ref_path) == Path(path) and not hold:  # the reference: reuse its losses
                    ref = {"path": Path(path), "loss": loss, "control": closs, "slots": bool(data.slots)}
                else:
                    ref = reference_losses(args.reference, ref_path, frame, control)
            if ref is not None and ref["slots"] != bool(data.slots):  # its losses would be on other tokens
                raise DataError(f"{run} and the reference {args.reference} differ in data.slots (a purchase name "
                                f"as a slot or written out): calibrate against a run with the same targets")
            row |= calibrated(frame, loss, control, closs, ref, same=Path(path) == ref["path"] if ref else False)
            row |= utility(module, data, args.n_gen, args.seed)
            print(f"[membership] {run}: example AUC {row['example_auc']:.3f}, hook AUC {row['hook_auc']:.3f}, "
                  f"customer AUC {row['customer_auc']:.3f}; test-period control {row['control_example_auc']:.3f} / "
                  f"{row['control_customer_auc']:.3f}; calibrated {row['calibrated_example_auc']:.3f} / "
                  f"{row['calibrated_customer_auc']:.3f}; val ppl {row['val_ppl']:.2f}")
            rows.append(row)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    meta = {"n_members": int(frame["member"].sum()), "n_nonmembers": int((~frame["member"]).sum()),
            "n_control": len(control), "reference": args.reference,
            "customers": args.customers, "per_customer": args.per_customer, "holdout": args.holdout,
            "length_auc": length_auc, "n_gen": args.n_gen, "seed": args.seed, "seconds": round(time.time() - t0)}
    out = Path(args.out or paths.results_dir("privacy"))
    table = markdown(rows, meta)
    write_report(out, "cpu", {"meta": meta, "runs": rows}, table)
    print(table)
    print(f"[membership] wrote {out / 'cpu.json'} and cpu.md ({meta['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
