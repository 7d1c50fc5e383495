"""The text stage of a text model: strings in, token ids to the engine, per-row counts out.

A text version (its config has `text`) is opened with its tokenizer (`repository`), and each
`LoadedModel` of one gets its own `TextStage`, so a hot swap changes model and tokenizer
together. Requests take one of two forms:

- `text`: BYTES of shape [n] or [n, 1], one UTF-8 string per row. `check` validates them on
  the event loop (a bad string must fail alone, before it joins a batch) and the batcher
  queues them as they are; `wrap`'s infer function, on the batcher's worker thread, decodes
  and tokenises the whole batch at once, padded to its longest member (at most the
  tokenizer's max_length tokens: longer texts are truncated, as in training).
- `input_ids` and `attention_mask`: INT64 [n, L], already tokenised; checked by the engine's
  own `RequestValidator` and run as they are.

Requests of the two forms never share a batch (their shapes differ, so the batcher keeps them
apart), nor do [n] and [n, 1] strings. The infer function returns, beside the engine's
outputs, three per-row arrays under reserved names (the batcher splits them per request like
any output); `split` takes them out again as the response's `TextStats`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, NoReturn

import numpy as np
import numpy.typing as npt

from kiln.errors import InferRequestInvalid, quote
from kiln.serving.messages import TensorSpec, TextStats
from kiln.serving.validation import RequestValidator, datatype_name, names
from kiln.text import ATTENTION_MASK, INPUT_IDS, TEXT_INPUT, TextTokenizer

Tensors = dict[str, npt.NDArray[Any]]

_TOKENS: Final = "kiln.text.tokens"
_UNKNOWN: Final = "kiln.text.unknown"
_TRUNCATED: Final = "kiln.text.truncated"
"""Where the infer function puts the per-row counts among the outputs (names no ONNX output
of Kiln's models takes; never sent to clients)."""

_OBJECT = np.dtype(object)
_SHOWN_BYTES = 16  # bytes of a refused string a message shows around the bad byte


class TextStage:
    """Checks and tokenises the requests of one loaded text version. See the module docs."""

    def __init__(
        self,
        label: str,
        tokenizer: TextTokenizer,
        engine_validator: RequestValidator,
        *,
        max_batch_size: int,
        max_text_bytes: int,
    ) -> None:
        self.label = label
        self.tokenizer = tokenizer
        self.max_text_bytes = max_text_bytes
        self._engine_validator = engine_validator
        self._max_rows = max_batch_size
        self._unk_id = tokenizer.unk_id
        self._vocab_size = tokenizer.vocab_size

    # -- the event loop: one request ----------------------------------------------------------

    def check(self, inputs: Mapping[str, npt.NDArray[Any]], outputs: tuple[str, ...]) -> int:
        """Validate a request of either form; returns its row count (the core's validator).

        Raises `InferRequestInvalid` saying what is wrong and what the model takes.
        """
        texts = inputs.get(TEXT_INPUT)
        if texts is None:
            if INPUT_IDS not in inputs and ATTENTION_MASK not in inputs:
                self._fail(f"{self._got(inputs)}; {self._takes()}")
            rows = self._engine_validator(inputs, outputs)
            ids = inputs[INPUT_IDS]
            # An id past the vocabulary would fail the engine, and with it the whole batch.
            if ids.min() < 0 or ids.max() >= self._vocab_size:
                self._fail(
                    f"input {quote(INPUT_IDS)} holds ids outside 0..{self._vocab_size - 1}, the "
                    "tokenizer's vocabulary; tokenise with the model's own tokenizer (its "
                    "sha256 is in ModelConfig's parameters), or send the strings as "
                    f"{quote(TEXT_INPUT)}"
                )
            return rows
        if len(inputs) > 1:
            others = names(sorted(n for n in inputs if n != TEXT_INPUT))
            self._fail(
                f"the request has {quote(TEXT_INPUT)} and also {others}; send either "
                f"{quote(TEXT_INPUT)} alone or {quote(INPUT_IDS)} and {quote(ATTENTION_MASK)} "
                "(pre-tokenised), not both"
            )
        if texts.dtype != _OBJECT:
            self._fail(
                f"input {quote(TEXT_INPUT)} has datatype {datatype_name(texts.dtype)}, but it "
                f"takes BYTES (UTF-8 strings); send numbers as {quote(INPUT_IDS)} and "
                f"{quote(ATTENTION_MASK)} (INT64) instead"
            )
        shape = texts.shape
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            self._fail(
                f"input {quote(TEXT_INPUT)} has shape {list(shape)}; it takes [n] or [n, 1]: "
                "one string per row"
            )
        rows = int(shape[0])
        if rows == 0:
            self._fail(f"input {quote(TEXT_INPUT)} is empty; send at least one string")
        if self._max_rows and rows > self._max_rows:
            self._fail(
                f"batch of {rows} strings exceeds the model's max_batch_size {self._max_rows}; "
                "split the request"
            )
        self._check_strings(texts)
        if outputs:
            self._engine_validator.check_outputs(outputs)
        return rows

    def _check_strings(self, texts: npt.NDArray[Any]) -> None:
        limit = self.max_text_bytes
        for index, element in enumerate(texts.reshape(-1)):
            if isinstance(element, str):  # in-process callers (BentoML) pass str
                try:
                    size = len(element.encode("utf-8"))
                except UnicodeEncodeError:  # a lone surrogate (JSON can carry one)
                    self._fail(
                        f"element {index} of {quote(TEXT_INPUT)} is not valid Unicode (it "
                        "holds a lone surrogate); send real characters"
                    )
            elif isinstance(element, bytes):
                size = len(element)
                if not element.isascii():
                    self._check_utf8(element, index)
            else:
                self._fail(f"element {index} of {quote(TEXT_INPUT)} is not a string")
            if size == 0:
                self._fail(
                    f"element {index} of {quote(TEXT_INPUT)} is an empty string; send at least "
                    "one character per row"
                )
            if size > limit:
                self._fail(
                    f"element {index} of {quote(TEXT_INPUT)} has {size} bytes, more than the "
                    f"limit of {limit} bytes per string (KILN_SERVE_MAX_TEXT_BYTES); shorten "
                    f"it: the model reads at most {self.tokenizer.max_length} tokens, and "
                    "longer texts are truncated to them"
                )

    def _check_utf8(self, element: bytes, index: int) -> None:
        try:
            element.decode("utf-8")
        except UnicodeDecodeError as exc:
            start = max(0, exc.start - _SHOWN_BYTES // 2)
            around = element[start : start + _SHOWN_BYTES]
            self._fail(
                f"element {index} of {quote(TEXT_INPUT)} is not valid UTF-8 (byte {exc.start}: "
                f"{exc.reason}, near {around!r}); send strings encoded as UTF-8"
            )

    def split(self, outputs: Tensors) -> tuple[Tensors, TextStats]:
        """The engine's outputs of one request, and its per-row counts (taken out of them)."""
        rest = dict(outputs)
        stats = TextStats(rest.pop(_TOKENS), rest.pop(_UNKNOWN), rest.pop(_TRUNCATED))
        return rest, stats

    # -- the worker thread: one batch ---------------------------------------------------------

    def wrap(self, infer: Callable[[Tensors], Tensors]) -> Callable[[Tensors], Tensors]:
        """The infer function the batcher runs: tokenises a batch of strings (or counts the
        tokens of pre-tokenised inputs), runs `infer`, adds the per-row counts."""
        tokenizer, unk_id = self.tokenizer, self._unk_id

        def run(feed: Tensors) -> Tensors:
            texts = feed.get(TEXT_INPUT)
            if texts is None:
                ids, mask = feed[INPUT_IDS], feed[ATTENTION_MASK]
                present = mask != 0
                tokens = present.sum(axis=1, dtype=np.int64)
                unknown = ((ids == unk_id) & present).sum(axis=1, dtype=np.int64)
                truncated = np.zeros(len(ids), dtype=bool)
                outputs = infer(feed)
            else:
                strings = [t if isinstance(t, str) else t.decode() for t in texts.reshape(-1)]
                encoded = tokenizer.encode(strings)
                tokens, unknown, truncated = encoded.lengths, encoded.unknown, encoded.truncated
                outputs = infer(encoded.inputs())
            return {**outputs, _TOKENS: tokens, _UNKNOWN: unknown, _TRUNCATED: truncated}

        return run

    def warmup_inputs(self) -> list[Tensors]:
        """Strings at batch 1 and at the maximum batch, as long as the tokenizer reads."""
        text = " ".join(["warm"] * self.tokenizer.max_length)
        sizes = [1] if self._max_rows <= 1 else [1, self._max_rows]
        return [{TEXT_INPUT: np.array([text.encode()] * rows, dtype=_OBJECT)} for rows in sizes]

    # -- what clients are told ----------------------------------------------------------------

    def parameters(self, sha256: str) -> dict[str, str]:
        """ModelConfig parameters describing the string input and its tokenizer."""
        return {
            "text_input": TEXT_INPUT,
            "tokenizer_sha256": sha256,
            "tokenizer_kind": self.tokenizer.kind,
            "max_length": str(self.tokenizer.max_length),
            "max_text_bytes": str(self.max_text_bytes),
            "note": (
                f"send either '{TEXT_INPUT}' (BYTES [n] or [n, 1], one UTF-8 string per row, "
                f"tokenised by the server; texts longer than max_length tokens are truncated) "
                f"or '{INPUT_IDS}' and '{ATTENTION_MASK}' (INT64 [n, L], pre-tokenised with "
                "the same tokenizer)"
            ),
        }

    def _takes(self) -> str:
        return (
            f"the model takes either {quote(TEXT_INPUT)} (BYTES [n] or [n, 1], UTF-8 strings) "
            f"or {quote(INPUT_IDS)} and {quote(ATTENTION_MASK)} (INT64 [n, L], pre-tokenised)"
        )

    def _got(self, inputs: Mapping[str, Any]) -> str:
        return (
            f"unexpected input {names(sorted(inputs))}" if inputs else "the request has no inputs"
        )

    def _fail(self, problem: str) -> NoReturn:
        raise InferRequestInvalid(f"model {self.label}: {problem}")


def text_spec() -> TensorSpec:
    """The `text` input as metadata lists it: BYTES [-1, 1], one string per row (Triton's
    shape for a batch of strings; [n] is accepted too). perf_analyzer cannot send an input
    whose per-row shape is [] (metadata [-1]): it fails "unable to set shape" (measured)."""
    return TensorSpec(TEXT_INPUT, "BYTES", (-1, 1), _OBJECT, optional=True)
