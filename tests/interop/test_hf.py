"""Hugging Face interop: tiny random GPT-2, GPT-NeoX, Llama (GQA), Qwen2 (qkv biases), Qwen3,
Gemma 3 (sliding layers), Qwen3-MoE and Mixtral models built
with `transformers` on the CPU give the same logits and greedy samples through our import,
exports read back bit for bit, unsupported checkpoints are refused, tokenizers keep their
special tokens, and `init_from=hf:DIR` runs a stage."""

import dataclasses
import functools
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from rlhf_jax import stages
from rlhf_jax.data.hf_tokenizer import HFTokenizer
from rlhf_jax.data.tokenizers import SentencePieceTokenizer, load_tokenizer
from rlhf_jax.errors import UserError
from rlhf_jax.interop import hf, hf_config, hf_tensors
from rlhf_jax.interop.export import export_run
from rlhf_jax.models.sampling import SamplingParams, sample
from rlhf_jax.models.transformer import Transformer
from tests.conftest import make_tiny_sft, start_of, xla_flags
from tests.interop import tiny_hf
from tests.test_main import ROOT

TOLERANCE = 1e-4  # max abs logit difference, f32


def save_bf16(model, directory, **kwargs):
  """`model` saved in bfloat16; returns what HF reads back from that, in f32 (rather than
  `model` cast, whose rotary tables the casts would round)."""
  import torch  # pylint: disable=g-import-not-at-top
  model.to(torch.bfloat16).save_pretrained(directory, **kwargs)
  return type(model).from_pretrained(directory, dtype=torch.float32).eval()


def save_bin_bf16(model, directory):
  """A plain pytorch_model.bin (bf16) beside config.json, as older checkpoints come."""
  import torch  # pylint: disable=g-import-not-at-top
  model.config.save_pretrained(directory)
  state = {k: v.to(torch.bfloat16) for k, v in model.state_dict().items()}
  torch.save(state, os.path.join(directory, "pytorch_model.bin"))
  return type(model).from_pretrained(directory, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """name -> (directory, the HF model whose logits it must give)."""
  root, found = tmp_path_factory.mktemp("hf"), {}
  for kind in ("gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "gemma3", *tiny_hf.MOE):
    model = tiny_hf.hf_model(kind)
    model.save_pretrained(root / kind)
    found[kind] = (str(root / kind), model)
  found["llama_sharded_bf16"] = (str(root / "sharded"), save_bf16(tiny_hf.hf_model("llama", seed=1), root / "sharded",
                                                                  max_shard_size="40KB"))
  found["gpt2_bin_bf16"] = (str(root / "bin"), save_bin_bf16(tiny_hf.hf_model("gpt2", seed=2), str(root / "bin")))
  found["gemma3_multimodal"] = (str(root / "gemma3_multimodal"), tiny_hf.gemma3_multimodal())  # its text model read
  found["gemma3_multimodal"][1].save_pretrained(root / "gemma3_multimodal")
  return found


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
  directory = tmp_path_factory.mktemp("bpe")
  tiny_hf.bpe_tokenizer(str(directory))
  return str(directory)


ARCHITECTURES = {"gpt2": dict(position="learned", norm="layernorm", bias="all", tie_embeddings=True),
                 "gpt_neox": dict(position="rope", norm="layernorm", bias="all", tie_embeddings=False),
                 "llama": dict(position="rope", norm="rmsnorm", bias="none", n_kv_heads=2, rope_theta=500.0),
                 "qwen2": dict(position="rope", norm="rmsnorm", bias="qkv", n_kv_heads=2),
                 "qwen3": dict(position="rope", norm="rmsnorm", bias="none", n_kv_heads=2, qk_norm=True),
                 "gemma3": dict(norm="gemma_rmsnorm", mlp="geglu", post_norms=True, embed_scale=True, sliding_window=4,
                                rope_local_theta=1e4, rope_scaling=(("rope_type", "linear"), ("factor", 2.0))),
                 "qwen3_moe": dict(qk_norm=True, n_experts=8, experts_per_token=2, d_expert=32, norm_topk_prob=False,
                                   router_aux_coef=0.001),
                 "mixtral": dict(qk_norm=False, n_experts=8, experts_per_token=2, d_expert=32, norm_topk_prob=True)}


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox", "llama", "qwen2", "qwen3", "gemma3", "qwen3_moe", "mixtral",
                                  "llama_sharded_bf16", "gpt2_bin_bf16", "gemma3_multimodal"])
