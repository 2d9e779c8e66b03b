"""The DifNet authors' PyTorch DifNet train step, timed: the peer row of `benchmarks.models --peer_repo`.

Run by a Python that has torch (a separate environment: the project never imports torch), e.g.

  python3 -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.13.0 numpy
  /tmp/torchvenv/bin/python benchmarks/torch_peer.py --model_file=/tmp/model_difnet.py --crop=321 --batch=2

--model_file is the authors' `model_difnet.py` (github.com/sdujump/DifNet, fetched at benchmark time and never
copied into this project: `benchmarks.models` writes it to a temporary file from a git mirror given by
--peer_repo). The step is the authors' main.py training iteration: `Res_Deeplab(21, layers)` in train mode,
forward, the final prediction bilinearly upsampled to the crop (`F.interpolate`, align_corners=False),
`CrossEntropyLoss(ignore_index=255)`, `zero_grad`, `backward`, `SGD(lr, momentum 0.9, weight_decay 5e-4).step()`
(their main.sh's values); float32, random images and labels, random init (their ImageNet weights change no
timing). Prints one JSON line: torch version, threads, the step times (s) after --warmup steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

MODEL_FILE = "model_difnet.py"


def authors_model_file(repo: str) -> str:
    """The authors' model_difnet.py from `repo` (a checkout, or a git directory such as the `fetch` tool's mirror,
    read with `git show HEAD:model_difnet.py`), written to a temporary file; the caller removes it."""
    handle, path = tempfile.mkstemp(suffix=".py", prefix="model_difnet_")
    with os.fdopen(handle, "wb") as f:
        if os.path.exists(os.path.join(repo, MODEL_FILE)):
            with open(os.path.join(repo, MODEL_FILE), "rb") as source:
                f.write(source.read())
        else:
            f.write(subprocess.run(["git", f"--git-dir={repo}", "show", f"HEAD:{MODEL_FILE}"], check=True,
                                   capture_output=True).stdout)
    return path


def run_peer(repo: str, python: str, *, layers: int, crop: int, batch: int, repeats: int,
             threads: int = 0) -> dict:
    """Runs this file under `python` (one with torch) on the authors' model from `repo`; returns its JSON result,
    with 'median_s' added."""
    model_file = authors_model_file(repo)
    try:
        out = subprocess.run([python, os.path.abspath(__file__), f"--model_file={model_file}", f"--layers={layers}",
                              f"--crop={crop}", f"--batch={batch}", f"--repeats={repeats}", f"--threads={threads}"],
                             check=True, capture_output=True, text=True).stdout
    finally:
        os.remove(model_file)
    result = json.loads(out.strip().splitlines()[-1])
    result["median_s"] = sorted(result["times"])[len(result["times"]) // 2]
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model_file", required=True)
    parser.add_argument("--layers", type=int, default=18)
    parser.add_argument("--crop", type=int, default=321)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads; 0: torch's default")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F

    if args.threads:
        torch.set_num_threads(args.threads)
    spec = importlib.util.spec_from_file_location("model_difnet", args.model_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules["model_difnet"] = module
    spec.loader.exec_module(module)

    torch.manual_seed(0)
    model = module.Res_Deeplab(num_classes=21, layers=args.layers)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=2.5e-4, momentum=0.9, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
    images = torch.randn(args.batch, 3, args.crop, args.crop)
    labels = torch.randint(0, 21, (args.batch, args.crop, args.crop))

    def step() -> float:
        _, _, pred = model(images)
        pred = F.interpolate(pred, size=(args.crop, args.crop), mode="bilinear", align_corners=False)
        loss = criterion(pred, labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "params": params,
                      "times": times}))


if __name__ == "__main__":
    main()
