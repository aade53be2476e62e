"""The map of the course: notebook files in order, and their measured run times."""

from __future__ import annotations

import json

from tlutils.core.paths import project_root

#: (file, guide section, what the learner does) for every notebook, in order.
NOTEBOOKS = (
    ("00_setup_and_tour.ipynb", "intro", "environment check, assets, how the course works"),
    ("01_fundamentals.ipynb", "2", "what transfers: pre-trained vs random features; extraction vs fine-tuning vs adaptation"),
    ("02_pretrained_models.ipynb", "3", "the model zoo: ImageNet CNNs, BERT- and GPT-family, speech; body vs head"),
    ("03_mathematics.ipynb", "4", "L_source + lambda L_target, gradients of frozen layers, L2-SP, a lambda slider"),
    ("04_finetuning_strategies.ipynb", "5", "extraction, partial, full, layer-wise rates, gradual unfreezing, LP-FT"),
    ("05_vision_classification.ipynb", "6", "image classification, augmentation, error analysis, Grad-CAM"),
    ("06_vision_detection_segmentation.ipynb", "6", "detection and segmentation with a pre-trained backbone"),
    ("07_nlp_bert.ipynb", "7", "BERT-family classification and extractive question answering"),
    ("08_nlp_gpt.ipynb", "7", "GPT-family generation and headline fine-tuning with LoRA"),
    ("09_speech.ipynb", "8", "spoken digits, speaker identification and a third speech task"),
    ("10_applications.ipynb", "9", "short real demos per sector"),
    ("11_scratch_vs_transfer.ipynb", "10", "the comparison table, measured"),
    ("12_challenges.ipynb", "11", "domain shift, overfitting, forgetting"),
    ("12b_cost_and_bias.ipynb", "11", "compute cost of each fine-tuning method, int8 inference; bias measured and mitigated"),
    ("13_interview_prep.ipynb", "12-13", "the interview hub: auto-graded quiz, flashcards, mock interview and a "
     "cheat sheet, every answer quoting your own runs"),
    ("14_from_course_to_work.ipynb", "beyond", "the standard stack: Trainer + datasets, timm, torchrun / DDP, LoRA SFT, "
     "safetensors + model card, ONNX and int8, your own data"),
)

#: Written by ``make test`` (tests/notebook_timing.py): seconds per notebook of the last run.
RUN_TIMES_FILE = "notebooks/run_times.json"


def run_times() -> dict:
    """The last measured run times: ``{"machine": ..., "seconds": {file: s}}`` (empty if never measured)."""
    path = project_root() / RUN_TIMES_FILE
    return json.loads(path.read_text()) if path.is_file() else {"machine": "", "measured": "", "seconds": {}}


def curriculum_table() -> list[dict]:
    """One row per notebook: file, section, topic, whether it exists, last measured minutes."""
    times = run_times()["seconds"]
    folder = project_root() / "notebooks"
    return [{"notebook": name, "section": section, "topic": topic, "available": (folder / name).is_file(),
             "minutes": round(times[name] / 60, 1) if name in times else None}
            for name, section, topic in NOTEBOOKS]
