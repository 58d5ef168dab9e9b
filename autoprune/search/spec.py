"""Study files: what a search prunes, on which task, how, and within which budget.

A study is a YAML file read with ``yaml.safe_load`` and validated here. Every error names
the file, the key and what is allowed. Strings may use ``${VAR}`` or ``${VAR:-default}``
(environment variables); relative paths are resolved against the study file's folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from autoprune.engine.importance import Method
from autoprune.engine.measure import SizeUnit
from autoprune.errors import AutopruneError
from autoprune.search.controllers import ControllerName, validate_options
from autoprune.sections import Section
from autoprune.tasks import TaskKind, TaskSettings
from autoprune.tasks.base import TeacherMode
from autoprune.tasks.data import DataSpec

BackendName = Literal["local", "ray"]
CLASSIFIER_DATA = ("label", "labels", "metric", "seed", "search_min_words")
"""The ``data:`` keys only a classification task reads."""
Fitness = Literal["kl", "hidden", "loss", "fisher", "metric"]
"""What a screened candidate is scored by; lower is better for every kind
(:mod:`autoprune.run.screen` says how each is measured)."""
Choice = Literal["best", "significant"]
"""How a targeted search picks its model among a target's retrained finalists
(:func:`autoprune.reports.compare.choose`): the best search metric, or the space's
heuristic unless another finalist beats it significantly on the search split."""


class StudyError(AutopruneError, ValueError):
    """A study (or search space) file that cannot be used; the message names file and key."""


class ModelSpec(Section):
    source: str = Field(description="a directory, a hub id, or package:NAME")
    num_labels: int | None = Field(default=None, ge=2, description="default: the task's labels")


class FinetuneSpec(Section):
    """Dense fine-tuning, done once per run and cached (0 steps: the model is fine-tuned)."""

    steps: int = Field(default=300, ge=0)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=1e-4, gt=0)
    samples: int | None = Field(default=None, ge=1, description="pool examples to use")
    seed: int = 0


class ImportanceSpec(Section):
    method: Method = "fisher"
    samples: int = Field(default=512, ge=1, description="pool examples to score on")
    batch_size: int = Field(default=32, ge=1)


class ControllerSpec(Section):
    """The controller, its seed and its own options (validated by the controller registry)."""

    name: ControllerName = "tpe"
    seed: int = 0
    options: dict[str, Any] = Field(default={}, description="settings of the named controller")

    @model_validator(mode="after")
    def _known_options(self) -> ControllerSpec:
        validate_options(self.name, self.options)
        return self


class ObjectivesSpec(Section):
    """The task's metric goes its own way (up for accuracy, down for perplexity); ``size`` (a
    ratio to the dense model) is minimized."""

    size: SizeUnit = "prunable"
    reference: float | None = Field(
        default=None,
        gt=1,
        description="a language model's perplexity cap, where its hypervolume counts from "
        "(a classifier's is its chance level)",
    )
    min_size: float | None = Field(default=None, ge=0, le=1)
    max_size: float | None = Field(default=None, gt=0, le=1)
    targets: list[float] = Field(
        default=[],
        description="sizes to search at exactly (a targeted search); empty: free size",
    )

    @model_validator(mode="after")
    def _band(self) -> ObjectivesSpec:
        low, high = self.min_size, self.max_size
        if low is not None and high is not None and low >= high:
            raise ValueError(f"min_size ({low}) must be below max_size ({high})")
        bad = [t for t in self.targets if not 0 < t < 1]
        if bad or len(set(self.targets)) != len(self.targets):
            raise ValueError(f"targets must be distinct sizes in (0, 1), got {self.targets}")
        if self.targets and (low is not None or high is not None):
            raise ValueError("give targets or a size band (min_size/max_size), not both")
        return self


class ScreeningSpec(Section):
    """A targeted search's retrain-free stage: many candidates per target, scored against
    the dense model; the best few distinct ones (and the baselines' allocations) are then
    retrained with ``retrain`` and judged on the search split."""

    fitness: Fitness = Field(
        default="metric",
        description="kl, hidden, loss, fisher (heads and neurons only) or metric (the "
        "search-split metric before retraining); "
        "in benchmarks/fidelity.py fisher ranked MiniLM allocations best, kl with "
        "recovery_examples next, then metric; pilot searches with either did not beat metric",
    )
    candidates: int = Field(default=200, ge=1, description="candidates screened per target")
    offspring: int = Field(default=16, ge=1, description="candidates per generation")
    schedule: list[tuple[int, int]] = Field(
        default=[(32, 4), (128, 1)],
        description="multi-step selection: (calibration examples, survivors) per step",
    )
    recovery_examples: int = Field(
        default=0, ge=0, description="pool examples a least-squares refit uses (0: none)"
    )
    finalists: int = Field(default=2, ge=1, description="distinct candidates retrained per target")
    choice: Choice = Field(
        default="significant",
        description="the model at a target: the finalist with the best search metric (best), "
        "or the space's heuristic (global, owl, block-influence) unless a finalist beats it "
        "on the search split with a paired bootstrap interval clear of zero (significant)",
    )


class BudgetSpec(Section):
    trials: int | None = Field(default=20, ge=1)
    wall_time: float | None = Field(default=None, gt=0, description="seconds for this invocation")

    @model_validator(mode="after")
    def _some_budget(self) -> BudgetSpec:
        if self.trials is None and self.wall_time is None:
            raise ValueError("give trials, wall_time or both")
        return self


class RetrainSpec(Section):
    """Brief retraining of every pruned model, distilled from the dense model (0 steps: none)."""

    steps: int = Field(default=100, ge=0)
    batch_size: int = Field(default=32, ge=1)
    lr: float = Field(default=5e-5, gt=0)
    temperature: float = Field(default=2.0, gt=0)
    distill_weight: float = Field(default=0.5, ge=0, le=1)
    samples: int | None = Field(default=None, ge=1, description="pool examples to use")
    recovery_examples: int = Field(
        default=0,
        ge=0,
        description="retraining examples the kept heads and neurons are refit on by least "
        "squares before retraining starts (Kwon et al. 2022; 0: none)",
    )
    seed: int = 0
    teacher: TeacherMode | None = Field(
        default=None,
        description="a language model's teacher: cached (its targets computed once per run, "
        "the default) or online (the dense model runs beside the student in every step)",
    )
    top_k: int | None = Field(
        default=None,
        ge=1,
        description="a language model's teacher targets: its k most likely tokens per "
        "position (default 32), what distillation and screening read; exact at the vocabulary",
    )


class EarlyStoppingSpec(Section):
    """Multi-objective successive halving during retraining (off while ``rungs`` is empty)."""

    rungs: list[int] = Field(default=[], description="retraining steps where trials compare")
    keep: float = Field(default=0.5, gt=0, lt=1, description="fraction continuing at a rung")
    min_trials: int = Field(default=4, ge=1, description="trials at a rung before it decides")

    @model_validator(mode="after")
    def _increasing(self) -> EarlyStoppingSpec:
        if any(r <= 0 for r in self.rungs) or sorted(set(self.rungs)) != self.rungs:
            raise ValueError(f"rungs must be increasing positive steps, got {self.rungs}")
        return self


class BaselineSpec(Section):
    """Uniform pruning (one ratio for heads and feed-forward in every layer), run with the study."""

    ratios: list[float] = Field(default=[0.25, 0.5, 0.75])

    @model_validator(mode="after")
    def _in_unit_interval(self) -> BaselineSpec:
        bad = [r for r in self.ratios if not 0.0 <= r <= 1.0]
        if bad:
            raise ValueError(f"ratios must be in [0, 1], got {bad}")
        return self


class BackendSpec(Section):
    """Where trials run: ``local`` (this process) or ``ray`` (Ray Tune, local or a cluster)."""

    name: BackendName = "local"
    address: str | None = Field(default=None, description="Ray cluster address (ray backend)")
    cpus_per_trial: float | None = Field(
        default=None,
        gt=0,
        description="CPUs (and torch threads) per trial; default: all (local), 1 (ray)",
    )
    gpus_per_trial: float = Field(default=0, ge=0)
    concurrent_trials: int = Field(default=1, ge=1)
    max_retries: int = Field(default=1, ge=0, description="retries of a trial whose worker died")
    storage_path: str | None = Field(
        default=None,
        description="where Ray Tune keeps trial results and checkpoints (default: RUN/ray); "
        "on a multi-node cluster, storage every node reaches (an NFS path, s3://...)",
    )

    @model_validator(mode="after")
    def _ray_settings_need_ray(self) -> BackendSpec:
        if self.name == "local":
            for key in ("address", "storage_path"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is a Ray setting; set name: ray to use it")
            if self.concurrent_trials > 1 or self.gpus_per_trial > 0:
                raise ValueError(
                    "concurrent_trials and gpus_per_trial are Ray settings; set name: ray "
                    "(the local backend runs one trial at a time on the study's device)"
                )
        return self


class StudySpec(Section):
    """A whole study file."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    task: TaskKind = Field(default="classification", description="what the model is for")
    model: ModelSpec
    data: DataSpec
    max_length: int = Field(default=128, ge=8, description="tokens per example")
    finetune: FinetuneSpec = FinetuneSpec()
    importance: ImportanceSpec = ImportanceSpec()
    search_space: Path
    controller: ControllerSpec = ControllerSpec()
    objectives: ObjectivesSpec = ObjectivesSpec()
    budget: BudgetSpec = BudgetSpec()
    retrain: RetrainSpec = RetrainSpec()
    early_stopping: EarlyStoppingSpec = EarlyStoppingSpec()
    screening: ScreeningSpec = ScreeningSpec()
    baseline: BaselineSpec = BaselineSpec()
    backend: BackendSpec = BackendSpec()
    device: Literal["auto", "cpu", "cuda"] = "auto"
    storage: str | None = Field(default=None, description="Optuna storage URL (default: SQLite)")

    @model_validator(mode="after")
    def _rungs_within_retraining(self) -> StudySpec:
        late = [r for r in self.early_stopping.rungs if r >= self.retrain.steps]
        if late:
            raise ValueError(
                f"early_stopping.rungs {late} must be below retrain.steps ({self.retrain.steps})"
            )
        return self

    @model_validator(mode="after")
    def _settings_of_the_task(self) -> StudySpec:
        """Settings that only the other kind of task reads are refused, not ignored."""
        if self.task == "classification":
            unread = [
                key
                for key, value in (
                    ("objectives.reference", self.objectives.reference),
                    ("retrain.teacher", self.retrain.teacher),
                    ("retrain.top_k", self.retrain.top_k),
                )
                if value is not None
            ]
            if unread:
                raise ValueError(f"{', '.join(unread)}: settings of a language_modeling task")
            if self.data.text is None:
                raise ValueError("data.text: name the column (or pair of columns) of the text")
            return self
        defaults = DataSpec.model_fields
        unread = [
            f"data.{k}" for k in CLASSIFIER_DATA if getattr(self.data, k) != defaults[k].default
        ]
        if self.model.num_labels is not None:
            unread.append("model.num_labels")
        if unread:
            raise ValueError(f"{', '.join(unread)}: settings of a classification task")
        if self.objectives.reference is None:
            raise ValueError(
                "objectives.reference: a language model's hypervolume counts from a stated "
                "perplexity cap; give one (e.g. 200)"
            )
        return self

    def task_settings(self) -> TaskSettings:
        """What the study says about its task besides its data."""
        return TaskSettings(
            metric=self.data.metric,
            num_labels=self.model.num_labels,
            reference=self.objectives.reference,
            teacher=self.retrain.teacher,
            top_k=self.retrain.top_k,
        )

    def prepared_fingerprint(self) -> dict[str, Any]:
        """The parts of the study that decide the prepared work (cached once per run)."""
        dumped = self.model_dump(mode="json")
        sections = ("task", "model", "data", "max_length", "finetune", "importance")
        return {
            **{k: dumped[k] for k in sections},
            # the teacher's targets cover these examples, with these tokens
            "retrain": {"samples": self.retrain.samples, "top_k": self.retrain.top_k},
        }


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(value: Any, where: str, source: str) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a YAML structure."""
    if isinstance(value, dict):
        return {
            k: _expand(v, f"{where}.{k}" if where else str(k), source) for k, v in value.items()
        }
    if isinstance(value, list):
        return [_expand(v, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise StudyError(
                f"{source}: key '{where}' uses ${{{name}}}, which is not set "
                f"(set it, or write ${{{name}:-default}})"
            )
        return default

    return _VARIABLE.sub(replace, value)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (the parent of an unknown key) in ``model``."""
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def format_validation_error(error: ValidationError, model: type[BaseModel], source: str) -> str:
    """One line per problem: the file, the dotted key, what is wrong and what is allowed."""
    lines = []
    for problem in error.errors():
        loc = tuple(problem["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        if problem["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(model, loc[:-1]))
            lines.append(f"{source}: unknown key '{key}' (allowed here: {allowed})")
        elif problem["type"] == "missing":
            lines.append(f"{source}: missing key '{key}'")
        else:
            got = problem.get("input")
            got_text = f" (got {got!r})" if not isinstance(got, dict) else ""
            lines.append(f"{source}: key '{key}': {problem['msg']}{got_text}")
    return "\n".join(lines)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps
    the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            try:
                duplicate = key in seen
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice (keep one)",
                    key_node.start_mark,
                )
            seen.add(key)
        mapping: dict[Any, Any] = super().construct_mapping(node, deep)
        return mapping


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """The mapping in a YAML file, with environment variables expanded.

    Read safely (no Python objects are built); a key given twice is an error.
    """
    if not path.is_file():
        raise StudyError(f"{what} not found: {path}")
    try:
        with path.open() as stream:  # the stream's name puts the file in YAML's messages
            data = yaml.load(stream, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as error:
        raise StudyError(f"{path}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise StudyError(f"{path}: expected a mapping of keys at the top level")
    expanded: dict[str, Any] = _expand(data, "", str(path))
    return expanded


def _resolve(path: Path | None, base: Path) -> Path | None:
    if path is None:
        return None
    path = path.expanduser()
    return path if path.is_absolute() else (base / path).resolve()


def load_study(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read, expand and validate a study file; ``overrides`` are dotted keys set on top.

    Relative paths in the file (data files, the search space, a model directory) are made
    absolute against the file's folder, so the resolved study can be saved anywhere.
    """
    path = Path(path)
    data = read_yaml(path, "study file")
    for dotted, value in (overrides or {}).items():
        section = data
        *parents, last = dotted.split(".")
        for part in parents:
            if not isinstance(section.get(part), dict):
                section[part] = {}  # absent or null in the file: the override creates it
            section = section[part]
        section[last] = value
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as error:
        raise StudyError(format_validation_error(error, StudySpec, str(path))) from None
    base = path.resolve().parent
    spec.search_space = _resolve(spec.search_space, base) or spec.search_space
    spec.data.train = _resolve(spec.data.train, base)
    spec.data.test = _resolve(spec.data.test, base)
    source = Path(spec.model.source).expanduser()
    if spec.model.source.startswith((".", "~")) or (base / source).is_dir():
        spec.model.source = str(_resolve(source, base))
    return spec


def save_study(spec: StudySpec, path: Path) -> None:
    """Write the resolved study (absolute paths) so the run can be resumed from its directory."""
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
