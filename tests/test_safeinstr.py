"""SafeInstr: the bundled safety set is its recipe and holds no evaluation prompt; the data recipe
appends exactly the seeded draw of safety rows, untouched by attacks; a tiny run trains on both;
bad settings are refused by key before training."""

import csv
import importlib.util
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

import dss.data
import dss.hub
import dss.models
from dss import train as dss_train
from dss.baselines import safeinstr
from dss.train_checks import check_train_config
from overrides import override

REPO = Path(__file__).resolve().parents[1]
FILES = dss.data.BUNDLED_DIR


@pytest.fixture(scope="module", autouse=True)
def tiny_cache(tmp_path_factory):  # one per session: test_seal and test_safeinstr share the tiny assets
    os.environ["DSS_CACHE"] = str(tmp_path_factory.getbasetemp() / "dss_cache_baselines")
    yield


@pytest.fixture(scope="module")
def tokenizer(tiny_cache):
    return AutoTokenizer.from_pretrained(dss.hub.resolve_path("tiny:policy"))


def tiny_config(**overrides):
    sys.path.insert(0, str(REPO / "configs"))
    import tiny

    return override(tiny.get_config(), **overrides)


@pytest.fixture
def official_style_file(tmp_path):
    """A safety file laid out as the official safety_only_data_Instructions.json (12 rows)."""
    rows = [{"instruction": f"Harmful request number {i}.", "input": "", "output": f"I can't help with request {i}."}
            for i in range(12)]
    path = tmp_path / "safety_only_data_Instructions.json"
    path.write_text(json.dumps(rows, indent=4))
    return str(path), rows


