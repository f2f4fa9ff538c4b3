"""STAR's settings: the `guardrail` and `star` config sections with their defaults, and the check
of what STAR scoring reads.

Light on purpose (ml_collections and dss.checks only, no JAX, transformers or model code), so that
a job refuses a bad STAR setting within a second of launch, before anything heavy is imported.
"""

from __future__ import annotations

import ml_collections

from dss import checks
from dss.errors import UserError

__all__ = ["GUARDRAIL_KINDS", "CHUNK_UNITS", "STAR_METHODS", "SCORE_MODES", "guardrail_defaults", "star_defaults",
           "check_star_config"]

# The guardrail families dss knows (`dss.guardrails.KINDS` holds their template/verdict recipes).
GUARDRAIL_KINDS = ("llama_guard_3", "granite_guardian", "shieldgemma")
CHUNK_UNITS = ("word", "token")
STAR_METHODS = ("shared_kv", "naive")
SCORE_MODES = ("raw", "hf_sampling")


def guardrail_defaults() -> ml_collections.ConfigDict:
    """`config.guardrail`: which guardrails score STAR, and how they are loaded."""
    g = ml_collections.ConfigDict()
    g.paths = []  # one or more guardrails (ensemble: P(safe) averaged)
    g.kind = "auto"  # llama_guard_3 | granite_guardian | shieldgemma | auto
    g.risk = ""  # Granite Guardian risk_name / ShieldGemma policy ("" = default)
    g.dtype = "float32"  # guardrail compute dtype
    g.mesh = ()  # (data, fsdp, tensor) for STAR scoring; () = one device, (1, -1, 1) = all, FSDP
    return g


def star_defaults() -> ml_collections.ConfigDict:
    """`config.star`: how responses are cut and scored, and where the scores are kept."""
    s = ml_collections.ConfigDict()
    s.chunk_unit = "word"  # word | token
    s.chunk_size = 5  # words (or guardrail tokens) per chunk
    s.method = "shared_kv"  # shared_kv | naive (same numbers)
    s.score_mode = "raw"  # raw | hf_sampling (the reference implementation's sampled verdicts)
    s.token_budget = 16384  # tokens per scoring call
    s.cache = ""  # STAR file to reuse ("" = <workdir>/star.npz)
    return s


def _mesh_shape(config, key: str) -> None:
    """The mesh's form (three sizes, each positive or one -1); whether this host's devices fill it
    is checked where the mesh is built (`dss.star_store.guardrails_of`), as that needs JAX."""
    shape = checks.value(config, key)
    sizes = tuple(shape) if isinstance(shape, (list, tuple)) else None
    if (sizes is None or len(sizes) != 3 or not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes)
            or not all(s > 0 or s == -1 for s in sizes) or sizes.count(-1) > 1):
        raise UserError(f"config.{key} = {shape!r} (data, fsdp, tensor): three positive sizes, at most one of them "
                        "-1 (the remaining devices)")


def check_star_config(config, needed_by: str = "python -m dss.star") -> None:
    """What STAR scoring reads (`dss.star.cached_score`): data sources, at least one guardrail, its
    kind, chunking, method, score mode, budget and mesh; `needed_by` says who wants STAR."""
    checks.sources(config, "data.sources", "no finetuning data", files=False)
    g = config.guardrail
    if not isinstance(g.paths, (list, tuple)) or not g.paths or not all(isinstance(p, str) and p for p in g.paths):
        raise UserError(f"config.guardrail.paths = {g.paths!r}: {needed_by} scores the data with STAR, which "
                        "needs a list of one or more guardrails (HF directories or hub ids)")
    for k, path in enumerate(g.paths):
        checks.model_name(config, f"guardrail.paths[{k}]", path)
    checks.one_of(config, "guardrail.kind", ("auto", *GUARDRAIL_KINDS), "guardrail kind")
    checks.one_of(config, "star.chunk_unit", CHUNK_UNITS, "chunk unit")
    checks.positive_int(config, "star.chunk_size")
    checks.one_of(config, "star.method", STAR_METHODS, "STAR method")
    checks.one_of(config, "star.score_mode", SCORE_MODES, "STAR score mode")
    checks.positive_int(config, "star.token_budget")
    if g.mesh:
        _mesh_shape(config, "guardrail.mesh")


def precheck(config, workdir, plot: int = 0) -> None:
    """What `python -m dss.star` refuses before anything heavy is imported: the STAR settings, a
    negative --plot, every row of the local data files (read as scoring will read them), and a
    workdir another live job holds."""
    from dss.data.sources import check_sources  # light: parses files, imports no datasets/transformers
    from dss.workdir import check_free

    check_star_config(config)
    if plot < 0:
        raise UserError(f"--plot = {plot}: the number of examples to draw, >= 0")
    check_sources(config.data.sources, where="config.data.sources")
    check_free(workdir, config)
