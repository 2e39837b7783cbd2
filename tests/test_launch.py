"""The launch scripts: local processes with a stand-in Python, and the TPU pod and SLURM commands
(DRY_RUN=1, or stand-in gcloud/sbatch/srun on PATH: neither exists here). No training runs."""

import json
import os
import pathlib
import re
import shlex
import subprocess
import time

from rlhf_jax.sweep import load_sweep

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ["launch/local.sh", "launch/tpu_pod.sh", "launch/slurm.sbatch", "launch/slurm_sweep.sh"]

# Records how it was called (argv and the launch-related environment) as one JSON line in
# $RECORD, then prints it; with JAX_PROCESS_ID=$FAIL_ID it exits 3 after a second, otherwise it
# sleeps $SLEEP seconds. `-c CODE` runs CODE (local.sh asks Python for a free port).
FAKE = """#!/usr/bin/env python3
import json, os, sys, time
if sys.argv[1:2] == ["-c"]:
  exec(sys.argv[2])
  sys.exit()
keys = ("RLHF_JAX_DISTRIBUTED", "JAX_LOCAL_DEVICE_IDS", "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
        "JAX_PROCESS_ID", "XLA_FLAGS")
line = json.dumps({"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                   "env": {k: os.environ[k] for k in keys if k in os.environ}})
if "RECORD" in os.environ:
  with open(os.environ["RECORD"], "a") as f:
    f.write(line + "\\n")
if os.path.basename(sys.argv[0]) != "sbatch":  # sbatch --parsable prints only the job id
  print(line, flush=True)
if os.environ.get("JAX_PROCESS_ID") == os.environ.get("FAIL_ID", "none"):
  time.sleep(1)
  sys.exit(3)
time.sleep(float(os.environ.get("SLEEP", 0)))
if os.path.basename(sys.argv[0]) == "sbatch":
  jobs = int(os.environ.get("NEXT_JOB", 100)) + sum(1 for _ in open(os.environ["RECORD"])) - 1
  print(f"{jobs};cluster" if jobs % 2 == 0 else jobs)
"""


def fake(tmp_path, name):
  path = tmp_path / "bin" / name
  path.parent.mkdir(exist_ok=True)
  path.write_text(FAKE)
  path.chmod(0o755)
  return path


def launch(args, tmp_path, timeout=60, **env):
  # Without the launch-related variables the scripts set (XLA_FLAGS too: the tests' own, from conftest).
  launch_vars = ("SLURM_", "JAX_", "DRY_RUN", "TPU", "XLA_FLAGS")
  environ = {k: v for k, v in os.environ.items() if not k.startswith(launch_vars)}
  environ.update(PATH=f"{tmp_path / 'bin'}:{environ['PATH']}", RECORD=str(tmp_path / "record.jsonl"), **env)
  return subprocess.run(args, cwd=REPO, env=environ, capture_output=True, text=True, timeout=timeout)


def records(tmp_path):
  path = tmp_path / "record.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_script_parses():
  for script in SCRIPTS:
    subprocess.run(["bash", "-n", script], cwd=REPO, check=True)
    assert os.access(REPO / script, os.X_OK), script


def test_local_usage_errors_exit_2(tmp_path):
  result = launch(["launch/local.sh", "configs/pretrain.py:tiny"], tmp_path)
  assert result.returncode == 2 and "usage:" in result.stderr
  result = launch(["launch/local.sh", "configs/pretrain.py:tiny", str(tmp_path / "w")], tmp_path, PROCESSES="two")
  assert result.returncode == 2 and "PROCESSES must be a positive integer" in result.stderr


