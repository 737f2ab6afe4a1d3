"""ContextUnet.from_course: the sprites course's saved network, loaded strictly and computed as the course does.

The reference below is this test's own transcription of the course's module tree (DeepLearning.AI, "How
Diffusion Models Work", diffusion_utilities.py and the notebooks' ContextUnet): the same attribute names,
so the same state_dict keys, and the same forward arithmetic, including the 1x1 shortcut that the course
builds at random inside forward() and the division by 1.414. No course file is needed or shipped.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import minidiff as md
from minidiff.file_io import CheckpointError
from minidiff.nn import ContextUnet


# ----------------------------------------------------------------- the course's network, transcribed
class CourseResBlock(nn.Module):
    def __init__(self, cin, cout, is_res=False):
        super().__init__()
        self.same_channels = cin == cout
        self.is_res = is_res
        self.conv1 = nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.GELU())
        self.conv2 = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.GELU())

    def forward(self, x):
        if not self.is_res:
            return self.conv2(self.conv1(x))
        x2 = self.conv2(self.conv1(x))
        if self.same_channels:
            out = x + x2
        else:  # the course's fresh, random, untrained 1x1 conv, built on every call
            out = nn.Conv2d(x.shape[1], x2.shape[1], kernel_size=1, stride=1, padding=0).to(x.device)(x) + x2
        return out / 1.414


class CourseDown(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.model = nn.Sequential(CourseResBlock(cin, cout), CourseResBlock(cout, cout), nn.MaxPool2d(2))

    def forward(self, x):
        return self.model(x)


class CourseUp(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.model = nn.Sequential(nn.ConvTranspose2d(cin, cout, 2, 2), CourseResBlock(cout, cout),
                                   CourseResBlock(cout, cout))

    def forward(self, x, skip):
        return self.model(torch.cat((x, skip), 1))


class CourseEmbed(nn.Module):
    def __init__(self, din, demb):
        super().__init__()
        self.input_dim = din
        self.model = nn.Sequential(nn.Linear(din, demb), nn.GELU(), nn.Linear(demb, demb))

    def forward(self, x):
        return self.model(x.view(-1, self.input_dim))


class CourseContextUnet(nn.Module):
    def __init__(self, in_channels, n_feat=256, n_cfeat=10, height=28):
        super().__init__()
        self.in_channels, self.n_feat, self.n_cfeat, self.h = in_channels, n_feat, n_cfeat, height
        self.init_conv = CourseResBlock(in_channels, n_feat, is_res=True)
        self.down1 = CourseDown(n_feat, n_feat)
        self.down2 = CourseDown(n_feat, 2 * n_feat)
        self.to_vec = nn.Sequential(nn.AvgPool2d(4), nn.GELU())
        self.timeembed1 = CourseEmbed(1, 2 * n_feat)
        self.timeembed2 = CourseEmbed(1, n_feat)
        self.contextembed1 = CourseEmbed(n_cfeat, 2 * n_feat)
        self.contextembed2 = CourseEmbed(n_cfeat, n_feat)
        self.up0 = nn.Sequential(nn.ConvTranspose2d(2 * n_feat, 2 * n_feat, height // 4, height // 4),
                                 nn.GroupNorm(8, 2 * n_feat), nn.ReLU())
        self.up1 = CourseUp(4 * n_feat, n_feat)
        self.up2 = CourseUp(2 * n_feat, n_feat)
        self.out = nn.Sequential(nn.Conv2d(2 * n_feat, n_feat, 3, 1, 1), nn.GroupNorm(8, n_feat), nn.ReLU(),
                                 nn.Conv2d(n_feat, in_channels, 3, 1, 1))

    def forward(self, x, t, c=None):
        x = self.init_conv(x)
        down1 = self.down1(x)
        down2 = self.down2(down1)
        hiddenvec = self.to_vec(down2)
        if c is None:
            c = torch.zeros(x.shape[0], self.n_cfeat).to(x)
        cemb1 = self.contextembed1(c).view(-1, self.n_feat * 2, 1, 1)
        temb1 = self.timeembed1(t).view(-1, self.n_feat * 2, 1, 1)
        cemb2 = self.contextembed2(c).view(-1, self.n_feat, 1, 1)
        temb2 = self.timeembed2(t).view(-1, self.n_feat, 1, 1)
        up1 = self.up0(hiddenvec)
        up2 = self.up1(cemb1 * up1 + temb1, down2)
        up3 = self.up2(cemb2 * up2 + temb2, down1)
        return self.out(torch.cat((up3, x), 1))


def trained_course_net(in_channels=3, n_feat=16, n_cfeat=5, height=16, seed=0) -> CourseContextUnet:
    """A course network with every entry of its state_dict moved off its init (BatchNorm statistics too)."""
    torch.manual_seed(seed)
    net = CourseContextUnet(in_channels, n_feat, n_cfeat, height)
    with torch.no_grad():
        for name, tensor in net.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand_like(tensor))
            elif tensor.is_floating_point():
                tensor.add_(0.1 * torch.randn_like(tensor))
    return net.eval()


def inputs(b=3, in_channels=3, height=16, n_cfeat=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, in_channels, height, height, generator=g)
    t = torch.tensor([0.7])[:, None, None, None]  # the course's one time for the batch, [1, 1, 1, 1]
    c = torch.rand(b, n_cfeat, generator=g)
    return x, t, c


# ----------------------------------------------------------------- tests
def test_state_dict_keys_are_exactly_the_courses():
    course = trained_course_net()
    model = ContextUnet.from_course(course.state_dict())
    assert list(model.state_dict()) == list(course.state_dict())
    for name, tensor in course.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert not model.training
    assert (model.in_channels, model.n_feat, model.n_cfeat, model.height) == (3, 16, 5, 16)


@pytest.mark.parametrize("sizes", [dict(in_channels=3, n_feat=16, n_cfeat=5, height=16),
                                   dict(in_channels=1, n_feat=16, n_cfeat=10, height=28)])
def test_random_shortcut_equals_the_course_network_under_the_same_seed(sizes):
    course = trained_course_net(**sizes)
    model = ContextUnet.from_course(course.state_dict(), shortcut="random")
    x, t, c = inputs(in_channels=sizes["in_channels"], height=sizes["height"], n_cfeat=sizes["n_cfeat"])
    with torch.no_grad():
        for seed in (0, 7):
            torch.manual_seed(seed)
            want = course(x, t, c)
            torch.manual_seed(seed)
            got = model(x, t, c)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # float32 rounding
        torch.manual_seed(3)
        first = model(x, t, c)
        second = model(x, t, c)  # a new draw on every call, as in the course
    assert not torch.equal(first, second)


def test_random_shortcut_draws_what_the_course_draws_with_no_context():
    course = trained_course_net()
    model = ContextUnet.from_course(course.state_dict(), shortcut="random")
    x, t, _ = inputs()
    with torch.no_grad():
        torch.manual_seed(11)
        want = course(x, t)
        after_course = torch.rand(1)  # the global RNG has advanced by the same draws in both
        torch.manual_seed(11)
        got = model(x, t)
        after_model = torch.rand(1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # float32 rounding
    assert torch.equal(after_course, after_model)


def test_zero_shortcut_is_deterministic_and_the_expected_map():
    course = trained_course_net()
    model = ContextUnet.from_course(course.state_dict())  # shortcut="zero" by default
    x, t, c = inputs()
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(x, t, c)
        torch.manual_seed(1)
        b = model(x, t, c)
        state = torch.random.get_rng_state()
        model(x, t, c)
        assert torch.equal(torch.random.get_rng_state(), state)  # draws nothing
        h = course.init_conv.conv2(course.init_conv.conv1(x))
        torch.testing.assert_close(model.init_conv(x), h / 1.414, rtol=0, atol=0)
    assert torch.equal(a, b)


def test_from_a_pth_path_read_with_weights_only(tmp_path):
    course = trained_course_net()
    path = tmp_path / "context_model_trained.pth"
    torch.save(course.state_dict(), path)
    model = ContextUnet.from_course(path)
    assert list(model.state_dict()) == list(course.state_dict())
    model = ContextUnet.from_course(str(path), shortcut="random")
    x, t, c = inputs()
    with torch.no_grad():
        torch.manual_seed(5)
        want = course(x, t, c)
        torch.manual_seed(5)
        torch.testing.assert_close(model(x, t, c), want, rtol=1e-5, atol=1e-5)  # float32 rounding


class _Pickled:  # an object only full unpickling could rebuild
    pass


def test_a_file_that_needs_unpickling_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"init_conv.conv1.0.weight": _Pickled()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        ContextUnet.from_course(path)


def test_bad_sources_name_the_problem(tmp_path):
    course = trained_course_net()
    with pytest.raises(ValueError, match="shortcut"):
        ContextUnet.from_course(course.state_dict(), shortcut="learned")
    with pytest.raises(ValueError, match="up0.0.weight"):
        ContextUnet.from_course({k: v for k, v in course.state_dict().items() if not k.startswith("up0")})
    with pytest.raises(ValueError, match="init_conv.shortcut"):  # minidiff's own ContextUnet has the shortcut
        ContextUnet.from_course(ContextUnet(n_feat=16).state_dict())
    with pytest.raises(ValueError, match="not a state_dict"):
        ContextUnet.from_course({"a": 1})
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ContextUnet.from_course(tmp_path / "missing.pth")


def test_minidiff_contextunet_keeps_its_registered_shortcut():
    model = ContextUnet(n_feat=16)
    assert isinstance(model.init_conv.shortcut, nn.Conv2d)
    assert "init_conv.shortcut.weight" in model.state_dict()


def test_three_lines_sample_the_course_network():
    course = trained_course_net()
    model = ContextUnet.from_course(course.state_dict())
    schedule = md.NoiseSchedule.course(T=20)
    images = md.sample(model, schedule, (2, 3, 16, 16), sampler="ddim", steps=4,
                       generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_the_readme_three_lines_run_on_a_course_file(tmp_path, monkeypatch):
    import os
    import re

    with open(os.path.join(os.path.dirname(__file__), "..", "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    code = next(b for b in blocks if "from_course" in b)
    code = "\n".join(line.strip() for line in code.splitlines())
    assert len(code.strip().splitlines()) == 3 and 'sampler="ddpm"' in code     # the course's sampler
    torch.save(trained_course_net(n_feat=8).state_dict(), tmp_path / "context_model_trained.pth")
    monkeypatch.chdir(tmp_path)
    namespace = {"md": md, "torch": torch}
    torch.manual_seed(0)
    exec(compile(code, "README course lines", "exec"), namespace)
    assert namespace["x"].shape == (30, 3, 16, 16) and torch.isfinite(namespace["x"]).all()


def test_for_inference_folds_the_course_network_too():
    model = ContextUnet.from_course(trained_course_net().state_dict())
    x, t, c = inputs()
    with torch.no_grad():
        torch.testing.assert_close(md.nn.for_inference(model)(x, t, c), model(x, t, c), rtol=1e-4, atol=1e-4)
        double = ContextUnet.from_course(trained_course_net().state_dict(), shortcut="random").double()
        torch.manual_seed(0)
        a = double(x.double(), t.double(), c.double())
        torch.manual_seed(0)
        assert a.dtype == torch.float64 and torch.equal(a, double(x.double(), t.double(), c.double()))
