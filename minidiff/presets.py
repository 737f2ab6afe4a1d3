"""Ready-made training runs, and turning a run description (a plain dict / JSON file) into objects.

A run description has five sections, each plain data:

    {"model":    {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 64, "n_cfeat": 5, "height": 16}},
     "schedule": {"kind": "linear", "T": 500, "beta_start": 1e-4, "beta_end": 0.02},    # or "sde": {...}
     "data":     {"kind": "sprites", "root": "data/sprites", "n": 89400},
     "train":    {...TrainConfig fields...}}

A JSON config file may start from a preset with "preset": "quick" and override any section's keys.
``python -m minidiff train`` builds a run with ``build_run``; ``examples/sprites_ddpm.py`` reads the same
``PRESETS`` sizes and builds its parts on its own page.
"""

from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from . import data
from .config_types import MAX_DEPTH, check_depth, check_kwargs, check_value, shown
from .model_table import build_model
from .schedule import NoiseSchedule
from .sde import sde_from_config
from .train import TrainConfig

_SPRITES_MODEL = {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 64, "n_cfeat": 5, "height": 16}}
_COURSE_SCHEDULE = {"kind": "course", "T": 500, "beta_start": 1e-4, "beta_end": 0.02}   # NoiseSchedule.course

PRESETS = {
    # The DeepLearning.AI sprites course: T = 500, beta 1e-4 -> 0.02, ContextUnet(64, 5, 16), batch 100,
    # lr 1e-3 decayed linearly to 0, 32 epochs over 89,400 sprites (the course's files if present in
    # data/sprites, else the embedded procedural sprites). Hours on a CPU; minutes on a GPU.
    "course": {
        "description": "the sprites course: ContextUnet n_feat=64, T=500, batch 100, lr 1e-3 linear decay, 32 epochs",
        "model": _SPRITES_MODEL,
        "schedule": _COURSE_SCHEDULE,
        "data": {"kind": "sprites", "root": "data/sprites", "n": 89400, "seed": 0},
        "train": {"epochs": 32, "batch_size": 100, "lr": 1e-3, "decay": "linear", "ema_decay": 0.999,
                  "log_every": 100, "sample_every": 5000, "checkpoint_every": 2000},
    },
    # The course's model, trained long enough for its deterministic samplers to be good: about 45 minutes on
    # a 2-core CPU with native bf16 (AVX512-BF16/AMX; measured 43 min 25 s; 13.4 epochs of 89,400 sprites).
    # "auto" precision: bf16 only where the CPU has it natively; an AVX2-only CPU trains in float32 instead
    # (about 1.25 s a step, so hours, not minutes).
    "long": {
        "description": "about 45 minutes on 2 CPU cores with native bf16: the course model, 12,000 steps of 100",
        "model": _SPRITES_MODEL,
        "schedule": _COURSE_SCHEDULE,
        "data": {"kind": "sprites", "root": "data/sprites", "n": 89400, "seed": 0},
        "train": {"steps": 12000, "batch_size": 100, "lr": 1e-3, "warmup_steps": 200, "decay": "linear",
                  "ema_decay": 0.999, "mixed_precision": "auto", "log_every": 100, "sample_every": 3000,
                  "checkpoint_every": 500},
    },
    # 6-13 minutes on a 2-core CPU with sampling (5 min 56 s measured on one with AVX-512, 12 min 51 s on an
    # AVX2-only one): a narrower ContextUnet on 8,000 sprites.
    # Not the course's recipe: the network predicts v (Salimans & Ho 2022), the loss is Min-SNR-5 weighted
    # (Hang et al. 2023) and lr is 2e-3, the three winners of benchmarks/quality_per_minute.py. Each step costs
    # the same as with the course's eps loss; few-step samplers get far better sprites from the same minutes.
    "quick": {
        "description": "6-13 minutes on a 2-core CPU: ContextUnet n_feat=32, T=500, 4,000 steps of 64, "
                       "v-prediction, Min-SNR weighting",
        "model": {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 32, "n_cfeat": 5, "height": 16}},
        "schedule": _COURSE_SCHEDULE,
        "data": {"kind": "procedural_sprites", "n": 8000, "seed": 0},
        "train": {"steps": 4000, "batch_size": 64, "lr": 2e-3, "warmup_steps": 100, "decay": "linear",
                  "ema_decay": 0.995, "prediction_type": "v_prediction", "loss_weighting": "min_snr",
                  "log_every": 50, "sample_every": 1000, "checkpoint_every": 500},
    },
    # Seconds: checks that everything runs end to end (the samples are noise).
    "smoke": {
        "description": "seconds: a tiny ContextUnet for 10 steps, to check the pipeline runs",
        "model": {"class": "ContextUnet", "kwargs": {"in_channels": 3, "n_feat": 16, "n_cfeat": 5, "height": 16}},
        "schedule": {"kind": "linear", "T": 100, "beta_start": 1e-4, "beta_end": 0.02},
        "data": {"kind": "procedural_sprites", "n": 128, "seed": 0},
        "train": {"steps": 10, "batch_size": 16, "lr": 1e-3, "log_every": 5, "sample_every": 10,
                  "sample_steps": 5, "samples_per_class": 4, "ema_decay": 0.99},
    },
}

