"""Trainer: LR schedule, EMA math, context dropout, bit-exact resume, NaN handling, real models.

Bad input (config values, dataset sizes) is in test_bad_input.py.
"""

import math
import os
import warnings

import pytest
import torch
from torch import nn

from minidiff import checkpoint as ckpt
from minidiff.schedule import NoiseSchedule
from minidiff.train import EMA, TrainConfig, Trainer, drop_context, lr_at, shard_generator


class TinyNet(nn.Module):
    """A few convolutions obeying model(x, t, context=None); context: float [B, n_cfeat] or None."""

    def __init__(self, channels=3, width=8, n_cfeat=5):
        super().__init__()
        self.inp = nn.Conv2d(channels + 1, width, 3, padding=1)
        self.ctx = nn.Linear(n_cfeat, width)
        self.out = nn.Conv2d(width, channels, 3, padding=1)
        self.poison = False

    def forward(self, x, t, context=None):
        time = t.reshape(-1, 1, 1, 1).to(x.dtype).expand(-1, 1, *x.shape[2:])
        h = torch.relu(self.inp(torch.cat([x, time], 1)))
        if context is not None:
            h = h + self.ctx(context)[:, :, None, None]
        out = self.out(h)
        return out * float("nan") if self.poison else out


class TinyData(torch.utils.data.Dataset):
    def __init__(self, n=48, size=8, labels=True):
        g = torch.Generator().manual_seed(1)
        self.x = torch.rand(n, 3, size, size, generator=g) * 2 - 1
        self.c = torch.eye(5)[torch.arange(n) % 5]
        self.labels = labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, k):
        return (self.x[k], self.c[k]) if self.labels else self.x[k]


SCHEDULE = NoiseSchedule.linear(T=50)
CLASSES = {"TinyNet": TinyNet}


def tiny_trainer(out_dir=None, steps=8, seed=0, **changes):
    torch.manual_seed(seed)
    settings = dict(steps=steps, batch_size=16, log_every=2, progress=False, out_dir=out_dir, lr=3e-3,
                    context_dropout=0.5)
    config = TrainConfig(**{**settings, **changes})
    return Trainer(TinyNet(), TinyData(), config, schedule=SCHEDULE, model_kwargs={"width": 8})


