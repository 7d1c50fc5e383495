"""Uploaded images: checked from their header, decoded on worker threads.

A PNG of zeros compresses about 1000:1: a 140 KB upload can claim 144 megapixels and cost
1.7 GB and seconds of CPU to decode, and decoded on the event loop it stalled every other
request (health checks included) for as long. So the pixel count is read from the header and
checked before anything is decoded, and decoding runs on a small thread pool (its size bounds
the memory that decoding can take at once), never on the event loop.

Messages name the problem only: no temporary file names, no decoder internals.
"""

from __future__ import annotations

import asyncio
import io
import logging
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import JpegImagePlugin, PngImagePlugin

from kiln.data import prepare_image
from kiln.errors import DatasetInvalid, InferRequestInvalid

log = logging.getLogger("kiln.serving.bento")

PILLOW_MAX_PIXELS = 89_478_485
"""Pillow's own decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`' default): images up
to Kiln's limit must decode without Pillow refusing them or warning."""

FORMATS = (PngImagePlugin.PngImageFile, JpegImagePlugin.JpegImageFile)
"""What training reads from image folders (`*.png`, `*.jpg`), so what serving accepts."""

# What Pillow raises for bytes that are not the image they claim to be, by plugin and stage.
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error)


class ImageDecoder:
    """Turns uploaded PNG/JPEG bytes into a model's input, refusing what is too big to decode.

    `decode` raises `InferRequestInvalid` (INVALID_ARGUMENT) for files that are no PNG or JPEG,
    images over `max_pixels`, and truncated or damaged image data.
    """

    def __init__(self, max_pixels: int, threads: int) -> None:
        self.max_pixels = max_pixels
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="kiln-image")

    async def decode(self, path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
        """The image at `path` (an upload BentoML saved) as a (channels, *size) float32 array,
        preprocessed as training read images (`kiln.data.prepare_image`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._decode, path, channels, size)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _decode(self, path: Path, channels: int, size: tuple[int, int]) -> np.ndarray:
        data = path.read_bytes()
        self.check_header(data)
        try:
            return prepare_image(data, channels, size, "upload")
        except (DatasetInvalid, *UNREADABLE) as exc:  # prepare_image lets some through
            log.info("refused an uploaded image: %s", exc)
            raise InferRequestInvalid(
                "the uploaded image's data is truncated or damaged; send the whole PNG or JPEG file"
            ) from exc

    def check_header(self, data: bytes) -> None:
        """Refuse `data` unless its header is a PNG's or JPEG's of at most `max_pixels`."""
        width, height = _header_size(data)
        pixels = width * height
        if pixels > self.max_pixels:
            raise InferRequestInvalid(
                f"the uploaded image is {width}x{height} pixels ({pixels}), more than the "
                f"{self.max_pixels} this server decodes (KILN_BENTO_MAX_IMAGE_PIXELS); send a "
                "smaller image: the model sees it resized to its input size anyway"
            )


def _header_size(data: bytes) -> tuple[int, int]:
    """Width and height from the header alone.

    The plugins are used directly because `Image.open` refuses a header over twice Pillow's
    limit itself, with a message that does not say the size, and only warns below that.
    """
    for plugin in FORMATS:
        try:
            with plugin(io.BytesIO(data)) as img:
                width, height = img.size
        except UNREADABLE:
            continue
        return int(width), int(height)
    raise InferRequestInvalid(
        "the uploaded file is not a PNG or JPEG image (or its header is damaged); send a PNG "
        "or JPEG file"
    )
