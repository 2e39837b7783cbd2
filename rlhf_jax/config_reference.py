"""docs/config_reference.md, generated from the configs themselves so that it cannot drift.

  python -m rlhf_jax.config_reference                                # markdown on stdout
  python -m rlhf_jax.config_reference --out docs/config_reference.md

For every config file in configs/: each field (a dotted path, as `--config.FIELD=VALUE` names it),
its value in the `tiny` preset, and its meaning: the comment written beside (a trailing `#`) or
directly above the line that sets it, in that file or in the files it builds on (configs/common.py
sets the shared fields; a preset's function, its own and those it builds on: config_comments.py). A config built on another file's config (ppo.py on rl.py) lists only the
fields that differ; the pipeline lists its own fields and its stage sections' differences.
tests/test_docs.py checks that the page equals what this writes.
"""

import argparse
import ast
import importlib
import os
import sys

import ml_collections

from configs import common
from rlhf_jax.config_comments import CONFIGS, attribute_path, config_path, field_comments, function, preset_function, \
    source_of

PRESET = "tiny"
SHARED = "common"  # pieces every config builds on, not a config of its own
# The stages in pipeline order first; any other config file after them, by name.
ORDER = ("pretrain", "sft", "reward", "rl", "dpo", "best_of_n")
# Each upstream stage's config is that stage's own table: listed whole, `upstream` would repeat them.
LEFT_OUT = ("upstream",)
UNSET = "None (unset)"
ABSENT = object()  # a field one of two compared configs lacks

HEADER = """# Config reference

Generated from `configs/*.py` by `python -m rlhf_jax.config_reference --out docs/config_reference.md`:
do not edit it by hand (`tests/test_docs.py` checks that it is current). Values are each config's
`get_config("tiny")`; a meaning is the comment beside or directly above the line of `configs/` that
sets the field (empty where there is none). Override a field with `--config.FIELD=VALUE`, in a
pipeline `--config.STAGE.FIELD=VALUE`. `None (unset)` is decided at run time: an `rl.*` field or
`kl_coef` left None takes the algorithm's preset (the RL run directory's `plan.json` says what each
resolved to and where it came from), while 0, False and "" are values like any other. `upstream`
(the configs of the stages a stage starts from, each in its own table here) is left out.
"""


# --- Which files set a config's fields ---


def config_names() -> list:
  names = sorted(file[:-3] for file in os.listdir(CONFIGS)
                 if file.endswith(".py") and not file.startswith("_") and file[:-3] != SHARED)
  return [name for name in ORDER if name in names] + [name for name in names if name not in ORDER]


def starting_value(name: str, section: str):
  """The expression `configs/NAME.py`'s get_config builds its config from (`c = EXPR`, or
  `return EXPR`); with `section`, the one it sets that section to (`c.SECTION = EXPR`)."""
  get_config = function(ast.parse(source_of(name)), "get_config")
  target = [section] if section else []
  for statement in get_config.body if get_config else []:
    if isinstance(statement, ast.Assign) and [attribute_path(t) for t in statement.targets] == [target]:
      return statement.value
    if isinstance(statement, ast.Return) and not section:
      return statement.value
  return None


def built_on(name: str, section: str = "") -> tuple[str, str, str] | None:
  """(file, section, function) of the config `configs/NAME.py` (or its `section`) starts from:
  `c = rl.get_config(preset)` -> ("rl", "", "get_config"), `return pipeline.arithmetic().rl` ->
  ("pipeline", "rl", "arithmetic").
  None: built from configs/common.py alone, or from nothing of another config file."""
  value, sections = starting_value(name, section), []
  while isinstance(value, ast.Attribute):  # pipeline.arithmetic().rl: the `rl` section of its config
    sections.insert(0, value.attr)
    value = value.value
  if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
          and isinstance(value.func.value, ast.Name)):
    return None
  module = value.func.value.id
  if module == SHARED or not os.path.exists(config_path(module)):
    return None
  return module, ".".join(sections), value.func.attr


def sources(name: str) -> list:
  """(file, section, function) of every file that sets fields of `configs/NAME.py`'s config,
  most specific first, configs/common.py (the whole file) last."""
  found, current, section = [(name, "", "get_config")], name, ""
  while True:
    base = built_on(current, section)
    if base is None:
      break
    found.append(base)
    current, section, _ = base
  return found + [(SHARED, "", "")]


def meaning(field: str, chain: list) -> str:
  """The first comment along `chain` on a line setting `field`, else on one setting the section
  holding it (`c.log = ...  # W&B for every stage`). A file that sets a section of its config writes
  the section too (`c.rl.kl_coef`), or a computed key for every section (`c[stage].data`)."""
  parts = field.split(".")
  for length in range(len(parts), 0, -1):
    path = ".".join(parts[:length])
    for name, section, entry in chain:
      written, comments = (f"{section}.{path}" if section else path), field_comments(name, entry)
      for key in [written] + (["*." + written.split(".", 1)[1]] if "." in written else []):
        if key in comments:
          return comments[key]
  return ""


# --- Values ---


def load(name: str, preset: str = PRESET):
  return importlib.import_module(f"configs.{name}").get_config(preset)


def flatten(config, prefix: str = "") -> dict:
  """Dotted path -> value, in the config's (sorted) order; `upstream` left out."""
  values = {}
  for key, value in config.items():
    if not prefix and key in LEFT_OUT:
      continue
    path = prefix + key
    if isinstance(value, ml_collections.ConfigDict):
      values.update(flatten(value, path + "."))
    else:
      values[path] = value
  return values


