"""Datasets: Fashion-MNIST (idx files), labelled and unlabelled image folders, image bytes, and a
synthetic data set that a tiny network learns in seconds (what the tests use instead of real data).

Nothing here touches Ray or MLflow. No data is ever downloaded unless the caller asks for it
(``download=True``); tests never do.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import struct
import tempfile
import urllib.request
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The four files of the data set with their MD5 sums (the same as torchvision checks).
FASHION_MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
_SPLIT_PREFIX = {"train": "train", "test": "t10k"}

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not where it was looked for; the message says how to get it."""


class ImageDecodeError(ValueError):
    """Bytes that decode_image refuses. ``code`` names the reason, for callers that map it (the HTTP
    service maps it to a status): ``empty``, ``not_an_image``, ``unsupported_format``, ``corrupt``,
    ``too_large``."""

    def __init__(self, message: str, code: str = "not_an_image"):
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------- idx files
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an idx file (MNIST format), gzipped or not, into a numpy array.

    Layout: two zero bytes, a type byte, the number of dimensions, then each dimension as a
    big-endian uint32, then the data in C order.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an idx file (bad magic number {raw[:4]!r})")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: idx header truncated")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != count * dtype.itemsize:
        raise ValueError(
            f"{path}: idx data has {len(raw) - header} bytes, the header announces {count * dtype.itemsize}"
        )
    data = np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as an idx file (gzipped when the name ends in .gz); the inverse of read_idx."""
    path = Path(path)
    array = np.asarray(array)
    codes = {np.dtype(v).newbyteorder("="): k for k, v in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"dtype {array.dtype} has no idx type code")
    payload = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload += np.ascontiguousarray(array, dtype=_IDX_DTYPES[code]).tobytes()
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wb") as f:
        f.write(payload)
    return path


# ---------------------------------------------------------------------------------- Fashion-MNIST
def _cache_dir() -> Path:
    return Path(os.environ.get("ZOO_CACHE_DIR", Path.home() / ".cache" / "zoo")) / "fashion-mnist"


def _has_fashion_mnist(directory: Path) -> bool:
    return all(
        (directory / name).is_file() or (directory / name.removesuffix(".gz")).is_file()
        for name in FASHION_MNIST_FILES
    )


def _not_found_message(looked: Sequence[Path]) -> str:
    where = ", ".join(str(p) for p in looked) or "(nowhere)"
    return (
        f"Fashion-MNIST not found (looked in: {where}). Fix: `apt-get install -y dataset-fashion-mnist` "
        f"(installs {FASHION_MNIST_SYSTEM_DIR}), or pass the directory holding "
        f"{', '.join(FASHION_MNIST_FILES)} (--data PATH / path=... / $FASHION_MNIST_DIR), "
        "or download it (--download / download=True)."
    )


def find_fashion_mnist(path: str | Path | None = None) -> Path:
    """The directory holding the four Fashion-MNIST idx files.

    Looks, in order, at ``path``, ``$FASHION_MNIST_DIR``, /usr/share/datasets/fashion-mnist (the
    Debian package dataset-fashion-mnist) and ~/.cache/zoo/fashion-mnist. An explicit ``path``
    that lacks the files is an error (no silent fallback to another copy).
    """
    if path is not None:
        p = Path(path).expanduser()
        if _has_fashion_mnist(p):
            return p
        raise DatasetNotFoundError(_not_found_message([p]))
    candidates = []
    if os.environ.get("FASHION_MNIST_DIR"):
        candidates.append(Path(os.environ["FASHION_MNIST_DIR"]).expanduser())
    candidates += [FASHION_MNIST_SYSTEM_DIR, _cache_dir()]
    for c in candidates:
        if _has_fashion_mnist(c):
            return c
    raise DatasetNotFoundError(_not_found_message(candidates))


def download_fashion_mnist(directory: str | Path | None = None, mirror: str = FASHION_MNIST_MIRROR) -> Path:
    """Fetch the four files from ``mirror`` into ``directory`` (default ~/.cache/zoo/fashion-mnist),
    checking their MD5 sums; each file is written to a temporary name and renamed."""
    directory = Path(directory) if directory is not None else _cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    for name, md5 in FASHION_MNIST_FILES.items():
        target = directory / name
        if target.is_file() and _md5(target) == md5:
            continue
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=60) as resp:
                shutil.copyfileobj(resp, out)
            if _md5(Path(tmp)) != md5:
                raise OSError(f"{mirror + name}: MD5 mismatch, the download is corrupt; try again")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return directory


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_fashion_mnist(
    split: str = "train", path: str | Path | None = None, download: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Images uint8 [n, 28, 28] and labels int64 [n] of the ``"train"`` (60k) or ``"test"`` (10k) split.

    Labels index FASHION_MNIST_CLASSES. With ``download=True`` a missing data set is fetched into
    ~/.cache/zoo (never done by the tests: nothing is downloaded at run time unless asked for).
    """
    if split not in _SPLIT_PREFIX:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        directory = find_fashion_mnist(path)
    except DatasetNotFoundError:
        if not download:
            raise
        directory = download_fashion_mnist(path)
    prefix = _SPLIT_PREFIX[split]

    def _file(kind: str) -> Path:
        gz = directory / f"{prefix}-{kind}-ubyte.gz"
        return gz if gz.is_file() else gz.with_suffix("")

    images = read_idx(_file("images-idx3"))
    labels = read_idx(_file("labels-idx1")).astype(np.int64)
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
        raise ValueError(f"{directory}: unexpected Fashion-MNIST shapes {images.shape} / {labels.shape}")
    return images, labels


