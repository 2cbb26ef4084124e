"""One driver per course task: ``python -m assignments list | run NAME... | report``."""
import importlib

# In the order the report shows them. A driver module defines NAME, COURSE, TASK,
# SUMMARY, STATEMENT, DATASETS, DEFAULT and run(ctx); see runner.py.
DRIVERS = (
    "regression",
    "filters",
    "mlp_numpy",
    "cnn_vs_mlp",
    "cifar_cnn",
    "regularization",
    "transfer_learning",
    "augmentation",
    "explanations",
    "model_bias",
    "feature_visualization",
    "adversarial",
)


def available():
    """The driver modules that exist in this checkout, in report order."""
    modules = []
    for name in DRIVERS:
        try:
            modules.append(importlib.import_module(f"assignments.{name}"))
        except ModuleNotFoundError as error:
            if error.name != f"assignments.{name}":
                raise  # a driver that exists but fails to import is a bug, not a gap
    return modules


def get(name):
    for module in available():
        if module.NAME == name:
            return module
    names = ", ".join(m.NAME for m in available())
    raise SystemExit(f"unknown assignment {name!r}; available: {names}")
