"""The peer flag (--peer=trl|tunix), its errors and keys, and the Tunix model's shape: none needs a peer's
virtual environment."""

import os
import subprocess
import sys

import pytest

from benchmarks import limits, run
from benchmarks.peers import tunix_shape

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_a_bare_peer_is_trl_and_a_named_one_stays():
  assert run.peer_argv(["run.py", "--peer", "--rounds=3"]) == ["run.py", "--peer=trl", "--rounds=3"]
  assert run.peer_argv(["run.py", "--workload=w1", "--peer"]) == ["run.py", "--workload=w1", "--peer=trl"]
  for argv in (["run.py", "--peer=tunix"], ["run.py", "--peer", "tunix"], ["run.py", "--peer="]):
    assert run.peer_argv(argv) == argv


def test_a_missing_peer_environment_is_one_line_naming_its_setup(monkeypatch, tmp_path):
  monkeypatch.setattr(run, "PEERS", str(tmp_path))
  for name, setup in (("trl", "`bash benchmarks/peers/setup.sh`"), ("tunix", "`bash benchmarks/peers/setup.sh tunix`")):
    with pytest.raises(SystemExit) as exit_:
      run.peer_python(name)
    message = str(exit_.value)
    assert setup in message and "\n" not in message and str(tmp_path) in message


def test_the_command_line_exits_before_timing_without_the_tunix_environment(tmp_path):
  """`--peer=tunix` with no .venv-tunix: a non-zero exit and the one line, before any workload is built."""
  code = ("import sys; from absl import app; from benchmarks import run; run.PEERS = sys.argv[1]; "
          "app.run(run.main, argv=run.peer_argv(['run.py', '--workload=w4', '--peer=tunix']))")
  out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": ROOT}, timeout=60)
  assert out.returncode != 0 and out.stdout == ""
  assert out.stderr.strip().splitlines()[-1].endswith("run `bash benchmarks/peers/setup.sh tunix` first")


def test_tunix_times_only_w1_and_w4():
  assert run.peer_names("tunix", run.CPU_SET) == ("w1", "w4")
  assert run.peer_names("trl", run.CPU_SET) == ("w1", "w2", "w3", "w4", "sampler")
  with pytest.raises(SystemExit, match="--peer=tunix has only w1, w4; asked for w2"):
    run.peer_names("tunix", ("w2",))


def test_the_tunix_figures_merge_under_its_own_keys():
  """Tunix's JAX version must not overwrite ours: it comes back as tunix_jax."""
  ours = {"workload": "w4", "seconds": 0.5, "round_seconds": [0.5, 0.4], "model_gflop": 100.0,
          "fraction_of_peak": 0.5, "jax": "ours"}
  theirs = [{"seconds": s, "tunix": "0.1.7", "jax": "theirs", "flax": "f", "notes": "n", "generation_share": 0.1}
            for s in (1.0, 1.2)]
  merged = run.with_peer(ours, theirs, peak=1e11, name="tunix")
  assert merged["speedup_vs_tunix"] == 2.5 and merged["tunix_seconds"] == 1.1
  assert merged["tunix_round_seconds"] == [1.0, 1.2] and merged["tunix_generation_share"] == 0.1
  assert merged["jax"] == "ours" and merged["tunix_jax"] == "theirs" and merged["tunix_notes"] == "n"
  assert not any(key.startswith("trl") for key in merged)
  table = limits.table([merged, merged], "tunix")
  assert "| Tunix (s) |" in table and "| w4 | 0.5 | 1.1 | 2.50x | 50% |" in table


def test_the_tunix_model_matches_gpt2_flops_per_token():
  """SwiGLU's three d x h matmuls against GELU's two d x 512: h = 341, within 0.1% of GPT-2's FLOPs."""
  assert tunix_shape.swiglu_hidden(512) == 341 and tunix_shape.swiglu_hidden(3072) == 2048
  assert tunix_shape.layer_matmul_weights(128, 512, 2) == 4 * 128 ** 2 + 2 * 128 * 512
  assert tunix_shape.flops_ratio() == pytest.approx((4 * 128 ** 2 + 3 * 128 * 341) / (4 * 128 ** 2 + 2 * 128 * 512))
  assert abs(tunix_shape.flops_ratio() - 1.0) < 1e-3
  fields = tunix_shape.qwen2_fields()
  assert (fields["num_layers"], fields["embed_dim"], fields["num_heads"], fields["num_kv_heads"]) == (4, 128, 4, 4)
  assert (fields["head_dim"], fields["vocab_size"], fields["use_tied_embedding"]) == (32, 256, True)