# ------------------------------------------------------------------------------------- synthetic
def synthetic_class_names(num_classes: int) -> tuple[str, ...]:
    """Names of the synthetic classes: ``class00``, ``class01``, ..."""
    width = max(2, len(str(num_classes - 1)))
    return tuple(f"class{c:0{width}d}" for c in range(num_classes))


def _prototypes(num_classes: int, size: int) -> np.ndarray:
    """One float image in [0, 1] per class: a bar whose orientation depends on the class, a blob at a
    class-specific position and a faint grating of the bar's orientation. Depends only on
    (num_classes, size), never on the seed, so that two calls with different seeds draw from the
    same classes."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c0 = (size - 1) / 2.0
    protos = np.zeros((num_classes, size, size))
    for c in range(num_classes):
        theta = np.pi * c / num_classes
        # Distance of each pixel to the line through the centre at angle theta.
        dist = np.abs(-(xx - c0) * np.sin(theta) + (yy - c0) * np.cos(theta))
        bar = np.clip(1.0 - dist / (0.09 * size), 0.0, 1.0)
        phi = 2 * np.pi * c / num_classes
        # The blob sits on a circle; its radius alternates so that neighbouring classes differ more.
        r = size * (0.30 if c % 2 == 0 else 0.22)
        bx, by = c0 + r * np.cos(phi), c0 + r * np.sin(phi)
        blob = np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * (0.09 * size) ** 2))
        # A faint grating of the class's orientation and period: local evidence of the class
        # everywhere in the image, so that small CNNs with global pooling learn it too.
        period = 3.5 if c % 2 == 0 else 6.0
        grating = 0.5 + 0.5 * np.cos(2 * np.pi * ((xx * np.cos(theta) + yy * np.sin(theta)) / period))
        protos[c] = np.clip(0.6 * bar + blob + 0.25 * grating, 0.0, 1.0)
    return protos


def synthetic_images(
    n: int, num_classes: int, size: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A labelled data set of class-dependent patterns: images uint8 [n, size, size], labels int64 [n].

    Each class is an oriented bar, a blob at a class-specific position and a faint grating (the same
    for every seed); each image shifts its class pattern by up to 1 pixel, scales its brightness and adds
    Gaussian noise. A tiny CNN or MLP learns it to > 90% in a few seconds. Labels are balanced
    (round-robin, shuffled).
    """
    if n < 0 or num_classes < 1 or size < 8:
        raise ValueError(
            f"synthetic_images needs n >= 0, num_classes >= 1, size >= 8; got {n}, {num_classes}, {size}"
        )
    rng = np.random.default_rng(seed)
    protos = _prototypes(num_classes, size)
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    images = protos[labels]
    shifts = rng.integers(-1, 2, size=(n, 2))
    for dy, dx in np.unique(shifts, axis=0):
        sel = (shifts[:, 0] == dy) & (shifts[:, 1] == dx)
        images[sel] = np.roll(images[sel], (int(dy), int(dx)), axis=(1, 2))
    images = images * rng.uniform(0.7, 1.0, size=(n, 1, 1)) + rng.normal(0.0, 0.08, size=images.shape)
    return (np.clip(images, 0.0, 1.0) * 255).round().astype(np.uint8), labels


