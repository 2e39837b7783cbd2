"""Tool calls in a Hugging Face chat template's format (envs/tools.py: ChatTemplateFormat): the
tools listed and the results rendered as transformers renders them, calls parsed from the
model's <tool_call> JSON, and a trajectory whose ids are the sampler's and the template's."""

import json

import jax
import pytest

from rlhf_jax.data import hf_tokenizer
from rlhf_jax.envs import environments, tools
from rlhf_jax.envs.calculator import calculator
from rlhf_jax.errors import UserError
from rlhf_jax.training.rl import multi_turn
from tests.data.test_chat_template import MARKERS, QWEN
from tests.interop import tiny_hf
from tests.training.rl.test_multi_turn import scripted_sampler

# Qwen2.5's chat template with its tools: the schemas listed in the system message, calls as
# <tool_call> JSON, results as <tool_response> in a user turn.
QWEN_TOOLS = (
    "{%- if tools %}{{- '<|im_start|>system\\n' }}{%- if messages[0]['role'] == 'system' %}"
    "{{- messages[0]['content'] }}{%- else %}{{- 'You are a helpful assistant.' }}{%- endif %}"
    "{{- \"\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are "
    "provided with function signatures within <tools></tools> XML tags:\\n<tools>\" }}{%- for tool in tools %}"
    "{{- \"\\n\" }}{{- tool | tojson }}{%- endfor %}{{- \"\\n</tools>\\n\\nFor each function call, return a json "
    "object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\\"name\\\": "
    "<function-name>, \\\"arguments\\\": <args-json-object>}\\n</tool_call><|im_end|>\\n\" }}{%- else %}"
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- endif %}"
    "{%- for message in messages %}{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- elif message.role == 'assistant' %}{{- '<|im_start|>' + message.role }}{%- if message.content %}"
    "{{- '\\n' + message.content }}{%- endif %}{%- for tool_call in message.tool_calls %}"
    "{%- if tool_call.function is defined %}{%- set tool_call = tool_call.function %}{%- endif %}"
    "{{- '\\n<tool_call>\\n{\"name\": \"' }}{{- tool_call.name }}{{- '\", \"arguments\": ' }}"
    "{{- tool_call.arguments | tojson }}{{- '}\\n</tool_call>' }}{%- endfor %}{{- '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}{%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != 'tool') %}"
    "{{- '<|im_start|>user' }}{%- endif %}{{- '\\n<tool_response>\\n' }}{{- message.content }}"
    "{{- '\\n</tool_response>' }}{%- if loop.last or (messages[loop.index0 + 1].role != 'tool') %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}{%- endif %}")


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("qwen_tools"))
  tiny_hf.bpe_tokenizer(directory, MARKERS, chat_template=QWEN_TOOLS)  # <tool_call>: text, as in Qwen's vocabulary
  return directory


def lookup(city: str, days: int = 1) -> str:
  """Looks up the weather.

  Args:
    city: the city's name.
    days: how many days ahead.
  """
  return f"sunny in {city} for {days} days"


def test_tool_schemas_are_transformers_get_json_schema():
  get_json_schema = pytest.importorskip("transformers.utils").get_json_schema
  for fn in (calculator, environments.python, lookup):
    assert tools.json_schema(fn) == get_json_schema(fn)
  with pytest.raises(UserError, match="parameter 'x' needs a type annotation"):
    tools.json_schema(lambda x: x)


def test_calls_are_read_from_the_last_tool_call_json():
  parse = tools.ChatTemplateFormat(render=None).parse
  assert parse('<tool_call>\n{"name": "lookup", "arguments": {"city": "Oslo", "days": 2}}\n</tool_call>') == \
      tools.Call("lookup", (), {"city": "Oslo", "days": 2})
  assert parse('<tool_call>{"name": "f", "arguments": "{\\"a\\": 1}"}</tool_call>') == tools.Call("f", (), {"a": 1})
  assert parse('<tool_call>{"name": "f", "parameters": {"a": 1}}</tool_call>') == tools.Call("f", (), {"a": 1})
  for text in ("no call", "<tool_call>{not json}</tool_call>", '<tool_call>{"name": 3}</tool_call>',
               '<tool_call>["f"]</tool_call>', '<tool_call>{"name": "f", "arguments": [1]}</tool_call>'):
    assert parse(text) is None, text


