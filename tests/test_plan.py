"""dss.plan: a run's state built abstractly is the real run's; its step compiled for a TPU
topology from this CPU machine reports figures that add up, and a program too big says so."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from safetensors import safe_open

import dss.models
from dss import methods, plan, sharding
from dss import train as dss_train
from dss.models.checkpoint import abstract_pretrained
from dss.run import Run
from hf_tiny import make_hf_model
from overrides import override

REPO = Path(__file__).resolve().parents[1]
needs_libtpu = pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                                  reason="compiling for a TPU topology needs libtpu (the test extra's jax[tpu]); "
                                         "it has no wheel for this platform")


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    out = tmp_path_factory.mktemp("policy")
    make_hf_model("llama", out)
    return out


def config_for(policy, **overrides):
    sys.path.insert(0, str(REPO / "configs"))
    import tiny

    base = {"model.path": str(policy), "objective.name": "sft", "data.max_length": 256, "train.global_batch": 8,
            "train.micro_batch": 4}
    return override(tiny.get_config(), **{**base, **overrides})


def state_of(config, model, mesh):
    run = Run(config, None, mesh, None, {}, Path(config.model.path))
    run.horizon = 10
    return dss_train.build(run, methods.build(config), model)[0]


def layout(tree):
    return jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), tree)


@pytest.mark.parametrize("overrides", [
    {},  # full finetuning
    {"lora.enabled": True, "objective.name": "star_dss", "objective.kl_estimator": "full"},  # adapters, frozen base
    {"lisa.enabled": True, "lisa.sources": ({"path": "align.jsonl"},), "objective.name": "kl_only",
     "objective.kl_estimator": "full"},  # an anchor and a reference copy
])
def test_abstract_state_is_the_real_runs_state(policy, overrides):
    config = config_for(policy, **overrides)
    mesh = sharding.make_mesh(2, 4, 1)
    m = config.model
    real = state_of(config, dss.models.load_pretrained(policy, dtype=m.dtype, param_dtype=m.param_dtype, mesh=mesh),
                    mesh)
    shapes = state_of(config, abstract_pretrained(policy, dtype=m.dtype, param_dtype=m.param_dtype, mesh=mesh), mesh)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(shapes.checkpoint_trees()))
    for part in ("trainable", "frozen", "reference", "extra", "opt_state"):
        assert layout(getattr(shapes, part)) == layout(getattr(real, part)), part
    # independently of the rule both use: each Adam moment lies as its parameter does
    adam = [s for s in jax.tree.leaves(real.opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)][0]
    params = jax.tree.leaves(real.trainable)
    for moments in (adam.mu, adam.nu):
        assert [x.sharding for x in jax.tree.leaves(moments)] == [p.sharding for p in params]
    assert any("fsdp" in str(p.sharding.spec) for p in params)  # the check means something: sharded weights
    assert adam.count.sharding.spec == jax.sharding.PartitionSpec()


def test_a_safelora_plan_needs_the_config_json_alone(policy, tmp_path):
    """SafeLoRA checks its base model's weights before training; a plan has none to read."""
    import shutil

    from dss.errors import UserError

    for name in ("aligned", "base"):
        (tmp_path / name).mkdir()
        shutil.copy(policy / "config.json", tmp_path / name)
    config = config_for(tmp_path / "aligned", **{"safelora.enabled": True, "lora.enabled": True,
                                                  "safelora.base_path": str(tmp_path / "base")})
    mesh = sharding.make_mesh(2, 4, 1)
    model = abstract_pretrained(tmp_path / "aligned", dtype=config.model.dtype, param_dtype=config.model.param_dtype,
                                mesh=mesh)
    for on_disk in (False, True):
        run = Run(config, None, mesh, None, {}, tmp_path / "aligned", horizon=10, weights_on_disk=on_disk)
        if on_disk:  # a real run reads the weights' headers, and there are none
            with pytest.raises(UserError, match=r"^config.safelora.base_path = .*: no model.safetensors"):
                dss_train.build(run, methods.build(config), model)
        else:
            assert jax.tree.leaves(dss_train.build(run, methods.build(config), model)[0].trainable)


