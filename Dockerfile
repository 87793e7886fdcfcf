# The distgmm image: docker-compose.yml runs the Dask scheduler, the workers and the job runner
# from it, so client, scheduler and workers always have the same distgmm, dask and distributed
# versions (Dask requires that).
#
#   docker compose build            # or: docker build -t distgmm:latest .
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MPLBACKEND=Agg \
    NUMBA_CACHE_DIR=/tmp/numba-cache

# Metadata first, so the dependency layer is rebuilt only when pyproject.toml changes.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY distgmm ./distgmm
# Extras: Parquet ingest and s3:// stores. bokeh serves the scheduler's dashboard.
RUN pip install ".[parquet,s3]" "bokeh>=3.1" \
    && useradd --create-home --uid 1000 --shell /usr/sbin/nologin distgmm \
    && mkdir -p /data \
    && chown distgmm:distgmm /data

# Example job files; their relative paths reach /src/distgmm/data like in a checkout.
COPY jobs ./jobs

# Nothing runs as root; stores, models and checkpoints live on the shared volume at /data.
USER distgmm
WORKDIR /data
CMD ["distgmm", "--help"]
