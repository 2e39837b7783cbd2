"""The RL stage: every method against the reward model, with a per-token KL penalty to the
frozen SFT policy.

  python -m rlhf_jax.main --config=configs/rl.py:tiny --workdir=runs/ppo
  python -m rlhf_jax.main --config=configs/rl.py:tiny --workdir=runs/rloo --config.algo=rloo

(`configs/ppo.py` is this file's PPO preset, under the name the stage had before.)

`algo` picks the method (rlhf_jax/algorithms/presets.py): ppo (default; GAE on a critic), or
the critic-free reinforce (moving-average baseline), rloo (leave-one-out over k samples per
prompt), grpo (group-normalised), remax (greedy-response baseline), dr_grpo, dapo, gspo, cispo
and reinforce_pp (REINFORCE++); all share sampling, scoring, the KL penalty, evaluation and
metrics. An algorithm is an advantage estimator, a policy loss and a loss aggregation, each
also its own switch (`rl.advantage`, `rl.policy_loss`, `rl.loss_aggregation`); `rl` fields
left unset (None) take the algorithm's preset, and a value set, 0 and False included, wins.
The run directory's plan.json says what each field resolved to and where it came from. `data.batch_size` counts responses
per iteration, so every algorithm samples as many: k = 4 means batch_size / 4 prompts.

With `init_from`/`reward_from` empty, the upstream stages (pretrain -> SFT -> reward model)
first run, or are reused when finished, under WORKDIR/upstream/. Defaults follow Huang et
al. 2024: gamma 1, lambda 0.95, clip 0.2, value clip 0.2, value coefficient 0.1, 4 epochs,
whitened advantages, Adam eps 1e-5, temperature 0.7 in sampling and in recomputed log-probs,
-1 for a response without EOS.
"""

import ml_collections

from configs import common
from configs import reward


