"""Lesson: classic diffusion mistakes, each one switch away from the right code, with its picture.

Every mistake is written out here (this file is teaching material; the package has only the right
versions), run beside the right version on a problem whose answer is known exactly, drawn, and
explained in one paragraph. tests/test_pitfalls.py checks each: the right version passes a check
where the mistaken one fails.

  no_noise            DDPM sampling without the re-injected noise z
  random_shortcut     the course's 1x1 shortcut conv built at random inside forward()
  attention_axis      attention softmax over the queries instead of the keys
  attention_no_scale  attention scores without the 1/sqrt(d) factor
  clip_latents        clipping x0 to [-1, 1] on latents whose scale is not 1
  raw_weights         sampling from the raw weights instead of the EMA weights
  grid_off_by_one     passing t = i / T to a network trained with t = (i + 1) / T

Run:  python examples/pitfalls.py --preset quick --mistake all      (or one name above)
Writes to outputs/pitfalls/: <mistake>.png for each, and pitfalls.md with the explanations.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import PALETTE, heatmap, parse_args, plot_panels, print_table, side_by_side, stack, wrote  # noqa: E402

import minidiff as md  # noqa: E402
from minidiff.imaging import grid_image  # noqa: E402
from minidiff.nn import ResidualConvBlock  # noqa: E402
from minidiff.train import EMA  # noqa: E402


@dataclass
class Preset:
    n_samples: int          # points drawn per sampler (10x more for grid_off_by_one, whose bias is small)
    sgd_steps: int          # steps of the noisy-gradient toy
    T: int = 1000           # diffusion steps of the exact-model demos (linear schedule, Ho et al.)


PRESETS = {
    "smoke": Preset(n_samples=300, sgd_steps=300),
    "quick": Preset(n_samples=2000, sgd_steps=1000),
    "full": Preset(n_samples=8000, sgd_steps=3000),
}


# ================================================================================= 1. no_noise
EXPLAIN_NO_NOISE = """\
**Sampling without the re-injected noise.** DDPM's ancestral step is x_{i-1} = mean(x_i) + sigma_i z
(Ho et al. 2020, Algorithm 2). Drop the `sigma_i z` and every step moves x to the *average* of where it
could go: the chain slides to the nearest high-density point and stays there, so the samples lose the
spread of the data (blurry, washed-out sprites in the course; here, each cluster collapses to its
centre and the sample std falls far below the data std). The noise is not a nuisance: it is what
makes each step draw from p(x_{i-1} | x_i) rather than take its mean. (DDIM with eta = 0 is a
different, deterministic sampler that needs no noise because its update is built for that.)"""


def sample_ddpm(model, schedule, x_T, add_noise: bool, seed: int = 0) -> Tensor:
    """DDPM with (right) or without (mistake) the fresh noise each step; md.sample's add_noise switch."""
    return md.sample(model, schedule, x_T.shape, sampler="ddpm", x_T=x_T, add_noise=add_noise,
                     generator=torch.Generator().manual_seed(seed), progress=False)


def cluster_spread(data: md.exact.GaussianMixture, x: Tensor) -> float:
    """The std of the points around the mean of their own cluster (nearest mode), per coordinate."""
    _, mode = data.nearest(x)
    centred = torch.cat([x[mode == k] - x[mode == k].mean(0) for k in mode.unique()])
    return centred.std().item()