SECTIONS = ("preset", "description", "model", "schedule", "sde", "data", "train")
SCHEDULE_KINDS = {"course": NoiseSchedule.course, "linear": NoiseSchedule.linear,
                  "scaled_linear": NoiseSchedule.scaled_linear, "cosine": NoiseSchedule.cosine}
CLASS_COUNT_KWARGS = ("n_cfeat", "num_class_embeds", "num_classes")   # ContextUnet, UNet2D, score UNets


KIND_KEYS = {"schedule": ("kind", "linear"), "data": ("kind", None), "sde": ("class", None)}   # key, default


def resolve(preset: Optional[str] = None, config_path: Optional[str] = None) -> dict:
    """The run description from a preset, a JSON file (which may name its own base "preset"), or both.

    A section of the file is merged key by key into the preset's section of the same kind; a section of
    another kind ({"schedule": {"kind": "cosine"}} on a linear preset, another data "kind", another SDE
    "class") and the "model" section replace the preset's. Every section is type-checked (check_run).
    """
    overrides = read_json(config_path) if config_path is not None else {}
    where = config_path or "the run description"
    unknown = [section for section in overrides if section not in SECTIONS]
    if unknown:
        raise ValueError(f"{where}: unknown config section(s) {unknown}; known sections: {list(SECTIONS)}")
    check_value(overrides.get("preset"), Optional[str], "preset")
    check_value(overrides.get("description", ""), str, "description")
    for section in ("model", "schedule", "sde", "data", "train"):
        if section in overrides:
            check_value(overrides[section], dict, section)
    if "schedule" in overrides and "sde" in overrides:
        raise ValueError(f"{where}: give one of the sections \"schedule\" (a discrete-time run) and \"sde\" "
                         f"(a score-SDE run), not both")
    base_name = overrides.get("preset", preset)
    if preset is not None and overrides.get("preset") not in (None, preset):
        raise ValueError(f"--preset {preset} and the config's \"preset\": {overrides['preset']!r} disagree")
    if base_name is None and config_path is None:
        base_name = "smoke"
    if base_name is not None and base_name not in PRESETS:
        raise ValueError(f"preset: unknown preset {base_name!r}; choose one of {sorted(PRESETS)}")
    run = copy.deepcopy(PRESETS[base_name]) if base_name is not None else {}
    run["preset"] = base_name
    for section, values in overrides.items():
        if section == "sde":
            run.pop("schedule", None)
        if section == "schedule":
            run.pop("sde", None)
        base = run.get(section)
        if isinstance(values, dict) and isinstance(base, dict) and _same_kind(section, base, values):
            run[section] = {**base, **copy.deepcopy(values)}
        else:
            run[section] = copy.deepcopy(values)
    for section in ("model", "data", "train"):
        if section not in run:
            raise ValueError(f"the run description has no {section!r} section")
    check_run(run)
    return run


