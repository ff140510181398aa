"""Issue 4's GPU figures in one run: KernelSHAP against shap, Integrated Gradients against Captum.

Targets (an H100, one run, same model and settings on both sides):

* KernelSHAP, a 20->256->256->1 MLP (trained here on a seeded synthetic task, binary output:
  the positive-class probability), numSamples 500, 100 background rows: >= 3,000 explained
  rows/s, and an error against exact Shapley values (every coalition enumerated) no worse than
  shap.KernelExplainer's (``l1_reg=False``: its default silently drops features at this budget),
  with the model on the GPU for both.
* Integrated Gradients on ResNet-50 (torchvision, random weights, eval mode), 32 images of
  3x224x224, zero baseline, 50 Gauss-Legendre steps: >= 4x Captum fp32 (its best
  ``internal_batch_size`` of 128/256: its default runs out of 80 GB) at a completeness error
  <= 1 % (max over the images of |sum(attr) - (f(x) - f(x'))| / |f(x) - f(x')|).
  Captum is also timed with TF32 convolutions off (``captum_fp32_no_tf32``: strict fp32; torch's
  default, the judged baseline, runs fp32 convolutions in TF32), its ratios reported beside.
  Ours: fp32; bf16 autocast; bf16 + torch.compile (compilation timed apart: it is paid once per
  process, or once per job with XAC_COMPILE_CACHE); bf16 and bf16 + compile with the adaptive
  rule. One call of the fastest variant runs under torch.profiler.

Writes one JSON report (``--out``), prints it, exits 0 when every target holds (1 otherwise;
``--smoke`` never judges). ``--smoke`` shrinks everything (8 features, a small CNN instead of
ResNet-50, a few rows) so the script itself is tested on a CPU in CI
(tests/explainers/test_bench_gpu.py); its figures mean nothing.

On the device machine (torch, torchvision there; captum, shap and slicer carried as wheels,
see README "GPU benchmark"):

    python3 bench/bench_gpu.py --out "$OUT/gpu.json"
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
import traceback
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

from include.explainers.base import ExplainedModel, Modality  # noqa: E402
from include.explainers.device import describe_device  # noqa: E402
from include.explainers.integrated_gradients import EXPLAINER as IG  # noqa: E402
from include.explainers.kernel_shap import EXPLAINER as KERNEL_SHAP  # noqa: E402
from include.explainers.params import normalise_params  # noqa: E402

SEED = 20261127
KERNEL_SHAP_TARGET_ROWS_PER_S = 3000.0
IG_TARGET_SPEEDUP = 4.0
IG_TARGET_ERROR = 0.01
# Bench-only variant settings (not IG parameters): inductor options (NCHW: no channels-last
# layout optimisation) and the adaptive rule's Gauss-Legendre nodes per panel (the runtime's
# ADAPTIVE_NODES, 8; 6 took 12 instead of 16 evaluations per row at tolerance 1e-2 on three
# models in fp32 on the CPU, more at 1e-3).
INDUCTOR = "_inductor"
NCHW = {"layout_optimization": False}
NODES = "_adaptive_nodes"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


# ============================================================================ KernelSHAP


def tabular_model(features: int, hidden: int, device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    """A seeded MLP trained briefly on a synthetic task with interactions; returns it and its data."""
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(20_000, features, generator=generator)
    w = torch.randn(features, generator=generator)
    logits = x @ w + 0.8 * torch.sin(2 * x[:, 0] * x[:, 1]) + 0.5 * x[:, 2] ** 2 - 0.5
    y = (logits > 0).float()
    torch.manual_seed(SEED)
    net = nn.Sequential(
        nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1)
    )
    net = net.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xd, yd = x.to(device), y.to(device)
    for step in range(300):
        idx = torch.arange(step * 256, (step + 1) * 256) % x.shape[0]
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(xd[idx])[:, 0], yd[idx]).backward()
        opt.step()
    return net.cpu().eval(), x


def error_l1(phi: np.ndarray, reference: np.ndarray) -> float:
    """Mean over rows of sum|phi - ref| / sum|ref| (normalised L1, as in bench_kernel_shap)."""
    return float(np.mean(np.abs(phi - reference).sum(1) / np.maximum(np.abs(reference).sum(1), 1e-12)))


def bench_kernel_shap(device: torch.device, smoke: bool) -> dict[str, Any]:
    import shap

    features, hidden = (8, 32) if smoke else (20, 256)
    rows, shap_rows, reference_rows = (16, 4, 4) if smoke else (4096, 64, 64)
    net, data = tabular_model(features, hidden, device)
    names = tuple(f"f{i}" for i in range(features))
    model = ExplainedModel(net, [Modality("tabular", "tabular", names, (features,))], "binary", ["0", "1"])
    background = data[:100].contiguous()
    explained = data[1000 : 1000 + rows].contiguous()
    params = normalise_params("KernelSHAP", {"numSamples": 500, "backgroundDataStrategy": "all"})
    # Every coalition (2^20 - 2 of them: above the configuration's numSamples cap, so passed as is).
    exact_params = params | {"numSamples": 2**features - 2}

    with model.on_device(device):
        KERNEL_SHAP.explain(model, (explained[:8],), (background,), params, seed=0)  # warm-up
        ours_rates = []
        for _ in range(1 if smoke else 3):
            seconds, ours = timed(
                lambda: KERNEL_SHAP.explain(model, (explained,), (background,), params, seed=0), device
            )
            ours_rates.append(rows / seconds)
        reference = KERNEL_SHAP.explain(
            model, (explained[:reference_rows],), (background,), exact_params, seed=0
        ).players
        assert bool(
            np.all(
                KERNEL_SHAP.explain(
                    model, (explained[:1],), (background,), exact_params, seed=0
                ).per_instance["exact"]
            )
        ), "the reference must enumerate every coalition"
        # The model's own ceiling: explained rows/s if the MLP did nothing but evaluate the
        # 500 x 100 mixed rows each explained row needs, in passes of 2^20 rows.
        block = torch.randn(1 << (14 if smoke else 20), features, device=device)
        with torch.inference_mode():
            model.scores(block)
            seconds, _ = timed(lambda: [model.scores(block) for _ in range(5)], device)
        model_rows_per_s = 5 * block.shape[0] / seconds / (500 * 100)

        def predict(values: np.ndarray) -> np.ndarray:
            with torch.inference_mode():
                tensor = torch.from_numpy(values.astype(np.float32)).to(device)
                return model.scores(tensor)[:, 0].double().cpu().numpy()

        stock = shap.KernelExplainer(predict, background.numpy())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds, shap_values = timed(
                lambda: stock.shap_values(
                    explained[:shap_rows].numpy(), nsamples=500, l1_reg=False, silent=True
                ),
                device,
            )
    shap_phi = np.asarray(shap_values).reshape(shap_rows, features)
    ours_rate = statistics.median(ours_rates)
    shap_rate = shap_rows / seconds
    n_err = min(reference_rows, shap_rows)
    ours_error = error_l1(ours.players[:reference_rows], reference)
    shap_error = error_l1(shap_phi[:n_err], reference[:n_err])
    ours_error_same_rows = error_l1(ours.players[:n_err], reference[:n_err])
    return {
        "model": f"MLP {features}->{hidden}->{hidden}->1 (binary, probability explained)",
        "settings": {
            "numSamples": 500,
            "background_rows": 100,
            "explained_rows": rows,
            "shap_rows": shap_rows,
        },
        "ours_rows_per_second": ours_rate,
        "ours_rows_per_second_by_rep": ours_rates,
        "shap_rows_per_second": shap_rate,
        "speedup_vs_shap": ours_rate / shap_rate,
        "model_limit_rows_per_second": model_rows_per_s,
        "error_vs_exact": {
            "rows": reference_rows,
            "ours": ours_error,
            "ours_on_shap_rows": ours_error_same_rows,
            "shap_l1_reg_false": shap_error,
        },
        "ours_details": {k: v for k, v in ours.details.items() if k != "background"},
    }


# ============================================================================ Integrated Gradients


class SmokeCNN(nn.Module):
    """Stands in for ResNet-50 under --smoke (convolutions, batch norm, residual-free)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def image_model(smoke: bool) -> tuple[nn.Module, int, int, str]:
    torch.manual_seed(SEED)
    if smoke:
        return SmokeCNN(), 32, 10, "SmokeCNN 3x32x32 (stand-in)"
    from torchvision.models import resnet50

    return resnet50(weights=None), 224, 1000, "ResNet-50 (torchvision, random weights)"


