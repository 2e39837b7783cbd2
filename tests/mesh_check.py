"""Steps of pretraining, PPO (one-turn, host-scored and multi-turn) and DPO on 8-device meshes against the same steps on one device.

Run by tests/test_sharding.py in a child process with 8 simulated CPU devices
(`python -m tests.mesh_check`). Every state is built and every step compiled by the code the
trainers use (shape-first init, shardings from the logical rules, jitted with in/out
shardings), on each mesh in turn. Prints one JSON object: for each stage and mesh, the
largest relative difference of the step metrics, and the relative difference of the param
updates, from the one-device run, and the per-device shapes of two params. With the argument
`moe` (`python -m tests.mesh_check moe`): the same for an MoE model's pretraining step with its
experts split over 4 devices, and its layer's collectives (`moe_report`).
"""

import dataclasses
import functools
import json
import math
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding

from configs import common, dpo, pretrain, rl
from rlhf_jax import rewards, sharding
from rlhf_jax.data.prompts import Prompts, prompt_batch
from rlhf_jax.data.tokenizers import ByteTokenizer
from rlhf_jax.models.moe import MoeMlp
from rlhf_jax.models.transformer import Transformer
from rlhf_jax.training.core import setup
from rlhf_jax.training.core.optim import learning_rate_schedule, make_optimizer
from rlhf_jax.training.core.state import model_params
from rlhf_jax.training.core.steps import compile_lm_steps
from rlhf_jax.training.policy import frozen
from rlhf_jax.training.policy.policy_state import policy_params
from rlhf_jax.training.preference.dpo_steps import compile_dpo_steps
from rlhf_jax.training.rl import multi_turn, rl_setup, rl_state, rl_trainer, turn_cache
from rlhf_jax.training.rl.host_rewards import compile_host_iteration
from rlhf_jax.training.rl.rl_steps import RLConfig
from tests.conftest import LLAMA, small_model
from tests.training.rl.echo_environment import Echo

# (data, fsdp, tensor): one device, then plain data parallel, fully sharded data parallel, and
# tensor parallel (4 heads, so at most 4 ways) with 2-way data parallel.
MESHES = {"one": (1, 1, 1), "data": (8, 1, 1), "fsdp": (1, 8, 1), "tensor": (2, 1, 4)}
# Expert parallelism: 4 experts one per fsdp device (the default rule expert -> fsdp), the rows
# over data 2 x fsdp 4; then with tensor 2 splitting each expert's hidden units too.
EXPERT_MESHES = {"expert": (2, 4, 1), "expert_tensor": (1, 4, 2)}
RULES = common.DEFAULT_RULES
TOKENIZER = ByteTokenizer()
MODEL = small_model(vocab_size=264)  # the byte vocabulary, padded to split 8 ways
MOE = small_model(vocab_size=264, **dict(LLAMA, n_experts=4, experts_per_token=2, d_expert=128, router_aux_coef=0.01))
LR = 1e-3  # large enough that the updates, not the initial params, dominate the comparison
ROWS, LENGTH = 16, 32


def make_mesh(name: str):
  data, fsdp, tensor = {**MESHES, **EXPERT_MESHES}[name]
  sizes = ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))
  return sharding.make_mesh(sizes, jax.devices()[:data * fsdp * tensor])


def stage_config(module):
  cfg = module.get_config("tiny")
  cfg.optim.update(dict(lr=LR, warmup_steps=0))
  return cfg


def random_tokens(seed: int, shape):
  return np.random.default_rng(seed).integers(0, 256, shape).astype(np.int32)


def pretrain_steps(mesh, model_cfg=MODEL) -> tuple[list, dict]:
  cfg = stage_config(pretrain)
  model, tx = Transformer(model_cfg), make_optimizer(cfg.optim, 10)
  state, shardings = setup.init_state(model, tx, mesh, RULES, seed=0)
  steps = compile_lm_steps(model, tx, learning_rate_schedule(cfg.optim, 10), shardings, mesh, cfg, TOKENIZER)
  initial, metrics = jax.device_get(state.params), []
  for step in range(2):
    tokens = random_tokens(step, (ROWS, LENGTH + 1))
    ones = np.ones((ROWS, LENGTH), np.int32)
    batch = dict(inputs=tokens[:, :-1], targets=tokens[:, 1:], mask=ones, loss_mask=ones)
    state, m = steps.train(state, sharding.put_batch(batch, mesh))
    metrics.append(jax.device_get(m))
  return metrics, {"initial": initial, "final": jax.device_get(state.params), "placed": model_params(state)}