def test_logits_match_hf_on_a_left_padded_batch(checkpoints, name):
  directory, reference = checkpoints[name]
  assert ("model.safetensors.index.json" in os.listdir(directory)) == (name == "llama_sharded_bf16")
  model, params = hf.load(directory)
  for field, value in ARCHITECTURES[name.split("_sharded")[0].split("_bin")[0].split("_multimodal")[0]].items():
    assert getattr(model.cfg, field) == value, field
  tokens, mask = tiny_hf.left_padded_batch()
  ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens, mask))
  assert ours.shape == (3, 12, tiny_hf.VOCAB)
  assert np.abs(ours - tiny_hf.hf_logits(reference, tokens, mask))[mask > 0].max() <= TOLERANCE


@pytest.mark.parametrize("name", ["gpt2", "llama", "qwen3", "gemma3", "mixtral"])  # Gemma 3's prompts outrun its window
def test_greedy_kv_cache_sampling_matches_hf_generate(checkpoints, name):
  import torch  # pylint: disable=g-import-not-at-top
  directory, reference = checkpoints[name]
  model, params = hf.load(directory)
  prompts, mask = tiny_hf.left_padded_batch(seed=1, length=8)
  new, eos = 6, tiny_hf.VOCAB - 1
  sampler = jax.jit(functools.partial(sample, Transformer(model.cfg), max_new_tokens=new, stop_ids=(eos,), pad_id=0))
  out = jax.device_get(sampler(params, prompts, mask, jax.random.key(0), SamplingParams.make(greedy=True)))
  with torch.no_grad():
    generated = reference.generate(input_ids=torch.tensor(prompts), attention_mask=torch.tensor(mask),
                                   do_sample=False, max_new_tokens=new, eos_token_id=eos, pad_token_id=0,
                                   output_logits=True, return_dict_in_generate=True)
  hf_tokens = generated.sequences[:, prompts.shape[1]:].numpy()
  hf_logprobs = torch.log_softmax(torch.stack(generated.logits, 1).float(), -1).numpy()
  live = out.mask > 0
  assert live[:, :2].all()
  np.testing.assert_array_equal(out.tokens[live], hf_tokens[:, :new][live])
  chosen = np.take_along_axis(hf_logprobs, out.tokens[..., None], axis=-1)[..., 0]
  assert np.abs(out.logprobs - chosen)[live].max() <= TOLERANCE


# Hugging Face's rope scaling (models/rope.py), the original context 16 tokens, logits read up to 40.
ROPE_SCALING = {
    "linear": dict(rope_parameters={"rope_type": "linear", "factor": 4.0, "rope_theta": 1e4}),
    "dynamic": dict(max_position_embeddings=16, rope_parameters={"rope_type": "dynamic", "factor": 2.0,
                                                                 "rope_theta": 1e4}),
    "llama3": dict(rope_parameters={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
                                    "rope_theta": 5e5}),
    "yarn": dict(max_position_embeddings=64, rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": 16,
                                                              "original_max_position_embeddings": 16,
                                                              "rope_theta": 1e4}),
}


@pytest.mark.parametrize("kind", list(ROPE_SCALING))
def test_rope_scaling_matches_hf_beyond_the_original_context_and_exports_back(bpe_dir, tmp_path, kind):
  reference = tiny_hf.hf_model("llama", **ROPE_SCALING[kind])
  reference.save_pretrained(tmp_path / "hf")
  model, params = hf.load(str(tmp_path / "hf"))
  assert dict(model.cfg.rope_scaling)["rope_type"] == kind
  tokens, mask = tiny_hf.left_padded_batch(length=40)
  ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens, mask))
  assert np.abs(ours - tiny_hf.hf_logits(reference, tokens, mask))[mask > 0].max() <= TOLERANCE
  plain = type(model)(dataclasses.replace(model.cfg, rope_scaling=()))  # the scaling matters at these lengths
  assert np.abs(ours - np.asarray(jax.jit(plain.apply)({"params": params}, tokens, mask)))[mask > 0].max() > 1e-3
  hf.export(model, params, load_tokenizer(bpe_dir), str(tmp_path / "out"))
  assert hf.load(str(tmp_path / "out"))[0].cfg == model.cfg
  reread = type(reference).from_pretrained(str(tmp_path / "out")).eval()
  np.testing.assert_array_equal(tiny_hf.hf_logits(reread, tokens, mask), tiny_hf.hf_logits(reference, tokens, mask))
  if kind == "llama3":  # the KV cache's decode steps rotate with the scaled frequencies too
    prompts, prompt_mask = tiny_hf.left_padded_batch(seed=1, length=20)
    sampler = jax.jit(functools.partial(sample, Transformer(model.cfg), max_new_tokens=8, stop_ids=(-1,), pad_id=0))
    out = jax.device_get(sampler(params, prompts, prompt_mask, jax.random.key(0), SamplingParams.make(greedy=True)))
    full = np.concatenate([prompts, out.tokens], 1)
    logits = tiny_hf.hf_logits(reference, full, np.concatenate([prompt_mask, out.mask], 1))
    np.testing.assert_array_equal(out.tokens, logits[:, 19:-1].argmax(-1))


