"""Integrated Gradients throughput at equal completeness error: our explainer against Captum.

Issue target: >= 2x Captum's throughput (explained rows/s) at EQUAL completeness error, on CPU,
on a small CNN. Models: ``cnn32``, three convolutions (1->16->32->32 channels, SiLU) and two
linear layers on 32x32 images (scikit-learn's 8x8 digits, upsampled), trained here for 3 epochs
(~8 s, seeded), 64 rows explained from the zero image; and ``sample_digit_model``, the
runtime's multimodal sample model (8x8 image + 4 scan features, trained in memory as the
runtime trains it), 256 rows from the runtime's default baselines. Explained output: the
log-probability of the predicted class (what our runtime explains for multiclass models).
Both sides get the same ``model.scores`` function.

Completeness error of an instance = |sum(attr) - (f(x) - f(x'))| / max(|f(x) - f(x')|, 1e-6)
(the fidelity gate's definition); the error of a run is its MAXIMUM over the explained rows.

Protocol, for each target tolerance T in --tolerances:

1. ours: ``integrationMethod: gausslegendre_adaptive`` with ``completenessTolerance`` T
   (``steps`` = a cap of 128 gradient evaluations per row) -> its achieved error E;
2. Captum with hindsight on these very rows: the smallest ``n_steps`` (Gauss-Legendre, Captum's
   default rule) whose error is <= E, timed (at its faster of 1 or --threads torch threads)
   with three batchings: "tuned" (the fastest ``internal_batch_size`` of rows/256/1024/None,
   every advantage we could give it), "default_batch" (None: all rows at once, Captum's
   default) and "previous_runtime" (what this runtime passed to Captum before its own engine);
3. also ours with Captum's own rule at that same ``n_steps`` (identical nodes and weights, so
   identical errors): the gain of the evaluation engine alone;
4. the per-row oracle: for each row the smallest grid ``n`` whose Gauss-Legendre error is <= E.
   Its mean is what a perfect per-row step choice would spend (learning the choice costs
   extra), so ``captum_steps_over_oracle_mean`` bounds the speed-up adaptivity alone can give.

Because the adaptive rule stops on the completeness gap, which bounds only the SUM of the
attributions, every run's per-feature error against a 256-node Gauss-Legendre reference is
reported too (sum |attr - ref| / sum |ref|, max and mean over rows).

Timings alternate ours/Captum ``--reps`` times in one process after a warm-up; ratios are
medians of per-repetition ratios.

    .venv/bin/python bench/bench_integrated_gradients.py     # ~1-2 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from include.explainers.base import ExplainedModel, Modality, memory_budget_bytes, pow2_floor  # noqa: E402
from include.explainers.integrated_gradients import ADAPTIVE, EXPLAINER  # noqa: E402
from include.explainers.params import normalise_params  # noqa: E402

SEED = 20240611
SIDE = 32
N_ROWS = 64
STEP_GRID = (*range(6, 41, 2), 44, 48, 56, 64)
DIGIT_ROWS = 256
ADAPTIVE_CAP = 128
REFERENCE_STEPS = 256


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.SiLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Conv2d(32, 32, 3, stride=2, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(32 * 8 * 8, 64),
            nn.SiLU(),
            nn.Linear(64, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x / 16.0)  # raw pixel values 0..16, as in the digits data


def digits_32() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.from_numpy(digits.images.astype(np.float32))[:, None]
    images = nn.functional.interpolate(images, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return images.contiguous(), torch.from_numpy(digits.target)


def train_cnn(images: torch.Tensor, labels: torch.Tensor) -> tuple[nn.Module, float]:
    torch.manual_seed(SEED)
    net = SmallCNN()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(SEED)
    for _ in range(3):
        order = torch.randperm(1500, generator=generator)
        for start in range(0, 1500, 64):
            idx = order[start : start + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(net(images[idx]), labels[idx]).backward()
            opt.step()
    net.eval()
    with torch.inference_mode():
        accuracy = float((net(images[1500:]).argmax(1) == labels[1500:]).float().mean())
    return net, accuracy


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


class Bench:
    """One model, its explained rows and both explainers, with the error measures."""

    def __init__(
        self,
        model: ExplainedModel,
        inputs: tuple[torch.Tensor, ...],
        background: tuple[torch.Tensor, ...],
        baseline_spec: str | None,
    ) -> None:
        from captum.attr import IntegratedGradients

        from include.explainers.integrated_gradients import resolve_baselines

        self.model = model
        self.inputs = inputs
        self.background = background
        self.baseline_spec = baseline_spec
        self.rows = inputs[0].shape[0]
        # The baselines our explainer uses (zeros for images, the background mean otherwise).
        chosen = resolve_baselines(model, baseline_spec)
        self.baselines = tuple(
            torch.zeros_like(x)
            if chosen[m.name] == "zeros"
            else bg.double().mean(0).float().expand_as(x).contiguous()
            for m, x, bg in zip(model.modalities, inputs, background, strict=True)
        )
        with torch.inference_mode():
            scores = model.scores(*inputs)
            self.targets = scores.argmax(1)
            f_x = scores.gather(1, self.targets[:, None])[:, 0]
            f_b = model.scores(*self.baselines).gather(1, self.targets[:, None])[:, 0]
        self.delta = (f_x - f_b).double().numpy()
        self.captum = IntegratedGradients(model.scores)
        self.reference: np.ndarray | None = None
        self.last_details: dict[str, np.ndarray] = {}

    def ours(self, params: dict[str, Any]) -> np.ndarray:
        params = {"baseline": self.baseline_spec, "internalBatchSize": None} | params
        if params["integrationMethod"] != ADAPTIVE:
            params = normalise_params("IntegratedGradients", params, has_image=True)
        # else: gausslegendre_adaptive / completenessTolerance are not (yet) declared in
        # include/explainers/params.py, so the dict goes to the explainer as is.
        out = EXPLAINER.explain(self.model, self.inputs, self.background, params, seed=0)
        self.last_details = out.per_instance
        return out.features

    def captum_run(self, steps: int, batch: int | None) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "internal batch size cannot be less than ..."
            attributions = self.captum.attribute(
                self.inputs if len(self.inputs) > 1 else self.inputs[0],
                self.baselines if len(self.inputs) > 1 else self.baselines[0],
                target=self.targets,
                n_steps=steps,
                method="gausslegendre",
                internal_batch_size=batch,
            )
        parts = attributions if isinstance(attributions, tuple) else (attributions,)
        return torch.cat([a.detach().reshape(self.rows, -1) for a in parts], dim=1).double().numpy()

    def row_errors(self, features: np.ndarray) -> np.ndarray:
        return np.abs(features.sum(1) - self.delta) / np.maximum(np.abs(self.delta), 1e-6)

    def errors(self, features: np.ndarray) -> dict[str, float]:
        completeness = self.row_errors(features)
        out = {"completeness_max": float(completeness.max()), "completeness_mean": float(completeness.mean())}
        if self.reference is not None:
            ref = self.reference
            l1 = np.abs(features - ref).sum(1) / np.abs(ref).sum(1)
            out |= {"attribution_l1_max": float(l1.max()), "attribution_l1_mean": float(l1.mean())}
        return out

    def rate(self, fn: Callable[[], Any]) -> float:
        return self.rows / timed(fn)[0]

    def captum_rate(self, steps: int, batch: int | None, threads: int) -> float:
        with torch_threads(threads):
            return self.rate(lambda: self.captum_run(steps, batch))


def previous_runtime_batch(model: ExplainedModel) -> int:
    """The internal_batch_size the runtime passed to Captum before it had its own engine."""
    rows = memory_budget_bytes() / (model.row_bytes() * 3.0)
    return int(min(max(pow2_floor(rows), 256), 8192))


def run_model(
    name: str, bench: Bench, tolerances: list[float], threads: int, reps: int, compiled: bool = True
) -> dict[str, Any]:
    bench.ours({"steps": 8, "integrationMethod": "gausslegendre"})  # warm-up
    bench.captum_run(8, None)
    bench.reference = bench.ours({"steps": REFERENCE_STEPS, "integrationMethod": "gausslegendre"})
    reference_errors = bench.errors(bench.reference)
    # Captum's error for each n_steps (it does not depend on batch size or threads), per row too.
    runs = {n: bench.captum_run(n, 256) for n in STEP_GRID}
    curve = {n: bench.errors(runs[n]) for n in STEP_GRID}
    per_row = np.stack([bench.row_errors(runs[n]) for n in STEP_GRID])  # (grid, rows)
    thread_options = sorted({1, threads})
    previous = previous_runtime_batch(bench.model)
    batches = [*sorted({bench.rows, 256, 1024, previous}), None]
    comparisons = []
    for tolerance in tolerances:
        adaptive = {"steps": ADAPTIVE_CAP, "integrationMethod": ADAPTIVE, "completenessTolerance": tolerance}
        ours_errors = bench.errors(bench.ours(adaptive))
        details = bench.last_details
        achieved = ours_errors["completeness_max"]
        eligible = [n for n in STEP_GRID if curve[n]["completeness_max"] <= achieved]
        steps = min(eligible) if eligible else max(STEP_GRID)
        fixed = {"steps": steps, "integrationMethod": "gausslegendre"}
        fixed_errors = bench.errors(bench.ours(fixed))
        # The adaptive rule through torch.compile ("faster kernels"): compiled once per model and
        # pass shape (timed apart: a job pays it once, or never with XAC_COMPILE_CACHE). It
        # counts against Captum at `steps` only if Captum would need at least `steps` to match
        # its own error (a less accurate variant would face a cheaper Captum).
        adaptive_compiled = adaptive | {"compile": True}
        compile_seconds, compiled_features = (
            timed(lambda a=adaptive_compiled: bench.ours(a)) if compiled else (0.0, None)
        )
        compiled_errors = bench.errors(compiled_features) if compiled else None
        # Captum's fastest settings at that n_steps (best of two timings each): over every batch size
        # ("tuned") and with Captum's default batch of all rows at once ("default batch").
        by_setting = {
            (b, t): max(bench.captum_rate(steps, b, t) for _ in range(2))
            for b in batches
            for t in thread_options
        }
        tuned = max(by_setting, key=by_setting.get)
        default = max(((None, t) for t in thread_options), key=by_setting.get)
        before = max(((previous, t) for t in thread_options), key=by_setting.get)
        kinds = (
            "ours_adaptive",
            "ours_adaptive_compiled",
            "ours_same_rule",
            "captum_tuned",
            "captum_default_batch",
            "captum_previous_runtime",
        )
        reps_out: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(reps):  # paired: one of each, back to back
            reps_out["ours_adaptive"].append(bench.rate(lambda adaptive=adaptive: bench.ours(adaptive)))
            reps_out["captum_tuned"].append(bench.captum_rate(steps, *tuned))
            reps_out["ours_same_rule"].append(bench.rate(lambda fixed=fixed: bench.ours(fixed)))
            reps_out["captum_default_batch"].append(bench.captum_rate(steps, *default))
            reps_out["captum_previous_runtime"].append(bench.captum_rate(steps, *before))
            if compiled:
                reps_out["ours_adaptive_compiled"].append(
                    bench.rate(lambda a=adaptive_compiled: bench.ours(a))
                )

        def ratio(ours: str, theirs: str, runs: dict[str, list[float]] = reps_out) -> float:
            return statistics.median(a / c for a, c in zip(runs[ours], runs[theirs], strict=True))

        # The best any per-row step count could do with Gauss-Legendre (an oracle that knows each
        # row's error curve and pays nothing to learn it): the smallest grid n per row reaching
        # the error we achieved. Bounds what adaptivity alone can gain over one n for all rows.
        grid = np.array(STEP_GRID)
        reached = per_row <= achieved
        oracle = np.where(reached.any(0), grid[np.argmax(reached, axis=0)], grid[-1])
        comparisons.append(
            {
                "tolerance": tolerance,
                "oracle_per_row_steps": {
                    "mean": float(oracle.mean()),
                    "max": int(oracle.max()),
                    "captum_steps_over_oracle_mean": steps / float(oracle.mean()),
                },
                "ours_adaptive": {
                    "errors": ours_errors,
                    "gradient_evaluations_mean": float(np.mean(details["gradient_evaluations"])),
                    "gradient_evaluations_max": int(np.max(details["gradient_evaluations"])),
                    "converged_fraction": float(np.mean(details["converged"])),
                    "rows_per_second_median": statistics.median(reps_out["ours_adaptive"]),
                },
                "ours_adaptive_compiled": (
                    {
                        "errors": compiled_errors,
                        "first_call_seconds_with_compilation": compile_seconds,
                        "rows_per_second_median": statistics.median(reps_out["ours_adaptive_compiled"]),
                        "captum_steps_at_this_error": min(
                            (
                                n
                                for n in STEP_GRID
                                if curve[n]["completeness_max"] <= compiled_errors["completeness_max"]
                            ),
                            default=max(STEP_GRID),
                        ),
                    }
                    if compiled
                    else None
                ),
                "ours_same_rule_as_captum": {
                    "errors": fixed_errors,
                    "rows_per_second_median": statistics.median(reps_out["ours_same_rule"]),
                },
                "captum": {
                    "n_steps": steps,
                    "errors": curve[steps],
                    "tuned_setting": {"internal_batch_size": tuned[0], "threads": tuned[1]},
                    "default_batch_setting": {"internal_batch_size": None, "threads": default[1]},
                    "rows_per_second_by_setting": {
                        f"batch={b},threads={t}": r for (b, t), r in by_setting.items()
                    },
                    "tuned_rows_per_second_median": statistics.median(reps_out["captum_tuned"]),
                    "default_batch_rows_per_second_median": statistics.median(
                        reps_out["captum_default_batch"]
                    ),
                    "previous_runtime_setting": {"internal_batch_size": previous, "threads": before[1]},
                    "previous_runtime_rows_per_second_median": statistics.median(
                        reps_out["captum_previous_runtime"]
                    ),
                },
                "speedup": {
                    "adaptive_vs_captum_tuned": ratio("ours_adaptive", "captum_tuned"),
                    **(
                        {
                            "adaptive_compiled_vs_captum_tuned": ratio(
                                "ours_adaptive_compiled", "captum_tuned"
                            ),
                            "adaptive_compiled_vs_captum_default_batch": ratio(
                                "ours_adaptive_compiled", "captum_default_batch"
                            ),
                            "adaptive_compiled_vs_captum_previous_runtime": ratio(
                                "ours_adaptive_compiled", "captum_previous_runtime"
                            ),
                        }
                        if compiled
                        else {}
                    ),
                    "same_rule_vs_captum_tuned": ratio("ours_same_rule", "captum_tuned"),
                    "adaptive_vs_captum_default_batch": ratio("ours_adaptive", "captum_default_batch"),
                    "same_rule_vs_captum_default_batch": ratio("ours_same_rule", "captum_default_batch"),
                    "adaptive_vs_captum_previous_runtime": ratio("ours_adaptive", "captum_previous_runtime"),
                    "same_rule_vs_captum_previous_runtime": ratio(
                        "ours_same_rule", "captum_previous_runtime"
                    ),
                },
                "per_rep_rows_per_second": reps_out,
            }
        )
    return {
        "model": name,
        "rows": bench.rows,
        "reference_errors": reference_errors,
        "captum_error_curve": {str(n): e for n, e in curve.items()},
        "comparisons": comparisons,
    }


def best_speedup(result: dict[str, Any], baseline: str) -> list[float]:
    """Per tolerance: our better variant's speedup against the given Captum baseline."""
    out = []
    for c in result["comparisons"]:
        candidates = [
            c["speedup"][f"adaptive_vs_captum_{baseline}"],
            c["speedup"][f"same_rule_vs_captum_{baseline}"],
        ]
        compiled = c.get("ours_adaptive_compiled")
        if compiled and compiled["captum_steps_at_this_error"] >= c["captum"]["n_steps"]:
            candidates.append(c["speedup"][f"adaptive_compiled_vs_captum_{baseline}"])
        out.append(max(candidates))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tolerances", type=float, nargs="+", default=[1e-2, 1e-3, 1e-4])
    parser.add_argument(
        "--no-compile",
        action="store_true",
        help="skip the torch.compile variant (its compilation takes a while)",
    )
    parser.add_argument(
        "--out", type=Path, default=REPO_ROOT / "bench" / "results" / "integrated_gradients.json"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()

    images, labels = digits_32()
    net, accuracy = train_cnn(images, labels)
    modality = Modality("image", "image", tuple(f"px{i}" for i in range(SIDE * SIDE)), (1, SIDE, SIDE))
    cnn = ExplainedModel(net, [modality], "multiclass", [str(d) for d in range(10)])
    cnn_bench = Bench(cnn, (images[1500 : 1500 + N_ROWS].contiguous(),), (images[:100],), "zeros")
    results = [run_model("cnn32", cnn_bench, args.tolerances, args.threads, args.reps, not args.no_compile)]

    # The sample digit model of the runtime (8x8 image + 4 scan features), trained as the
    # runtime trains it (in memory here), explained with the runtime's default baselines.
    from examples.datasets import PIXEL_FEATURES, SCAN_FEATURES
    from examples.models import multimodal_frame, multimodal_modalities, train_multimodal

    digit_net, _, digit_metrics = train_multimodal()
    frame = multimodal_frame()
    pixels = torch.from_numpy(frame[PIXEL_FEATURES].to_numpy(np.float32)).reshape(-1, 1, 8, 8)
    scan = torch.from_numpy(frame[SCAN_FEATURES].to_numpy(np.float32))
    digit = ExplainedModel(digit_net, multimodal_modalities(), "multiclass", [str(d) for d in range(10)])
    rows = slice(1500, 1500 + DIGIT_ROWS)
    digit_bench = Bench(
        digit, (pixels[rows].contiguous(), scan[rows].contiguous()), (pixels[:100], scan[:100]), None
    )
    results.append(
        run_model(
            "sample_digit_model", digit_bench, args.tolerances, args.threads, args.reps, not args.no_compile
        )
    )

    versions = {}
    for dist in ("captum", "torch", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    report = {
        "benchmark": "integrated_gradients_vs_captum",
        "settings": {
            "models": {
                "cnn32": "SmallCNN 32x32 (conv 1-16-32-32, linear 2048-64-10, SiLU)",
                "cnn32_heldout_accuracy": accuracy,
                "sample_digit_model": "MultimodalDigitNet (runtime sample: 8x8 image + 4 scan features)",
                "sample_digit_model_heldout_accuracy": digit_metrics["heldout_accuracy"],
            },
            "explained_output": "log-probability of the predicted class",
            "baselines": "cnn32: zeros; digit model: zeros image + background-mean scan features",
            "error_of_a_run": "max over rows of |sum(attr) - (f(x) - f(x'))| / max(|f(x) - f(x')|, 1e-6)",
            "reference_for_attribution_error": f"ours, Gauss-Legendre {REFERENCE_STEPS} nodes",
            "captum_n_steps": "smallest in the grid with error <= ours (Gauss-Legendre, tuned on these rows)",
            "oracle_per_row_steps": (
                "per row, the smallest grid n whose Gauss-Legendre error is <= ours: the evaluations a "
                "perfect per-row step choice would need (an upper bound on what adaptivity can gain)"
            ),
            "captum_tuned": "fastest internal_batch_size in {rows, 256, 1024, None} x threads {1, --threads}",
            "captum_default_batch": "internal_batch_size None (all rows at once), faster thread setting",
            "captum_previous_runtime": (
                "the internal_batch_size this runtime gave Captum before its own engine "
                "(memory budget / (3 x row bytes), a power of two in [256, 8192]), faster thread setting"
            ),
            "step_grid": list(STEP_GRID),
            "adaptive_cap": ADAPTIVE_CAP,
            "reps": args.reps,
        },
        "results": results,
        "targets": {
            f"{r['model']}_at_least_2x_captum_{baseline}_at_equal_completeness_error": all(
                s >= 2.0 for s in best_speedup(r, baseline)
            )
            for r in results
            for baseline in ("tuned", "default_batch", "previous_runtime")
        },
        "versions": versions | {"python": platform.python_version()},
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)),
            "torch_threads": torch.get_num_threads(),
            "processor": platform.processor() or platform.machine(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "seconds": time.perf_counter() - started,
    }
    text = json.dumps(report, indent=2)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")
    return 0 if all(report["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
