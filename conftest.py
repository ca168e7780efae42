"""Test-session set-up shared by tests/ and the doctests in every package."""

import os

# As the `fastslow` entry point does (see fastslow.cli.main): one OpenMP thread per calling
# thread unless OMP_NUM_THREADS says otherwise, set before FAISS or torch start OpenMP.
os.environ.setdefault("OMP_NUM_THREADS", "1")