def test_gemma3s_window_local_rope_and_norms_each_change_the_logits(checkpoints):
  """The parity above is not vacuous: each Gemma 3 feature, undone, moves the logits."""
  model, params = hf.load(checkpoints["gemma3"][0])
  tokens, mask = tiny_hf.left_padded_batch()
  logits = lambda cfg: np.asarray(jax.jit(type(model)(cfg).apply)({"params": params}, tokens, mask))
  ours = logits(model.cfg)
  for change in (dict(sliding_window=64), dict(rope_local_theta=0.0), dict(query_pre_attn_scalar=0),
                 dict(embed_scale=False)):
    assert np.abs(ours - logits(dataclasses.replace(model.cfg, **change)))[mask > 0].max() > 1e-3, change


def assert_same_params(a, b):
  flat_a, flat_b = (jax.tree_util.tree_flatten_with_path(jax.device_get(p))[0] for p in (a, b))
  assert [k for k, _ in flat_a] == [k for k, _ in flat_b]
  for (key, x), (_, y) in zip(flat_a, flat_b):
    assert x.dtype == y.dtype and np.array_equal(x, y), key


@pytest.mark.parametrize("name", ["gpt2", "gpt_neox", "qwen2", "qwen3", "gemma3", "qwen3_moe", "mixtral"])
def test_export_then_import_is_bit_exact_and_hf_reads_it(checkpoints, bpe_dir, tmp_path, name):
  directory, reference = checkpoints[name]
  model, params = hf.load(directory)
  assert hf.export(model, params, load_tokenizer(bpe_dir), str(tmp_path)) == type(reference).__name__
  again, params_again = hf.load(str(tmp_path))
  assert again.cfg == model.cfg
  assert_same_params(params, params_again)
  reread = type(reference).from_pretrained(str(tmp_path)).eval()
  tokens, mask = tiny_hf.left_padded_batch()
  np.testing.assert_array_equal(tiny_hf.hf_logits(reread, tokens, mask), tiny_hf.hf_logits(reference, tokens, mask))
  assert isinstance(load_tokenizer(str(tmp_path)), HFTokenizer)


@pytest.mark.parametrize("name", ["llama", "gemma3"])
def test_a_reward_model_exports_as_sequence_classification(checkpoints, bpe_dir, tmp_path, name):
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  model, params = hf.load(checkpoints[name][0])
  reward_cfg = dataclasses.replace(model.cfg, heads=("reward",))
  kernel = 0.1 * jax.random.normal(jax.random.key(3), (reward_cfg.d_model, 1))
  params = {**params, "reward_head": {"kernel": kernel, "bias": np.full((1,), 0.37, np.float32)}}
  architecture = hf.export(reward_cfg, params, load_tokenizer(bpe_dir), str(tmp_path))
  assert architecture == {"llama": "LlamaForSequenceClassification", "gemma3": "Gemma3TextForSequenceClassification"}[name]
  scorer, loaded = hf.load(str(tmp_path))
  assert isinstance(scorer, hf.RewardModel) and scorer.cfg == reward_cfg
  assert_same_params({k: v for k, v in params.items() if k != "lm_head"}, loaded)
  tokens = np.random.default_rng(0).integers(1, tiny_hf.VOCAB, (2, 10))  # no PAD (0): HF scores the last token
  ours = np.asarray(jax.jit(scorer.apply)({"params": loaded}, tokens))[:, -1]
  with torch.no_grad():
    theirs = getattr(transformers, architecture).from_pretrained(str(tmp_path))(torch.tensor(tokens)).logits
  np.testing.assert_allclose(ours - 0.37, theirs[:, 0].numpy(), atol=TOLERANCE)


