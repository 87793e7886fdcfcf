"""distgmm: Gaussian mixture models fitted by EM on chunked Zarr point stores, on Dask."""

from ._estimator import GaussianMixture
from ._kernels import CollapsedComponentError

__all__ = ["GaussianMixture", "CollapsedComponentError"]
__version__ = "0.1.0"
