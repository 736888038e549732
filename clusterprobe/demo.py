"""``run_demo``: the whole pipeline offline on scikit-learn's digits, in a few CPU minutes.

Trains ReSA and BYOL (the baseline with the same momentum structure) briefly with a narrow
ResNet-18 on the 1,347 training digits, saving a checkpoint every epoch (and the initialisation),
then builds the report over both runs. Nothing is tuned to force a result: the figures show what
these short runs give, and a random-initialisation epoch 0 is included for comparison.
"""

from __future__ import annotations

import time
from pathlib import Path

from .errors import ClusterprobeError
from .report import ReportResult, ReportSettings, build_report
from .runs import RunLayout

#: Settings shared by the demo's runs (the ReSA/BYOL CIFAR recipes, scaled to 8x8 digits on a CPU).
DEMO_TRAINING = {
    "dataset": "digits",
    "backbone": "resnet18",
    "width": 8,
    "projector_dims": [128, 128, 64],
    "batch_size": 64,
    "lr": 1.0,
    "crop_scale": [0.5, 1.0],
    "flip": False,  # a mirrored digit is often another digit
    # the analysed momentum encoder is a product of the EMA rates: over the demo's ~130 steps a
    # start of 0.99 leaves about half of it at its initialisation (6 epochs: H linear 0.77 vs 0.79
    # at init); 0.9 lets it follow the online encoder (0.92)
    "ema_base": 0.9,
    "save_every": 1,
    "seed": 0,
}
DEMO_METHODS = {"resa": {}, "byol": {"predictor_dims": [128, 64]}}


def run_demo(out: str | Path = "clusterprobe-demo", epochs: int = 6, progress: bool = True,
             device: str = "auto") -> ReportResult:
    """Train the demo runs into ``out/runs`` and report into ``out/report``.

    Runs already there are reused when they have ``epochs`` epochs, extended when they have
    fewer (interrupted ones resume) and started again when they have no checkpoint yet.

    Raises:
        ClusterprobeError: ``epochs`` < 1, or a run in ``out`` was trained for more epochs (its
            report would show that longer run, whose schedule is not an ``epochs``-epoch one).
    """
    from .trainer import train

    if int(epochs) < 1:
        raise ClusterprobeError(f"The demo trains at least one epoch; got epochs={epochs}.")
    out = Path(out)
    started = time.perf_counter()
    for method, extra in DEMO_METHODS.items():
        run_dir = out / "runs" / method
        config = {**DEMO_TRAINING, **extra, "method": method, "epochs": epochs, "out": str(run_dir),
                  "device": device, "progress": progress}
        layout = RunLayout(run_dir)
        saved = layout.read_config().get("epochs")
        if saved is not None and int(saved) > epochs:
            raise ClusterprobeError(
                f"{run_dir} holds a {saved}-epoch demo run: its report would show {saved} epochs, not {epochs} "
                f"(and epoch {epochs} of a {saved}-epoch schedule is not an {epochs}-epoch run). Run the demo "
                f"with --epochs {saved} (or more, to extend the runs), or into another --out."
            )
        checkpoints = layout.checkpoints()
        if epochs not in checkpoints:
            # no checkpoint yet (stopped before epoch 0 was saved): nothing to keep, start again
            train(config, resume=bool(checkpoints), overwrite=not checkpoints and run_dir.exists())
    result = build_report(out / "runs", out / "report", ReportSettings(device=device), progress=progress)
    result.elapsed_s = time.perf_counter() - started  # type: ignore[attr-defined]
    return result
