"""The reward stage end to end: generated pairs labelled the right way round (the shared
upstream's reward run), and a reward model that learns the gold judge's direction."""

import json
import os

import numpy as np
import pytest

from rlhf_jax import judges, stages
from rlhf_jax.data import preferences
from rlhf_jax.data.corpus import generate_reviews
from rlhf_jax.errors import UserError


def test_reward_stage_generates_pairs_labelled_the_right_way_round(tiny_upstream):
  workdir = tiny_upstream["reward_from"]
  upstream = os.path.dirname(tiny_upstream["init_from"])
  for stage in ("pretrain", "sft"):
    assert os.path.exists(os.path.join(upstream, stage, "summary.json"))
  summary = json.load(open(os.path.join(workdir, "summary.json")))
  with open(os.path.join(workdir, "preferences_train.jsonl")) as f:
    pairs = [json.loads(line) for line in f]
  assert len(pairs) == 64 and all(-1 <= g <= 1 for p in pairs for g in p["gold"])
  assert {"prompt", "chosen", "rejected"} <= set(pairs[0])
  # The labels are Bradley-Terry draws on the gold scores, so the chosen response has the
  # higher gold score more often than not (swapped labels would make it less often).
  gold = np.array([p["gold"] for p in pairs])
  chosen_higher, rejected_higher = np.sum(gold[:, 0] > gold[:, 1]), np.sum(gold[:, 0] < gold[:, 1])
  assert chosen_higher > 1.5 * rejected_higher, (chosen_higher, rejected_higher)
  # Whether the reward model learnt the gold judge's direction is the next test's: on the
  # shrunk SFT policy's word salad, 10 steps on 64 pairs learn next to nothing.
  assert np.isfinite(summary["eval/margin"]) and "eval/gold_correlation" in summary
  assert summary["reward_gain"] > 0
  model = json.load(open(os.path.join(workdir, "model.json")))
  assert model["heads"] == ["reward"]


def write_fluent_pairs(workdir, split: str, count: int, first: int, rng) -> None:
  """Pairs of embedded reviews labelled as the stage labels its own samples (a Bradley-Terry
  draw on VADER), cached where the stage keeps generated pairs, so it trains on fluent text
  (the shared upstream's tiny SFT policy writes word salad a tiny reward model cannot rank)."""
  texts = generate_reviews(2 * count, start=first)
  gold = judges.vader_scores(texts)
  a_wins = preferences.label_pairs(gold[0::2], gold[1::2], 5.0, rng)
  rows = []
  for i, a_won in enumerate(a_wins):
    a, b = (2 * i, 2 * i + 1) if a_won else (2 * i + 1, 2 * i)
    rows.append({"prompt": "", "chosen": texts[a], "rejected": texts[b], "gold": [float(gold[a]), float(gold[b])]})
  with open(os.path.join(workdir, f"preferences_{split}.jsonl"), "w") as f:
    f.writelines(json.dumps(row) + "\n" for row in rows)


def test_a_reward_model_trained_on_fluent_pairs_scores_as_the_gold_judge_does(tiny_reward, tiny_upstream,
                                                                               tmp_path):
  rng = np.random.default_rng(0)
  write_fluent_pairs(tmp_path, "train", 256, 0, rng)
  write_fluent_pairs(tmp_path, "eval", 32, 512, rng)
  del tiny_reward.upstream
  tiny_reward.init_from = tiny_upstream["init_from"]
  tiny_reward.optim.update(dict(lr=2e-3, warmup_steps=2))
  tiny_reward.train.update(dict(num_steps=60, eval_every=60, checkpoint_every=60))
  tiny_reward.preference.update(dict(train_pairs=256, eval_pairs=32))
  tiny_reward.data.pack = True  # whole pairs packed in rows (their losses are exact: tests/training/test_pairs.py)
  summary = stages.run(tiny_reward, str(tmp_path))
  # Measured: correlation 0.81 with VADER over the 64 held-out responses, accuracy 0.75 on
  # the noisy held-out labels, one pair per row; packed (more pairs per step), 0.72 and 0.94.
  assert summary["eval/gold_correlation"] > 0.6 and summary["eval/accuracy"] > 0.6, summary
  assert summary["eval/margin"] > 0
  # Against VADER's own order of each held-out pair rather than the noisy labels: measured 0.875.
  assert summary["eval/gold_accuracy"] > 0.6, summary


class ScoringJudge:
  """A judge preferring the response with the higher hidden score, plus a pull towards position A."""

  def __init__(self, bias: float):
    self.bias = bias

  def first_preferred(self, prompts, firsts, seconds):
    score = lambda text: float(len(text))
    return np.array([1 / (1 + np.exp(-(score(a) - score(b) + self.bias))) for a, b in zip(firsts, seconds)])


