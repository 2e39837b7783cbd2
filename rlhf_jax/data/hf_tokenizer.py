"""Hugging Face tokenizers behind our Tokenizer protocol (rlhf_jax/data/tokenizers.py).

The vocabulary comes from `tokenizer.json` (the `tokenizers` library), else `tokenizer.model`
(SentencePiece), else GPT-2's `vocab.json` + `merges.txt`. BOS, EOS and PAD come from
tokenizer_config.json / special_tokens_map.json (token strings), else config.json (ids):

- EOS is required: sampling stops on it and every training sequence ends with it.
- BOS: our batches and prompts always start with one. A tokenizer without one (Qwen2) gets
  config.json's bos_token_id, else its EOS, the document separator GPT-2 uses both ways.
- PAD: GPT-2 has none, so PAD is EOS. That is sound because nothing here tells real tokens
  from padding by id: batches carry masks (rlhf_jax/data/batches.py), the sampler returns a
  response mask and only fills slots after a row's EOS with PAD (rlhf_jax/models/sampling.py),
  and the RL step finds "ended with EOS" under that mask. (HF's *ForSequenceClassification,
  by contrast, finds the last token by `input_ids != pad_token_id`: see rlhf_jax.interop.hf.)

A response ends at EOS or at any other id generation_config.json's `eos_token_id` lists (a
chat checkpoint's end of turn: Gemma 3 IT's EOS is <eos> but its turns end with <end_of_turn>,
and it lists both), as transformers' `generate` and vLLM stop: `stop_ids`. EOS itself stays the
one id a demonstration ends with and an export names.

Saved into a run directory as our `tokenizer.json` ({"kind": "hf", resolved ids}) beside a
copy of the HF files in `hf/` (HF's own file is also called tokenizer.json).

The chat template (tokenizer_config.json's `chat_template`, or `chat_template.jinja`) renders a
prompt as a user message (`data.chat_template=True`) as transformers' `apply_chat_template`
does: jinja2's sandbox, its `raise_exception`, `tojson` and `strftime_now`, the special tokens'
strings as variables.
"""

import datetime
import json
import os
import shutil
from collections.abc import Iterable

from rlhf_jax.errors import UserError

FILES_DIR = "hf"
CHAT_TEMPLATE_FILE = "chat_template.jinja"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt", "tokenizer_config.json",
                   "special_tokens_map.json", "added_tokens.json", CHAT_TEMPLATE_FILE)
SPECIALS = ("bos", "eos", "pad")


class TokenizersBackend:
  """tokenizer.json, or GPT-2's vocab.json + merges.txt, through the `tokenizers` library."""

  def __init__(self, directory: str):
    try:
      import tokenizers  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise UserError("Hugging Face tokenizers need the tokenizers package: pip install -e '.[hf]'") from None
    path = os.path.join(directory, "tokenizer.json")
    if os.path.isfile(path):
      self.tokenizer = tokenizers.Tokenizer.from_file(path)
    else:
      self.tokenizer = tokenizers.ByteLevelBPETokenizer(os.path.join(directory, "vocab.json"),
                                                        os.path.join(directory, "merges.txt"))
    self.vocab_size = int(self.tokenizer.get_vocab_size(with_added_tokens=True))

  def encode(self, text: str) -> list[int]:
    return list(self.tokenizer.encode(text, add_special_tokens=False).ids)

  def decode(self, ids: list[int]) -> str:
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  def token_to_id(self, token: str):
    return self.tokenizer.token_to_id(token)

  def id_to_token(self, token_id: int) -> str:
    return self.tokenizer.id_to_token(token_id)


class SentencePieceBackend:
  """tokenizer.model (Llama 1/2, Mistral)."""

  def __init__(self, directory: str):
    import sentencepiece  # pylint: disable=g-import-not-at-top
    self.processor = sentencepiece.SentencePieceProcessor(model_file=os.path.join(directory, "tokenizer.model"))
    self.vocab_size = int(self.processor.get_piece_size())

  def encode(self, text: str) -> list[int]:
    return list(self.processor.encode(text))

  def decode(self, ids: list[int]) -> str:
    return self.processor.decode(ids)

  def token_to_id(self, token: str):
    token_id = self.processor.piece_to_id(token)
    return token_id if self.processor.id_to_piece(token_id) == token else None

  def id_to_token(self, token_id: int) -> str:
    return self.processor.id_to_piece(token_id)