def _same_kind(section: str, base: dict, values: dict) -> bool:
    """Whether a config section may be merged into the preset's: same kind (schedule, data), same SDE class.
    The model section always replaces (its kwargs belong to its class)."""
    if section == "model":
        return False
    if section not in KIND_KEYS:
        return True
    key, default = KIND_KEYS[section]
    return values.get(key, base.get(key, default)) == base.get(key, default)


def check_run(run: dict) -> None:
    """Type-check a resolved run description against the schema: every section, key and value, with errors
    that name the field's path ("train.lr: expected a number, got \"0.1\""), and the sizes it implies
    against minidiff.limits (image sides, data in memory)."""
    from . import limits
    from .model_table import model_classes
    check_depth(run, "the run description")
    check_value(run.get("model"), dict, "model")
    model = run["model"]
    unknown = sorted(set(model) - {"class", "kwargs"})
    if unknown:
        raise ValueError(f"model: unknown field(s) {unknown}; known fields: ['class', 'kwargs']")
    classes = model_classes()
    check_value(model.get("class"), str, "model.class")
    if model["class"] not in classes:
        raise ValueError(f"model.class: expected one of {sorted(classes)}, got {model['class']!r}")
    kwargs = model.get("kwargs", {})
    check_kwargs(classes[model["class"]], kwargs, "model.kwargs")
    for name in ("height", "image_size", "sample_size"):
        if isinstance(kwargs.get(name), int):
            limits.check_image_side(kwargs[name], f"model.kwargs.{name}")
    if run.get("sde") is not None:
        from .flow import RectifiedFlow
        from .sde import SDE_CLASSES
        sde_classes = {**SDE_CLASSES, "RectifiedFlow": RectifiedFlow}          # what sde_from_config rebuilds
        sde = run["sde"]
        check_value(sde, dict, "sde")
        unknown = sorted(set(sde) - {"class", "kwargs"})
        if unknown:
            raise ValueError(f"sde: unknown field(s) {unknown}; known fields: ['class', 'kwargs']")
        if sde.get("class") not in sde_classes:
            raise ValueError(f"sde.class: expected one of {sorted(sde_classes)}, got {shown(sde.get('class'))}")
        check_kwargs(sde_classes[sde["class"]], sde.get("kwargs", {}), "sde.kwargs")
    elif run.get("schedule") is not None:
        schedule = run["schedule"]
        check_value(schedule, dict, "schedule")
        kind = schedule.get("kind", "linear")
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"schedule.kind: expected one of {sorted(SCHEDULE_KINDS)}, got {shown(kind)}")
        check_kwargs(SCHEDULE_KINDS[kind], {k: v for k, v in schedule.items() if k != "kind"}, "schedule")
    data = run["data"]
    check_value(data, dict, "data")
    builders = _data_builders()
    if data.get("kind") not in builders:
        raise ValueError(f"data.kind: expected one of {list(builders)}, got {shown(data.get('kind'))}")
    check_kwargs(builders[data["kind"]], {k: v for k, v in data.items() if k != "kind"}, "data")
    if "size" in data:
        limits.check_image_side(data["size"], "data.size")
    if "n" in data and isinstance(data["n"], int) and data["kind"].startswith("procedural"):
        side, channels = data.get("size", 16 if data["kind"] == "procedural_sprites" else 28), 3
        limits.check_memory(2 * limits.FLOAT_BYTES * data["n"] * channels * side * side,
                            f"data.n {data['n']}: {data['n']:,} generated images of {side}x{side} held in memory")
    TrainConfig.from_dict(run["train"], where="train")


