"""Maps each top-level folder to ``phpo.<folder>`` (README, "What is in the box").

The package list is computed, not written by hand: an explicit list silently drops new
subpackages from wheels while editable installs still find them;
tests/test_packaging.py builds the wheel and imports every subpackage from it.
"""

from setuptools import find_packages, setup

TOP_LEVEL = ["schemas", "steering", "server", "evaluation_container", "client", "data", "serving"]

package_dir: dict[str, str] = {}
packages: list[str] = []
for top in TOP_LEVEL:
    package_dir[f"phpo.{top}"] = top
    packages.append(f"phpo.{top}")
    packages.extend(f"phpo.{top}.{sub}" for sub in find_packages(top))

setup(package_dir=package_dir, packages=packages)
