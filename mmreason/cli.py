"""One config style for every command: jsonargparse over dataclasses, as LightningCLI does for ``train``.

A command's options are one or more dataclasses, read once: their fields give the flags, types, defaults
and (from the class docstring's ``Args:``) the help. ``parser(Options, RLConfig, prog=...)`` builds the
parser; ``parser.parse(argv)`` returns one instance of each class. Every command so takes

* ``--config file.yaml``: the values in a file (keys: the field names, ``hm_dir: ...``); flags after it win;
* ``--print_config``: the full resolved config as YAML (a file to edit and pass back), then exit;
* ``--help``.

Flags are the field names with dashes (``hm_dir`` -> ``--hm-dir``); a boolean is ``--flag``, ``--no-flag``
or ``--flag true|false``; a list is ``--systems a b``. The fields of all classes share one flat namespace
(no ``--rl.steps``), so the spellings that argparse had stay. A bad value, or a ``__post_init__`` that refuses
the settings (``io.check_ranges`` for a number out of its range), stops with one line on stderr and exit status 2,
before the command does anything.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing

import jsonargparse
from jsonargparse import ActionConfigFile, ActionYesNo
from jsonargparse._typehints import ActionTypeHint  # the action that add_class_arguments gives a typed field


class ArgumentParser(jsonargparse.ArgumentParser):
    """A jsonargparse parser whose fields come from dataclasses (``add_dataclass``) and whose errors are one line."""

    _adding: dict | None = None  # while add_dataclass runs: how to spell its flags

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.configs: list[tuple[type, frozenset[str]]] = []
        self._positional: set[str] = set()
        self.add_argument("--config", action=ActionConfigFile, help="a YAML file of these options (see --print_config)")

    def add_dataclass(self, cls: type, skip: set[str] = frozenset(), positional: set[str] = frozenset(),
                      remainder: set[str] = frozenset(), short: dict[str, str] | None = None,
                      helps: dict[str, str] | None = None) -> None:
        """The fields of ``cls`` (less ``skip``) as flags; ``positional`` fields take the bare values (``nargs='*'``),
        a ``remainder`` field every word after its flag (``--train-args --a 1``), ``short`` adds e.g. ``{"k": "-k"}``,
        ``helps`` replaces a field's docstring help with one computed in code (a list of names, a default path)."""
        self._adding = {"positional": positional, "remainder": remainder, "short": short or {}, "helps": helps or {}}
        try:
            self.add_class_arguments(cls, None, as_group=False, skip=set(skip), fail_untyped=True, sub_configs=False)
        finally:
            self._adding = None
        self.configs.append((cls, frozenset(skip)))
        self._positional |= {f.name for f in dataclasses.fields(cls)} & set(positional)

    def positional_fields(self) -> set[str]:
        """The fields given as bare words; ``--print_config`` shows them only when given (argparse has no default)."""
        return set(self._positional)

    def add_argument(self, *args, **kwargs):
        how = self._adding
        if how is None or not args or not args[0].startswith("--"):
            return super().add_argument(*args, **kwargs)
        name = args[0][2:]
        if name in how["helps"]:
            kwargs["help"] = how["helps"][name]
        args = tuple("--" + a[2:].replace("_", "-") for a in args if not a.endswith("+"))  # no jsonargparse `--x+`
        action = kwargs.get("action")
        hint = action._typehint if isinstance(action, ActionTypeHint) else kwargs.get("type")
        if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))  # list[str] | None: a list flag
        is_list = typing.get_origin(hint) is list
        if kwargs.get("type") is bool:  # --flag, --no-flag, --flag true|false
            kwargs.pop("type")
            kwargs.update(action=ActionYesNo(no_prefix="no-"), nargs="?")
        elif name in how["remainder"]:  # every word after the flag, as argparse.REMAINDER gives them
            kwargs["nargs"] = argparse.REMAINDER
        elif is_list:  # --systems a b (argparse's nargs, each word typed)
            kwargs.pop("action", None)
            kwargs.update(type=typing.get_args(hint)[0], nargs="*" if name in how["positional"] else "+")
        if name in how["positional"]:  # no words: keep what --config or the default gave, not argparse's []
            args = (name,)
            kwargs.pop("required", None)
            kwargs["default"] = argparse.SUPPRESS
        elif name in how["short"]:
            args = (how["short"][name], *args)
        return super().add_argument(*args, **kwargs)

    def parse(self, argv=None) -> tuple:
        """One instance of each added dataclass, from ``argv`` (default ``sys.argv[1:]``), the files of ``--config``
        and the defaults; exits 2 in one line on a bad value, 0 after ``--print_config`` / ``--help``."""
        ns = self.parse_args(sys.argv[1:] if argv is None else list(argv))
        out = []
        for cls, skip in self.configs:
            values = {f.name: ns[f.name] for f in dataclasses.fields(cls) if f.init and f.name not in skip and f.name in ns}
            try:
                out.append(cls(**values))
            except (ValueError, TypeError) as e:  # a __post_init__ that refuses the combination
                self.error(str(e))
        return tuple(out)

    def error(self, message: str, ex: Exception | None = None) -> typing.NoReturn:
        if not self.exit_on_error:  # jsonargparse raises instead (e.g. while it tries alternatives)
            super().error(message, ex)
        sys.stderr.write(f"{self.prog}: error: {' '.join(str(message).split())} (see --help)\n")
        sys.exit(2)


def parser(*configs: type, prog: str, description: str | None = None, skip: set[str] = frozenset(),
           positional: set[str] = frozenset(), remainder: set[str] = frozenset(),
           short: dict[str, str] | None = None, helps: dict[str, str] | None = None) -> ArgumentParser:
    """The parser of a command whose options are the fields of ``configs`` (``skip``: field names left out)."""
    p = ArgumentParser(prog=prog, description=description)
    for cls in configs:
        p.add_dataclass(cls, skip={s for s in skip if s in {f.name for f in dataclasses.fields(cls)}},
                        positional=positional, remainder=remainder, short=short, helps=helps)
    return p