def write_config(directory, config: dict):
  os.makedirs(directory, exist_ok=True)
  tiny_hf.write_json(os.path.join(directory, "config.json"), config)
  return str(directory)


@pytest.mark.parametrize("kind, change, message", [
    ("llama", {"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}}, "code shipped with the checkpoint"),
    ("llama", {"rope_parameters": {"rope_type": "longrope", "rope_theta": 1e4}}, "rope type 'longrope'"),
    ("llama", {"rope_scaling": {"type": "su", "factor": 2.0}}, "rope type 'su' is not supported"),
    ("gpt2", {"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ("gpt2", {"reorder_and_upcast_attn": True}, "reorder_and_upcast_attn"),
    ("gpt2", {"model_type": "falcon"}, "model_type='falcon' is not supported"),
    ("gemma3", {"final_logit_softcapping": 30.0}, "final_logit_softcapping=30.0 is not supported"),
    ("gemma3", {"use_bidirectional_attention": True}, "use_bidirectional_attention"),
    ("qwen3_moe", {"decoder_sparse_step": 2}, "decoder_sparse_step=2 is not supported"),
    ("qwen3_moe", {"mlp_only_layers": [1]}, r"mlp_only_layers=\[1\] is not supported"),
    ("qwen3_moe", {"shared_expert_intermediate_size": 64}, "shared_expert_intermediate_size=64"),
    ("mixtral", {"router_jitter_noise": 0.1}, "router_jitter_noise=0.1 is not supported"),
])
def test_unsupported_checkpoints_are_refused_in_one_line(tmp_path, kind, change, message):
  directory = write_config(tmp_path, {**tiny_hf.hf_config(kind).to_dict(), **change})
  with pytest.raises(UserError, match=message) as caught:
    hf.load(directory)
  assert "\n" not in str(caught.value)


@pytest.mark.parametrize("kind", tiny_hf.MOE)
def test_moe_stacked_experts_load_and_parameter_counts_match_hf(checkpoints, tmp_path, kind):
  """transformers 5's in-module layout (experts stacked: gate_up_proj, down_proj) loads as the
  per-expert checkpoint save_pretrained writes does; our counts are HF's."""
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top
  directory, reference = checkpoints[kind]
  assert any(".experts.0." in name for name in hf_tensors.Checkpoint(directory).names)
  reference.config.save_pretrained(tmp_path)
  save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(tmp_path / "model.safetensors"))
  model, params = hf.load(directory)
  assert_same_params(params, hf.load(str(tmp_path))[1])
  assert model.cfg.num_params() == sum(p.numel() for p in reference.parameters())
  assert model.cfg.active_params() == model.cfg.num_params() - 2 * 6 * 3 * 64 * 32  # 6 of 8 experts idle


def test_an_moe_model_no_hf_architecture_computes_is_refused(checkpoints):
  cfg = dataclasses.replace(hf.model_config(checkpoints["mixtral"][0]), norm_topk_prob=False)
  with pytest.raises(UserError, match="no Hugging Face architecture computes this MoE model"):
    hf_config.family_of(cfg)


def test_a_bin_checkpoint_without_torch_is_a_clear_error(checkpoints, monkeypatch):
  monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
  with pytest.raises(UserError, match="needs torch"):
    hf.load(checkpoints["gpt2_bin_bf16"][0])


def test_tokenizer_json_specials_and_the_run_copy(bpe_dir, tmp_path):
  tokenizer = load_tokenizer(bpe_dir)
  assert isinstance(tokenizer, HFTokenizer) and tokenizer.vocab_size == tiny_hf.VOCAB
  assert tokenizer.bos_id == tokenizer.eos_id == tokenizer.pad_id == tokenizer.token_to_id(tiny_hf.EOS)
  text = "The hotel was great, and the staff were lovely!"
  ids = tokenizer.encode(text)
  assert tokenizer.eos_id not in ids and tokenizer.decode(ids) == text
  assert tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id, tokenizer.pad_id]) == text
  tokenizer.save(str(tmp_path / "tokenizer"))
  saved = load_tokenizer(str(tmp_path / "tokenizer"))
  assert (saved.bos_id, saved.eos_id, saved.pad_id, saved.vocab_size) == (0, 0, 0, tiny_hf.VOCAB)
  assert saved.encode(text) == ids
  tokenizer.copy_files(str(tmp_path / "remote"))
  tiny_hf.write_json(tmp_path / "remote" / "tokenizer_config.json",
                     {"eos_token": tiny_hf.EOS, "auto_map": {"AutoTokenizer": "tokenization_x.X"}})
  with pytest.raises(UserError, match="never runs checkpoint code"):
    load_tokenizer(str(tmp_path / "remote"))


def test_tokenizer_model_specials_from_strings_dicts_and_config(tmp_path):
  from rlhf_jax.data.corpus import generate_reviews  # pylint: disable=g-import-not-at-top
  SentencePieceTokenizer.train(generate_reviews(200), 512).save(str(tmp_path / "ours"))
  os.makedirs(tmp_path / "hf")
  os.replace(tmp_path / "ours" / "tokenizer.model", tmp_path / "hf" / "tokenizer.model")
  tiny_hf.write_json(tmp_path / "hf" / "tokenizer_config.json",
                     {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}, "pad_token": None})
  write_config(tmp_path / "hf", {"model_type": "llama", "pad_token_id": 1})
  tokenizer = load_tokenizer(str(tmp_path / "hf"))
  # Our trainer's ids: pad 0, unk 1, bos 2, eos 3; PAD comes from config.json here.
  assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (2, 3, 1)
  tokenizer.save(str(tmp_path / "run"))
  saved = load_tokenizer(str(tmp_path / "run"))
  assert (saved.bos_id, saved.eos_id, saved.pad_id) == (2, 3, 1)
  assert saved.decode(saved.encode("A fine film.")) == "A fine film."


