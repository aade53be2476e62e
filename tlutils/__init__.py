"""tlutils: the code behind the Transfer Learning Lab notebooks, in three layers.

core/     what any transfer-learning project needs (imports nothing above it)
    paths       the project root and the cache folder
    io          atomic writes, hashes, downloads
    runtime     seeds (and seeded blocks that leave the global RNG alone), the device, argument checks
    sources     asset records and their sources: mirror, pip or Debian package, cache, online
    catalog     every model and data set of the course, as plain data
    assets      the resolver: an asset name -> where it is, offline first
    convert     one-time conversions (CTranslate2, GGUF, ONNX, Darknet -> PyTorch), checked against the originals
    data        every data set loader (images, text, audio, boxes)
    tables      the applications' real tables and digits: MovieLens, credit, STAR, HMDA, molecules
    rdata_lazy  R data without R: .rda files and lazy-load databases (Rdata.rdb + .rdx)
    own_data    your own data: an image folder per class, a CSV of texts, a folder of audio clips
    datasets    seeded splits, transforms, torch Datasets, collators, length-grouped batches
    models      every model loader (ImageNet CNNs, text encoders, SmolLM2, Whisper, GE2E, wav2vec 2.0, YOLOv3-tiny)
    yolo        YOLOv3-tiny as an nn.Module: Darknet's letterbox, box decoding, NMS; a new-class head, YOLOv3 loss
    surgery     heads, freezing, blocks, parameter counts, layer-wise parameter groups
    train       the one training loop (fit with step functions), evaluate/predict, History, checkpoints
    distributed data-parallel training (DDP) under torchrun: process group, shards, averaged logs
    features    frozen-backbone features with a verified cache, linear probes
    compare     the comparison protocol: arms x seeds, equal budgets, choices on validation, test once
    results     headline results a notebook saves (data/headlines/) for later notebooks to quote
    metrics     every metric: classification, detection, segmentation, QA, ROUGE, WER
    plots       every generic plot
topics/   one module per technique (imports only core)
    anatomy, architectures, regularizers, strategies, adaptation, peft, explain, detection,
    segmentation, text, qa, language_models, speech, speaker
    domain        shift scores (proxy A-distance), gradient reversal, DANN and CORAL steps
    forgetting    agreement with the original model, Fisher + EWC penalty, LwF distillation step
    overfitting   where the validation loss turns, the mixup step, augmentation on cached features
    efficient     BitFit, bottleneck adapters, optimizer-state bytes, int8 dynamic quantisation
    bias          WEAT association test with permutation p-value, per-group accuracy and gap
    learning_curves  accuracy vs labels per class through the comparison protocol, labels to a target
    training_cost  steps and seconds to a target accuracy, seconds per epoch, cost growth with data
course/   what only this course needs (may import anything)
    exercises, widgets, curriculum, notebook_outputs, finetune_job (python -m tlutils finetune),
    student (student copies: solutions replaced by stubs) and site (the course as a static web site),
    question_bank (the interview questions as data, questions/*.yaml) and interview (quiz, flashcards,
    mock interview, progress, cheat sheet) of the hub (13),
    and the experiments of single notebooks:
    fundamentals (01), mathematics (03), strategy_table (04), medical and vision_classification (05),
    scenes (06), text_comparison (07), speech_curves (09), the five sectors of 10 (molecules, credit,
    recommend, sim_to_real, grading, student_support), scratch_vs_transfer (11), challenges (12),
    work_stack (14)

The names the notebooks use most are importable from ``tlutils`` itself, for example
``from tlutils import fit, set_seed``; each is the same object as in its home module.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

#: Short import paths: name -> home module (loaded on first use, so ``import tlutils`` stays light).
SHORTCUTS = {
    "set_seed": "tlutils.core.runtime", "get_device": "tlutils.core.runtime", "seeded": "tlutils.core.runtime",
    "resolve": "tlutils.core.assets",
    "fit": "tlutils.core.train", "evaluate": "tlutils.core.train", "predict": "tlutils.core.train",
    "History": "tlutils.core.train",
    "extract_features": "tlutils.core.features", "feature_loader": "tlutils.core.features",
    "train_linear_probe": "tlutils.core.features",
    "balanced_subset": "tlutils.core.datasets", "train_val_test_split": "tlutils.core.datasets",
    "freeze": "tlutils.core.surgery", "unfreeze": "tlutils.core.surgery", "replace_head": "tlutils.core.surgery",
    "parameter_count": "tlutils.core.surgery", "trainable_parameter_count": "tlutils.core.surgery",
    "compare": "tlutils.core.compare", "assert_better": "tlutils.core.compare", "assert_tied": "tlutils.core.compare",
    "check_number": "tlutils.course.exercises", "check_choice": "tlutils.course.exercises",
    "solved": "tlutils.course.exercises",
}

__all__ = sorted(SHORTCUTS)


def __getattr__(name: str):
    if name in SHORTCUTS:
        return getattr(importlib.import_module(SHORTCUTS[name]), name)
    raise AttributeError(f"module 'tlutils' has no attribute {name!r}; the modules are listed in help(tlutils)")


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(SHORTCUTS))
