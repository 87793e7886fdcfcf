"""Job files: a TOML list of ingest / generate / fit / label / select steps, validated strictly, then run.

Schema (every key is checked; anything unknown is an error naming the allowed keys)::

    [job]                       # optional
    description = "text"

    [vars]                      # optional: text substituted for ${name} in step values
    work = "out"

    [[step]]                    # one table per step, run in order
    run = "ingest"              # generate | ingest | fit | label | select
    source = "${work}/batch.txt"
    store = "${work}/points.zarr"
    append = true

Step keys are the command's options with ``_`` for ``-`` (``covariance_type``, ``max_iter``,
``align_to``...), see :data:`STEP_KEYS`. Rules:

* ``${name}`` is replaced in string values by the variable's value. A variable is set in
  ``[vars]``, overridden by the environment variable ``DISTGMM_VAR_<name>``, overridden by
  ``--set name=value``; only declared variables can be set, and an undefined reference is an
  error. A numeric or boolean key may be given as exactly ``"${name}"`` (then parsed).
* Relative paths (``source``, ``store``, ``model``, ``checkpoint``, ``align_to``) are resolved
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
  - ``label`` is incremental by itself (chunks already labelled by the model are skipped).

  An existing output that does not match is an error, as on the command line.
"""

from __future__ import annotations

import os
import re
import time
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable

from distgmm.errors import DistgmmInputError

__all__ = ["STEP_KEYS", "JobStep", "Job", "JobHooks", "SkippedStep", "load_job", "run_job",
           "parse_sets", "step_done"]

_STR, _INT, _FLOAT, _BOOL, _PATH = "string", "integer", "number", "boolean", "path"
_RANGE = "component range (\"1..12\", \"2,4,8\", an integer or a list of integers)"
_KINDS = "string or list of strings"

_FIT_OPTIONS = {"covariance_type": _STR, "tol": _FLOAT, "max_iter": _INT, "n_init": _INT,
                "init": _STR, "reg_covar": _FLOAT, "seed": _INT, "overwrite": _BOOL}

#: Allowed keys of each step kind and their types (``run`` is the kind itself).
STEP_KEYS: dict[str, dict[str, str]] = {
    "generate": {"store": _PATH, "preset": _STR, "points": _INT, "features": _INT,
                 "components": _INT, "seed": _INT, "dtype": _STR, "chunk_rows": _INT,
                 "overwrite": _BOOL},
    "ingest": {"source": _PATH, "store": _PATH, "format": _STR, "columns": _STR,
               "header": _BOOL, "dtype": _STR, "chunk_rows": _INT, "append": _BOOL,
               "overwrite": _BOOL, "drop_nonfinite": _BOOL},
    "fit": {"store": _PATH, "model": _PATH, "components": _INT, **_FIT_OPTIONS,
            "weights": _BOOL, "checkpoint": _PATH, "resume": _BOOL, "align_to": _PATH,
            "bayesian": _BOOL, "prior": _STR, "weight_concentration": _FLOAT},
    "label": {"model": _PATH, "store": _PATH, "name": _STR, "proba": _BOOL, "replace": _BOOL},
    "select": {"store": _PATH, "model": _PATH, "components": _RANGE, **_FIT_OPTIONS,
               "covariance_type": _KINDS, "criterion": _STR, "plot": _BOOL},
}
_REQUIRED = {"generate": ("store",), "ingest": ("source", "store"),
             "fit": ("store", "model", "components"), "label": ("model", "store"),
             "select": ("store", "model")}
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
    return {str: _STR, int: _INT, float: _FLOAT, bool: _BOOL, list: "list",
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

    def value(self, kind: str, step: int, key: str, expected: str, value: Any) -> Any:
        where = self.where(step, kind, key)
        if isinstance(value, str) and expected in (_INT, _FLOAT, _BOOL) and \
                _VAR.fullmatch(value):
            value = self.text(value, where)
            try:
                value = {_INT: int, _FLOAT: float,
                         _BOOL: lambda v: {"true": True, "false": False}[v.lower()]}[expected](value)
            except (ValueError, KeyError):
                raise DistgmmInputError(f"{where}: {value!r} is not a {expected}.") from None
        ok = {
            _STR: lambda v: isinstance(v, str),
            _PATH: lambda v: isinstance(v, str) and v != "",
            _INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
            _FLOAT: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
            _BOOL: lambda v: isinstance(v, bool),
            _RANGE: lambda v: isinstance(v, (str, int)) and not isinstance(v, bool) or (
                isinstance(v, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                            for i in v)),
            _KINDS: lambda v: isinstance(v, str) or (isinstance(v, list) and
                                                     all(isinstance(i, str) for i in v)),
        }[expected](value)
        if not ok:
            raise DistgmmInputError(f"{where} must be a {expected}, got {_type_name(value)} "
                                    f"{value!r}.")
        if isinstance(value, str):
            value = self.text(value, where)
            if expected == _PATH:
                value = self.path_value(value, where)
        elif isinstance(value, list):
            value = [self.text(v, where) if isinstance(v, str) else v for v in value]
        return value


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
                                f"{', '.join(STEP_KEYS)}.")
    resolver = _Resolver(path, variables, operator_values, allow_outside)
    steps = []
    for index, raw in enumerate(raw_steps, start=1):
        kind = raw.get("run")
        if kind not in STEP_KEYS:
            raise DistgmmInputError(f"{path}: step {index}: unknown step {kind!r} (key 'run'); "
                                    f"allowed: {', '.join(STEP_KEYS)}.")
        allowed = STEP_KEYS[kind]
        options = {}
        for key, value in raw.items():
            if key == "run":
                continue
            if key not in allowed:
                raise DistgmmInputError(
                    f"{path}: step {index} ({kind}): unknown key {key!r}; allowed: "
                    f"{', '.join(sorted(allowed))}.")
            options[key] = resolver.value(kind, index, key, allowed[key], value)
        if kind == "fit":
            try:
                _fit_prior(options)
            except DistgmmInputError as exc:
                raise DistgmmInputError(f"{path}: step {index} (fit): {exc}") from None
        missing = [k for k in _REQUIRED[kind] if k not in options]
        if missing:
            raise DistgmmInputError(f"{path}: step {index} ({kind}): missing required key(s) "
                                    f"{', '.join(missing)}.")
        steps.append(JobStep(index, kind, options))
    return Job(path=path, description=description, variables=variables, steps=steps)


