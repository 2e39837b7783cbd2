"""Multi-turn trajectories: the policy's tokens are kept as sampled (never decoded and encoded
again), observations are encoded once with loss mask 0, and a turn ends at its tool call."""

import json

import jax
import numpy as np
import pytest

from rlhf_jax import stages
from rlhf_jax.envs import environments, tools
from rlhf_jax.envs.calculator import calculator
from rlhf_jax.models.sampling import SampleOutput
from rlhf_jax.training.rl import multi_turn
from tests.training.rl import echo_environment

ECHO = echo_environment.__file__  # a plugin file: the `echo` environment and the `short` reward


class MergingTokenizer:
  """Characters as ids, except that encode() merges "ab" into one id: ids sampled as "a", "b"
  decode to text that encodes to other ids (the round trip peers' multi-turn code breaks on)."""
  pad_id, eos_id, AB = 0, 1, 2
  stop_ids = (eos_id,)

  def encode(self, text):
    ids, i = [], 0
    while i < len(text):
      if text.startswith("ab", i):
        ids, i = ids + [self.AB], i + 2
      else:
        ids, i = ids + [ord(text[i]) + 3], i + 1
    return ids

  def decode(self, ids):
    return "".join("ab" if t == self.AB else chr(t - 3) for t in ids if t > 2)


TOKENIZER = MergingTokenizer()


def scripted_sampler(turns: list, width: int):
  """A sampler that writes, at turn i, turns[i] as its ids for every live row, log-prob -0.5
  each; `calls` keeps the contexts it was given."""
  calls = []

  def sample(contexts, live, rng):
    del rng
    text_ids = turns[len(calls)]
    calls.append([list(c) for c in contexts])
    out = np.zeros((len(contexts), width), np.int32)
    out[:, :len(text_ids)] = text_ids
    written = np.zeros_like(out)
    written[np.asarray(live), :len(text_ids)] = 1
    return SampleOutput(out, np.where(written > 0, -0.5, 0.0).astype(np.float32), written)
  return sample, calls


def char_ids(text: str) -> list:
  return [ord(c) + 3 for c in text]  # never merged: what a policy may sample


def test_a_tool_call_turn_keeps_the_sampled_ids_and_appends_the_observation_once():
  call = tools.format_call("calculator", "12*34")
  first = char_ids("ab " + call + " extra")  # sampled past the call's end: cut there
  second = char_ids("ab 408") + [TOKENIZER.eos_id]
  sample, calls = scripted_sampler([first, second], width=48)
  env = environments.ToolEnvironment({"calculator": calculator})
  env.reset({})
  row = multi_turn.Trajectory(prompt=TOKENIZER.encode("Q?"), env=env)
  limits = multi_turn.TurnLimits(max_turns=4, turn_tokens=48, max_tokens=120)
  multi_turn.roll_out([row], sample, jax.random.key(0), TOKENIZER, limits)
  kept = char_ids("ab " + call)
  observation = TOKENIZER.encode(tools.format_result("408"))
  assert row.response == kept + observation + second  # "a", "b" stay two ids, as sampled
  assert TOKENIZER.encode(TOKENIZER.decode(kept))[:1] == [TOKENIZER.AB]  # the round trip would have merged them
  assert row.loss_mask == [1] * len(kept) + [0] * len(observation) + [1] * len(second)
  assert row.logprobs == [-0.5] * len(kept) + [0.0] * len(observation) + [-0.5] * len(second)
  assert (row.turns, row.tool_calls, row.tool_errors, row.done, row.ended) == (2, 1, 0, True, True)
  # The second turn was sampled from the whole context: prompt, the first turn and the observation.
  assert calls[1][0] == row.prompt + kept + observation


def test_a_turn_without_a_call_ends_the_trajectory_and_the_budget_cuts_it():
  sample, _ = scripted_sampler([char_ids("the answer is 7")], width=20)
  env = environments.ToolEnvironment({"calculator": calculator})
  row = multi_turn.Trajectory(prompt=[5, 6], env=env)
  multi_turn.roll_out([row], sample, jax.random.key(0), TOKENIZER, multi_turn.TurnLimits(max_turns=3, turn_tokens=20,
                                                                              max_tokens=10))
  assert row.turns == 1 and row.done and not row.ended and len(row.response) == 10


