"""The command line: ``python -m minidiff train | sample | eval | bench`` (also installed as ``minidiff``).

    minidiff train --preset quick --out runs/quick
    torchrun --nproc_per_node=2 -m minidiff train --preset course      # data-parallel, same command
    minidiff sample --checkpoint runs/quick/checkpoint.pt --n 64 --out grid.png --gif traj.gif --context hero
    minidiff sample --checkpoint my_model/ --n 16          # a folder written by md.save_pretrained

A mistake in what you typed (a missing file, a bad value) ends with exit code 2 and ONE line on
stderr saying what is wrong; a failure while running (NaN loss, disk full) with exit code 1.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import io
import json
import os
import re
import signal
import sys
import threading
from typing import List, Optional

import torch
from PIL import Image

from . import checkpoint as ckpt
from . import distributed, imaging, limits, pretrained
from .data import CLASS_NAMES
from .distributed import StoppedByAnotherProcess
from .file_io import atomic_write_text, run_folder_lock
from .flow import flow_sample
from .metrics import main as evaluation_main
from .presets import PRESETS, build_run, resolve
from .samplers import sample
from .schedule import SPACINGS, NoiseSchedule
from .sde_samplers import sde_sample
from .text_to_image import TextToImage
from .train import Interrupted, Trainer, parse_device
from .train_config import MAX_SEED, TrainConfig

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, KeyError)
RUN_ERRORS = (FloatingPointError, OSError, RuntimeError)


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (plus where to get help), exit code 2. Every minidiff command
    (train, sample, eval, bench) parses with it."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


_Parser = OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="minidiff", description="minidiff: diffusion models from scratch in PyTorch.")
    commands = parser.add_subparsers(dest="command", metavar="{train,sample,eval,bench}", parser_class=_Parser)
    commands.required = True

    train = commands.add_parser(
        "train", help="train a model from a preset or a JSON config",
        description="Train a diffusion model. Runs data-parallel when launched with torchrun "
                    "(--batch-size stays the GLOBAL batch; the learning rate is not rescaled).",
        epilog="presets: " + "; ".join(f"{k}: {v['description']}" for k, v in PRESETS.items()))
    train.add_argument("--preset", choices=sorted(PRESETS), help="a ready-made run (default: smoke)")
    train.add_argument("--config", metavar="FILE", help="JSON run description (sections model, schedule or sde, "
                       "data, train; may name a base \"preset\")")
    train.add_argument("--data", metavar="DIR", help="train on your own images from this folder: with class "
                       "subfolders (DIR/cat/x.png) class-conditionally, else unconditionally")
    train.add_argument("--image-size", type=int, metavar="N", help="with --data: resize images to N x N "
                       "(default: the model's height)")
    train.add_argument("--channels", type=int, choices=(1, 3), help="with --data: 1 (gray) or 3 (RGB, default); "
                       "sets the model's in_channels too")
    train.add_argument("--no-labels", action="store_true", help="with --data: ignore class subfolders, "
                       "train unconditionally on every image below DIR")
    train.add_argument("--sprites", metavar="FILE", help="the course's sprites .npy (with --labels)")
    train.add_argument("--labels", metavar="FILE", help="the course's labels .npy (with --sprites)")
    train.add_argument("--out", metavar="DIR", help="output folder (default: runs/<preset>)")
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt if it exists")
    train.add_argument("--steps", type=int, help="override the number of optimiser steps")
    train.add_argument("--epochs", type=int, help="override the number of epochs (clears --steps)")
    train.add_argument("--batch-size", type=int, help="override the global batch size")
    train.add_argument("--lr", type=float, help="override the peak learning rate")
    train.add_argument("--device", help="cpu | cuda | cuda:N | auto (default)")
    train.add_argument("--mixed-precision", choices=["no", "bf16", "fp16"], help="autocast dtype")
    train.add_argument("--seed", type=int, help="override the seed")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    sample = commands.add_parser(
        "sample", help="draw samples from a checkpoint into a PNG grid (and a GIF)",
        description="Sample from a checkpoint (EMA weights). Discrete-time samplers: ddpm, ddim, dpmpp_2m, "
                    "euler, heun; SDE checkpoints: euler_maruyama, pc, ode.")
    sample.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint file written by train, or a folder written by save_pretrained "
                             "(or a diffusers DDPMPipeline folder)")
    sample.add_argument("--sampler", help="default: ddim (SDE checkpoints: euler_maruyama; flow: euler, 10 steps)")
    sample.add_argument("--steps", type=int, help="sampling steps (default: 25; SDE checkpoints: 500)")
    sample.add_argument("--eta", type=float, help="DDIM noise, 0 = deterministic (default 0)")
    sample.add_argument("--spacing", choices=SPACINGS,
                        help="timestep grid of discrete-time samplers (default: the folder's own, else leading; "
                             "with few steps trailing, "
                             "the course's grid, or karras is better: benchmarks/results/quality_vs_steps.md)")
    sample.add_argument("--n", type=int, default=64, help="number of samples (default 64)")
    sample.add_argument("--nrow", type=int, help="images per grid row (default: square)")
    sample.add_argument("--out", metavar="PNG", help="grid PNG (default samples.png, or DIR/grid.png with --out-dir)")
    sample.add_argument("--out-dir", metavar="DIR", help="also write every image as its own PNG, "
                        "DIR/seed<S>_<k>.png at its native size, listed in DIR/index.csv")
    sample.add_argument("--gif", metavar="GIF", help="also write the denoising trajectory as a GIF")
    sample.add_argument("--context", help="condition: a class name (hero, or a class folder's name), an index (3) "
                        "or a vector (0,1,0,0,0)")
    sample.add_argument("--guidance", type=float, metavar="W", help="classifier-free guidance scale (needs --context)")
    sample.add_argument("--prompt", help="text-to-image folders: the prompt (the --n images all show it)")
    sample.add_argument("--image-size", type=int, metavar="N", help="sample N x N images (default: the size the "
                        "checkpoint records; needed for files written before checkpoints recorded it)")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    sample.add_argument("--scale", type=int, default=4, help="pixel enlargement of the PNG/GIF (default 4)")
    sample.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    sample.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")

    for name, module, what in (("eval", "minidiff.metrics", "sample-quality metrics of a checkpoint"),
                               ("bench", "benchmarks.run_all", "speed benchmarks, CPU vs CUDA")):
        sub = commands.add_parser(name, help=what, add_help=False, description=f"{what} (handled by {module})")
        sub.add_argument("args", nargs="*", help=f"passed on to {module}.main")
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("eval", "bench"):                         # their own modules parse their arguments
        command, run = argv[0], lambda: cmd_delegate(argv[0], argv[1:])
    else:
        args = build_parser().parse_args(argv)
        command, run = args.command, lambda: (cmd_train if args.command == "train" else cmd_sample)(args)
    previous = signal.signal(signal.SIGTERM, _terminate) if _main_thread() else None
    try:
        return run()
    except StoppedByAnotherProcess:               # data-parallel: the process that refused said why
        return 2
    except KeyboardInterrupt as error:            # Ctrl-C: 130, SIGTERM: 143 (128 + the signal's number)
        signum = getattr(error, "signum", signal.SIGINT)
        print(f"minidiff {command}: {str(error) or 'interrupted'}", file=sys.stderr)
        return 128 + int(signum)
    except USER_ERRORS as error:
        return _fail(command, error, 2)
    except RUN_ERRORS as error:
        return _fail(command, error, 1)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    """SIGTERM outside training (which saves first; see Trainer.train) ends the command like Ctrl-C."""
    raise Interrupted(signum, "interrupted by SIGTERM")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _fail(command: str, error: BaseException, code: int) -> int:
    text = str(error)
    if "Original Traceback" in text:               # re-raised from a DataLoader worker: its own message is last
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if re.match(r"^[\w.]+: ", last) else last
    message = " ".join(text.split()) or type(error).__name__
    if isinstance(error, KeyError):
        message = f"missing entry {message}"
    print(f"minidiff {command}: error: {message}", file=sys.stderr)
    return code


# -------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    if args.out is not None:
        check_output_path(args.out, "--out", folder=True)
    run = resolve(args.preset, args.config)
    _apply_overrides(run, args)
    out_dir = args.out if args.out is not None else os.path.join("runs", run.get("preset") or "custom")
    check_output_path(out_dir, "--out", folder=True)
    info = distributed.setup()
    try:
        built = build_run(run, out_dir=out_dir)
        if args.no_progress:
            built.config.progress = False
        trainer = Trainer(built.model, built.dataset, built.config, schedule=built.schedule, sde=built.sde)
        with contextlib.ExitStack() as folder:
            # before anything is written: one trainer per folder; a resumed run must be the same run
            failure, checkpoint = None, None
            try:
                if info.is_main:
                    folder.enter_context(run_folder_lock(out_dir))
                checkpoint = trainer.resume_checkpoint() if args.resume else None
                trainer.check_checkpoint_path()
            except USER_ERRORS as error:
                failure = error
            distributed.raise_together(failure, trainer.device)     # every process stops, or none
            if checkpoint is not None:
                trainer.load_state(checkpoint)
            if info.is_main:
                config = {k: v for k, v in run.items() if k != "description"}
                atomic_write_text(json.dumps(config, indent=2), os.path.join(out_dir, "config.json"))
            trainer.fit()
        if info.is_main:
            print(f"trained {trainer.step} steps; checkpoint {trainer.checkpoint_path()}")
    finally:
        distributed.teardown()
    return 0


def _apply_overrides(run: dict, args) -> None:
    if args.seed is not None:
        limits.check_int(args.seed, "--seed", 0, MAX_SEED)
    train = run.setdefault("train", {})
    for name in ("steps", "epochs", "batch_size", "lr", "device", "mixed_precision", "seed"):
        value = getattr(args, name)
        if value is not None:
            try:                                                       # errors name the flag, not train.<name>
                TrainConfig(**{name: value})
            except ValueError as error:
                raise ValueError(str(error).replace(f"TrainConfig.{name}", "--" + name.replace("_", "-"), 1)) from None
            train[name] = value
    if args.epochs is not None:
        train["steps"] = None
    if (args.sprites is None) != (args.labels is None):
        raise ValueError("--sprites and --labels go together")
    if args.data is not None and args.sprites is not None:
        raise ValueError("choose one of --data and --sprites/--labels")
    if args.sprites is not None:
        run["data"] = {"kind": "sprite_files", "sprites_path": args.sprites, "labels_path": args.labels}
    if args.data is None and (args.channels is not None or args.no_labels or args.image_size is not None):
        raise ValueError("--image-size, --channels and --no-labels go with --data DIR")
    if args.image_size is not None:
        limits.check_image_side(args.image_size, "--image-size")
    if args.data is not None:
        kwargs = run["model"].setdefault("kwargs", {})
        size = args.image_size if args.image_size is not None else kwargs.get("height")
        if size is None:
            raise ValueError("--data needs --image-size N for this model")
        run["data"] = {"kind": "image_folder", "root": args.data, "size": size}
        if args.no_labels:
            run["data"]["labelled"] = False
        if args.channels is not None:
            if "in_channels" not in kwargs:
                raise ValueError(f"--channels: the model {run['model'].get('class')} has no in_channels setting")
            run["data"]["channels"] = kwargs["in_channels"] = args.channels


# -------------------------------------------------------------------------------------- sample
def cmd_sample(args) -> int:
    if args.n < 1:
        raise ValueError(f"--n must be >= 1, got {args.n}")
    for name, value in (("--steps", args.steps), ("--nrow", args.nrow), ("--scale", args.scale),
                        ("--image-size", args.image_size)):                        # 0 is no default
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    limits.check_int(args.seed, "--seed", 0, MAX_SEED)
    if args.out is None:
        args.out = os.path.join(args.out_dir, "grid.png") if args.out_dir is not None else "samples.png"
    for name, value, extension in (("--out", args.out, ".png"), ("--gif", args.gif, ".gif")):
        if value is not None and not value.lower().endswith(extension):
            raise ValueError(f"{name} must name a {extension} file, got {value!r}")
    for name, value in (("--out-dir", args.out_dir), ("--out", args.out), ("--gif", args.gif)):  # before any writing
        if value is not None:
            check_output_path(value, name, folder=name == "--out-dir")
    device = parse_device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if os.path.isdir(args.checkpoint):                                  # a save_pretrained or diffusers folder
        if args.raw:
            raise ValueError(f"--raw needs a checkpoint file; the folder {args.checkpoint} holds one set of weights")
        if pretrained.is_diffusers_folder(args.checkpoint):
            spec, class_names, recorded = {"class": "UNet2D"}, None, {}
        else:
            index = pretrained.read_index(args.checkpoint)
            if index.get("pipeline") == "TextToImage":
                return _sample_text_to_image(args, device)
            spec, class_names = index["model"], index.get("class_names")
            recorded = index.get("sampling") or {}                        # e.g. a distilled model's own grid
        model, process = pretrained.load_pretrained(args.checkpoint, device=device)   # with model.prediction_type
        args.sampler = args.sampler or recorded.get("sampler")
        args.steps = args.steps or recorded.get("steps")
        args.spacing = args.spacing or recorded.get("spacing")
    else:
        checkpoint = ckpt.load_checkpoint(args.checkpoint)
        model = ckpt.model_from_checkpoint(checkpoint, ema=not args.raw, device=device, path=args.checkpoint)
        process = ckpt.schedule_or_sde_from_checkpoint(checkpoint)
        spec = checkpoint["model"]
        class_names = checkpoint.get("class_names")
    if args.prompt is not None:
        raise ValueError(f"--prompt needs a text-to-image pipeline folder; {args.checkpoint} holds a {spec['class']}")
    if process is None:
        raise ValueError(f"{args.checkpoint} records neither a noise schedule nor an SDE; it cannot be sampled")
    shape = (args.n, *_sample_shape(model, spec, args.image_size, args.checkpoint))
    context = parse_context(args.context, model, args.n, class_names) if args.context is not None else None
    _check_sample_sizes(args, model, process, shape, context, device)
    generator = torch.Generator().manual_seed(args.seed)
    want_gif = args.gif is not None
    if type(process).__name__ == "RectifiedFlow":                          # a flow-matching (velocity) model
        for option, value in (("--eta", args.eta), ("--spacing", args.spacing)):
            if value is not None:
                raise ValueError(f"{option} applies to noise-schedule checkpoints; {args.checkpoint} is a flow model")
        result = flow_sample(model, process, shape, sampler=args.sampler or "euler", steps=args.steps or 10,
                             context=context, guidance_scale=args.guidance, generator=generator,
                             return_trajectory=want_gif, progress=True)
    elif isinstance(process, NoiseSchedule):
        result = sample(model, process, shape, sampler=args.sampler or "ddim", steps=args.steps or 25,
                        eta=0.0 if args.eta is None else args.eta, spacing=args.spacing or "leading",
                        context=context, guidance_scale=args.guidance,
                        generator=generator, return_trajectory=want_gif,
                        progress=True)
    else:
        for option, value in (("--eta", args.eta), ("--spacing", args.spacing)):
            if value is not None:
                raise ValueError(f"{option} applies to noise-schedule checkpoints; {args.checkpoint} is a score model "
                                 f"sampled along its SDE ({type(process).__name__}), which has no {option}")
        result = sde_sample(model, process, shape, method=args.sampler or "euler_maruyama", steps=args.steps or 500,
                            context=context, guidance_scale=args.guidance, generator=generator,
                            return_trajectory=want_gif, progress=True)
    x, trajectory = result if want_gif else (result, None)
    imaging.save_image_grid(x, args.out, nrow=args.nrow, scale=args.scale)
    print(f"wrote {args.out}")
    if args.out_dir is not None:
        _write_images(x, args)
    if want_gif:
        imaging.save_trajectory_gif(trajectory["x"], args.gif, nrow=args.nrow, scale=args.scale)
        print(f"wrote {args.gif}")
    return 0


def _check_sample_sizes(args, model, process, shape, context, device) -> None:
    """--n, --nrow, --scale (and --gif's frames): the memory they imply, within minidiff.limits, before sampling."""
    if isinstance(process, NoiseSchedule):
        steps = args.steps or 25 if (args.sampler or "ddim") != "ddpm" else process.T
        saved = 2 * steps if args.gif is not None else 0              # x and x0_pred of every step
    else:
        steps = args.steps or 500
        saved = steps if args.gif is not None else 0
    n, image_shape = shape[0], shape[1:]
    limits.check_grid(n, image_shape[1], image_shape[2], args.nrow, args.scale, ("--n", "--nrow", "--scale"),
                      frames=min(steps + 1, 100) if args.gif is not None else 1)
    limits.check_sampling_memory(model, n, image_shape, None if context is None else context[0], device,
                                 trajectory=saved)


def check_output_path(path: str, name: str, folder: bool = False) -> None:
    """Refuse, before anything is written, an output path that cannot be written: empty, a file where a folder
    is wanted (or the reverse), under a file, or in a folder that is not writable. ValueError naming `name`."""
    if path == "" or path.strip() == "":
        raise ValueError(f"{name} must not be empty")
    if folder and os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{name} {path} is an existing file; give a folder")
    if not folder and os.path.isdir(path):
        raise ValueError(f"{name} {path} is an existing folder; give a file name")
    parent = os.path.dirname(os.path.abspath(path if not (folder and os.path.isdir(path)) else path + "/x"))
    while not os.path.exists(parent):                                  # the nearest existing folder above it
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ValueError(f"{name} {path}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise ValueError(f"{name} {path}: the folder {parent} is not writable")


def _sample_text_to_image(args, device) -> int:
    """`minidiff sample` on a TextToImage folder: --n images of --prompt, guided by --guidance (default 3)."""
    if args.prompt is None:
        raise ValueError(f"{args.checkpoint} is a text-to-image pipeline: pass --prompt \"...\"")
    if args.context is not None or args.gif is not None or args.raw:
        raise ValueError("--context, --gif and --raw do not apply to a text-to-image pipeline (it takes --prompt)")
    pipe = TextToImage.load_pretrained(args.checkpoint, device)
    x = pipe(args.prompt, steps=args.steps or 25, sampler=args.sampler or "ddim",
             spacing=args.spacing or "leading", eta=0.0 if args.eta is None else args.eta,
             guidance_scale=3.0 if args.guidance is None else args.guidance, n_per_prompt=args.n,
             generator=torch.Generator().manual_seed(args.seed))
    imaging.save_image_grid(x, args.out, nrow=args.nrow, scale=args.scale)
    print(f"wrote {args.out}")
    if args.out_dir is not None:
        _write_images(x, args)
    return 0


def _write_images(x, args) -> None:
    """--out-dir: image k as DIR/seed<S>_<k>.png (native size), and DIR/index.csv saying how each was made."""
    os.makedirs(args.out_dir, exist_ok=True)
    pixels = imaging.to_uint8(x)                                       # [N, H, W, 3] uint8
    gray = x.shape[1] == 1
    rows = []
    for k in range(len(pixels)):
        name = f"seed{args.seed}_{k:04d}.png"
        picture = Image.fromarray(pixels[k, :, :, 0] if gray else pixels[k])
        imaging.save_picture(picture, os.path.join(args.out_dir, name))
        guidance = args.guidance if args.guidance is not None else ""
        rows.append([name, k, args.seed, args.n, args.context or args.prompt or "", args.checkpoint,
                     args.sampler or "default", args.steps or "default", guidance])
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["file", "image", "seed", "n", "context", "checkpoint", "sampler", "steps", "guidance"])
    writer.writerows(rows)
    atomic_write_text(text.getvalue(), os.path.join(args.out_dir, "index.csv"))
    print(f"wrote {len(rows)} images and index.csv to {args.out_dir} (image k of --n {args.n} --seed {args.seed})")


def _sample_shape(model, spec: dict, image_size: Optional[int], path: str) -> tuple:
    """(C, H, W) to sample: the shape the file records (``model.sample_shape``), at --image-size N x N when
    given. A file that records none (written before files recorded it) needs --image-size; nothing is guessed."""
    from .model_table import in_channels_of, sample_shape_of
    recorded = sample_shape_of(model)
    if image_size is None:
        if recorded is None:
            raise ValueError(f"{path} does not record the size of its samples (written before checkpoints "
                             f"recorded it): pass --image-size N, the size it was trained at")
        return recorded
    channels = recorded[0] if recorded is not None else in_channels_of(model, spec)
    if channels is None:
        raise ValueError(f"{path}: cannot tell how many channels {spec['class']} samples have")
    return (channels, image_size, image_size)


def parse_context(text: str, model, n: int, class_names: Optional[List[str]] = None):
    """--context as a batch of n: "hero" / "3" / "0,1,0,0,0" -> float [n, K] vectors or int64 [n] class ids.

    class_names: what class k is called, as the checkpoint records it (a labelled folder's subfolders);
    without them a 5-class ContextUnet takes the sprites course's names.
    """
    n_cfeat = getattr(model, "n_cfeat", None)                          # float-vector models (ContextUnet)
    null_id = getattr(model, "null_id", getattr(model, "num_classes", None))   # class-id models
    if n_cfeat is None and null_id is None:
        raise ValueError(f"{type(model).__name__} takes no context; drop --context")
    text = text.strip()
    if "," in text:
        if n_cfeat is None:
            raise ValueError(f"{type(model).__name__} takes a class id, not a vector: use --context N")
        try:
            values = [float(v) for v in text.split(",")]
        except ValueError:
            raise ValueError(f"--context vector must be comma-separated numbers, got {text!r}") from None
        if len(values) != n_cfeat:
            raise ValueError(f"--context needs {n_cfeat} comma-separated numbers, got {len(values)}")
        return torch.tensor(values).expand(n, -1).clone()
    if class_names is None and n_cfeat is not None:
        class_names = list(CLASS_NAMES) if n_cfeat == len(CLASS_NAMES) else None
    if class_names is not None and text in class_names:                 # a name wins over a number
        index = list(class_names).index(text)
    elif text.lstrip("-").isdigit():
        index = int(text)
    else:
        known = f"one of {list(class_names)}" if class_names else "(this model records no class names)"
        raise ValueError(f"unknown context {text!r}: give a class index, a vector, or a class name {known}")
    classes = n_cfeat if n_cfeat is not None else null_id
    if not 0 <= index < classes:
        raise ValueError(f"--context class index must lie in [0, {classes - 1}], got {index}")
    if n_cfeat is not None:
        return torch.nn.functional.one_hot(torch.full((n,), index), n_cfeat).float()
    return torch.full((n,), index, dtype=torch.int64)


# -------------------------------------------------------------------------------------- eval / bench
def cmd_delegate(command: str, argv: List[str]) -> int:
    """`eval` and `bench` live in other modules: module.main(argv) -> int; the benchmarks are imported when asked for.

    `eval` is minidiff.metrics, part of the package. The benchmarks are not (they belong to the source
    checkout, beside tests/): after ``pip install .``, ``minidiff bench`` runs them when started inside a
    checkout, and says how to get one otherwise.
    """
    if command == "eval":
        return int(evaluation_main(argv) or 0)
    module_name = "benchmarks.run_all"
    try:
        module = _import_delegate(module_name)
    except ModuleNotFoundError as error:
        if error.name is None or not module_name.startswith(error.name):
            raise
        why = (f"{module_name} is not installed: the benchmarks live in benchmarks/ of minidiff's source checkout, "
               f"which `pip install` does not copy. Run `minidiff bench ...` (or `python -m benchmarks.run_all "
               f"--quick`, or `make bench`) inside a checkout")
        if "-h" in argv or "--help" in argv:
            print(f"usage: minidiff {command} [ARGS ...]\n\nHanded to {module_name}.main(ARGS); {why}.")
            return 0
        print(f"minidiff {command}: error: {why}", file=sys.stderr)
        return 2
    entry = getattr(module, "main", None)
    if entry is None:
        print(f"minidiff {command}: error: {module_name} has no main(argv) entry point", file=sys.stderr)
        return 2
    return int(entry(argv) or 0)


def _import_delegate(module_name: str):
    """import `module_name`; for benchmarks.* also from a source checkout at or above the working folder."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if not module_name.startswith("benchmarks."):
            raise
        folder = os.getcwd()
        while True:
            if os.path.isfile(os.path.join(folder, "benchmarks", "run_all.py")) and \
                    os.path.isfile(os.path.join(folder, "minidiff", "__init__.py")):
                break
            parent = os.path.dirname(folder)
            if parent == folder:
                raise error from None
            folder = parent
    sys.path.insert(0, folder)
    return importlib.import_module(module_name)


if __name__ == "__main__":
    sys.exit(main())
