"""The feature extractor behind the metrics: a small CNN classifier trained on procedural data.

FID (Heusel et al. 2017) measures distances in the features of an Inception network trained on
ImageNet. No such network can be downloaded here, and ImageNet features would say little about
16x16 sprites anyway, so minidiff does what small-data diffusion work does: it trains a small
classifier on the data set itself and uses its penultimate layer as the feature space.

    FeatureClassifier   conv blocks -> global average pool -> features [B, D] -> linear heads
    ClassifierConfig    everything that decides a classifier (data, network, training)
    feature_extractor   the trained classifier for "sprites" or "digits": from the cache, else trained
    folder_feature_extractor   the same for your own labelled image folder (class subfolders)

Training is deterministic (fixed seeds) and takes 20-35 s per data set on one CPU core (held-out
accuracy 1.000 on sprites, 0.998 on digits). The weights are cached in ``<cache>/metrics/``
(``<cache>`` is the `cache_dir` argument, else $MINIDIFF_CACHE, else ~/.cache/minidiff) under a
sha256 of the training data's bytes and the config, written atomically and read back with
``torch.load(weights_only=True)``.

Why auxiliary heads: a classifier trained only on the 5 sprite classes may ignore colour, and a
metric in its features would not see a model that paints every sprite red. Sprite classifiers
therefore also predict the drawing ("slime", "apple", ...) and the main colour; ``predict`` uses
the class head only, ``predict_attributes`` every head.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import COLOR_NAMES, ProceduralDigits, ProceduralSprites
from ..file_io import atomic_torch_save  # temporary file + fsync + os.replace

DATASETS = ("sprites", "digits", "folder")      # "folder": a labelled ImageFolder (folder_feature_extractor)
NATIVE_SIZE = {"sprites": 16, "digits": 28}
NUM_CLASSES = {"sprites": 5, "digits": 10}
CACHE_FORMAT = 1            # bump when the network or the file layout changes: old files are ignored


@dataclass(frozen=True)
class ClassifierConfig:
    """Everything that decides a feature classifier; part of its cache key."""

    dataset: str = "sprites"          # "sprites" (ProceduralSprites) | "digits" (ProceduralDigits) | "folder"
    image_size: Optional[int] = None  # None: the data set's native size (16 sprites, 28 digits)
    train_images: int = 30000         # training images, ProceduralX(train_images, seed=data_seed)
    heldout_images: int = 2000        # held-out images for the reported accuracy (another seed)
    data_seed: int = 1000             # not 0: samples are compared to real data drawn with other seeds
    heldout_seed: int = 1001
    widths: Tuple[int, ...] = (32, 64, 128)  # channels of the conv blocks; the last is the feature size D
    epochs: int = 3
    batch_size: int = 128
    lr: float = 2e-3                  # AdamW, cosine decay to 0
    noise_std: float = 0.1            # each training image gets Gaussian noise of std U(0, noise_std):
                                      # model samples are never pixel-exact, predictions must not hinge on that
    seed: int = 0                     # weights' initialisation, data order and augmentation noise

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}, got {self.dataset!r}")
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if any(w % 8 for w in self.widths):
            raise ValueError(f"widths must be multiples of 8 (GroupNorm with 8 groups), got {self.widths}")
        if self.dataset == "folder" and self.image_size is None:
            raise ValueError("a folder's ClassifierConfig needs image_size (the folder's size)")

    @property
    def size(self) -> int:
        return self.image_size if self.image_size is not None else NATIVE_SIZE[self.dataset]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


# ---------------------------------------------------------------------------------- the network
def _conv_block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.SiLU())


class FeatureClassifier(nn.Module):
    """A small CNN: features(x) [B, D] and one linear head per target (always a "class" head).

    blocks: conv3x3 stride 1, then stride 2 for every further width (16x16 -> 16, 8, 4 with three widths),
    each conv -> GroupNorm -> SiLU; features = mean over H, W of the last block. GroupNorm (not
    BatchNorm) so that an image's features never depend on the rest of its batch.
    x: [B, in_channels, H, W] in [-1, 1]. `heads`: {"class": K, ...} output sizes.
    """

    def __init__(self, in_channels: int, widths: Tuple[int, ...], heads: Dict[str, int]):
        super().__init__()
        if "class" not in heads:
            raise ValueError(f"heads must include 'class', got {sorted(heads)}")
        self.in_channels, self.widths, self.head_sizes = in_channels, tuple(widths), dict(heads)
        channels = (in_channels, *widths)
        self.blocks = nn.Sequential(*[_conv_block(channels[j], channels[j + 1], 1 if j == 0 else 2)
                                      for j in range(len(widths))])
        self.heads = nn.ModuleDict({name: nn.Linear(widths[-1], size) for name, size in heads.items()})
        self.info: dict = {}          # filled by feature_extractor: accuracy, training time, cache path

    @property
    def feature_dim(self) -> int:
        return self.widths[-1]

    def _features(self, x: Tensor) -> Tensor:
        return self.blocks(x).mean(dim=(2, 3))                      # [B, D, h, w] -> [B, D]

    def forward(self, x: Tensor) -> Dict[str, Tensor]:
        """{head name: logits [B, K]} (used for training)."""
        h = self._features(x)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def features(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """Feature vectors [B, D] (on the CPU) of images [B, C, H, W] in [-1, 1]."""
        return self._batched(x, batch_size, self._features)

    @torch.no_grad()
    def predict(self, x: Tensor, batch_size: int = 1000) -> Tensor:
        """Predicted class ids [B] (int64, on the CPU) of images [B, C, H, W] in [-1, 1]."""
        return self._batched(x, batch_size, lambda chunk: self.heads["class"](self._features(chunk)).argmax(1))

    @torch.no_grad()
    def predict_attributes(self, x: Tensor, batch_size: int = 1000) -> Dict[str, Tensor]:
        """{head name: predicted ids [B] (int64, CPU)} for every head: "class", and for sprite classifiers
        "kind" and "color", indices into ``info["vocabularies"][name]`` (set by feature_extractor)."""
        names = list(self.heads)

        def all_heads(chunk: Tensor) -> Tensor:
            h = self._features(chunk)                                   # [b, D]
            return torch.stack([self.heads[name](h).argmax(1) for name in names], dim=1)  # [b, heads]

        ids = self._batched(x, batch_size, all_heads)                   # [B, heads]
        return {name: ids[:, j] for j, name in enumerate(names)}

    def _batched(self, x: Tensor, batch_size: int, fn) -> Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected images [B, {self.in_channels}, H, W], got {tuple(x.shape)}")
        self.eval()
        device = next(self.parameters()).device
        return torch.cat([fn(x[i:i + batch_size].to(device, torch.float32)).cpu()
                          for i in range(0, len(x), batch_size)])


# ---------------------------------------------------------------------------------- data
def procedural_data(dataset: str, n: int, seed: int, image_size: Optional[int] = None):
    """ProceduralSprites or ProceduralDigits: (images [n, C, H, W] in [-1, 1], class ids [n], the data set object)."""
    size = image_size if image_size is not None else NATIVE_SIZE[dataset]
    if dataset == "sprites":
        data = ProceduralSprites(n, seed=seed, size=size)
        images, labels = data.tensors()
        return images, labels.argmax(dim=1), data
    if dataset == "digits":
        data = ProceduralDigits(n, seed=seed, size=size)
        images, labels = data.tensors()
        return images, labels, data
    raise ValueError(f"procedural data set must be 'sprites' or 'digits', got {dataset!r}")


def _targets(dataset: str, class_ids: Tensor, data, vocabularies: Dict[str, list]) -> Dict[str, Tensor]:
    """{head name: int64 [n]}. Sprites add "kind" and "color" (indices into `vocabularies`, -1 if absent)."""
    targets = {"class": class_ids}
    if dataset == "sprites":
        for name, values in (("kind", data.kinds), ("color", data.main_colors)):
            index = {v: j for j, v in enumerate(vocabularies[name])}
            targets[name] = torch.tensor([index.get(v, -1) for v in values], dtype=torch.int64)  # -1: unseen
    return targets


def _data_hash(config: ClassifierConfig, images: Tensor, targets: Dict[str, Tensor]) -> str:
    """sha256 of the cache format, the config and the training data's bytes (images and every target)."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": CACHE_FORMAT, **config.to_dict()}, sort_keys=True).encode())
    h.update(images.numpy().tobytes())
    for name in sorted(targets):
        h.update(name.encode() + targets[name].numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------- training
def train_classifier(config: ClassifierConfig, images: Tensor, targets: Dict[str, Tensor],
                     heads: Dict[str, int], progress: bool = False) -> FeatureClassifier:
    """Train a FeatureClassifier on images [N, C, H, W] with targets {head: int64 [N]}; deterministic.

    heads: {head name: number of classes}. Loss: the sum of the heads' cross-entropies (targets of
    -1 are ignored). Does not touch the global RNG state.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)                              # the initial weights
        model = FeatureClassifier(images.shape[1], config.widths, heads)
    generator = torch.Generator().manual_seed(config.seed)          # data order and noise
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr)
    n = len(images)
    steps_per_epoch = n // config.batch_size
    total = config.epochs * steps_per_epoch
    if total == 0:
        raise ValueError(f"{n} training images are fewer than one batch of {config.batch_size}")
    model.train()
    step = 0
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        for b in range(steps_per_epoch):
            index = order[b * config.batch_size:(b + 1) * config.batch_size]
            x = images[index]                                       # [b, C, H, W]
            std = config.noise_std * torch.rand(len(x), 1, 1, 1, generator=generator)
            x = x + std * torch.randn(x.shape, generator=generator)
            for group in optimizer.param_groups:                    # cosine decay to 0
                group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / total))
            logits = model(x)
            loss = sum(F.cross_entropy(logits[name], targets[name][index], ignore_index=-1) for name in heads)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
        if progress:
            print(f"  feature classifier ({config.dataset}): epoch {epoch + 1}/{config.epochs}, loss {loss.item():.4f}")
    return model.eval()


# ---------------------------------------------------------------------------------- cache
def cache_root(cache_dir: Optional[str] = None) -> str:
    """`cache_dir`, else $MINIDIFF_CACHE, else ~/.cache/minidiff."""
    if cache_dir is not None:
        return os.fspath(cache_dir)
    return os.environ.get("MINIDIFF_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minidiff")


def default_config(dataset: str) -> ClassifierConfig:
    """The config ``feature_extractor`` uses for `dataset` (measured on one CPU core: sprites ~20 s,
    digits ~25 s of compute; held-out accuracy 1.000 and 0.998)."""
    if dataset == "digits":                     # 28x28 images cost ~3x more per image than 16x16 sprites
        return ClassifierConfig(dataset="digits", train_images=20000, epochs=2, batch_size=64)
    return ClassifierConfig(dataset=dataset)


_LOADED: Dict[Tuple[str, str], FeatureClassifier] = {}  # (cache file, device) -> classifier, this process


def feature_extractor(dataset: str = "sprites", device="cpu", cache_dir: Optional[str] = None,
                      config: Optional[ClassifierConfig] = None, progress: bool = True) -> FeatureClassifier:
    """The feature classifier for `dataset` ("sprites" | "digits"), loaded from the cache or trained now.

    Its ``info`` dict holds heldout_accuracy, train_seconds, cache_path and the config.
    """
    if dataset == "folder":
        raise ValueError("for your own images use folder_feature_extractor(ImageFolder(root, size))")
    config = config if config is not None else default_config(dataset)
    if config.dataset != dataset:
        raise ValueError(f"config is for {config.dataset!r}, not {dataset!r}")
    images, class_ids, data = procedural_data(dataset, config.train_images, config.data_seed, config.image_size)
    vocabularies = {}
    if dataset == "sprites":
        vocabularies = {"kind": sorted(set(data.kinds)), "color": list(COLOR_NAMES)}
    targets = _targets(dataset, class_ids, data, vocabularies)
    heads = {"class": NUM_CLASSES[dataset], **{name: len(words) for name, words in vocabularies.items()}}
    key = _data_hash(config, images, targets)
    path = os.path.join(cache_root(cache_dir), "metrics", f"classifier-{dataset}-{key[:20]}.pt")
    memo = (path, str(torch.device(device)))
    if memo in _LOADED:
        return _LOADED[memo]

    classifier = _load_cached(path, key)
    if classifier is None:
        if progress:
            print(f"training the {dataset} feature classifier (once; cached at {path})")
        start = time.perf_counter()
        classifier = train_classifier(config, images, targets, heads, progress)
        seconds = time.perf_counter() - start
        accuracies = heldout_accuracies(classifier, config, vocabularies)
        classifier.info = {"heldout_accuracy": accuracies["class"], "heldout_accuracy_heads": accuracies,
                           "train_seconds": seconds}
        _save(path, key, config, classifier)
        if progress:
            print(f"  trained in {seconds:.1f} s; held-out accuracy {accuracies['class']:.4f}")
    classifier.info.update(cache_path=path, config=config.to_dict(), vocabularies=vocabularies)
    classifier = classifier.to(device).eval()
    _LOADED[memo] = classifier
    return classifier


@torch.no_grad()
def heldout_accuracies(classifier: FeatureClassifier, config: ClassifierConfig, vocabularies: Dict[str, list]) -> dict:
    """{head name: accuracy} on ProceduralX(config.heldout_images, seed=config.heldout_seed)."""
    images, class_ids, data = procedural_data(config.dataset, config.heldout_images, config.heldout_seed,
                                              config.image_size)
    targets = _targets(config.dataset, class_ids, data, vocabularies)
    classifier.eval()
    logits = {name: torch.cat(chunks) for name, chunks in _chunked_logits(classifier, images).items()}
    known = {name: targets[name] >= 0 for name in targets}          # kinds the training set never showed: skipped
    return {name: float((logits[name].argmax(1) == targets[name])[known[name]].double().mean()) for name in targets}


def _chunked_logits(classifier: FeatureClassifier, images: Tensor, batch_size: int = 1000) -> Dict[str, list]:
    out: Dict[str, list] = {name: [] for name in classifier.head_sizes}
    for i in range(0, len(images), batch_size):
        for name, logits in classifier(images[i:i + batch_size]).items():
            out[name].append(logits)
    return out


def _save(path: str, key: str, config: ClassifierConfig, classifier: FeatureClassifier) -> None:
    atomic_torch_save({"format": CACHE_FORMAT, "key": key, "config": config.to_dict(),
                       "in_channels": classifier.in_channels, "heads": classifier.head_sizes,
                       "state_dict": classifier.state_dict(), "info": dict(classifier.info)}, path)


def _load_cached(path: str, key: str) -> Optional[FeatureClassifier]:
    """The classifier stored at `path` if it is there, readable and made for `key`; else None."""
    if not os.path.isfile(path):
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
        if stored.get("format") != CACHE_FORMAT or stored.get("key") != key:
            return None
        classifier = FeatureClassifier(stored["in_channels"], tuple(stored["config"]["widths"]), stored["heads"])
        classifier.load_state_dict(stored["state_dict"])
    except Exception as error:  # truncated, corrupt or foreign file: retrain and overwrite it
        warnings.warn(f"ignoring unreadable feature classifier cache {path}: {error}", stacklevel=3)
        return None
    classifier.info = dict(stored.get("info") or {})
    return classifier.eval()


def folder_feature_extractor(folder, device="cpu", cache_dir: Optional[str] = None,
                             config: Optional[ClassifierConfig] = None, progress: bool = True) -> FeatureClassifier:
    """A feature classifier trained on a labelled ``minidiff.data.ImageFolder`` (from the cache, else now).

    The classes are the folder's class subfolders. Every fifth image of each class is held out for the
    reported ``info["heldout_accuracy"]`` (None when a class has fewer than five images); the rest train
    it, at least 300 steps. Cached like ``feature_extractor``, keyed by the images' bytes, the labels
    and the config, so a changed folder trains a new one.
    """
    classes = getattr(folder, "classes", None)
    if classes is None:
        raise ValueError(f"the reference folder {getattr(folder, 'root', folder)} has no class subfolders "
                         f"(root/<class>/<image>): a feature classifier needs labels to learn from")
    images, labels = folder.tensors()                                # [N, C, H, W], [N]
    rank = torch.zeros_like(labels)                                  # position of each image within its class
    for c in range(len(classes)):
        members = (labels == c).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    heldout = rank % 5 == 4
    train_images, train_labels = images[~heldout], labels[~heldout]
    if config is None:
        batch_size = min(64, len(train_images))
        epochs = max(3, math.ceil(300 / (len(train_images) // batch_size)))
        config = ClassifierConfig(dataset="folder", image_size=folder.size, train_images=len(train_images),
                                  heldout_images=int(heldout.sum()), batch_size=batch_size, epochs=epochs)
    targets = {"class": train_labels}
    key = _data_hash(config, train_images, targets)
    path = os.path.join(cache_root(cache_dir), "metrics", f"classifier-folder-{key[:20]}.pt")
    memo = (path, str(torch.device(device)))
    if memo in _LOADED:
        return _LOADED[memo]
    classifier = _load_cached(path, key)
    if classifier is None:
        if progress:
            print(f"training a feature classifier on {folder.root} ({len(classes)} classes; cached at {path})")
        start = time.perf_counter()
        classifier = train_classifier(config, train_images, targets, {"class": len(classes)})
        seconds = time.perf_counter() - start
        accuracy = None
        if heldout.any() and all(((labels == c) & heldout).any() for c in range(len(classes))):
            accuracy = float((classifier.predict(images[heldout]) == labels[heldout]).double().mean())
        classifier.info = {"heldout_accuracy": accuracy, "train_seconds": seconds}
        _save(path, key, config, classifier)
        if progress:
            print(f"  trained in {seconds:.1f} s ({config.epochs} epochs); held-out accuracy "
                  f"{'n/a' if accuracy is None else f'{accuracy:.4f}'}")
    classifier.info.update(cache_path=path, config=config.to_dict(), classes=list(classes))
    classifier = classifier.to(device).eval()
    _LOADED[memo] = classifier
    return classifier


def clear_memory_cache() -> None:
    """Forget the classifiers loaded in this process (the files on disk stay)."""
    _LOADED.clear()