def lora_steps(mesh) -> tuple[list, dict]:
  """The LM steps with LoRA adapters (rank 4) on a frozen base: only the adapters train."""
  return pretrain_steps(mesh, dataclasses.replace(MODEL, lora_rank=4))


def ppo_setup(cfg, mesh, **rl_fields):
  """PPO's models (policy, critic, scorer), optimizers and state placed on `mesh`, the proxy score
  and the RLConfig (8 new tokens, 2 epochs x 2 minibatches, plus `rl_fields`)."""
  policy = Transformer(MODEL)
  critic = Transformer(dataclasses.replace(MODEL, heads=("value",)))
  scorer = Transformer(dataclasses.replace(MODEL, heads=("reward",)))
  txs = make_optimizer(cfg.optim, 10), make_optimizer(cfg.value_optim, 10)
  models = {"policy": policy, "value": critic, "reward": scorer}
  state, shardings = rl_state.place_state(models, *txs, mesh, RULES, seed=0, kl_coef=0.05)
  score_fn = functools.partial(frozen.proxy_scores, scorer=scorer, gain=1.0, bias=0.0)
  rl_cfg = RLConfig(max_new_tokens=8, stop_ids=TOKENIZER.stop_ids, pad_id=TOKENIZER.pad_id, algo="ppo", epochs=2,
                    minibatches=2, temperature=1.0, **rl_fields)
  return rl_setup.Models(policy, critic, scorer), txs, state, shardings, score_fn, rl_cfg


def rl_iteration(mesh) -> tuple[list, dict]:
  cfg = stage_config(rl)
  cfg.value_optim.lr = LR
  models, (policy_tx, value_tx), state, shardings, score_fn, rl_cfg = ppo_setup(cfg, mesh)
  iteration = rl_trainer.compile_iteration(shardings, mesh, RULES, models, policy_tx, value_tx, score_fn, rl_cfg,
                                           vmapped=False)
  prompts = sharding.put_batch({"tokens": random_tokens(7, (ROWS, 8)), "mask": np.ones((ROWS, 8), np.int32)}, mesh)
  initial = jax.device_get({"policy": state.policy, "value": state.value})
  state, metrics = iteration(state, prompts["tokens"], prompts["mask"])
  final = jax.device_get({"policy": state.policy, "value": state.value})
  return [jax.device_get(metrics)], {"initial": initial, "final": final, "placed": state.policy}


def aligned(prompts, completions, completion_ids, answer, **unused):
  """1 where a row's answer column is its own prompt's ("p7" -> "a7") and its text is its ids'."""
  return [float(a == "a" + p[1:] and c == TOKENIZER.decode(ids))
          for p, c, ids, a in zip(prompts, completions, completion_ids, answer)]


def evens(prompts, completions, completion_ids, **unused):  # what each row sampled, as the one device did
  return [sum(i % 2 == 0 for i in ids) / 8 for ids in completion_ids]