def test_local_processes_share_a_coordinator_and_log_apart(tmp_path):
  python = fake(tmp_path, "python")
  workdir = tmp_path / "w"
  result = launch(["launch/local.sh", "configs/ppo.py:tiny", str(workdir), "--config.seed=3"], tmp_path,
                  PYTHON=str(python), PROCESSES="3", PORT="12345", DEVICES="2")
  assert result.returncode == 0, result.stderr
  calls = sorted(records(tmp_path), key=lambda r: r["env"]["JAX_PROCESS_ID"])
  assert [c["env"]["JAX_PROCESS_ID"] for c in calls] == ["0", "1", "2"]
  for call in calls:
    assert call["argv"] == ["-m", "rlhf_jax.main", "--config=configs/ppo.py:tiny", f"--workdir={workdir}",
                            "--config.seed=3"]
    assert call["env"]["JAX_COORDINATOR_ADDRESS"] == "localhost:12345" and call["env"]["JAX_NUM_PROCESSES"] == "3"
    assert "--xla_force_host_platform_device_count=2" in call["env"]["XLA_FLAGS"]
  assert '"JAX_PROCESS_ID": "0"' in result.stdout and '"JAX_PROCESS_ID": "1"' not in result.stdout
  assert '"JAX_PROCESS_ID": "0"' in (workdir / "log.txt").read_text()
  for i in (1, 2):
    assert f'"JAX_PROCESS_ID": "{i}"' in (workdir / f"log_process_{i}.txt").read_text()


def test_local_processes_stop_the_others_when_one_fails(tmp_path):
  python = fake(tmp_path, "python")
  started = time.time()
  result = launch(["launch/local.sh", "configs/ppo.py:tiny", str(tmp_path / "w")], tmp_path,
                  PYTHON=str(python), PROCESSES="3", FAIL_ID="1", SLEEP="300", KILL_AFTER="5")
  assert result.returncode == 3
  assert time.time() - started < 30  # process 0 and 2 were stopped, not waited for
  assert "process 1 exited with status 3" in result.stderr
  assert re.search(r"localhost:\d+", result.stderr)  # a free port was found


def test_tpu_pod_dry_run_prints_the_same_command_for_every_worker(tmp_path):
  env = dict(DRY_RUN="1", TPU="pod", ZONE="us-central2-b", PROJECT="proj")
  result = launch(["launch/tpu_pod.sh", "configs/ppo.py:gpt2_small", "/mnt/shared/ppo", "--config.optim.lr=3e-4",
                   "--config.mesh.fsdp=-1"], tmp_path, **env)
  assert result.returncode == 0, result.stderr
  (line,) = result.stdout.splitlines()
  words = shlex.split(line)
  assert words[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "pod"]
  assert "--worker=all" in words and "--zone=us-central2-b" in words and "--project=proj" in words
  remote = words[words.index("--command") + 1]
  assert remote == ("cd ~/rlhf_jax && RLHF_JAX_DISTRIBUTED=auto python3 -m rlhf_jax.main "
                    "--config=configs/ppo.py:gpt2_small --workdir=/mnt/shared/ppo --config.optim.lr=3e-4 "
                    "--config.mesh.fsdp=-1")

  result = launch(["launch/tpu_pod.sh", "setup"], tmp_path, **env)
  assert result.returncode == 0, result.stderr
  scp, ssh = [shlex.split(line) for line in result.stdout.splitlines() if not line.startswith("#")]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp
  assert scp[6] == "pod:/tmp/rlhf_jax.tar.gz"
  assert "--worker=all" in ssh and "pip install -e . 'jax[tpu]'" in ssh[-1] and "tar xzf" in ssh[-1]
  result = launch(["launch/tpu_pod.sh", "setup"], tmp_path, REPO_URL="https://example.com/r.git", **env)
  assert "git clone https://example.com/r.git ~/rlhf_jax" in shlex.split(result.stdout)[-1]

  result = launch(["launch/tpu_pod.sh", "sweep", "experiments/showcase.py", "/mnt/shared/sc", "--only=ppo"],
                  tmp_path, **env)
  assert result.returncode == 0, result.stderr
  words = shlex.split(result.stdout)
  assert "--worker=all" in words
  assert words[-1] == ("cd ~/rlhf_jax && RLHF_JAX_DISTRIBUTED=auto python3 -m rlhf_jax.sweep "
                       "--sweep=experiments/showcase.py --root=/mnt/shared/sc --only=ppo")
  result = launch(["launch/tpu_pod.sh", "sweep", "experiments/showcase.py", "/mnt/shared/sc", "--parallel=2"],
                  tmp_path, **env)
  assert result.returncode == 2 and "no --parallel" in result.stderr
  result = launch(["launch/tpu_pod.sh", "configs/ppo.py:tiny", "w"], tmp_path, DRY_RUN="1")
  assert result.returncode == 2 and "set TPU" in result.stderr