def test_asking_both_orders_cancels_a_judges_position_bias():
  from rlhf_jax.pairwise_judge import both_orders as ai_labels  # pylint: disable=g-import-not-at-top
  prompts, a, b = ["p"] * 3, ["long answer", "x", "same"], ["short", "longer one", "same"]
  for bias in (0.0, 3.0, -3.0):  # up to a judge that picks position A whatever it reads
    p_a, _ = ai_labels(ScoringJudge(bias), prompts, a, b)
    assert p_a[0] > 0.5 > p_a[1] and p_a[2] == pytest.approx(0.5), (bias, p_a)
  always_first = ScoringJudge(1e3)
  p_a, agree = ai_labels(always_first, prompts, a, b)
  np.testing.assert_allclose(p_a, 0.5)
  assert not agree.any()  # each order prefers its first: the two never agree


def test_a_judge_model_labels_generated_pairs_with_soft_labels_and_gold_still_measures_them(tiny_reward,
                                                                                             tiny_upstream, tmp_path):
  from rlhf_jax.interop.export import export_run  # pylint: disable=g-import-not-at-top
  export_run(tiny_upstream["init_from"], str(tmp_path / "judge"))  # the SFT policy, as a Hugging Face judge
  del tiny_reward.upstream
  tiny_reward.init_from = tiny_upstream["init_from"]
  tiny_reward.train.update(dict(num_steps=2, eval_every=2, checkpoint_every=2))
  tiny_reward.preference.update(dict(train_pairs=16, eval_pairs=8, judge=f"hf:{tmp_path / 'judge'}"))
  stages.run(tiny_reward, str(tmp_path / "run"))
  rows = [json.loads(line) for line in open(tmp_path / "run" / "preferences_train.jsonl")]
  assert len(rows) == 16 and all(0.5 <= r["label"] <= 1 and isinstance(r["orders_agree"], bool) for r in rows)
  assert all(len(r["gold"]) == 2 for r in rows)  # VADER's scores, to measure the judge by
  from rlhf_jax.data.tokenizers import load_tokenizer  # pylint: disable=g-import-not-at-top
  from rlhf_jax.training.preference.reward_trainer import preference_batches  # pylint: disable=g-import-not-at-top
  data = preference_batches(tiny_reward, {"train": rows}, load_tokenizer(str(tmp_path / "run" / "tokenizer")))
  batch = data["train"].batch(0)  # the soft labels ride with their pairs into the Bradley-Terry loss
  by_chosen = {r["chosen"]: r["label"] for r in rows}
  assert sorted(batch["label"][:, 0].tolist()) == sorted(
      by_chosen[r] for r in (rows[i]["chosen"] for i in data["train"].row_ids(0)))
  tiny_reward.preference.judge = "hf:no/such/dir"
  with pytest.raises(UserError, match="preference.judge='hf:no/such/dir': expected hf:DIR"):
    stages.run(tiny_reward, str(tmp_path / "bad"))


class RecordingJudge:
  """Prefers the first response, and keeps the principle each pair was asked about."""

  def __init__(self):
    self.asked = []

  def first_preferred(self, prompts, firsts, seconds, principles=None):
    self.asked.append(principles)
    return np.ones(len(prompts))


def test_each_pair_is_asked_its_drawn_principles_question_in_both_orders():
  from rlhf_jax.data import constitution  # pylint: disable=g-import-not-at-top
  from rlhf_jax.training.preference.reward_trainer import judged  # pylint: disable=g-import-not-at-top
  questions, judge = ["Which is kinder?", "Which is more honest?", "Which is safer?"], RecordingJudge()
  a_wins, rows = judged(judge, questions, ["p"] * 4, ["a", "b"] * 4, seed=3, first=8)
  drawn = [constitution.draw(3, 1, 3, 8 + i)[0] for i in range(4)]  # pairs 8..11 of the split
  assert judge.asked == [[questions[q] for q in drawn]] * 2  # the same question in both orders
  assert [r["principle"] for r in rows] == drawn and all(r["label"] == 0.5 for r in rows)


def test_a_constitution_needs_a_judge_model_and_every_principle_a_question(tiny_reward, tmp_path):
  tiny_reward.preference.constitution = "embedded"
  with pytest.raises(UserError, match="preference.constitution is read by a judge model: set preference.judge=hf:DIR"):
    stages.check_all(tiny_reward)
  os.makedirs(tmp_path / "judge")
  (tmp_path / "no_choice.jsonl").write_text('{"critique": "Find the harm.", "revision": "Remove it."}\n')
  tiny_reward.preference.update(dict(judge=f"hf:{tmp_path / 'judge'}", constitution=str(tmp_path / "no_choice.jsonl")))
  with pytest.raises(UserError, match="every principle needs a 'choice' question"):
    stages.check_all(tiny_reward)
  tiny_reward.preference.update(dict(constitution="embedded", judge_template="{prompt} A: {a} B: {b}"))
  with pytest.raises(UserError, match="judge_template must hold {principle}"):
    stages.check_all(tiny_reward)
