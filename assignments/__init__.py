"""One driver per course task: ``python -m assignments list | run NAME... | report``,
or from Python (a notebook):

    import assignments
    result = assignments.run("regression", profile="quick", out="runs/regression", seeds=2)
    result.metrics, result.figures

``list`` reads the drivers' declarations without importing them (their imports, torch
among them, take seconds), so it answers at once and works without torch installed.
"""
import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

# In the order the report shows them. A driver module declares NAME, COURSE, TASK,
# SUMMARY, STATEMENT, DATASETS, DEFAULT, PROFILES and run(ctx); see runner.py.
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
    "memorization",
    "layer_criticality",
    "simclr",
    "fixmatch",
    "clip_zeroshot",
    "visual_prompting",
    "deep_prompting",
    "vae",
    "aae",
    "gpt",
    "gnn",
)
CATALOGUE_KEYS = ("NAME", "COURSE", "TASK", "SUMMARY", "DEFAULT", "TORCH")


def catalogue():
    """Each driver's NAME, COURSE, TASK, SUMMARY, DEFAULT and TORCH, read from its
    source as literals, in report order."""
    entries = []
    for module in DRIVERS:
        path = Path(__file__).with_name(f"{module}.py")
        if not path.exists():
            continue
        entry = {"module": module, "DEFAULT": False, "TORCH": False}
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                    and getattr(node.targets[0], "id", None) in CATALOGUE_KEYS:
                entry[node.targets[0].id] = ast.literal_eval(node.value)
        entries.append(entry)
    return entries


def get(name):
    """The driver module called ``name``."""
    for entry in catalogue():
        if entry["NAME"] == name:
            return importlib.import_module(f"assignments.{entry['module']}")
    names = ", ".join(e["NAME"] for e in catalogue())
    raise SystemExit(f"unknown assignment {name!r}; available: {names}")


def available(default_only=False):
    """The driver modules (imported), in report order."""
    return [get(e["NAME"]) for e in catalogue() if e["DEFAULT"] or not default_only]


@dataclass
class Result:
    """What a run made: its metrics (as metrics.json holds them), its folder and its figures."""
    metrics: dict
    out: Path
    figures: list


def run(name, profile="default", out=None, **options):
    """Run driver ``name`` as ``python -m assignments run`` would, with the same
    validation: ``options`` are its command-line options by their Python names
    (``batch_size=64``, ``dataset="mnist"``, ``resume=True``). Returns a Result."""
    from .runner import parser_for, run_driver, to_jsonable

    driver = get(name)
    argv = ["--profile", profile] + (["--out", str(out)] if out is not None else [])
    actions = {a.dest: a for a in parser_for(driver)._actions if a.option_strings}
    for key, value in options.items():
        if key not in actions or key in ("profile", "out", "help"):
            known = ", ".join(sorted(k for k in actions if k not in ("help", "profile", "out")))
            raise SystemExit(f"{name}: unknown option {key}={value!r}; it takes {known}")
        action = actions[key]
        flag = action.option_strings[0]
        if action.nargs == 0:  # a flag (--resume), or a pair of them (--amp / --no-amp)
            if value:
                argv.append(flag)
            elif len(action.option_strings) > 1:
                argv.append(action.option_strings[1])
        elif isinstance(value, (list, tuple)):
            argv += [flag, *map(str, value)] if action.nargs else [flag, ",".join(map(str, value))]
        else:
            argv += [flag, str(value)]
    metrics, ctx = run_driver(driver, vars(parser_for(driver).parse_args(argv)))
    return Result(metrics=to_jsonable(metrics), out=ctx.out, figures=[ctx.out / f["file"] for f in ctx.figures])
