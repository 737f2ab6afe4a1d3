"""Crash safety with real processes and real SIGKILLs (POSIX).

1. `python -m minidiff train` with a checkpoint every step is SIGKILLed at a (seeded) random step
   (KILL_COUNT times), resumed with --resume, and must end with exactly the weights, EMA weights and
   optimiser state of a run that was never interrupted.
2. A process that writes a large checkpoint over and over is SIGKILLed while a write is in flight
   (its temporary file exists); the checkpoint on disk must still load, complete, at the last step
   whose write finished.
"""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from minidiff import checkpoint as ckpt

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One thread per process: two of them share a small machine with the test runner.
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
STEPS = 20
KILL_COUNT = 1                                  # crashes per run (2 adds ~5 s)
CONFIG = {"preset": "smoke", "data": {"n": 32},
          "train": {"steps": STEPS, "batch_size": 8, "checkpoint_every": 1, "log_every": 1, "sample_every": 0,
                    "ema_decay": 0.9, "seed": 3}}


def _train(config_path, out_dir, resume=False) -> subprocess.Popen:
    argv = [sys.executable, "-m", "minidiff", "train", "--config", str(config_path), "--out", str(out_dir),
            "--no-progress"] + (["--resume"] if resume else [])
    return subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(out_dir) -> list:
    path = os.path.join(out_dir, "loss.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [int(row[0]) for row in csv.reader(f) if row and row[0].isdigit()]


def _wait_for_step(process, out_dir, step, rows_before, timeout=90.0) -> None:
    """Wait until `process` has logged a step >= `step` (rows after the first `rows_before` are its own)."""
    deadline = time.monotonic() + timeout
    while max(_logged_steps(out_dir)[rows_before:], default=0) < step:
        assert process.poll() is None, f"the run ended before step {step}: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
        time.sleep(0.005)


def _assert_same_training_state(a: dict, b: dict) -> None:
    assert a["step"] == b["step"] == STEPS
    for key in ("state_dict", "ema_state_dict"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}[{name!r}] differs"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for index in sa:
        for name in sa[index]:
            assert torch.equal(torch.as_tensor(sa[index][name]), torch.as_tensor(sb[index][name]))
    assert a["data"]["epoch"] == b["data"]["epoch"] and a["data"]["batch_in_epoch"] == b["data"]["batch_in_epoch"]


def test_training_killed_at_random_steps_resumes_to_the_uninterrupted_weights(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps(CONFIG))
    rng = random.Random(20240611)
    kill_steps = sorted(rng.sample(range(2, STEPS - 2), KILL_COUNT))     # where to crash (seeded random)

    reference = _train(config, tmp_path / "reference")                     # never interrupted, runs alongside
    out = tmp_path / "crashy"
    for kill_step in kill_steps:
        victim = _train(config, out, resume=True)
        _wait_for_step(victim, out, kill_step, rows_before=len(_logged_steps(out)))
        victim.send_signal(signal.SIGKILL)
        victim.communicate()
        assert victim.returncode == -signal.SIGKILL
        survived = ckpt.load_checkpoint(out / "checkpoint.pt")             # always readable after a SIGKILL
        assert 1 <= survived["step"] < STEPS
        assert all(torch.isfinite(v).all() for v in survived["state_dict"].values())

    resumed = _train(config, out, resume=True)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err[-2000:]
    # every step logged once: a resume drops the rows past its checkpoint, then logs from there
    assert _logged_steps(out) == list(range(1, STEPS + 1))
    _, err = reference.communicate(timeout=120)
    assert reference.returncode == 0, err[-2000:]

    _assert_same_training_state(ckpt.load_checkpoint(out / "checkpoint.pt"),
                                ckpt.load_checkpoint(tmp_path / "reference" / "checkpoint.pt"))


WRITER = """
import sys, torch
from minidiff import checkpoint as ckpt
path, step = sys.argv[1], 0
weights = torch.empty(8_000_000)                                          # 32 MB: a write takes a while
while True:
    step += 1
    weights.fill_(step)
    ckpt.atomic_torch_save({"minidiff_version": "test", "model": {"class": "Blob", "kwargs": None},
                            "step": step, "state_dict": {"w": weights}}, path)
    print(step, flush=True)
"""


def test_a_checkpoint_write_killed_midway_leaves_the_previous_checkpoint_readable(tmp_path):
    path = tmp_path / "checkpoint.pt"
    rng = random.Random(7)
    caught_mid_write = 0
    for _ in range(2):
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], env=ENV, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        first = writer.stdout.readline()                                   # one complete write on disk
        assert first.strip().isdigit(), writer.communicate()[1][-2000:]
        deadline = time.monotonic() + 60
        while not any(name.endswith(".tmp") for name in os.listdir(tmp_path)):   # the next write has begun
            assert writer.poll() is None and time.monotonic() < deadline
            time.sleep(0.0005)
        time.sleep(rng.uniform(0.0, 0.02))                                 # somewhere inside that write
        writer.send_signal(signal.SIGKILL)
        rest, _ = writer.communicate()
        assert writer.returncode == -signal.SIGKILL
        finished = [int(line) for line in (first + rest).split()]
        caught_mid_write += any(name.endswith(".tmp") for name in os.listdir(tmp_path))

        checkpoint = ckpt.load_checkpoint(path)                            # the previous file, complete
        assert checkpoint["step"] >= finished[-1]
        assert checkpoint["step"] <= finished[-1] + 1                      # (the rename may beat the print)
        assert torch.equal(checkpoint["state_dict"]["w"], torch.full((8_000_000,), float(checkpoint["step"])))
        for name in os.listdir(tmp_path):                                  # a new writer starts from a clean folder
            if name.endswith(".tmp"):
                os.unlink(tmp_path / name)
    assert caught_mid_write >= 1                                           # the kills did land inside writes
