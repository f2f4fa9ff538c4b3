"""`dss.eval` end to end on a tiny random policy + guardrail made here: real AdvBench / GSM8K files,
a small MMLU file, keyword and guardrail judges; reruns skip finished parts and resume partial
ones; option log-likelihoods equal a plain forward pass."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import pytest
import torch
import transformers

import dss.models
from dss import assets, templating
from dss.eval import policy as policy_module
from dss.eval import runner
from dss.eval.config import eval_defaults, resolve
from dss.eval.io import read_jsonl, write_jsonl
from test_eval_llm_judge import FakeServer
from dss.data import BUNDLED_DIR

DATA = BUNDLED_DIR  # the licensed data shipped in dss/data/files
REPO = Path(__file__).resolve().parents[1]

MMLU = [
    {"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": "A noble gas?", "subject": "chemistry", "choices": ["Neon", "Iron", "Salt", "Gold"], "answer": 0},
    {"question": "Opposite of hot?", "subject": "vocabulary", "choices": ["warm", "cold", "big", "red"], "answer": 1},
]

CONFIG = """
from ml_collections import ConfigDict
from dss.eval.config import eval_defaults


def get_config():
    config = ConfigDict()
    config.objective = ConfigDict(dict(name="star_dss"))  # as in a dss.train config
    config.eval = c = eval_defaults()
    c.suite = "advbench,advbench_prefill,mmlu,gsm8k"
    c.batch_size = 3
    c.max_new_tokens = 6
    c.judges = "keyword,guardrail,llm"
    c.guardrail.path = {guard!r}
    c.llm_judge.update(url={url!r}, model="judge-model", api_key_env="", backoff=0.001)
    c.benchmarks.advbench.update(path={advbench!r}, limit=3)
    c.benchmarks.advbench_prefill = dict(kind="advbench", path={advbench!r}, limit=2, prefill_target=True,
                                         trigger="SUDO")
    c.benchmarks.mmlu.update(path={mmlu!r}, mode="loglik")
    c.benchmarks.gsm8k.update(path={gsm8k!r}, limit=3, shots=2, max_new_tokens=8)
    return config
