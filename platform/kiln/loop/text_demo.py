"""`kiln demo --task text`: the loop on real text, from one domain to another, on the CPU.

1. train v1 (a small transformer, its own BPE tokenizer) on Rotten Tomatoes movie-review
   snippets, compile it for onnxruntime, verify parity, promote it;
2. start `kiln serve` and send it movie snippets as strings with stock tritonclient (the
   server tokenises them with v1's tokenizer), then Amazon fine-food reviews: another domain,
   four times longer, other words (both sets are negative/positive sentiment);
3. ground truth arrives for most requests as a labels file; the evaluation shows the accuracy
   drop and the text drift (lengths, unknown tokens, token shares, predictions);
4. retrain v2 on the movie snippets plus the labelled reviews (with a tokenizer of its own,
   trained on that set), compile it, promote it through the evaluation gates while clients
   keep sending: model and tokenizer swap together, no request fails;
5. reviews never labelled nor learned from (fine-foods' own test file) are served by v2: the
   accuracy recovered, or not, is measured and reported as it is.

The movie snippets sent as traffic are the test split's; retraining leaves them out by content
(the held-out guard), so v1 and v2 are compared on texts neither trained on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

import kiln.registry
from kiln.compile import CompileOptions, compile_version
from kiln.data import Dataset, load_dataset
from kiln.errors import GateFailed
from kiln.evaluate import Evaluation, evaluate_traffic, version_infos, write_report
from kiln.evaluate.gates import GateThresholds, evaluation_gates
from kiln.evaluate.report import write_page
from kiln.loop.demo import (
    LABELLED_SHARE,
    SWAP_TIMEOUT_S,
    Say,
    trained_on_count,
    wait_for_traffic,
    write_labels,
)
from kiln.loop.demo_clients import TEXT_MODEL, BackgroundLoad, Phase, TextClient, send
from kiln.loop.demo_page import render_page
from kiln.loop.retrain import RetrainOptions, RetrainResult, retrain
from kiln.registry import GateResult, Registry
from kiln.serving import launcher
from kiln.settings import Settings
from kiln.traffic import Window, import_feedback, log_store
from kiln.train import TrainConfig, TrainResult, register_result, train

SOURCE = "rotten-tomatoes"
SHIFTED = "fine-foods"
PAGE = "demo-text.html"
BEFORE_RETRAINING = "demo-text-before-retraining.html"


@dataclass(frozen=True)
class TextDemoOptions:
    fast: bool = False
    """Fewer epochs, training texts and requests (CI): the same story, smaller."""
    show_progress: bool = True
    warm_start: bool = True
    """Retrain v2 from v1's weights and tokenizer (False: from scratch, with a new tokenizer
    trained on the new set). Measured on the full run: warm, product reviews 0.529 -> 0.737
    and the movie test split 0.768 -> 0.761; from scratch, 0.529 -> 0.743 and 0.768 -> 0.727."""

    @property
    def epochs(self) -> int | None:
        """None: the trainer's text defaults (measured on rotten-tomatoes)."""
        return 3 if self.fast else None

    @property
    def model_args(self) -> dict[str, Any]:
        """The fast run's transformer is a quarter the size (1 layer, width 64): same story."""
        return {"width": 64, "layers": 1, "heads": 2} if self.fast else {}

    @property
    def max_length(self) -> int | None:
        """Tokens per text: movie snippets have ~25, product reviews ~100 (longer ones are
        cut); None: the trainer's default (128)."""
        return 64 if self.fast else None

    @property
    def in_domain_requests(self) -> int:
        return 150 if self.fast else 400

    @property
    def shifted_before(self) -> int:
        """Product reviews sent before retraining, ~80% of them labelled (of 3,559)."""
        return 1000 if self.fast else 2000

    @property
    def shifted_after(self) -> int:
        """Reviews of fine-foods' own test file sent after retraining (of 993)."""
        return 300 if self.fast else 993


def run_text_demo(home: Path, options: TextDemoOptions, say: Say) -> dict[str, Any]:
    """Run the text story in `home` (a KILN_HOME); returns what `kiln demo --task text --json`
    prints."""
    home.mkdir(parents=True, exist_ok=True)
    return TextStory(home, options, say).run()


