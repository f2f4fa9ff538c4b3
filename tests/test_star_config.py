"""STAR's config sections and their check (dss.star_config): defaults and messages (its light import:
test_import_graph)."""

import ml_collections
import pytest

from dss import guardrails
from dss.config import base_config
from dss.errors import UserError
from dss.star_config import GUARDRAIL_KINDS, check_star_config, guardrail_defaults, star_defaults
from overrides import override


def config(**overrides):
    c = ml_collections.ConfigDict(dict(data=dict(sources=[dict(path="data.jsonl")]),
                                       guardrail=guardrail_defaults(), star=star_defaults()))
    c.guardrail.paths = ["tiny:guardrail"]
    return override(c, **overrides)


def test_defaults_are_the_papers_recipe_and_the_base_configs():
    assert star_defaults().to_dict() == dict(chunk_unit="word", chunk_size=5, method="shared_kv", score_mode="raw",
                                             token_budget=16384, cache="")
    assert guardrail_defaults().to_dict() == dict(paths=[], kind="auto", risk="", dtype="float32", mesh=())
    base = base_config()
    assert base.star.to_dict() == star_defaults().to_dict()
    assert base.guardrail.to_dict() == guardrail_defaults().to_dict()


def test_the_kinds_are_the_guardrail_recipes():
    assert GUARDRAIL_KINDS == tuple(guardrails.KINDS)


def test_a_good_config_passes():
    check_star_config(config())
    check_star_config(config(**{"guardrail.mesh": (1, -1, 1), "star.method": "naive", "guardrail.kind": "shieldgemma"}))


@pytest.mark.parametrize("key,value,message", [
    ("data.sources", [], "config.data.sources = []: no finetuning data; give at least one source dict with a 'path'"),
    ("guardrail.paths", [], "config.guardrail.paths = []: python -m dss.star scores the data with STAR, which needs a "
                            "list of one or more guardrails (HF directories or hub ids)"),
    ("guardrail.kind", "llamaguard", "config.guardrail.kind = 'llamaguard': unknown guardrail kind; use one of auto, "
                                     "llama_guard_3, granite_guardian, shieldgemma"),
    ("star.chunk_unit", "sentence", "config.star.chunk_unit = 'sentence': unknown chunk unit; use one of word, token"),
    ("star.chunk_size", 0, "config.star.chunk_size = 0: must be a positive integer"),
    ("star.chunk_size", True, "config.star.chunk_size = True: must be a positive integer"),
    ("star.method", "fast", "config.star.method = 'fast': unknown STAR method; use one of shared_kv, naive"),
    ("star.score_mode", "greedy", "config.star.score_mode = 'greedy': unknown STAR score mode; use one of raw, hf_sampling"),
    ("star.token_budget", -5, "config.star.token_budget = -5: must be a positive integer"),
    ("guardrail.mesh", (1, -1, -1), "config.guardrail.mesh = (1, -1, -1) (data, fsdp, tensor): three positive sizes, "
                                    "at most one of them -1 (the remaining devices)"),
    ("guardrail.mesh", (2, 2), "config.guardrail.mesh = (2, 2) (data, fsdp, tensor): three positive sizes, at most one "
                               "of them -1 (the remaining devices)"),
])
def test_each_bad_setting_is_named(key, value, message):
    with pytest.raises(UserError) as err:
        check_star_config(config(**{key: value}))
    assert str(err.value) == message


def test_who_needs_star_is_named():
    with pytest.raises(UserError, match=r"^config.guardrail.paths = \[\]: objective 'rs' scores the data with STAR"):
        check_star_config(config(**{"guardrail.paths": []}), needed_by="objective 'rs'")