"""


def _texts():
    with open(DATA / "gsm8k" / "train.jsonl") as f:
        gsm = [json.loads(line) for _, line in zip(range(40), f)]
    adv = (DATA / "advbench" / "harmful_behaviors.csv").read_text().splitlines()[:60]
    return adv + [r["question"] + " " + r["answer"] for r in gsm] + [json.dumps(MMLU)]


def _save_tiny(root: Path, template: str, seed: int):
    tok = assets.make_tokenizer(root, _texts(), vocab_size=600, chat_template=template)
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.2, max_position_embeddings=4096,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(root)


@pytest.fixture(scope="module")
def server():
    with FakeServer() as running:
        yield running


@pytest.fixture(scope="module")
def setup(tmp_path_factory, server):
    root = tmp_path_factory.mktemp("eval")
    workdir = root / "star_dss_run"  # a training workdir: the model is its export/
    _save_tiny(workdir / "export", assets.POLICY_CHAT_TEMPLATE, seed=0)
    _save_tiny(root / "guard", assets.LLAMA_GUARD_3_TEMPLATE, seed=1)
    write_jsonl(root / "mmlu.jsonl", MMLU)
    config_file = root / "eval_config.py"
    config_file.write_text(CONFIG.format(
        guard=str(root / "guard"), url=server.url, advbench=str(DATA / "advbench" / "harmful_behaviors.csv"),
        mmlu=str(root / "mmlu.jsonl"), gsm8k=str(DATA / "gsm8k")))
    return workdir, config_file


def _eval_config(config_file, workdir):
    cfg = runpy.run_path(str(config_file))["get_config"]().eval
    cfg.model = str(workdir)
    return cfg


@pytest.fixture(scope="module")
def evaluated(setup):
    workdir, config_file = setup
    templating.run_template_vars({}, workdir)  # as the training run records them
    return runner.evaluate(_eval_config(config_file, workdir))


def test_continuation_logprobs_equal_hf_full_forward(setup):
    workdir, _ = setup
    policy = policy_module.Policy(str(workdir / "export"), batch_size=2)
    hf = transformers.AutoModelForCausalLM.from_pretrained(workdir / "export").eval()
    cases = [("What is 2 + 2?", "Answer:", " B"), ("Name a gas.", None, "Neon"),
             ("Opposite of hot?", "Answer:", " cold")]
    got = policy.continuation_logprobs(*zip(*cases))
    for (prompt, prefill, continuation), value in zip(cases, got):
        context = policy.prompt_tokens(prompt, prefill)
        full = policy.prompt_tokens(prompt, (prefill or "") + continuation)
        start = next(i for i, (a, b) in enumerate(zip(context + [-1], full)) if a != b)
        assert len(full) - start >= 1
        with torch.no_grad():
            logp = torch.log_softmax(hf(torch.tensor([full])).logits[0].double(), dim=-1)
        expected = sum(logp[t - 1, full[t]].item() for t in range(start, len(full)))
        assert value == pytest.approx(expected, abs=1e-4)


def test_sharded_logprobs_equal_single_device(setup):
    workdir, _ = setup
    assert len(jax.devices()) == 8  # tests/conftest.py: 8 fake CPU devices
    args = (["What is 2 + 2?", "Name a gas.", "Opposite of hot?"], ["Answer:", None, "Answer:"],
            [" B", "Neon", " cold"])
    single = policy_module.Policy(str(workdir / "export"), batch_size=2)
    sharded = policy_module.Policy(str(workdir / "export"), batch_size=2, mesh=(2, 2, 2))
    assert sharded.continuation_logprobs(*args) == pytest.approx(single.continuation_logprobs(*args), abs=1e-5)


def test_results_and_generations(setup, evaluated, server):
    workdir, _ = setup
    outdir = workdir / "eval"
    results = json.loads((outdir / "results.json").read_text())
    assert results == evaluated
    assert results["method"] == "star_dss_run" and results["finetuned"] is True
    assert results["model"] == str(workdir / "export")
    b = results["benchmarks"]
    assert list(b) == ["advbench", "advbench_prefill", "mmlu", "gsm8k"]

    judges = {"keyword", "guardrail", "llm"}
    for name, n in (("advbench", 3), ("advbench_prefill", 2)):
        assert b[name]["n"] == n and set(b[name]["judges"]) == judges
        rows = read_jsonl(outdir / "generations" / f"{name}.jsonl")
        assert len(rows) == n and all(set(r["verdicts"]) == judges for r in rows)
        for judge, summary in b[name]["judges"].items():
            assert summary["n"] == n
            assert summary["n_safe"] == sum(r["verdicts"][judge]["safe"] for r in rows)
        assert b["advbench"]["judges"]["keyword"]["asr"] == 100 - b["advbench"]["judges"]["keyword"]["safe_pct"]
    prefilled = read_jsonl(outdir / "generations" / "advbench_prefill.jsonl")
    assert all(r["prompt"].endswith(" SUDO") and r["response"].startswith(r["prefill"]) for r in prefilled)
    assert prefilled[0]["prefill"].startswith("Sure, here is")
    assert server.requests == 5 and len(read_jsonl(outdir / "llm_judge_cache.jsonl")) == 5

    mmlu = read_jsonl(outdir / "generations" / "mmlu.jsonl")
    assert [len(r["logprobs"]) for r in mmlu] == [4, 4, 4] and b["mmlu"]["n"] == 3
    assert b["mmlu"]["correct"] == sum(r["correct"] for r in mmlu)
    gsm = read_jsonl(outdir / "generations" / "gsm8k.jsonl")
    assert b["gsm8k"]["n"] == 3 and [r["id"] for r in gsm] == ["0", "1", "2"] and gsm[0]["answer"] == "18"
    assert not list((outdir / "generations").glob("*.partial.jsonl"))


def _forbid_model_and_judges(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("a finished part was redone")

    monkeypatch.setattr(dss.models, "load_pretrained", fail)
    monkeypatch.setattr(runner, "_make_judge", fail)


def test_rerun_skips_finished_parts(setup, evaluated, monkeypatch):
    workdir, config_file = setup
    _forbid_model_and_judges(monkeypatch)
    assert runner.evaluate(_eval_config(config_file, workdir)) == evaluated


def test_rerun_resumes_a_partial_benchmark(setup, evaluated, monkeypatch):
    workdir, config_file = setup
    outdir = workdir / "eval"
    results = json.loads((outdir / "results.json").read_text())
    old = read_jsonl(outdir / "generations" / "gsm8k.jsonl")
    del results["benchmarks"]["gsm8k"]  # as if preempted after one batch of gsm8k
    (outdir / "results.json").write_text(json.dumps(results))
    (outdir / "generations" / "gsm8k.jsonl").unlink()
    write_jsonl(outdir / "generations" / "gsm8k.partial.jsonl", old[:2])

    asked = []
    generate = policy_module.Policy.generate
    monkeypatch.setattr(policy_module.Policy, "generate",
                        lambda self, prompts, *a, **k: asked.extend(prompts) or generate(self, prompts, *a, **k))
    monkeypatch.setattr(runner, "_make_judge", lambda *a: pytest.fail("judges are finished"))
    again = runner.evaluate(_eval_config(config_file, workdir))
    assert len(asked) == 1  # only the missing question
    assert read_jsonl(outdir / "generations" / "gsm8k.jsonl") == old  # greedy: the same rows
    assert again == evaluated
    assert not (outdir / "generations" / "gsm8k.partial.jsonl").exists()


def test_rerun_with_other_settings_is_an_error(setup, evaluated):
    workdir, config_file = setup
    cfg = _eval_config(config_file, workdir)
    cfg.max_new_tokens = 7
    with pytest.raises(ValueError, match="benchmark 'advbench' was made with settings"):
        runner.evaluate(cfg)
    cfg = _eval_config(config_file, workdir)
    cfg.guardrail.threshold = 0.9
    with pytest.raises(ValueError, match="judge 'guardrail' on 'advbench' was made with settings"):
        runner.evaluate(cfg)


def test_config_errors(setup):
    workdir, config_file = setup
    cfg = _eval_config(config_file, workdir)
    cfg.benchmarks.custom = dict(kind="advbnch")
    with pytest.raises(ValueError, match="eval.benchmarks.custom: needs kind"):
        runner.evaluate(cfg)
    cfg = _eval_config(config_file, workdir).to_dict()
    cfg["judgs"] = "keyword"
    with pytest.raises(KeyError, match="unknown field 'judgs'"):
        runner.evaluate(cfg)


def test_cli_rerun_with_model_override_skips_everything(setup, evaluated):
    workdir, config_file = setup
    outdir = workdir / "eval"
    before = {p: p.stat().st_mtime_ns for p in outdir.rglob("*") if p.is_file()}
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "dss.eval", "--config", str(config_file),
                           f"--config.eval.model={workdir}"], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"star_dss ({workdir / 'export'})" in proc.stdout and "advbench [guardrail]: safe" in proc.stdout
    assert "gsm8k: accuracy" in proc.stdout
    after = {p: p.stat().st_mtime_ns for p in outdir.rglob("*") if p.is_file()}
    generations = {p: t for p, t in after.items() if "generations" in p.parts}
    assert generations == {p: t for p, t in before.items() if "generations" in p.parts}
    # the CLI names a workdir's row after config.objective.name; nothing else changed
    assert json.loads((outdir / "results.json").read_text()) == {**evaluated, "method": "star_dss"}


def test_config_resolution_fills_defaults_and_rejects_mistakes():
    cfg = resolve({"model": "m", "suite": "adv_prefill",
                   "benchmarks": {"adv_prefill": {"kind": "advbench", "prefill_target": True}}})
    assert cfg.benchmarks.adv_prefill.path == "walledai/AdvBench" and cfg.benchmarks.adv_prefill.prefill_target
    assert cfg.batch_size == eval_defaults().batch_size and cfg.judges == "keyword"
    with pytest.raises(ValueError, match="eval.model"):
        resolve({})
    with pytest.raises(KeyError, match="'mmlu2' is not in eval.benchmarks"):
        resolve({"model": "m", "suite": "mmlu2"})
    with pytest.raises(ValueError, match="unknown judge"):
        resolve({"model": "m", "judges": "keyword,gpt"})
    with pytest.raises(TypeError, match="eval.batch_size"):
        resolve({"model": "m", "batch_size": "big"})
    with pytest.raises(KeyError, match="eval.guardrail: unknown field 'paht'"):
        resolve({"model": "m", "guardrail": {"paht": "x"}})
