import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# The version lives in one place: geviso/__init__.py (read, not imported: importing
# geviso needs gevent, which may not be installed yet).
VERSION = re.search(r'^__version__ = "([^"]+)"', (HERE / "geviso" / "__init__.py").read_text(encoding="utf-8"), re.M)
if VERSION is None:
    raise RuntimeError("geviso/__init__.py has no __version__")

DOCS = ["mkdocs>=1.5", "mkdocs-material>=9", "mkdocstrings[python]>=0.24"]

setup(
    name="geviso",
    version=VERSION.group(1),
    description=(
        "gevent ISO 8583 links: interleaved requests on one TCP/TLS link, pools, a mock card host, Locust load tests"
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["geviso", "geviso.*"]),
    # Every file under geviso/ (py.typed, templates, examples of rules...) ships: see MANIFEST.in.
    include_package_data=True,
    package_data={"geviso.mock.admin_static": ["*.html", "*.css", "*.js"]},  # the admin live page
    install_requires=["gevent>=23.9", "pyiso8583>=3.0"],
    extras_require={
        "test": [
            "pytest>=7",
            "pytest-timeout>=2.1",
            "hypothesis>=6.80",
            "trustme>=1.1",
            "ruff>=0.4",
            "mypy>=1.8",
            "locust>=2.20",
            "gunicorn>=21",
            "prometheus-client>=0.17",
            "pyyaml>=6",
            "types-PyYAML",
            "nox>=2024.3",
            "build>=1",
            "twine>=5",
            "selenium>=4.10",
            "psycopg[binary]>=3.1.14",
            "dpkt>=1.9",
        ],
        "load": ["locust>=2.20"],
        "prometheus": ["prometheus-client>=0.17"],
        "yaml": ["pyyaml>=6"],
        "docs": DOCS,
        "postgres": ["psycopg[binary]>=3.1.14"],
        "capture": ["dpkt>=1.9"],
    },
    entry_points={"console_scripts": ["geviso=geviso.cli:main"]},
    classifiers=[
        "Development Status :: 4 - Beta",
        "Intended Audience :: Developers",
        "Operating System :: POSIX",
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Programming Language :: Python :: 3.9",
        "Programming Language :: Python :: 3.10",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Programming Language :: Python :: 3.13",
        "Programming Language :: Python :: Implementation :: CPython",
        "Framework :: gevent",
        "Topic :: Office/Business :: Financial",
        "Typing :: Typed",
    ],
)