def rl_host_iteration(mesh) -> tuple[list, dict]:
  """GRPO (k = 4) scored by host functions: the rows each process decodes and scores must be
  the rows of its prompts, through the shuffle and the k samples, on every mesh."""
  cfg = stage_config(rl)
  policy = Transformer(MODEL)
  policy_tx = make_optimizer(cfg.optim, 10)
  state, shardings = rl_state.place_state({"policy": policy}, policy_tx, None, mesh, RULES, seed=0, kl_coef=0.05)
  host = [rewards.HostReward("aligned", aligned, 1.0), rewards.HostReward("evens", evens, 1.0)]
  rl_cfg = RLConfig(max_new_tokens=8, stop_ids=TOKENIZER.stop_ids, pad_id=TOKENIZER.pad_id, algo="grpo",
                    advantage="grpo", samples_per_prompt=4, temperature=1.0, host_rewards=("aligned", "evens"),
                    model_weight=None, penalise_no_eos=False)  # 8 random tokens never end: keep the scores
  batch, count = 8, 12  # prompts (8 ways on the data mesh) of more than one batch: a shuffled subset
  prompts = Prompts([f"p{i}" for i in range(count)], random_tokens(7, (count, 8)), np.ones((count, 8), np.int32),
                    columns={"answer": [f"a{i}" for i in range(count)]})
  iteration = compile_host_iteration(shardings, mesh, RULES, rl_setup.Models(policy, None, None), policy_tx,
                                     None, None, rl_cfg, host=host, with_model=False, prompts=prompts,
                                     tokenizer=TOKENIZER)
  initial = jax.device_get({"policy": state.policy})
  state, metrics = iteration(state, prompt_batch(prompts, 1, batch, mesh))
  final = jax.device_get({"policy": state.policy})
  return [jax.device_get(metrics)], {"initial": initial, "final": final, "placed": state.policy}


def multi_turn_setup(mesh, sample_mesh=None, **rl_fields) -> dict:
  """GRPO (k = 4) on trajectories of up to 2 turns of 4 tokens, the echo environment answering
  each: the policy, its optimizer, its state on `mesh`, the reward, the RLConfig (and
  `rl_fields`), 8 prompts and their rollouts, sampled on `sample_mesh` (default `mesh`)."""
  cfg = stage_config(rl)
  policy = Transformer(MODEL)
  policy_tx = make_optimizer(cfg.optim, 10)
  state, shardings = rl_state.place_state({"policy": policy}, policy_tx, None, mesh, RULES, seed=0, kl_coef=0.05)
  limits = multi_turn.TurnLimits(max_turns=2, turn_tokens=4, max_tokens=32)  # room for 2 turns and an answer
  rl_cfg = RLConfig(max_new_tokens=limits.max_tokens, stop_ids=TOKENIZER.stop_ids, pad_id=TOKENIZER.pad_id, algo="grpo",
                    advantage="grpo", samples_per_prompt=4, temperature=1.0, host_rewards=("evens",),
                    model_weight=None, penalise_no_eos=False, **rl_fields)
  prompts = Prompts([f"p{i}" for i in range(8)], random_tokens(7, (8, 8)), np.ones((8, 8), np.int32), columns={})
  sample_mesh = sample_mesh or mesh
  params = jax.tree.map(lambda s: NamedSharding(sample_mesh, s.spec), policy_params(shardings))
  sampler = turn_cache.turn_sampler(policy, params, sample_mesh, RULES, turn_tokens=limits.turn_tokens,
                                    capacity=8 + limits.max_tokens + limits.turn_tokens, stop_ids=TOKENIZER.stop_ids,
                                    pad_id=TOKENIZER.pad_id)
  rollouts = multi_turn.Rollouts(sampler, lambda: Echo(None, None), prompts, TOKENIZER, limits, temperature=1.0)
  return dict(models=rl_setup.Models(policy, None, None), policy_tx=policy_tx, state=state, shardings=shardings,
              host=[rewards.HostReward("evens", evens, 1.0)], rl_cfg=rl_cfg, prompts=prompts, rollouts=rollouts)


def rl_multi_turn_iteration(mesh) -> tuple[list, dict]:
  """The host's turns between the compiled sampler and update (multi_turn_setup's) give the
  one-device run's trajectories on every mesh."""
  built = multi_turn_setup(mesh)
  iteration = multi_turn.compile_multi_turn_iteration(built["shardings"], mesh, RULES, built["models"],
                                                      built["policy_tx"], None, built["rl_cfg"],
                                                      rollouts=built["rollouts"], host=built["host"])
  state = built["state"]
  initial = jax.device_get({"policy": state.policy})
  state, metrics = iteration(state, prompt_batch(built["prompts"], 0, 8, mesh))
  final = jax.device_get({"policy": state.policy})
  return [jax.device_get(metrics)], {"initial": initial, "final": final, "placed": state.policy}


