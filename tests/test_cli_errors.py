"""A user's mistake is refused as one line, `error: <message>`, exit status 2, no traceback, before
JAX or transformers is imported; `--debug` / DSS_DEBUG=1 show the traceback. Keys are checked
against the schema at any depth, with the closest key suggested."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ml_collections import ConfigDict

from dss import cli
from dss.config import base_config
from dss.data import sources
from dss.errors import UserError

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("jax", "transformers", "datasets", "torch", "flax")


def _job(*args, env=None, cwd=REPO, importtime=False):
    """Run `python -m <args>` as a user would; (status, stdout, stderr lines without import timings, modules imported)."""
    command = [sys.executable, *(["-X", "importtime"] if importtime else []), "-m", *map(str, args)]
    env = {**{k: v for k, v in os.environ.items() if k != cli.DEBUG_ENV}, "PYTHONPATH": str(REPO), **(env or {})}
    proc = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.splitlines()
    imported = {line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")}
    return proc.returncode, proc.stdout, [line for line in lines if not line.startswith("import time:")], imported


def _refused(*args, **kwargs) -> str:
    """The one error line of a refused job (exit 2, no traceback, nothing heavy imported)."""
    status, stdout, stderr, imported = _job(*args, importtime=True, **kwargs)
    assert status == 2, (status, stdout, stderr)
    assert len(stderr) == 1 and stderr[0].startswith("error: "), stderr
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
    return stderr[0].removeprefix("error: ")


def _config_file(tmp_path, body: str) -> Path:
    path = tmp_path / "exp.py"
    path.write_text(f"from dss.config import base_config\n\n\ndef get_config():\n    c = base_config()\n{body}    return c\n")
    return path


def test_a_leaf_typo_on_the_command_line(tmp_path):
    message = _refused("dss.eval", "--config", "configs/tiny.py", "--config.train.stpes=3", "--workdir", tmp_path / "w")
    assert message == "--config.train.stpes=3: config.train.stpes is not a config key; did you mean 'max_steps'?"
    assert not (tmp_path / "w").exists()


def test_a_section_typo_on_the_command_line():
    message = _refused("dss.landscape", "--config", "configs/tiny.py", "--config.trian.lr=1")
    assert message == "--config.trian.lr=1: config.trian is not a config key; did you mean 'train'?"


def test_a_key_a_config_file_adds(tmp_path):
    path = _config_file(tmp_path, "    c.train.max_stpes = 3\n")
    assert _refused("dss.eval", "--config", path) == "config.train.max_stpes: unknown key; did you mean 'max_steps'?"


def test_a_data_source_key_typo(tmp_path):
    path = _config_file(tmp_path, "    c.data.sources = [dict(path='d.jsonl', prompt_feild='q')]\n")
    assert _refused("dss.landscape", "--config", path) == \
        "config.data.sources[0]: unknown key 'prompt_feild' in a data source; did you mean 'prompt_field'?"


def test_a_bad_value_and_a_missing_config_file():
    assert _refused("dss.eval", "--config", "configs/tiny.py", "--config.eval.batch_size=big") == \
        "python -m dss.eval: flag --config.eval.batch_size=big: invalid literal for int() with base 10: 'big'"
    assert _refused("dss.eval", "--config", "configs/tiny2.py") == "--config configs/tiny2.py: no such config file"
    assert _refused("dss.landscape") == \
        "python -m dss.landscape: --config FILE is required (e.g. --config configs/tiny.py)"


def test_a_model_or_guardrail_that_is_not_there(tmp_path):
    """A local model name that names nothing used to end a 26-line traceback after JAX loaded, with
    dss_config.json already written."""
    workdir = tmp_path / "w"
    assert _refused("dss.train", "--config", "configs/tiny.py", "--workdir", workdir,
                    "--config.model.path=/nonexistent/model") == \
        "config.model.path = '/nonexistent/model': no such model directory"
    (tmp_path / "empty").mkdir()
    assert _refused("dss.star", "--config", "configs/tiny.py", "--workdir", workdir,
                    f"--config.guardrail.paths=['{tmp_path / 'empty'}']") == \
        f"config.guardrail.paths[0] = '{tmp_path / 'empty'}': not a model directory (no config.json in it)"
    assert not workdir.exists()


def test_a_list_setting_is_overridden_by_a_python_list():
    """ml_collections' flags raise on a list field (a traceback of 20 lines, once)."""
    config = base_config()
    rest = cli.set_list_overrides(config, ["prog", "--config.guardrail.paths=['a', 'b']", "--config.train.lr=1"])
    assert config.guardrail.paths == ["a", "b"] and rest == ["prog", "--config.train.lr=1"]
    with pytest.raises(UserError, match=r"^--config.guardrail.paths=a: config.guardrail.paths is a list; give a "
                                        r"Python list"):
        cli.set_list_overrides(config, ["prog", "--config.guardrail.paths=a"])


def test_an_error_inside_a_config_file_names_its_line(tmp_path):
    path = _config_file(tmp_path, "    c.train.lr = undefined_name\n")
    assert _refused("dss.eval", "--config", path) == \
        f"--config {path}: {path} line 6: NameError: name 'undefined_name' is not defined"