def test_prompts_and_results_are_rendered_as_transformers_renders_them(qwen_dir):
  transformers = pytest.importorskip("transformers")
  theirs = transformers.AutoTokenizer.from_pretrained(qwen_dir)
  ours = hf_tokenizer.HFTokenizer(qwen_dir)
  user = [{"role": "user", "content": "Weather in Oslo?"}]
  assert ours.chat_prompt("Weather in Oslo?", [tools.json_schema(lookup)]) == theirs.apply_chat_template(
      user, tools=[lookup], tokenize=False, add_generation_prompt=True)
  call = {"type": "function", "function": {"name": "lookup", "arguments": {"city": "Oslo"}}}
  called = user + [{"role": "assistant", "content": "", "tool_calls": [call]}]
  answered = theirs.apply_chat_template(called + [{"role": "tool", "name": "lookup", "content": "sunny"}],
                                        tools=[lookup], tokenize=False, add_generation_prompt=True)
  before = theirs.apply_chat_template(called, tools=[lookup], tokenize=False, add_generation_prompt=False)
  close = before.rindex(tools.TOOL_CALL_CLOSE) + len(tools.TOOL_CALL_CLOSE)
  observation = tools.ChatTemplateFormat(ours.render_messages).observation(tools.Call("lookup", (), {}), "sunny")
  assert answered == before[:close] + observation
  assert observation == "<|im_end|>\n<|im_start|>user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n" \
                        "<|im_start|>assistant\n"


def test_a_template_without_tool_messages_is_one_line():
  def render(messages, generation):  # QWEN's template: no tools, no tool role
    return hf_tokenizer.render_chat(QWEN, messages, {}, generation)
  with pytest.raises(UserError, match="does not render tool calls and tool messages .* env.call_format=tagged"):
    tools.ChatTemplateFormat(render).observation(tools.Call("lookup", (), {}), "x")


def test_a_chat_format_trajectory_is_the_samplers_ids_and_the_templates(qwen_dir):
  tokenizer = hf_tokenizer.HFTokenizer(qwen_dir)
  chat = tools.ChatTemplateFormat(tokenizer.render_messages)
  call = tokenizer.encode('<tool_call>\n{"name": "lookup", "arguments": {"city": "Oslo"}}\n</tool_call>')
  first, second = call + tokenizer.encode(" more"), tokenizer.encode("It is sunny.") + [tokenizer.eos_id]
  sample, _ = scripted_sampler([first, second], width=128)
  env = environments.ToolEnvironment({"lookup": lookup}, call_format=chat)
  row = multi_turn.Trajectory(prompt=tokenizer.encode(tokenizer.chat_prompt("Oslo?")), env=env)
  multi_turn.roll_out([row], sample, jax.random.key(0), tokenizer, multi_turn.TurnLimits(4, 128, 400),
                      close=chat.close)
  observation = tokenizer.encode(chat.observation(tools.Call("lookup", (), {}), lookup("Oslo")))
  assert row.response == call + observation + second  # cut at the call's close, as sampled
  assert row.loss_mask == [1] * len(call) + [0] * len(observation) + [1] * len(second)
  assert (row.turns, row.tool_calls, row.tool_errors, row.ended) == (2, 1, 0, True)
  assert "<tool_response>\nsunny in Oslo for 1 days\n</tool_response>" in row.transcript[1][1]


def test_multi_turn_grpo_on_a_qwen2_checkpoint_lists_its_tools_in_the_chat_prompts(tmp_path):
  datasets = pytest.importorskip("datasets")
  pytest.importorskip("transformers")
  from configs import gsm8k  # pylint: disable=import-outside-toplevel
  from rlhf_jax import stages  # pylint: disable=import-outside-toplevel
  from tests.interop.test_gsm8k import write_gsm8k  # pylint: disable=import-outside-toplevel
  qwen = tmp_path / "qwen2"
  tiny_hf.hf_model("qwen2").save_pretrained(qwen)
  tiny_hf.bpe_tokenizer(str(qwen), MARKERS, chat_template=QWEN_TOOLS)
  write_gsm8k(str(tmp_path), datasets)
  cfg = gsm8k.get_config("tiny")
  cfg.update(dict(init_from=f"hf:{qwen}", max_prompt_len=768, eval_prompts=4))  # the tools system message: 729 tokens
  at = lambda source: f"hf:{tmp_path}/{source.removeprefix('hf:')}"
  cfg.data.update(dict(batch_size=8, source=at(gsm8k.TRAIN), eval_source=at(gsm8k.TEST)))
  cfg.env.update(dict(tools=("calculator",), max_turns=2, turn_tokens=8))  # call_format auto: the template's
  cfg.eval.k, cfg.sample.max_new_tokens = 1, 32
  cfg.train.update(dict(num_steps=1, eval_every=1, checkpoint_every=1, log_every=1))
  summary = stages.run(cfg, str(tmp_path / "run"))
  assert summary["step"] == 1 and 1 <= summary["eval/turns"] <= 2 and summary["data/truncated_prompts"] == 0
  samples = [json.loads(line) for line in open(tmp_path / "run" / "samples" / "step_000001.jsonl")]
  assert '"name": "calculator"' in samples[0]["prompt"] and "<tool_call>" in samples[0]["prompt"]
