"""The tiny CPU assets behind `configs/tiny.py`, made on first use with no download.

A random Llama-family policy and a random Llama-Guard-3-style guardrail (same family), each an
HF directory with weights, config, a byte-level BPE tokenizer trained on the demo data, and its
chat template. They exercise the whole pipeline in minutes on a laptop; their numbers mean nothing.

`tiny:policy@DIR` / `tiny:guardrail@DIR` build the same tiny random model around the tokenizer in
the directory DIR (a checkpoint's own: its vocabulary, special tokens and chat template), so a
pipeline can be checked with a real vocabulary in a minute: `model.path = "tiny:policy@/ckpt/llama"`,
`guardrail.paths = ["tiny:guardrail@/ckpt/llama-guard"]` (DIR's template must then be a guardrail's).
Each tokenizer gets its own cached copy, keyed by the content of its tokenizer files.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import transformers

from dss import assets, cache
from dss.errors import UserError
from dss.atomic import atomic_dir
from dss.models import save_random_llama

VERSION = "v2"  # bump when the recipe changes, so old caches are not reused
DEMO_DATA = Path(__file__).parent / "data" / "demo.jsonl"


def cache_dir() -> Path:
    return cache.cache_root() / f"tiny-{VERSION}"


def _texts() -> list[str]:
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines() if line.strip()]
    texts = [str(v) for row in rows for v in row.values() if isinstance(v, str)]
    # the templates' own text, so they tokenize compactly as with a real vocabulary
    return texts + [assets.LLAMA_GUARD_3_TEMPLATE, assets.POLICY_CHAT_TEMPLATE] * 20


def _make(out: Path, template: str, seed: int, layers: int, tokenizer_dir: Path | None = None) -> None:
    with atomic_dir(out, keep_existing=True) as tmp:  # a process that loses the race keeps the winner's copy
        if tokenizer_dir is None:
            tok = assets.make_tokenizer(tmp, _texts(), vocab_size=1024, chat_template=template)
        else:
            tok = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
            if not tok.chat_template:
                raise UserError(f"{tokenizer_dir}: the tokenizer has no chat template (tiny assets need one)")
            tok.save_pretrained(tmp)
        # this host's own copy: written whatever its process index (the model is not sharded)
        save_random_llama(tmp, tok, seed=seed, write=True, hidden_size=64, intermediate_size=192,
                          num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                          max_position_embeddings=4096, initializer_range=0.05, tie_word_embeddings=False,
                          rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                                               low_freq_factor=1.0, high_freq_factor=4.0,
                                               original_max_position_embeddings=1024))


# name -> (directory under the cache, chat template, init seed)
ASSETS = {
    "policy": ("policy", assets.POLICY_CHAT_TEMPLATE, 0),
    "guardrail": ("Llama-Guard-3-tiny", assets.LLAMA_GUARD_3_TEMPLATE, 1),
}
TOKENIZER_SEPARATOR = "@"  # tiny:<name>@<tokenizer directory>
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "tokenizer.model", "tekken.json")


def _tokenizer_digest(spec: str, tokenizer_dir: Path) -> str:
    """A digest of the tokenizer files in `tokenizer_dir` (what the tiny model is built from)."""
    files = [tokenizer_dir / f for f in TOKENIZER_FILES if (tokenizer_dir / f).is_file()]
    if not files:
        raise UserError(f"tiny:{spec}: {tokenizer_dir} holds no tokenizer files (one of {', '.join(TOKENIZER_FILES)})")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]


def asset(spec: str) -> str:
    """Path of the tiny asset `spec`, made atomically on first use: `policy` | `guardrail`, or
    `<name>@<tokenizer directory>` for the same model around that directory's tokenizer and chat
    template. Configs name it as `tiny:<spec>` (resolved by `dss.hub.resolve_path`), so reading a
    config builds nothing."""
    name, _, tokenizer = spec.partition(TOKENIZER_SEPARATOR)
    if name not in ASSETS:
        raise UserError(f"tiny:{spec}: unknown tiny asset; use one of "
                         f"{[f'tiny:{n}' for n in ASSETS]} (or tiny:<name>@<tokenizer directory>)")
    directory, template, seed = ASSETS[name]
    tokenizer_dir = None
    if tokenizer:
        tokenizer_dir = Path(tokenizer).expanduser().resolve()
        if not tokenizer_dir.is_dir():
            raise UserError(f"tiny:{spec}: {tokenizer} is not a directory")
        directory = f"{directory}-{_tokenizer_digest(spec, tokenizer_dir)}"
    path = cache_dir() / directory
    if not path.exists():
        _make(path, template, seed=seed, layers=2, tokenizer_dir=tokenizer_dir)
    return str(path)


def ensure_assets() -> dict[str, str]:
    """Paths of every tiny asset, made if missing."""
    return {name: asset(name) for name in ASSETS}