def test_tpu_pod_remote_command_keeps_awkward_overrides_intact(tmp_path):
  """Run gcloud's --command with bash, as a worker would, and look at what Python receives."""
  fake(tmp_path, "gcloud")
  python = fake(tmp_path, "python")
  overrides = ["--config.stages=('pretrain', 'sft')", "--config.data.source=text:/data/my docs.txt"]
  result = launch(["launch/tpu_pod.sh", "configs/pipeline.py:tiny", "/shared/w", *overrides], tmp_path,
                  TPU="pod", ZONE="z", REPO=str(tmp_path), PYTHON=str(python))
  assert result.returncode == 0, result.stderr
  (gcloud,) = records(tmp_path)
  remote = gcloud["argv"][gcloud["argv"].index("--command") + 1]
  subprocess.run(["bash", "-c", remote], check=True, env={**os.environ, "RECORD": str(tmp_path / "record.jsonl")})
  worker = records(tmp_path)[1]
  assert worker["argv"] == ["-m", "rlhf_jax.main", "--config=configs/pipeline.py:tiny", "--workdir=/shared/w",
                            *overrides]
  assert worker["env"]["RLHF_JAX_DISTRIBUTED"] == "auto"


def test_slurm_sbatch_sruns_main_with_jax_reading_slurm(tmp_path):
  text = (REPO / "launch/slurm.sbatch").read_text()
  assert "#SBATCH --signal=TERM@120" in text and "#SBATCH --ntasks-per-node=8" in text
  fake(tmp_path, "srun")
  workdir = tmp_path / "w"
  result = launch(["bash", "launch/slurm.sbatch", "configs/ppo.py:tiny", str(workdir), "--config.seed=1"], tmp_path,
                  SLURM_SUBMIT_DIR=str(REPO), SLURM_NTASKS_PER_NODE="8")
  assert result.returncode == 0, result.stderr
  (srun,) = records(tmp_path)
  assert srun["argv"] == ["--kill-on-bad-exit=1", "python3", "-m", "rlhf_jax.main", "--config=configs/ppo.py:tiny",
                          f"--workdir={workdir}", "--config.seed=1"]
  assert srun["env"] == {"RLHF_JAX_DISTRIBUTED": "auto"} and workdir.is_dir()

  # One process per node: all of the node's GPUs, not JAX's default of GPU SLURM_LOCALID.
  result = launch(["bash", "launch/slurm.sbatch", "configs/ppo.py:tiny", str(workdir)], tmp_path,
                  SLURM_SUBMIT_DIR=str(REPO), SLURM_NTASKS_PER_NODE="1", SLURM_GPUS_ON_NODE="4")
  assert records(tmp_path)[1]["env"] == {"RLHF_JAX_DISTRIBUTED": "auto", "JAX_LOCAL_DEVICE_IDS": "0,1,2,3"}

  result = launch(["bash", "launch/slurm.sbatch", "configs/ppo.py:tiny", str(workdir)], tmp_path, DRY_RUN="1")
  assert result.stdout.strip() == ("RLHF_JAX_DISTRIBUTED=auto srun --kill-on-bad-exit=1 python3 -m rlhf_jax.main "
                                   f"--config=configs/ppo.py:tiny --workdir={workdir}")
  assert len(records(tmp_path)) == 2  # nothing run
  result = launch(["bash", "launch/slurm.sbatch", "configs/ppo.py:tiny", str(workdir)], tmp_path,
                  SLURM_SUBMIT_DIR=str(tmp_path))
  assert result.returncode == 2 and "not the repository root" in result.stderr