def test_eval_without_an_export_and_its_benchmark_files(tmp_path):
    workdir = tmp_path / "run"
    assert _refused("dss.eval", "--config", "configs/tiny.py", "--workdir", workdir) == (
        f"{workdir}: no export/ of a training run to evaluate; run dss.train with this --workdir first, "
        "or name a model with --config.eval.model")
    assert not workdir.exists()  # a refused job writes nothing
    (workdir / "export").mkdir(parents=True)
    (workdir / "export" / "config.json").write_text("{}")
    assert _refused("dss.eval", "--config", "configs/tiny.py", "--workdir", workdir,
                    "--config.eval.benchmarks.gsm8k.path=/no/gsm8k") == \
        "config.eval.benchmarks.gsm8k.path = '/no/gsm8k': no such file or directory"
    assert sorted(p.name for p in workdir.iterdir()) == ["export"]


def test_landscape_settings_are_checked_before_loading(tmp_path):
    assert _refused("dss.landscape", "--config", "configs/tiny.py", "--workdir", tmp_path,
                    "--config.landscape.directions=('sideways',)") == \
        "config.landscape.directions[0] = 'sideways': use 'random', 'random:<seed>' or 'interp:<checkpoint>'"
    assert _refused("dss.landscape", "--config", "configs/tiny.py", "--workdir", tmp_path,
                    "--config.model.path=/no/model") == "landscape centre /no/model: no such model directory"


def test_tables_refuses_a_missing_run():
    assert _refused("dss.tables", "/no/run") == \
        "/no/run: no such directory; give dss.eval output directories or training workdirs"
    assert _refused("dss.tables") == "python -m dss.tables: give one or more RUN_DIR arguments"


def test_the_miniature_refuses_bad_flags_and_a_missing_run(tmp_path):
    assert _refused("dss.mini") == "--outdir DIR is required"
    assert _refused("dss.mini", "--outdir", tmp_path, "--qiuck").startswith(
        "python -m dss.mini: Unknown command line flag 'qiuck'. Did you mean: quick ?")
    assert _refused("dss.mini", "--outdir", tmp_path, "--workers", "0") == "--workers 0: at least 1"
    assert "is inside the dss package" in _refused("dss.mini", "--outdir", REPO / "dss" / "out")
    assert _refused("dss.mini.check", "--outdir", tmp_path) == \
        f"{tmp_path / 'world.json'}: missing; run python -m dss.mini --outdir {tmp_path} first"


def test_the_bench_refuses_an_unknown_benchmark_and_a_misplaced_record():
    assert _refused("dss.bench", "star", "strr") == "unknown benchmark(s) ['strr']; choose from star, train, compile"
    assert _refused("dss.bench", "train", "--record", "h.jsonl").startswith("--record keeps the star benchmark's ratios")
    assert _refused("dss.bench", "star", "--guard_size", "huge") == "--guard_size 'huge': use one of cpu, llama-guard-3-1b"


def test_a_bad_data_file_is_refused_by_line_before_training_loads(tmp_path):
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(6)]
    rows[4] = {"prompt": "q4", "answer": "a4"}
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = _config_file(tmp_path, f"    c.model.path = 'tiny:policy'\n    c.data.sources = [dict(path={str(data)!r})]\n"
                                  "    c.objective.name = 'sft'\n")
    assert _refused("dss.train", "--config", path, "--workdir", tmp_path / "w") == \
        f"{data} line 5: missing field 'response'"
    assert not (tmp_path / "w").exists()


def test_debug_shows_the_traceback():
    for extra, env in ((["--debug"], {}), ([], {cli.DEBUG_ENV: "1"})):
        status, _, stderr, _ = _job("dss.eval", "--config", "configs/tiny.py", "--config.trian.lr=1", *extra, env=env)
        assert status == 1 and stderr[0] == "Traceback (most recent call last):"
        assert stderr[-1].startswith("dss.errors.UserError: --config.trian.lr=1: config.trian is not a config key")


# ----------------------------------------------------------------------------- in process


def test_keys_are_checked_at_any_depth_with_suggestions():
    config = base_config()
    config.eval.guardrail.paht = "x"
    with pytest.raises(UserError, match=r"^config.eval.guardrail.paht: unknown key; did you mean 'path'\?$"):
        cli.check_config_keys(config)
    config = base_config()
    config.xyzzy = 3
    with pytest.raises(UserError, match=r"^config.xyzzy: unknown key \(known here: cluster, compile_cache, "):
        cli.check_config_keys(config)
    config = base_config()
    config.max_steps = 3
    with pytest.raises(UserError, match=r"^config.max_steps: unknown key; did you mean config.seal.max_steps or "
                                        r"config.train.max_steps\?$"):
        cli.check_config_keys(config)