def shown(value) -> str:
  if value is ABSENT:
    return "(absent)"
  return UNSET if value is None else f"`{value!r}`"


def cell(text: str) -> str:
  return text.replace("|", "\\|").replace("\n", " ")


def extra_presets(name: str) -> list:
  """Presets a config file handles itself beyond the model presets (`preset == "arithmetic"`)."""
  found = set()
  for node in ast.walk(ast.parse(source_of(name))):
    if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "preset":
      found.update(c.value for c in node.comparators if isinstance(c, ast.Constant) and isinstance(c.value, str))
  return sorted(found - set(common.MODELS))


# --- Tables ---


def full_table(values: dict, field_meaning) -> list:
  lines = ["| field | value | meaning |", "|---|---|---|"]
  lines += [f"| `{field}` | {cell(shown(value))} | {cell(field_meaning(field))} |" for field, value in values.items()]
  return lines


def difference_table(values: dict, base: dict, base_name: str, field_meaning) -> list:
  fields = [field for field in sorted(set(base) | set(values)) if values.get(field, ABSENT) != base.get(field, ABSENT)]
  if not fields:
    return [f"No field differs from `{base_name}`."]
  lines = [f"| field | here | `{base_name}` | meaning |", "|---|---|---|---|"]
  for field in fields:
    here, there = shown(values.get(field, ABSENT)), shown(base.get(field, ABSENT))
    lines.append(f"| `{field}` | {cell(here)} | {cell(there)} | {cell(field_meaning(field))} |")
  return lines


def shared_values() -> dict:
  """The fields configs/common.py gives every stage config (but `stage`, which names it)."""
  values = flatten(common.base_config("pretrain", PRESET))
  del values["stage"]
  return values


def stage_section(name: str) -> list:
  """Where a stage config differs from the shared fields, or, built on another config file, from
  that file's config."""
  chain = sources(name)
  roots = [file for file, _, _ in chain[1:] if file != SHARED]
  if roots:
    base, base_name = flatten(load(roots[-1])), f"{roots[-1]}.py:{PRESET}"
    intro = f"Built on `configs/{roots[-1]}.py`; the fields whose values differ from its:"
  else:
    base, base_name = shared_values(), "common.py"
    intro = "Its own fields, and the shared ones it sets apart from `configs/common.py`'s values:"
  table = difference_table(flatten(load(name)), base, base_name, lambda field: meaning(field, chain))
  return [f"## configs/{name}.py:{PRESET}", "", intro, ""] + table


def stage_sections(config) -> list:
  """The keys of a pipeline config that hold a stage's config, in the order the stages run."""
  order = list(config.get("stages", ()))
  sections = [key for key, value in config.items() if isinstance(value, ml_collections.ConfigDict) and "stage" in value]
  return sorted(sections, key=lambda key: (order.index(key) if key in order else len(order), key))


def pipeline_meaning(name: str, config, entry: str):
  """A pipeline field's meaning: the pipeline file's own comment (in `entry`, the preset's
  function, and what it builds on), else its stage's config files'."""
  stages = stage_sections(config)

  def field_meaning(field):
    stage, _, rest = field.partition(".")
    found = meaning(field, [(name, "", entry)])
    return found or (meaning(rest, sources(config[stage].stage)) if stage in stages else "")
  return field_meaning


def without_sections(values: dict, sections: list) -> dict:
  return {field: value for field, value in values.items() if field.split(".")[0] not in sections}


def pipeline_section(name: str) -> list:
  """A pipeline's own fields, where each stage section differs from that stage's config, and
  where the file's other presets (`arithmetic`) differ from its `tiny`."""
  config = load(name)
  stages, field_meaning = stage_sections(config), pipeline_meaning(name, config, "get_config")
  lines = [f"## configs/{name}.py:{PRESET}", "", "Its own fields:", ""]
  lines += full_table(without_sections(flatten(config), stages), field_meaning)
  for stage in stages:
    stage_name = config[stage].stage
    lines += ["", f"Section `{stage}`: `configs/{stage_name}.py:{PRESET}` without its `upstream`."]
    values = {f"{stage}.{field}": value for field, value in flatten(config[stage]).items()}
    base = {f"{stage}.{field}": value for field, value in flatten(load(stage_name)).items()}
    if values != base:
      lines += ["", *difference_table(values, base, f"{stage_name}.py:{PRESET}", field_meaning)]
  for preset in extra_presets(name):
    variant = load(name, preset)
    dropped = [stage for stage in stages if stage not in variant]
    lines += ["", f"## configs/{name}.py:{preset}", "", f"The fields that differ from `configs/{name}.py:{PRESET}`"
              + "".join(f", without the section `{stage}`" for stage in dropped) + ":", ""]
    lines += difference_table(without_sections(flatten(variant), dropped), without_sections(flatten(config), dropped),
                              f"{name}.py:{PRESET}", pipeline_meaning(name, variant, preset_function(name, preset)))
  return lines


def render() -> str:
  names = config_names()
  lines = [HEADER, "## Shared fields (configs/common.py)", "",
           "Every stage config has these fields, with these values unless its own table below says otherwise:", ""]
  lines += full_table(shared_values(), lambda field: meaning(field, [(SHARED, "", "")])) + [""]
  for name in names:
    is_pipeline = load(name).get("stage") == "pipeline"
    lines += (pipeline_section if is_pipeline else stage_section)(name) + [""]
  return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", help="write the markdown here instead of stdout")
  args = parser.parse_args(argv)
  text = render()
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  else:
    sys.stdout.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
