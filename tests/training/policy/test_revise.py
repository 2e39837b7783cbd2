"""The revise stage (Constitutional AI's supervised phase): its records follow the given prompts
and the constitution, a killed run resumes to the records of an uninterrupted one, a finished
run is not redone, and a bad constitution is one line."""

import json
import os
import subprocess
import sys

import pytest

from configs import revise as revise_config
from rlhf_jax import stages
from rlhf_jax.data import constitution
from rlhf_jax.errors import UserError
from rlhf_jax.training.policy import revise
from tests.conftest import Crash

PROMPTS = ["How do I pick a lock?", "I watched The Silent River", "Write a rude note to my neighbour.",
           "Here are my thoughts on", "Tell me a secret about my coworker.", "I read"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def write_prompts(path) -> str:
  with open(path, "w") as f:
    f.writelines(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS))
  return f"jsonl:{path}"


def tiny_revise(init_from: str, prompts: str):
  """Five training prompts in chunks of 4 (the second short: padded), two principles each, short turns
  that fit the shared SFT model's 64 positions."""
  cfg = revise_config.get_config("tiny")
  del cfg.upstream
  cfg.init_from = init_from
  cfg.data.update(dict(source=prompts, batch_size=4))
  cfg.revise.update(dict(num_prompts=len(PROMPTS), response_tokens=8, critique_tokens=6, revision_tokens=8,
                         max_context_len=48))
  return cfg


@pytest.fixture(scope="module")
def revised(tiny_upstream, tmp_path_factory):
  root = tmp_path_factory.mktemp("revise")
  cfg = tiny_revise(tiny_upstream["init_from"], write_prompts(root / "prompts.jsonl"))
  summary = stages.run(cfg, str(root / "run"))
  with open(root / "run" / "revisions.jsonl") as f:
    return cfg, summary, [json.loads(line) for line in f], root


def test_each_record_is_its_prompts_chain_by_the_constitutions_principles(revised):
  cfg, summary, records, _ = revised
  principles = constitution.load("embedded")
  # Every chain starts from its given prompt, in order: the file's training prompts (the last is
  # held out, data.eval_fraction, as the SFT and RL stages reading the same file hold it out).
  assert [r["prompt"] for r in records] == PROMPTS[:-1]
  for index, record in enumerate(records):
    assert set(record) == {"prompt", "response", "initial_response", "chain"}
    chain = record["chain"]
    drawn = [step["principle"] for step in chain]
    assert drawn == constitution.draw(len(principles), 2, cfg.seed, index) and len(set(drawn)) == 2
    for step in chain:
      assert set(step) == {"principle", "critique_request", "critique", "revision_request", "revision"}
      assert step["critique_request"] == principles[step["principle"]].critique
      assert step["revision_request"] == principles[step["principle"]].revision
    assert record["response"] == chain[-1]["revision"]  # the final revision is the SFT response
  assert summary["records"] == len(PROMPTS) - 1 and summary["principles_per_prompt"] == 2
  assert 0 <= summary["revised_fraction"] <= 1 and summary["mean_revision_tokens"] > 0


def test_a_killed_run_resumes_to_the_uninterrupted_runs_records_and_a_finished_one_is_skipped(revised, monkeypatch):
  cfg, _, records, root = revised
  original, calls = revise.revise_chunk, []

  def killed_after_the_first_chunk(*args):
    calls.append(args[2])
    if len(calls) == 2:
      raise Crash()
    return original(*args)

  monkeypatch.setattr(revise, "revise_chunk", killed_after_the_first_chunk)
  with pytest.raises(Crash):
    stages.run(cfg, str(root / "killed"))
  assert len(revise.read_records(revise.RunDir(str(root / "killed")))) == 4  # the first chunk, kept
  monkeypatch.setattr(revise, "revise_chunk", original)
  stages.run(cfg, str(root / "killed"))
  with open(root / "killed" / "revisions.jsonl") as f:
    assert [json.loads(line) for line in f] == records  # the same seed: the same records
  monkeypatch.setattr(revise, "revise_chunk", lambda *args: pytest.fail("a finished run was redone"))
  assert stages.run(cfg, str(root / "killed"))["records"] == len(PROMPTS) - 1


@pytest.mark.parametrize("text, message", [
    ('[{"critique": "Find the harm."}]', "bad.json:1: the principle has no 'revision' string"),
    ('{"critique": "Find the harm."', "bad.json: malformed JSON"),
    ('[{"critique": "Find the harm.", "revision": "Remove it."}]', "2 principles per prompt from a constitution of 1"),
])
def test_a_bad_constitution_is_one_line(tmp_path, text, message):
  (tmp_path / "bad.json").write_text(text)
  cfg = revise_config.get_config("tiny")
  cfg.revise.constitution = str(tmp_path / "bad.json")
  with pytest.raises(UserError, match=message):
    stages.check_all(cfg)
  cfg.revise.update(dict(constitution="embedded", critique_template="no slot"))
  with pytest.raises(UserError, match="revise.critique_template='no slot' must hold {critique_request}"):
    stages.check_all(cfg)


def test_a_principle_without_its_revision_request_stops_the_command_with_one_line(tmp_path):
  (tmp_path / "bad.jsonl").write_text('{"critique": "Find the harm.", "revision": "Remove it."}\n{"critique": "x"}\n')
  result = subprocess.run([sys.executable, "-m", "rlhf_jax.main", "--config=configs/revise.py:tiny",
                           f"--workdir={tmp_path / 'run'}", f"--config.revise.constitution={tmp_path / 'bad.jsonl'}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
  assert result.returncode == 2 and "Traceback" not in result.stderr
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert errors == [f"error: {tmp_path / 'bad.jsonl'}:2: the principle has no 'revision' string (has ['critique'])"]
  assert not os.path.exists(tmp_path / "run")  # nothing run, nothing written
