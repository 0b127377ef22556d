"""What every notebook of the book shares: parameter checking, figure style, the results record."""

from __future__ import annotations

import ast
import io
import json
import os
import platform
import resource
import sys
import time
import typing
import warnings
from importlib import metadata
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import torch
import yaml

from .. import __version__
from .progress import in_kernel


class ParameterGuard:
    """Catches what papermill only warns about: unknown parameters and values of the wrong type.

    Create it in the cell just before the ``parameters`` cell; declare each parameter there with
    a type annotation (``epochs: int = 100``). After papermill's injected cell, ``check`` fails
    on any new name that was not declared, and on a value whose type does not match.
    """

    def __init__(self, namespace: dict) -> None:
        self.before = set(namespace)

    def check(self, namespace: dict, at_least: dict[str, float] | None = None) -> dict:
        """The parameters, checked; ``at_least`` gives lower bounds (for a list: of every value),
        so that a value no run can use is refused before any long work, by name."""
        declared = dict(namespace.get("__annotations__", {}))
        new = {k for k in set(namespace) - self.before if not k.startswith("_")}
        check_names(new - {"guard"}, declared)
        params = {}
        for name, kind in declared.items():
            if name not in namespace:
                raise ValueError(f"parameter {name!r} has no value")
            params[name] = check_value(name, namespace[name], kind)
        for name, bound in (at_least or {}).items():
            values = params[name] if isinstance(params[name], list) else [params[name]]
            if any(v < bound for v in values):
                raise ValueError(f"parameter {name}={params[name]!r} is not allowed; need at least {bound:g}")
        return params


def check_names(given: set[str], declared: dict[str, object]) -> None:
    """Refuse a parameter name the notebook does not declare."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; this notebook takes {sorted(declared)}")


def check_value(name: str, value: object, kind: object) -> object:
    """``value`` if it has the declared type ``kind`` (an int is a float; a list is not empty)."""
    if not _matches(value, kind):
        raise TypeError(
            f"parameter {name}={value!r} has type {type(value).__name__}; expected "
            f"{kind.__name__ if isinstance(kind, type) else kind}{_yaml_hint(value)}"
        )
    if isinstance(value, list) and not value:
        raise ValueError(f"parameter {name}=[] is empty; give at least one value")
    return value


def declared_parameters(source: str) -> dict[str, object]:
    """The parameters a notebook's ``parameters`` cell declares (``name: type = default``), read
    from the cell's source without running it: name -> type."""
    declared = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            declared[node.target.id] = eval(compile(ast.Expression(node.annotation), "<parameters>", "eval"))
    return declared


def _yaml_hint(value: object) -> str:
    """Why a number may have arrived as a string: YAML 1.1 (PyYAML, papermill) reads 1e-3 as text."""
    texts = value if isinstance(value, list) else [value]
    for text in texts:
        if isinstance(text, str):
            try:
                float(text)
            except ValueError:
                continue
            return (
                f" ({text!r} is a string: YAML reads a number like 1e-3 without a decimal point as text; "
                f"write 1.0e-3)"
            )
    return ""


def _matches(value: object, kind: object) -> bool:
    origin = typing.get_origin(kind)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (inner,) = typing.get_args(kind) or (object,)
        return isinstance(value, list) and all(_matches(v, inner) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if kind is object:
        return True
    return isinstance(value, kind)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

STYLE = {
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.25,
    "figure.constrained_layout.use": True,
    "pdf.fonttype": 42,
}
COLORS = {
    "ours": "#1f77b4",
    "sae": "#d62728",
    "topk": "#2ca02c",
    "batchtopk": "#8c564b",
    "sae_dnorm": "#e377c2",
    "jumprelu": "#ff7f0e",
    "paper": "#7f7f7f",
    "lse_only": "#7f7f7f",
    "lse_var": "#ff7f0e",
    "lse_var_tc": "#1f77b4",
    "var_tc_only": "#9467bd",
    "adam": "#1f77b4",
    "sgd": "#d62728",
}


def use_style() -> None:
    matplotlib.rcParams.update(STYLE)


NOTEBOOK_DPI = 110  # the picture of a figure kept in the executed notebook (the files get savefig.dpi)


def save_figure(fig: plt.Figure, name: str, figures_dir: str | Path, show: bool = True) -> list[Path]:
    """Save as PDF and PNG under figures_dir and, inside a notebook, show it as the cell's image
    output; returns the paths.

    The picture is displayed explicitly (not through ``plt.show``) so that it lands in the
    executed notebook whatever matplotlib backend the kernel runs (``make book`` runs Agg, where
    ``plt.show`` draws nothing). The figure is closed afterwards, so an inline backend does not
    draw it a second time.
    """
    out = Path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.pdf", out / f"{name}.png"]
    for p in paths:
        fig.savefig(p, bbox_inches="tight", metadata={"CreationDate": None} if p.suffix == ".pdf" else None)
    if show and in_kernel():
        from IPython.display import Image, display

        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=NOTEBOOK_DPI, bbox_inches="tight")
        display(Image(data=buffer.getvalue(), format="png"))
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------