# -------------------------------------------------------------------------------------- images
def list_images(root: str | Path) -> list[Path]:
    """Every image file under ``root`` (png, jpg, jpeg, webp, bmp; any depth; labels ignored), sorted."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory of images")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def read_image_folder(root: str | Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """A labelled ImageFolder: ``root/<class>/**/<image>``. Returns (paths, labels int64, classes),
    classes sorted by directory name, labels indexing them. Images directly in ``root`` are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root} is not a directory")
    paths: list[Path] = []
    labels: list[int] = []
    classes: list[str] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = list_images(d)
        if not files:
            continue
        classes.append(d.name)
        paths += files
        labels += [len(classes) - 1] * len(files)
    if not classes:
        raise ValueError(
            f"{root} holds no labelled images: expected {root}/<class name>/<image>.png "
            f"(extensions {', '.join(IMAGE_EXTENSIONS)})"
        )
    return paths, np.asarray(labels, dtype=np.int64), classes


# The decoders the zoo ever runs: a file in any other format is refused before a less-exercised PIL
# plugin parses it. Serving narrows this further (serving.inference.FORMATS).
DECODABLE_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "WEBP", "BMP")
# Magic numbers of formats PIL could read but the zoo does not take: refused as "unsupported_format"
# (the caller may say which formats to send) rather than "not_an_image".
_MAGIC = {"PNG": (b"\x89PNG",), "JPEG": (b"\xff\xd8\xff",), "BMP": (b"BM",), "GIF": (b"GIF87a", b"GIF89a")}
_MAGIC["TIFF"] = (b"II*\x00", b"MM\x00*")
_GREY_MODES = frozenset({"1", "L", "LA", "La"})
_WIDE_GREY_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})  # 16-bit PNGs open as these
_EXIF_ORIENTATION = 0x0112