def preference_pairs(seed: int) -> dict:
  """Pairs of random right-padded responses after a shared prompt of 8 tokens."""
  rng = np.random.default_rng(seed)
  prompt, batch = random_tokens(seed, (ROWS, 8)), {}
  for name in ("chosen", "rejected"):
    lengths = rng.integers(12, LENGTH + 1, ROWS)[:, None]
    positions = np.arange(LENGTH)
    batch[name] = np.concatenate([prompt, random_tokens(seed + 1, (ROWS, LENGTH - 8))], 1)
    batch[f"{name}_mask"] = (positions < lengths).astype(np.int32)
    batch[f"{name}_response"] = ((positions >= 8) & (positions < lengths)).astype(np.int32)
  batch["loss_mask"] = np.ones((ROWS, 1), np.int32)
  return batch


def dpo_steps(mesh) -> tuple[list, dict]:
  cfg = stage_config(dpo)
  policy, scorer = Transformer(MODEL), Transformer(dataclasses.replace(MODEL, heads=("reward",)))
  tx = make_optimizer(cfg.optim, 10)
  state, shardings = rl_state.place_state({"policy": policy, "reward": scorer}, tx, None, mesh, RULES, seed=0,
                                            kl_coef=0.0)
  # The policy moved off the reference, so the DPO margins (and their gradients) are not all 0.
  state = state.replace(policy=jax.tree.map(lambda p: p * 1.1, state.policy))
  train, _ = compile_dpo_steps(policy, tx, cfg, shardings, mesh)
  initial, metrics = jax.device_get(state.policy), []
  for step in range(2):
    state, m = train(state, sharding.put_batch(preference_pairs(step), mesh))
    metrics.append(jax.device_get(m))
  return metrics, {"initial": initial, "final": jax.device_get(state.policy), "placed": state.policy}


STAGES = {"pretrain": pretrain_steps, "lora": lora_steps, "rl": rl_iteration, "rl_host": rl_host_iteration,
          "rl_multi_turn": rl_multi_turn_iteration, "dpo": dpo_steps}
# The rows split as on the data mesh: their time is better spent elsewhere (LoRA's adapters are
# laid out by the rules as the weights are: fsdp and tensor are the meshes that split them).
SKIPPED = {"rl_host": ("fsdp",), "rl_multi_turn": ("fsdp",), "lora": ("data",)}


def relative_difference(a, b) -> float:
  """|a - b| / |b| in the L2 norm over every leaf of two trees of the same structure.

  A norm, not an elementwise maximum: Adam's first steps move each param by about lr times
  the sign of its gradient, so a gradient that cancels to ~0 may flip sign on float noise
  alone (different summation orders on different meshes) and move that one param the other
  way; the update as a whole still agrees to ~1e-6.
  """
  pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(jax.tree.leaves(a),
                                                                                  jax.tree.leaves(b))]
  return float(np.sqrt(sum(np.sum((x - y) ** 2) for x, y in pairs) / sum(np.sum(y ** 2) for _, y in pairs)))


MULTI_TURN = ("turns", "policy_token_fraction")


def differences(result, reference) -> dict:
  """The largest relative difference of the step metrics and the relative difference of the
  param updates (`relative_difference`) from the reference run."""
  metrics, params = result
  ref_metrics, ref_params = reference
  # Relative, or absolute below 1e-2: some metrics are differences that cancel (DPO's margin,
  # the chosen minus the rejected implicit reward, ~0.003 here), whose float noise (~2e-7) is
  # then large relative to them but not to the values they come from.
  metric_diff = max(abs(float(m[k]) - float(r[k])) / max(abs(float(r[k])), 1e-2)
                    for m, r in zip(metrics, ref_metrics) for k in r
                    if np.ndim(r[k]) == 0 and not k.startswith("time/"))  # wall-clock times differ
  update = lambda p: jax.tree.map(lambda a, b: np.asarray(a, np.float64) - b, p["final"], p["initial"])
  return {"metrics": metric_diff, "updates": relative_difference(update(params), update(ref_params))}


