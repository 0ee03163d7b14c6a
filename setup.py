"""The slapos_collect_recipe egg: the collector, the slapmonitor and the buildout recipe."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
version = {}
exec((HERE / "slapos_collect_recipe" / "__init__.py").read_text(), version)

setup(
    name="slapos_collect_recipe",
    version=version["__version__"],
    description="Per-partition resource collector, slapmonitor and buildout recipe for SlapOS",
    long_description=(HERE / "README.md").read_text(encoding="utf-8") if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    license="GPL-3.0-or-later",
    python_requires=">=3.11",
    packages=find_packages(include=["slapos_collect_recipe", "slapos_collect_recipe.*"]),
    include_package_data=True,
    package_data={"slapos_collect_recipe": ["templates/*", "assets/*", "*.schema.json"]},
    zip_safe=False,
    # Everything the egg's two commands need, every subcommand included: a plain
    # `pip install` gives a working slapos-collect and slapmonitor. The
    # per-minute collect imports only psutil (the others are imported lazily).
    install_requires=[
        "psutil>=5.9",
        # ISA-L's deflate for the daily archives (zlib where there is no wheel).
        "isal>=1.6; platform_system == 'Linux' and (platform_machine == 'x86_64' or platform_machine == 'aarch64')",
        # serve / slapmonitor: the server, /metrics, the TLS pair, the dashboard's charts.
        "aiohttp>=3.9",
        "prometheus_client>=0.17",
        "cryptography>=41",
        "dygraphs>=0.0.14",
        # cron: the partition's cron daemon.
        "croniter>=2.0",
    ],
    extras_require={
        # Kept empty so that older requirement lines (`[monitor,cron]`) still resolve.
        "monitor": [],
        "cron": [],
        # What buildout itself needs to use the egg as a recipe.
        "recipe": [
            "zc.buildout>=4",
            "zc.recipe.egg",
            "slapos.recipe.template",
            "slapos.cookbook",
            "jsonschema",
        ],
        "test": [
            "pytest>=8",
            "ruff",
            "playwright>=1.40",
            "jsonschema>=4",  # validates stats.json against availability.schema.json
        ],
    },
    entry_points={
        "console_scripts": [
            "slapos-collect = slapos_collect_recipe.cli:main",
            "slapmonitor = slapos_collect_recipe.cli:slapmonitor_main",
        ],
        "zc.buildout": [
            "default = slapos_collect_recipe.recipe:Recipe",
            "release = slapos_collect_recipe.recipe:Release",
            "slapconfiguration = slapos_collect_recipe.slapconfiguration:SlapConfiguration",
        ],
    },
)
