"""``python -m mmreason.bench --tiny`` on a tiny trained run: every section is measured and written; our
decoding gives Hugging Face ``generate``'s greedy ids on the same weights."""
from __future__ import annotations

import json
import platform

import pytest
import torch

from conftest import make_hm, work_in
from mmreason import bench, train
from mmreason.machine import cpu_has_bf16
from test_train import TINY


@pytest.mark.slow
def test_tiny_bench_writes_every_section(tmp_path, monkeypatch):
    root = tmp_path / "w"
    make_hm(root / "hm")
    work_in(monkeypatch, root)
    assert train.main([*TINY, "--data.pipeline.hm_dir", str(root / "hm"), "--trainer.max_epochs", "1",
                       "--ckpt_path", "none", "--n_report", "0"]) == 0
    out = tmp_path / "bench"
    # every section, bf16 too, whatever the CPU (auto measures bf16 only where the CPU has it in hardware)
    assert bench.main(["--run", str(root / "artifacts/runs/cpu"), "--tiny", "--out", str(out), "--bf16", "yes"]) == 0
    r = json.loads((out / "cpu.json").read_text())
    assert r["limit"]["fp32"] > 0 and r["limit"]["bf16"] > 0 and r["bf16_rows"] is True
    runs = r["train"]["runs"]
    default = r["train"]["default_precision"]
    assert default == ("bf16 autocast" if cpu_has_bf16() else "fp32")
    assert {"plain | before | fp32", "plain | after | fp32", "plain | after | bf16 autocast",
            f"Lightning | after | {default}", f"plain | after | {default} (again)"} <= set(runs)
    for v in runs.values():
        assert v["tokens_per_s"] > v["scored_tokens_per_s"] > 0 and v["flops_per_token"] > 0
    # the ratios are the runs' own, after over before, ours over Hugging Face's (a timing, so no value is asserted)
    tps = lambda *names: sum(runs[n]["tokens_per_s"] for n in names) / len(names)  # noqa: E731
    after = tps(f"plain | after | {default}", f"plain | after | {default} (again)")
    assert r["train"]["speedup_after_vs_before"] == pytest.approx(
        after / tps("plain | before | fp32", "plain | before | fp32 (again)"))
    assert r["train"]["lightning_overhead"] == pytest.approx(after / runs[f"Lightning | after | {default}"]["tokens_per_s"] - 1)
    for name, v in r["decode"]["settings"].items():
        assert v["ours"]["reasons_per_s"] > 0 and v["hf"]["reasons_per_s"] > 0 and v["ours"]["tokens"] > 0
        assert v["speedup"] == pytest.approx(v["ours"]["reasons_per_s"] / v["hf"]["reasons_per_s"])
        if name.startswith("greedy"):
            same, total = map(int, v["greedy_same_ids"].split("/"))
            assert same == total > 0, f"{name}: our greedy ids differ from Hugging Face generate's"
    assert all(x > 0 for x in r["clip"]["images_per_s"].values())
    p = r["photonet"]  # the ImageNet encoder folded against as loaded, on the fixture's photos
    assert p["photos"] > 0 and set(p["images_per_s"]) == {"before", "folded", "before (again)", "folded (again)"}
    assert p["speedup_folded_vs_before"] > 0 and p["max_abs_diff"] < 1e-3 * max(p["mean_abs_feature"], 1e-3)
    c = r["candidates"]  # the photo's copy's candidates: every article encoded against the store's rows reused
    assert c["articles"] > c["in_store"] > 0 and set(c["articles_per_s"]) == {
        "before", "store reused", "before (again)", "store reused (again)"}
    assert c["speedup_store_reused_vs_before"] > 0 and c["max_abs_diff"] < 1e-4
    assert c["same_candidates"] == f"{c['articles']}/{c['articles']}"
    md = (out / "cpu.md").read_text()
    assert "## The photo's copy: its candidates" in md and "| store reused (again) |" in md
    assert "GFLOP/s" in md and f"| Lightning | after | {default} |" in md and "greedy, batch 64" in md
    assert "## ImageNet photo features" in md and "| folded (again) |" in md
    assert {"train step, bf16", "embed photos, bf16"} <= set(r["clip"]["images_per_s"])
    # --bf16 no: no bf16 GEMM, row or CLIP figure, and the report says so; the default's rows are fp32
    out = tmp_path / "fp32"
    assert bench.main(["--run", str(root / "artifacts/runs/cpu"), "--tiny", "--no-compile", "--out", str(out),
                       "--bf16", "no"]) == 0
    r = json.loads((out / "cpu.json").read_text())
    assert set(r["limit"]) == {"fp32"} and r["bf16_rows"] is False and r["train"]["default_precision"] == "fp32"
    assert not [n for n in r["train"]["runs"] if "bf16" in n]
    assert not [k for k in r["clip"]["images_per_s"] if "bf16" in k]
    assert f"| bf16 | {bench.NO_BF16} |" in (out / "cpu.md").read_text()


def test_a_run_without_a_checkpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "bench"
    assert bench.main(["--run", str(tmp_path / "nothing"), "--tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: no checkpoint in {tmp_path / 'nothing'}") and "\n" not in err
    assert not out.exists()


def test_the_report_names_the_cpu_model_and_its_bf16():
    """The header's machine: the CPU's model name from /proc/cpuinfo's text (``platform.processor()`` is empty or
    only the architecture on Linux), its architecture once, and whether it has bf16 hardware (``cpu_has_bf16``)."""
    cpu = torch.device("cpu")
    xeon = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx512f amx_bf16 avx512_bf16\n"
    epyc = "processor\t: 0\nmodel name\t: AMD EPYC 9B14\nflags\t\t: fpu avx avx2 fma\n"
    arch = platform.machine()
    assert bench.device_name(cpu, xeon) == f"Intel(R) Xeon(R) Platinum 8480+, {arch}, bf16 in hardware"
    assert bench.device_name(cpu, epyc) == f"AMD EPYC 9B14, {arch}, no bf16 hardware"
    assert bench.device_name(cpu, "").endswith(", no bf16 hardware") and arch in bench.device_name(cpu, "")
