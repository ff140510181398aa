"""Why is IG on a GPU slower than expected? One short diagnostic run (device time is metered).

Times one forward+backward pass (gradient w.r.t. the input only, as IG needs) of ResNet-50
(torchvision, random weights) at 3x224x224 for each combination of precision (fp32 / bf16
autocast), memory layout (contiguous / channels-last), cudnn autotuning (off / on) and pass
size; then our IntegratedGradients on 32 images with cudnn autotuning off and on. Writes
``--out`` (JSON) after every measurement, so a time-out keeps what was measured.

    python3 bench/gpu_ig_probe.py --out "$OUT/gpu_ig_probe.json" --deadline 200
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from include.explainers import integrated_gradients as ig_module  # noqa: E402
from include.explainers.base import ExplainedModel, Modality  # noqa: E402
from include.explainers.params import normalise_params  # noqa: E402


def pass_rate(
    net: torch.nn.Module, rows: int, precision: str, channels_last: bool, device: torch.device
) -> dict:
    layout = torch.channels_last if channels_last else torch.contiguous_format
    net.to(memory_format=layout)
    x = torch.randn(rows, 3, 224, 224, device=device).contiguous(memory_format=layout).requires_grad_(True)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )

    def step() -> None:
        with autocast:
            out = net(x)
        torch.autograd.grad(out.float().log_softmax(1)[:, 0].sum(), x)

    torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(2):
        step()
    torch.cuda.synchronize(device)
    warmup = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(5):
        step()
    torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - started) / 5
    return {
        "rows_per_second": rows / seconds,
        "warmup_seconds": warmup,
        "peak_gib": torch.cuda.max_memory_allocated(device) / 2**30,
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline", type=float, default=200.0)
    args = parser.parse_args()
    device = torch.device("cuda")
    start = time.perf_counter()
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(device), "passes": [], "ig": []}

    def save() -> None:
        report["seconds"] = time.perf_counter() - start
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report["passes"][-1:] + report["ig"][-1:]), flush=True)

    from torchvision.models import resnet50

    torch.manual_seed(0)
    net = resnet50(weights=None).to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    report["tf32"] = {
        "cudnn": torch.backends.cudnn.allow_tf32,
        "matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        for precision in ("fp32", "bf16"):
            for channels_last in (False, True):
                for rows in (64, 256):
                    if time.perf_counter() - start > args.deadline * 0.55:
                        break
                    try:
                        figures = pass_rate(net, rows, precision, channels_last, device)
                    except Exception as error:  # an OOM must not cost the other figures
                        figures = {"error": repr(error)}
                        torch.cuda.empty_cache()
                    report["passes"].append(
                        {
                            "cudnn_benchmark": benchmark,
                            "precision": precision,
                            "channels_last": channels_last,
                            "rows": rows,
                            **figures,
                        }
                    )
                    save()
    torch.backends.cudnn.benchmark = False
    net.to(memory_format=torch.contiguous_format)
    for p in net.parameters():
        p.requires_grad_(True)
    model = ExplainedModel(
        net.cpu(),
        [Modality("image", "image", tuple(f"px{i}" for i in range(3 * 224 * 224)), (3, 224, 224))],
        "multiclass",
        [str(c) for c in range(1000)],
    )
    x = torch.randn(32, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with model.on_device(device):
        for tuned in (False, True):
            torch.backends.cudnn.benchmark = tuned
            for precision in ("bf16", "fp32"):
                if time.perf_counter() - start > args.deadline:
                    break
                params = normalise_params(
                    "IntegratedGradients",
                    {
                        "baseline": "zeros",
                        "steps": 50,
                        "integrationMethod": "gausslegendre",
                        "precision": precision,
                    },
                    has_image=True,
                )
                times = []
                free_before = torch.cuda.mem_get_info(device)[0] / 2**30
                for _ in range(3):
                    torch.cuda.synchronize(device)
                    t = time.perf_counter()
                    out = ig_module.EXPLAINER.explain(model, (x,), (x[:1],), params, seed=0)
                    torch.cuda.synchronize(device)
                    times.append(time.perf_counter() - t)
                report["ig"].append(
                    {
                        "cudnn_benchmark": tuned,
                        "precision": precision,
                        "seconds_by_call": times,
                        "rows_per_second_best": 32 / min(times),
                        "pass_rows": out.resolved_params["internalBatchSize"],
                        "free_gib_before": free_before,
                        "reserved_gib": torch.cuda.memory_reserved(device) / 2**30,
                    }
                )
                save()
    torch.backends.cudnn.benchmark = False
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
