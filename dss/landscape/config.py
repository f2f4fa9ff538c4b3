"""The `landscape` section of a dss config: every field with its default and a comment, and the
check `python -m dss.landscape` runs on it before loading anything.

Kept apart from the job so that reading or checking a config does not import JAX.
"""

from pathlib import Path

import ml_collections

from dss.errors import UserError

JUDGES = ("keyword", "guardrail")


def landscape_defaults() -> ml_collections.ConfigDict:
    """The `landscape` section of a dss config (put in as `config.landscape`)."""
    c = ml_collections.ConfigDict()
    c.model = ""  # centre checkpoint: HF dir, hub id or dss.train workdir; "" = the --workdir run's export, else model.path
    c.tokenizer = ""  # "" = the model's own tokenizer and chat template
    c.dtype = "float32"  # compute and parameter dtype of the model ("bfloat16" on accelerators)
    c.mesh = ()  # (data, fsdp, tensor) sizes for dss.sharding.make_mesh (-1 = the rest); () = one device
    c.name = "landscape"  # output subdirectory of the workdir (results.json, points.jsonl, plots)
    c.label = ""  # the curve's name in plots; "" = the model directory's name
    # One entry per axis (1 = curve, 2 = surface): "random" (axis k uses seed + k), "random:<seed>",
    # or "interp:<checkpoint>" (target - model: a = 1 is that checkpoint).
    c.directions = ("random",)
    c.seed = 0
    c.orthogonalize = False  # Gram-Schmidt the second random direction against the first (tensor by tensor)
    c.direction_dtype = "float32"  # of random directions ("bfloat16" halves their memory); interpolations are float32
    c.direction_dir = ""  # saved random directions; "" = <workdir>/directions (shared by the workdir's landscapes)
    c.grid_range = (-0.5, 0.5)  # a (and b) from ... to ...; e.g. (-0.5, 1.5) for an interpolation
    c.steps = 20  # intervals per axis: 20 -> 21 points (21 x 21 in 2D)
    c.advbench = "walledai/AdvBench"  # harmful_behaviors.csv or hub id
    c.num_prompts = 80  # the first N AdvBench prompts
    c.system_prompt = ""  # "" = no system message (the chat template's default)
    c.max_new_tokens = 512  # greedy decoding budget per response
    c.batch_size = 80  # prompts per generate call
    c.points_per_batch = 1  # grid points decoded together (their weights side by side: memory x N)
    c.judge = "keyword"  # ASR of the landscape: keyword | guardrail (keyword ASR is recorded either way)
    c.keywords = ()  # refusal substrings; () = dss.eval.keyword.REFUSAL_KEYWORDS
    c.guardrail = ml_collections.ConfigDict(dict(
        path="",  # guardrail checkpoint(s), comma-separated = averaged ensemble (judge = guardrail)
        kind="auto",  # llama_guard_3 | granite_guardian | shieldgemma | auto
        threshold=0.5,  # P(safe) above this counts as safe
        dtype="float32",
    ))
    c.save_responses = True  # keep every response in points.jsonl (for later judging)
    c.compare = ()  # other landscapes' output dirs (or results.json) overlaid in the 1D plot
    return c


def check_section(cfg) -> None:
    """The settings of a `landscape` section, by key (UserError): judge, directions, grid, sizes,
    and the local files it reads (AdvBench, interpolation targets, compared landscapes)."""
    from dss.data.sources import local_file

    def missing(path) -> bool:
        return local_file(path) and not Path(str(path)).expanduser().exists()

    if cfg.judge not in JUDGES:
        raise UserError(f"config.landscape.judge = {cfg.judge!r}: use {' or '.join(JUDGES)}")
    if cfg.judge == "guardrail" and not cfg.guardrail.path:
        raise UserError("config.landscape.guardrail.path = '': judge 'guardrail' needs a guardrail checkpoint")
    specs = list(cfg.directions) if isinstance(cfg.directions, (list, tuple)) else None
    if not specs or len(specs) > 2:
        raise UserError(f"config.landscape.directions = {cfg.directions!r}: one or two axes, e.g. ('random',) or "
                        "('random', 'interp:<checkpoint>')")
    for axis, spec in enumerate(specs):
        kind, _, arg = str(spec).partition(":")
        if not (kind == "random" and (not arg or arg.isdigit()) or kind == "interp" and arg):
            raise UserError(f"config.landscape.directions[{axis}] = {spec!r}: use 'random', 'random:<seed>' or "
                            "'interp:<checkpoint>'")
        if kind == "interp" and missing(arg):
            raise UserError(f"config.landscape.directions[{axis}] = {spec!r}: no such checkpoint {arg}")
    if cfg.orthogonalize and len(specs) == 2 and not str(specs[1]).startswith("random"):
        raise UserError("config.landscape.orthogonalize: only a random second direction can be orthogonalised "
                        "(an interpolation axis must keep pointing at its checkpoint)")
    grid = tuple(cfg.grid_range) if isinstance(cfg.grid_range, (list, tuple)) else ()
    if len(grid) != 2 or not all(isinstance(v, (int, float)) for v in grid) or not grid[0] < grid[1]:
        raise UserError(f"config.landscape.grid_range = {cfg.grid_range!r}: (low, high) with low < high")
    for key in ("steps", "num_prompts", "max_new_tokens", "batch_size", "points_per_batch"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise UserError(f"config.landscape.{key} = {value!r}: must be a positive integer")
    if missing(cfg.advbench):
        raise UserError(f"config.landscape.advbench = {cfg.advbench!r}: no such file")
    for k, other in enumerate(cfg.compare):
        if not Path(str(other)).expanduser().exists():
            raise UserError(f"config.landscape.compare[{k}] = {other!r}: no such landscape directory or results.json")


def centre(config, workdir) -> str:
    """The model a `python -m dss.landscape` job is centred on: `landscape.model`, else the
    `workdir` run's export, else `model.path`; a UserError if none is given or a local one is missing."""
    from dss.data.sources import local_file
    from dss.workdir import resolve_model

    export, trained = resolve_model(str(workdir))
    model = config.get("model")
    source = config.landscape.model or (export if trained else (model.path if model is not None else ""))
    if not source:
        raise UserError("config.landscape.model = '': no model to centre the landscape on (nor an export in "
                        f"--workdir {workdir}, nor config.model.path)")
    if local_file(source) and not Path(str(source)).expanduser().exists():
        raise UserError(f"landscape centre {source}: no such model directory")
    return str(source)


def check_job(config, workdir) -> None:
    """The light check of `python -m dss.landscape`: its section, the model it is centred on, and
    that no other job holds its output directory."""
    if "landscape" not in config:
        raise UserError("--config must name a config file whose get_config() has a `landscape` section")
    from dss.workdir import check_free

    check_section(config.landscape)
    centre(config, workdir)
    check_free(Path(workdir) / config.landscape.name, config)
