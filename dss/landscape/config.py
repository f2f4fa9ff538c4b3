"""The `landscape` section of a dss config: every field with its default and a comment.

Kept apart from the job so that reading a config does not import JAX.
"""

import ml_collections


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