# ------------------------------------------------------------------------------------------ pieces
def test_lr_schedule_values_at_warmup_end_and_decay_end():
    config = TrainConfig(lr=1e-3, warmup_steps=10, decay="linear", min_lr=1e-5)
    assert lr_at(0, config, 110) == pytest.approx(1e-4)
    assert lr_at(9, config, 110) == pytest.approx(1e-3)                     # warm-up ends at the peak
    assert lr_at(10, config, 110) == pytest.approx(1e-3)                    # decay starts at the peak
    assert lr_at(60, config, 110) == pytest.approx((1e-3 + 1e-5) / 2)       # halfway
    assert lr_at(110, config, 110) == pytest.approx(1e-5)                   # end of decay = min_lr
    cosine = TrainConfig(lr=1e-3, warmup_steps=10, decay="cosine", min_lr=0.0)
    assert lr_at(60, cosine, 110) == pytest.approx(0.5e-3)
    assert lr_at(110, cosine, 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(50, TrainConfig(lr=2e-4, decay="constant"), 100) == 2e-4
    # The course: 1e-3 decayed linearly, lr * (1 - step / total)
    course = TrainConfig(lr=1e-3, decay="linear")
    assert lr_at(250, course, 1000) == pytest.approx(0.75e-3)


def test_ema_update_is_decay_times_ema_plus_one_minus_decay_times_weights():
    torch.manual_seed(0)
    model = TinyNet()
    ema = EMA(model)
    before = [p.clone() for p in ema.model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    ema.update(model, decay=0.9)
    assert len(list(ema.model.parameters())) == len(before) == len(list(model.parameters())) > 0
    for e, e0, w in zip(ema.model.parameters(), before, model.parameters()):
        torch.testing.assert_close(e, 0.9 * e0 + 0.1 * w)
    assert not any(p.requires_grad for p in ema.model.parameters())


def test_context_dropout_float_int_and_none():
    g = torch.Generator().manual_seed(0)
    one_hot = torch.eye(5)[torch.arange(1000) % 5]
    dropped = drop_context(one_hot, 0.3, g)
    zero_rows = (dropped.abs().sum(1) == 0)
    assert 0.25 < zero_rows.float().mean() < 0.35
    assert torch.equal(dropped[~zero_rows], one_hot[~zero_rows])            # kept rows untouched
    ids = torch.arange(1000) % 10
    dropped_ids = drop_context(ids, 0.3, torch.Generator().manual_seed(0), null_id=10)
    assert torch.equal(dropped_ids == 10, zero_rows)                         # same draws, same rows
    assert drop_context(None, 0.3, g) is None
    with pytest.raises(ValueError, match="null id"):
        drop_context(ids, 0.3, g, null_id=None)


def test_shard_generators_differ_by_step_and_shard_and_repeat_exactly():
    a = torch.randn(4, generator=shard_generator(0, 3, 1))
    assert torch.equal(a, torch.randn(4, generator=shard_generator(0, 3, 1)))
    assert not torch.equal(a, torch.randn(4, generator=shard_generator(0, 3, 0)))
    assert not torch.equal(a, torch.randn(4, generator=shard_generator(0, 4, 1)))


# ------------------------------------------------------------------------------------------ resume
def _assert_same_state(a: Trainer, b: Trainer):
    assert list(a.model.state_dict()) == list(b.model.state_dict())
    assert list(a.ema.model.state_dict()) == list(b.ema.model.state_dict())
    for (name, x), y in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(x, y), name
    for x, y in zip(a.ema.model.state_dict().values(), b.ema.model.state_dict().values()):
        assert torch.equal(x, y)
    sa, sb = a.optimizer.state_dict()["state"], b.optimizer.state_dict()["state"]
    for k in sa:
        for key in sa[k]:
            assert torch.equal(sa[k][key], sb[k][key])


@pytest.mark.parametrize("k", [4, 3])            # stop mid-epoch (4 of 3-step epochs) and at an epoch end
def test_resume_is_bit_exact(tmp_path, k):
    full = tiny_trainer(steps=2 * k, grad_accum_steps=2).fit()

    first = tiny_trainer(out_dir=str(tmp_path), steps=2 * k, grad_accum_steps=2)
    first.train(k)                                                            # "stopped" after step k
    assert ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == k
    torch.manual_seed(123)                                                    # a different process state
    resumed = Trainer.resume(tmp_path / "checkpoint.pt", TinyData(), model_classes=CLASSES)
    assert resumed.step == k and resumed.total_steps == 2 * k
    resumed.fit()
    assert resumed.step == 2 * k
    _assert_same_state(full, resumed)


def test_fit_resume_true_continues_from_out_dir(tmp_path):
    full = tiny_trainer(steps=6).fit()
    tiny_trainer(out_dir=str(tmp_path), steps=6).train(2)
    again = tiny_trainer(out_dir=str(tmp_path), steps=6, seed=99).fit(resume=True)   # other init: overwritten
    _assert_same_state(full, again)
    rows = (tmp_path / "loss.csv").read_text().splitlines()
    assert rows[0].startswith("step,") and [int(r.split(",")[0]) for r in rows[1:]] == [2, 4, 6]


# ------------------------------------------------------------------------------------------ faults
def test_nan_loss_raises_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    trainer = tiny_trainer(out_dir=str(tmp_path), steps=10)
    trainer.train(3)                                                          # checkpoint at step 3
    trainer.model.poison = True
    with pytest.raises(FloatingPointError, match="step 4"):
        trainer.train(3)
    saved = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 3
    assert all(torch.isfinite(v).all() for v in saved["state_dict"].values())
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())   # the update was not applied


def test_non_finite_weights_are_never_saved(tmp_path):
    trainer = tiny_trainer(out_dir=str(tmp_path), steps=2).fit()
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        trainer.model.out.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(FloatingPointError, match="not finite"):
        trainer.save()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


# ------------------------------------------------------------------------------------------ real models
def test_training_lowers_the_loss_and_writes_logs_and_grids(tmp_path):
    trainer = tiny_trainer(out_dir=str(tmp_path), steps=40, sample_every=20, sample_steps=4, samples_per_class=2,
                           context_dropout=0.1)
    trainer.fit()
    first, last = trainer.history[0][1], trainer.history[-1][1]
    assert last < first
    for name in ("checkpoint.pt", "loss.csv", "loss.png", "samples/step_000020.png", "samples/step_000040.png"):
        assert (tmp_path / name).is_file(), name
    assert trainer.epoch == 40 // 3 and trainer.batch_in_epoch == 40 % 3


def test_without_out_dir_periodic_checkpoints_and_grids_are_skipped_not_a_crash(monkeypatch):
    """out_dir None means "train in memory, write nothing": checkpoint_every / sample_every set by a preset
    must not stop the run at their step (save() used to raise there)."""
    trainer = tiny_trainer(steps=4, checkpoint_every=2, sample_every=2)
    calls = []
    monkeypatch.setattr(trainer, "sample_grid", lambda *a, **k: calls.append("grid"))
    trainer.train(3)
    trainer.train(1)
    assert trainer.step == 4 and calls == []


def test_the_trained_model_samples_as_what_it_was_trained_to_predict():
    """A v-prediction run's model (and its EMA copy) carries prediction_type, so md.sample reads its output
    as v straight after training, as it does after loading the checkpoint (before, it was read as eps)."""
    from minidiff.samplers import sample

    trainer = tiny_trainer(steps=2, prediction_type="v_prediction")
    trainer.fit()
    model = trainer.ema.model
    assert model.prediction_type == "v_prediction" and trainer.model.prediction_type == "v_prediction"
    context = torch.eye(5)[:2]
    x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    read = lambda **kw: sample(model, SCHEDULE, (2, 3, 8, 8), steps=5, x_T=x_T, context=context, progress=False, **kw)
    assert torch.equal(read(), read(prediction_type="v_prediction"))
    assert not torch.allclose(read(), read(prediction_type="epsilon"))
    assert tiny_trainer(steps=1).ema.model.prediction_type == "epsilon"


def test_images_only_dataset_trains_unconditionally():
    trainer = Trainer(TinyNet(), TinyData(labels=False), TrainConfig(steps=2, batch_size=16, progress=False),
                      schedule=SCHEDULE)
    trainer.fit()
    assert trainer.example_context is None and trainer.step == 2


def test_context_unet_on_procedural_sprites_trains_saves_and_samples(tmp_path):
    from minidiff.data import ProceduralSprites
    from minidiff.samplers import sample

    model = ckpt.build_model("ContextUnet", in_channels=3, n_feat=16, n_cfeat=5, height=16)
    config = TrainConfig(steps=4, batch_size=16, out_dir=str(tmp_path), progress=False, sample_every=4,
                         sample_steps=3, samples_per_class=2)
    Trainer(model, ProceduralSprites(64, seed=0), config, schedule=SCHEDULE).fit()
    loaded, schedule = ckpt.load_pipeline(tmp_path / "checkpoint.pt")
    assert type(loaded).__name__ == "ContextUnet" and not loaded.training and schedule.T == SCHEDULE.T
    context = torch.eye(5)[torch.arange(4) % 5]
    x = sample(loaded, schedule, (4, 3, 16, 16), steps=3, context=context, guidance_scale=2.0, progress=False)
    assert x.shape == (4, 3, 16, 16) and torch.isfinite(x).all()
    assert (tmp_path / "samples" / "step_000004.png").is_file()


def test_dsm_objective_with_a_score_unet_and_int_labels(tmp_path):
    from minidiff.data import ProceduralDigits
    from minidiff.sde import VESDE

    sde = VESDE(sigma=25.0)
    model = ckpt.build_model("ConditionalScoreUNet", in_channels=1, channels=(8, 16, 32, 32), embed_dim=32,
                             num_classes=10, text_dim=32, sde=sde)
    config = TrainConfig(steps=2, batch_size=8, objective="dsm", out_dir=str(tmp_path), progress=False,
                         sample_every=2, sample_steps=3, samples_per_class=1)
    trainer = Trainer(model, ProceduralDigits(32, seed=0), config, sde=sde).fit()
    assert math.isfinite(trainer.history[-1][1])
    checkpoint = ckpt.load_checkpoint(tmp_path / "checkpoint.pt")
    assert checkpoint["sde"] is not None and checkpoint["schedule"] is None
    loaded, process = ckpt.load_pipeline(tmp_path / "checkpoint.pt")
    assert type(process).__name__ == "VESDE" and type(loaded.sde).__name__ == "VESDE"
    assert os.path.isfile(tmp_path / "samples" / "step_000002.png")


def test_bf16_autocast_and_channels_last_on_cpu():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")                                      # no native bf16 on some CPUs
        trainer = tiny_trainer(steps=3, mixed_precision="bf16", channels_last=True).fit()
    assert trainer.step == 3 and all(math.isfinite(row[1]) for row in trainer.history)
    assert trainer.model.inp.weight.is_contiguous(memory_format=torch.channels_last)
    assert trainer.model.inp.weight.dtype == torch.float32                   # master weights stay fp32
    with pytest.raises(ValueError, match="fp16.*CUDA"):
        tiny_trainer(mixed_precision="fp16", device="cpu")


@pytest.mark.slow
def test_torch_compile_trains_like_eager():
    eager = tiny_trainer(steps=3, context_dropout=0.0).fit()
    compiled = tiny_trainer(steps=3, context_dropout=0.0, compile=True).fit()
    assert len(list(eager.model.parameters())) == len(list(compiled.model.parameters()))
    for a, b in zip(eager.model.parameters(), compiled.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_context_dropout_drops_whole_token_sequences():
    from minidiff.train import drop_context
    ids = torch.arange(1, 13).reshape(4, 3)                               # [B=4, L=3] token ids, B != L
    out = drop_context(ids, 0.5, torch.Generator().manual_seed(0), null_id=0)
    for row_in, row_out in zip(ids, out):
        assert torch.equal(row_out, row_in) or torch.equal(row_out, torch.zeros(3, dtype=ids.dtype))
    assert not torch.equal(out, ids)


def test_auto_precision_is_bf16_only_where_native(monkeypatch):
    import minidiff.train_config as train_config
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(train_config.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        trainer = tiny_trainer(steps=1, mixed_precision="auto", device="cpu")
        assert trainer.precision == expected and trainer.config.mixed_precision == "auto"
        trainer.fit()
        assert math.isfinite(trainer.history[-1][1])


def test_explicit_bf16_without_native_support_warns(monkeypatch):
    import minidiff.train_config as train_config
    monkeypatch.setattr(train_config.torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(UserWarning, match="without native bfloat16.*mixed_precision='auto'"):
        trainer = tiny_trainer(steps=1, mixed_precision="bf16", device="cpu")
    assert trainer.precision == "bf16"                                       # warned, never substituted
