"""The Python API, in Optimum's style::

    from amoeba_plugin import AmoebaPruner, PruningConfig

    pruner = AmoebaPruner.from_pretrained("amoeba-tiny-sotu")
    config = PruningConfig(method="flap", budget="0.5")   # flap is the default method
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
#: the method a run uses when none is named: FLAP, the best training-free method measured here (see
#: benchmarks/README.md, "Which method"); it is in the amoeba-baselines plugin, which setup installs
DEFAULT_METHOD = "flap"


def _budget_text(budget: Budget) -> str | dict:
    """A lossless text form of ``budget`` (``str(budget)`` rounds large counts)."""
    if budget.tolerance:
        return budget.to_dict()
    if budget.kind == "shape":
        return str(budget)
    if budget.kind == "count":
        return f"count={int(budget.value)}"
    return f"{budget.kind}={budget.value!r}"


def _optional_source(value: str | None, name: str = "source") -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise AmoebaError(f"{name} must be a text source name, got {value!r}",
                          f"pass {name} as a string such as 'sotu:train' or 'file:PATH', or None for off")
    value = value.strip()
    return None if value.lower() in ("", "none", "null", "off") else value


@dataclass
class PruningConfig:
    """What to prune and how. Serialises to ``pruning_config.json``.

    ``budget`` is a string such as ``"0.5"``, ``"nonembed=0.6"``, ``"macs=0.5"``, ``"count=3e6"``
    or ``"shape=layers:6,heads:4"``, or a :class:`~amoeba_plugin.budget.Budget`. ``calibration`` and
    ``evaluation`` name text sources (``"sotu:train"``, a file path, ...) or are None.
    """

    CONFIG_NAME: ClassVar[str] = CONFIG_NAME

    #: the best training-free method by measurement (benchmarks/results/compare_*: lowest held-out
    #: perplexity at 5 of the 6 model x budget points); from the amoeba-baselines plugin
    method: str = DEFAULT_METHOD
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
    #: heal the sliced model before export: a :class:`~amoeba_plugin.recovery.RecoveryConfig`, a dict of
    #: its options or ``"tokens=N,loss=lm"`` text; the teacher is the source model. None: no recovery
    recovery: Any = None

    def __post_init__(self):
        if isinstance(self.budget, dict):
            self.budget = Budget.from_dict(self.budget)
        self.budget_spec  # parse now: an invalid budget raises InvalidBudgetError here
        self.calibration = _optional_source(self.calibration, "calibration")
        self.evaluation = _optional_source(self.evaluation, "evaluation")
        if not isinstance(self.method, str) or not self.method:
            raise AmoebaError(f"method must be a non-empty name, got {self.method!r}",
                              "pass a method name (see `amoeba methods`)")
        if not isinstance(self.exporter, str) or not self.exporter:
            raise AmoebaError(f"exporter must be a non-empty name, got {self.exporter!r}",
                              "pass an exporter name, or 'auto'")
        if not isinstance(self.allow_calibration_overlap, bool):
            raise AmoebaError(f"allow_calibration_overlap must be true or false, got {self.allow_calibration_overlap!r}",
                              "pass True or False")
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
        if self.recovery is not None:
            from .recovery.config import coerce

            self.recovery = coerce(self.recovery)

    @property
    def budget_spec(self) -> Budget:
        """The parsed :class:`Budget`."""
        return Budget.parse(self.budget)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["budget"] = _budget_text(self.budget_spec)
        out["method_options"] = json.loads(json.dumps(self.method_options))
        out["recovery"] = self.recovery.to_dict() if self.recovery is not None else None
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
        from .statefiles import read_json

        return cls.from_dict(read_json(path, "pruning config", "fix or regenerate the file", expect=None))


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
    #: the :class:`~amoeba_plugin.recovery.RecoveryResult` when the config asked for recovery
    recovery: Any = None


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
    check_run = getattr(method, "check_run", None)
    if check_run is not None:  # e.g. a checkpoint to resume made with other settings: before the model loads
        check_run(budget, options, config.seed)
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
    if config.recovery is not None:
        _check_recovery(config, data, has_tokenizer)
    if save_directory is not None:
        from .export import check_destination

        get("exporters", config.exporter)
        check_destination(save_directory, overwrite)
    return Preflight(method, budget, data, options)


#: exporters that write the sliced model they are handed (so a healed model survives the export)
RECOVERY_EXPORTERS = {"auto": "auto", "hf": "stock", "amoeba": "amoeba"}


def _check_recovery(config: PruningConfig, data: RunData, has_tokenizer: bool) -> None:
    """A run with ``recovery``: a tokenizer, a model exporter, and evaluation text it does not train on."""
    from .recovery.loop import check_text
    from .recovery.mixture import check_heldout

    if not has_tokenizer:
        raise DataError("recovery trains on text and this model has no tokenizer",
                        "pass tokenizer= to AmoebaPruner.from_pretrained, or drop recovery")
    if config.exporter not in RECOVERY_EXPORTERS:
        raise AmoebaError(f"the '{config.exporter}' exporter rebuilds the model from the source and the plan, so "
                          "the recovered weights would not be written",
                          f"use --exporter {', '.join(RECOVERY_EXPORTERS)} with --recover, or run `amoeba recover` "
                          "on the export afterwards")
    training, _ = check_text(config.recovery)
    if data.evaluation is not None and not config.allow_calibration_overlap:
        check_heldout(training, data.evaluation)


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
        from .pipeline import inherit_texts, run_method

        if config is None:
            config = PruningConfig()
        elif isinstance(config, dict):
            config = PruningConfig.from_dict(config)
        method, budget, data, options = preflight(config, save_directory, overwrite, evaluate,
                                                  self.tokenizer is not None)
        if data.evaluation is not None:  # a source model that was itself trained or calibrated on it
            from .data import check_unseen
            from .pipeline import recorded_texts

            check_unseen(recorded_texts(export=self.name) if self.name else [], data.evaluation,
                         config.allow_calibration_overlap)

        windows = data.cut_evaluation_windows(self.tokenizer) if data.evaluation is not None else None
        ppl_before = self._perplexity(self.model, windows, data) if windows is not None else None

        context = PruningContext(model=self.model, tokenizer=self.tokenizer, anatomy=self.anatomy, budget=budget,
                                 options=options, seed=config.seed,
                                 calibration=data.calibration_provider(self.tokenizer))
        run = run_method(method, context, data, config=config)
        inherit_texts(run.plan.provenance, self.name)  # what the source model saw travels on
        prefer = RECOVERY_EXPORTERS.get(config.exporter, "auto") if config.recovery is not None else "auto"
        sliced = run.slice() if prefer == "auto" else self._slice_as(run, prefer)
        summary = self._summary(run, budget)

        ppl_after = recovery = record = None
        if config.recovery is not None:
            from .recovery import recover

            if windows is not None:
                summary["perplexity_pruned"] = self._perplexity(sliced, windows, data)
            recovery = recover(sliced, self.model, self.tokenizer, config.recovery)
            sliced = recovery.model
            record = recovery.record(teacher=self.name)
            summary["recovery"] = record
        if windows is not None:
            ppl_after = self._perplexity(sliced, windows, data)
            summary.update(perplexity_before=ppl_before, perplexity_after=ppl_after)

        export_path = None
        if save_directory is not None:
            recorded = dict(run.plan.provenance.get("data") or data.record(run.calibrated))
            info = {"method": method.name, "budget": str(budget), "data": recorded,
                    "seed": config.seed, "source_model": self.name, "pruning_config": config.to_dict(),
                    "summary": summary, **({"method_info": run.info} if run.info else {})}
            if ppl_before is not None:
                info["perplexity"] = {"source": config.evaluation, "before": ppl_before, "after": ppl_after}
            if record is not None:
                from .recovery.saving import add_recovery

                info = add_recovery(info, record)
            export_path = self._export(run, sliced, info, config, save_directory, overwrite)
        return PruningOutput(model=sliced, plan=run.plan, summary=summary, config=config,
                             perplexity_before=ppl_before, perplexity_after=ppl_after, export_path=export_path,
                             patch=run.patch, info=run.info, recovery=recovery)

    @staticmethod
    def _slice_as(run, prefer: str):
        """The sliced model in the architecture the exporter writes (``stock`` or ``amoeba``), so the
        model recovery trains is the one exported."""
        from .surgery import slice_model

        return slice_model(run.model, run.anatomy, run.plan, patch=run.patch, prefer=prefer)

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
    "RECOVERY_EXPORTERS",
    "preflight",
    "run_data",
]