def test_jax_takes_the_job_from_slurm_environment(monkeypatch):
  """What slurm.sbatch relies on, in the installed JAX (a private module: if it moves, re-read it)."""
  from jax._src import clusters  # pylint: disable=import-outside-toplevel
  for key, value in dict(SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="gpu[003-004]", SLURM_NTASKS="16",
                         SLURM_PROCID="9", SLURM_LOCALID="1", SLURM_STEP_NUM_NODES="2").items():
    monkeypatch.setenv(key, value)
  monkeypatch.delenv("JAX_COORDINATOR_PORT", raising=False)
  detected = clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None, None, 300)
  assert detected == ("gpu003:61586", 16, 9, [1])  # port: 4242 % 4096 + 61440


def test_slurm_sweep_submits_runs_after_the_upstream_job(tmp_path):
  root = str(tmp_path / "sc")
  sweep = load_sweep(str(REPO / "experiments/showcase.py"))
  result = launch(["launch/slurm_sweep.sh", "experiments/showcase.py", root, "--nodes=2", "--partition=gpu"],
                  tmp_path, DRY_RUN="1")
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert lines[0] == f"mkdir -p {root}/logs" and len(lines) == 2 + len(sweep.runs)
  assert lines[1].startswith("upstream_job=$(sbatch --parsable --job-name=upstream ") and lines[1].endswith(")")
  first = shlex.split(lines[1][len("upstream_job=$("):-1])
  assert first[-4:] == ["launch/slurm.sbatch", "configs/pipeline.py:tiny", f"{root}/upstream",
                        "--config.stages=('pretrain', 'sft', 'reward')"]
  assert not any(w.startswith("--dependency") for w in first)
  for line, run in zip(lines[2:], sweep.runs):
    words = shlex.split(line.replace("$upstream_job", "UPSTREAM"))
    assert words[:3] == ["sbatch", "--parsable", f"--job-name={run.name}"]
    assert "--dependency=afterok:UPSTREAM" in words and "--kill-on-invalid-dep=yes" in words
    assert words.index("--nodes=2") < words.index("launch/slurm.sbatch") and "--partition=gpu" in words
    assert all(f"--config.{key}={value}" in words for key, value in run.overrides.items()
               if not isinstance(value, str))
    assert f"--config.init_from={root}/upstream/sft" in words
  assert not (tmp_path / "sc").exists() and not records(tmp_path)


def test_slurm_sweep_with_sbatch_uses_the_upstream_job_id(tmp_path):
  fake(tmp_path, "sbatch")
  root = str(tmp_path / "sc")
  result = launch(["launch/slurm_sweep.sh", "experiments/showcase.py", root], tmp_path, NEXT_JOB="100",
                  ONLY="dpo_hinge")
  assert result.returncode == 0, result.stderr
  calls = records(tmp_path)
  assert len(calls) == 1 + 2 and (tmp_path / "sc" / "logs").is_dir()
  assert calls[0]["argv"][-3:-1] == ["configs/pipeline.py:tiny", f"{root}/upstream"]
  for call in calls[1:]:
    assert "--dependency=afterok:100" in call["argv"]  # "100;cluster" read as job 100
    assert call["argv"][call["argv"].index("launch/slurm.sbatch") + 1] == "configs/dpo.py:tiny"
  assert "dpo_hinge_s0: job 101 (after 100)" in result.stdout

  # A sweep without an upstream: every run on its own, no dependencies.
  (tmp_path / "flat.py").write_text("from rlhf_jax.sweep import Run, Sweep\n"
                                    "def get_sweep():\n"
                                    "  return Sweep(runs=(Run('a', 'configs/sft.py:tiny'), "
                                    "Run('b', 'configs/sft.py:tiny', {'seed': 1})))\n")
  (tmp_path / "record.jsonl").unlink()
  result = launch(["launch/slurm_sweep.sh", str(tmp_path / "flat.py"), root], tmp_path)
  assert result.returncode == 0, result.stderr
  calls = records(tmp_path)
  assert [c["argv"][-2:] for c in calls] == [["configs/sft.py:tiny", f"{root}/a"],
                                             [f"{root}/b", "--config.seed=1"]]
  assert not any(w.startswith("--dependency") for c in calls for w in c["argv"])