def get_config(preset: str = "tiny"):
  """Presets: the model sizes (common.py), and `tools`, the RL stage of configs/pipeline.py:tools
  on its own: multi-turn GRPO with the calculator, from that pipeline's SFT run (init_from)."""
  if preset == "tools":
    from configs import pipeline  # pylint: disable=import-outside-toplevel (pipeline imports this file)
    return pipeline.tools().rl
  c = common.base_config("rl", preset)
  small = common.is_small(preset)
  c.reward_from = ""  # a finished reward run; "" = the upstream one
  c.judge = "vader"  # the gold judge of evaluation (never seen by the policy)
  # The value function: "reward" a separate critic started from the reward model (Huang et al.'s
  # default), "sft" a separate critic started from the SFT policy, "shared" a value head on the
  # policy backbone (one forward pass, half the parameters; the value loss trains the trunk too).
  c.critic = "auto"  # "reward" when the reward model is a reward component, else "sft"
  # > 1: seeds seed .. seed + vmap_seeds - 1 as one vmapped program, each in WORKDIR/seed_S.
  c.vmap_seeds = 1
  # Initial (or fixed) beta of the per-token KL penalty. Measured on tiny: 0.2 with PPO at
  # lr 1.5e-5 gives gold 0.785 (SFT 0.128) at KL 1.24 with fluent text. (On the earlier
  # byte-level model, beta 0.05 with lr 3e-5 reached KL 34 with degenerate text.) The
  # critic-free methods, one update per batch, want lr ~1e-4 here (docs/experiments.md's showcase).
  c.kl_coef = ml_collections.config_dict.placeholder(float)  # None: the algorithm's (0 for DAPO), else 0.2
  c.eval_prompts = 64
  # A verifiable task's evaluation also samples k >= 2 responses per prompt: pass@k, mean@k, maj@k.
  # judge_model (hf:DIR, a local causal LM): each response against the prompt's reference (its
  # judge_reference_field column; "": the reference policy's response) in both orders,
  # `eval/win_rate` (rlhf_jax/pairwise_judge.py; judge_template "" is the DPO paper's TL;DR prompt).
  c.eval = ml_collections.ConfigDict(dict(k=0, judge_model="", judge_reference_field="label", judge_template=""))
  c.max_prompt_len = 16  # tokens: openings are 2-6 words
  c.data.batch_size = 64 if small else 256  # responses per iteration
  c.sample.max_new_tokens = 80 if small else 256
  c.optim.update(dict(lr=1.5e-5 if small else 1e-6, warmup_steps=0, final_lr_ratio=1.0, eps=1e-5,
                      weight_decay=0.0, b2=0.999))
  c.value_optim = c.optim.copy_and_resolve_references()
  c.value_optim.lr = 1e-4 if small else 1e-5
  c.train.update(dict(num_steps=20 if small else 1000, log_every=5 if small else 10,
                      eval_every=10 if small else 100, checkpoint_every=10 if small else 100))
  c.algo = "ppo"
  unset = lambda kind: ml_collections.config_dict.placeholder(kind)  # None: the algorithm's (presets.py)
  c.rl = ml_collections.ConfigDict(dict(
      # The algorithm's parts: names in algorithms/advantages.py, policy_losses.py, aggregation.py.
      advantage=unset(str), policy_loss=unset(str), loss_aggregation=unset(str),
      loss_reduction=unset(str),  # the earlier name of loss_aggregation (token, sequence, sequence_mean)
      samples_per_prompt=unset(int), epochs=unset(int), minibatches=unset(int) if small else 4, accum_steps=1,
      # Scoring and updates on the trajectories packed into rows by length (training/rl/packing.py):
      # exact, and the work of the tokens rather than of the padding; microbatches of pack_rows
      # rows (0: an eighth of a padded microbatch's).
      packing=False, pack_rows=0,
      # The clip range [1 - clip_eps, 1 + clip_eps_high] (clip_eps_high unset: symmetric).
      clip_eps=unset(float), clip_eps_high=unset(float), dual_clip=3.0,
      value_clip=0.2, vf_coef=0.1, ent_coef=0.0, gamma=1.0, lam=0.95, baseline_decay=0.9,
      scale_by_std=unset(bool),  # GRPO's group std (Dr. GRPO: False)
      dynamic_sampling=unset(bool),  # DAPO: groups whose k scores are all equal get weight 0
      overlong_buffer=unset(float),  # DAPO: a soft length penalty over this last fraction of the budget
      # DAPO's refill: extra prompts sampled per iteration; the update keeps batch_size / k
      # groups, informative ones first (needs dynamic sampling).
      oversample=0,
      kl_kind="k1", kl_in_loss=False, kl_target=6.0, kl_horizon=10000.0, adaptive_kl=False,
      no_eos_penalty=-1.0, penalise_no_eos=True,
      # Off-policy (rlhf_jax/training/rl/off_policy.py): updates train on responses sampled this many
      # iterations before; the critic-free methods weight stale tokens by is_correction (none,
      # tis: min(w, is_cap), clip: clip(w, 1 / is_cap, is_cap)); PPO's ratio is against the sampler.
      off_policy_steps=0, is_correction="none", is_cap=2.0,
      # The sampler/trainer mismatch (algorithms/rollout_correction.py), logged every iteration
      # (rollout/*), corrected by a weight on each token's policy loss: none, token_tis,
      # sequence_tis (capped at rollout_correction_cap), token_reject, sequence_reject (outside
      # rollout_correction_bounds dropped); PPO's ratio stays against the trainer's log-probs.
      rollout_correction="none", rollout_correction_cap=2.0, rollout_correction_bounds=(0.5, 2.0),
      # With one minibatch the first update differentiates the scoring pass (jax.vjp) instead of
      # running the policy and critic forward again: exact; False runs the separate pass.
      reuse_scoring_pass=True,
      # Router replay (R3, an MoE policy): the static sampler records each token's experts, and the
      # policy's log-prob recomputation and every update route the tokens to them (the router's
      # logits and gates stay live, so it still learns); the reference routes live. Either way
      # rollout/router_agreement logs how often the live router agrees with the sampler's.
      router_replay=False))
  # The sampler on the last `devices` devices, on a mesh of its own (needs off_policy_steps >= 1);
  # 0 keeps it on the training devices. `engine`: jax (ours, compiled into the iteration) or vllm
  # (vLLM's offline engine, weights pushed after each update; docs/vllm.md), started with
  # `vllm`'s settings (interop/vllm_engine.py: EngineSettings). vllm with devices=0 runs in this
  # process; with devices=N in a process of its own (interop/vllm_process.py) on the last N CPU
  # cores or GPUs, sampling the next batch while the trainer updates. A LoRA policy is pushed
  # merged into full weights, or with vllm.lora_adapters its base once and then its adapters alone
  # (interop/vllm_lora.py: Llama-style projections).
  c.rollout = ml_collections.ConfigDict(dict(
      devices=0, mesh=dict(data=-1, fsdp=1, tensor=1), engine="jax",
      vllm=dict(dtype="float32", kv_cache_gib=0.25, gpu_memory_utilization=0.3, sleep=False, enforce_eager=True,
               timeout_s=1800.0, lora_adapters=False)))
  # The score: a weighted sum of reward sources (rlhf_jax/rewards.py): "model" (the reward run's
  # model), a built-in checker (exact_match, gsm8k) or a Python function (PATH.py:NAME or
  # module:NAME, called as TRL calls reward functions); weights () = 1 each. Without "model" no
  # reward model is needed, built or loaded (nor its upstream stage run).
  # Token rewards, from the response's ids alone, run inside the compiled iteration: length
  # (-tokens / max_new_tokens) and format (1 where the response holds format_text's ids).
  # A function's NaN or inf: "error" stops the run naming it; "guard" lets the update's guard
  # refuse it (train.on_nonfinite then stops or skips, counted in nonfinite_rewards).
  c.reward = ml_collections.ConfigDict(dict(fns=("model",), weights=(), nonfinite="error", format_text=""))
  # Multi-turn RL (rlhf_jax/envs/, training/rl/multi_turn.py, docs/multi_turn.md): with `tools`
  # (built-ins by name: calculator, python; or PATH.py:NAME, TRL's `tools=[fn]`) or `factory`
  # (PATH.py:CLASS, TRL's `environment_factory`), the policy and the environment take turns: at
  # most `max_turns` policy turns of `turn_tokens` each, the whole response (turns and
  # observations) within sample.max_new_tokens. A tool call has `tool_seconds`; a failed one
  # adds `tool_error_penalty` to the trajectory's reward. Empty: one-turn responses. Calls are
  # written in `call_format`: tagged (<call>f(x)</call>, the embedded tokenizers'), chat_template
  # (<tool_call> JSON, answered by the HF chat template's tool message), auto (chat_template with
  # data.chat_template, else tagged).
  c.env = ml_collections.ConfigDict(dict(name="", tools=(), factory="", max_turns=4, turn_tokens=32,
                                         tool_seconds=5.0, tool_output_chars=256, tool_error_penalty=0.0,
                                         call_format="auto"))
  c.upstream = {"reward": reward.get_config(preset)}
  c.upstream_paths = {"init_from": "sft", "reward_from": "reward"}
  return c
