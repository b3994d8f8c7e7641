"""The Python API, in Optimum's style::

    from amoeba_plugin import AmoebaPruner, PruningConfig

    pruner = AmoebaPruner.from_pretrained("amoeba-tiny-sotu")
    config = PruningConfig(method="uniform-magnitude", budget="0.5")
    out = pruner.prune(config, save_directory="pruned/", evaluate=True)
    out.model, out.plan, out.summary, out.perplexity_before, out.perplexity_after

Every input is checked before any heavy work (calibration, scoring, slicing, writing), so a bad
budget, method name, data source or output directory fails fast and leaves nothing behind.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from .budget import Budget
from .errors import AmoebaError, DataError
from .pipeline import RunData

CONFIG_NAME = "pruning_config.json"


def _budget_text(budget: Budget) -> str | dict:
    """A lossless text form of ``budget`` (``str(budget)`` rounds large counts)."""
    if budget.tolerance:
        return budget.to_dict()
    if budget.kind == "shape":
        return str(budget)
    if budget.kind == "count":
        return f"count={int(budget.value)}"
    return f"{budget.kind}={budget.value!r}"


def _optional_source(value: str | None) -> str | None:
    if value is None:
        return None
    value = str(value).strip()
    return None if value.lower() in ("", "none", "null", "off") else value


@dataclass
class PruningConfig:
    """What to prune and how. Serialises to ``pruning_config.json``.

    ``budget`` is a string such as ``"0.5"``, ``"nonembed=0.6"``, ``"macs=0.5"``, ``"count=3e6"``
    or ``"shape=layers:6,heads:4"``, or a :class:`~amoeba_plugin.budget.Budget`. ``calibration`` and
    ``evaluation`` name text sources (``"sotu:train"``, a file path, ...) or are None.
    """

    CONFIG_NAME: ClassVar[str] = CONFIG_NAME

    method: str = "uniform-magnitude"
    budget: str | Budget = "0.5"
    calibration: str | None = "sotu:train"
    calibration_samples: int = 32
    calibration_seq_len: int = 256
    seed: int = 0
    exporter: str = "auto"
    #: dtype of the exported weights (float32, float16, bfloat16); None keeps the source checkpoint's
    export_dtype: str | None = None
    evaluation: str | None = "sotu:validation"
    evaluation_windows: int = 32
    evaluation_seq_len: int = 256
    method_options: dict = field(default_factory=dict)
    #: evaluate on the calibration text anyway (normally refused: the pruning decisions saw it)
    allow_calibration_overlap: bool = False

    def __post_init__(self):
        if isinstance(self.budget, dict):
            self.budget = Budget.from_dict(self.budget)
        self.budget_spec  # parse now: an invalid budget raises InvalidBudgetError here
        self.calibration = _optional_source(self.calibration)
        self.evaluation = _optional_source(self.evaluation)
        if not isinstance(self.method, str) or not self.method:
            raise AmoebaError(f"method must be a non-empty name, got {self.method!r}",
                              "pass a method name (see `amoeba methods`)")
        for name, low in (("calibration_samples", 1), ("calibration_seq_len", 2), ("evaluation_windows", 1),
                          ("evaluation_seq_len", 2), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise AmoebaError(f"{name} must be an integer >= {low}, got {value!r}",
                                  f"set {name} to an integer of at least {low}")
        if self.export_dtype is not None and self.export_dtype not in ("float32", "float16", "bfloat16"):
            raise AmoebaError(f"export_dtype must be float32, float16 or bfloat16, got {self.export_dtype!r}",
                              "leave it unset to keep the source model's dtype")
        if self.method_options is None:
            self.method_options = {}
        if not isinstance(self.method_options, dict):
            raise AmoebaError(f"method_options must be a dict, got {type(self.method_options).__name__}",
                              "pass options as a mapping of name to value")
        try:
            json.dumps(self.method_options)
        except (TypeError, ValueError) as exc:
            raise AmoebaError(f"method_options are not JSON-serialisable ({exc})",
                              "use plain numbers, strings, lists and dicts as option values") from None

    @property
    def budget_spec(self) -> Budget:
        """The parsed :class:`Budget`."""
        return Budget.parse(self.budget)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["budget"] = _budget_text(self.budget_spec)
        out["method_options"] = json.loads(json.dumps(self.method_options))
        return out

    @classmethod
    def from_dict(cls, data: dict) -> PruningConfig:
        if not isinstance(data, dict):
            raise AmoebaError("a pruning config must be a JSON object", f"write {CONFIG_NAME} as an object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise AmoebaError(f"unknown pruning config key(s): {', '.join(unknown)}",
                              f"use only: {', '.join(sorted(known))}")
        return cls(**data)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``pruning_config.json`` into ``save_directory`` (created if needed); return its path."""
        directory = Path(save_directory)
        if directory.suffix == ".json":
            directory.parent.mkdir(parents=True, exist_ok=True)
            path = directory
        else:
            directory.mkdir(parents=True, exist_ok=True)
            path = directory / CONFIG_NAME
        path.write_text(self.to_json_string())
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> PruningConfig:
        """Read a config from a directory holding ``pruning_config.json``, or from a JSON file."""
        path = Path(path)
        if path.is_dir():
            path = path / CONFIG_NAME
        if not path.is_file():
            raise AmoebaError(f"no pruning config at {path}",
                              f"pass a directory holding {CONFIG_NAME} or the path of a JSON file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise AmoebaError(f"{path} is not valid JSON ({exc})", "fix or regenerate the file") from None
        return cls.from_dict(data)


@dataclass
class PruningOutput:
    """What :meth:`AmoebaPruner.prune` returns."""

    model: Any
    plan: Any
    summary: dict
    config: PruningConfig
    perplexity_before: float | None = None
    perplexity_after: float | None = None
    export_path: Path | None = None
    patch: dict | None = None
    info: dict = field(default_factory=dict)


def get_calibration_dataset(tokenizer, source: str = "sotu:train", num_samples: int = 32, seq_len: int = 256,
                            seed: int = 0):
    """Calibration windows: a LongTensor ``[num_samples, seq_len]`` of token ids from ``source``."""
    if tokenizer is None:
        raise DataError("calibration data needs a tokenizer and none was given",
                        "pass tokenizer= (or load the model by name so its tokenizer comes along)")
    from .data import calibration_windows

    return calibration_windows(tokenizer, source, num_samples, seq_len, seed)


def export_with_config(exporter_name: str, request, destination, overwrite: bool = False,
                       config: PruningConfig | None = None) -> Path:
    """:func:`amoeba_plugin.export.export`, also writing ``pruning_config.json`` before the atomic rename."""
    from .export import export

    return export(exporter_name, request, destination, overwrite,
                  extra=config.save_pretrained if config is not None else None)


class Preflight(NamedTuple):
    """What :func:`preflight` checked: the method, the parsed budget, the run's resolved text and the
    method's typed options (built once; the method's ``resolve_options`` returns this instance)."""

    method: Any
    budget: Budget
    data: RunData
    options: Any = None


def preflight(config: PruningConfig, save_directory=None, overwrite: bool = False, evaluate: bool = False,
              has_tokenizer: bool = True) -> Preflight:
    """Every check of a prune run that needs neither the model nor heavy work; returns a :class:`Preflight`.

    Checks the budget, the method name, the budget kinds and options it accepts, that the calibration and
    evaluation sources resolve (each once: the resolved specs travel on in ``Preflight.data``), the
    exporter name and that the output directory may be written.
    """
    from .plugins import get

    budget = config.budget_spec
    method = get("methods", config.method)
    method.check_budget(budget)
    options = method.build_options(config.method_options)  # names, types and values: a bad option fails here
    needs_data = "calibration" in getattr(method, "capabilities", ())
    if needs_data and config.calibration is None:
        raise DataError(f"method '{method.name}' needs calibration data and calibration is off",
                        "pass a calibration source, e.g. --calibration sotu:train")
    evaluation = config.evaluation if evaluate else None
    if not has_tokenizer and ((config.calibration is not None and needs_data) or evaluation is not None):
        raise DataError("calibration/evaluation text needs a tokenizer and this model has none",
                        "pass tokenizer= to AmoebaPruner.from_pretrained, or turn calibration/evaluation off")
    # a calibration source is resolved even for a method that needs none: a typo should not pass silently
    data = run_data(config, evaluation)
    if needs_data:
        from .data import check_disjoint

        check_disjoint(data.calibration, data.evaluation, config.allow_calibration_overlap)
    if save_directory is not None:
        from .export import check_destination

        get("exporters", config.exporter)
        check_destination(save_directory, overwrite)
    return Preflight(method, budget, data, options)


def run_data(config: PruningConfig, evaluation: str | None = None) -> RunData:
    """The :class:`RunData` of ``config``: its calibration spec and ``evaluation`` resolved once."""
    from .data import TextSpec

    return RunData(calibration=TextSpec.resolve(config.calibration, "calibration"),
                   calibration_samples=config.calibration_samples, calibration_seq_len=config.calibration_seq_len,
                   seed=config.seed, evaluation=TextSpec.resolve(evaluation, "evaluation"),
                   evaluation_windows=config.evaluation_windows, evaluation_seq_len=config.evaluation_seq_len,
                   allow_calibration_overlap=config.allow_calibration_overlap)


class AmoebaPruner:
    """Prunes one model. Build it with :meth:`from_pretrained`."""

    def __init__(self, model, tokenizer=None, anatomy=None, name: str | None = None):
        from .anatomy import anatomy_of

        self.model = model
        self.tokenizer = tokenizer
        self.anatomy = anatomy if anatomy is not None else anatomy_of(model)
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", None) or None

    @classmethod
    def from_pretrained(cls, model_or_path, tokenizer=None, **load_kwargs) -> AmoebaPruner:
        """From a loaded model (pass ``tokenizer=`` too for calibration and evaluation), or from a
        name or path, loaded with :func:`amoeba_plugin.models.load_model`."""
        name = None
        if isinstance(model_or_path, (str, os.PathLike)):
            from .models import load_model

            name = str(model_or_path)
            model, loaded_tokenizer = load_model(name, **load_kwargs)
            tokenizer = tokenizer if tokenizer is not None else loaded_tokenizer
        else:
            model = model_or_path
            if not hasattr(model, "config") or not hasattr(model, "parameters"):
                raise AmoebaError(f"expected a Hugging Face causal LM or a model name/path, got "
                                  f"{type(model).__name__}", "pass a PreTrainedModel, a hub name or a directory")
        return cls(model, tokenizer, name=name)

    # ------------------------------------------------------------------ data
    def get_calibration_dataset(self, source: str = "sotu:train", num_samples: int = 32, seq_len: int = 256,
                                seed: int = 0):
        return get_calibration_dataset(self.tokenizer, source, num_samples, seq_len, seed)

    def perplexity(self, model=None, source: str = "sotu:validation", seq_len: int = 256, max_windows: int = 32):
        if self.tokenizer is None:
            raise DataError("perplexity needs a tokenizer and none was given", "pass tokenizer= to from_pretrained")
        from .eval import perplexity

        return perplexity(model if model is not None else self.model, self.tokenizer, source=source,
                          seq_len=seq_len, max_windows=max_windows)

    # ------------------------------------------------------------------ pruning
    def prune(self, config: PruningConfig | dict | None = None, save_directory: str | os.PathLike | None = None,
              overwrite: bool = False, evaluate: bool = False) -> PruningOutput:
        """Run ``config.method`` under ``config.budget``; slice; optionally export and evaluate."""
        from .methods import PruningContext
        from .pipeline import run_method

        if config is None:
            config = PruningConfig()
        elif isinstance(config, dict):
            config = PruningConfig.from_dict(config)
        method, budget, data, options = preflight(config, save_directory, overwrite, evaluate,
                                                  self.tokenizer is not None)

        windows = data.cut_evaluation_windows(self.tokenizer) if data.evaluation is not None else None
        ppl_before = self._perplexity(self.model, windows, data) if windows is not None else None

        context = PruningContext(model=self.model, tokenizer=self.tokenizer, anatomy=self.anatomy, budget=budget,
                                 options=options, seed=config.seed,
                                 calibration=data.calibration_provider(self.tokenizer))
        run = run_method(method, context, data, config=config)
        sliced = run.slice()
        summary = self._summary(run, budget)

        ppl_after = None
        if windows is not None:
            ppl_after = self._perplexity(sliced, windows, data)
            summary.update(perplexity_before=ppl_before, perplexity_after=ppl_after)

        export_path = None
        if save_directory is not None:
            info = {"method": method.name, "budget": str(budget), "data": data.record(run.calibrated),
                    "seed": config.seed, "source_model": self.name, "pruning_config": config.to_dict(),
                    "summary": summary, **({"method_info": run.info} if run.info else {})}
            if ppl_before is not None:
                info["perplexity"] = {"source": config.evaluation, "before": ppl_before, "after": ppl_after}
            export_path = self._export(run, sliced, info, config, save_directory, overwrite)
        return PruningOutput(model=sliced, plan=run.plan, summary=summary, config=config,
                             perplexity_before=ppl_before, perplexity_after=ppl_after, export_path=export_path,
                             patch=run.patch, info=run.info)

    @staticmethod
    def _perplexity(model, windows, data: RunData) -> float:
        """Perplexity on the run's evaluation windows (cut once, the same before and after)."""
        from .eval import PerplexityEvaluator

        return PerplexityEvaluator().evaluate(model, None, source=str(data.evaluation), windows=windows)["perplexity"]

    @staticmethod
    def _summary(run, budget: Budget) -> dict:
        """The plan's counts and shape, before and after, for ``PruningOutput.summary`` and the export."""
        from .plan import Plan

        plan, anatomy = run.plan, run.anatomy
        summary = plan.summary(anatomy)
        full = Plan.full(anatomy)
        summary.update(method=run.method.name, budget=str(budget), fits_budget=budget.fits(plan, anatomy),
                       parameters_before=full.num_parameters(anatomy),
                       non_embedding_parameters_before=full.num_parameters(anatomy, embeddings=False),
                       shape=plan.shape(anatomy))
        if run.info:
            summary["method_info"] = run.info
        return summary

    def _export(self, run, sliced, info: dict, config: PruningConfig, save_directory, overwrite: bool) -> Path:
        from .export import ExportRequest

        request = ExportRequest(model=run.model, anatomy=run.anatomy, plan=run.plan, tokenizer=self.tokenizer,
                                patch=run.patch, info=info, sliced=sliced, dtype=config.export_dtype)
        return export_with_config(config.exporter, request, save_directory, overwrite, config)


__all__ = [
    "CONFIG_NAME",
    "AmoebaPruner",
    "PruningConfig",
    "PruningOutput",
    "export_with_config",
    "get_calibration_dataset",
    "Preflight",
    "preflight",
    "run_data",
]
