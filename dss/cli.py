"""The command line of every dss job: flags, the schema check, light checks, one-line errors.

A job module starts, right after its docstring and `from __future__ import annotations`, with

    if __name__ == "__main__":  # refuse bad input in seconds, before the imports below load JAX
        from dss import cli; cli.launch("dss.<job>", check=<a light check>)

so `python -m dss.<job>` parses its flags, loads the config file, checks every key against
`dss.config.base_config()` (typos at any depth, with a suggestion) and runs the job's light check
before the module's own imports (JAX, transformers, the models) are loaded: a mistake is refused
within seconds of launch, not after minutes of loading. A mistake the user can fix
(`dss.errors.UserError`, a bad flag) is printed as one line, `error: <message>`, with exit status
2; `--debug` or `DSS_DEBUG=1` shows its traceback. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import importlib.util
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from dss.errors import UserError

DEBUG_ENV = "DSS_DEBUG"
USER_ERROR_STATUS = 2

# Sections whose entries are not all in the schema: an `eval.benchmarks` entry may be any name
# with a `kind` (it takes that benchmark's fields, dss.eval.config), `template` holds any
# chat-template variables. Fields named `*sources` hold data-source dicts (dss.data.sources).
_KIND_SECTIONS = ("eval.benchmarks",)
_FREE_SECTIONS = ("template",)

# Two import-time messages every job printed; neither says anything wrong with this run: dss
# models need no torch, and a machine without libtpu or without a TPU device has no TPU to miss (a
# TPU that fails to start on a TPU host, or any other backend's failure, is still shown).
_NOISE = {
    "transformers": lambda message: message.startswith("PyTorch was not found. Models won't be available"),
    "jax._src.xla_bridge": lambda message: message.startswith("Unable to initialize backend 'tpu'")
    and ("libtpu" in message or "NOT_FOUND" in message),
}


def launch(module: str, check: Callable | None = None, *, options: Mapping[str, tuple] | None = None,
           config: bool = True, positional: str = "") -> NoReturn:
    """Run `python -m <module>`: parse the command line, check it, then import `module` and call
    its `main`; exits with main's status (an int it returns, else 0), or 2 on a user error.

    config=True (the default): the job takes `--config FILE[:arg]`, `--config.a.b=value`
    overrides, `--workdir DIR` (default: config.workdir) and `--debug`; the config file's keys and
    the overrides are checked against `dss.config.base_config()`, then the job gets
    `main(config, workdir, **options)` (config locked: a job cannot add keys).
    config=False: a job without a config (`--debug` and its options only).
    options: the job's own flags, {name: (default, help)}; the flag's type is the default's
      (bool, int, float or str); each arrives as a keyword argument.
    positional: the name of the job's positional arguments (e.g. "RUN_DIR"); they arrive as a
      list, the first argument of main and check. Without it, positional arguments are refused.
    check: called first with exactly what main will be called with; it must not import JAX,
      transformers or datasets, and raises UserError for a mistake.
    """
    debug = "--debug" in sys.argv[1:] or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    _setup_logging()
    try:
        args, kwargs = _parse(module, sys.argv, options or {}, config, positional)
        if check is not None:
            check(*args, **kwargs)
        if config:
            enable_compile_cache(args[0].get("compile_cache", ""))
        result = importlib.import_module(module).main(*args, **kwargs)
    except UserError as err:
        if debug:
            raise
        fail(err)
    sys.exit(result if isinstance(result, int) and not isinstance(result, bool) else 0)


def fail(err) -> NoReturn:
    """Print a user error as one line, `error: <message>`, and exit with status 2."""
    message = " ".join(str(err).split()) or type(err).__name__
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(USER_ERROR_STATUS)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax and jax are chatty at INFO
    for name, noise in _NOISE.items():
        logging.getLogger(name).addFilter(lambda record, noise=noise: not noise(record.getMessage()))


# ----------------------------------------------------------------------------- flags


def _parse(module: str, argv: Sequence[str], options: Mapping[str, tuple], config: bool, positional: str):
    """(positional arguments of main, keyword arguments of main) from the command line."""
    from absl import flags

    module = module.removesuffix(".__main__")  # as the user typed it
    values = flags.FlagValues()  # this job's flags alone; absl's global FLAGS stay empty
    flags.DEFINE_bool("debug", False, f"show the traceback of a user error (or set {DEBUG_ENV}=1)", flag_values=values)
    for name, (default, help_text) in options.items():
        define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float,
                  str: flags.DEFINE_string}[type(default)]
        define(name, default, help_text, flag_values=values)
    argv, wants_help = list(argv), any(a in ("-h", "--help", "--helpfull") for a in argv)
    if config:
        flags.DEFINE_string("workdir", None, "output directory (default: config.workdir)", flag_values=values)
        spec, argv = _config_argument(argv)
        if spec is None:
            if wants_help:
                _usage(module, values, config, positional)
            raise UserError(f"python -m {module}: --config FILE is required (e.g. --config configs/tiny.py)")
        from ml_collections import config_flags

        loaded = load_config_file(spec)
        check_config_keys(loaded)
        check_overrides(loaded, argv)
        argv = set_list_overrides(loaded, argv)
        config_flags.DEFINE_config_dict("config", loaded, "the experiment config (from --config)", flag_values=values,
                                        lock_config=True, sys_argv=argv)
    if wants_help:
        _usage(module, values, config, positional)
    try:
        rest = values(argv)[1:]
    except flags.Error as err:
        raise UserError(f"python -m {module}: {err}") from err
    flags.FLAGS.mark_as_parsed()  # absl's logging asks whether flags were parsed
    if rest and not positional:
        raise UserError(f"python -m {module}: unexpected arguments {rest}")
    args = [values.config, values.workdir or values.config.get("workdir", "")] if config else []
    if positional:
        if not rest:
            raise UserError(f"python -m {module}: give one or more {positional} arguments")
        args.append(rest)
    return args, {name: values[name].value for name in options}


def _config_argument(argv: list[str]) -> tuple[str | None, list[str]]:
    """(the value of --config, argv without it): the config is loaded here, not by absl."""
    for i, arg in enumerate(argv[1:], 1):
        match = re.fullmatch(r"--?config(=(.*))?", arg)
        if match and match.group(1):
            return match.group(2), argv[:i] + argv[i + 1:]
        if match:
            if i + 1 == len(argv):
                raise UserError("--config: give a config file (e.g. --config configs/tiny.py)")
            return argv[i + 1], argv[:i] + argv[i + 2:]
    return None, argv


def _usage(module: str, values, config: bool, positional: str) -> NoReturn:
    form = " --config FILE[:arg] [--config.a.b=value ...] [--workdir DIR]" if config else ""
    print(f"usage: python -m {module}{form} [flags]{f' {positional}...' if positional else ''}\n")
    print(values.get_help(include_special_flags=False))
    sys.exit(0)


def load_config_file(spec: str):
    """`get_config()` (or `get_config(arg)` for `FILE:arg`) of a config file. A missing file, or an
    error the file raises, is a UserError naming the file and line."""
    path, _, arg = spec.partition(":")
    if not Path(path).is_file():
        raise UserError(f"--config {path}: no such config file")
    module_spec = importlib.util.spec_from_file_location("dss_config_file", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
        if not hasattr(module, "get_config"):
            raise UserError(f"--config {path}: the file defines no get_config()")
        config = module.get_config(arg) if arg else module.get_config()
    except UserError:
        raise
    except Exception as err:  # the user's own Python: say where it failed
        frames = [f for f in traceback.extract_tb(err.__traceback__) if Path(f.filename) == Path(path)]
        line = getattr(err, "lineno", None) if isinstance(err, SyntaxError) else (frames[-1].lineno if frames else None)
        where = f"{path} line {line}" if line else path
        raise UserError(f"--config {spec}: {where}: {type(err).__name__}: {err}") from err
    if not hasattr(config, "keys"):
        raise UserError(f"--config {spec}: get_config() returned {type(config).__name__}, not a ConfigDict")
    return config


# ----------------------------------------------------------------------------- keys


def _suggest(key: str, known, paths: Sequence[str] = ()) -> str:
    """"; did you mean X?": the key of that name in another section, else the closest sibling."""
    elsewhere = [p for p in paths if p.rsplit(".", 1)[-1] == key]
    if elsewhere:
        return f"; did you mean {' or '.join(f'config.{p}' for p in elsewhere[:3])}?"
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f" (known here: {', '.join(sorted(known))})"


def _paths(node, prefix: str = "") -> list[str]:
    out = []
    for key in node.keys():
        out.append(prefix + key)
        if hasattr(node[key], "keys"):
            out += _paths(node[key], f"{prefix}{key}.")
    return out


def check_config_keys(config, schema=None) -> None:
    """Every key of `config`, at any depth, must be one of `schema` (default
    `dss.config.base_config()`, which holds every section); data-source dicts (fields named
    `*sources`) must have known keys. A typo is a UserError naming the key and the closest match."""
    if schema is None:
        from dss.config import base_config

        schema = base_config()
    _check_keys(config, schema, "", _paths(schema))


def _check_keys(node, schema, prefix: str, paths: Sequence[str]) -> None:
    from dss.data.sources import check_source_keys

    for key in node.keys():
        where = f"{prefix}{key}"
        if key not in schema:
            raise UserError(f"config.{where}: unknown key{_suggest(key, schema.keys(), paths)}")
        value, default = node[key], schema[key]
        if where in _FREE_SECTIONS:
            continue
        if hasattr(value, "keys") and hasattr(default, "keys"):
            if where in _KIND_SECTIONS:
                _check_kind_section(value, default, where, paths)
            else:
                _check_keys(value, default, f"{where}.", paths)
        elif key.endswith("sources") and isinstance(value, (list, tuple)):
            for k, source in enumerate(value):
                check_source_keys(source, f"config.{where}[{k}]")


def _check_kind_section(node, schema, where: str, paths: Sequence[str]) -> None:
    """Entries of a section open to new names: a known entry has its own fields, a new one those
    of the entry its `kind` names."""
    for name in node.keys():
        entry = node[name]
        kind = entry.get("kind") if hasattr(entry, "get") else None
        base = schema[name] if name in schema else schema[kind] if isinstance(kind, str) and kind in schema else None
        if base is None:
            kinds = sorted({schema[n].get("kind") for n in schema.keys()})
            raise UserError(f"config.{where}.{name}: a new entry needs `kind`, one of {', '.join(kinds)}")
        if hasattr(entry, "keys"):
            _check_keys(entry, base, f"{where}.{name}.", paths)


_OVERRIDE = re.compile(r"--?(?:no)?config\.([^=]+)(?:=.*)?")


def check_overrides(config, argv: Sequence[str]) -> None:
    """Every `--config.a.b[=value]` must name a field of the loaded config (not a section), with
    the closest key suggested for a typo."""
    paths = _paths(config)
    for arg in argv[1:]:
        match = _OVERRIDE.fullmatch(arg)
        if not match:
            continue
        node, done = config, []
        for key in match.group(1).split("."):
            if not hasattr(node, "keys"):
                raise UserError(f"{arg}: config.{'.'.join(done)} is a value, not a section")
            if key not in node:
                where = ".".join([*done, key])
                raise UserError(f"{arg}: config.{where} is not a config key{_suggest(key, node.keys(), paths)}")
            node, done = node[key], [*done, key]


def set_list_overrides(config, argv: Sequence[str]) -> list[str]:
    """Sets each `--config.a.b=[...]` whose field is a list (ml_collections' flags override only
    scalars, strings and tuples, and raise on a list) from the Python literal given; returns the
    other arguments."""
    import ast

    rest = []
    for arg in argv:
        match = _OVERRIDE.fullmatch(arg)
        if match:
            *parents, leaf = match.group(1).split(".")
            node = functools.reduce(lambda n, k: n[k], parents, config)
        if not match or not isinstance(node[leaf], list):
            rest.append(arg)
            continue
        text = arg.partition("=")[2]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{arg}: config.{match.group(1)} is a list; give a Python list, e.g. "
                            f"--config.{match.group(1)}=\"['a', 'b']\"")
        node[leaf] = list(value)
    return rest


# ----------------------------------------------------------------------------- job setup


def enable_compile_cache(directory: str) -> None:
    """JAX's persistent compilation cache for this job: a rerun, a resume or the next job of a
    run loads the programs it compiled before instead of compiling them again."""
    if directory == "off":
        return
    import jax

    from dss.cache import cache_root

    jax.config.update("jax_compilation_cache_dir", directory or str(cache_root() / "jax_compile"))
    # every program, however quick to compile: a job has dozens of small ones (the tiny config's
    # run: 75, 1 MB; cached only above 0.5 s, one of them was, and a warm rerun took 9.4 s, not 6.5)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