def test_a_micro_batch_the_target_does_not_split_is_refused(policy):
    config = config_for(policy, **{"train.global_batch": 16, "train.micro_batch": 2})
    mesh = sharding.make_mesh(1, 4, 1)
    with pytest.raises(plan.UserError, match=r"config.train.micro_batch = 2: .* data x fsdp = 4"):
        plan.check_micro_batches(config, mesh)


def test_matmul_flops_count_every_scan_step():
    x, w = jax.ShapeDtypeStruct((3, 8, 16), np.float32), jax.ShapeDtypeStruct((16, 32), np.float32)

    def scanned(x, w):
        return jax.lax.scan(lambda c, xi: (c, xi @ w), 0.0, x)[1]

    jaxpr = jax.make_jaxpr(scanned)(x, w).jaxpr
    assert plan.matmul_flops(jaxpr) == 3 * 2 * 8 * 16 * 32


def _hf_param_count(policy) -> int:
    with safe_open(policy / "model.safetensors", framework="numpy") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


@pytest.fixture(scope="module")
def v5e_plan(policy):
    return plan.plan(config_for(policy), "v5e:2x2")


@needs_libtpu
def test_plan_for_a_tpu_topology_adds_up(v5e_plan, policy):
    t = v5e_plan["train"]
    assert (v5e_plan["chip"], v5e_plan["devices"], t["mesh"]) == ("v5e", 4, {"data": 1, "fsdp": 4, "tensor": 1})
    params = _hf_param_count(policy)
    assert t["global"]["trainable_bytes"] == 4 * params  # float32 master weights
    assert t["global"]["optimizer_bytes"] == 2 * 4 * params + 2 * 4  # Adam's mu, nu; two int32 step counts
    d = t["per_device"]
    assert d["fits"] and d["trainable_bytes"] * 4 >= t["global"]["trainable_bytes"]
    assert d["total_bytes"] >= d["trainable_bytes"] + d["optimizer_bytes"] + d["batch_bytes"]
    assert d["arguments_bytes"] >= d["trainable_bytes"] + d["optimizer_bytes"]
    # the counted matmuls are PaLM's model FLOPs plus the logit chunks' recompute in the backward
    cfg = dss.models.ModelConfig.from_hf(json.loads((policy / "config.json").read_text()))
    tokens = 8 * 256
    recompute = 2 * cfg.hidden_size * cfg.vocab_size * tokens
    assert t["step_matmul_flops"] == pytest.approx(t["model_flops_sft_formula"] + recompute, rel=1e-6)
    assert t["model_flops_sft_formula"] == plan.model_flops_per_token(cfg, 256) * tokens
    assert t["implied_step_s"]["seconds"] == pytest.approx(t["step_matmul_flops"] / (4 * 197e12 * 0.4))


@needs_libtpu
def test_a_run_too_big_for_the_chip_does_not_fit_with_the_compilers_message(tmp_path, capsys):
    big = tmp_path / "big"  # about 3.2B parameters: weights and Adam alone are 13 GiB a v5e chip
    big.mkdir()
    (big / "config.json").write_text(json.dumps(dict(
        model_type="llama", vocab_size=32000, hidden_size=8192, intermediate_size=28672, num_hidden_layers=3,
        num_attention_heads=64, num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=4096,
        tie_word_embeddings=False)))
    config = config_for(big, **{"data.max_length": 1024})
    plan.main(config, "", topology="v5e:2x2", num_slices=1, out=str(tmp_path / "plan.json"), mfu=0.4)
    printed = capsys.readouterr()
    assert "does not fit: RESOURCE_EXHAUSTED" in printed.out and "Traceback" not in printed.out + printed.err
    result = json.loads((tmp_path / "plan.json").read_text())["train"]["per_device"]
    assert not result["fits"] and "HBM" in result["compiler"]