def show_no_noise(p: Preset, out: str) -> tuple:
    data = md.exact.GaussianMixture.ring(k=8, radius=1.0, std=0.08)
    schedule = md.NoiseSchedule.linear(T=p.T)
    model = md.exact.ExactModel(data, schedule)
    x_T = torch.randn(p.n_samples, 2, generator=torch.Generator().manual_seed(0))
    right, wrong = sample_ddpm(model, schedule, x_T, True), sample_ddpm(model, schedule, x_T, False)
    lim = {"xlim": (-1.6, 1.6), "ylim": (-1.6, 1.6)}
    picture = plot_panels([
        {"title": "data", "points": [(data.sample(p.n_samples).float(), PALETTE[0])], **lim},
        {"title": "right: DDPM with noise", "points": [(right, PALETTE[2])], **lim},
        {"title": "mistake: no noise", "points": [(wrong, PALETTE[1])], **lim},
    ], os.path.join(out, "no_noise.png"))
    rows = [["no_noise", "spread within a cluster (std)", data.stds[0].item(), cluster_spread(data, right),
             cluster_spread(data, wrong)]]
    return picture, rows


# ================================================================================= 2. random_shortcut
EXPLAIN_RANDOM_SHORTCUT = """\
**The course's random shortcut conv.** The sprites course's ResidualConvBlock, when its input and
output channels differ, writes `shortcut = nn.Conv2d(in, out, 1)` *inside forward()*. That builds a
new convolution with fresh random weights on every call: it is never trained (the optimiser never sees
it), never saved (it is not in state_dict, so a reloaded model differs), and the same input gives a
different output each time, during training and sampling alike. The network learns to live with a
random perturbation of its first features. The fix, in minidiff.nn.ResidualConvBlock, is to create the
1x1 conv once in __init__, where it becomes a registered, trained, saved submodule."""


class CourseResidualConvBlock(ResidualConvBlock):
    """THE MISTAKE: the sprites course's ResidualConvBlock, with its shortcut built inside forward()."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, is_res=True)
        del self.shortcut                                   # the course has no shortcut module at all

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(self.conv1(x))                                            # (B, out, H, W)
        shortcut = nn.Conv2d(x.shape[1], h.shape[1], kernel_size=1).to(x.device)  # fresh random weights!
        return (shortcut(x) + h) / math.sqrt(2)


def show_random_shortcut(p: Preset, out: str) -> tuple:
    torch.manual_seed(0)
    right, wrong = ResidualConvBlock(3, 8, is_res=True).eval(), CourseResidualConvBlock(3, 8).eval()
    wrong.load_state_dict(right.state_dict(), strict=False)       # same trained parts: only the shortcut differs
    x = torch.from_numpy(md.data.ProceduralSprites(1).images[:1]).permute(0, 3, 1, 2).float() / 127.5 - 1
    with torch.no_grad():
        calls = {name: [block(x)[0, :4], block(x)[0, :4]] for name, block in (("right", right), ("course", wrong))}

    def show(maps):                                                # 4 feature maps [4, H, W] -> one row
        maps = maps / maps.abs().amax().clamp(min=1e-8)
        return grid_image(maps[:, None], nrow=4, scale=6)

    images, titles = [], []
    for name, (first, second) in calls.items():
        images += [show(first), show(second), show((first - second).abs())]
        titles += [f"{name}: call 1", f"{name}: call 2", f"|difference| max {(first - second).abs().max():.3f}"]
    picture = os.path.join(out, "random_shortcut.png")
    stack([side_by_side(images[:3], titles[:3]), side_by_side(images[3:], titles[3:])], picture)
    rows = [["random_shortcut", "max |call 1 - call 2| (same input)", 0.0,
             (calls["right"][0] - calls["right"][1]).abs().max().item(),
             (calls["course"][0] - calls["course"][1]).abs().max().item()],
            ["random_shortcut", "shortcut weights in state_dict", 1,
             int("shortcut.weight" in right.state_dict()), int("shortcut.weight" in wrong.state_dict())]]
    return picture, rows


# ================================================================================= 3-4. attention
EXPLAIN_ATTENTION_AXIS = """\
**Attention softmax over the wrong axis.** In softmax(Q K^T / sqrt(d)) V the scores have shape
[queries N, keys M] and the softmax must run over the keys (the last axis): each query distributes
one unit of attention over the things it can look at, so every *row* sums to 1 and the output is a
weighted average of the values. Taking the softmax over the queries (dim=-2) instead makes every
*column* sum to 1: a query's weights no longer sum to one (its output can be many times a value, or
almost nothing), and how much one pixel reads depends on all the other pixels. Shapes are fine, so
nothing crashes; the model just trains worse. Check that rows sum to 1, and compare with a reference."""

EXPLAIN_ATTENTION_NO_SCALE = """\
**Attention without 1/sqrt(d).** For queries and keys with unit-variance entries, q.k is a sum of d
products, so its standard deviation grows like sqrt(d). Without dividing by sqrt(d) (Vaswani et al.
2017, Sec. 3.2.1) the scores of a wide head are huge, the softmax saturates to a one-hot choice, its
entropy collapses towards 0 and its gradient vanishes: attention stops learning. With the factor the
scores keep unit variance whatever d is, and the entropy of the attention rows stays put."""


def attention(q: Tensor, k: Tensor, v: Tensor, softmax_dim: int = -1, scale: bool = True) -> tuple:
    """softmax(q k^T / sqrt(d)) v for q [B, N, d], k and v [B, M, d] -> (out [B, N, d], attn [B, N, M]).

    Right: softmax_dim=-1 (over the M keys) and scale=True. The mistakes: softmax_dim=-2, scale=False.
    """
    scores = torch.einsum("bnd,bmd->bnm", q, k)                                  # (B, N, M)
    if scale:
        scores = scores / math.sqrt(q.shape[-1])
    attn = scores.softmax(dim=softmax_dim)
    return torch.einsum("bnm,bmd->bnd", attn, v), attn                          # (B, N, d), (B, N, M)


def attention_entropy(d: int, scale: bool, n: int = 16, m: int = 16, seed: int = 0) -> float:
    """Mean entropy (nats) of the attention rows for random unit-variance q, k of width d."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(8, n, d, generator=g), torch.randn(8, m, d, generator=g)
    _, attn = attention(q, k, k, scale=scale)
    return -(attn * attn.clamp(min=1e-30).log()).sum(-1).mean().item()


