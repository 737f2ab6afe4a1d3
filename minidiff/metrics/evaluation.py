"""Evaluate a diffusion model: draw class-balanced samples, then measure them against real data.

    results = evaluate(model, schedule, n=500, sampler="ddim", steps=25, guidance_scale=2.0)
    print(format_report(results))

    results = evaluate_checkpoint("runs/sprites/checkpoint.pt", sampler="dpmpp_2m", steps=10)

What is measured (all in the features of the data set's FeatureClassifier, see features.py):

    fd               Fréchet distance, samples vs real images (Heusel et al. 2017); lower is better
    fd_real          the same number for a SECOND real set of the same size: the floor that a perfect
                     model would reach at this n (Fréchet distance is biased upwards at small n)
    class_accuracy   samples the classifier puts in the class they were conditioned on
    precision/recall Kynkäänniemi et al. 2019 with k = 3: realism and coverage
    diversity        mean pairwise feature distance of the samples; diversity_real for real data
    structure_*      sprites only: the fraction of samples passing each of the generator's guarantees
                     (palette colours, a uniform background border, mirror symmetry of front-facing
                     classes), from minidiff.data.sprite_structure_checks: a sample passes a check
                     when >= 80% of its pixels are within 24 (of 255) of what the check asks for.
                     Real sprites pass 100%, uniform noise 0%; a sprite blurred by one pixel ~40%

Your own images: ``reference=ImageFolder(root, size)`` with class subfolders measures against that
folder, in the features of a classifier trained on it (features.folder_feature_extractor); the
checkpoint's class names must be the folder's. ``evaluate_checkpoint`` (``minidiff eval``) reads what
data a checkpoint was trained on and refuses to score it against data it has no feature network for.

Sample k is conditioned on class k % K (K = 5 sprite classes, 10 digits, a folder's class count), so
every class gets n / K samples. Starting noises come from one generator seeded with `seed`, so two
samplers evaluated with the same seed start from the same x_T: their numbers differ by the sampler alone.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Optional

import torch
from torch import Tensor

from .. import checkpoint as ckpt
from ..data import ImageFolder, sprite_structure_checks, to_uint8_images
from ..samplers import SAMPLERS, sample
from ..schedule import SPACINGS, NoiseSchedule
from .features import (
    NATIVE_SIZE,
    NUM_CLASSES,
    FeatureClassifier,
    feature_extractor,
    folder_feature_extractor,
    procedural_data,
)
from .statistics import class_accuracy, diversity, frechet_distance, precision_recall

REFERENCE_SEED = 2024       # real images for comparison: not the classifier's training seed (1000)
FLOOR_SEED = 2025           # the second real set, for fd_real
# the training data classes (Trainer records type(dataset).__name__) that a built-in feature network knows
FEATURE_DATASETS = {"ProceduralSprites": "sprites", "SpriteArrays": "sprites", "SpritesDataset": "sprites",
                    "ProceduralDigits": "digits", "DigitArrays": "digits"}


MIN_SAMPLES = 8             # 2 k + 2 for the k-NN precision/recall with k = 3


def _check_memory(model, n: int, batch_size: int, shape, device) -> None:
    """n samples (and two real sets of n) on the CPU, a batch of samples on `device`: within minidiff.limits."""
    from .. import limits
    limits.check_memory(3 * n * limits.FLOAT_BYTES * math.prod(shape),
                        f"n {n}: {n:,} samples and two real sets of {'x'.join(map(str, shape))} images")
    limits.check_sampling_memory(model, min(n, batch_size), shape, device=device, name="batch_size")


def infer_dataset(model) -> str:
    """"sprites" for a 3-channel network, "digits" for a 1-channel one (ContextUnet and friends)."""
    channels = getattr(model, "in_channels", None)
    if channels == 3:
        return "sprites"
    if channels == 1:
        return "digits"
    raise ValueError(f"cannot tell which data set {type(model).__name__} models (in_channels={channels!r}); "
                     f"pass dataset='sprites' or 'digits'")


def class_contexts(model, class_ids: Tensor) -> Optional[Tensor]:
    """The context that asks `model` for classes `class_ids` [B]: one-hot float [B, n_cfeat] for a
    ContextUnet-style network, the ids themselves for a class-embedding network (`num_classes`),
    None for an unconditional one."""
    if getattr(model, "n_cfeat", None):
        return torch.nn.functional.one_hot(class_ids, model.n_cfeat).float()   # [B, n_cfeat]
    if getattr(model, "num_classes", None):
        return class_ids.long()                                                # [B]
    return None


def _real_set(reference, dataset: str, n: int, size: int):
    """(images [n, C, H, W], class ids [n]) from `reference`: None (procedural, REFERENCE_SEED), a data
    set with ``.tensors()`` (ProceduralSprites, SpritesDataset, ProceduralDigits, ...), or a tuple
    (images, labels). A larger set is cut to a fixed random subset of n images, so that Fréchet
    distances are computed at one n (their bias depends on it)."""
    if reference is None:
        images, class_ids, _ = procedural_data(dataset, n, REFERENCE_SEED, size)
        return images, class_ids
    images, labels = reference.tensors() if hasattr(reference, "tensors") else reference
    labels = torch.as_tensor(labels)
    labels = labels.argmax(dim=1) if labels.ndim == 2 else labels
    if len(images) > n:
        keep = torch.randperm(len(images), generator=torch.Generator().manual_seed(REFERENCE_SEED))[:n]
        images, labels = images[keep], labels[keep]
    return images, labels


@torch.no_grad()
def generate(model, schedule: NoiseSchedule, class_ids: Tensor, shape, sampler: str = "ddim",
             steps: Optional[int] = None, guidance_scale: Optional[float] = None, seed: int = 0,
             batch_size: int = 250, progress: bool = False, device=None, **sample_options):
    """Samples [n, C, H, W] in [-1, 1] for classes `class_ids` [n], in batches, and the NFE per image.

    x_T for all n images comes from one generator seeded with `seed`; batch b's sampler noise (DDPM,
    eta > 0) from a generator seeded with seed + 1 + b. shape: (C, H, W).
    device: where the model is (default: its parameters' device). Returns (samples, nfe): samples on
    the CPU, nfe = network calls per image (a guided call counts once).
    """
    n = len(class_ids)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    x_T = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    calls = [0]
    hook = model.register_forward_pre_hook(lambda module, args: calls.__setitem__(0, calls[0] + 1))
    batches = []
    try:
        for b, start in enumerate(range(0, n, batch_size)):
            ids = class_ids[start:start + batch_size]
            context = class_contexts(model, ids)
            x = sample(model, schedule, (len(ids), *shape), sampler=sampler, steps=steps,
                       context=None if context is None else context.to(device),
                       guidance_scale=guidance_scale if context is not None else None,
                       x_T=x_T[start:start + batch_size].to(device),
                       generator=torch.Generator(device).manual_seed(seed + 1 + b),
                       progress=progress, device=device, **sample_options)
            batches.append(x.float().clamp(-1, 1).cpu())
    finally:
        hook.remove()
    n_batches = math.ceil(n / batch_size)
    return torch.cat(batches), calls[0] / n_batches


def measure(samples: Tensor, class_ids: Optional[Tensor], real_images: Tensor, classifier: FeatureClassifier,
            dataset: str, k: int = 3, structure_tolerance: int = 24,
            structure_min_fraction: float = 0.8) -> dict:
    """Every number of the module docstring for `samples` [n, C, H, W] (asked for classes `class_ids`)
    against `real_images` [N, C, H, W], except fd_real (see `evaluate`). A flat dict of floats."""
    fake_feats = classifier.features(samples)                        # [n, D]
    real_feats = classifier.features(real_images)                    # [N, D]
    precision, recall = precision_recall(real_feats, fake_feats, k=k)
    results = {
        "fd": frechet_distance(real_feats, fake_feats),
        "class_accuracy": class_accuracy(classifier, samples, class_ids) if class_ids is not None else None,
        "precision": precision, "recall": recall,
        "diversity": diversity(fake_feats), "diversity_real": diversity(real_feats),
    }
    if dataset == "sprites" and samples.shape[1] == 3:                # structure_palette, ..., structure_all
        labels = class_ids if class_ids is not None else classifier.predict(samples)
        checks = sprite_structure_checks(to_uint8_images(samples), labels.numpy(), tolerance=structure_tolerance,
                                         min_fraction=structure_min_fraction)
        results.update({f"structure_{name}": value for name, value in checks.items()})
    return results


def evaluate(model, schedule: NoiseSchedule, n: int = 500, sampler: str = "ddim", steps: Optional[int] = None,
             guidance_scale: Optional[float] = None, *, dataset: Optional[str] = None, reference=None,
             classifier: Optional[FeatureClassifier] = None, seed: int = 0, batch_size: int = 250,
             spacing: str = "leading", eta: float = 0.0, prediction_type: Optional[str] = None, k: int = 3,
             structure_tolerance: int = 24, structure_min_fraction: float = 0.8, device=None,
             cache_dir: Optional[str] = None, progress: bool = False, image_size: Optional[int] = None) -> dict:
    """Sample n class-balanced images from `model` and measure them (see the module docstring).

    model: a discrete-time network ``model(x, t, context)`` (ContextUnet: one-hot contexts). dataset:
    "sprites" | "digits", inferred from the model's in_channels when None. reference: the real images
    (default: ``ProceduralX(n, seed=REFERENCE_SEED)``; a bigger set is cut to n random images).
    classifier: default ``feature_extractor(dataset)``.
    sampler / steps / spacing / eta / guidance_scale: as in ``minidiff.sample`` (guidance needs a
    conditional model). device: where the model is and the classifier runs (default: the model's
    device). image_size: the samples' height and width (default: the model's recorded ``sample_shape``,
    else the built-in data set's own size). prediction_type: None takes ``model.prediction_type``.
    Returns a flat dict of plain numbers and strings (JSON-ready).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2 * k + 2:       # before any classifier training
        raise ValueError(f"n must be at least {2 * k + 2} (an integer) for k-NN precision/recall with k={k}, "
                         f"got {n!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    folder = reference if getattr(reference, "classes", None) is not None and hasattr(reference, "root") else None
    device = torch.device(device) if device is not None else next(model.parameters()).device
    if folder is not None:                                           # a labelled ImageFolder
        dataset, size, channels, num_classes = "folder", folder.size, folder.channels, len(folder.classes)
        if classifier is None:
            classifier = folder_feature_extractor(folder, device=device, cache_dir=cache_dir, progress=progress)
    else:
        dataset = dataset or infer_dataset(model)
        size = _sample_size(model, image_size) or NATIVE_SIZE[dataset]
        channels, num_classes = (3 if dataset == "sprites" else 1), NUM_CLASSES[dataset]
        if classifier is None:
            classifier = feature_extractor(dataset, device=device, cache_dir=cache_dir, progress=progress)
    _check_memory(model, n, batch_size, (channels, size, size), device)

    class_ids = torch.arange(n) % num_classes                         # balanced: sample k gets class k % K
    conditional = class_contexts(model, class_ids[:1]) is not None
    model_classes = getattr(model, "n_cfeat", None) or getattr(model, "num_classes", None)
    if conditional and model_classes != num_classes:
        raise ValueError(f"the model takes {model_classes} classes, the {dataset} data has {num_classes}: "
                         f"it was not trained on this data")
    if guidance_scale is not None and not conditional:
        raise ValueError(f"guidance_scale needs a conditional model; {type(model).__name__} has neither "
                         f"n_cfeat (one-hot contexts) nor num_classes (class ids)")
    start = time.perf_counter()
    samples, nfe = generate(model, schedule, class_ids, (channels, size, size), sampler, steps,
                            guidance_scale, seed, batch_size, progress, device, spacing=spacing, eta=eta,
                            prediction_type=prediction_type)
    seconds = time.perf_counter() - start

    real_images, _ = _real_set(folder.tensors() if folder is not None else reference, dataset, n, size)
    results = {"dataset": dataset if folder is None else f"folder {folder.root}", "sampler": sampler,
               "steps": steps if steps is not None else (schedule.T if sampler == "ddpm" else 25), "spacing": spacing,
               "guidance_scale": guidance_scale if conditional else None, "n": n, "seed": seed,
               "nfe": nfe, "sample_seconds": seconds, "images_per_second": n / seconds}
    results.update(measure(samples, class_ids if conditional else None, real_images, classifier, dataset, k,
                           structure_tolerance, structure_min_fraction))
    if reference is None and dataset != "folder":                   # the floor: real vs real at this n
        floor_images, _, _ = procedural_data(dataset, n, FLOOR_SEED, size)
        results["fd_real"] = frechet_distance(classifier.features(real_images), classifier.features(floor_images))
    else:
        results["fd_real"] = None
    results["classifier_accuracy"] = classifier.info.get("heldout_accuracy")    # held-out, on real data
    return results


def evaluate_checkpoint(path: str, n: int = 500, sampler: str = "ddim", steps: Optional[int] = None,
                        guidance_scale: Optional[float] = None, *, seed: int = 0, device: str = "cpu",
                        spacing: str = "leading", eta: float = 0.0, batch_size: int = 250,
                        dataset: Optional[str] = None, classifier: Optional[FeatureClassifier] = None,
                        cache_dir: Optional[str] = None, progress: bool = True,
                        reference_dir: Optional[str] = None, image_size: Optional[int] = None) -> dict:
    """``evaluate`` the model saved at `path`, with the schedule and prediction type it was trained with.

    What it is measured against: `reference_dir` (a folder of real images with class subfolders; a
    feature classifier is trained on it), else `dataset` ("sprites" | "digits"), else the data the
    checkpoint says it was trained on, when a built-in feature network knows it; otherwise a ValueError
    says how to measure it. Uses the EMA weights when the checkpoint has them. The `minidiff eval` command.
    The samples have the size the checkpoint records; `image_size` is needed only for a checkpoint written
    before checkpoints recorded it (ValueError otherwise).
    """
    checkpoint = ckpt.load_checkpoint(path)
    model = ckpt.model_from_checkpoint(checkpoint, ema=True, device=device, path=os.fspath(path))
    if _sample_size(model, image_size) is None:
        raise ValueError(f"{path} does not record the size of its samples (written before checkpoints recorded "
                         f"it): pass --image-size N (evaluate_checkpoint(..., image_size=N)), the size it was "
                         f"trained at")
    reference = None
    if reference_dir is not None:
        reference = _reference_folder(reference_dir, model, checkpoint.get("class_names"), image_size)
    elif dataset is None:
        dataset = _trained_on(checkpoint, model, os.fspath(path))
    schedule = ckpt.schedule_or_sde_from_checkpoint(checkpoint)
    if not isinstance(schedule, NoiseSchedule):
        raise ValueError(f"{path} holds a score-SDE model (or no schedule); evaluate supports discrete-time "
                         f"models trained with a NoiseSchedule")
    results = evaluate(model, schedule, n=n, sampler=sampler, steps=steps, guidance_scale=guidance_scale,
                       dataset=dataset, reference=reference, classifier=classifier, device=device, seed=seed,
                       batch_size=batch_size, spacing=spacing, eta=eta, cache_dir=cache_dir,
                       progress=progress, image_size=image_size)
    results["checkpoint"] = os.fspath(path)
    results["checkpoint_step"] = int(checkpoint.get("step", 0))
    return results


def _trained_on(checkpoint: dict, model, path: str) -> str:
    """"sprites" | "digits": the built-in feature network for the data the checkpoint was trained on."""
    source = (checkpoint.get("data") or {}).get("source")
    if source is None:                                               # written before checkpoints said
        dataset = infer_dataset(model)
        print(f"minidiff eval: note: {path} does not record its training data; measuring it against the "
              f"procedural {dataset} (from its {model.in_channels} channels). Pass --dataset or --reference DIR "
              f"to choose", file=sys.stderr)
        return dataset
    if source.get("class") in FEATURE_DATASETS:
        return FEATURE_DATASETS[source["class"]]
    where = f" {source['root']}" if source.get("root") else ""
    raise ValueError(f"{path} was trained on {source.get('class')}{where}; minidiff eval has feature networks only "
                     f"for the procedural sprites and digits. To measure it, pass --reference DIR, a folder of "
                     f"real images with class subfolders (DIR/<class>/<image>; the training folder will do): a "
                     f"feature classifier is trained on it (cached)")


def _sample_size(model, image_size: Optional[int]) -> Optional[int]:
    """`image_size` when given, else the height of the model's recorded sample shape (None if unknown)."""
    from ..model_table import sample_shape_of
    if image_size is not None:
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be an int >= 1, got {image_size!r}")
        return image_size
    shape = sample_shape_of(model)
    return shape[1] if shape is not None else None


def _reference_folder(root: str, model, class_names, image_size: Optional[int] = None):
    """The labelled ImageFolder at `root`, read at the model's size and channels; its classes must be the model's."""
    size = _sample_size(model, image_size)
    channels = getattr(model, "in_channels", 3)
    if size is None:
        raise ValueError(f"cannot tell the image size of {type(model).__name__} to read --reference {root} at")
    folder = ImageFolder(root, size=int(size), random_flip=False, channels=channels)
    if folder.classes is None:
        raise ValueError(f"--reference {root} has no class subfolders (DIR/<class>/<image>): the feature "
                         f"classifier needs labels to learn from")
    if class_names is not None and list(class_names) != folder.classes:
        raise ValueError(f"--reference {root} has classes {folder.classes}, the model was trained on "
                         f"{list(class_names)}")
    return folder


def format_report(results: dict) -> str:
    """A few readable lines for one ``evaluate`` result."""
    def num(value, digits=3):
        return "n/a" if value is None else f"{value:.{digits}f}"

    guidance = results.get("guidance_scale")
    lines = [f"{results['dataset']}: {results['n']} samples, {results['sampler']} {results['steps']} steps "
             f"({results['spacing']}), guidance {guidance if guidance is not None else 'none'}, "
             f"{num(results['nfe'], 0)} network calls per image, {num(results['images_per_second'], 1)} images/s",
             f"  Fréchet distance  {num(results['fd'])}   (real vs real at this n: {num(results.get('fd_real'))})",
             f"  class accuracy    {num(results['class_accuracy'])}",
             f"  precision/recall  {num(results['precision'])} / {num(results['recall'])}   (k-NN, k=3)",
             f"  diversity         {num(results['diversity'])}   (real data: {num(results['diversity_real'])})"]
    structure = {key[len("structure_"):]: value for key, value in results.items() if key.startswith("structure_")}
    if structure:
        checks = ", ".join(f"{name} {num(value)}" for name, value in structure.items())
        lines.append(f"  sprite structure  {checks}   (fraction of samples passing)")
    return "\n".join(lines)


def main(argv=None) -> int:
    """``python -m minidiff eval --checkpoint X [--sampler ddim --steps 25 --guidance 2 --n 500 ...]``."""
    from ..cli import OneLineParser, check_output_path  # here: the cli imports this module
    from ..limits import check_int
    from ..train_config import MAX_SEED
    p = OneLineParser(prog="minidiff eval", description="sample-quality metrics of a checkpoint "
                                "(Fréchet distance, class accuracy, precision/recall, diversity, sprite structure)")
    p.add_argument("--checkpoint", required=True, help="a minidiff checkpoint (discrete-time model)")
    p.add_argument("--sampler", default="ddim", choices=tuple(SAMPLERS), help="default ddim")
    p.add_argument("--steps", type=int, help="sampler steps (default: every step for ddpm, else 25)")
    p.add_argument("--spacing", default="leading", choices=SPACINGS, help="timestep grid (default leading)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (default 0)")
    p.add_argument("--guidance", "--guidance-scale", dest="guidance_scale", type=float, metavar="W",
                   help="classifier-free guidance scale (default: none, plain conditional sampling)")
    p.add_argument("--n", type=int, default=500, help="samples, class-balanced (default 500)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise (default 0)")
    p.add_argument("--batch-size", type=int, default=250, help="images per sampling batch (default 250)")
    p.add_argument("--dataset", choices=("sprites", "digits"),
                   help="measure against the procedural sprites or digits (default: the data the checkpoint was "
                        "trained on)")
    p.add_argument("--reference", metavar="DIR", help="measure against your own images: a folder with class "
                   "subfolders (DIR/<class>/<image>); a feature classifier is trained on it once and cached")
    p.add_argument("--image-size", type=int, metavar="N", help="the samples' size, for a checkpoint written before "
                   "checkpoints recorded it (default: the recorded size)")
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default)")
    p.add_argument("--cache-dir", help="feature classifier cache (default: $MINIDIFF_CACHE, else ~/.cache/minidiff)")
    p.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")
    args = p.parse_args(argv)
    if args.dataset is not None and args.reference is not None:
        raise ValueError("choose one of --dataset and --reference")
    check_int(args.n, "--n", MIN_SAMPLES)                      # every argument before any classifier training
    check_int(args.batch_size, "--batch-size", 1)
    check_int(args.seed, "--seed", 0, MAX_SEED)
    if args.steps is not None:
        check_int(args.steps, "--steps", 1)
    if args.json is not None:
        check_output_path(args.json, "--json")
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    results = evaluate_checkpoint(args.checkpoint, n=args.n, sampler=args.sampler, steps=args.steps,
                                  guidance_scale=args.guidance_scale, seed=args.seed, device=device,
                                  spacing=args.spacing, eta=args.eta, batch_size=args.batch_size,
                                  dataset=args.dataset, cache_dir=args.cache_dir, reference_dir=args.reference,
                                  image_size=args.image_size)
    print(format_report(results))
    if args.json:
        from ..file_io import atomic_write_text
        atomic_write_text(json.dumps(results, indent=2), args.json)
        print(f"wrote {args.json}")
    return 0
