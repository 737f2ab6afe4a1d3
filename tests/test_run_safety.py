"""Run safety: what training and sampling do when the files, the folder, the processes or the disk misbehave.

The promise: a user error exits 2 with one line naming the argument, field or entry; a runtime failure
exits 1 with one line naming the path or resource; never a traceback, a hang, a silent substitution or
lost work. Each part below is tested with hostile inputs, and with real processes where the behaviour is
about processes:
  * damaged but loadable checkpoints (wrong types inside a file weights_only can read);
  * one run folder, one trainer (a lock that a second trainer cannot take, and a crash releases);
  * --resume refuses another run's checkpoint before writing anything;
  * SIGINT and SIGTERM save a checkpoint first, then exit 130 / 143; loss.csv never repeats a step;
  * DDP: inconsistent rank variables are refused, a stalled rank ends the job after the timeout;
  * a full disk is named, and leaves the previous files whole (simulated ENOSPC, and a real small tmpfs).
"""

import csv
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from minidiff import checkpoint as ckpt
from minidiff import distributed, file_io, imaging
from minidiff.cli import main as cli_main
from minidiff.presets import build_run, resolve
from minidiff.train import Trainer

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals and fcntl")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
for _name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
    ENV.pop(_name, None)


def _one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text[-3000:]
    return lines[0]


def _cli(argv, capsys) -> tuple:
    code = cli_main(argv)
    out, err = capsys.readouterr()
    return code, err


def _smoke_run(out_dir, steps=2, **train):
    run = resolve("smoke", None)
    run["train"].update({"steps": steps, "sample_every": 0, "log_every": 1, **train})
    built = build_run(run, out_dir=str(out_dir))
    built.config.progress = False
    return Trainer(built.model, built.dataset, built.config, schedule=built.schedule, sde=built.sde)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("good")
    _smoke_run(out).fit()
    return str(out / "checkpoint.pt")


# ------------------------------------------------------------------ damaged but loadable checkpoints
def _set(path):
    """A mutation that sets the entry at dotted `path` to a value: _set("rng.torch")(value)."""
    def to(value):
        def mutate(checkpoint):
            *parents, last = path.split(".")
            target = checkpoint
            for key in parents:
                target = target[key]
            target[last] = value
        return mutate
    return to


def _drop(key):
    return lambda checkpoint: checkpoint.pop(key)


def _first_weight(value):
    def mutate(checkpoint):
        name = next(iter(checkpoint["state_dict"]))
        checkpoint["state_dict"][name] = value
    return mutate


# (id, mutation, the entry the error must name, whether sampling refuses it too: a damaged entry is refused
# by every reader; only a missing entry that sampling does not need, the training state, lets it sample)
DAMAGE = [
    ("betas-string", _set("schedule.betas")("abc"), "schedule", True),
    ("betas-negative", _set("schedule.betas")([-0.5, 2.0]), "schedule", True),
    ("schedule-list", _set("schedule")([1, 2]), "schedule", True),
    ("sde-unknown", _set("sde")({"class": "Nope"}), "sde", True),
    ("ema-list", _set("ema_state_dict")([1, 2, 3]), "ema_state_dict", True),
    ("ema-other-names", _set("ema_state_dict")({"w": torch.zeros(2)}), "ema_state_dict", True),
    ("weights-empty", _set("state_dict")({}), "state_dict", True),
    ("weight-string", _first_weight("abc"), "state_dict", True),
    ("no-weights", _drop("state_dict"), "state_dict", True),
    ("model-kwargs-list", _set("model.kwargs")([1]), "model.kwargs", True),
    ("model-kwargs-bad-value", _set("model.kwargs.n_feat")("abc"), ("model.kwargs", "n_feat"), True),
    ("model-no-class", _set("model")({"kwargs": {}}), "model", True),
    ("version-number", _set("minidiff_version")(3), "minidiff_version", True),
    ("class-names-int", _set("class_names")(5), "class_names", True),
    ("step-string", _set("step")("abc"), "step", True),
    ("step-negative", _set("step")(-4), "step", True),
    ("step-bool", _set("step")(True), "step", True),
    ("no-step", _drop("step"), "step", False),
    ("rng-empty", _set("rng")({}), "rng", True),
    ("rng-torch-empty", _set("rng.torch")(torch.zeros(0, dtype=torch.uint8)), "rng.torch", True),
    ("rng-numpy-key-string", _set("rng.numpy.key")("abc"), "rng.numpy", True),
    ("rng-python-short", _set("rng.python.internal")([1, 2]), "rng.python", True),
    ("no-rng", _drop("rng"), "rng", False),
    ("optimizer-list", _set("optimizer")([1]), "optimizer", True),
    ("history-string", _set("data.history")("abc"), "data.history", True),
    ("epoch-string", _set("data.epoch")("abc"), "data.epoch", True),
    ("data-list", _set("data")([]), "data", True),
    ("prediction-type-number", _set("train_config.prediction_type")(5), "train_config.prediction_type", True),
]


