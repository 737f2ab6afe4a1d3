"""A hand-written loop over md.Stepper is bit-identical to md.sample: the same step code, the same numbers."""

import pytest
import torch

import minidiff as md

SCHEDULE = md.NoiseSchedule.linear(T=100)


class TinyNet(torch.nn.Module):
    """A small deterministic network of (x, t, context) so guidance and clipping have something to act on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)
        self.ctx = torch.nn.Linear(3, 1)

    def forward(self, x, t, context=None):
        out = self.conv(x) * (1 + t.view(-1, 1, 1, 1))
        if context is not None:
            out = out + self.ctx(context).view(-1, 1, 1, 1)
        return 2.0 * out


CASES = [("ddpm", 10, "leading", {}), ("ddpm", 10, "trailing", {"variance": "posterior"}),
         ("ddim", 8, "trailing", {}), ("ddim", 8, "leading", {"eta": 0.7}),
         ("dpmpp_2m", 7, "karras", {}), ("dpmpp_2m", 7, "trailing", {}),
         ("euler", 6, "karras", {}), ("heun", 5, "karras", {}), ("heun", 5, "linspace", {})]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("sampler, steps, spacing, options", CASES)
def test_hand_written_loop_equals_sample(sampler, steps, spacing, options, dtype):
    net = TinyNet().to(dtype)
    context = torch.eye(3, dtype=dtype)[[0, 1, 2, 0]]
    w, clip = 3.0, {"clip_x0": True}
    x_T = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
    expected = md.sample(net, SCHEDULE, x_T.shape, sampler, steps=steps, spacing=spacing, x_T=x_T, context=context,
                         guidance_scale=w, generator=torch.Generator().manual_seed(2), progress=False, **clip,
                         **options)

    stepper = md.Stepper(SCHEDULE, sampler, steps=steps, spacing=spacing, **clip, **options)
    g = torch.Generator().manual_seed(2)
    x = x_T * stepper.init_noise_sigma
    for i in stepper.timesteps:
        output = md.guided_output(net, x, stepper.model_time(i, x), context, w)
        x = stepper.step(output, i, x, generator=g)
    assert torch.equal(x, expected)


def test_heun_repeats_inner_points_and_counts_calls():
    stepper = md.Stepper(SCHEDULE, "heun", steps=4, spacing="karras")
    assert len(stepper.timesteps) == 2 * 4 - 1
    assert stepper.timesteps[1] == stepper.timesteps[2] and stepper.state_in_first_order


def test_step_checks_its_position():
    stepper = md.Stepper(SCHEDULE, "ddim", steps=2)
    x = torch.zeros(1, 1)
    with pytest.raises(ValueError, match="stepper.timesteps"):
        stepper.step(x, 5, x)
    for i in stepper.timesteps:
        x = stepper.step(torch.zeros(1, 1), i, x)
    with pytest.raises(RuntimeError, match="new Stepper"):
        stepper.step(x, 0, x)


def test_stepper_checks_its_arguments():
    with pytest.raises(ValueError, match="sampler"):
        md.Stepper(SCHEDULE, "plms")
    with pytest.raises(ValueError, match="spacing"):
        md.Stepper(SCHEDULE, "ddim", spacing="uniform")


@pytest.mark.parametrize("sampler, option", [("dpmpp_2m", {"eta": 0.5}), ("ddim", {"variance": "posterior"}),
                                             ("euler", {"add_noise": False}), ("ddpm", {"eta": 1.0})])
def test_an_option_the_sampler_does_not_use_is_an_error(sampler, option):
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"{name}=.*{sampler}"):
        md.sample(TinyNet(), SCHEDULE, (1, 1, 4, 4), sampler, steps=3, progress=False, **option)
    with pytest.raises(ValueError, match=f"{name}=.*{sampler}"):
        md.Stepper(SCHEDULE, sampler, steps=3, **option)