def completeness(features: np.ndarray, delta: np.ndarray) -> dict[str, float]:
    error = np.abs(features.sum(1) - delta) / np.maximum(np.abs(delta), 1e-6)
    return {"max": float(error.max()), "mean": float(error.mean())}


def bench_integrated_gradients(
    device: torch.device, smoke: bool, out: dict[str, Any], checkpoint: Callable[[], None], deadline: float
) -> None:
    """Fills ``out`` stage by stage, calling ``checkpoint`` after each (the report survives a
    time-out or a failure of a later variant); variants past ``deadline`` are recorded as skipped."""
    from captum.attr import IntegratedGradients

    net, side, classes, description = image_model(smoke)
    images = 4 if smoke else 32
    steps = 8 if smoke else 50
    reps = 1 if smoke else 3
    names = tuple(f"px{i}" for i in range(3 * side * side))
    model = ExplainedModel(
        net,
        [Modality("image", "image", names, (3, side, side))],
        "multiclass",
        [str(c) for c in range(classes)],
    )
    generator = torch.Generator().manual_seed(SEED)
    x = torch.randn(images, 3, side, side, generator=generator)
    out.update({"model": description, "images": images, "steps": steps})

    with model.on_device(device):
        xd = x.to(device)
        with torch.inference_mode():
            scores = model.scores(xd)
            targets = scores.argmax(1)
            delta = (
                (
                    scores.gather(1, targets[:, None])[:, 0]
                    - model.scores(torch.zeros_like(xd)).gather(1, targets[:, None])[:, 0]
                )
                .double()
                .cpu()
                .numpy()
            )

        # Captum fp32, its best internal batch (timed after one warm-up each).
        captum = IntegratedGradients(model.scores)

        def captum_run(batch: int) -> np.ndarray:
            attr = captum.attribute(
                xd,
                torch.zeros_like(xd),
                target=targets,
                n_steps=steps,
                method="gausslegendre",
                internal_batch_size=batch,
            )
            return attr.detach().reshape(images, -1).double().cpu().numpy()

        captum_by_batch = {}
        for batch in (16, 32) if smoke else (128, 256):
            captum_run(batch)
            captum_by_batch[batch] = max(
                images / timed(lambda b=batch: captum_run(b), device)[0] for _ in range(2)
            )
        best_batch = max(captum_by_batch, key=captum_by_batch.get)
        captum_rates = [images / timed(lambda: captum_run(best_batch), device)[0] for _ in range(reps)]
        captum_error = completeness(captum_run(best_batch), delta)
        out["captum_fp32"] = {
            "internal_batch_size": best_batch,
            "rows_per_second_by_batch": captum_by_batch,
            "rows_per_second": statistics.median(captum_rates),
            "completeness_error": captum_error,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        }
        checkpoint()
        # Captum in strict fp32 too: torch runs fp32 convolutions in TF32 by default (the baseline
        # above, which the target is judged against); "fp32" read strictly is this one. Reported
        # beside it, so a reader sees both ratios.
        tf32 = torch.backends.cudnn.allow_tf32
        try:
            torch.backends.cudnn.allow_tf32 = False
            captum_run(best_batch)
            strict_rates = [images / timed(lambda: captum_run(best_batch), device)[0] for _ in range(reps)]
            out["captum_fp32_no_tf32"] = {
                "internal_batch_size": best_batch,
                "rows_per_second": statistics.median(strict_rates),
                "completeness_error": completeness(captum_run(best_batch), delta),
            }
        finally:
            torch.backends.cudnn.allow_tf32 = tf32
        checkpoint()

        fixed = {"steps": steps, "integrationMethod": "gausslegendre"}
        # The adaptive rule: per image, Gauss-Legendre panels until the completeness gap is within
        # the tolerance, at most `steps` gradient evaluations. Eager bf16 bottoms out near 3e-3
        # (2.4e-3 max at 50 fixed steps on the H100): half the target. Compiled bf16 bottoms out
        # higher (6.7e-3 max, 5.0e-3 mean at 50 fixed steps): at 5e-3 half its images could not
        # converge and spent the whole cap (29.5 evaluations per image, H100, session 4), so it
        # gets 8e-3, still under the 1e-2 target (a converged image's completeness error is
        # within its tolerance by construction; one stopped by the cap is measured like the rest).
        adaptive = {
            "steps": steps,
            "integrationMethod": "gausslegendre_adaptive",
            "completenessTolerance": 5e-3,
        }
        # Most telling first: a later variant may be cut by the deadline. Inductor turns
        # convolutional graphs channels-last (layout optimisation), while eager channels-last was
        # 20-25 % slower on the H100 (gpu_ig_probe.json) and compiled bf16 lost accuracy against
        # eager bf16 (6.7e-3 vs 2.4e-3 max error at 50 steps): the "_nchw" variants compile the
        # same graphs in the contiguous layout, to see which layout serves IG.
        compiled_adaptive = {"precision": "bf16", "compile": True, **adaptive, "completenessTolerance": 8e-3}
        variants = {"ours_bf16_compiled": {"precision": "bf16", "compile": True, **fixed}}
        if not smoke:  # more compilations (other shapes, options): minutes on a CPU, seconds on the GPU host
            variants["ours_bf16_compiled_adaptive"] = compiled_adaptive
            variants["ours_bf16_compiled_adaptive_6nodes"] = {**compiled_adaptive, NODES: 6}
            variants["ours_bf16_compiled_adaptive_nchw"] = {**compiled_adaptive, INDUCTOR: NCHW}
        variants |= {
            "ours_bf16_compiled_nchw": {"precision": "bf16", "compile": True, **fixed, INDUCTOR: NCHW},
            "ours_bf16_adaptive": {"precision": "bf16", "compile": False, **adaptive},
            "ours_bf16_adaptive_6nodes": {"precision": "bf16", "compile": False, **adaptive, NODES: 6},
            "ours_bf16": {"precision": "bf16", "compile": False, **fixed},
            "ours_fp32": {"precision": "fp32", "compile": False, **fixed},
        }
        for name, extra in variants.items():
            if time.perf_counter() > deadline:
                out[name] = {"skipped": "deadline"}
                continue
            try:
                out[name] = ig_variant(model, x, delta, extra, images, steps, reps, device, out)
            except Exception as error:  # one broken variant must not cost the others' figures
                out[name] = failure(error)
            checkpoint()
        # One call of the fastest variant under torch.profiler: where a call's time goes, op by op
        # (what the next change should aim at; a few seconds of device time).
        timed_variants = {k: v for k, v in out.items() if k in variants and "rows_per_second" in v}
        if timed_variants and time.perf_counter() <= deadline:
            fastest = max(timed_variants, key=lambda k: timed_variants[k]["rows_per_second"])
            try:
                out["profile"] = profile_call(model, x, variants[fastest], device) | {"variant": fastest}
            except Exception as error:
                out["profile"] = failure(error)
            checkpoint()