class TextStory:
    """The text demo's stages, in order."""

    def __init__(self, home: Path, options: TextDemoOptions, say: Say) -> None:
        self.started = time.monotonic()
        self.home = home
        self.options = options
        self.say = say
        self.settings = Settings(home=home)
        self.store = log_store(self.settings)
        self.labels: list[tuple[str, int]] = []
        self.phases = (
            Phase("movie snippets"), Phase("product reviews, before retraining"),
            Phase("new product reviews, after"),
        )  # fmt: skip
        self.shifted = load_dataset(SHIFTED, self.settings, seed=0)
        # Labelled traffic before retraining comes from fine-foods' training file; the reviews
        # sent after it from its own test file, never labelled, never learned from.
        rng = np.random.default_rng(7)
        before = rng.permutation(len(self.shifted.train))[: options.shifted_before]
        self.before_x, self.before_y = self.shifted.train.x[before], self.shifted.train.y[before]
        after = rng.permutation(len(self.shifted.test))[: options.shifted_after]
        self.after_x, self.after_y = self.shifted.test.x[after], self.shifted.test.y[after]

    def run(self) -> dict[str, Any]:
        v1_run = self.train_v1()
        with kiln.registry.open(settings=self.settings) as registry:
            v1 = self.compile_and_promote_v1(registry, v1_run)
        env = {"KILN_TRAFFIC_FLUSH_INTERVAL_S": "0.5", "KILN_SERVE_POLL_INTERVAL_S": "0.5"}
        args = ("--models", TEXT_MODEL, "--max-queue-delay-us", "500")
        log = self.home / "demo-text-serve.log"
        with launcher.kiln_serve(*args, home=self.home, env=env, metrics=False, log=log) as served:
            self.say(f"3. kiln serve is up on {served.url}; sending strings with tritonclient")
            client = TextClient(served.url)
            try:
                self.send_before_retraining(client, v1_run.dataset)
                labels = self.hand_in_labels()
                evaluation = self.evaluate_shifted_traffic()
                retrained = self.retrain_v2()
                promotion = self.promote_v2(served.url, retrained)
                self.send_after_retraining(client)
            finally:
                client.close()
        return self.figures(v1, v1_run, labels, evaluation, retrained, promotion)

    def train_v1(self) -> TrainResult:
        self.say(f"1. train v1: a small transformer and its own BPE tokenizer on {SOURCE}")
        given: dict[str, Any] = {"epochs": self.options.epochs,
                                 "max_length": self.options.max_length}  # fmt: skip
        config = TrainConfig.for_task(
            "classification",
            "text",
            dataset=SOURCE,
            model="transformer",
            model_args=self.options.model_args,
            seed=0,
            # One thread: a small transformer's kernels are too short to share (two threads
            # ran an epoch 28x slower than one on the 2-core machine under load: 210 s vs 7.6 s).
            threads=1,
            **{k: v for k, v in given.items() if v is not None},
        )
        return train(config, self.settings, show_progress=self.options.show_progress)

    def compile_and_promote_v1(self, registry: Registry, run: TrainResult) -> dict[str, Any]:
        v1 = register_result(registry, TEXT_MODEL, run)
        self.say(f"2. compile {v1.ref} for onnxruntime and verify parity with the checkpoint")
        options = CompileOptions(targets=("onnxruntime",), measure_seconds=1.0)
        compiled = compile_version(registry, v1.ref, options, self.settings)
        engine = next(r for r in compiled.report.results if r.kind == "onnxruntime")
        parity = engine.parity
        speedup = compiled.report.speedup(engine)
        first = {
            "version": v1.version,
            "test_accuracy": run.metrics["test_accuracy"],
            "tokenizer_sha256": (run.config.model_dump().get("text") or {}).get("sha256"),
            "parity_max_abs_diff": (
                max(p.max_abs_diff for p in parity.held_out) if parity else None
            ),
            "parity_top1_agreement": (
                min(p.top1_agreement or 0.0 for p in parity.held_out) if parity else None
            ),
            "speedup_vs_eager": speedup.to_dict() if speedup else {},
            "train_seconds": round(run.duration_s, 1),
        }
        self.say(
            f"   test accuracy {first['test_accuracy']:.3f}; onnxruntime engine {engine.status}"
            f" (top-1 agreement {first['parity_top1_agreement'] or 0:.1%} on held-out snippets)"
        )
        registry.promote(
            v1.ref, "production", reason="kiln demo: start the story from a fresh v1", gates=[]
        )
        return first

    def send_before_retraining(self, client: TextClient, source: Dataset) -> None:
        movies, shifted, _ = self.phases
        n = self.options.in_domain_requests
        send(client, movies, _rows(source.test.x[:n]), source.test.y[:n], self.labels)
        self.say(f"   {movies.total} movie snippets: accuracy {movies.accuracy:.3f}")
        send(client, shifted, _rows(self.before_x), self.before_y, self.labels)
        self.say(
            f"   {shifted.total} product reviews: accuracy {shifted.accuracy:.3f}  <- another "
            "domain"
        )

    def hand_in_labels(self) -> dict[str, int]:
        self.say(f"4. ground truth arrives for ~{LABELLED_SHARE:.0%} of the requests")
        path = self.home / "demo-text-labels.csv"
        write_labels(path, self.labels, LABELLED_SHARE, seed=1)
        wait_for_traffic(self.store, len(self.labels), model=TEXT_MODEL)
        result = import_feedback(self.store, path, model=TEXT_MODEL)
        self.say(f"   {result.rows} labels imported, {result.matched} matched to requests")
        return {"imported": result.rows, "matched": result.matched, "unmatched": result.unmatched}

    def evaluate_shifted_traffic(self) -> Evaluation:
        since = datetime.fromtimestamp(self.phases[1].started - 1, UTC)
        with kiln.registry.open(settings=self.settings) as registry:
            infos = version_infos(registry, TEXT_MODEL)
        evaluation = evaluate_traffic(
            self.store, TEXT_MODEL, Window(since, datetime.now(UTC)), infos
        )
        self.say(
            f"   drift {'DETECTED' if evaluation.drift_detected else 'not detected'} on the "
            "product reviews"
        )
        write_report(evaluation, self.home / "reports" / BEFORE_RETRAINING)
        return evaluation

    def retrain_v2(self) -> RetrainResult:
        warm = self.options.warm_start
        how = "from v1's weights and tokenizer" if warm else "with a new tokenizer"
        self.say(f"5. retrain v2 {how} on {SOURCE} + the labelled reviews; compile it (candidate)")
        options = RetrainOptions(
            since="1h", min_labels=100, epochs=self.options.epochs,
            warm_start=self.options.warm_start, show_progress=self.options.show_progress,
        )  # fmt: skip
        with kiln.registry.open(settings=self.settings) as registry:
            return retrain(registry, TEXT_MODEL, self.settings, options, progress=self._indented)

    def promote_v2(self, url: str, retrained: RetrainResult) -> dict[str, Any]:
        v2 = retrained.version
        self.say(f"6. promote {v2.ref} through the evaluation gates, under live traffic")
        with (
            BackgroundLoad(url, _rows(self.after_x), client=TextClient) as load,
            kiln.registry.open(settings=self.settings) as registry,
        ):
            # The demo's policy, for a model whose traffic moved to product reviews: at least
            # 2 points better on held-out labelled reviews, at most 5 worse on the movie
            # snippets' test split (v2 learns a second domain with the same capacity: retrained
            # from scratch it measured -0.4 to -4.2 points, warm -0.7). Batch-1 latencies here are
            # ~0.15 ms, which a shared 2-core machine moves by up to 2x between two compiles
            # of the same architecture (measured: 0.148 vs 0.303 ms), so the budget is 2x.
            thresholds = GateThresholds(
                traffic_window="1h",
                min_traffic_gain=0.02,
                max_heldout_regression=0.05,
                latency_budget=2.0,
            )
            gates = evaluation_gates(registry, self.settings, thresholds)
            results: list[GateResult] = []
            refused: str | None = None
            try:
                move = registry.promote(
                    v2.ref, "production", reason="kiln demo --task text", gates=gates
                )
            except GateFailed as exc:  # the gates did their job: say so, keep v1 serving
                refused = exc.message
                self.say(f"   REFUSED: {refused}")
            else:
                results = list(move.gate.results) if move.gate else []
            for gate in results:
                self.say(f"   {'pass' if gate.passed else 'FAIL'}  {gate.gate}: {gate.message}")
            swapped = refused is None and load.wait_for_version(v2.version, SWAP_TIMEOUT_S)
        if refused is None:
            self.say(
                f"   the server swapped to {v2.ref}: {load.sent} requests during the "
                f"promotion, {load.failed} failed"
                if swapped
                else f"   the server did not swap to {v2.ref} within {SWAP_TIMEOUT_S:.0f} s"
            )
        return {"gates": results, "refused": refused, "swapped": swapped, "sent": load.sent,
                "failed": load.failed}  # fmt: skip

    def send_after_retraining(self, client: TextClient) -> None:
        phase = self.phases[2]
        send(client, phase, _rows(self.after_x), self.after_y, self.labels)
        self.say(f"7. {phase.total} new product reviews: accuracy {phase.accuracy:.3f}")

    def figures(
        self,
        v1: dict[str, Any],
        v1_run: TrainResult,
        labels: dict[str, int],
        evaluation: Evaluation,
        retrained: RetrainResult,
        promotion: dict[str, Any],
    ) -> dict[str, Any]:
        movies, before, after = self.phases
        gates: list[GateResult] = promotion["gates"]
        failed = sum(p.failed for p in self.phases) + promotion["failed"]
        requests = sum(p.total + p.failed for p in self.phases) + promotion["sent"]
        v2 = retrained.version
        page = render_page(
            self.phases, gates, promoted=v2.version, failed_requests=failed,
            requests=requests, drift_detected=evaluation.drift_detected,
            title="kiln demo --task text", before_retraining=BEFORE_RETRAINING,
        )  # fmt: skip
        report = write_page(page, self.home / "reports" / PAGE)
        learned = (v1_run.dataset, retrained.dataset)
        held = next((g for g in gates if g.gate == "held-out-regression"), None)
        numbers = (held.numbers or {}) if held else {}
        return {
            "task": "text",
            "home": str(self.home),
            "fast": self.options.fast,
            "domains": {"before": SOURCE, "shifted": SHIFTED},
            "v1": v1,
            "labels": labels,
            "drift_detected": evaluation.drift_detected,
            "v2": {
                "version": v2.version,
                "labels_used": retrained.trained_on,
                "excluded_heldout": retrained.excluded_heldout,
                "test_accuracy": retrained.metrics.get("test_accuracy"),
                "tokenizer_sha256": (v2.config.get("text") or {}).get("sha256"),
            },
            "accuracy": {
                "before_shift": movies.accuracy,
                "after_shift": before.accuracy,
                "after_retraining": after.accuracy,
                "heldout_v1": numbers.get("current"),
                "heldout_v2": numbers.get("candidate"),
            },
            "heldout": {
                "dataset": SOURCE,
                "samples": len(v1_run.dataset.test),
                "in_training_data": trained_on_count(v1_run.dataset.test.x, learned),
            },
            "shifted_after": {
                "samples": len(self.after_x),
                "in_training_data": trained_on_count(self.after_x, learned),
            },
            "swapped": promotion["swapped"],
            "promotion_refused": promotion["refused"],
            "failed_requests": failed,
            "requests": requests,
            "served_versions_after": after.version_counts,
            "gates": [{"name": g.gate, "passed": g.passed, "message": g.message} for g in gates],
            "report": str(report),
            "duration_s": round(time.monotonic() - self.started, 1),
        }

    def _indented(self, message: str) -> None:
        self.say(f"   {message}")


def _rows(texts: np.ndarray) -> np.ndarray:
    """Texts as an (n, 1) object array: `send` sends row i as a batch of one."""
    rows = np.empty((len(texts), 1), dtype=object)
    rows[:, 0] = list(texts)
    return rows
