"""Prompt records: JSONL and the embedded arithmetic problems, prompts by field or template,
columns for the reward functions, held-out records, and file:line errors."""

import json
import re

import numpy as np
import pytest

from configs import common
from rlhf_jax import rewards
from rlhf_jax.data import arithmetic, prompts, sources
from rlhf_jax.data.tokenizers import ByteTokenizer
from rlhf_jax.errors import UserError


def rl_config(**data):
  cfg = common.base_config("rl", "tiny")
  cfg.data.update(dict(embedded_docs=40, eval_docs=8, **data))
  cfg.eval_prompts, cfg.max_prompt_len = 4, 32
  return cfg


def write_jsonl(path, rows):
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return str(path)


def test_jsonl_records_give_whole_prompts_and_their_other_fields_as_columns(tmp_path):
  rows = [{"question": f"What is {i} + {i}?", "answer": str(2 * i), "level": i % 3} for i in range(20)]
  cfg = rl_config(source="jsonl:" + write_jsonl(tmp_path / "q.jsonl", rows), prompt_template="Q: {question}\nA:")
  train, held_out = (prompts.prompt_set(cfg, ByteTokenizer(), split) for split in ("train", "eval"))
  assert train.texts[0] == "Q: What is 0 + 0?\nA:" and len(train.texts) == 19  # eval_fraction 0.05: 1 held out
  assert held_out.texts == ["Q: What is 19 + 19?\nA:"] and held_out.columns["answer"] == ["38"]
  assert train.columns["level"][:4] == [0, 1, 2, 0] and set(train.columns) == {"answer", "level", "question"}
  cfg.data.update(dict(prompt_template="", prompt_field="question"))  # the field itself, no template
  assert prompts.prompt_set(cfg, ByteTokenizer(), "train").texts[1] == "What is 1 + 1?"
  assert set(prompts.prompt_set(cfg, ByteTokenizer(), "train").columns) == {"answer", "level"}
  cfg.data.eval_source = "jsonl:" + write_jsonl(tmp_path / "test.jsonl", rows[:3])
  assert prompts.prompt_set(cfg, ByteTokenizer(), "eval").texts == [r["question"] for r in rows[:3]]


def test_a_record_without_its_prompt_is_a_file_line_error(tmp_path):
  path = write_jsonl(tmp_path / "q.jsonl", [{"prompt": "fine"}, {"question": "no prompt"}, {"prompt": "x"}])
  with pytest.raises(UserError, match=r"q.jsonl:2: missing string field 'prompt' \(has \['question'\]\)"):
    prompts.prompt_set(rl_config(source=f"jsonl:{path}"), ByteTokenizer(), "train")
  with pytest.raises(UserError, match=r"q.jsonl:1: data.prompt_template names field 'question'"):
    prompts.prompt_set(rl_config(source=f"jsonl:{path}", prompt_template="{question}"), ByteTokenizer(), "train")


def test_arithmetic_problems_are_worked_correctly_and_their_answer_is_the_last_integer():
  problems = arithmetic.generate_problems(3000, seed=0)
  for p in problems:
    a, op, b = re.match(r"What is (\d+) ([-+*]) (\d+)\?", p["question"]).groups()
    assert int(p["answer"]) == {"+": int(a) + int(b), "-": int(a) - int(b), "*": int(a) * int(b)}[op]
    assert rewards.last_integer(p["response"]) == int(p["answer"]) and p["response"].startswith(" ")
    for step in re.findall(r"(\d+) ([-+*]) (\d+)(?: \+ (\d+))? = (\d+)", p["response"]):  # every step's sum holds
      x, o, y, carry, result = step
      value = {"+": int(x) + int(y), "-": int(x) - int(y), "*": int(x) * int(y)}[o] + int(carry or 0)
      assert value == int(result), p
  assert {p["question"].split()[3] for p in problems} == {"+", "-", "*"}
  assert arithmetic.generate_problems(5, seed=0, start=10) == problems[10:15]  # a problem is fixed by its index
  worked, answers = [p["response"] for p in problems[:5]], [p["answer"] for p in problems[:5]]
  assert rewards.exact_match(None, worked, answers) == [1.0] * 5


def test_the_arithmetic_source_gives_documents_sft_pairs_and_held_out_records():
  cfg = rl_config(source="embedded:arithmetic", prompt_template="{question}")
  docs = sources.load_documents(cfg.data, "train")
  pairs = sources.load_pairs(cfg.data, "train")
  assert len(docs) == 40 and docs[0] == pairs[0][0] + pairs[0][1] and pairs[0][0].startswith("What is")
  held_out = prompts.prompt_set(cfg, ByteTokenizer(), "eval")
  assert len(held_out.texts) == 4 and not set(held_out.texts) & {p for p, _ in pairs}
  cfg.data.update(dict(embedded_docs=20000, eval_docs=256))  # most problems recur in 20000 draws ...
  train = {sources.prompt_text(r, cfg.data) for r in sources.load_records(cfg.data, "train")}
  evaluation = [sources.prompt_text(r, cfg.data) for r in sources.load_records(cfg.data, "eval")]
  assert len(evaluation) == 256 and not train & set(evaluation)  # ... but never a held-out one
  assert np.all(held_out.tokens[:, -1] != ByteTokenizer().pad_id)  # left-padded, BOS first