@pytest.mark.parametrize("name, mutate, entry, sample_refuses", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_checkpoint_is_refused_naming_the_file_and_the_entry(name, mutate, entry, sample_refuses,
                                                                       good_checkpoint, tmp_path, capsys):
    entries = entry if isinstance(entry, tuple) else (entry,)
    checkpoint = torch.load(good_checkpoint, weights_only=True)
    if name.startswith("sde"):
        checkpoint["schedule"] = None
    mutate(checkpoint)
    out = tmp_path / "run"
    out.mkdir()
    path = out / "checkpoint.pt"
    torch.save(checkpoint, path)
    before = path.read_bytes()

    # the library: CheckpointError naming the file and the entry
    with pytest.raises(ckpt.CheckpointError) as caught:
        loaded = ckpt.load_checkpoint(path)
        if sample_refuses:
            ckpt.model_from_checkpoint(loaded, path=str(path))
        ckpt.validate_checkpoint(loaded, str(path), training=True)
    assert str(path) in str(caught.value) and entries[0] in str(caught.value)

    # minidiff sample: exit 2 with one line (or it samples, when only training state is missing)
    grid = tmp_path / "grid.png"
    code, err = _cli(["sample", "--checkpoint", str(path), "--n", "2", "--steps", "2", "--out", str(grid),
                      "--device", "cpu"], capsys)
    if sample_refuses:
        assert code == 2, err
        line = _one_line(err)
        assert str(path) in line and entries[0] in line
    else:
        assert code == 0 and grid.is_file(), err

    # minidiff train --resume: exit 2 with one line, before anything is written
    code, err = _cli(["train", "--preset", "smoke", "--steps", "3", "--out", str(out), "--resume", "--no-progress"],
                     capsys)
    assert code == 2, err
    line = _one_line(err)
    assert str(path) in line and any(e in line for e in entries)       # the resume check may name the field
    assert path.read_bytes() == before and not (out / "config.json").exists()


# ------------------------------------------------------------------ --resume: the same run, or nothing
@pytest.fixture()
def trained_folder(tmp_path, capsys):
    out = tmp_path / "run"
    code, err = _cli(["train", "--preset", "smoke", "--steps", "3", "--out", str(out), "--no-progress"], capsys)
    assert code == 0, err
    return out


def _snapshot(folder) -> dict:
    return {name: (folder / name).read_bytes() for name in ("checkpoint.pt", "config.json", "loss.csv")}


@pytest.mark.parametrize("config, flags, named", [
    ({}, ["--batch-size", "8"], "batch_size"),
    ({}, ["--seed", "5"], "seed"),
    ({"schedule": {"kind": "linear", "T": 50, "beta_start": 1e-4, "beta_end": 0.02}}, [], "T"),
    ({"schedule": {"kind": "linear", "T": 100, "beta_start": 1e-4, "beta_end": 0.03}}, [], "betas"),
    ({"model": {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 32, "n_cfeat": 5, "height": 16}}},
     [], "n_feat"),
    ({"data": {"kind": "procedural_sprites", "n": 96, "seed": 0}}, [], "size"),
], ids=["batch-size", "seed", "T", "betas", "n_feat", "data-size"])
def test_resume_refuses_another_runs_checkpoint_before_writing_anything(config, flags, named, trained_folder,
                                                                        tmp_path, capsys):
    before = _snapshot(trained_folder)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"preset": "smoke", **config}))
    code, err = _cli(["train", "--config", str(path), "--steps", "6", "--out", str(trained_folder), "--resume",
                      "--no-progress", *flags], capsys)
    assert code == 2, err
    line = _one_line(err)
    assert named in line and "checkpoint.pt" in line and "resume" in line
    assert _snapshot(trained_folder) == before                       # config.json too: nothing was touched