def compare(result, reference) -> dict:
  metrics, params = result
  up = params["placed"]["layer_0"]["mlp"]["up"]
  shard = lambda name: list(up[name].addressable_shards[0].data.shape) if name in up else None
  return {**differences(result, reference),
          "up_kernel_shard": shard("kernel"), "up_lora_shards": [shard("lora_a"), shard("lora_b")],
          "embedding_shard": list(params["placed"]["embed"]["embedding"].addressable_shards[0].data.shape),
          "loss": float(metrics[-1]["loss"]) if "loss" in metrics[-1] else None,
          **{k: float(v) for k, v in metrics[-1].items() if k.startswith("reward/") or k in MULTI_TURN}}


COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")


def largest_collective(hlo: str) -> list:
  """[shape, elements] of the largest result of any collective in a compiled module's text."""
  shapes = []
  for line in hlo.splitlines():
    found = re.search(rf"= (.*?) (?:{'|'.join(COLLECTIVES)})(?:-start)?\(", line)
    shapes += re.findall(r"\w+\[[\d,]*\]", found.group(1)) if found else []
  size = lambda shape: math.prod(int(n) for n in re.findall(r"\d+", shape.split("[")[1]))
  return max(([s, size(s)] for s in shapes), key=lambda pair: pair[1])


def moe_layers() -> dict:
  """An MoE layer's value and gradients (its params and input) on each expert mesh against one
  device; whether it ran as shard_map (models/moe.py:expert_parallel); the largest collective
  of the compiled pass and whether it all-gathers an expert kernel whole."""
  layer = MoeMlp(MOE)
  x = jax.random.normal(jax.random.key(1), (ROWS, LENGTH, MOE.d_model))
  boxed = jax.eval_shape(lambda: layer.init(jax.random.key(0), x))["params"]
  # Routers far from uniform, so that every expert's share differs from the others'.
  params = jax.tree.map(lambda w: 20 * w, nn.meta.unbox(layer.init(jax.random.key(0), x)["params"]))
  grad = jax.value_and_grad(lambda p, x: jnp.sum(jnp.sin(layer.apply({"params": p}, x)[0])), argnums=(0, 1))
  value, grads = jax.jit(grad)(params, x)
  kernels = [f"f32[{','.join(map(str, params[n].shape))}]" for n in ("gate", "down")]
  report = {}
  for name in EXPERT_MESHES:
    mesh = make_mesh(name)
    shardings = (sharding.logical_shardings(boxed, mesh, RULES), sharding.batch_sharding(mesh))
    lowered = jax.jit(sharding.with_rules(grad, mesh, RULES), in_shardings=shardings).lower(params, x)
    compiled = lowered.compile()
    found, found_grads = compiled(*jax.device_put((params, x), shardings))
    hlo = compiled.as_text()
    report[name] = {"value": abs(float(found) - float(value)) / abs(float(value)),
                    "grads": relative_difference(found_grads, grads), "shard_map": "manual_computation" in lowered.as_text(),
                    "largest_collective": largest_collective(hlo),
                    "kernel_gathered": any(re.search(rf"= {re.escape(k)}\S* all-gather", hlo) for k in kernels)}
  return report


def moe_report() -> dict:
  """The MoE pretraining step (router aux loss included) on the expert mesh against one
  device, with its expert kernels' per-device shapes, and `moe_layer` on every expert mesh."""
  reference = pretrain_steps(make_mesh("one"), MOE)
  result = pretrain_steps(make_mesh("expert"), MOE)
  mlp = result[1]["placed"]["layer_0"]["mlp"]
  step = {**differences(result, reference), "router_aux_loss": float(result[0][-1]["router_aux_loss"]),
          "shards": {name: list(w.addressable_shards[0].data.shape) for name, w in mlp.items()}}
  return {"step": step, **moe_layers()}


def main():
  """The stages' report, or with the argument `moe` the MoE's alone: one child each, so the two
  tests that read them run on either xdist worker without one repeating the other's minute."""
  assert jax.device_count() >= 8, "run with XLA_FLAGS=--xla_force_host_platform_device_count=8"
  if sys.argv[1:] == ["moe"]:
    print(json.dumps(moe_report()))
    return
  report = {}
  for stage, run in STAGES.items():
    reference = run(make_mesh("one"))
    report[stage] = {mesh: compare(run(make_mesh(mesh)), reference) for mesh in MESHES
                     if mesh not in SKIPPED.get(stage, ())}
  print(json.dumps(report))


if __name__ == "__main__":
  main()
