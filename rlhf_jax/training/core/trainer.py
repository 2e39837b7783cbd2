"""The skeleton every stage's trainer follows, in this order:

  1. the run directory, its source run(s), tokenizer and model config; the mesh, the logical
     rules and the memory plan checked (`memory.check`) before anything is placed
  2. the stage's state, laid out on the mesh (its own models and sources)
  3. `checkpointed`: the checkpointer, and the state resumed from its latest step
  4. `record`: config.json (a resume that would change the run is refused there), the
     tokenizer, model.json and the stage's own files: written only once the config, the
     tokenizer, the data and the checkpoint have proved usable
  5. the stage's compiled step, batches and evaluator, handed to the host loop (core/loop.py)
  6. `finish`: the loop's final metrics and the stage's extras in summary.json

Steps 2 and 5 are each stage's own; the rest is here, once.
"""

import dataclasses

from rlhf_jax.checkpoint import Checkpointer
from rlhf_jax.models.config import ModelConfig
from rlhf_jax.training.core import setup
from rlhf_jax.workdir import RunDir


@dataclasses.dataclass(frozen=True)
class RunFiles:
  """What a run directory holds for the stages that start from it."""
  tokenizer: object
  model_cfg: ModelConfig
  base: str = ""  # with LoRA: the run the adapters belong to (setup.lora_base)
  extra: dict = dataclasses.field(default_factory=dict)  # file name -> JSON (the RL stage's plan.json)


def checkpointed(cfg, run_dir: RunDir, state, shardings, items=setup.STATE_ITEMS, restore=setup.resume):
  """(state, checkpointer, resumed): `state` resumed from the run's latest checkpoint, if it has
  one. `restore(state, shardings, checkpointer, items)` returns the resumed state or None."""
  checkpointer = Checkpointer(run_dir.file("checkpoints"), items, cfg.train.keep_checkpoints)
  restored = restore(state, shardings, checkpointer, items)
  return (restored if restored is not None else state), checkpointer, restored is not None


def record(run_dir: RunDir, cfg, files: RunFiles) -> None:
  run_dir.record_config(cfg)
  for name, value in files.extra.items():
    run_dir.write_json(name, value)
  setup.save_run_files(run_dir, files.tokenizer, files.model_cfg, files.base)


def finish(run_dir: RunDir, summary: dict, **extras) -> dict:
  summary.update(extras)
  run_dir.write_json("summary.json", summary)
  return summary