def backend_for(directory: str):
  if os.path.isfile(os.path.join(directory, "tokenizer.json")):
    return TokenizersBackend(directory)
  if os.path.isfile(os.path.join(directory, "tokenizer.model")):
    return SentencePieceBackend(directory)
  if os.path.isfile(os.path.join(directory, "vocab.json")) and os.path.isfile(os.path.join(directory, "merges.txt")):
    return TokenizersBackend(directory)
  raise UserError(f"{directory} has no tokenizer.json, tokenizer.model or vocab.json + merges.txt")


def is_hf_tokenizer_dir(directory: str) -> bool:
  """An HF model or tokenizer directory (not one of our saved tokenizers, which hold our own
  tokenizer.json with a "kind")."""
  path = os.path.join(directory, "tokenizer.json")
  if os.path.isfile(path):
    try:
      return "model" in _read_json(path)  # HF's; ours has a "kind"
    except ValueError:
      return False  # unreadable: our loader names the file
  return any(os.path.isfile(os.path.join(directory, f)) for f in ("tokenizer.model", "vocab.json"))


def _read_json(path: str) -> dict:
  if not os.path.isfile(path):
    return {}
  with open(path, encoding="utf-8") as f:
    value = json.load(f)
  return value if isinstance(value, dict) else {}


def refuse_remote_code(config: dict, path: str) -> None:
  if config.get("auto_map") or config.get("trust_remote_code"):
    raise UserError(f"{path} asks for tokenizer code shipped with the checkpoint (auto_map); "
                     "rlhf_jax never runs checkpoint code")


def _token_string(value):
  """A special token as tokenizer_config.json writes it: a string, or an AddedToken dict."""
  return value.get("content") if isinstance(value, dict) else value


def special_ids(directory: str, backend) -> dict:
  """{'bos': id, 'eos': id, 'pad': id}, resolved as the module docstring says."""
  tokenizer_config = _read_json(os.path.join(directory, "tokenizer_config.json"))
  refuse_remote_code(tokenizer_config, os.path.join(directory, "tokenizer_config.json"))
  strings = {**tokenizer_config, **_read_json(os.path.join(directory, "special_tokens_map.json"))}
  model_config = _read_json(os.path.join(directory, "config.json"))
  ids = {}
  for name in SPECIALS:
    token = _token_string(strings.get(f"{name}_token"))
    if token is not None:
      ids[name] = backend.token_to_id(token)
      if ids[name] is None:
        raise UserError(f"{directory}: {name}_token {token!r} is not in the vocabulary")
      continue
    value = model_config.get(f"{name}_token_id")
    ids[name] = value[0] if isinstance(value, list) and value else value
  if ids["eos"] is None:
    raise UserError(f"{directory}: no EOS token (eos_token in tokenizer_config.json or eos_token_id in config.json)")
  ids["bos"] = ids["eos"] if ids["bos"] is None else ids["bos"]
  ids["pad"] = ids["eos"] if ids["pad"] is None else ids["pad"]  # see the module docstring
  return {name: int(value) for name, value in ids.items()}


def generation_stop_ids(directory: str) -> tuple:
  """generation_config.json's `eos_token_id` (an id or a list), as a tuple; () without one."""
  value = _read_json(os.path.join(directory, "generation_config.json")).get("eos_token_id")
  if value is None:
    return ()
  return tuple(int(v) for v in (value if isinstance(value, list) else [value]))