def show_attention_axis(p: Preset, out: str) -> tuple:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 16, generator=g) for _ in range(3))
    _, right = attention(q, k, v)
    _, wrong = attention(q, k, v, softmax_dim=-2)
    labels = [f"query {n}" for n in range(6)]
    a = heatmap(right[0], labels, f"right: rows sum to {right[0].sum(-1).mean():.2f}", vmin=0, vmax=1)
    row_sums = ", ".join(f"{s:.1f}" for s in wrong[0].sum(-1))
    b = heatmap(wrong[0], labels, f"mistake: row sums {row_sums}", vmin=0, vmax=1)
    picture = os.path.join(out, "attention_axis.png")
    side_by_side([a, b], ["softmax over keys (dim=-1)", "softmax over queries (dim=-2)"], picture)
    rows = [["attention_axis", "max |row sum - 1|", 0.0, (right.sum(-1) - 1).abs().max().item(),
             (wrong.sum(-1) - 1).abs().max().item()]]
    return picture, rows


def show_attention_no_scale(p: Preset, out: str) -> tuple:
    widths = [2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    right = [attention_entropy(d, True) for d in widths]
    wrong = [attention_entropy(d, False) for d in widths]
    log2 = [math.log2(d) for d in widths]
    picture = plot_panels([{
        "title": "attention entropy vs head width d", "xlabel": "log2 d", "ylim": (0, math.log(16) * 1.05),
        "lines": [(list(zip(log2, right)), PALETTE[2]), (list(zip(log2, wrong)), PALETTE[1]),
                  ([(1, math.log(16)), (10, math.log(16))], PALETTE[5])],
        "legend": [("right: / sqrt(d)", PALETTE[2]), ("mistake: no scale", PALETTE[1]),
                   ("uniform: log 16", PALETTE[5])],
    }], os.path.join(out, "attention_no_scale.png"), panel_size=420)
    rows = [["attention_no_scale", "row entropy (nats) at d = 512", math.log(16), right[-2], wrong[-2]]]
    return picture, rows


# ================================================================================= 5. clip_latents
EXPLAIN_CLIP_LATENTS = """\
**Clipping x0 on latents.** Pixel-space samplers often clamp the predicted x0 to [-1, 1] at every
step, because images live there. Latents do not: an autoencoder's latents have whatever scale the
encoder gives them (Stable Diffusion's are rescaled by 0.18215 for this reason; minidiff's AutoEncoder
standardises them, but a variational one need not). With clip_x0=True every x0 prediction outside
[-1, 1] is pulled in, so the sampler is steered into the box: the samples' spread shrinks, values pile up
near +-1, and decoding them gives the wrong images. Clip only in the space where the bound is true."""


def show_clip_latents(p: Preset, out: str) -> tuple:
    latents = md.exact.GaussianMixture([[0.0, 0.0]], [2.0])       # latents with std 2: N(0, 4 I)
    schedule = md.NoiseSchedule.linear(T=p.T)
    model = md.exact.ExactModel(latents, schedule)
    x_T = torch.randn(p.n_samples, 2, generator=torch.Generator().manual_seed(0))
    right = md.sample(model, schedule, x_T.shape, sampler="ddim", steps=50, x_T=x_T, progress=False)
    wrong = md.sample(model, schedule, x_T.shape, sampler="ddim", steps=50, x_T=x_T, clip_x0=True, progress=False)
    z = latents.sample(p.n_samples, torch.Generator().manual_seed(1)).float()
    errors = [roundtrip_error(model, schedule, z, clip) for clip in (False, True)]
    lim = {"xlim": (-6, 6), "ylim": (-6, 6)}
    box = [[-1, -1], [1, -1], [1, 1], [-1, 1], [-1, -1]]
    picture = plot_panels([
        {"title": "latents (std 2)", "points": [(z, PALETTE[0])], "lines": [(box, (0, 0, 0))], **lim},
        {"title": "right: DDIM, no clipping", "points": [(right, PALETTE[2])], "lines": [(box, (0, 0, 0))], **lim},
        {"title": "mistake: DDIM with clip_x0", "points": [(wrong, PALETTE[1])], "lines": [(box, (0, 0, 0))], **lim},
    ], os.path.join(out, "clip_latents.png"))
    rows = [["clip_latents", "sample std", 2.0, right.std().item(), wrong.std().item()],
            ["clip_latents", "DDIM round-trip error |z' - z|", 0.0, errors[0], errors[1]]]
    return picture, rows


def roundtrip_error(model, schedule, z: Tensor, clip_x0: bool, steps: int = 50) -> float:
    """Invert latents z to noise with DDIM, decode them back (clipping x0 or not); mean |z' - z|."""
    x_T = md.ddim_invert(model, schedule, z, steps=steps)
    back = md.sample(model, schedule, z.shape, sampler="ddim", steps=steps, x_T=x_T, clip_x0=clip_x0, progress=False)
    return (back - z).abs().mean().item()


# ================================================================================= 6. raw_weights
EXPLAIN_RAW_WEIGHTS = """\
**Sampling from the raw weights instead of the EMA weights.** Stochastic gradients are noisy, and
with a learning rate that stays up the weights never settle: they jitter around the optimum with a
spread set by the learning rate and the gradient noise. The exponential moving average
ema <- d ema + (1 - d) w (minidiff.train.EMA; Ho et al. 2020 use d = 0.9999) averages that jitter
away, and diffusion models are unusually sensitive to it: samples from raw weights have colour casts
and artefacts that change from checkpoint to checkpoint. Train with the raw weights, sample with the
EMA ones. Here a two-parameter model is trained by SGD on a noisy quadratic loss: the raw iterate
wanders, the EMA sits at the optimum."""


class Point(nn.Module):
    """A model with two weights and loss 0.5 |w - w_star|^2: the simplest thing SGD can train."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([2.0, 2.0]))

    def loss(self, w_star: Tensor) -> Tensor:
        return 0.5 * (self.w - w_star).pow(2).sum()


def train_noisy(steps: int, lr: float = 0.1, noise: float = 2.0, ema_decay: float = 0.99, seed: int = 0) -> dict:
    """SGD with Gaussian gradient noise; returns the raw and EMA weights and losses at every step."""
    g = torch.Generator().manual_seed(seed)
    model, w_star = Point(), torch.zeros(2)
    ema = EMA(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    history = {"raw_w": [], "ema_w": [], "raw_loss": [], "ema_loss": []}
    for step in range(steps):
        optimizer.zero_grad()
        model.loss(w_star).backward()
        model.w.grad += noise * torch.randn(2, generator=g)          # a noisy minibatch gradient
        optimizer.step()
        ema.update(model, min(ema_decay, (1 + step) / (10 + step)))  # the Trainer's EMA warm-up
        for name, m in (("raw", model), ("ema", ema.model)):
            history[f"{name}_w"].append(m.w.detach().clone())
            history[f"{name}_loss"].append(m.loss(w_star).item())
    return history


def show_raw_weights(p: Preset, out: str) -> tuple:
    h = train_noisy(p.sgd_steps)
    raw, ema = torch.stack(h["raw_w"]), torch.stack(h["ema_w"])
    steps = range(1, p.sgd_steps + 1)
    picture = plot_panels([
        {"title": "weights during training", "points": [(raw, PALETTE[1])], "lines": [(ema, PALETTE[2])],
         "legend": [("raw weights", PALETTE[1]), ("EMA weights", PALETTE[2])], "xlim": (-2, 2.5), "ylim": (-2, 2.5)},
        {"title": "loss (log scale)", "log_y": True, "xlabel": "step",
         "lines": [(list(zip(steps, h["raw_loss"])), PALETTE[1]), (list(zip(steps, h["ema_loss"])), PALETTE[2])],
         "legend": [("raw", PALETTE[1]), ("EMA", PALETTE[2])]},
    ], os.path.join(out, "raw_weights.png"))
    tail = p.sgd_steps // 2                                           # average over the second half
    mean = lambda xs: sum(xs[-tail:]) / tail                         # noqa: E731
    rows = [["raw_weights", "loss (mean over the 2nd half)", 0.0, mean(h["ema_loss"]), mean(h["raw_loss"])]]
    return picture, rows


# ================================================================================= 7. grid_off_by_one
EXPLAIN_GRID_OFF_BY_ONE = """\
**Timestep grid off by one.** minidiff passes discrete step i to the network as t = (i + 1) / T
(the course's t = i / T for i = 1..T: the same numbers). A sampling loop that runs i = T-1 .. 0 and
passes i / T tells the network that every x is one step *less* noisy than it is. Each step then
removes a little too little noise, and at the last step the network is told "t = 0, no noise at all"
and leaves the remaining noise in. Nothing crashes and the pictures look almost right, which is why
this bug survives: it shows up as a bias in the sample statistics (here the samples come out wider
than the data), largest for short schedules. Keep the map from step index to network time in one
function (NoiseSchedule.model_time) and use it in training and sampling alike."""


class OffByOneTime(nn.Module):
    """THE MISTAKE: call `model` with t = i / T where it was trained with t = (i + 1) / T."""

    def __init__(self, model, T: int):
        super().__init__()
        self.model, self.T = model, T

    def forward(self, x: Tensor, t: Tensor, context=None) -> Tensor:
        return self.model(x, t - 1.0 / self.T, context)


def show_grid_off_by_one(p: Preset, out: str) -> tuple:
    data = md.exact.GaussianMixture([[0.0, 0.0]], [0.1])            # N(0, 0.1^2 I): the answer is std 0.1
    x_T = torch.randn(10 * p.n_samples, 2, generator=torch.Generator().manual_seed(0))
    curves = {"right": [], "wrong": []}
    for T in (50, 100, 200, 500, 1000):
        # a linear schedule stretched to T steps (the same total noise for every T)
        schedule = md.NoiseSchedule.linear(T=T, beta_start=0.1 / T, beta_end=20 / T)
        model = md.exact.ExactModel(data, schedule)
        for name, net in (("right", model), ("wrong", OffByOneTime(model, T))):
            x = md.sample(net, schedule, x_T.shape, sampler="ddpm", x_T=x_T,
                          generator=torch.Generator().manual_seed(0), progress=False)
            curves[name].append((math.log10(T), x.std().item() / data.stds[0].item()))
    picture = plot_panels([{
        "title": "DDPM sample std / data std vs T", "xlabel": "log10 T",
        "lines": [(curves["right"], PALETTE[2]), (curves["wrong"], PALETTE[1]),
                  ([(math.log10(50), 1.0), (3.0, 1.0)], PALETTE[5])],
        "legend": [("right: t = (i + 1) / T", PALETTE[2]), ("mistake: t = i / T", PALETTE[1])],
    }], os.path.join(out, "grid_off_by_one.png"), panel_size=420)
    rows = [["grid_off_by_one", f"sample std / data std, T = {T}", 1.0, curves["right"][-1][1], curves["wrong"][-1][1]],
            ["grid_off_by_one", "sample std / data std, T = 50", 1.0, curves["right"][0][1], curves["wrong"][0][1]]]
    return picture, rows


# ================================================================================= the gallery
MISTAKES = {
    "no_noise": (show_no_noise, EXPLAIN_NO_NOISE),
    "random_shortcut": (show_random_shortcut, EXPLAIN_RANDOM_SHORTCUT),
    "attention_axis": (show_attention_axis, EXPLAIN_ATTENTION_AXIS),
    "attention_no_scale": (show_attention_no_scale, EXPLAIN_ATTENTION_NO_SCALE),
    "clip_latents": (show_clip_latents, EXPLAIN_CLIP_LATENTS),
    "raw_weights": (show_raw_weights, EXPLAIN_RAW_WEIGHTS),
    "grid_off_by_one": (show_grid_off_by_one, EXPLAIN_GRID_OFF_BY_ONE),
}


def main(argv=None) -> dict:
    def add_arguments(parser):
        parser.add_argument("--mistake", choices=(*MISTAKES, "all"), default="all", help="which mistake to show")

    args = parse_args(__doc__, PRESETS, argv, add_arguments=add_arguments)
    if args.device.type == "cpu":
        torch.set_num_threads(1)            # small exact-model problems: threads cost more than they save
    p = PRESETS[args.preset]
    names = list(MISTAKES) if args.mistake == "all" else [args.mistake]
    rows, sections = [], []
    for name in names:
        show, explanation = MISTAKES[name]
        picture, new_rows = show(p, args.out)
        rows += new_rows
        print(f"\n{explanation}\n")
        wrote(picture)
        sections.append(f"## {name}\n\n![{name}]({os.path.basename(picture)})\n\n{explanation}\n")
    print()
    table = print_table(rows, ["mistake", "measure", "ideal", "right", "mistaken"])
    path = os.path.join(args.out, "pitfalls.md")
    with open(path, "w") as f:
        f.write(f"# Diffusion pitfalls (preset {args.preset})\n\n"
                f"Made by `python examples/pitfalls.py --preset {args.preset} --mistake {args.mistake}`.\n\n"
                f"```\n{table}\n```\n\n" + "\n".join(sections))
    wrote(path)
    return {"rows": rows}


if __name__ == "__main__":
    main()
