"""Builds the optional C switch path; everything else is in pyproject.toml.

If the compiler is missing the extension is skipped and cosched runs on its
pure-Python reference implementation (cosched/_coro.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("cosched._speedups", ["cosched/_speedups.c"], optional=True),
    ],
)