def test_bundled_refusals_are_their_recipe_and_hold_no_evaluation_prompt():
    spec = importlib.util.spec_from_file_location("make_refusals", FILES / "safety_refusals" / "make_refusals.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    bundled = (FILES / "safety_refusals" / "harmbench_refusals.jsonl").read_text(encoding="utf-8")
    assert bundled == recipe.render(recipe.build())

    rows = [json.loads(line) for line in bundled.splitlines()]
    requests = {r["prompt"].rsplit("\n\n---\n\n", 1)[-1] for r in rows}
    with open(FILES / "harmbench" / "harmbench_behaviors_text_all.csv", newline="") as f:
        harmbench = list(csv.DictReader(f))
    with open(FILES / "advbench" / "harmful_behaviors.csv", newline="") as f:
        advbench = {r["goal"] for r in csv.DictReader(f)}
    standard = {r["Behavior"] for r in harmbench if r["FunctionalCategory"] == "standard"}
    assert len(rows) == len({r["prompt"] for r in rows}) == 200
    assert not requests & (standard | advbench)
    assert {r["id"] for r in rows} == {r["BehaviorID"] for r in harmbench if r["FunctionalCategory"] != "standard"}


def test_recipe_appends_exactly_the_seeded_draw_untouched_by_attacks(tokenizer, official_style_file):
    path, rows = official_style_file
    config = tiny_config(**{"data.seed": 3, "data.attack.response_prefix": "Sure! ", "safeinstr.enabled": True,
                            "safeinstr.path": path, "safeinstr.prompt_field": "instruction",
                            "safeinstr.response_field": "output", "safeinstr.count": 5})
    user = dss.data.build_dataset(config.data, tokenizer, None)
    encoded, examples, stats = safeinstr.add_safety_data(config, tokenizer, None, *user)

    drawn = np.sort(np.random.default_rng([3, 0, 1]).choice(12, 5, replace=False))  # sample_rows' documented draw
    assert examples[:40] == user[1] and all(e["response"].startswith("Sure! ") for e in examples[:40])
    assert [(e["prompt"], e["response"]) for e in examples[40:]] == \
        [(rows[i]["instruction"], rows[i]["output"]) for i in drawn]
    assert len(encoded) == 45 and encoded[:40] == user[0]
    assert stats["sources"]["safeinstr"]["selected"] == 5 and stats["encoded"] == 45 and stats["rows"] == 52
    assert stats["attacked"] == 40

    again = safeinstr.add_safety_data(config, tokenizer, None, *user)[1]
    assert again == examples  # the same seed, the same rows
    config.data.seed = 4
    other = safeinstr.add_safety_data(config, tokenizer, None, *dss.data.build_dataset(config.data, tokenizer, None))[1]
    redrawn = np.sort(np.random.default_rng([4, 0, 1]).choice(12, 5, replace=False))
    assert [e["row"] for e in other[40:]] == redrawn.tolist() != drawn.tolist()


def test_count_zero_adds_the_whole_bundled_set_in_file_order(tokenizer):
    config = tiny_config(**{"data.max_length": 4096, "safeinstr.enabled": True})
    user = dss.data.build_dataset(config.data, tokenizer, None)
    _, examples, stats = safeinstr.add_safety_data(config, tokenizer, None, *user)
    refusals = [json.loads(line) for line in (FILES / "safety_refusals" / "harmbench_refusals.jsonl").open()]
    assert [(e["prompt"], e["response"]) for e in examples[40:]] == [(r["prompt"], r["response"]) for r in refusals]
    assert stats["sources"]["safeinstr"]["encoded"] == 200


def test_disabled_leaves_the_data_alone(tokenizer):
    config = tiny_config()
    user = dss.data.build_dataset(config.data, tokenizer, None)
    assert safeinstr.add_safety_data(config, tokenizer, None, *user) == user


def test_more_rows_than_the_safety_set_has_is_refused(tokenizer, official_style_file):
    config = tiny_config(**{"safeinstr.enabled": True, "safeinstr.path": official_style_file[0],
                            "safeinstr.prompt_field": "instruction", "safeinstr.response_field": "output",
                            "safeinstr.count": 13})
    with pytest.raises(ValueError, match="config.safeinstr.count = 13: the safety set .* has only 12 usable rows"):
        safeinstr.add_safety_data(config, tokenizer, None, *dss.data.build_dataset(config.data, tokenizer, None))


@pytest.mark.parametrize("overrides, message", [
    ({"safeinstr.path": "/nowhere/safety.json"}, "config.safeinstr.path = '/nowhere/safety.json': no such file"),
    ({"safeinstr.count": -1}, "config.safeinstr.count = -1: must be an integer >= 0"),
    ({"safeinstr.prompt_field": ""}, "config.safeinstr.prompt_field = '': must name a field of the safety set"),
])
def test_bad_safeinstr_settings_are_refused_by_key(overrides, message):
    with pytest.raises(ValueError) as err:
        check_train_config(tiny_config(**{"safeinstr.enabled": True, **overrides}))
    assert str(err.value).startswith(message)


def test_a_missing_safety_file_stops_train_before_any_step(tmp_path):
    with pytest.raises(ValueError, match="config.safeinstr.path = 'missing.jsonl': no such file"):
        dss_train.train(tiny_config(**{"safeinstr.enabled": True, "safeinstr.path": "missing.jsonl"}), tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


def test_tiny_run_trains_on_the_user_and_the_safety_rows(tmp_path, official_style_file, caplog):
    caplog.set_level(logging.INFO, logger="dss.train")
    config = tiny_config(**{"objective.name": "sft", "train.max_steps": 2, "train.export": False,
                            "safeinstr.enabled": True, "safeinstr.path": official_style_file[0],
                            "safeinstr.prompt_field": "instruction", "safeinstr.response_field": "output",
                            "safeinstr.count": 8})
    final = dss_train.train(config, tmp_path)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and np.isfinite(final["loss"])
    report = json.loads(next(r.getMessage() for r in caplog.records if r.getMessage().startswith("data: "))[6:])
    assert report["sources"]["safeinstr"]["encoded"] == 8 and report["encoded"] == 48  # 40 demo + 8 safety rows
