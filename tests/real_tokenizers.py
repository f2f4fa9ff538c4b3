"""Real checkpoint tokenizers, built offline from the test extra's packages, and their oracles.

- Llama 3 (Llama-3.2-1B-Instruct, Llama Guard 3 1B/8B): `llama-models` ships Meta's 128,000-rank
  `tokenizer.model`; transformers' `TikTokenConverter` makes the fast tokenizer HF checkpoints ship
  (with llama_models' split pattern and its 256 special tokens, ids 128,000-128,255); the oracle is
  tiktoken with that pattern (`llama_models.llama3.tokenizer.Tokenizer`).
- Mistral v3 (Mistral-7B-Instruct-v0.3): `mistral-common`'s sentencepiece model, converted by
  transformers as it converts a checkpoint's `tokenizer.model`; the oracle is mistral-common.
- Mistral tekken (Mistral-Nemo-Instruct-2407): `mistral-common`'s tekken_240718.json, converted by
  transformers' `convert_tekken_tokenizer`; the oracle is mistral-common's Tekkenizer.

Each builder writes an HF tokenizer directory (with a chat template) and returns its path;
nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mistral_common
from llama_models.llama3.tokenizer import Tokenizer as MetaLlama3Tokenizer
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import TikTokenConverter
from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

MISTRAL_DATA = Path(mistral_common.__file__).parent / "data"
MISTRAL_V3_MODEL = MISTRAL_DATA / "mistral_instruct_tokenizer_240323.model.v3"
TEKKEN_FILE = MISTRAL_DATA / "tekken_240718.json"


def llama3_oracle() -> MetaLlama3Tokenizer:
    return MetaLlama3Tokenizer.get_instance()


def mistral_oracle(kind: str) -> MistralTokenizer:
    """mistral-common's tokenizer (`kind` v3 | tekken): `.instruct_tokenizer.tokenizer` encodes
    text, `.encode_chat_completion` a conversation."""
    return MistralTokenizer.from_file(str(MISTRAL_V3_MODEL if kind == "v3" else TEKKEN_FILE))


def build_llama3(out_dir: str | os.PathLike, chat_template: str) -> Path:
    """Llama 3's 128,256-token tokenizer as Llama-3.2-1B-Instruct ships it: bos <|begin_of_text|>,
    eos <|eot_id|>, pad <|finetune_right_pad_id|>."""
    meta = llama3_oracle()
    specials = sorted(meta.special_tokens, key=meta.special_tokens.get)
    backend = TikTokenConverter(vocab_file=_llama3_model_path(), pattern=meta.pat_str,
                                extra_special_tokens=specials).converted()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  pad_token="<|finetune_right_pad_id|>", chat_template=chat_template)
    tok.save_pretrained(os.fspath(out_dir))
    return Path(out_dir)


def _llama3_model_path() -> str:
    import llama_models.llama3.tokenizer as module

    return str(Path(module.__file__).parent / "tokenizer.model")


def build_mistral_v3(out_dir: str | os.PathLike, chat_template: str) -> Path:
    """Mistral v3's sentencepiece tokenizer converted the way transformers converts a checkpoint
    with only `tokenizer.model` (Metaspace, prepend_scheme "first", byte fallback)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(MISTRAL_V3_MODEL, out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "legacy": False, "add_bos_token": True, "add_eos_token": False,
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}))
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = chat_template
    (out / "tokenizer.model").unlink()  # keep what a user's directory holds: tokenizer.json
    tok.save_pretrained(out)
    return out


def build_tekken(out_dir: str | os.PathLike, chat_template: str) -> Path:
    """Mistral Nemo's tekken tokenizer as transformers converts a tekken.json."""
    tok = convert_tekken_tokenizer(str(TEKKEN_FILE), chat_template=chat_template)
    tok.save_pretrained(os.fspath(out_dir))
    return Path(out_dir)
