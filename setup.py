"""Build script: pure Python (the CUDA extension build is added by csrc/)."""

import os

from setuptools import find_packages, setup

packages = find_packages(include=["pai_fast", "pai_fast.*"])
package_dir = {}
if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels", "__init__.py")):
    packages.append("pai_fast.kernels")
    package_dir["pai_fast.kernels"] = "kernels"

setup(packages=packages, package_dir=package_dir)