class HFTokenizer:
  """A Hugging Face tokenizer with our special-token ids; `files` is where its HF files are."""

  name = "hf"

  def __init__(self, files: str, ids: dict = None, stop_ids: tuple = None):
    self.files = os.path.abspath(files)
    self._backend = backend_for(self.files)
    ids = ids or special_ids(self.files, self._backend)
    self.bos_id, self.eos_id, self.pad_id = (int(ids[name]) for name in SPECIALS)
    stop_ids = generation_stop_ids(self.files) if stop_ids is None else stop_ids
    # Every id a response may end on, EOS first (the module docstring).
    self.stop_ids = tuple(dict.fromkeys((self.eos_id, *(int(i) for i in stop_ids))))
    self.vocab_size = self._backend.vocab_size
    self.specials = {self.bos_id, self.eos_id, self.pad_id}

  @classmethod
  def load(cls, directory: str, config: dict) -> "HFTokenizer":
    """What `save` wrote: the HF files in `directory/hf`, the ids in our config (a run saved
    before `stop_ids` were saved stops at EOS alone)."""
    return cls(os.path.join(directory, config.get("files", FILES_DIR)), {n: config[f"{n}_id"] for n in SPECIALS},
               tuple(config.get("stop_ids", ())))

  def encode(self, text: str) -> list[int]:
    return self._backend.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    kept = [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) not in self.specials]
    return self._backend.decode(kept)

  def token_to_id(self, token: str):
    return self._backend.token_to_id(token)

  def id_to_token(self, token_id: int) -> str:
    return self._backend.id_to_token(token_id)

  def chat_prompt(self, text, tools: list | None = None) -> str:
    """`text` as the user's message in the tokenizer's chat template (or `text`'s messages, a
    list), with the assistant's turn opened (add_generation_prompt), less a leading BOS: our
    prompts start with BOS's id. `tools`: JSON schemas the template lists (a tool-using
    policy's prompt)."""
    messages = [{"role": "user", "content": text}] if isinstance(text, str) else text
    rendered = self.render_messages(messages, True, tools)
    bos = special_strings(self.files).get("bos_token")
    return rendered[len(bos):] if bos and rendered.startswith(bos) else rendered

  def render_messages(self, messages: list, add_generation_prompt: bool, tools: list | None = None) -> str:
    """`messages` rendered by the tokenizer's chat template, as transformers' apply_chat_template."""
    template = chat_template(self.files)
    if template is None:
      raise UserError(f"data.chat_template=True, but the tokenizer in {self.files} has no chat template")
    return render_chat(template, messages, special_strings(self.files), add_generation_prompt, tools)

  def copy_files(self, directory: str) -> None:
    """The HF tokenizer files (not config.json) into `directory`."""
    os.makedirs(directory, exist_ok=True)
    for name in TOKENIZER_FILES:
      source = os.path.join(self.files, name)
      if os.path.isfile(source) and os.path.abspath(os.path.join(directory, name)) != source:
        shutil.copyfile(source, os.path.join(directory, name))

  def save(self, directory: str) -> None:
    self.copy_files(os.path.join(directory, FILES_DIR))
    config = {"kind": self.name, "files": FILES_DIR, "vocab_size": self.vocab_size,
              "stop_ids": list(self.stop_ids), **{f"{n}_id": getattr(self, f"{n}_id") for n in SPECIALS}}
    with open(os.path.join(directory, "tokenizer.json"), "w", encoding="utf-8") as f:
      json.dump(config, f, indent=2, sort_keys=True)

  def __repr__(self) -> str:
    return f"HFTokenizer({self.files}, vocab_size={self.vocab_size})"


def special_strings(directory: str) -> dict:
  """The special tokens' strings ({"bos_token": "<s>", ...}) the config files name."""
  strings = {**_read_json(os.path.join(directory, "tokenizer_config.json")),
             **_read_json(os.path.join(directory, "special_tokens_map.json"))}
  names = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
  return {name: _token_string(strings[name]) for name in names if _token_string(strings.get(name)) is not None}


def chat_template(directory: str):
  """tokenizer_config.json's chat template (a string, or the "default" of named ones), else
  chat_template.jinja's; None without one."""
  template = _read_json(os.path.join(directory, "tokenizer_config.json")).get("chat_template")
  if isinstance(template, list):
    template = {t.get("name"): t.get("template") for t in template}.get("default")
  path = os.path.join(directory, CHAT_TEMPLATE_FILE)
  if template is None and os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      template = f.read()
  return template


def render_chat(template: str, messages: list, strings: dict, add_generation_prompt: bool = True,
                tools: list | None = None) -> str:
  try:
    import jinja2.sandbox  # pylint: disable=g-import-not-at-top
    import jinja2.ext  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserError("chat templates need jinja2: pip install -e '.[hf]'") from None

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):  # not jinja's HTML-escaping one
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                     extensions=[jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals.update(raise_exception=raise_exception,
                     strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
  try:
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            tools=tools, documents=None, **strings)
  except jinja2.exceptions.TemplateError as e:
    raise UserError(f"the tokenizer's chat template failed: {e}") from None
