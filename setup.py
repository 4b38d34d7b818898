"""Package discovery for the one `irtools` namespace.

The repository keeps `frontends/` and `passes/` at the top (the design card's layout); installed,
they are `irtools.frontends` and `irtools.passes`, so that a wheel holds exactly one top-level
package. Every sub-package is found by discovery: a new folder with an `__init__.py` ships without
editing a list.
"""

from setuptools import find_packages, setup

ROOMS = {"irtools.frontends": "frontends", "irtools.passes": "passes"}

packages = find_packages(include=["irtools", "irtools.*"])
for name, folder in ROOMS.items():
    packages += [name + sub.removeprefix(folder) for sub in find_packages(include=[folder, folder + ".*"])]

setup(packages=packages, package_dir=ROOMS)
