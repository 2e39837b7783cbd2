"""Prompt records: JSONL and the embedded arithmetic problems, prompts by field or template,
columns for the reward functions, held-out records, and file:line errors."""

import importlib
import json
import re

import numpy as np
import pytest

from configs import common, reward
from rlhf_jax import rewards
from rlhf_jax.data import arithmetic, preferences, prompts, sources
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


HUANG = "SUBREDDIT: r/{subreddit}\n\nTITLE: {title}\n\nPOST: {post}\n\nTL;DR:"  # Huang et al. 2024's query


def test_a_long_post_is_cut_at_its_last_newlines_then_characters_until_the_query_fits(tmp_path):
  """Huang et al.'s truncation, in every stage that reads the records: RL's prompts, SFT's pairs
  and the reward model's; subreddit, title and "TL;DR:" are kept whole."""
  post = "First paragraph.\nSecond one, longer.\n" + "x" * 40
  rows = [{"subreddit": "tifu", "title": "A title", "post": post, "summary": " s", "chosen": " c", "rejected": " r"},
          {"subreddit": "tifu", "title": "Short", "post": "Fine.", "summary": " s", "chosen": " c", "rejected": " r"}]
  path = write_jsonl(tmp_path / "tldr.jsonl", rows)
  fields = dict(prompt_template=HUANG, truncate_field="post", eval_source=f"jsonl:{path}")  # held out: the whole file
  head = len(HUANG.format(subreddit="tifu", title="A title", post=""))  # bytes: the byte tokenizer's count
  cfg = rl_config(source=f"jsonl:{path}", **fields, truncate_tokens=head + 30)
  cfg.max_prompt_len = 200
  cut, short = prompts.prompt_set(cfg, ByteTokenizer(), "eval").texts
  assert cut == HUANG.format(subreddit="tifu", title="A title", post="First paragraph.")  # two newline cuts
  assert short == HUANG.format(subreddit="tifu", title="Short", post="Fine.")  # under the budget: whole
  cfg.data.truncate_tokens = head + 10  # no newline left: characters go
  assert prompts.prompt_set(cfg, ByteTokenizer(), "eval").texts[0].endswith("POST: First para\n\nTL;DR:")
  cfg.data.update(dict(response_field="summary", truncate_tokens=head + 30))
  assert sources.load_pairs(cfg.data, "eval", prompts.token_counter(ByteTokenizer()))[0] == (cut, " s")
  pref = reward.get_config("tiny").preference
  pref.update(dict(source=f"jsonl:{path}", **fields, truncate_tokens=head + 30))
  assert preferences.load_pairs(pref, "eval", prompts.token_counter(ByteTokenizer()))[0] == (cut, " c", " r")
  cfg.data.truncate_field = "missing"
  with pytest.raises(UserError, match=r"tldr.jsonl:1: truncate_field='missing' is not a text field"):
    prompts.prompt_set(cfg, ByteTokenizer(), "eval")


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


def test_slipped_solutions_forget_their_first_carry_and_end_in_what_their_steps_write():
  clean, slipped = arithmetic.generate_problems(600, seed=0), arithmetic.generate_problems(600, seed=0, slips=1.0)
  carries = 0
  for c, s in zip(clean, slipped):
    assert (c["question"], c["answer"]) == (s["question"], s["answer"])  # slips never change the problems
    carried = "carry" in c["response"] or "borrow" in c["response"]  # written only before the last column
    carries += carried
    assert (c != s) == carried and (rewards.last_integer(s["response"]) == int(s["answer"])) == (not carried)
    if carried:  # the carry is written, then the tens column ignores it (or does not take the borrow)
      a, op, b = re.match(r"What is (\d+) ([-+*]) (\d+)\?", c["question"]).groups()
      tens = {"+": f"{a[0]} + {b[0]} = ", "-": f"{a[0]} - {b[0]} = ", "*": f"{a[0]} * {b} = "}[op]
      assert s["response"].split(". ")[1].startswith(tens) and not c["response"].split(". ")[1].startswith(tens)
  assert 0.4 < carries / 600 < 0.8
  half = arithmetic.generate_problems(2000, seed=0, slips=0.5)
  wrong = rewards.exact_match(None, [p["response"] for p in half], [p["answer"] for p in half]).count(0.0)
  assert 0.2 < wrong / 2000 < 0.4  # half of the ~60% that carry


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
  cfg.data.arithmetic_slips = 0.5  # slips in what is shown; the held-out problems are only asked
  slipped = sources.load_records(cfg.data, "train")
  assert [r.fields for r in sources.load_records(cfg.data, "eval")] == [{**p} for p in
                                                                       arithmetic.generate_problems(256, start=20000)]
  assert sum(r.fields["response"].endswith(f" {r.fields['answer']}.") for r in slipped) < 0.85 * len(slipped)