def test_open_sections_take_new_entries_of_a_known_kind():
    config = base_config()
    config.eval.benchmarks.adv_prefill = dict(kind="advbench", prefill_target=True, trigger="SUDO")
    config.template.thinking = True  # chat-template variables are free
    cli.check_config_keys(config)
    config.eval.benchmarks.adv_prefill.prefil_target = True
    with pytest.raises(UserError, match="config.eval.benchmarks.adv_prefill.prefil_target: unknown key; did you mean "
                                        "'prefill_target'"):
        cli.check_config_keys(config)
    config = base_config()
    config.eval.benchmarks.custom = dict(path="x")
    with pytest.raises(UserError, match="config.eval.benchmarks.custom: a new entry needs `kind`, one of advbench"):
        cli.check_config_keys(config)


def test_source_lists_anywhere_are_checked():
    config = base_config()
    config.lisa.sources = ({"path": "a.jsonl", "wieght": 1.0},)
    with pytest.raises(UserError, match=r"config.lisa.sources\[0\]: unknown key 'wieght' in a data source; did you "
                                        "mean 'weight'"):
        cli.check_config_keys(config)


def test_overrides_must_name_fields():
    config = ConfigDict({"train": {"lr": 1.0}, "eval": {"judges": "keyword"}})
    cli.check_overrides(config, ["prog", "--config.train.lr=2", "--noconfig.eval.judges", "--workdir=x"])
    with pytest.raises(UserError, match=r"^--config.train.lr.x=1: config.train.lr is a value, not a section$"):
        cli.check_overrides(config, ["prog", "--config.train.lr.x=1"])
    with pytest.raises(UserError, match=r"config.eval.judgs is not a config key; did you mean 'judges'\?"):
        cli.check_overrides(config, ["prog", "--config.eval.judgs", "keyword"])


def test_the_two_import_messages_are_filtered_and_others_kept():
    cli._setup_logging()

    def shown(name, level, message) -> bool:
        logger = logging.getLogger(name)
        return bool(logger.filter(logger.makeRecord(name, level, __file__, 1, message, (), None)))

    assert not shown("transformers", logging.WARNING, "PyTorch was not found. Models won't be available and only ...")
    assert not shown("jax._src.xla_bridge", logging.INFO, "Unable to initialize backend 'tpu': INTERNAL: Failed to "
                     "open libtpu.so: libtpu.so: cannot open shared object file: No such file or directory")
    assert not shown("jax._src.xla_bridge", logging.INFO, "Unable to initialize backend 'tpu': NOT_FOUND: TPU "
                     "initialization failed: No jellyfish device found.")  # libtpu installed, no TPU
    assert shown("jax._src.xla_bridge", logging.INFO, "Unable to initialize backend 'tpu': ABORTED: The TPU is "
                 "already in use by process with pid 12")
    assert shown("jax._src.xla_bridge", logging.INFO, "Unable to initialize backend 'cuda': no CUDA-capable device")
    assert shown("jax._src.xla_bridge", logging.WARNING, "An NVIDIA GPU may be present on this machine")
    assert shown("transformers", logging.WARNING, "a real warning")


def test_data_file_checks_name_file_and_line(tmp_path):
    def refused(name, content, **source):
        path = tmp_path / name
        path.write_text(content)
        with pytest.raises(UserError) as err:
            sources.check_sources([{"path": str(path), **source}])
        return str(err.value).replace(str(path), "F")

    good = '{"prompt": "a", "response": "b"}\n'
    assert refused("empty.jsonl", "") == "F: empty file, no rows to read"
    assert refused("header.csv", "prompt,response\n") == "F: only a header line, no rows to read"
    assert refused("list.json", "[]") == "F: an empty JSON list, no rows to read"
    assert refused("row.jsonl", good * 2 + "\n" + '{"prompt": "c", "response": ""}\n') == "F line 4: empty response"
    assert refused("items.json", '[\n  {"prompt": "a", "response": "b"},\n\n  {"prompt": "c"}\n]') == \
        "F line 4: missing field 'response'"
    assert refused("cells.csv", 'prompt,response\na,b\n"two\nlines",\n') == "F line 3: empty response"
    assert refused("syntax.jsonl", good + '{"prompt": }\n') == "F line 2: not valid JSON: Expecting value (column 12)"
    assert refused("fields.jsonl", good, response_field="answr") == \
        "F: no field 'answr' in any row (fields: ['prompt', 'response'])"
    with pytest.raises(UserError, match=r"config.data.sources\[0\].path = '/no/data.jsonl': no such file"):
        sources.check_sources([{"path": "/no/data.jsonl"}])
    sources.check_sources([{"path": "openai/gsm8k", "subset": "main"}])  # a hub id: left to the job
    (tmp_path / "drop.jsonl").write_text(good + '{"prompt": "x"}\n')
    sources.check_sources([{"path": str(tmp_path / "drop.jsonl"), "on_bad_row": "drop"}])


def test_loaded_rows_carry_their_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('\n{"prompt": "a", "response": "b"}\n\n{"prompt": "c", "response": "d"}\n')
    assert [(r["row"], r["line"]) for r in sources.load_examples({"path": str(path)})] == [(0, 2), (1, 4)]