def test_init_from_hf_runs_sft_and_the_run_exports(bpe_dir, tmp_path, monkeypatch):
  import shutil  # pylint: disable=g-import-not-at-top
  source = tmp_path / "gpt2"
  shutil.copytree(bpe_dir, source)
  initial = tiny_hf.hf_model("gpt2")
  initial.save_pretrained(source)
  config = make_tiny_sft()
  config.init_from = f"hf:{source}"
  _, start = start_of(lambda: stages.run(config, str(tmp_path / "sft")), monkeypatch, stop=False)
  with open(tmp_path / "sft" / "model.json") as f:
    architecture = json.load(f)
  for field in ("vocab_size", "d_model", "n_layers", "max_len", "position", "norm", "tie_embeddings"):
    assert architecture[field] == getattr(hf.model_config(str(source)), field), field
  assert isinstance(load_tokenizer(str(tmp_path / "sft" / "tokenizer")), HFTokenizer)
  assert not os.path.isdir(tmp_path / "sft" / "upstream")  # init_from skips the pretraining stage
  assert export_run(str(tmp_path / "sft"), str(tmp_path / "out")) == "GPT2LMHeadModel"
  model, params = hf.load(str(tmp_path / "out"))
  reread = type(initial).from_pretrained(str(tmp_path / "out")).eval()
  tokens, mask = tiny_hf.left_padded_batch()
  ours = np.asarray(jax.jit(model.apply)({"params": params}, tokens, mask))
  assert np.abs(ours - tiny_hf.hf_logits(reread, tokens, mask))[mask > 0].max() <= TOLERANCE
  # At step 0 the stage held Hugging Face's model: its logits, every weight loaded.
  at_start = np.asarray(jax.jit(model.apply)({"params": start.params}, tokens, mask))
  assert np.abs(at_start - tiny_hf.hf_logits(initial, tokens, mask))[mask > 0].max() <= TOLERANCE
  assert np.abs(ours - tiny_hf.hf_logits(initial, tokens, mask))[mask > 0].max() > 1e-3  # SFT trained it


def test_params_land_in_their_mesh_shards(checkpoints):
  env = dict(os.environ, XLA_FLAGS=xla_flags(8), PYTHONPATH=ROOT)
  result = subprocess.run([sys.executable, "-m", "tests.interop.hf_mesh_check", checkpoints["llama"][0]], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert all(p["sharding_as_rules"] and p["equal"] for p in report.values()), report
  # data 2 x fsdp 2 x tensor 2: vocab and heads split over tensor, embed over fsdp.
  assert report["embed/embedding"]["shard"] == [150, 32]
  assert report["layer_0/attn/query/kernel"]["shard"] == [32, 2, 16]
  assert report["layer_0/attn/key/kernel"]["shard"] == [32, 1, 16]
  assert report["layer_0/mlp/down/kernel"]["shard"] == [48, 32]
