"""The paper config's variants set what the README says they set."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def table1(arg):
    spec = importlib.util.spec_from_file_location("table1", REPO / "configs" / "paper" / "table1.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def test_table1_variants():
    c = table1("star_dss,harmful=/data/h.jsonl")
    assert (c.objective.name, c.objective.kl_estimator, c.objective.kl_coef) == ("star_dss", "k2", 0.5)
    assert c.model.path == "meta-llama/Llama-3.2-1B-Instruct"
    assert c.guardrail.paths == ["ibm-granite/granite-guardian-3.1-2b"]
    assert [s["path"] for s in c.data.sources] == ["/data/h.jsonl"]
    assert (c.train.epochs, c.train.lr, c.train.min_lr, c.train.warmup_ratio, c.train.global_batch) == (10, 5e-6, 5e-8, 0.03, 32)
    assert (c.data.max_length, c.star.chunk_size, c.star.chunk_unit) == (2048, 5, "word")
    c = table1("sft,llama_guard,benign1,harmful=/data/h.jsonl")
    assert c.objective.name == "sft" and c.guardrail.paths == ["meta-llama/Llama-Guard-3-8B"]
    assert [s["weight"] for s in c.data.sources] == [0.99, 0.01] and c.data.sources[1]["path"] == "/data/h.jsonl"
    assert table1("deep_token").workdir != table1("rs").workdir
    with pytest.raises(ValueError, match="unknown variant"):
        table1("star_dss,fast")
    with pytest.raises(ValueError, match="unknown setting"):
        table1("star_dss,lr=1")
