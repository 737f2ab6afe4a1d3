"""Data-parallel training: 2 CPU processes (gloo, torchrun) reach the same weights as each other and as
one process with the same global batch (cut into the same 2 shards by gradient accumulation)."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from minidiff import distributed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from torch import nn
    from minidiff import distributed
    from minidiff.schedule import NoiseSchedule
    from minidiff.train import Trainer, TrainConfig

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Conv2d(4, 8, 3, padding=1)
            self.ctx = nn.Linear(5, 8)
            self.out = nn.Conv2d(8, 3, 3, padding=1)

        def forward(self, x, t, context=None):
            time = t.reshape(-1, 1, 1, 1).to(x.dtype).expand(-1, 1, *x.shape[2:])
            h = torch.relu(self.inp(torch.cat([x, time], 1)))
            if context is not None:
                h = h + self.ctx(context)[:, :, None, None]
            return self.out(h)

    class Data(torch.utils.data.Dataset):
        def __init__(self):
            g = torch.Generator().manual_seed(1)
            self.x = torch.rand(48, 3, 8, 8, generator=g) * 2 - 1
            self.c = torch.eye(5)[torch.arange(48) % 5]
        def __len__(self):
            return 48
        def __getitem__(self, k):
            return self.x[k], self.c[k]

    out, grad_accum = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(1)
    info = distributed.setup()
    torch.manual_seed(0)                  # DDP broadcasts rank 0's initial weights anyway
    config = TrainConfig(steps=5, batch_size=16, grad_accum_steps=grad_accum, lr=3e-3, context_dropout=0.5,
                         warmup_steps=2, progress=False, out_dir=out if info.is_main else None)
    trainer = Trainer(TinyNet(), Data(), config, schedule=NoiseSchedule.linear(T=50))
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.fit()
    # Test only: every rank writes its weights so the test can compare them (normally only rank 0 writes).
    torch.save({"weights": trainer.model.state_dict(), "ema": trainer.ema.model.state_dict(),
                "initial": initial,
                "world_size": info.world_size, "history": trainer.history}, f"{out}/rank{info.rank}.pt")
    distributed.teardown()
''')


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args, tmp_path):
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    result = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_two_gloo_processes_match_each_other_and_single_process_training(tmp_path):
    script = tmp_path / "train_tiny.py"
    script.write_text(SCRIPT)
    (tmp_path / "ddp").mkdir()
    (tmp_path / "single").mkdir()
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
          f"--master_port={_free_port()}", str(script), str(tmp_path / "ddp"), "1"], tmp_path)
    _run([sys.executable, str(script), str(tmp_path / "single"), "2"], tmp_path)

    rank0 = torch.load(tmp_path / "ddp" / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "ddp" / "rank1.pt", weights_only=True)
    single = torch.load(tmp_path / "single" / "rank0.pt", weights_only=True)
    assert rank0["world_size"] == 2 and single["world_size"] == 1
    for name, w in rank0["weights"].items():
        assert torch.equal(w, rank1["weights"][name]), name                 # DDP keeps ranks identical
        torch.testing.assert_close(w, single["weights"][name], rtol=1e-5, atol=1e-6)
    for name, w in rank0["ema"].items():
        torch.testing.assert_close(w, single["ema"][name], rtol=1e-5, atol=1e-6)
    # the logged loss is the mean over ranks, equal to the single-process mean over its 2 shards
    assert len(rank0["history"]) == len(single["history"]) > 0
    for (step_a, loss_a, _), (step_b, loss_b, _) in zip(rank0["history"], single["history"]):
        assert step_a == step_b and loss_a == pytest.approx(loss_b, rel=1e-5)
    # only rank 0 wrote the checkpoint and the log
    written = sorted(name for name in os.listdir(tmp_path / "ddp") if name != ".minidiff.lock")   # the run lock
    assert written == ["checkpoint.pt", "loss.csv", "loss.png", "rank0.pt", "rank1.pt"]
    saved = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(saved[k], w) for k, w in rank0["weights"].items())
    # the weights really moved: the comparison is not between two untouched initialisations
    moved = max((w - rank0["initial"][k]).abs().max().item() for k, w in rank0["weights"].items())
    assert moved > 1e-3


def test_env_info_reads_torchrun_variables(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = distributed.env_info()
    assert (info.rank, info.world_size, info.local_rank, info.enabled, info.is_main) == (3, 4, 1, True, False)
    monkeypatch.setenv("WORLD_SIZE", "four")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.env_info()


def test_single_process_helpers_are_no_ops():
    assert distributed.current().world_size == 1
    assert torch.equal(distributed.all_reduce_mean(torch.tensor(2.5)), torch.tensor(2.5))
    distributed.barrier()


@pytest.mark.slow
def test_cli_train_runs_under_torchrun(tmp_path):
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
          f"--master_port={_free_port()}", "-m", "minidiff", "train", "--preset", "smoke", "--out",
          str(tmp_path / "run"), "--no-progress"], tmp_path)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
