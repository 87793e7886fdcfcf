"""Jobs: fit, label, select, predict, job files and the demo — what the CLI commands call."""

from distgmm.jobs._align import alignment_permutation, bhattacharyya_distances, permute_components
from distgmm.jobs._common import parse_components, parse_covariance_types
from distgmm.jobs._demo import DemoReport, kmeans_samples_path, run_demo
from distgmm.jobs._fit import FitReport, checkpoint_path, fit_store
from distgmm._statistics import label_block
from distgmm.jobs._label import LabelReport, label_store
from distgmm.jobs._labeller import predict_to_zarr
from distgmm.jobs._predict import Prediction, predict_file, write_prediction
from distgmm.jobs._select import SelectReport, select_store, selection_plot_path
from distgmm.jobs._spec import STEP_KEYS, Job, JobHooks, JobStep, load_job, parse_sets, run_job

__all__ = [
    "STEP_KEYS",
    "DemoReport",
    "FitReport",
    "Job",
    "JobHooks",
    "JobStep",
    "LabelReport",
    "Prediction",
    "SelectReport",
    "alignment_permutation",
    "bhattacharyya_distances",
    "checkpoint_path",
    "fit_store",
    "kmeans_samples_path",
    "label_block",
    "predict_to_zarr",
    "label_store",
    "load_job",
    "parse_components",
    "parse_covariance_types",
    "parse_sets",
    "permute_components",
    "predict_file",
    "run_demo",
    "run_job",
    "select_store",
    "selection_plot_path",
    "write_prediction",
]