def test_a_turn_ending_on_a_second_stop_id_is_cut_there_and_ends_the_trajectory():
  """Gemma 3 IT's turns end with <end_of_turn>, beside its EOS: the turn keeps it as its last
  token, sampled past it or not, and the trajectory has ended (no no-EOS penalty)."""
  class ChatTokenizer(MergingTokenizer):
    END_OF_TURN = 2 + 3 + 200  # an id no character of the test's text takes
    stop_ids = (MergingTokenizer.eos_id, END_OF_TURN)

  tokenizer = ChatTokenizer()
  said = char_ids("it is 7") + [tokenizer.END_OF_TURN]
  sample, _ = scripted_sampler([said + char_ids(" more")], width=20)
  row = multi_turn.Trajectory(prompt=[5, 6], env=environments.ToolEnvironment({"calculator": calculator}))
  multi_turn.roll_out([row], sample, jax.random.key(0), tokenizer, multi_turn.TurnLimits(3, 20, 40))
  assert row.response == said and row.loss_mask == [1] * len(said)
  assert (row.turns, row.done, row.ended) == (1, True, True)
  assert row.transcript[0] == ("policy", "it is 7")


def test_rows_assemble_into_the_one_turn_layout_with_the_loss_mask():
  rows = [multi_turn.Trajectory(prompt=[5, 6, 7], env=None), multi_turn.Trajectory(prompt=[8], env=None)]
  rows[0].append([10, 11], [-1.0, -2.0], policy=True)
  rows[0].append([12], None, policy=False)
  rows[0].append([13], [-3.0], policy=True)
  rows[1].append([14], [-4.0], policy=True)
  tokens, mask, response, ended = multi_turn.assemble(rows, prompt_len=4, response_len=5, pad_id=0)
  np.testing.assert_array_equal(tokens, [[0, 5, 6, 7, 10, 11, 12, 13, 0], [0, 0, 0, 8, 14, 0, 0, 0, 0]])
  np.testing.assert_array_equal(mask, [[0, 1, 1, 1, 1, 1, 1, 1, 0], [0, 0, 0, 1, 1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(response.mask, [[1, 1, 0, 1, 0], [1, 0, 0, 0, 0]])
  np.testing.assert_array_equal(response.logprobs, [[-1, -2, 0, -3, 0], [-4, 0, 0, 0, 0]])


def test_an_rl_stage_with_an_environment_trains_on_its_trajectories(tiny_ppo, tiny_upstream, tmp_path):
  cfg = tiny_ppo.copy_and_resolve_references()
  cfg.update(dict(algo="grpo", plugins=(ECHO,), **tiny_upstream))  # the environment `echo`, from a plugin file
  cfg.reward.fns = (f"{ECHO}:short", "length", "model")  # a host function, a token reward, the reward model
  cfg.env.update(dict(name="echo", max_turns=3, turn_tokens=6))
  cfg.sample.max_new_tokens = 40
  cfg.train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2))
  summary = stages.run(cfg, str(tmp_path / "run"))
  assert json.load(open(tmp_path / "run" / "plan.json"))["driver"] == "multi_turn"
  train = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl") if "policy_loss" in line]
  assert len(train) == 2 and all(np.isfinite(row["policy_loss"]) for row in train)
  assert 1 <= train[-1]["turns"] <= 3 and 0 < train[-1]["policy_token_fraction"] < 1
  assert train[-1]["tool_errors"] <= train[-1]["tool_calls"]
  assert all(train[-1][f"time/{phase}"] > 0 for phase in ("sampling", "environment", "rewards", "update"))
  assert abs(train[-1]["reward/env"] - 0.15 * train[-1]["turns"]) < 1e-5  # per turn and final, summed
  assert 1 <= summary["eval/turns"] <= 3 and "eval/ref_turns" in summary and "eval/reward/short" in summary
  # length counts the policy's tokens (the loss mask), not the echoed observations
  assert train[-1]["reward/length"] == pytest.approx(-train[-1]["response_length"] / 40)
  assert -1 <= summary["eval/reward/length"] < 0 and "eval/ref_reward/length" in summary
  assert np.isfinite(train[-1]["reward/model"]) and np.isfinite(summary["eval/reward/model"])  # the whole transcript
  lines = [json.loads(line) for line in open(tmp_path / "run" / "samples" / "step_000002.jsonl")]
  assert len(lines) == cfg.eval_prompts and lines[0]["transcript"][0]["turn"] == "policy"
  assert any(turn["turn"] == "env" and turn["text"] == echo_environment.OBSERVATION for turn in lines[0]["transcript"])


def test_an_environment_that_raises_is_one_line_naming_it():
  class Broken:
    def step(self, turn_text):
      raise KeyError("board")

  sample, _ = scripted_sampler([char_ids("move")], width=8)
  row = multi_turn.Trajectory(prompt=[5], env=Broken())
  with pytest.raises(multi_turn.EnvironmentFailed, match="environment Broken.step raised KeyError: 'board'"):
    multi_turn.roll_out([row], sample, jax.random.key(0), TOKENIZER, multi_turn.TurnLimits(1, 8, 16))
