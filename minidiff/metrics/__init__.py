"""Sample-quality metrics that work offline, in the features of a classifier minidiff trains itself.

There is no downloadable Inception network here, so the feature space is a small CNN trained on the
procedural data set (sprites: 5 classes, digits: 10), cached by a hash of its data and config.

    features.py    FeatureClassifier, ClassifierConfig, feature_extractor (train once, then cached)
    statistics.py  frechet_distance (Heusel et al. 2017), precision_recall (Kynkäänniemi et al. 2019),
                   diversity, class_accuracy: numbers from feature vectors [N, D]
    evaluation.py  evaluate / evaluate_checkpoint: sample a model, compute every number, format_report;
                   main(argv) is `python -m minidiff eval`

    import minidiff.metrics as mm
    classifier = mm.feature_extractor("sprites")          # ~20 s on one CPU core the first time
    fd = mm.frechet_distance(classifier.features(real), classifier.features(fake))
    print(mm.format_report(mm.evaluate_checkpoint("runs/sprites/checkpoint.pt", sampler="ddim", steps=25)))
"""

from .evaluation import (
    class_contexts,
    evaluate,
    evaluate_checkpoint,
    format_report,
    generate,
    infer_dataset,
    main,
    measure,
)
from .features import (
    ClassifierConfig,
    FeatureClassifier,
    cache_root,
    clear_memory_cache,
    default_config,
    feature_extractor,
    procedural_data,
    train_classifier,
)
from .statistics import (
    class_accuracy,
    diversity,
    frechet_distance,
    frechet_distance_from_stats,
    gaussian_stats,
    knn_radii,
    precision_recall,
    sqrtm_psd,
)

__all__ = [
    "ClassifierConfig", "FeatureClassifier", "feature_extractor", "default_config", "train_classifier",
    "procedural_data", "cache_root", "clear_memory_cache",
    "frechet_distance", "frechet_distance_from_stats", "gaussian_stats", "sqrtm_psd",
    "precision_recall", "knn_radii", "diversity", "class_accuracy",
    "evaluate", "evaluate_checkpoint", "format_report", "generate", "measure", "infer_dataset", "class_contexts",
    "main",
]
