"""User code that registers methods: the files (or importable modules) `config.plugins` names,
imported before a run's checks. A researcher's advantage estimator, policy loss, loss
aggregation, preference loss, algorithm or reward lives in their own file and registers itself
with the registry's `register`, without editing the package (docs/extending.md):

  # my_methods.py
  from rlhf_jax.algorithms import advantages
  def median_baseline(x, hp): ...
  advantages.register("median_baseline", median_baseline, min_group_size=2)

  python -m rlhf_jax.main --config=configs/rl.py:tiny --workdir=runs/median \\
    --config.plugins="('my_methods.py',)" --config.algo=grpo --config.rl.advantage=median_baseline

Each is imported once per process (every process of a multi-host run imports it).
"""

import hashlib
import importlib
import importlib.util
import os
import sys

from rlhf_jax.errors import UserError

_LOADED: dict = {}  # path or module name -> module


def load(specs) -> None:
  """Imports each plugin: a PATH.py or a module name. A missing file or a plugin that raises is a
  UserError naming it."""
  for spec in specs:
    load_module(spec)


def load_module(spec: str, kind: str = "plugins"):
  """The module a PATH.py or a module name names (`import_module_at`); a UserError naming `kind`
  (the config field) if it is missing or raises."""
  if spec.endswith(".py") and not os.path.isfile(spec):
    raise UserError(f"{kind}: {spec} not found")
  try:
    return import_module_at(spec)
  except Exception as e:  # the user's code, whatever it raises: one line naming it
    raise UserError(f"{kind}: {spec} failed to import: {type(e).__name__}: {e}") from e


def import_module_at(spec: str):
  """The module a PATH.py or a module name names, imported once per process (plugins, reward
  functions, tools and environments from users' files all come through here); raises what the
  import raises."""
  key = os.path.abspath(spec) if spec.endswith(".py") else spec
  if key in _LOADED:
    return _LOADED[key]
  if not spec.endswith(".py"):
    module = importlib.import_module(spec)
  else:
    name = "rlhf_jax_plugin_" + hashlib.sha1(key.encode()).hexdigest()[:12]
    module_spec = importlib.util.spec_from_file_location(name, key)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # so pickling and dataclasses in the file find their module
    try:
      module_spec.loader.exec_module(module)
    except BaseException:
      del sys.modules[name]
      raise
  _LOADED[key] = module
  return module


def of(config) -> tuple:
  """Every plugin a command's config names: its own and its stages' and upstream stages'."""
  found, pending = [], [config]
  while pending:
    section = pending.pop()
    found += [p for p in section.get("plugins", ()) if p not in found]
    pending += [section[n] for n in section.get("stages", ()) if n in section]
    pending += list((section.get("upstream") or {}).values())
  return tuple(found)
