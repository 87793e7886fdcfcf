"""Run the CLI as ``python -m distgmm.cli``."""

from distgmm.cli import main

if __name__ == "__main__":  # guard: Dask's spawned workers re-import this module
    main()
