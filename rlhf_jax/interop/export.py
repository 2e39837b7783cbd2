"""Export a finished run's model to a Hugging Face directory.

  python -m rlhf_jax.interop.export --run=runs/demo/ppo --out=exported/ppo_policy [--dtype=bfloat16]

Pretraining and SFT runs export their LM, a reward run its reward model (as
*ForSequenceClassification, with the stage's reward normalisation in config.json under
"rlhf_jax"), RL and DPO runs their policy. A LoRA run exports its adapters merged into the
weights of the base they belong to. The checkpoint is
restored on the host (one CPU device), not on an accelerator.
"""

import sys

from absl import app
from absl import flags
import jax

from rlhf_jax import sharding, stage_names
from rlhf_jax.data.tokenizers import load_tokenizer
from rlhf_jax.errors import UserError
from rlhf_jax.interop.hf_export import MAX_SHARD_BYTES, export
from rlhf_jax.stage_specs import STAGES
from rlhf_jax import training
from rlhf_jax.workdir import RunDir

FLAGS = flags.FLAGS
flags.DEFINE_string("run", None, "A finished run directory (pretrain, sft, reward, rl or dpo).")
flags.DEFINE_string("out", None, "The Hugging Face directory to write.")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the written weights.")
flags.DEFINE_float("max_shard_gb", MAX_SHARD_BYTES / 2**30, "Largest safetensors file, in GiB.")

EXPORTED = tuple(name for name, stage in STAGES.items() if stage.export_item)


def restore_params(run: RunDir, item: str):
  """The final checkpoint's `item` on the host's first CPU device; a LoRA run's adapters merged
  into the base they belong to."""
  cpu_mesh = sharding.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices("cpu")[:1])
  return training.run_params(run, cpu_mesh, (), item=item)


def run_stage(run: RunDir) -> str:
  """The stage a run trained, by its current name (an earlier `ppo` run is `rl`)."""
  return stage_names.canonical(run.read_json("config.json").get("stage"))


def export_run(run_path: str, out: str, dtype: str = "float32", max_shard_bytes: int = MAX_SHARD_BYTES) -> str:
  """Exports the run at `run_path` to `out`; returns the HF architecture written."""
  run = RunDir(run_path)
  if not run.finished:
    raise UserError(f"--run={run_path}: not a finished run (no summary.json there)")
  config = run.read_json("config.json")
  stage = run_stage(run)
  if stage not in EXPORTED:
    raise UserError(f"--run={run_path}: a {stage!r} run; export takes one of {', '.join(EXPORTED)}")
  if config.get("vmap_seeds", 1) > 1:
    raise UserError(f"--run={run_path} trained {config['vmap_seeds']} seeds at once: export a seed's run instead")
  model_cfg = training.frozen_model_config(run)  # the adapters merged
  params = restore_params(run, STAGES[stage].export_item)
  extra = None
  if stage == "reward":
    summary = run.read_json("summary.json")
    extra = {"normalisation_gain": summary["reward_gain"], "normalisation_bias": summary["reward_bias"]}
  return export(model_cfg, params, load_tokenizer(run.file("tokenizer")), out, dtype=dtype,
                max_shard_bytes=max_shard_bytes, extra=extra)


def main(argv):
  if len(argv) > 1 or not FLAGS.run or not FLAGS.out:
    print("usage: python -m rlhf_jax.interop.export --run=RUN_DIR --out=OUT_DIR [--dtype=bfloat16]",
          file=sys.stderr)
    sys.exit(2)
  try:
    architecture = export_run(FLAGS.run, FLAGS.out, FLAGS.dtype, int(FLAGS.max_shard_gb * 2**30))
  except (UserError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"exported {FLAGS.run} as {architecture} to {FLAGS.out}")


if __name__ == "__main__":
  app.run(main)
