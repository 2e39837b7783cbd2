"""Chat templates: a prompt as the user's message, rendered as transformers renders it."""

import os

import pytest

from configs import common
from rlhf_jax.data import hf_tokenizer, prompts
from rlhf_jax.data.tokenizers import ByteTokenizer
from rlhf_jax.errors import UserError
from tests.interop import tiny_hf

# Qwen2.5's template (tools left out): a default system message, <|im_start|> turns.
QWEN = ("{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + "
        "'<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
        "{%- endif %}{%- for message in messages %}{%- if message.role == 'user' or (message.role == 'system' and "
        "not loop.first) or message.role == 'assistant' %}{{- '<|im_start|>' + message.role + '\\n' + "
        "message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}"
        "{{- '<|im_start|>assistant\\n' }}{%- endif %}")
# Llama 3's: it writes BOS itself.
LLAMA3 = ("{{- bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
          "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
# Gemma 3's: BOS written by the template, a system message folded into the first user turn, the
# assistant's role called "model", contents trimmed.
GEMMA3 = ("{{ bos_token }}{%- if messages[0]['role'] == 'system' -%}{%- if messages[0]['content'] is string -%}"
          "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}{%- else -%}"
          "{%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
          "{%- set loop_messages = messages[1:] -%}{%- else -%}{%- set first_user_prefix = \"\" -%}"
          "{%- set loop_messages = messages -%}{%- endif -%}{%- for message in loop_messages -%}"
          "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
          "{{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}"
          "{%- endif -%}{%- if (message['role'] == 'assistant') -%}{%- set role = \"model\" -%}{%- else -%}"
          "{%- set role = message['role'] -%}{%- endif -%}"
          "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}"
          "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
          "{%- elif message['content'] is iterable -%}{%- for item in message['content'] -%}"
          "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- elif item['type'] == 'text' -%}"
          "{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- else -%}"
          "{{ raise_exception(\"Invalid content type\") }}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}"
          "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}")
MARKERS = ("<|im_start|>", "<|im_end|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<start_of_turn>",
           "<end_of_turn>")
QUESTIONS = ["What is 47 + 38?", "  Tom has 3 apples. How many?  "]


@pytest.fixture(scope="module", params=["qwen", "llama3", "gemma3"])
def tokenizer_dir(request, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp(request.param))
  if request.param == "qwen":  # the template in tokenizer_config.json
    tiny_hf.bpe_tokenizer(directory, MARKERS, chat_template=QWEN)
  else:  # in chat_template.jinja, as transformers 5 saves it
    tiny_hf.bpe_tokenizer(directory, MARKERS)
    with open(os.path.join(directory, "chat_template.jinja"), "w", encoding="utf-8") as f:
      f.write(LLAMA3 if request.param == "llama3" else GEMMA3)
  return directory


def test_chat_prompts_match_transformers_rendering_and_tokens(tokenizer_dir):
  transformers = pytest.importorskip("transformers")
  theirs = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
  ours = hf_tokenizer.HFTokenizer(tokenizer_dir)
  for question in QUESTIONS:
    messages = [{"role": "user", "content": question}]
    text = theirs.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = list(theirs.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False))
    rendered = ours.chat_prompt(question)
    if text.startswith(tiny_hf.EOS):  # Llama 3's BOS: ours is the id every prompt starts with
      assert rendered == text[len(tiny_hf.EOS):] and [ours.bos_id, *ours.encode(rendered)] == ids
    else:
      assert rendered == text and ours.encode(rendered) == ids
    assert question.strip() in rendered and rendered.rstrip().endswith(("assistant", "<|end_header_id|>", "model"))
  system = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": QUESTIONS[0]}]
  assert ours.render_messages(system, True) == theirs.apply_chat_template(system, tokenize=False,
                                                                          add_generation_prompt=True)


def test_rl_and_sft_prompts_are_rendered_with_data_chat_template(tokenizer_dir, tmp_path):
  ours = hf_tokenizer.HFTokenizer(tokenizer_dir)
  cfg = common.base_config("rl", "tiny")
  cfg.data.update(dict(source="embedded:arithmetic", prompt_template="{question}", embedded_docs=40, eval_docs=4,
                       chat_template=True))
  cfg.eval_prompts, cfg.max_prompt_len = 4, 200
  held_out = prompts.prompt_set(cfg, ours, "eval")
  assert all(t == ours.chat_prompt(t_plain) for t, t_plain in
             zip(held_out.texts, [r.fields["question"] for r in prompts.sources.load_records(cfg.data, "eval")]))
  assert held_out.tokens[0, -len(ours.encode(held_out.texts[0])) - 1] == ours.bos_id  # BOS, then the rendered turn
  sft = common.base_config("sft", "tiny")
  sft.data.update(cfg.data)
  sft.sample.num_prompts = 2
  from rlhf_jax.training.lm import lm_trainer
  assert lm_trainer.prepare_data(sft, ours).prompts.texts == held_out.texts[:2]  # SFT's prompts: the same turns
  ours.save(str(tmp_path))  # a run directory's copy keeps the template
  ids = {f"{name}_id": getattr(ours, f"{name}_id") for name in hf_tokenizer.SPECIALS}
  assert hf_tokenizer.HFTokenizer.load(str(tmp_path), ids).chat_prompt("hi") == ours.chat_prompt("hi")
  with pytest.raises(UserError, match="needs a Hugging Face tokenizer with a chat template"):
    prompts.as_chat(["hi"], ByteTokenizer(), cfg.data)


def test_a_tokenizer_without_a_template_is_a_clear_error(tmp_path):
  tiny_hf.bpe_tokenizer(str(tmp_path))
  with pytest.raises(UserError, match="has no chat template"):
    hf_tokenizer.HFTokenizer(str(tmp_path)).chat_prompt("hi")
