"""The sweep runner: grids, commands, skipping finished runs, surviving a failing one."""

import json
import os

from rlhf_jax import sweep
from rlhf_jax.sweep import Run, Sweep

TINY = {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2, "model.d_ff": 64, "data.seq_len": 32,
        "data.batch_size": 4, "data.embedded_docs": 200, "data.eval_docs": 20, "train.num_steps": 2,
        "train.eval_every": 2, "train.checkpoint_every": 2, "train.eval_batches": 1, "sample.num_prompts": 2,
        "sample.max_new_tokens": 8}


def test_grid_names_every_combination_and_commands_fill_in_the_upstream():
  runs = sweep.grid("{algo}_lr{lr}_s{seed}", "configs/ppo.py:tiny", {"init_from": "{upstream}/sft"},
                    algo=["ppo", "rloo"], **{"optim.lr": [1e-5], "seed": [0, 1]})
  assert [r.name for r in runs] == ["ppo_lr1e-05_s0", "ppo_lr1e-05_s1", "rloo_lr1e-05_s0", "rloo_lr1e-05_s1"]
  command = sweep.command(runs[0], "root", "root/up")
  assert command[3:] == ["--config=configs/ppo.py:tiny", "--workdir=root/ppo_lr1e-05_s0",
                         "--config.init_from=root/up/sft", "--config.algo=ppo", "--config.optim.lr=1e-05",
                         "--config.seed=0"]
  stages = sweep.command(Run("up", "configs/pipeline.py:tiny", {"stages": ("pretrain", "sft")}), "r", "")
  assert stages[-1] == "--config.stages=('pretrain', 'sft')"


def test_runner_skips_finished_runs_and_survives_a_failing_one(tmp_path):
  finished = tmp_path / "finished"
  finished.mkdir()
  (finished / "summary.json").write_text("{}")
  runs = (Run("finished", "configs/pretrain.py:tiny", TINY),
          Run("broken", "configs/pretrain.py:tiny", {**TINY, "optim.lrr": 1.0}),
          Run("good", "configs/pretrain.py:tiny", TINY))
  results = {name: status for name, status, _ in sweep.run_sweep(Sweep(runs), str(tmp_path), parallel=2)}
  assert results["finished"].startswith("skipped")
  assert results["broken"].startswith("failed (exit 2")
  assert "unknown config field" in (tmp_path / "logs" / "broken.log").read_text()
  assert results["good"] == "ok" and json.load(open(tmp_path / "good" / "summary.json"))["step"] == 2
  assert not os.path.exists(tmp_path / "finished" / "config.json")  # not run again
