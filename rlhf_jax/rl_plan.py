"""The RL stage's resolved plan: what a run does, decided once from its config (`resolve`).

The algorithm's preset fills the `rl.*` fields (and `kl_coef`) the config leaves None; `critic`
"auto" becomes the critic's source; the reward plan says which sources score a response; the
driver is the iteration that runs. The checks, the trainer, the memory planner, the FLOP count
and the evaluator read these answers and decide none of them again, and the run directory keeps
them (plan.json), so what ran can be read from the run, each field with where its value came
from ("config", "preset", "default").
"""

import dataclasses

from rlhf_jax import rewards
from rlhf_jax.algorithms import presets
from rlhf_jax.algorithms.advantages import ADVANTAGES
from rlhf_jax.algorithms.aggregation import LOSS_AGGREGATIONS
from rlhf_jax.algorithms.policy_losses import POLICY_LOSSES
from rlhf_jax.errors import UserError

CRITICS = ("auto", "reward", "sft", "shared")
# The registries whose member each `rl.*` part names.
PARTS = {"advantage": ADVANTAGES, "policy_loss": POLICY_LOSSES, "loss_aggregation": LOSS_AGGREGATIONS}
# The iteration that runs: one compiled program with in-graph rewards ("fused"), rollout -> host
# scoring -> update ("host", rewards.py functions), the K-deep queue ("off_policy"), or turns
# with an environment on the host around the compiled update ("multi_turn", config.env). An
# external engine (rollout.engine=vllm) samples on the host: "host" or "off_policy".
DRIVERS = ("fused", "host", "off_policy", "multi_turn")
# Who samples the rollouts: our compiled sampler ("jax"), or vLLM's engine, in this process or
# with rollout.devices > 0 in its own ("vllm": interop/vllm_engine.py, interop/vllm_process.py,
# training/rl/engine_rollout.py).
ENGINES = ("jax", "vllm")


@dataclasses.dataclass(frozen=True)
class RLPlan:
  algo: str
  fields: dict  # every rl.* field (loss_reduction folded into loss_aggregation)
  origins: dict  # field (and "kl_coef", "critic") -> "config", "preset", "default"
  kl_coef: float  # the KL penalty's initial (or fixed) beta
  critic: str | None  # "reward", "sft", "shared"; None: the estimator needs no values
  rewards: rewards.RewardPlan
  driver: str  # DRIVERS
  engine: str = "jax"  # ENGINES

  @property
  def uses_reward_model(self) -> bool:
    return self.rewards.model_weight is not None

  @property
  def separate_critic(self) -> bool:
    """A critic model of its own (with its optimizer), not a value head on the policy."""
    return self.critic in ("reward", "sft")

  @property
  def unused_upstream(self) -> set:
    """Upstream stages the run does not need: the reward stage, without the reward model."""
    return set() if self.uses_reward_model else {"reward"}

  @property
  def items(self) -> tuple:
    """What a checkpoint holds: the state's parts the plan gives a value."""
    critic = ("value", "value_opt") if self.separate_critic else ()
    queue = ("pending",) if self.fields["off_policy_steps"] else ()
    return ("policy", "policy_opt", *critic, "kl", "baseline", "rng", *queue)

  def to_json(self) -> dict:
    return dict(algo=self.algo, driver=self.driver, engine=self.engine, critic=self.critic, kl_coef=self.kl_coef,
                rewards=dict(zip(self.rewards.names, self.rewards.weights)), checkpoint_items=list(self.items),
                rl={key: dict(value=value, origin=self.origins.get(key, "config"))
                    for key, value in sorted(self.fields.items())},
                origins=dict(kl_coef=self.origins["kl_coef"], critic=self.origins["critic"]))


def resolve(cfg) -> RLPlan:
  """The plan of an RL stage config; a UserError for an algorithm, critic or part no registry holds."""
  if cfg.algo not in presets.ALGORITHMS:
    raise UserError(f"algo={cfg.algo!r}: choose one of {', '.join(presets.ALGORITHMS)}")
  if cfg.critic not in CRITICS:
    raise UserError(f"critic={cfg.critic!r}: choose one of {', '.join(CRITICS)}")
  fields, origins = presets.resolve_fields(cfg.algo, dict(cfg.rl))
  for part, registry in PARTS.items():
    if fields[part] not in registry:
      unset = " (\"\" no longer means the algorithm's: leave it unset, None)" if fields[part] == "" else ""
      raise UserError(f"rl.{part}={fields[part]!r}: choose one of {', '.join(registry)}{unset}")
  kl_coef, origins["kl_coef"] = presets.kl_coef(cfg.algo, cfg.kl_coef)
  reward_plan = rewards.plan(cfg.reward)
  critic, origins["critic"] = critic_of(cfg.critic, fields["advantage"], reward_plan)
  engine = cfg.get("rollout", {}).get("engine", "jax")
  if engine not in ENGINES:
    raise UserError(f"rollout.engine={engine!r}: choose one of {', '.join(ENGINES)}")
  driver = ("multi_turn" if multi_turn(cfg) else "off_policy" if fields["off_policy_steps"]
            else "host" if reward_plan.host or engine != "jax" else "fused")
  return RLPlan(cfg.algo, fields, origins, kl_coef, critic, reward_plan, driver, engine)


def critic_of(configured: str, advantage: str, reward_plan: rewards.RewardPlan) -> tuple:
  """(source, origin): None where the estimator needs no critic; "auto" starts it from the
  reward model when that is a reward component, else from the SFT policy."""
  if not ADVANTAGES[advantage].needs_critic:
    return None, "preset"
  if configured != "auto":
    return configured, "config"
  return ("reward" if reward_plan.model_weight is not None else "sft"), "default"


def multi_turn(cfg) -> bool:
  """Whether `config.env` names an environment (tools, a factory class or a registered name)."""
  env = cfg.get("env")
  return bool(env and (env.tools or env.factory or env.name))
