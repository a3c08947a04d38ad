#!/usr/bin/env bash
# The default run's configuration WITHOUT the speed-ups, for the comparison in the README ("Measured"):
# the code as it was before them (commit 7bf3a9a: fp32, no causal-only shortcut, HF's SDPA) with the settings
# of before (dropout on attention probabilities, six-op GELU, per-tensor AdamW), on the artifacts this
# checkout has built (run `python -m mmreason.train` first), into artifacts/runs/cpu-before. Then the
# validation perplexity of both runs. Give it the same generator time as the default run had: STEPS is the
# number of steps the old code manages in that time on this machine (736 on 2 idle Xeon cores, 942 s,
# against the default run's 1,252 steps in 957 s).
#   bash scripts/before-speedups.sh            # STEPS=736
#   STEPS=800 bash scripts/before-speedups.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
steps=${STEPS:-736}
old=$(mktemp -d /tmp/mmreason-before-XXXX)
git worktree add --detach "$old" 7bf3a9a >/dev/null
trap 'git -C "$repo" worktree remove --force "$old"' EXIT
ln -s "$repo/.venv" "$old/.venv"
ln -s "$repo/artifacts" "$old/artifacts"
cd "$old"
time .venv/bin/python -m mmreason.train --trainer.default_root_dir artifacts/runs/cpu-before \
  --model.config.attn_dropout 0.1 --model.config.activation gelu_new --model.fused_adamw false \
  --trainer.max_steps "$steps" --model.lr_decay_steps "$steps" --trainer.val_check_interval 110 \
  --ckpt_path none --n_report 0
cd "$repo"
for run in artifacts/runs/cpu artifacts/runs/cpu-before; do
  .venv/bin/python - "$run" <<'PY'
import csv, math, sys
from pathlib import Path
rows = [r for f in sorted(Path(sys.argv[1], "logs").glob("version_*/metrics.csv")) for r in csv.DictReader(open(f))]
val = [(int(r["step"]) + 1, float(r["val/ppl"])) for r in rows if r.get("val/ppl")]
print(f"{sys.argv[1]}: validation perplexity " + ", ".join(f"{p:.2f} (step {s})" for s, p in val))
PY
done
