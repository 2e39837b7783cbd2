"""The README and docs/ say what the code does: every config, preset and `--config.FIELD` their
commands name exists, the generated config reference is current, and every relative link resolves.
"""

import functools
import importlib
import os
import re

import ml_collections
import pytest

from rlhf_jax import config_reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")
# Written by another change: a link to it is expected before the page exists.
PENDING = {os.path.join(DOCS, "extending.md")}

# configs/NAME.py, with its preset after a colon; NAME in capitals is a pattern in prose (configs/STAGE.py).
CONFIG_SPEC = re.compile(r"configs/(\w+)\.py(?::(\w+))?")
OVERRIDE = re.compile(r"--config\.([A-Za-z_][\w.]*)")
CODE_SPAN = re.compile(r"`([^`]+)`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.M)


def markdown_files() -> list:
  return ["README.md"] + sorted(os.path.join("docs", name) for name in os.listdir(DOCS) if name.endswith(".md"))


def read(relative: str) -> str:
  with open(os.path.join(ROOT, relative)) as f:
    return f.read()


def without_shell_comment(line: str) -> str:
  return re.sub(r"(^|\s)#\s.*$", "", line)


def command_segments(text: str) -> list:
  """The pieces of a page a command can sit in: each line of a fenced block (backslash-newline
  continuations joined, `&&` chains split), each inline code span, and each other prose line."""
  segments, prose, fenced = [], [], None
  for line in text.replace("\\\n", " ").split("\n"):
    if line.lstrip().startswith("```"):
      fenced = None if fenced is not None else []
      continue
    if fenced is not None:
      segments.extend(part.strip() for part in without_shell_comment(line).split("&&"))
    else:
      prose.append(line)
  prose_text = "\n".join(prose)
  segments.extend(" ".join(span.split()) for span in CODE_SPAN.findall(prose_text))
  segments.extend(line for line in CODE_SPAN.sub("", prose_text).split("\n") if CONFIG_SPEC.search(line))
  return segments


@functools.lru_cache(maxsize=None)
def load_config(name: str, preset: str | None):
  module = importlib.import_module(f"configs.{name}")
  return module.get_config(preset) if preset else module.get_config()


def missing_field(config, field: str) -> str | None:
  """The first part of a dotted path that `config` does not have, or None."""
  node = config
  for depth, key in enumerate(field.split(".")):
    if not isinstance(node, ml_collections.ConfigDict) or key not in node:
      return ".".join(field.split(".")[:depth + 1])
    node = node[key]
  return None


def problems_of(segment: str) -> list:
  """What is wrong with the configs, presets and overrides one command names."""
  specs = list(CONFIG_SPEC.finditer(segment))
  problems = []
  for index, spec in enumerate(specs):
    name, preset = spec.group(1), spec.group(2)
    if name.isupper():  # configs/STAGE.py: a pattern, not a file
      continue
    if not os.path.exists(os.path.join(ROOT, "configs", name + ".py")):
      problems.append(f"configs/{name}.py does not exist")
      continue
    end = specs[index + 1].start() if index + 1 < len(specs) else len(segment)
    overrides = [field.rstrip(".") for field in OVERRIDE.findall(segment[spec.end():end])]
    if not preset and not overrides:  # a file named in prose (configs/common.py has no get_config)
      continue
    try:
      config = load_config(name, preset)
    except Exception as e:  # an unknown preset is a ValueError, KeyError, ... depending on the file
      problems.append(f"configs/{name}.py:{preset}: get_config fails: {type(e).__name__}: {e}")
      continue
    for field in overrides:
      if field.isupper():  # --config.FIELD=VALUE: a pattern
        continue
      missing = missing_field(config, field)
      if missing:
        problems.append(f"--config.{field}: configs/{name}.py:{preset or '(default)'} has no field {missing}")
  return problems


@pytest.mark.parametrize("page", markdown_files())
def test_commands_name_configs_presets_and_fields_that_exist(page):
  problems = [f"{page}: `{segment}`: {problem}"
              for segment in command_segments(read(page)) for problem in problems_of(segment)]
  assert not problems, "\n".join(problems)


def test_config_reference_is_current():
  assert read(os.path.join("docs", "config_reference.md")) == config_reference.render(), \
      "run python -m rlhf_jax.config_reference --out docs/config_reference.md"


def anchor(heading: str) -> str:
  """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def anchors_of(path: str) -> set:
  with open(path) as f:
    return {anchor(heading) for heading in HEADING.findall(re.sub(r"```.*?```", "", f.read(), flags=re.S))}


def broken_links(page: str) -> list:
  """Relative links of `page` whose file (or, in a markdown file, heading) does not exist."""
  broken = []
  text = re.sub(r"```.*?```", "", read(page), flags=re.S)
  for target in LINK.findall(text):
    if re.match(r"[a-z]+:", target):  # https:, mailto:
      continue
    path, _, fragment = target.partition("#")
    resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(page), path)) if path else os.path.join(ROOT, page)
    if resolved in PENDING and not os.path.exists(resolved):
      continue
    if not os.path.exists(resolved):
      broken.append(f"{page}: ({target}): no file {os.path.relpath(resolved, ROOT)}")
    elif fragment and resolved.endswith(".md") and fragment not in anchors_of(resolved):
      broken.append(f"{page}: ({target}): no heading #{fragment} in {os.path.relpath(resolved, ROOT)}")
  return broken


@pytest.mark.parametrize("page", markdown_files())
def test_relative_links_resolve(page):
  broken = broken_links(page)
  assert not broken, "\n".join(broken)


def test_readme_links_every_docs_page():
  linked = {os.path.normpath(target.partition("#")[0]) for target in LINK.findall(read("README.md"))}
  pages = {os.path.join("docs", name) for name in os.listdir(DOCS) if name.endswith(".md")}
  pages |= {os.path.relpath(path, ROOT) for path in PENDING}
  assert not pages - linked, f"README.md has no link to {sorted(pages - linked)}"