def read_json(path: str) -> dict:
    """A JSON object from `path`, with errors that name the file (nesting deeper than config_types.MAX_DEPTH too)."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"config file {path} is a directory")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        with open(path) as f:
            values = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"config file {path} is not valid JSON: {error}") from None
    except RecursionError:
        raise ValueError(f"config file {path} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    if not isinstance(values, dict):
        raise ValueError(f"config file {path} must hold a JSON object, got {type(values).__name__}")
    check_depth(values, f"config file {path}")
    return values


@dataclass
class Run:
    """The objects a run description builds: what ``Trainer(model, dataset, config, schedule, sde)`` takes."""

    model: nn.Module
    dataset: Any
    config: TrainConfig
    schedule: Optional[NoiseSchedule] = None
    sde: Any = None


def build_run(run: dict, out_dir: Optional[str] = None) -> Run:
    """Build model, dataset, TrainConfig and schedule or SDE from a resolved run description.

    A labelled image folder (class subfolders) decides the model's number of classes: its class-count
    argument (n_cfeat, num_class_embeds or num_classes) is set to the folder's, in `run` too.
    Everything is checked first (check_run), the model's parameters counted on the meta device.
    """
    from . import limits
    check_run(run)
    train = dict(run["train"])
    if out_dir is not None:
        train["out_dir"] = out_dir
    sde = None
    if run.get("sde") is not None:
        sde = sde_from_config(run["sde"])
        train.setdefault("objective", "flow" if type(sde).__name__ == "RectifiedFlow" else "dsm")
    schedule = build_schedule(run["schedule"]) if sde is None and run.get("schedule") is not None else None
    spec = run["model"]
    if not isinstance(spec, dict) or "class" not in spec:
        raise ValueError(f"model must look like {{\"class\": name, \"kwargs\": {{...}}}}, got {spec!r}")
    kwargs = dict(spec.get("kwargs", {}))
    dataset = build_dataset(run["data"])
    classes = getattr(dataset, "classes", None)
    if classes is not None:
        key = next((name for name in CLASS_COUNT_KWARGS if name in kwargs), None)
        if key is None:
            raise ValueError(f"the image folder {dataset.root} is labelled ({len(classes)} class folders) but the "
                             f"model's kwargs name no class count ({' / '.join(CLASS_COUNT_KWARGS)}); add one, or "
                             f"train unconditionally with data \"labelled\": false (minidiff train --no-labels)")
        kwargs[key] = len(classes)
        run["model"] = {**spec, "kwargs": {**spec.get("kwargs", {}), key: len(classes)}}
    if sde is not None and spec["class"] in ("ScoreUNet", "ResidualScoreUNet", "ConditionalScoreUNet",
                                             "LatentScoreUNet"):
        kwargs.setdefault("sde", sde)                                   # score UNets divide by the marginal std
    config = TrainConfig.from_dict(train, where="train")
    meta = limits.build_on_meta(spec["class"], kwargs, "model.kwargs")   # its size, before allocating it
    if meta is not None:
        limits.check_memory(limits.TRAINING_STATE_COPIES * limits.FLOAT_BYTES * limits.parameter_count(meta),
                            f"model.kwargs: {spec['class']} with {limits.parameter_count(meta):,} parameters "
                            f"(weights, gradients, EMA and AdamW state)")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)                              # initial weights: the seed alone decides
            model = build_model(spec["class"], **kwargs)
    except TypeError as error:
        raise ValueError(f"cannot build {spec['class']} from {spec.get('kwargs')}: {error}") from None
    return Run(model, dataset, config, schedule, sde)


def build_schedule(values: dict) -> NoiseSchedule:
    values = dict(values)
    kind = values.pop("kind", "linear")
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"schedule kind must be one of {sorted(SCHEDULE_KINDS)}, got {kind!r}")
    return SCHEDULE_KINDS[kind](**values)


def _data_builders() -> dict:
    return {"procedural_sprites": data.ProceduralSprites, "sprites": data.load_sprites,
            "sprite_files": data.SpritesDataset, "image_folder": data.ImageFolder,
            "procedural_digits": data.ProceduralDigits}


def build_dataset(values: dict):
    """procedural_sprites {n, seed} | sprites {root, n, seed} (course files, else procedural) |
    sprite_files {sprites_path, labels_path} | image_folder {root, size, channels, labelled, random_flip} |
    procedural_digits {n, seed, size}."""

    values = dict(values)
    kind = values.pop("kind", None)
    builders = _data_builders()
    if kind not in builders:
        raise ValueError(f"data kind must be one of {list(builders)}, got {kind!r}")
    try:
        return builders[kind](**values)
    except TypeError as error:
        raise ValueError(f"bad arguments for data kind {kind!r}: {error}") from None