def ig_params(extra: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A variant's IG parameters (normalised) and its bench-only settings (INDUCTOR, NODES)."""
    extra = dict(extra)
    settings = {key: extra.pop(key) for key in (INDUCTOR, NODES) if key in extra}
    return normalise_params("IntegratedGradients", {"baseline": "zeros", **extra}, has_image=True), settings


@contextlib.contextmanager
def variant_settings(model: ExplainedModel, settings: dict[str, Any]) -> Iterator[None]:
    """A variant's bench-only settings for the duration: its inductor options and its adaptive
    nodes per panel (the runtime's module constant, put back after)."""
    from include.explainers import integrated_gradients

    default_nodes = integrated_gradients.ADAPTIVE_NODES
    integrated_gradients.ADAPTIVE_NODES = settings.get(NODES, default_nodes)
    try:
        with inductor_options(model, settings.get(INDUCTOR, {})):
            yield
    finally:
        integrated_gradients.ADAPTIVE_NODES = default_nodes


@contextlib.contextmanager
def inductor_options(model: ExplainedModel, options: dict[str, Any]) -> Iterator[None]:
    """The variant's graphs compiled with these inductor options: a compiled function of its own
    in the slot where the runtime keeps the model's one (made with the default options: put back
    after, recompiling when next called, from torch's on-disk cache where it has one)."""
    if not options:
        yield
        return
    import torch._dynamo

    # Dynamo keeps compiled code per function, whatever torch.compile call made it: without a
    # reset the variant would run the default options' graph of the same shape, and later
    # variants this one's. The options go to torch.compile itself: a patched inductor config
    # was not seen by a compilation in another thread (the CPU's pass workers, torch 2.13).
    default_compiled = model.compiled_scores
    torch._dynamo.reset()
    model.compiled_scores = torch.compile(model.scores, dynamic=False, fullgraph=True, options=options)
    try:
        yield
    finally:
        torch._dynamo.reset()
        model.compiled_scores = default_compiled


def profile_call(
    model: ExplainedModel, x: torch.Tensor, extra: dict[str, Any], device: torch.device
) -> dict[str, Any]:
    """One explanation under torch.profiler: the top operators by their own device time (CPU time
    on a CPU) and by their own CPU time (host overhead), as tables."""
    from torch.profiler import ProfilerActivity, profile

    params, settings = ig_params(extra)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with variant_settings(model, settings):
        IG.explain(model, (x,), (x[:1],), params, seed=0)  # compiles outside the profile
        with profile(activities=activities) as prof:
            seconds, _ = timed(lambda: IG.explain(model, (x,), (x[:1],), params, seed=0), device)
    averages = prof.key_averages()
    device_key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return {
        "seconds": seconds,
        "by_device_time": averages.table(sort_by=device_key, row_limit=25).splitlines(),
        "by_cpu_time": averages.table(sort_by="self_cpu_time_total", row_limit=25).splitlines(),
    }


def failure(error: BaseException) -> dict[str, str]:
    return {"error": repr(error), "traceback": traceback.format_exc()[-4000:]}


def ig_variant(
    model: ExplainedModel,
    x: torch.Tensor,
    delta: np.ndarray,
    extra: dict[str, Any],
    images: int,
    steps: int,
    reps: int,
    device: torch.device,
    out: dict[str, Any],
) -> dict[str, Any]:
    from torch._dynamo.utils import counters

    params, settings = ig_params(extra)
    run = lambda: IG.explain(model, (x,), (x[:1],), params, seed=0)  # noqa: E731
    graphs_before = counters["stats"]["unique_graphs"]
    with variant_settings(model, settings):
        first_seconds, _ = timed(run, device)  # includes compilation for the compiled variant
        graphs_first = counters["stats"]["unique_graphs"]
        rates = []
        for _ in range(reps):
            seconds, result = timed(run, device)
            rates.append(images / seconds)
    return {
        "rows_per_second": statistics.median(rates),
        "rows_per_second_by_rep": rates,
        "first_call_seconds": first_seconds,
        "bench_settings": settings,
        # Graphs dynamo compiled in the first call and in the timed ones (which should be none).
        "graphs_compiled": {
            "first_call": graphs_first - graphs_before,
            "timed_calls": counters["stats"]["unique_graphs"] - graphs_first,
        },
        "completeness_error": completeness(result.features, delta),
        "speedup_vs_captum_fp32": statistics.median(rates) / out["captum_fp32"]["rows_per_second"],
        "speedup_vs_captum_fp32_no_tf32": (
            statistics.median(rates) / out["captum_fp32_no_tf32"]["rows_per_second"]
            if "captum_fp32_no_tf32" in out
            else None
        ),
        "internal_batch_size": result.resolved_params["internalBatchSize"],
        "integration": {
            k: result.resolved_params.get(k) for k in ("integrationMethod", "steps", "completenessTolerance")
        },
        "gradient_evaluations_mean": (
            float(np.mean(result.per_instance["gradient_evaluations"]))
            if "gradient_evaluations" in result.per_instance
            else float(steps)
        ),
        # The last timed call: rows through forward+backward (padding included; compiled or eager)
        # and forward-only checks, and the seconds of each stage.
        "work": result.details.get("work"),
        "forward_backward_passes": result.details.get("forward_backward_passes"),
    }


# ============================================================================ report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on any device: checks the script")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "bench" / "results" / "gpu.json")
    parser.add_argument(
        "--skip", choices=["kernel_shap", "integrated_gradients"], action="append", default=[]
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=None,
        help="seconds from the start after which IG variants not begun are skipped (device time is metered)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    started = time.perf_counter()
    deadline = started + args.deadline if args.deadline else float("inf")
    report: dict[str, Any] = {
        "benchmark": "explainers_on_gpu",
        "smoke": args.smoke,
        "device": describe_device(device, args.device),
    }

    def checkpoint() -> None:
        """Writes the report so far: a time-out or a crash later still leaves every figure taken."""
        report["seconds"] = time.perf_counter() - started
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2, default=float) + "\n")
        print(f"[{report['seconds']:.0f} s] checkpoint: {sorted(report)}", file=sys.stderr, flush=True)

    if "kernel_shap" not in args.skip:
        try:
            report["kernel_shap"] = bench_kernel_shap(device, args.smoke)
        except Exception as error:  # the IG figures are still worth the device time
            report["kernel_shap"] = failure(error)
        checkpoint()
    if "integrated_gradients" not in args.skip:
        report["integrated_gradients"] = {}
        try:
            bench_integrated_gradients(
                device, args.smoke, report["integrated_gradients"], checkpoint, deadline
            )
        except Exception as error:
            report["integrated_gradients"]["error"] = failure(error)
    targets: dict[str, bool] = {}
    if "ours_rows_per_second" in report.get("kernel_shap", {}):
        ks = report["kernel_shap"]
        targets["kernel_shap_at_least_3000_rows_per_second"] = (
            ks["ours_rows_per_second"] >= KERNEL_SHAP_TARGET_ROWS_PER_S
        )
        targets["kernel_shap_never_slower_than_shap"] = ks["speedup_vs_shap"] >= 1.0
        targets["kernel_shap_error_no_worse_than_shap"] = (
            ks["error_vs_exact"]["ours_on_shap_rows"] <= ks["error_vs_exact"]["shap_l1_reg_false"]
        )
    if "integrated_gradients" in report:
        ig = report["integrated_gradients"]
        best = max(
            (
                v
                for k, v in ig.items()
                if k.startswith("ours_")
                and "speedup_vs_captum_fp32" in v
                and v["completeness_error"]["max"] <= IG_TARGET_ERROR
            ),
            key=lambda v: v["speedup_vs_captum_fp32"],
            default=None,
        )
        targets["integrated_gradients_at_least_4x_captum_fp32_at_error_le_1pct"] = (
            best is not None and best["speedup_vs_captum_fp32"] >= IG_TARGET_SPEEDUP
        )
    report["targets"] = targets
    versions = {}
    for dist in ("torch", "torchvision", "captum", "shap", "numpy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    report["versions"] = versions | {"python": platform.python_version()}
    report["machine"] = {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()}
    checkpoint()
    print(args.out.read_text())
    failed = [
        k for k, v in report.get("integrated_gradients", {}).items() if isinstance(v, dict) and "error" in v
    ]
    if "error" in report.get("kernel_shap", {}):
        failed.append("kernel_shap")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 2
    return 0 if args.smoke or all(targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