RECORDED_PACKAGES = ("torch", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "papermill", "ray")


def environment() -> dict:
    versions = {}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "encoder_study": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "executor": os.environ.get("ENCODER_STUDY_EXECUTOR") or "local",
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "packages": versions,
    }


def cpu_model() -> str:
    """The processor's model name (Linux), else the machine type."""
    try:
        with open("/proc/cpuinfo") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        name = ""
    return name or platform.processor() or platform.machine()


def peak_memory_gib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


class Record:
    """A notebook's results folder: tidy CSV tables plus run_info.json (parameters, seeds,
    versions, durations). Opened at the top of a notebook, written as results arrive."""

    def __init__(self, results_dir: str | Path, params: dict) -> None:
        self.dir = Path(results_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.params, self.start, self.durations = params, time.perf_counter(), {}

    def table(self, name: str, df: pd.DataFrame) -> Path:
        path = self.dir / f"{name}.csv"
        df.to_csv(path, index=False, float_format="%.6g")
        return path

    def summary(self, markdown: str) -> Path:
        """The notebook's findings for the README, as Markdown rendered from its own tables
        (``summary.md``): ``scripts/update_readme.py`` joins these and types no number itself."""
        path = self.dir / "summary.md"
        path.write_text(markdown.strip() + "\n")
        return path

    def duration(self, label: str, seconds: float) -> None:
        self.durations[label] = round(float(seconds), 3)

    def close(self, **extra) -> None:
        """Write run_info.json. Returns None, so a notebook that ends a cell with this call shows
        nothing (a returned path would print this machine's absolute path into the record)."""
        info = {
            "parameters": self.params,
            "environment": environment(),
            "durations_s": self.durations,
            "notebook_seconds": round(time.perf_counter() - self.start, 1),
            "peak_memory_gib": round(peak_memory_gib(), 2),
            **extra,
        }
        (self.dir / "run_info.json").write_text(json.dumps(info, indent=1, default=str))


def repo_root() -> Path:
    """The book's root folder (holding pyproject.toml), found upward from the working directory,
    so a notebook works whether run from notebooks/ (JupyterLab) or the root (papermill)."""
    here = Path.cwd().resolve()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").exists() and (folder / "encoder_study").is_dir():
            return folder
    return here


def repo_path(path: str | Path) -> Path:
    """An absolute path as given, else relative to the book's root."""
    p = Path(path)
    return p if p.is_absolute() else repo_root() / p


def record_warning(message, category, filename, lineno, line=None) -> str:
    """A warning as the record prints it: its kind and message, without the file and line that
    raised it (an absolute path of the machine that ran the book)."""
    return f"{category.__name__}: {message}\n"


def start_notebook(results_dir: str | Path, params: dict) -> Record:
    """What every notebook does first: the book's figure style, warnings printed without the
    paths of the machine (``record_warning``), and its results record in ``results_dir``
    (relative to the book's root) holding the checked parameters."""
    use_style()
    warnings.formatwarning = record_warning
    return Record(repo_path(results_dir), params)


def paper_numbers() -> dict:
    """The numbers the paper reports (``docs/paper_numbers.yaml``, their one home), for the
    notebooks that set their results beside the paper's. Read with yaml's safe loader."""
    return yaml.safe_load(repo_path("docs/paper_numbers.yaml").read_text())


def mean_std(df: pd.DataFrame, by: str | list[str], cols: list[str]) -> pd.DataFrame:
    """Per group, 'mean ± std' over seeds (sample std), as strings for a readable table."""
    g = df.groupby(by, sort=False)[cols]
    m, s = g.mean(), g.std(ddof=1).fillna(0.0)
    return pd.DataFrame({c: [f"{x:.4g} ± {y:.2g}" for x, y in zip(m[c], s[c])] for c in cols}, index=m.index)