@pytest.mark.parametrize("field, value", [("batch_size", -3), ("objective", "nope"), ("ema_decay", 2.0)])
def test_trainer_resume_names_the_file_for_a_damaged_train_config(field, value, good_checkpoint, tmp_path):
    checkpoint = torch.load(good_checkpoint, weights_only=True)
    checkpoint["train_config"][field] = value
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    dataset = build_run(resolve("smoke", None)).dataset
    with pytest.raises(ckpt.CheckpointError, match=f"{path}: damaged checkpoint: 'train_config'.*{field}"):
        Trainer.resume(str(path), dataset)


def test_resume_with_the_same_settings_goes_on(trained_folder, capsys):
    code, err = _cli(["train", "--preset", "smoke", "--steps", "5", "--out", str(trained_folder), "--resume",
                      "--no-progress"], capsys)
    assert code == 0, err
    assert ckpt.load_checkpoint(trained_folder / "checkpoint.pt")["step"] == 5


@pytest.mark.parametrize("resume", [False, True])
def test_a_checkpoint_path_that_is_a_folder_is_refused_before_any_step(resume, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoint.pt").mkdir(parents=True)
    code, err = _cli(["train", "--preset", "smoke", "--steps", "3", "--out", str(out), "--no-progress"]
                     + (["--resume"] if resume else []), capsys)
    assert code == 2, err
    assert "checkpoint.pt" in _one_line(err) and "not a file" in err
    assert not (out / "loss.csv").exists() and not (out / "config.json").exists()


# ------------------------------------------------------------------ one folder, one trainer
def _train_process(out, *flags, steps=100_000, config=None) -> subprocess.Popen:
    argv = [sys.executable, "-m", "minidiff", "train", "--out", str(out), "--no-progress", "--steps", str(steps)]
    argv += ["--config", str(config)] if config is not None else ["--preset", "smoke"]
    return subprocess.Popen(argv + list(flags), env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(out) -> list:
    path = os.path.join(out, "loss.csv")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [int(row[0]) for row in csv.reader(f) if row and row[0].isdigit()]


def _wait_for_step(process, out, step, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while max(_logged_steps(out), default=0) < step:
        assert process.poll() is None, f"the run ended early: {process.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"step {step} not reached in {timeout} s"
        time.sleep(0.02)


@pytest.fixture()
def log_every_step(tmp_path):
    config = tmp_path / "every.json"
    config.write_text(json.dumps({"preset": "smoke", "train": {"log_every": 1, "sample_every": 0}}))
    return config


def test_a_second_trainer_on_the_same_folder_refuses_and_a_killed_one_frees_it(tmp_path, log_every_step):
    out = tmp_path / "run"
    first = _train_process(out, config=log_every_step)
    try:
        _wait_for_step(first, out, 2)
        second = subprocess.run([sys.executable, "-m", "minidiff", "train", "--preset", "smoke", "--steps", "2",
                                 "--out", str(out), "--no-progress"], env=ENV, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        line = _one_line(second.stderr)
        assert "another trainer" in line and f"pid {first.pid}" in line and str(out) in line
        assert first.poll() is None                                     # the first one trains on, undisturbed
    finally:
        first.kill()
        first.wait()
    with file_io.run_folder_lock(out):                                  # SIGKILL released the lock
        pass


def test_the_run_folder_lock_is_reentrant_in_a_process_and_exclusive_across_processes(tmp_path):
    probe = ("import sys; from minidiff.file_io import run_folder_lock\n"
             "try:\n    with run_folder_lock(sys.argv[1]): print('took it')\n"
             "except ValueError as error: print(error)")
    take = lambda: subprocess.run([sys.executable, "-c", probe, str(tmp_path)], env=ENV, capture_output=True,
                                  text=True, timeout=60).stdout
    with file_io.run_folder_lock(tmp_path):
        with file_io.run_folder_lock(tmp_path):                      # the same process may nest it
            pass
        assert "another trainer" in take()                              # still held after the inner block
    assert take().strip() == "took it"


# ------------------------------------------------------------------ interrupts keep the work
@pytest.mark.parametrize("signum, code, resume, workers", [
    (signal.SIGINT, 130, False, 0), (signal.SIGTERM, 143, True, 0), (signal.SIGTERM, 143, False, 2)],
    ids=["SIGINT", "SIGTERM-then-resume", "SIGTERM-to-the-group-with-loader-workers"])
def test_an_interrupt_saves_a_checkpoint_then_exits_with_one_line(signum, code, resume, workers, tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "smoke", "train": {"log_every": 1, "sample_every": 0,
                                                               "num_workers": workers}}))
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "minidiff", "train", "--out", str(out), "--no-progress", "--steps", "100000",
            "--config", str(config)]
    process = subprocess.Popen(argv, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        _wait_for_step(process, out, 3)
        if workers:                            # as from a terminal or a job manager: every process of the group
            os.killpg(process.pid, signum)
        else:
            process.send_signal(signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == code, err
    line = _one_line(err)
    assert signal.Signals(signum).name in line and "saved" in line and "--resume" in line
    step = ckpt.load_checkpoint(out / "checkpoint.pt")["step"]
    assert step >= 3 and f"at step {step}" in line
    steps = _logged_steps(out)
    assert steps == sorted(set(steps)) and steps[-1] == step
    if not resume:
        return
    resumed = _train_process(out, "--resume", steps=step + 3, config=config)
    _, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    assert _logged_steps(out) == list(range(1, step + 4))              # every step once, none repeated


@pytest.mark.slow          # test_crash_resume.py and the SIGTERM test above check the same after one resume
def test_loss_csv_holds_no_duplicate_steps_after_kills_and_resumes(tmp_path):
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"preset": "smoke", "train": {"log_every": 1, "sample_every": 0,
                                                               "checkpoint_every": 4}}))
    out = tmp_path / "run"
    for kill_at in (6,):                        # past a checkpoint: the rows after it were logged twice
        process = _train_process(out, "--resume", steps=10, config=config)
        _wait_for_step(process, out, kill_at)
        process.kill()
        process.wait()
        with open(out / "loss.csv", "a") as f:  # a row cut short by the crash
            f.write("99,0,0.5")
    process = _train_process(out, "--resume", steps=10, config=config)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    assert _logged_steps(out) == list(range(1, 11))


