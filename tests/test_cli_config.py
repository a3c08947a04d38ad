"""One config style for every command (``mmreason.cli``): ``--print_config`` prints a YAML that ``--config`` reads
back, values from the file are used, a flag after the file wins, and a bad value stops in one line with exit 2."""
from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import warnings

import pytest
import yaml

from mmreason import cli
from mmreason.paths import REPO_ROOT

COMMANDS = ["bench", "clip", "data", "embed", "evaluate", "explain", "feedback", "membership", "notebooks", "pii",
            "recommend", "retrieval", "rl", "serve", "tokenizer"]
REQUIRED = {"explain": ["--articles", "new.csv", "--customer", "c1"]}  # flags without a default


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Empty artifacts, results and figures roots and working folder: what a command writes would land here; and
    no H&M data, so a command that wrongly starts work stops soon (the notebooks would otherwise redraw figures/)."""
    for name in ("MMREASON_ARTIFACTS", "MMREASON_RESULTS", "MMREASON_FIGURES", "MMREASON_HM_DIR"):
        monkeypatch.setenv(name, str(tmp_path / name.lower()))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def option(parser: cli.ArgumentParser) -> tuple[str, object]:
    """A field of the command's options to vary: the first int (not bool) one (an ``int | None`` one counts, from 0),
    else bool, else str; never a required one (the test fills those with "x")."""
    fields = [(f, cls) for cls, skip in parser.configs for f in dataclasses.fields(cls)
              if f.name not in skip and f.name not in required_fields(cls)]
    for kind in (int, bool, str):
        for f, cls in fields:
            default = getattr(cls(**{k: "x" for k in required_fields(cls)}), f.name)
            if default is None and kind is int and str(f.type).replace(" ", "") in ("int|None", "Optional[int]"):
                return f.name, 0
            if type(default) is kind:
                return f.name, default
    raise AssertionError("no int, bool or str option")


def required_fields(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]


def printed_config(mod, argv, capsys) -> dict:
    with pytest.raises(SystemExit) as e:
        mod.main([*argv, "--print_config"])
    assert e.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("name", COMMANDS)
def test_print_config_reads_back_and_config_file_values_are_used_flags_after_win(name, roots, capsys):
    mod = importlib.import_module(f"mmreason.{name}")
    parser = mod.get_parser()
    base = REQUIRED.get(name, [])
    printed = printed_config(mod, base, capsys)
    assert isinstance(printed, dict) and printed
    assert set(printed) >= {f.name for cls, skip in parser.configs for f in dataclasses.fields(cls)
                            if f.name not in skip} - parser.positional_fields()

    # the printed config, passed back, is the same configuration
    full = roots / "full.yaml"
    full.write_text(yaml.safe_dump(printed))
    assert mod.get_parser().parse(["--config", str(full)]) == mod.get_parser().parse(base)

    # a value from the file is used; a flag after --config overrides it
    key, default = option(parser)
    flag = "--" + key.replace("_", "-")
    if isinstance(default, bool):
        in_file, on_line = (not default), default
    elif isinstance(default, str):
        in_file, on_line = "from-file", "from-line"
    else:
        in_file, on_line = default + 7, default + 11
    partial = roots / "partial.yaml"
    partial.write_text(yaml.safe_dump({key: in_file, **{k: "x" for cls, _ in parser.configs for k in required_fields(cls)}}))
    from_file = mod.get_parser().parse(["--config", str(partial)])
    assert any(getattr(c, key, None) == in_file for c in from_file)
    overridden = mod.get_parser().parse(["--config", str(partial), flag, str(on_line).lower()])
    assert any(getattr(c, key, None) == on_line for c in overridden)
    assert printed_config(mod, ["--config", str(partial)], capsys)[key] == in_file


@pytest.mark.parametrize("name", COMMANDS)
def test_bad_value_is_one_line_exit_2_and_writes_nothing(name, roots, capsys):
    mod = importlib.import_module(f"mmreason.{name}")
    key, default = option(mod.get_parser())
    # a str option (pii has only those) is bad without its value
    bad = ["maybe"] if isinstance(default, bool) else [] if isinstance(default, str) else ["many"]
    with pytest.raises(SystemExit) as e:
        mod.main([*REQUIRED.get(name, []), "--" + key.replace("_", "-"), *bad])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "error:" in err and key.replace("_", "-") in err.replace("_", "-"), err
    assert list(roots.iterdir()) == []  # not even the artifacts or results roots


FREE_SIGN = {"w_feedback", "w_grounding", "w_reference", "w_filter"}  # RL's reward weights: any sign is an experiment


def numeric_fields(name: str) -> list[str]:
    parser = importlib.import_module(f"mmreason.{name}").get_parser()
    return [f.name for cls, skip in parser.configs for f in dataclasses.fields(cls)
            if f.name not in skip and f.name not in FREE_SIGN
            and str(f.type).replace(" ", "") in ("int", "float", "int|None", "float|None")]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_numeric_option_refuses_minus_one_in_one_line(name, roots, capsys):
    # no count, size, rate, share, seed or port of any command is -1: each stops before any work (io.check_ranges)
    mod = importlib.import_module(f"mmreason.{name}")
    for field in numeric_fields(name):
        flag = "--" + field.replace("_", "-")
        with pytest.raises(SystemExit) as e:
            mod.main([*REQUIRED.get(name, []), flag, "-1"])
        err = capsys.readouterr().err.strip()
        assert e.value.code == 2 and "\n" not in err and f"{flag} -1" in err, (flag, err)
    assert list(roots.iterdir()) == []


@pytest.mark.parametrize("name,argv,words", [
    ("serve", ["--port", "70000"], "--port 70000: a port is 0-65535"),
    ("serve", ["--max-batch", "0"], "--max-batch 0: at least 1"),
    ("recommend", ["--user", "x", "-k", "0"], "--k 0: at least 1"),
    ("data", ["--unseen-test-frac", "2"], "--unseen-test-frac 2.0: in [0, 1)"),  # before: tables, none to train on
    ("data", ["--unseen-test-frac", "0.6", "--unseen-val-frac", "0.4"], "below 1, to leave product codes"),
    ("evaluate", ["--n", "-5"], "--n -5: 0 or more"),  # before: pandas' sample(n=-5), deep inside
    ("rl", ["--save-every", "0"], "--save-every 0: at least 1"),  # before: a modulo by zero after the first step
    ("rl", ["--temperature", "0"], "--temperature 0.0: above 0"),
    ("membership", ["--holdout", "1"], "--holdout 1.0: in (0, 1)"),
    ("recommend", ["--user", "x", "--dropout", "1"], "--dropout 1.0: in [0, 1)"),
    ("recommend", ["--explain"], "--explain writes reasons for one customer's top-K: use it with --user"),
    ("recommend", ["--user", "x", "--generator", "run"], "--generator names the model that writes reasons: use it with"),
    ("clip", ["--batch-size", "1"], "--batch-size 1: at least 2"),
    ("tokenizer", ["--vocab-size", "300"], "--vocab-size 300: at least 1000"),
    ("explain", [*REQUIRED["explain"], "--day", "notadate"], "--day notadate: not a day (YYYY-MM-DD)"),
])
def test_an_out_of_range_value_is_one_line_exit_2_and_writes_nothing(name, argv, words, roots, capsys):
    # values of the right type that the command cannot use: before, a traceback from deep inside (uvicorn's bind,
    # numpy's max of no scores)
    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"mmreason.{name}").main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and words in err, err
    assert list(roots.iterdir()) == []


@pytest.mark.parametrize("argv,words", [
    (["--data.batch_size", "0"], "error: --data.batch_size 0: at least 1"),
    (["--model.lr", "-1"], "error: --model.lr -1.0: above 0"),  # checked before any data is prepared
    (["--data.split", "foo"], "error: split must be 'temporal' or 'unseen', not 'foo'"),
    ([], "articles.parquet: file not found"),  # no H&M data where $MMREASON_HM_DIR points
])
def test_train_refuses_bad_settings_and_missing_data_in_one_line(argv, words, roots):
    # before: a traceback from inside LightningCLI's instantiation. A process of its own, as a user runs it (in this
    # one, Lightning's log handler would keep the stream of an earlier test's capture)
    r = subprocess.run([sys.executable, "-m", "mmreason.train", *argv], cwd=roots, capture_output=True, text=True)
    err = r.stderr.strip()  # Lightning logs "Seed set to 0" before it: the error is the last line
    assert r.returncode == 2 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("error: ") and words in err.splitlines()[-1], err
    assert list(roots.iterdir()) == []


@pytest.mark.parametrize("name", ["tokenizer", "clip", "embed"])
def test_a_command_before_the_tables_says_so_in_one_line(name, roots, capsys):
    # before: a bare message (no "error:") and exit status 1
    assert importlib.import_module(f"mmreason.{name}").main([]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("error: missing ") and "run `python -m mmreason.data` first" in err, err
    # and the shell sees it, as a user runs it (before: their `__main__` dropped main's status, so exit 0)
    r = subprocess.run([sys.executable, "-m", f"mmreason.{name}"], cwd=roots, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == err, (r.returncode, r.stderr)
    assert list(roots.iterdir()) == []


def test_every_command_passes_its_exit_status_to_the_shell():
    # `python -m mmreason.X` exits with what main returned: a failed command must fail a script or CI step
    for name in [*COMMANDS, "train"]:
        src = (REPO_ROOT / "mmreason" / f"{name}.py").read_text()
        assert src.rstrip().endswith('if __name__ == "__main__":\n    sys.exit(main())'), name


def test_help_and_train_print_config(capsys):
    for name in COMMANDS:
        with pytest.raises(SystemExit) as e:
            importlib.import_module(f"mmreason.{name}").main(["--help"])
        assert e.value.code == 0
        assert "--print_config" in capsys.readouterr().out
    from mmreason import train  # LightningCLI: the same two flags

    with pytest.raises(SystemExit) as e:
        train.main(["--print_config"])
    assert e.value.code in (0, None)
    assert yaml.safe_load(capsys.readouterr().out)["trainer"]["default_root_dir"] == "artifacts/runs/cpu"


def test_train_does_not_warn_about_the_command_line_it_reads_itself(monkeypatch, capsys):
    # fit hands LightningCLI the command line it read (plus the default config), or evaluate's own argv for a
    # variant while sys.argv holds evaluate's: Lightning's "args beside sys.argv" warning is noise in both
    from mmreason import train

    for sys_argv, argv in ((["mmreason.train", "--print_config"], None),
                           (["mmreason.evaluate", "--train"], ["--print_config"])):
        monkeypatch.setattr(sys, "argv", sys_argv)
        with warnings.catch_warnings(record=True) as caught, pytest.raises(SystemExit):
            warnings.simplefilter("always")
            train.main(argv)
        capsys.readouterr()
        assert not [w for w in caught if "args parameter" in str(w.message)], [str(w.message) for w in caught]


def test_flags_keep_their_argparse_spellings():
    from mmreason import evaluate, pii, recommend

    a, = evaluate.get_parser().parse(["--systems", "template", "full", "--no-constrain", "--no-embedding", "--train",
                                      "--train-args", "--trainer.max_steps", "1", "--no-constrain"])
    assert (a.systems, a.constrain, a.embedding, a.train) == (["template", "full"], False, False, True)
    assert a.train_args == ["--trainer.max_steps", "1", "--no-constrain"]  # every word after --train-args
    p, = pii.get_parser().parse(["a", "b", "--hm-dir", "h"])
    assert (p.paths, p.hm_dir) == (["a", "b"], "h")
    r, tt = recommend.get_parser().parse(["-k", "3", "--no-logq", "--two-tower-fit", "train", "--no-progress"])
    assert (r.k, tt.logq, r.two_tower_fit, r.progress) == (3, False, "train", False)
    r, tt = recommend.get_parser().parse(["--logq", "True"])  # as loadtest passes the two-tower flags on
    assert tt.logq is True
