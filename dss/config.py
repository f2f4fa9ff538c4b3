"""Every dss setting with its default (the paper's Table 1 recipe) and a comment saying what it does.

Config files (`configs/*.py`) start from `base_config()` and override what their experiment
changes, big_vision style; `python -m dss.<job> --config file.py --config.a.b=value` overrides
any field from the command line.
"""

import ml_collections

from dss import methods, star_config
from dss.eval.config import eval_defaults
from dss.landscape.config import landscape_defaults


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0  # data order and initialisation seed
    c.workdir = "workdir/run"  # checkpoints, caches, metrics, export (overridden by --workdir)
    c.distributed = False  # join a multi-host cluster with jax.distributed.initialize (TPU pods, SLURM)
    c.compile_cache = ""  # JAX persistent compilation cache; "" = $DSS_CACHE/jax_compile (~/.cache/dss/...); "off"
    c.cluster = ml_collections.ConfigDict()  # how (with distributed=True); unset fields are detected
    c.cluster.coordinator = ""  # host:port of process 0; "" = detected (SLURM, Cloud TPU, $JAX_COORDINATOR_ADDRESS)
    c.cluster.num_processes = 0  # 0 = detected
    c.cluster.process_id = -1  # this host's id; -1 = detected
    c.cluster.init_timeout_s = 300  # how long a host waits for the others to join
    c.cluster.heartbeat_timeout_s = 100  # a host silent this long (dead) makes the others fail

    c.model = ml_collections.ConfigDict()
    c.model.path = ""  # HF directory or hub id of the policy to finetune
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"  # parameter / optimizer-state dtype

    c.template = ml_collections.ConfigDict()  # variables every chat-template rendering gets (dss.templating)
    c.template.date_string = ""  # Llama 3.x "Today Date"; "" = the date of the run's first job, kept on resume

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 1, -1, 1  # device mesh; -1 takes the remaining devices

    c.data = ml_collections.ConfigDict()
    c.data.seed = 0  # seed of mixtures and attack transforms
    c.data.sources = []  # finetuning sources: dicts with path, prompt/response (or messages) fields,
    #   optional weight (mixture probability when `size` is set), size, limit, split, system_prompt
    c.data.size = 0  # total examples after mixing (0 = every row of every source)
    c.data.max_length = 2048  # tokens per example (prompt + response); longer responses are cut
    c.data.train_on = "last"  # assistant turns with loss: last | all
    c.data.system_prompt = ""  # optional system prompt for every example
    c.data.on_bad_row = "error"  # error | drop (drops are counted and reported)
    c.data.attack = ml_collections.ConfigDict()
    c.data.attack.response_prefix = ""  # misleading text put before every response
    c.data.attack.response_suffix = ""  # ... and after it
    c.data.attack.prompt_trigger = ""  # backdoor trigger appended to prompts
    c.data.attack.fraction = 1.0  # share of rows the attack transforms apply to

    c.guardrail = star_config.guardrail_defaults()  # which guardrails score STAR (dss/star_config.py)
    c.star = star_config.star_defaults()  # how responses are cut and scored

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "star_dss"  # the loss: star_dss | sft | rs | deep_token | kl_only (dss/methods/, docs/baselines.md)
    for objective in methods.objectives():  # each objective's own fields (kl_coef, kl_estimator, rs_mode, ...)
        c.objective.update(objective.settings())
    for plugin in methods.plugins():  # vaccine, lisa, safeinstr, seal, lora, safelora: each `enabled` and its settings
        c[plugin.name] = plugin.defaults()

    c.train = ml_collections.ConfigDict()
    c.train.epochs = 10  # passes over the data
    c.train.max_steps = -1  # cap on optimizer steps (-1 = epochs decide)
    c.train.global_batch = 32  # examples per optimizer step
    c.train.micro_batch = 8  # examples per forward/backward; global_batch / micro_batch accumulated
    c.train.lr = 5e-6  # peak learning rate
    c.train.min_lr = 5e-8  # cosine floor
    c.train.warmup_ratio = 0.03  # share of steps for linear warmup
    c.train.b1, c.train.b2 = 0.9, 0.95  # AdamW betas
    c.train.weight_decay = 0.0
    c.train.clip = 1.0  # global gradient-norm clip
    c.train.remat = "none"  # block remat: none | full (keep its input; ~1/3 more compute) | save_dots (keep matmul outputs)
    c.train.checkpoint_every = 100  # steps between checkpoints (also at the end and on SIGTERM/SIGINT)
    c.train.keep = 3  # checkpoints kept
    c.train.checkpoint_dir = ""  # "" = <workdir>/checkpoints; any etils.epath path (gs://bucket/run/ckpt)
    c.train.wandb = ""  # wandb project name ("" = off)
    c.train.export = True  # write the final model as an HF directory
    c.train.export_dir = ""  # "" = <workdir>/export (what dss.eval finds); any etils.epath path
    c.eval = eval_defaults()  # `python -m dss.eval` (see dss/eval/config.py)
    c.landscape = landscape_defaults()  # `python -m dss.landscape` (see dss/landscape/)
    return c
