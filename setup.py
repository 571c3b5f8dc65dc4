"""For tools that still run setup.py; everything about the package is in pyproject.toml."""
from setuptools import setup

setup()
