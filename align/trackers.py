"""Experiment trackers (`args.report_to`): known names, the package each needs, and where
TensorBoard writes.

Every name transformers' Trainer knows is accepted when its package is installed; a typo, or a
tracker whose package is missing, is refused by `align validate` naming the package to install
(before, an unknown name passed validation and a missing package killed the run after the model
had loaded). TensorBoard ships with align; its event files go to `<stage>/logs/` in the run
directory (written in `<stage>.partial/logs/`, kept when the stage finishes).
"""

from __future__ import annotations

import difflib
import importlib.util

from align.errors import AlignError

# report_to name -> (module that must import, pip package that provides it)
TRACKERS = {
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow"),
    "trackio": ("trackio", "trackio"),
    "comet_ml": ("comet_ml", "comet-ml"),
    "neptune": ("neptune", "neptune"),
    "clearml": ("clearml", "clearml"),
    "dvclive": ("dvclive", "dvclive"),
    "codecarbon": ("codecarbon", "codecarbon"),
    "swanlab": ("swanlab", "swanlab"),
    "azure_ml": ("azureml", "azureml-core"),
    "dagshub": ("dagshub", "dagshub"),
    "flyte": ("flytekit", "flytekit"),
    "kubeflow": ("kubeflow", "kubeflow"),
}
SPECIAL = ("none", "all")
LOGS_DIR = "logs"


def tracker_names(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def installed(name: str) -> bool:
    module = TRACKERS[name][0]
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def check_report_to(value, where: str, source: str) -> None:
    """Refuse an unknown tracker name, or one whose package is not installed."""
    for name in tracker_names(value):
        if not isinstance(name, str):
            raise AlignError(f"{source}: '{where}' must name trackers (strings), got {name!r}.")
        if name in SPECIAL:
            continue
        if name not in TRACKERS:
            hint = difflib.get_close_matches(name, list(TRACKERS), n=1)
            extra = f" Did you mean '{hint[0]}'?" if hint else ""
            raise AlignError(f"{source}: '{where}': unknown tracker '{name}'.{extra} Known: "
                             f"{', '.join(TRACKERS)} (or none / all).")
        if not installed(name):
            raise AlignError(f"{source}: '{where}': tracker '{name}' needs the package "
                             f"'{TRACKERS[name][1]}', which is not installed: "
                             f"pip install {TRACKERS[name][1]}.")


def uses_tensorboard(value) -> bool:
    names = tracker_names(value)
    return "tensorboard" in names or ("all" in names and installed("tensorboard"))
