from setuptools import find_packages, setup

setup(
    name="dss",
    version="0.1.0",
    description="Dynamic safety shaping (STAR-DSS) for safe LLM finetuning, in JAX",
    packages=find_packages(include=["dss", "dss.*"]),
    # the bundled data (each source with its licence and provenance) ships with the package
    package_data={"dss.data": ["demo.jsonl", "README.md", "files/README.md", "files/*/*"]},
    python_requires=">=3.10",
    install_requires=[
        # lower bounds are the versions tested on CPU (Python 3.11); GPU machines run jax 0.11
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "transformers>=5.23",
        "tokenizers>=0.23",
        "huggingface-hub>=1.0",
        "safetensors>=0.8",
        "numpy>=2.0",
        "ml-collections>=1.1",
        "absl-py>=2.0",
        "datasets>=5.0",
        "tqdm>=4.66",
        "matplotlib>=3.9",
        "jinja2>=3.1",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # torch is only the parity oracle; 2.13.0 is the CPU wheel the test machines carry
        "test": ["pytest>=8", "torch==2.13.0", "peft>=0.21",  # peft: loading our PEFT-layout adapters
                 "jax[tpu]==0.10.2; sys_platform == 'linux'", "libtpu==0.0.42.1; sys_platform == 'linux'",  # dss.plan's tests: TPU compiles, no chip
                 # the real Llama 3 / Mistral tokenizers and their oracles (tests/real_tokenizers.py)
                 "llama-models==0.3.0", "mistral-common[sentencepiece]==1.13.1", "tiktoken==0.14.0"],
        "tpu": ["jax[tpu]>=0.10.2"],
        "gpu": ["jax[cuda12]>=0.10.2"],
    },
)
