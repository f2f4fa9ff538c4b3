"""Every dss setting with its default (the paper's Table 1 recipe) and a comment saying what it does.

Config files (`configs/*.py`) start from `base_config()` and override what their experiment
changes, big_vision style; `python -m dss.<job> --config file.py --config.a.b=value` overrides
any field from the command line.
"""

import ml_collections

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

    c.guardrail = ml_collections.ConfigDict()
    c.guardrail.paths = []  # one or more guardrails (ensemble: P(safe) averaged)
    c.guardrail.kind = "auto"  # llama_guard_3 | granite_guardian | shieldgemma | auto
    c.guardrail.risk = ""  # Granite Guardian risk_name / ShieldGemma policy ("" = default)
    c.guardrail.dtype = "float32"  # guardrail compute dtype
    c.guardrail.mesh = ()  # (data, fsdp, tensor) for STAR scoring; () = one device, (1, -1, 1) = all, FSDP

    c.star = ml_collections.ConfigDict()
    c.star.chunk_unit = "word"  # word | token
    c.star.chunk_size = 5  # words (or guardrail tokens) per chunk
    c.star.method = "shared_kv"  # shared_kv | naive (same numbers)
    c.star.score_mode = "raw"  # raw | hf_sampling (the reference implementation's sampled verdicts)
    c.star.token_budget = 16384  # tokens per scoring call
    c.star.cache = ""  # STAR file to reuse ("" = <workdir>/star.npz)

    c.objective = ml_collections.ConfigDict()
    c.objective.name = "star_dss"  # star_dss | sft | rs | deep_token | kl_only | vaccine | lisa (docs/baselines.md)
    c.objective.kl_coef = 0.5  # lambda: weight of the KL term where STAR says unsafe
    c.objective.kl_estimator = "k2"  # k1 | k2 | k3 | full (full runs the reference model in the step)
    c.objective.rs_mode = "hard"  # rs: hard (0/1 at P(safe) 0.5) | soft (P(safe))
    c.objective.deep_token_betas = (0.5, 2.0, 5, 0.1)  # first token, tokens 2..N, N, after

    c.vaccine = ml_collections.ConfigDict()  # objective "vaccine": the alignment stage; data.sources = alignment data
    c.vaccine.rho = 2.0  # radius of the hidden-state perturbation, one norm over all layers (official default 2)

    c.lisa = ml_collections.ConfigDict()  # objective "lisa": alignment and user finetuning steps alternate in one run
    c.lisa.sources = ()  # alignment data (harmful prompt -> refusal): source dicts as in data.sources; never attacked
    #   (a tuple, so the command line can give it: --config.lisa.sources='({"path": "align.jsonl"},)')
    c.lisa.alignment_steps = 100  # steps of each alignment state (official script: 100)
    c.lisa.finetune_steps = 900  # steps of each user finetuning state (official script: 900)
    c.lisa.rho = 1.0  # proximal coefficient: rho/2 ||w - w_anchor||^2, anchor = weights at the last switch (official: 1)
    c.lisa.proximal_after = 0.1  # share of the run's steps before the proximal term is on (official: 0.1)

    c.safeinstr = ml_collections.ConfigDict()  # SafeInstr (Bianchi et al. 2024), docs/baselines.md
    c.safeinstr.enabled = False  # add safety rows (harmful request -> refusal) to the data, after mixing and attacks
    c.safeinstr.path = ""  # safety set (file or hub id); "" = the bundled HarmBench refusals (dss/data/files/safety_refusals)
    c.safeinstr.prompt_field = "prompt"  # its request field (the official safety_only_data_Instructions.json: "instruction")
    c.safeinstr.response_field = "response"  # its refusal field (the official file: "output")
    c.safeinstr.count = 0  # safety rows added, drawn without replacement with data.seed; 0 = every row

    c.seal = ml_collections.ConfigDict()  # SEAL (Shen et al. 2025) bilevel data selection, docs/baselines.md
    c.seal.enabled = False  # rank the user data with a selector trained first (cached in the workdir), keep the top
    c.seal.safe_sources = ()  # upper-level safe/aligned data: source dicts as in data.sources (required when enabled);
    #   a tuple, so the command line can set it: --config.seal.safe_sources='({"path": "safe.jsonl"},)'
    c.seal.keep_fraction = 0.8  # share of user examples kept, highest selector scores first (official --topp)
    c.seal.epochs = 3  # selector training passes (each min(safe, user) // global_batch steps)
    c.seal.max_steps = -1  # cap on selector steps (-1 = epochs decide)
    c.seal.global_batch = 64  # safe examples and user examples per selector step (as many of each)
    c.seal.micro_batch = 8  # examples of each per forward/backward; global_batch / micro_batch accumulated
    c.seal.lr = 1e-5  # constant Adam rate of the model trained alongside the selector
    c.seal.selector_lr = 5e-3  # constant Adam rate of the selector logits
    c.seal.upper_weight = 1.0  # lambda in epoch 0: model loss = lambda * safe CE + (1 - lambda) * weighted user CE
    c.seal.upper_weight_decay = 0.03  # lambda falls by this each epoch
    c.seal.activation = "softmax"  # selector weights: softmax (N * softmax(logits)) | sigmoid (2 * sigmoid(logits))

    c.lora = ml_collections.ConfigDict()  # LoRA: low-rank adapters trained beside the frozen policy (dss/lora.py)
    c.lora.enabled = False  # train only adapters (and their optimizer state); every objective works, the KL reference is the base
    c.lora.rank = 8  # r: the adapters' inner dimension (a: in x r, b: r x out)
    c.lora.alpha = 16.0  # the update alpha / r * a @ b is added to each adapted weight (PEFT's lora_alpha)
    c.lora.dropout = 0.05  # dropout on each adapter's input while training (PEFT's lora_dropout; 0 = off)
    c.lora.targets = ("q", "v")  # adapted weights among q, k, v, o (attention) and gate, up, down (MLP)
    c.lora.adapter_dir = ""  # the adapter alone in PEFT layout, written with the export; "" = <workdir>/adapter

    c.safelora = ml_collections.ConfigDict()  # SafeLoRA (Hsu et al. 2024), docs/baselines.md; needs lora.enabled
    c.safelora.enabled = False  # after training, project the LoRA update of dissimilar modules onto the alignment subspace
    c.safelora.base_path = ""  # the unaligned base of model.path (e.g. meta-llama/Llama-3.2-1B); required when enabled
    c.safelora.select = "number"  # which modules: number (the num_layers least similar) | threshold (official default: number)
    c.safelora.threshold = 0.5  # threshold: project where cosine(dW, C dW) <= this (official default 0.5)
    c.safelora.num_layers = 10  # number: how many modules are projected (official num_proj_layers, default 10)

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
