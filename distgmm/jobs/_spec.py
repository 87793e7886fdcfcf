"""Job files: a TOML list of generate / ingest / fit / label / select / predict / plot / export steps, validated strictly, then run.

The schema is declarative: one pydantic model per step kind (:data:`STEP_MODELS`), whose
fields are the command's options with ``_`` for ``-`` (adding a key is one line there),
strict (no key the model does not name, no string where a number is expected), and
:func:`job_schema` (``distgmm run --schema``) is its JSON Schema, for editors and CI.
``tests/test_jobs.py`` checks that every step kind has exactly the options of its command.
Every step also takes ``storage_options``, a table of fsspec options for its URLs.

Layout (every key is checked; anything unknown is an error naming the allowed keys)::

    [job]                       # optional
    description = "text"

    [vars]                      # optional: text substituted for ${name} in step values
    work = "out"

    [[step]]                    # one table per step, run in order
    run = "ingest"              # generate | ingest | fit | label | select | predict | plot | export
    source = "${work}/batch.txt"
    store = "${work}/points.zarr"
    append = true

Step keys are the command's options with ``_`` for ``-`` (``covariance_type``, ``max_iter``,
``align_to``...), see :data:`STEP_KEYS`. Rules:

* ``${name}`` is replaced in string values by the variable's value. A variable is set in
  ``[vars]``, overridden by the environment variable ``DISTGMM_VAR_<name>``, overridden by
  ``--set name=value``; only declared variables can be set, and an undefined reference is an
  error. A numeric or boolean key may be given as exactly ``"${name}"`` (then parsed).
* Relative paths (the keys typed :data:`JobPath`: ``source``, ``store``, ``model``, ``out``,
  ``file``, ``checkpoint``, ``align_to``) are resolved
  against the directory of the job file, after substitution; URLs and absolute paths are
  used as they are.
* Paths are confined: after resolution (``..`` included; compared as written, so symbolic
  links inside are followed like directories) every path must lie in the job file's
  directory or in a path the operator gave on the command line or in the environment (the
  value of a variable set with ``--set`` or ``DISTGMM_VAR_<name>``, e.g. ``--set
  work=/data/gmm``); URLs only under such a value. Anything else is refused before any step
  runs, unless ``allow_outside`` (``--allow-outside``): a job file from elsewhere cannot
  read ``/etc/...``, write ``../../x.zarr`` or replace a file outside its directory.
* A job file is data: there is no step that runs a command or Python code.
* Rerunnable: a step whose output is already there and complete is skipped (and reported
  as skipped, with the reason), so a job that failed at step 3 can simply be run again:

  - ``generate`` (without ``overwrite``): the store exists, is complete and was generated
    with the step's sizes, dtype, chunking, preset and (if given) seed;
  - ``ingest`` (without ``overwrite``): the store exists, is complete and was ingested from
    this very file (same path and SHA-256);
  - ``ingest`` with ``append``: the store's row log records an append (or the ingest) of a
    file with this SHA-256: its rows are in the store already;
  - ``fit`` / ``select`` (without ``overwrite``): the model file exists, is a distgmm model
    and was fitted on this store, at its current row count, with the step's settings;
  - ``label`` is incremental by itself (chunks already labelled by the model are skipped);
  - ``predict`` and ``plot`` write their output again (it is cheap); ``export`` replaces an
    earlier export only with ``overwrite = true`` (set it in scheduled jobs).

  An existing output that does not match is an error, as on the command line.
* Drift (label steps with ``scores = true``): ``fail_on_drift = true`` ends the job after
  that step when it reports drift (``distgmm run`` then exits 3, as ``label
  --fail-on-drift`` does); ``stop_unless_drift = true`` ends it successfully after that
  step when it reports *no* drift, the later steps reported as skipped: a refit that runs
  only when it is needed. A label run that labels nothing repeats the last report of the
  label set (:mod:`distgmm.jobs._label`), so a job killed during its refit refits when run
  again.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from distgmm.errors import DistgmmInputError

__all__ = ["STEP_KEYS", "STEP_MODELS", "JobFile", "job_schema", "JobStep", "Job", "JobHooks",
           "SkippedStep", "load_job", "run_job", "parse_sets", "step_done"]

# ---------------------------------------------------------------------------- the schema
#: A value that is a path or URL: resolved against the job's directory and confined.
JobPath = Annotated[str, Field(min_length=1, json_schema_extra={"format": "path"})]
#: Component counts of a select step: "1..12", "2,4,8", an integer or a list of integers.
ComponentRange = str | int | list[int]
#: fsspec options for the step's URLs (stores, sources, model files), e.g. credentials and
#: ``client_kwargs = {endpoint_url = "http://..."}``.
StorageOptions = dict[str, Any]


class _Step(BaseModel):
    """Keys every step takes. Steps are strict: unknown keys and wrong types are errors."""

    model_config = ConfigDict(extra="forbid", strict=True)

    storage_options: StorageOptions | None = None


class _FitSettings(_Step):
    """EM settings shared by fit and select steps (the command-line options of the same name)."""

    tol: float | None = None
    max_iter: int | None = None
    n_init: int | None = None
    init: Literal["kmeans", "k-means||", "k-means++", "random", "random_from_data"] | None = None
    reg_covar: float | None = None
    seed: int | None = None
    overwrite: bool | None = None
    variable: str | None = None
    outlier_quantile: float | None = None


class GenerateStep(_Step):
    """``distgmm generate``."""

    run: Literal["generate"]
    store: JobPath
    preset: str | None = None
    points: int | None = None
    features: int | None = None
    components: int | None = None
    seed: int | None = None
    dtype: Literal["float32", "float64"] | None = None
    chunk_rows: int | None = None
    overwrite: bool | None = None


class IngestStep(_Step):
    """``distgmm ingest``."""

    run: Literal["ingest"]
    source: JobPath
    store: JobPath
    format: Literal["text", "csv", "npy", "parquet", "zarr"] | None = None
    columns: str | None = None
    header: bool | None = None
    dtype: Literal["float32", "float64"] | None = None
    chunk_rows: int | None = None
    append: bool | None = None
    overwrite: bool | None = None
    drop_nonfinite: bool | None = None
    id_column: str | None = None


class FitStep(_FitSettings):
    """``distgmm fit``."""

    run: Literal["fit"]
    store: JobPath
    model: JobPath
    components: int
    covariance_type: Literal["full", "tied", "diag", "spherical"] | None = None
    weights: bool | None = None
    checkpoint: JobPath | None = None
    resume: bool | None = None
    align_to: JobPath | None = None
    plot: bool | None = None
    bayesian: bool | None = None
    prior: Literal["dirichlet_process", "dirichlet_distribution"] | None = None
    weight_concentration: float | None = None


class LabelStep(_Step):
    """``distgmm label``."""

    run: Literal["label"]
    model: JobPath
    store: JobPath
    name: str | None = None
    proba: bool | None = None
    replace: bool | None = None
    scores: bool | None = None
    drift_threshold: float | None = None
    fail_on_drift: bool | None = None
    stop_unless_drift: bool | None = None


class SelectStep(_FitSettings):
    """``distgmm select``."""

    run: Literal["select"]
    store: JobPath
    model: JobPath
    components: ComponentRange | None = None
    covariance_type: str | list[str] | None = None
    criterion: Literal["bic", "aic"] | None = None
    plot: bool | None = None


class PredictStep(_Step):
    """``distgmm predict`` (``out`` is required in a job: there is no terminal)."""

    run: Literal["predict"]
    model: JobPath
    file: JobPath
    out: JobPath
    proba: bool | None = None
    format: Literal["text", "csv", "npy", "parquet", "zarr"] | None = None
    columns: str | None = None
    header: bool | None = None
    id_column: str | None = None


class PlotStep(_Step):
    """``distgmm plot``."""

    run: Literal["plot"]
    model: JobPath
    store: JobPath
    out: JobPath
    labels: str | None = None
    features: str | None = None
    projection: Literal["auto", "pca", "features", "pairs"] | None = None
    density: Literal["auto", "on", "off"] | None = None
    width: int | None = None
    height: int | None = None
    variable: str | None = None
    scores: str | None = None
    drift_threshold: float | None = None


class ExportStep(_Step):
    """``distgmm export``."""

    run: Literal["export"]
    store: JobPath
    out: JobPath
    name: str
    proba: bool | None = None
    format: Literal["parquet", "csv"] | None = None
    overwrite: bool | None = None


#: The step models by kind, in the order the CLI lists its commands.
STEP_MODELS: dict[str, type[_Step]] = {
    "generate": GenerateStep, "ingest": IngestStep, "fit": FitStep, "label": LabelStep,
    "select": SelectStep, "predict": PredictStep, "plot": PlotStep, "export": ExportStep,
}
#: Allowed keys of each step kind (``run`` is the kind itself).
STEP_KEYS: dict[str, tuple[str, ...]] = {
    kind: tuple(k for k in model.model_fields if k != "run") for kind, model in STEP_MODELS.items()}


class JobInfo(BaseModel):
    """The optional ``[job]`` table."""

    model_config = ConfigDict(extra="forbid", strict=True)

    description: str = ""


class JobFile(BaseModel):
    """A job file: ``[job]``, ``[vars]`` (text substituted for ``${name}``) and
    ``[[step]]`` tables run in order."""

    model_config = ConfigDict(extra="forbid", strict=True,
                              json_schema_extra={"title": "distgmm job file"})

    job: JobInfo = JobInfo()
    vars: dict[str, str | int | float] = {}
    step: list[Annotated[Union[tuple(STEP_MODELS.values())], Field(discriminator="run")]] = \
        Field(min_length=1)


def job_schema() -> dict[str, Any]:
    """The JSON Schema of job files (``distgmm run --schema``)."""
    return JobFile.model_json_schema()


def _path_keys(model: type[BaseModel]) -> frozenset[str]:
    """The keys of a step model that hold paths (:data:`JobPath`, optional or not)."""
    def is_path(prop: dict) -> bool:
        return prop.get("format") == "path" or any(is_path(p) for p in prop.get("anyOf", []))

    properties = model.model_json_schema()["properties"]
    return frozenset(name for name, prop in properties.items() if is_path(prop))


_TOP = ("job", "vars", "step")
_JOB_KEYS = ("description",)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ENV_PREFIX = "DISTGMM_VAR_"


@dataclass(frozen=True)
class JobStep:
    """One validated step: its kind, 1-based position and resolved options."""

    index: int
    kind: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Job:
    """A validated job file."""

    path: str
    description: str
    variables: dict[str, str]
    steps: list[JobStep]


@dataclass
class JobHooks:
    """Callbacks a runner (the CLI) passes to :func:`run_job` to show progress."""

    step_started: Callable[[JobStep], None] | None = None
    step_finished: Callable[[JobStep, Any], None] | None = None
    on_iteration: Callable[[Any], None] | None = None
    on_label_progress: Callable[[int, int], None] | None = None
    on_candidate: Callable[[dict[str, Any]], None] | None = None
    on_pass: Callable[[Any], None] | None = None


def parse_sets(pairs: list[str] | None) -> dict[str, str]:
    """``["name=value", ...]`` -> dict; a pair without ``=`` is an error."""
    out: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not _VAR_NAME.match(key):
            raise DistgmmInputError(f"--set {pair!r} is not NAME=VALUE; write e.g. "
                                    "--set work=/tmp/out.")
        out[key] = value
    return out


def _type_name(value: Any) -> str:
    return {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)


class _Resolver:
    def __init__(self, path: str, variables: dict[str, str], operator_values: list[str],
                 allow_outside: bool):
        self.path = path
        self.base = os.path.dirname(os.path.abspath(path))
        self.variables = variables
        self.allow_outside = allow_outside
        self.roots = [self.base] + [self._resolve(v) for v in operator_values if v]

    def where(self, step: int, kind: str, key: str) -> str:
        return f"{self.path}: step {step} ({kind}), key {key!r}"

    def text(self, value: str, where: str) -> str:
        def substitute(match: re.Match) -> str:
            name = match.group(1)
            if name not in self.variables:
                known = ", ".join(sorted(self.variables)) or "none"
                raise DistgmmInputError(f"{where}: undefined variable ${{{name}}}; declare it "
                                        f"in [vars] (declared: {known}).")
            return self.variables[name]

        return _VAR.sub(substitute, value)

    def _resolve(self, value: str) -> str:
        value = os.path.expanduser(value)
        if "://" in value:
            return value
        return os.path.normpath(os.path.join(self.base, value))

    def _inside(self, path: str) -> bool:
        for root in self.roots:
            if "://" in root or "://" in path:
                if path == root or path.startswith(root.rstrip("/") + "/"):
                    return True
            elif os.path.commonpath([root, path]) == root:
                return True
        return False

    def path_value(self, value: str, where: str) -> str:
        path = self._resolve(value)
        if not self.allow_outside and not self._inside(path):
            raise DistgmmInputError(
                f"{where}: {path} is outside the job's directory {self.base}; job files may "
                "only use paths inside it, or inside a path given with --set NAME=PATH (or "
                f"{ENV_PREFIX}NAME). Move the file, pass its location with --set, or run "
                "with --allow-outside if you trust this job file.")
        return path

    def substituted(self, value: Any, where: str) -> Any:
        """``value`` with ``${name}`` replaced in its strings (also inside lists and tables)."""
        if isinstance(value, str):
            return self.text(value, where)
        if isinstance(value, list):
            return [self.substituted(v, where) for v in value]
        if isinstance(value, dict):
            return {k: self.substituted(v, where) for k, v in value.items()}
        return value

    def step(self, index: int, raw: dict[str, Any]) -> JobStep:
        """Validate one ``[[step]]`` table against its model; resolve and confine its paths."""
        kind = raw.get("run")
        if kind not in STEP_MODELS:
            raise DistgmmInputError(f"{self.path}: step {index}: unknown step {kind!r} (key "
                                    f"'run'); allowed: {', '.join(STEP_MODELS)}.")
        model = STEP_MODELS[kind]
        allowed = STEP_KEYS[kind]
        values: dict[str, Any] = {"run": kind}
        for key, value in raw.items():
            if key == "run":
                continue
            if key not in allowed:
                raise DistgmmInputError(
                    f"{self.path}: step {index} ({kind}): unknown key {key!r}; allowed: "
                    f"{', '.join(sorted(allowed))}.")
            where = self.where(index, kind, key)
            whole_variable = isinstance(value, str) and _VAR.fullmatch(value)
            value = self.substituted(value, where)
            if whole_variable:  # "${k}" where a number or boolean is expected: parse it
                value = _parsed(model, key, value)
            values[key] = value
        try:
            validated = model.model_validate(values)
        except ValidationError as exc:
            raise _step_error(self.path, index, kind, values, exc) from None
        options = {k: v for k, v in validated.model_dump(exclude_unset=True).items()
                   if k != "run"}
        for key in _path_keys(model) & set(options):
            options[key] = self.path_value(options[key], self.where(index, kind, key))
        return JobStep(index, kind, options)


def _parsed(model: type[BaseModel], key: str, text: str) -> Any:
    """A variable's text as the key's type, when the key takes no string (``"3"`` -> 3)."""
    annotation = model.model_fields[key].annotation
    try:
        return TypeAdapter(annotation, config=ConfigDict(strict=True)).validate_python(text)
    except ValidationError:
        pass
    try:
        return TypeAdapter(annotation).validate_python(text)
    except ValidationError:
        return text  # reported by the step's validation, with the key


def _step_error(path: str, index: int, kind: str, values: dict[str, Any],
                exc: ValidationError) -> DistgmmInputError:
    """One line for the first problem pydantic found in a step."""
    errors = exc.errors()
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing"]
    if missing:
        return DistgmmInputError(f"{path}: step {index} ({kind}): missing required key(s) "
                                 f"{', '.join(missing)}.")
    error = errors[0]
    key = str(error["loc"][0]) if error["loc"] else "?"
    value = values.get(key)
    return DistgmmInputError(f"{path}: step {index} ({kind}), key {key!r}: {error['msg']}, got "
                             f"{_type_name(value)} {value!r}.")


def load_job(path: str | os.PathLike, sets: dict[str, str] | None = None,
             environ: dict[str, str] | None = None, allow_outside: bool = False) -> Job:
    """Read and validate a job file (nothing runs).

    Parameters
    ----------
    path : path
        The TOML job file.
    sets : dict, optional
        ``--set`` overrides of ``[vars]``.
    environ : dict, optional
        Environment to read ``DISTGMM_VAR_<name>`` from (default ``os.environ``).
    allow_outside : bool
        Accept paths outside the job's directory and the operator's ``--set`` values (see
        the module docstring).

    Raises
    ------
    DistgmmInputError
        Unreadable or malformed TOML, unknown sections, steps or keys, wrong types, missing
        required keys, undefined variables, paths outside the allowed directories.
    """
    path = os.fspath(path)
    environ = os.environ if environ is None else environ
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise DistgmmInputError(f"job file {path} does not exist; check the path.") from None
    except tomllib.TOMLDecodeError as exc:
        raise DistgmmInputError(f"job file {path} is not valid TOML: {exc}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DistgmmInputError(f"job file {path} cannot be read: {exc}.") from None
    for key in doc:
        if key not in _TOP:
            raise DistgmmInputError(f"{path}: unknown top-level key {key!r}; allowed: "
                                    f"{', '.join(_TOP)}.")
    job = doc.get("job", {})
    if not isinstance(job, dict):
        raise DistgmmInputError(f"{path}: 'job' must be a table.")
    for key in job:
        if key not in _JOB_KEYS:
            raise DistgmmInputError(f"{path}: unknown key {key!r} in [job]; allowed: "
                                    f"{', '.join(_JOB_KEYS)}.")
    description = job.get("description", "")
    if not isinstance(description, str):
        raise DistgmmInputError(f"{path}: [job] description must be a string.")
    declared = doc.get("vars", {})
    if not isinstance(declared, dict):
        raise DistgmmInputError(f"{path}: 'vars' must be a table of strings.")
    variables: dict[str, str] = {}
    operator_values: list[str] = []  # paths the operator named: allowed roots
    for name, value in declared.items():
        if not _VAR_NAME.match(name) or not isinstance(value, (str, int, float)) or \
                isinstance(value, bool):
            raise DistgmmInputError(f"{path}: [vars] {name!r} must be a name made of letters, "
                                    "digits and '_' with a string or number value.")
        variables[name] = environ.get(ENV_PREFIX + name, str(value))
        if ENV_PREFIX + name in environ:
            operator_values.append(environ[ENV_PREFIX + name])
    for name, value in (sets or {}).items():
        if name not in variables:
            raise DistgmmInputError(f"--set {name}: {path} declares no variable {name!r}; "
                                    f"declared: {', '.join(sorted(variables)) or 'none'}.")
        variables[name] = value
        operator_values.append(value)
    raw_steps = doc.get("step")
    if not isinstance(raw_steps, list) or not raw_steps or \
            not all(isinstance(s, dict) for s in raw_steps):
        raise DistgmmInputError(f"{path}: no steps; add [[step]] tables with run = one of "
                                f"{', '.join(STEP_MODELS)}.")
    resolver = _Resolver(path, variables, operator_values, allow_outside)
    steps = []
    for index, raw in enumerate(raw_steps, start=1):
        step = resolver.step(index, raw)
        if step.kind == "fit":
            try:
                _fit_prior(step.options)
            except DistgmmInputError as exc:
                raise DistgmmInputError(f"{path}: step {index} (fit): {exc}") from None
        if step.kind == "label" and not step.options.get("scores") and (
                step.options.get("fail_on_drift") or step.options.get("stop_unless_drift")):
            raise DistgmmInputError(f"{path}: step {index} (label): fail_on_drift and "
                                    "stop_unless_drift judge scores; add scores = true.")
        steps.append(step)
    return Job(path=path, description=description, variables=variables, steps=steps)


@dataclass
class JobReport:
    """Results of :func:`run_job`: one ``(step, report)`` per step, in order."""

    path: str
    results: list[tuple[JobStep, Any]] = field(default_factory=list)
    seconds: float = 0.0
    #: A label step with ``fail_on_drift`` reported drift and ended the job.
    failed_on_drift: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"job": self.path, "seconds": self.seconds,
                "failed_on_drift": self.failed_on_drift,
                "steps": [{"step": s.index, "run": s.kind, **r.to_dict()}
                          for s, r in self.results]}


@dataclass(frozen=True)
class SkippedStep:
    """A step not run because its output is already there (see the module docstring)."""

    kind: str
    output: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"skipped": True, "output": self.output, "reason": self.reason}


def _store_meta(url: str, storage_options: dict | None = None) -> tuple[dict, Any] | None:
    """The ``distgmm`` attributes and group of a complete point store at ``url``, or None."""
    from distgmm.store import open_points

    try:
        points = open_points(url, storage_options)
    except DistgmmInputError:
        return None
    if points.foreign is not None:
        return None
    return points.attrs, points


def _generate_done(o: dict[str, Any]) -> str | None:
    found = _store_meta(o["store"], o.get("storage_options"))
    if found is None or o.get("overwrite"):
        return None
    attrs, points = found
    generated = attrs.get("generated") or {}
    if (attrs.get("provenance") or {}).get("op") != "generate":
        return None
    if o.get("preset") is not None or generated.get("preset") is not None:
        same = o.get("preset") == generated.get("preset")
    else:
        same = (points.n_rows == o.get("points", 10_000_000)
                and points.n_features == o.get("features", 8)
                and len(generated.get("weights", [])) == o.get("components", 8))
    same = same and points.dtype.name == o.get("dtype", "float32") and \
        o.get("chunk_rows", points.chunk_rows) == points.chunk_rows and \
        o.get("seed", generated.get("seed")) == generated.get("seed")
    return f"{o['store']} was generated with these settings already" if same else None


def _ingest_done(o: dict[str, Any]) -> str | None:
    from distgmm._atomic import is_url
    from distgmm.store._sources import source_digest

    found = _store_meta(o["store"], o.get("storage_options"))
    if found is None or o.get("overwrite"):
        return None
    attrs, points = found
    try:
        digest = source_digest(o["source"], o.get("storage_options"))
    except (OSError, ValueError):
        return None  # no such source: the step reports it
    if o.get("append"):
        for entry in points.group["points"].attrs.get("row_log", []):
            if entry.get("source_sha256") == digest:
                return (f"the rows of {o['source']} are in {o['store']} already ({entry['op']} "
                        f"at {entry['time']}, rows {entry['rows_before']:,}-"
                        f"{entry['rows_after'] - 1:,})")
        return None
    provenance = attrs.get("provenance") or {}
    where = o["source"] if is_url(o["source"]) else os.path.abspath(o["source"])
    if provenance.get("source_sha256") == digest and provenance.get("source") == where:
        return f"{o['store']} was ingested from this file already"
    return None


def _fit_prior(options: dict) -> str | None:
    """The weight prior of a fit step: None for a Gaussian mixture; for ``bayesian = true``,
    ``prior`` (default ``dirichlet_process``)."""
    if not options.get("bayesian", False):
        if "prior" in options or "weight_concentration" in options:
            raise DistgmmInputError("a fit step's prior and weight_concentration apply to a "
                                    "Bayesian mixture; add bayesian = true, or drop them.")
        return None
    prior = options.get("prior", "dirichlet_process")
    if prior not in ("dirichlet_process", "dirichlet_distribution"):
        raise DistgmmInputError(f"a fit step's prior {prior!r} is not dirichlet_process or "
                                "dirichlet_distribution.")
    return prior


def _model_done(o: dict[str, Any], kind: str) -> str | None:
    from distgmm.store import read_model
    from distgmm.store._model import is_model_file

    from distgmm._atomic import file_exists

    model, options = o["model"], o.get("storage_options")
    if o.get("overwrite") or not file_exists(model, options) or \
            not is_model_file(model, options):
        return None
    found = _store_meta(o["store"], options)
    try:
        loaded = read_model(model, options)
    except ValueError:
        return None
    if found is None:
        return None
    _, points = found
    fitted, provenance = loaded.model, loaded.provenance
    settings = {"tol": 1e-3, "max_iter": 100, "n_init": 1, "reg_covar": 1e-6}
    same = (provenance.get("store") == o["store"] and provenance.get("n_rows") == points.n_rows
            and provenance.get("seed") == o.get("seed")
            and all(getattr(fitted, k) == o.get(k, v) for k, v in settings.items())
            and fitted.init_params == o.get("init", "kmeans"))
    from distgmm._scores import DEFAULT_OUTLIER_QUANTILE

    profile = getattr(fitted, "training_scores_", None)
    same = same and (profile is None or profile.outlier_quantile == o.get(
        "outlier_quantile", DEFAULT_OUTLIER_QUANTILE))
    if kind == "fit":
        prior = _fit_prior(o)
        same = same and fitted.n_components == o["components"] and \
            fitted.covariance_type == o.get("covariance_type", "full") and \
            provenance.get("weighted") == o.get("weights", False) and \
            getattr(fitted, "weight_concentration_prior_type", None) == prior
    else:
        from distgmm.jobs._common import parse_components, parse_covariance_types

        wanted = {(k, c) for c in parse_covariance_types(o.get("covariance_type", "full"))
                  for k in parse_components(o.get("components", "1..12"))}
        had = {(r["n_components"], r["covariance_type"]) for r in
               provenance.get("candidates", [])}
        same = same and wanted == had and provenance.get("selected_by") == o.get(
            "criterion", "bic")
    if not same:
        return None
    return f"{model} was fitted on {o['store']} ({points.n_rows:,} rows) with these settings"


_DONE = {"generate": _generate_done, "ingest": _ingest_done,
         "fit": lambda o: _model_done(o, "fit"), "select": lambda o: _model_done(o, "select")}


def step_done(step: JobStep) -> SkippedStep | None:
    """The reason to skip ``step`` if its output is already there (module docstring)."""
    check = _DONE.get(step.kind)
    reason = check(step.options) if check is not None else None
    if reason is None:
        return None
    output = step.options.get("model") if step.kind in ("fit", "select") else \
        step.options["store"]
    return SkippedStep(step.kind, output, reason)


def _run_step(step: JobStep, client: Any, hooks: JobHooks, lock_wait: float | None) -> Any:
    skipped = step_done(step)
    if skipped is not None:
        return skipped
    o = dict(step.options)
    if "variable" in o:
        from distgmm.store import StoreLocation

        o["store"] = StoreLocation(o["store"]).child(o.pop("variable")).url
    if step.kind == "predict":
        from distgmm.jobs._predict import check_prediction_out, predict_file, write_prediction

        out = o.pop("out")
        check_prediction_out(out)
        prediction = predict_file(o.pop("model"), o.pop("file"), **o)
        return _Predicted(prediction, write_prediction(prediction, out))
    if step.kind == "plot":
        from distgmm.jobs._plot import plot_store

        return plot_store(o.pop("model"), o.pop("store"), o.pop("out"), client=client, **o)
    if step.kind == "export":
        from distgmm.jobs._export import export_labels

        return export_labels(o.pop("store"), o.pop("out"), client=client, **o)
    if step.kind == "generate":
        from distgmm.store import generate

        renamed = {"points": "n_points", "features": "n_features", "components": "n_components"}
        return generate(o.pop("store"), client=client, lock_wait=lock_wait,
                        **{renamed.get(k, k): v for k, v in o.items()})
    if step.kind == "ingest":
        from distgmm.store import ingest

        return ingest(o.pop("source"), o.pop("store"), lock_wait=lock_wait, **o)
    if step.kind == "fit":
        from distgmm.jobs._fit import fit_store

        o["prior"] = _fit_prior(o)
        o.pop("bayesian", None)
        return fit_store(o.pop("store"), o.pop("model"), n_components=o.pop("components"),
                         init_params=o.pop("init", "kmeans"), checkpoint_dir=o.pop("checkpoint", None),
                         client=client, on_iteration=hooks.on_iteration,
                         on_pass=hooks.on_pass, **o)
    if step.kind == "label":
        from distgmm.jobs._label import label_store

        o.pop("fail_on_drift", None)
        o.pop("stop_unless_drift", None)
        return label_store(o.pop("model"), o.pop("store"), client=client,
                           on_progress=hooks.on_label_progress, lock_wait=lock_wait, **o)
    from distgmm.jobs._select import select_store

    return select_store(o.pop("store"), o.pop("model"), init_params=o.pop("init", "kmeans"),
                        covariance_types=o.pop("covariance_type", "full"), client=client,
                        on_candidate=hooks.on_candidate, on_pass=hooks.on_pass, **o)


@dataclass(frozen=True)
class _Predicted:
    """What a predict step wrote (the report of a step, like the other jobs')."""

    prediction: Any
    out: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        p = self.prediction
        return {"model": p.model, "fingerprint": p.fingerprint, "file": p.file,
                "n_rows": p.n_rows, "out": self.out}


def run_job(job: Job, *, client: Any = None, hooks: JobHooks | None = None,
            lock_wait: float | None = None) -> JobReport:
    """Run the steps of a validated job in order on ``client``; stop at the first error.

    ``lock_wait`` is how long a writing step waits for a busy store (see
    :mod:`distgmm.store._lock`)."""
    hooks = hooks or JobHooks()
    report = JobReport(job.path)
    t0 = time.perf_counter()
    ended: str | None = None  # why the remaining steps are skipped
    for step in job.steps:
        if ended is not None:
            output = step.options.get("model") if step.kind in ("fit", "select") else \
                step.options.get("store")
            result: Any = SkippedStep(step.kind, output, ended)
        else:
            if hooks.step_started is not None:
                hooks.step_started(step)
            result = _run_step(step, client, hooks, lock_wait)
        report.results.append((step, result))
        if hooks.step_finished is not None:
            hooks.step_finished(step, result)
        if ended is None and step.kind == "label":
            drift = result.drift_detected
            if drift and step.options.get("fail_on_drift"):
                report.failed_on_drift = True
                break
            if not drift and step.options.get("stop_unless_drift"):
                ended = f"step {step.index} (label) reported no drift"
    report.seconds = time.perf_counter() - t0
    return report
