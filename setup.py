from setuptools import find_packages, setup

setup(
    name="geviso",
    version="0.1.0",
    description=(
        "gevent ISO 8583 links: interleaved requests on one TCP/TLS link, pools, a mock card host, Locust load tests"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["geviso", "geviso.*"]),
    package_data={"geviso": ["py.typed"]},
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
        ],
        "load": ["locust>=2.20"],
        "prometheus": ["prometheus-client>=0.17"],
        "yaml": ["pyyaml>=6"],
    },
    entry_points={"console_scripts": ["geviso=geviso.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: gevent",
        "Topic :: Office/Business :: Financial",
        "Typing :: Typed",
    ],
)
