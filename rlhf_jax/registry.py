"""Adding a member to a registry (advantages, policy losses, aggregations, preference losses,
algorithms, rewards): from the package's own modules, or from a user's file that `config.plugins`
names (plugins.py). A name is registered once, so a plugin cannot silently replace a method."""

from rlhf_jax.errors import UserError


def add(registry: dict, kind: str, name: str, member) -> None:
  if not isinstance(name, str) or not name.isidentifier():
    raise UserError(f"a {kind} needs a name that is an identifier, not {name!r}")
  if name in registry and registry[name] is not member:
    raise UserError(f"{kind} {name!r} is registered already: choose another name")
  registry[name] = member
