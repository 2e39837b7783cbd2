"""Constitutional AI's supervised phase (Bai et al. 2022) as a stage: a model answers each prompt,
then for each of `revise.principles_per_prompt` principles drawn from the constitution it
critiques its response as the principle's critique request asks and revises it as the revision
request asks; the revision is the response the next principle critiques. The final revisions
are SFT records (`data.source=revise:DIR` in the SFT stage). No training.

Each step of the chain (the responses, then each principle's critiques, then its revisions) is
one compiled sampling call over a chunk of `data.batch_size` prompts; the host only decodes and
fills the templates (the paper's "Human: ... Assistant: ... CritiqueRequest: ... Critique: ...
RevisionRequest: ... Revision: ..."). A context is "{prefix}{human turn} {response}" and each
sampled text, cut at the first `revise.stop` marker and stripped, follows its turn's colon after
one space.

WORKDIR/revisions.jsonl holds one record per prompt: `prompt`, `response` (the final revision),
`initial_response` and `chain`, a list of {principle (its index in the constitution),
critique_request, critique, revision_request, revision}. A chunk's samples and principles are a
function of the seed and the chunk's first prompt alone, and each finished chunk is written at
once: a killed run, rerun, keeps the finished chunks and redoes the rest as an uninterrupted run
would (tests/training/policy/test_revise.py).
"""

import dataclasses
import json
import os

from absl import logging
import jax
import numpy as np
import optax

from rlhf_jax import memory, sharding
from rlhf_jax.data import constitution
from rlhf_jax.data.prompts import encode_prompts, prompt_texts
from rlhf_jax.data.sources import REVISIONS
from rlhf_jax.errors import UserError
from rlhf_jax.models.sampling import SamplingParams
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.state import model_params
from rlhf_jax.training.core.steps import jit_sampler
from rlhf_jax.workdir import RunDir

TEMPLATE_SLOTS = {"human_template": "{prompt}", "critique_template": "{critique_request}",
                  "revision_template": "{revision_request}"}
BUCKET = 64  # contexts are left-padded to a multiple of this many tokens: a few compilations


def check_config(cfg) -> None:
  """The constitution reads, holds enough principles, and each template has its slot."""
  r = cfg.revise
  constitution.draw(len(constitution.load(r.constitution)), r.principles_per_prompt, cfg.seed, 0)
  for field, slot in TEMPLATE_SLOTS.items():
    if slot not in r[field]:
      raise UserError(f"revise.{field}={r[field]!r} must hold {slot}")


def run(cfg, workdir: str) -> dict:
  """Writes WORKDIR/revisions.jsonl (resuming a killed run) and summary.json; returns the summary."""
  run_dir, source = RunDir(workdir), setup.source_run(cfg)
  if source is None:
    raise UserError("the revise stage samples a model: set init_from (a finished run or hf:DIR), or keep "
                    "config.upstream")
  principles = constitution.load(cfg.revise.constitution)
  tokenizer = setup.prepare_tokenizer(cfg, run_dir, source)
  model_cfg = setup.model_config(cfg, tokenizer, source)
  longest = cfg.revise.max_context_len + max(turn_tokens(cfg.revise))
  if longest > model_cfg.max_len:
    raise UserError(f"revise.max_context_len + the longest turn's tokens = {longest} exceed the model's max_len "
                    f"{model_cfg.max_len}")
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.rules_of(cfg)
  memory.check(cfg, model_cfg, mesh)
  model = Transformer(model_cfg)
  state, shardings = setup.init_state(model, optax.identity(), mesh, rules, cfg.seed)
  params = model_params(setup.from_source(state, shardings, source, mesh, rules))
  run_dir.record_config(cfg)  # a rerun with another seed, model, prompts or constitution is refused
  prompts = prompt_texts(cfg.data, "train", cfg.seed, cfg.revise.num_prompts)[0]
  if not prompts:
    raise UserError(f"data.source={cfg.data.source!r} gives no prompts")
  samplers = {n: jit_sampler(model, n, tokenizer, model_params(shardings), mesh, rules, cfg.sample)
              for n in set(turn_tokens(cfg.revise))}
  turn = Turn(samplers, params, tokenizer, cfg.revise, cfg.data.batch_size)
  records = revise_all(cfg, run_dir, prompts, principles, turn)
  summary = summarise(records, tokenizer)
  run_dir.write_json("summary.json", summary)
  return summary


def turn_tokens(r) -> tuple:
  return r.response_tokens, r.critique_tokens, r.revision_tokens