def decode_image(
    data: bytes,
    *,
    formats: Sequence[str] = DECODABLE_FORMATS,
    max_pixels: int | None = None,
    what: str = "image",
) -> np.ndarray:
    """Decode PNG/JPEG/WebP/BMP bytes into uint8 [H, W] (grey sources) or [H, W, 3] (everything else).

    The one decoder of the zoo: training, evaluation, the job's readers and the HTTP service all call
    it, so an image gets the same pixels, hence the same class, on every path. Rules:

    - EXIF orientation is applied (a phone JPEG shot upright decodes upright);
    - grey stays grey: 1-bit, 8-bit and 16-bit grey give [H, W]; 16-bit values are scaled by
      255 / 65535 and rounded (so an 8-bit image saved as 16-bit, v * 257, decodes to v exactly);
    - palette images are expanded to their colours ([H, W, 3]); CMYK and other colour spaces are
      converted to RGB by PIL;
    - transparency (RGBA, LA, palette with a transparent entry) is composited **on black**:
      ``round(c * alpha / 255)``. Black is the background of the zoo's data (Fashion-MNIST draws bright
      objects on black), it is what premultiplied alpha means, and it does not depend on the colour a
      tool happened to store under transparent pixels; opaque pixels are unchanged.

    ``formats`` limits the PIL decoders tried; ``max_pixels`` refuses images with more pixels, read
    from the header before any pixel is decoded (decompression bombs). Truncated files raise; they are
    never padded. Every refusal is an :class:`ImageDecodeError` whose ``code`` names the reason.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise ImageDecodeError(f"{what} is empty: send the encoded file ({_names(formats)})", "empty")
    data = bytes(data)
    img = _open(data, formats, max_pixels, what)
    with img:
        try:
            img.load()
            return _to_array(img)
        except Image.DecompressionBombError as e:
            raise ImageDecodeError(f"{what} is too large ({e})", "too_large") from None
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            message = f"{what} is a truncated or corrupt {img.format} image ({e}); send the complete file"
            raise ImageDecodeError(message, "corrupt") from None


def _open(data: bytes, formats: Sequence[str], max_pixels: int | None, what: str) -> Image.Image:
    """Open (header only) with the allowed decoders and check the size before any pixel is decoded."""
    try:
        with warnings.catch_warnings():  # sizes between the limit and twice it are refused just below
            if max_pixels is not None:
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=tuple(formats))
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"{what} is too large ({e})", "too_large") from None
    except Image.UnidentifiedImageError:
        known = next((f for f, magics in _MAGIC.items() if data.startswith(magics)), None)
        if known is not None and known not in formats:
            raise ImageDecodeError(
                f"{what} is a {known} image, a format not taken here: send {_names(formats)}",
                "unsupported_format",
            ) from None
        message = f"{what} is not an image ({len(data)} bytes): send {_names(formats)}"
        raise ImageDecodeError(message) from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{what}: unreadable image header ({e}): send {_names(formats)}") from None
    width, height = img.size
    if width < 1 or height < 1:
        img.close()
        raise ImageDecodeError(f"{what} has no pixels ({width}x{height})")
    if max_pixels is not None and width * height > max_pixels:
        img.close()
        raise ImageDecodeError(
            f"{what} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels: "
            "resize it before sending",
            "too_large",
        )
    return img


def _to_array(img: Image.Image) -> np.ndarray:
    """A loaded PIL image -> uint8 [H, W] or [H, W, 3] by the rules of decode_image."""
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    mode = img.mode
    if mode in _WIDE_GREY_MODES:
        wide = np.asarray(img, dtype=np.float64)
        return np.clip(wide * (255.0 / 65535.0), 0, 255).round().astype(np.uint8)
    if mode in ("P", "PA"):
        img = img.convert("RGBA")  # the palette's colours and its transparent entry, if any
        mode = "RGBA"
    if mode in _GREY_MODES:
        return _on_black(np.asarray(img.convert("LA"), dtype=np.uint8))[..., 0]
    if mode in ("RGBA", "RGBa"):
        return _on_black(np.asarray(img.convert("RGBA"), dtype=np.uint8))
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _on_black(pixels: np.ndarray) -> np.ndarray:
    """[..., C + 1] colour + alpha -> [..., C] composited on black: round(c * alpha / 255), exact in
    integers (opaque pixels keep their value)."""
    colour, alpha = pixels[..., :-1].astype(np.uint32), pixels[..., -1:].astype(np.uint32)
    if (alpha == 255).all():
        return np.ascontiguousarray(pixels[..., :-1])
    return ((colour * alpha + 127) // 255).astype(np.uint8)


def _names(formats: Sequence[str]) -> str:
    shown = [{"JPEG": "JPEG", "WEBP": "WebP"}.get(f, f) for f in formats]
    return ", ".join(shown[:-1]) + f" or {shown[-1]}" if len(shown) > 1 else "".join(shown)


def encode_png(array: np.ndarray) -> bytes:
    """Encode a uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] array as PNG bytes (lossless)."""
    a = np.asarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"encode_png needs uint8 pixels, got {a.dtype}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise ValueError(f"encode_png needs [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {a.shape}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG")
    return buf.getvalue()


def read_image(path: str | Path) -> np.ndarray:
    """Read and decode one image file with decode_image (the rules of every path of the zoo)."""
    return decode_image(Path(path).read_bytes())
