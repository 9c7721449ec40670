"""Content-addressed blobs (images, pixel maps, import files, export results) and image checks.

A blob lives at ``blobs/sha256/<first two hex>/<hex>``: the same bytes are
stored once, whoever uploads them and however often. Writes are idempotent
(a blob already there is not written again), so a blob written for a batch
that is then rejected is harmless: nothing references it, and the garbage
collection the contract promises (unreferenced blobs go after 24 hours)
removes it. That collection is not implemented yet; when it is, a blob is
referenced by an item row (``image_sha256``), a pixel-map annotation
(``geometry.sha256``), an unfinished import job (any ``"sha256"`` in its
``request`` JSON: the manifest files) or an export job (``result`` JSON,
``"files": [{"path", "sha256", "size_bytes"}]``) while its row exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import struct
import warnings

from PIL import Image, UnidentifiedImageError

from simulacra_services.annotation.domain.records import ImageInfo
from simulacra_services.core import errors
from simulacra_services.core.budget import PixelBudget
from simulacra_services.core.storage.blobs import (  # noqa: F401 (the blob rules, re-exported)
    MAX_BLOB_BYTES,
    READ_CHUNK_BYTES,
    SHA256_HEX,
    BlobStore,
    blob_key,
    check_sha256,
)

MAX_IMAGE_BYTES = 32 * 1024 * 1024
# The default of the server's limit (setting max_image_pixels, SIMULACRA_MAX_IMAGE_PIXELS).
MAX_IMAGE_PIXELS = 64 * 1024 * 1024

_FORMATS = {"PNG": "png", "JPEG": "jpeg"}
_CHANNELS = {"L": 1, "RGB": 3}


def inspect_image(
    data: bytes, field: str = "image.data", *, max_pixels: int = MAX_IMAGE_PIXELS, budget: PixelBudget | None = None
) -> ImageInfo:
    """Decode ``data`` fully and describe it; refuse anything but PNG/JPEG with 1 or 3 channels.

    The pixel count is checked from the header before decoding, so a small
    file that would expand to gigabytes (a decompression bomb) is refused
    without being decoded. ``max_pixels`` is the server's setting; Pillow
    itself refuses images above twice its own ``Image.MAX_IMAGE_PIXELS``
    (about 179 million pixels) whatever the setting says. ``budget``: the
    process's decode budget, taken for the image's pixels while it decodes.
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise errors.InvalidArgument(
            "IMAGE_TOO_LARGE",
            f"{field}: {len(data)} bytes, images are at most {MAX_IMAGE_BYTES} bytes",
            {"field": field, "size": len(data), "limit": MAX_IMAGE_BYTES},
        )
    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning; the explicit check below is the one that counts.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=("PNG", "JPEG"))
            width, height = image.size
            if width * height > max_pixels:
                raise errors.InvalidArgument(
                    "IMAGE_TOO_MANY_PIXELS",
                    f"{field}: {width}x{height} = {width * height} pixels, more than the limit of {max_pixels} "
                    "(a decompression bomb is refused before decoding)",
                    {"field": field, "width": width, "height": height, "limit": max_pixels},
                )
            if image.mode not in _CHANNELS:
                raise errors.InvalidArgument(
                    "UNSUPPORTED_IMAGE_MODE",
                    f"{field}: pixel mode {image.mode!r}; images must be grayscale (L, 1 channel) or RGB (3 channels)",
                    {"field": field, "mode": image.mode},
                )
            with budget.held(width * height) if budget is not None else contextlib.nullcontext():
                image.load()
                image_format, mode = image.format or "", image.mode
                image.close()  # frees the decoded pixels while the budget still counts them
    except errors.SimulacraError:
        raise
    except Image.DecompressionBombError:
        raise errors.InvalidArgument(
            "IMAGE_TOO_MANY_PIXELS",
            f"{field}: the image has more pixels than the limit of {max_pixels} (a decompression bomb)",
            {"field": field, "limit": max_pixels},
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error, EOFError) as error:
        problem, says = _image_problem(error)
        raise errors.InvalidArgument(
            "INVALID_IMAGE", f"{field}: the bytes are not a decodable PNG or JPEG image: {says}", {"field": field, "problem": problem}
        ) from None
    if width <= 0 or height <= 0:
        raise errors.InvalidArgument("INVALID_IMAGE", f"{field}: an image needs at least one pixel", {"field": field})
    return ImageInfo(
        sha256=hashlib.sha256(data).hexdigest(),
        width=width,
        height=height,
        format=_FORMATS[image_format],
        channels=_CHANNELS[mode],
        size_bytes=len(data),
    )


def _image_problem(error: BaseException) -> tuple[str, str]:
    """A stable word (metadata ``problem``) and a sentence for why Pillow could not decode an image,
    instead of the library's exception class or text (which change between versions)."""
    text = str(error).lower()
    if isinstance(error, UnidentifiedImageError):
        return "unrecognized_format", "the data starts like no PNG or JPEG file"
    if "truncated" in text or isinstance(error, EOFError) or "unexpected end" in text:
        return "truncated", "the data ends before the image does"
    if "crc" in text or "checksum" in text:
        return "checksum_mismatch", "a chunk's checksum does not match its data"
    return "corrupt", "the image data is damaged"
