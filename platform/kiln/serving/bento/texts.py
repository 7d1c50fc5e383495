"""The BentoML service's text requests: a JSON list of strings for a text model.

`/classify_texts` takes `{"texts": [...]}`. The strings go to the serving core as its `text`
input, where the served version's text stage checks them (empty, over the byte limit, not
valid Unicode: 400 naming the string) and tokenises them on the batcher's worker thread with
the version's own tokenizer, so a hot swap changes model and tokenizer together here too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from kiln.errors import InvalidArgument
from kiln.serving.table import LoadedModel
from kiln.text import TEXT_INPUT

TEXT_MODEL: Final = (
    '\'{}\' is a text model: send its strings as JSON {{"texts": ["...", ...]}} to '
    "/classify_texts, which tokenises them with the model's own tokenizer"
)
NOT_A_TEXT_MODEL: Final = (
    "'{}' is not a text model (it has no tokenizer): /classify_texts answers text models; "
    "send its input arrays to /predict"
)


@dataclass(frozen=True, slots=True)
class TextBatch:
    """The strings of one /classify_texts request."""

    texts: list[str]
    max_rows: int

    def feed(self, loaded: LoadedModel) -> dict[str, npt.NDArray[Any]]:
        """The core's inputs for `loaded`; `InvalidArgument` unless it is a text model and
        the batch has 1..max_rows strings (the core's text stage checks each string)."""
        if loaded.text is None:
            raise InvalidArgument(NOT_A_TEXT_MODEL.format(loaded.name))
        if not self.texts:
            raise InvalidArgument("'texts' is empty: send at least one string")
        if len(self.texts) > self.max_rows:
            raise InvalidArgument(
                f"'texts' has {len(self.texts)} strings; a request may carry at most "
                f"{self.max_rows} (KILN_BENTO_MAX_BATCH_SIZE): split it"
            )
        strings = np.empty(len(self.texts), dtype=object)
        strings[:] = self.texts
        return {TEXT_INPUT: strings}