@needs_libtpu
def test_an_unknown_topology_is_one_line_naming_the_form():
    with pytest.raises(plan.UserError, match=r"--topology 'v5e-8'.*<chip>:<shape>"):
        plan.target_devices("v5e-8")


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_accelerator", REPO / "launch" / "bench_accelerator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_accelerator_bench_writes_every_number_on_a_tiny_shape(tmp_path):
    bench = _bench_module()
    result = bench.main(["--shape", "tiny", "--out", str(tmp_path / "bench.json")])
    assert json.loads((tmp_path / "bench.json").read_text()) == result
    t, s = result["train"], result["star"]
    for label in bench.STEPS:
        assert t[f"{label}_step_s"] > 0 and t[f"{label}_compile_s"] > 0
    assert {k for k in t if k.endswith("_vs_sft")} == {f"{k}_vs_sft" for k in bench.STEPS if k != "sft"}
    b, length = t["batch"]
    # PaLM's model FLOPs of the tiny shape, written out: 6 x matmul weights + 12 x layers x heads x head_dim x T
    e, h, k, d, i, v, layers = 64, 4, 2, 16, 128, 512, 2
    per_token = 6 * (layers * (e * (h + 2 * k) * d + h * d * e + 3 * e * i) + e * v) + 12 * layers * h * d * length
    assert t["sft_model_flops_per_step"] == per_token * b * length
    assert t["sft_tokens_per_s"] == pytest.approx(b * length / t["sft_step_s"], rel=0.01)
    assert t["sft_mfu"] is None and t["sft_calls_cudnn_attention"] is False  # CPU: no published peak, no cuDNN
    assert s["shared_kv_examples_per_s"] > 0 and s["naive_examples_per_s"] > 0
    assert s["shared_kv_vs_naive"] == pytest.approx(s["shared_kv_examples_per_s"] / s["naive_examples_per_s"], rel=0.05)
    assert "skipped" in result["cudnn_attention"]


def test_the_paper_plans_table_reads_each_plan(tmp_path):
    """launch/plan_paper.py's table: the step's figures, and the STAR program that fits worst."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "launch"))
    import plan_paper

    gib = 2**30
    fits = {"topology": "v5e:2x2", "hosts": 1, "hbm_bytes_per_chip": 16 * gib,
            "train": {"remat": "full", "per_device": {"fits": True, "total_bytes": 11 * gib,
                                                      "temporaries_bytes": 7 * gib, "compile_s": 30.0}},
            "star": [{"fits": True, "total_bytes": 14 * gib, "compile_s": 4.0},
                     {"fits": False, "compiler": "RESOURCE_EXHAUSTED", "compile_s": 1.0}]}
    too_big = {**fits, "train": {"remat": "none", "per_device": {"fits": False, "compiler": "RESOURCE_EXHAUSTED",
                                                                "compile_s": 9.0}}, "star": []}
    (tmp_path / "a.json").write_text(json.dumps(fits))
    (tmp_path / "b.json").write_text(json.dumps(too_big))
    rows = plan_paper.table(tmp_path).splitlines()
    assert rows[2] == "| a | v5e:2x2 (1) | full | True | 11.00 | 7.00 | 16.00 | - (False) | 35.0 |"
    assert rows[3] == "| b | v5e:2x2 (1) | none | False | - | - | 16.00 | - | 9.0 |"
    assert plan_paper.plan_name("table1:star_dss,llama_guard", "v5p:2x2x1") == "t1_star_dss_llama_guard_v5p_2x2x1"
    (tmp_path / "a.json").rename(tmp_path / "t1_sft_v5e_2x2.json")
    grid = plan_paper.grid(tmp_path).splitlines()
    assert grid[0].startswith("| variant | v5e:2x2 (1 host) | v6e:2x2 (? hosts) |")
    assert grid[2] == "| table1:sft | 11.0 + STAR does not fit |" + " not planned |" * 5
