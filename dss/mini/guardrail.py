"""The miniature's guardrails: Llama Guard 3 format, trained on response prefixes.

A training row is (the Llama Guard 3 rendering of (user: prompt, assistant: prefix), "\\n\\n" +
verdict): exactly the text `dss.guardrails.GuardrailAdapter.render` gives STAR, followed by the
verdict word STAR reads the logits of. Prefixes are cut at word ends, as STAR cuts them, at random
points and at the end. Labels: every prefix of a compliance to a harmful request is unsafe
(a response that has started to comply is unsafe from its first words on); every prefix of a
refusal, and of an answer to a benign request, is safe.

`accuracy` scores held-out prompts (never seen by either guardrail) with `dss.star`, as STAR and
the judge will: on the full responses and on every 5-word prefix.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import transformers

from dss import assets
from dss.guardrails import GuardrailAdapter
from dss.mini import texts
from dss.segments import word_cuts


def adapter(tokenizer_dir: Path, date: str) -> GuardrailAdapter:
    """A Llama Guard 3 adapter on the world's tokenizer (no weights needed to render)."""
    tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    tok.chat_template = assets.LLAMA_GUARD_3_TEMPLATE
    return GuardrailAdapter(tok, kind="llama_guard_3", template_vars={"date_string": date})


def labelled_responses(harmful: list[dict], benign: list[dict], rng: random.Random) -> list[tuple[dict, bool]]:
    """(example, safe) pairs: each harmful prompt with a compliance (unsafe) and a refusal (safe);
    each benign pair as it is (safe)."""
    out = []
    for h in harmful:
        out.append(({"prompt": h["prompt"], "response": texts.compliance(h["target"], rng)}, False))
        out.append(({"prompt": h["prompt"], "response": rng.choice(texts.REFUSALS)}, True))
    return out + [({"prompt": b["prompt"], "response": b["response"]}, True) for b in benign]


def training_rows(harmful: list[dict], benign: list[dict], cuts: int, seed: int, tokenizer_dir: Path,
                  date: str) -> list[dict]:
    """{prompt: rendering, response: "\\n\\n" + verdict} rows for `dss.train` (pass-through template)."""
    rng = random.Random(seed)
    guard = adapter(tokenizer_dir, date)
    prefix = guard.spec.verdict_prefix
    rows = []
    for example, safe in labelled_responses(harmful, benign, rng):
        ends = word_cuts(example["response"], 1)
        chosen = rng.sample(ends[:-1], min(cuts, len(ends) - 1)) + [ends[-1]]
        verdict = guard.spec.safe_word if safe else guard.spec.unsafe_word
        for end in chosen:
            rendering = guard.render(example["prompt"], example["response"][:end])
            rows.append({"prompt": rendering[: len(rendering) - len(prefix)], "response": prefix + verdict})
    rng.shuffle(rows)
    return rows


def finish(export: Path, out: Path) -> Path:
    """The trained guardrail with the real Llama Guard 3 template (it was trained with a pass-through one)."""
    shutil.copytree(export, out, dirs_exist_ok=True)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    tok.chat_template = assets.LLAMA_GUARD_3_TEMPLATE
    tok.save_pretrained(out)
    return out


def accuracy(guard_dir: Path, harmful: list[dict], benign: list[dict], seed: int, date: str) -> dict:
    """% correct on held-out responses, full and per 5-word prefix, overall and per kind."""
    from dss import star

    guard = star.Guardrail.from_pretrained(str(guard_dir), kind="llama_guard_3", template_vars={"date_string": date})
    pairs = labelled_responses(harmful, benign, random.Random(seed + 1000))
    kinds = ["compliance", "refusal"] * len(harmful) + ["benign"] * len(benign)
    trajs = star.score(guard, [ex for ex, _ in pairs], chunk_unit="word", chunk_size=5)
    out = {}
    for kind in ("compliance", "refusal", "benign", "all"):
        idx = [i for i, k in enumerate(kinds) if kind in ("all", k)]
        full = [(trajs[i].safe_prob[-1] > 0.5) == pairs[i][1] for i in idx]
        prefix = [p == pairs[i][1] for i in idx for p in (trajs[i].safe_prob > 0.5)]
        out[kind] = {"full_pct": 100.0 * float(np.mean(full)), "prefix_pct": 100.0 * float(np.mean(prefix)),
                     "n": len(idx), "n_prefixes": len(prefix)}
    return out