def test_a_carry_joins_the_next_top_digit_as_a_borrow_leaves_it():
  assert arithmetic.worked_solution(47, "+", 38) == " 7 + 8 = 15, write 5 carry 1. 5 + 3 = 8. The answer is 85."
  assert arithmetic.worked_solution(95, "+", 18) == " 5 + 8 = 13, write 3 carry 1. 10 + 1 = 11. The answer is 113."
  assert arithmetic.worked_solution(47, "+", 38, slip=True) == " 7 + 8 = 15, write 5 carry 1. 4 + 3 = 7. The answer is 75."
  assert arithmetic.worked_solution(62, "-", 38) == " 12 - 8 = 4, borrow 1. 5 - 3 = 2. The answer is 24."
  assert arithmetic.worked_solution(47, "*", 6) == " 7 * 6 = 42, write 2 carry 4. 4 * 6 + 4 = 28. The answer is 282."


def test_the_arithmetic_operations_asked_are_a_config_field():
  cfg = rl_config(source="embedded:arithmetic", prompt_template="{question}", arithmetic_operations=("+", "-"))
  asked = {r.fields["question"].split()[3] for r in sources.load_records(cfg.data, "train")}
  assert asked == {"+", "-"}
  cfg.data.arithmetic_operations = ("+", "/")
  with pytest.raises(UserError, match=r"data.arithmetic_operations=\('\+', '/'\): choose among"):
    sources.load_records(cfg.data, "train")


def test_tool_task_demonstrations_call_the_calculator_or_slip_into_answering_in_their_head():
  from rlhf_jax.envs import calculator, tools
  from rlhf_jax.data import tool_arithmetic
  clean = tool_arithmetic.generate_problems(300, seed=0)
  slipped = tool_arithmetic.generate_problems(300, seed=0, slips=0.5)
  for c, s in zip(clean, slipped):
    assert (c["question"], c["answer"]) == (s["question"], s["answer"])
    call = tools.parse_call(c["response"])
    assert call.name == "calculator" and f"What is {call.args[0]}?" == c["question"]
    assert c["response"] == (f" {tools.format_call('calculator', call.args[0])}"
                             f"{tools.format_result(calculator.calculator(call.args[0]))} The answer is {c['answer']}.")
    assert s in (c, {**c, "response": f" The answer is {c['answer']}."})
  assert 0.35 < sum(s != c for s, c in zip(slipped, clean)) / 300 < 0.65
  cfg = rl_config(source="embedded:tool_arithmetic", prompt_template="{question}")
  cfg.data.update(dict(embedded_docs=200, eval_docs=50))
  train = {r.fields["question"] for r in sources.load_records(cfg.data, "train")}
  assert len(train) > 100 and not train & {r.fields["question"] for r in sources.load_records(cfg.data, "eval")}


GSM8K_LIKE = [{"question": f"Tom has {i} apples and buys 2. How many?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}",
               "level": i % 3} for i in range(20)]


def test_hf_records_from_parquet_jsonl_arrow_and_save_to_disk_folders(tmp_path):
  datasets = pytest.importorskip("datasets")
  table = datasets.Dataset.from_list(GSM8K_LIKE)
  table.to_parquet(str(tmp_path / "q.parquet"))
  table.to_json(str(tmp_path / "q.jsonl"))  # JSON lines
  table.save_to_disk(str(tmp_path / "saved"))
  for path in ("q.parquet", "q.jsonl", "saved"):
    cfg = rl_config(source=f"hf:{tmp_path / path}", prompt_field="question")
    train, held_out = (prompts.prompt_set(cfg, ByteTokenizer(), split) for split in ("train", "eval"))
    assert train.texts == [r["question"] for r in GSM8K_LIKE[:19]], path  # eval_fraction 0.05: the last row held out
    assert train.columns == {"answer": [r["answer"] for r in GSM8K_LIKE[:19]], "level": [i % 3 for i in range(19)]}
    assert held_out.texts == [GSM8K_LIKE[19]["question"]]
  splits = datasets.DatasetDict(train=table, test=datasets.Dataset.from_list(GSM8K_LIKE[:3]))
  splits.save_to_disk(str(tmp_path / "splits"))
  cfg = rl_config(source=f"hf:{tmp_path / 'splits'}", prompt_template="Question: {question}\nAnswer:")
  assert len(prompts.prompt_set(cfg, ByteTokenizer(), "train").texts) == 20  # a split of its own: used whole
  assert prompts.prompt_set(cfg, ByteTokenizer(), "eval").texts[2] == f"Question: {GSM8K_LIKE[2]['question']}\nAnswer:"
  cfg.data.eval_split = "validation"
  with pytest.raises(UserError, match=r"has no split 'validation' \(has \['test', 'train'\]\)"):
    prompts.prompt_set(cfg, ByteTokenizer(), "eval")