@dataclass
class JobReport:
    """Results of :func:`run_job`: one ``(step, report)`` per step, in order."""

    path: str
    results: list[tuple[JobStep, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {"job": self.path, "seconds": self.seconds,
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


def _store_meta(url: str) -> tuple[dict, Any] | None:
    """The ``distgmm`` attributes and group of a complete point store at ``url``, or None."""
    from distgmm.store import open_points

    try:
        points = open_points(url)
    except DistgmmInputError:
        return None
    if points.foreign is not None:
        return None
    return points.attrs, points


def _generate_done(o: dict[str, Any]) -> str | None:
    found = _store_meta(o["store"])
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
    found = _store_meta(o["store"])
    if found is None or o.get("overwrite") or not os.path.isfile(o["source"]):
        return None
    attrs, points = found
    from distgmm.store._sources import source_digest

    digest = source_digest(o["source"])
    if o.get("append"):
        for entry in points.group["points"].attrs.get("row_log", []):
            if entry.get("source_sha256") == digest:
                return (f"the rows of {o['source']} are in {o['store']} already ({entry['op']} "
                        f"at {entry['time']}, rows {entry['rows_before']:,}-"
                        f"{entry['rows_after'] - 1:,})")
        return None
    provenance = attrs.get("provenance") or {}
    if provenance.get("source_sha256") == digest and \
            provenance.get("source") == os.path.abspath(o["source"]):
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

    model = o["model"]
    if o.get("overwrite") or not os.path.isfile(model) or not is_model_file(model):
        return None
    found = _store_meta(o["store"])
    try:
        loaded = read_model(model)
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
                         client=client, on_iteration=hooks.on_iteration, **o)
    if step.kind == "label":
        from distgmm.jobs._label import label_store

        return label_store(o.pop("model"), o.pop("store"), client=client,
                           on_progress=hooks.on_label_progress, lock_wait=lock_wait, **o)
    from distgmm.jobs._select import select_store

    return select_store(o.pop("store"), o.pop("model"), init_params=o.pop("init", "kmeans"),
                        covariance_types=o.pop("covariance_type", "full"), client=client,
                        on_candidate=hooks.on_candidate, **o)


def run_job(job: Job, *, client: Any = None, hooks: JobHooks | None = None,
            lock_wait: float | None = None) -> JobReport:
    """Run the steps of a validated job in order on ``client``; stop at the first error.

    ``lock_wait`` is how long a writing step waits for a busy store (see
    :mod:`distgmm.store._lock`)."""
    hooks = hooks or JobHooks()
    report = JobReport(job.path)
    t0 = time.perf_counter()
    for step in job.steps:
        if hooks.step_started is not None:
            hooks.step_started(step)
        result = _run_step(step, client, hooks, lock_wait)
        report.results.append((step, result))
        if hooks.step_finished is not None:
            hooks.step_finished(step, result)
    report.seconds = time.perf_counter() - t0
    return report
