"""The paper config's variants set what the README says they set."""

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def paper_config(table: str, arg: str):
    spec = importlib.util.spec_from_file_location(table, REPO / "configs" / "paper" / f"{table}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def table1(arg):
    return paper_config("table1", arg)


def table2(arg):
    return paper_config("table2", arg)


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


def test_every_variant_names_its_paper_row_and_trains_what_it_says():
    from dss import tables

    rows = {v: table1(v + ",harmful=/d/h.jsonl").eval.method for v in ("sft", "vaccine", "safelora", "rs", "deep_token",
                                                                         "star_dss")}
    assert tuple(rows.values()) == tables.LAYOUTS["table1"]
    rows = {v: table2(v + ",harmful=/d/h.jsonl").eval.method for v in ("sft", "safeinstr", "seal", "lisa", "star_dss")}
    assert tuple(rows.values()) == tables.LAYOUTS["table2"]

    align = table1("vaccine_align,benign10,alignment=/d/a.jsonl")
    assert (align.objective.name, align.vaccine.enabled, align.vaccine.rho, align.workdir) == (
        "sft", True, 2.0, "workdir/table1_vaccine_align")
    assert [s["path"] for s in align.data.sources] == ["/d/a.jsonl"] and align.data.size == 0  # alignment data only
    vaccine = table1("vaccine,harmful=/d/h.jsonl")
    assert vaccine.objective.name == "sft" and vaccine.model.path == align.workdir + "/export"
    safelora = table1("safelora")
    assert safelora.lora.enabled and safelora.safelora.enabled and safelora.safelora.base_path == "meta-llama/Llama-3.2-1B"

    stand_in = Path(table2("seal").seal.safe_sources[0]["path"])
    assert stand_in.is_file() and stand_in.is_relative_to(REPO / "dss" / "data" / "files")  # shipped with dss
    assert table2("safeinstr").safeinstr.enabled and table2("safeinstr").objective.name == "sft"
    lisa = table2("lisa,alignment=/d/a.jsonl")
    assert lisa.objective.name == "sft" and lisa.lisa.enabled and [s["path"] for s in lisa.lisa.sources] == ["/d/a.jsonl"]
    with pytest.raises(ValueError, match="one method per run"):
        table2("sft,seal")
    with pytest.raises(ValueError, match="unknown variant"):
        table2("vaccine")  # a Table 1 method