def test_hf_record_errors_name_the_file_and_row(tmp_path):
  datasets = pytest.importorskip("datasets")
  rows = [{"question": "fine"}, {"question": None}, {"question": "x"}]  # the last one held out
  datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "q.parquet"))
  with pytest.raises(UserError, match=r"q.parquet:2: missing string field 'question'"):
    prompts.prompt_set(rl_config(source=f"hf:{tmp_path / 'q.parquet'}", prompt_field="question"), ByteTokenizer(),
                       "train")
  (tmp_path / "q.csv").write_text("question\nhi\n")
  with pytest.raises(UserError, match=r"expected a .parquet, .json, .jsonl or .arrow file"):
    sources.load_records(rl_config(source=f"hf:{tmp_path / 'q.csv'}").data, "train")
  with pytest.raises(UserError, match=r"data file not found: /nope.parquet"):
    sources.load_records(rl_config(source="hf:/nope.parquet").data, "train")
  (tmp_path / "bad.parquet").write_text("not parquet")
  with pytest.raises(UserError, match=r"bad.parquet is not a readable dataset"):
    sources.load_records(rl_config(source=f"hf:{tmp_path / 'bad.parquet'}").data, "train")


def test_tfds_records_when_the_dataset_holds_prompts(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  features = tfds.features.FeaturesDict({"question": tfds.features.Text(), "answer": tfds.features.Text(),
                                         "level": np.int64})
  tfds.dataset_builders.store_as_tfds_dataset(
      name="word_problems", version="1.0.0", features=features, data_dir=str(tmp_path), disable_shuffling=True,
      split_datasets={"train": list(enumerate(GSM8K_LIKE)), "test": list(enumerate(GSM8K_LIKE[:3]))})
  cfg = rl_config(source="tfds:word_problems", tfds_data_dir=str(tmp_path), prompt_field="question")
  assert sources.is_record_source(cfg.data)
  train, held_out = (prompts.prompt_set(cfg, ByteTokenizer(), split) for split in ("train", "eval"))
  assert train.texts == [r["question"] for r in GSM8K_LIKE] and held_out.texts == train.texts[:3]
  assert train.columns == {"answer": [r["answer"] for r in GSM8K_LIKE], "level": [i % 3 for i in range(20)]}
  assert rewards.gsm8k(None, ["so 4 in all"], held_out.columns["answer"][2:3]) == [1.0]
  cfg.data.prompt_field = "prompt"  # no such feature: a corpus, whose documents give openings
  assert not sources.is_record_source(cfg.data)


def test_too_few_training_prompts_and_evaluation_prompts_seen_in_training_are_warned_about(caplog):
  # Issue 39: a file of 3 prompts silently filled a 64-response batch and evaluated on one of them.
  make = lambda texts: prompts.Prompts(list(texts), np.zeros((len(texts), 1), np.int32),
                                          np.ones((len(texts), 1), np.int32))
  prompts.warn_about_prompt_sets(make(["a", "b", "c"]), make(["c", "d"]), per_iteration=16)
  assert "3 training prompts for 16 per iteration" in caplog.text
  assert "1 of the 2 evaluation prompts are training prompts too (the first: 'c')" in caplog.text
  caplog.clear()
  prompts.warn_about_prompt_sets(make(["a", "b"]), make(["d"]), per_iteration=2)
  assert not caplog.text


def test_reasoning_gym_tasks_give_records_scored_by_their_own_scorer_from_disjoint_seeds(monkeypatch):
  cfg = rl_config(source="reasoning_gym:basic_arithmetic", prompt_template="{prompt} Answer in <answer></answer> tags.")
  cfg.data.update(dict(embedded_docs=12, eval_docs=4))
  train, held_out = (prompts.prompt_set(cfg, ByteTokenizer(), split) for split in ("train", "eval"))
  assert len(train.texts) == 12 and len(held_out.texts) == 4 and set(train.columns) == {"answer", "entry"}
  assert train.texts[0].startswith("Calculate ") and train.texts[0].endswith("tags.")
  # A task draws item i from seed + i: the held-out items are the training set's next ones, never its own.
  longer = rl_config(source=cfg.data.source)
  longer.data.update(dict(embedded_docs=16, eval_docs=4))
  assert [r.fields["prompt"] for r in sources.load_records(longer.data, "train")[12:]] == [
      e["question"] for e in held_out.columns["entry"]]
  score = rewards.load_function("reasoning_gym")
  right = [f"so <answer>{a}</answer>" for a in train.columns["answer"][:2]]
  assert score(None, right + ["<answer>not a number</answer>"], entry=train.columns["entry"][:3]) == [1.0, 1.0, 0.0]
  words = rl_config(source="reasoning_gym:spell_backward")
  words.data.update(dict(embedded_docs=3000, eval_docs=64))  # a finite vocabulary repeats words
  asked = {r.fields["prompt"] for r in sources.load_records(words.data, "eval")}
  trained = [r.fields["prompt"] for r in sources.load_records(words.data, "train")]
  assert len(asked) > 50 and 2900 < len(trained) < 3000 and not asked & set(trained)  # held out: none trained on
  entry = sources.load_records(words.data, "train")[0].fields["entry"]  # partial credit: solved is full marks only
  near = entry["answer"][:-1] + ("x" if entry["answer"][-1] != "x" else "y")
  partial, solved = (rewards.load_function(f) for f in ("reasoning_gym", "reasoning_gym_solved"))
  assert 0 < partial(None, [near], entry=[entry])[0] < 1 and solved(None, [near, entry["answer"]], entry=[entry] * 2) == [
      0.0, 1.0]
  assert [rewards.final_answer("reasoning_gym_solved", t) for t in ("so <answer>abc</answer>", " abc ", "")] == [
      "abc", "abc", None]  # what maj@k votes on: the scorer's reading, not a last integer
  cfg.data.reasoning_gym_options = '{"min_terms": 2, "max_terms": 2}'  # the task's own settings
  two_terms = sources.load_records(cfg.data, "train")
  assert all(r.fields["entry"]["metadata"]["num_terms"] == 2 for r in two_terms)
  for source, options, message in (("reasoning_gym:no_such_task", "", "Dataset 'no_such_task' not registered"),
                                   (cfg.data.source, '{"nope": 1}', "unexpected keyword argument 'nope'")):
    cfg.data.update(dict(source=source, reasoning_gym_options=options))
    with pytest.raises(UserError, match=f"^data.source={source}.*{message}"):
      sources.load_records(cfg.data, "train")
  real_import = importlib.import_module
  monkeypatch.setattr(importlib, "import_module",  # as if reasoning-gym were not installed
                      lambda name: (_ for _ in ()).throw(ImportError(name)) if name == "reasoning_gym" else real_import(name))
  with pytest.raises(UserError, match="needs the reasoning-gym package: pip install reasoning-gym$"):
    sources.load_records(cfg.data, "train")


def test_sft_records_name_their_response_field_or_hold_a_conversation(tmp_path):
  """TL;DR's layout (prompt and label) by field names; a `messages` column as the prompt's
  turns and the assistant's last; rendered as HH's text without a chat template."""
  import datasets  # pylint: disable=g-import-not-at-top
  tldr = [{"prompt": f"POST {i}\nTL;DR:", "label": f" summary {i}"} for i in range(4)]
  datasets.Dataset.from_list(tldr).to_parquet(str(tmp_path / "tldr.parquet"))
  data = rl_config(source=f"hf:{tmp_path / 'tldr.parquet'}", response_field="label", eval_fraction=0.25).data
  assert sources.load_pairs(data, "train") == [(f"POST {i}\nTL;DR:", f" summary {i}") for i in range(3)]
  chats = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": f"Q{i}"},
                         {"role": "assistant", "content": f"A{i}"}]} for i in range(4)]
  data = rl_config(source="jsonl:" + write_jsonl(tmp_path / "chat.jsonl", chats), messages_field="messages").data
  prompt, response = sources.load_pairs(data, "train")[0]
  assert response == "A0" and [m["role"] for m in prompt] == ["system", "user"]
  assert prompts.as_chat([prompt], ByteTokenizer(), data) == ["\n\nSystem: Be brief.\n\nHuman: Q0\n\nAssistant:"]
  bad = [{"messages": [{"role": "user", "content": "Q"}]}, {"messages": "text"}]
  data = rl_config(source="jsonl:" + write_jsonl(tmp_path / "bad.jsonl", bad), messages_field="messages",
                   eval_fraction=0.5).data
  with pytest.raises(UserError, match=r"bad.jsonl:1: data.messages_field='messages' needs messages ending"):
    sources.load_pairs(data, "train")
  with pytest.raises(UserError, match=r"bad.jsonl:2: field 'messages' is not a list of chat messages"):
    sources.load_pairs(data, "eval")
  data = rl_config(source=f"hf:{tmp_path / 'tldr.parquet'}").data  # the default field, `response`, is not there
  with pytest.raises(UserError, match=r"tldr.parquet:1: missing string field 'response'"):
    sources.load_pairs(data, "train")