# ------------------------------------------------------------------ DDP: refuse, do not hang
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("variables, named", [
    ({"RANK": "3", "WORLD_SIZE": "2"}, "RANK"),
    ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK"),
    ({"RANK": "0", "WORLD_SIZE": "0"}, "WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "two"}, "WORLD_SIZE"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "-1"}, "LOCAL_RANK"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2"}, "LOCAL_RANK"),
    ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "3"}, "LOCAL_WORLD_SIZE"),
], ids=["rank-too-big", "rank-negative", "world-0", "world-text", "local-negative", "local-too-big", "local-world"])
def test_inconsistent_rank_variables_are_refused(variables, named, monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=named):
        distributed.setup()


def test_inconsistent_rank_variables_exit_2_with_one_line_in_a_real_process(tmp_path):
    env = {**ENV, "RANK": "3", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    result = subprocess.run([sys.executable, "-m", "minidiff", "train", "--preset", "smoke", "--steps", "1",
                             "--out", str(tmp_path / "run"), "--no-progress"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "RANK=3" in _one_line(result.stderr)


def test_a_stalled_rank_ends_the_job_with_a_clear_error_after_the_timeout(tmp_path, log_every_step):
    processes = _ranks(["train", "--config", str(log_every_step), "--steps", "100000", "--out", str(tmp_path / "run"),
                        "--no-progress"], tmp_path, timeout_s="4")
    main, other = processes
    try:
        _wait_for_step(main, tmp_path / "run", 2)
        other.send_signal(signal.SIGSTOP)                               # rank 1 stalls mid-run
        stalled_at = time.monotonic()
        _, err = main.communicate(timeout=60)
        waited = time.monotonic() - stalled_at
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert main.returncode == 1, err
    line = _one_line(err)
    assert "rank 0 lost contact" in line and distributed.TIMEOUT_VARIABLE in line
    assert waited < 30


def _ranks(argv, tmp_path, timeout_s="60") -> list:
    port = _free_port()
    processes = []
    for rank in (0, 1):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(port), "GLOO_SOCKET_IFNAME": "lo", distributed.TIMEOUT_VARIABLE: timeout_s}
        processes.append(subprocess.Popen([sys.executable, "-m", "minidiff", *argv], env=env, cwd=tmp_path,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return processes


def test_a_refusal_on_rank_0_ends_every_rank_at_once_with_one_line(tmp_path):
    out = tmp_path / "run"
    with file_io.run_folder_lock(out):                                  # another trainer holds the folder
        started = time.monotonic()
        main, other = _ranks(["train", "--preset", "smoke", "--steps", "2", "--out", str(out), "--no-progress"],
                             tmp_path)
        try:
            (_, main_err), (_, other_err) = main.communicate(timeout=120), other.communicate(timeout=120)
        finally:
            main.kill()
            other.kill()
    assert main.returncode == 2 and other.returncode == 2, main_err + other_err
    assert "another trainer" in _one_line(main_err) and other_err.strip() == ""
    assert time.monotonic() - started < 60                              # not after the 60 s timeout


def test_the_ddp_timeout_variable_is_checked(monkeypatch):
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "soon")
    with pytest.raises(ValueError, match=distributed.TIMEOUT_VARIABLE):
        distributed.timeout_seconds()
    monkeypatch.setenv(distributed.TIMEOUT_VARIABLE, "2.5")
    assert distributed.timeout_seconds() == 2.5


# ------------------------------------------------------------------ a full disk is named
@pytest.fixture()
def disk_fills_after(monkeypatch):
    """Make every file atomic_write opens fail with ENOSPC after `limit` bytes (set the returned dict's "limit")."""
    state = {"limit": 0}
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", **kwargs):
        file = real_fdopen(fd, mode, **kwargs)
        written = [0]

        class Full:
            def write(self, data):
                written[0] += len(data)
                if written[0] > state["limit"]:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return file.write(data)

            def __getattr__(self, name):
                return getattr(file, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                return file.__exit__(*exc)
        return Full()
    monkeypatch.setattr(file_io.os, "fdopen", fdopen)
    return state


def _writers(tmp_path):
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    return {
        "checkpoint.pt": lambda path: file_io.atomic_torch_save({"w": torch.randn(20_000)}, path),
        "grid.png": lambda path: imaging.save_image_grid(images, path),
        "classes.png": lambda path: imaging.save_class_grid(images.reshape(2, 2, 3, 8, 8), ["a", "b"], path),
        "loss.png": lambda path: imaging.save_loss_curve([1, 2, 3], [1.0, 0.5, 0.2], path),
        "traj.gif": lambda path: imaging.save_trajectory_gif([images, images], path),
        "config.json": lambda path: file_io.atomic_write_text("{}" * 5000, path),
    }


@pytest.mark.parametrize("name", ["checkpoint.pt", "grid.png", "classes.png", "loss.png", "traj.gif", "config.json"])
def test_a_full_disk_is_named_and_leaves_the_previous_file_whole(name, tmp_path, disk_fills_after):
    path = tmp_path / name
    write = _writers(tmp_path)[name]
    disk_fills_after["limit"] = 1 << 40
    write(path)
    before = path.read_bytes()
    disk_fills_after["limit"] = 100                                    # now the disk is full
    with pytest.raises(OSError) as caught:
        write(path)
    assert caught.value.errno == errno.ENOSPC and f"no space left on {path}" in str(caught.value)
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == [name]   # no temporary file left


def test_a_full_disk_while_logging_is_named(tmp_path, monkeypatch, capsys):
    import builtins

    import minidiff.train as train_module
    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("loss.csv") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, mode, *args, **kwargs)
    monkeypatch.setattr(train_module, "open", full_open, raising=False)
    code, err = _cli(["train", "--preset", "smoke", "--steps", "5", "--out", str(tmp_path), "--no-progress"], capsys)
    assert code == 1, err
    assert f"no space left on {tmp_path / 'loss.csv'}" in _one_line(err)


@pytest.fixture()
def small_tmpfs(tmp_path):
    """A real 1 MiB tmpfs (needs root and mount rights; skipped elsewhere)."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root); the simulated ENOSPC tests cover the code")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_training_onto_a_real_full_disk_exits_1_naming_the_checkpoint(small_tmpfs):
    out = small_tmpfs / "run"
    result = subprocess.run([sys.executable, "-m", "minidiff", "train", "--preset", "smoke", "--steps", "2",
                             "--out", str(out), "--no-progress"], env=ENV, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    assert f"no space left on {out / 'checkpoint.pt'}" in _one_line(result.stderr)
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]