@dataclasses.dataclass
class Turn:
  """One turn for every row of a chunk: contexts -> sampled texts, one compiled call."""
  samplers: dict  # max_new_tokens -> the compiled sampler
  params: object
  tokenizer: object
  r: object  # the config's `revise`
  rows: int  # every call samples this many rows (a short last chunk is padded): one compilation

  def __call__(self, contexts: list, max_new_tokens: int, rng) -> list:
    padded = list(contexts) + [""] * (self.rows - len(contexts))
    encoded = encode_prompts(padded, self.tokenizer, self.r.max_context_len, bucket=BUCKET)
    if encoded.truncated:
      logging.warning("%d contexts longer than revise.max_context_len=%d tokens: cut from the left",
                      encoded.truncated, self.r.max_context_len)
    sampler = self.samplers[max_new_tokens]
    out = jax.device_get(sampler(self.params, encoded.tokens, encoded.mask, rng,
                                 SamplingParams.make(self.r.temperature)))
    texts = [self.tokenizer.decode(t[m > 0]) for t, m in zip(out.tokens[:len(contexts)], out.mask)]
    return [cut(text, self.r.stop) for text in texts]


def cut(text: str, stop) -> str:
  """The text before the first stop marker (a model going on to write the next turn itself), stripped."""
  ends = [text.find(marker) for marker in stop if marker in text]
  return text[:min(ends)].strip() if ends else text.strip()


def revise_chunk(turn: Turn, prompts: list, first: int, principles: tuple, r, seed: int) -> list:
  """The records of prompts first, first + 1, ...: each step one call over them all."""
  rng = jax.random.fold_in(jax.random.key(seed), first)
  drawn = [constitution.draw(len(principles), r.principles_per_prompt, seed, first + i) for i in range(len(prompts))]
  humans = [r.prefix + r.human_template.format(prompt=p) for p in prompts]
  responses = initial = turn(humans, r.response_tokens, jax.random.fold_in(rng, 0))
  chains = [[] for _ in prompts]
  for step in range(r.principles_per_prompt):
    asked = [principles[d[step]] for d in drawn]
    critique_contexts = [f"{h} {x}" + r.critique_template.format(critique_request=q.critique)
                         for h, x, q in zip(humans, responses, asked)]
    critiques = turn(critique_contexts, r.critique_tokens, jax.random.fold_in(rng, 2 * step + 1))
    revision_contexts = [f"{c} {y}" + r.revision_template.format(revision_request=q.revision)
                         for c, y, q in zip(critique_contexts, critiques, asked)]
    responses = turn(revision_contexts, r.revision_tokens, jax.random.fold_in(rng, 2 * step + 2))
    for chain, d, q, y, z in zip(chains, drawn, asked, critiques, responses):
      chain.append({"principle": d[step], "critique_request": q.critique, "critique": y,
                    "revision_request": q.revision, "revision": z})
  return [{"prompt": p, "response": z, "initial_response": x, "chain": c}
          for p, z, x, c in zip(prompts, responses, initial, chains)]


def revise_all(cfg, run_dir: RunDir, prompts: list, principles: tuple, turn: Turn) -> list:
  """Every prompt's record, `data.batch_size` prompts at a time from the first not yet written;
  the file is rewritten whole (atomically) after each chunk, so it only ever holds whole chunks."""
  records = read_records(run_dir)
  if records:
    logging.info("%s: %d of %d prompts revised already; going on from there", run_dir.path, len(records), len(prompts))
  for first in range(len(records), len(prompts), cfg.data.batch_size):
    chunk = prompts[first:first + cfg.data.batch_size]
    records += revise_chunk(turn, chunk, first, principles, cfg.revise, cfg.seed)
    run_dir.write_text(REVISIONS, "".join(json.dumps(r) + "\n" for r in records))
    logging.info("revised %d of %d prompts", len(records), len(prompts))
  return records


def read_records(run_dir: RunDir) -> list:
  if not os.path.isfile(run_dir.file(REVISIONS)):
    return []
  with open(run_dir.file(REVISIONS)) as f:
    return [json.loads(line) for line in f]


def summarise(records: list, tokenizer) -> dict:
  """How many records, the mean tokens of each kind of text, and how often a revision changed
  the response it revised."""
  steps = [step for r in records for step in r["chain"]]
  mean_tokens = lambda texts: float(np.mean([len(tokenizer.encode(t)) for t in texts]))
  # What each step revised: the initial response, then the previous step's revision.
  before = [text for r in records for text in [r["initial_response"]] + [s["revision"] for s in r["chain"][:-1]]]
  return {"records": len(records), "principles_per_prompt": len(records[0]["chain"]),
          "mean_initial_response_tokens": mean_tokens([r["initial_response"] for r in records]),
          "mean_critique_tokens": mean_tokens([s["critique"] for s in steps]),
          "mean_revision_tokens": mean_tokens([s["revision"] for s in steps]),
          "revised_fraction": float(np.mean([s["revision"] != b for s, b in zip(steps, before)]))}
