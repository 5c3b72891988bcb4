"""The docs name only options that exist: every `--option` in README.md and docs/*.md is an
option of one of the four scripts (their `Args`) or of a tool under experiments/ or
benchmarks/. A renamed or removed option fails here until the docs follow."""

import dataclasses
import importlib
import re

from conftest import ROOT, SCRIPTS


def known_options() -> set[str]:
    known = {"--help", "--check"}  # --help of every tool, `ruff format --check`
    # pip's, in benchmarks/RESULTS.md's instructions for carrying wheels to a GPU machine
    known |= {"--no-deps", "--only-binary", "--python-version", "--implementation", "--platform", "--no-index", "--target"}
    for script in SCRIPTS:
        for field in dataclasses.fields(importlib.import_module(script[: -len(".py")]).Args):
            for name in (field.name, field.name.replace("_", "-")):
                known |= {f"--{name}", f"--no-{name}"}
    for tool in [*ROOT.glob("experiments/*.py"), *ROOT.glob("benchmarks/*.py")]:
        known |= set(re.findall(r"[\"'](--[a-z][a-z0-9-]*)", tool.read_text()))
    return known


def test_every_option_in_the_docs_exists():
    known = known_options()
    for page in [ROOT / "README.md", *ROOT.glob("docs/*.md"), *ROOT.glob("benchmarks/*.md")]:
        named = set(re.findall(r"(?:^|[\s`(\[])(--[a-z][a-z0-9_-]*)", page.read_text(), flags=re.M))
        assert named <= known, f"{page.relative_to(ROOT)} names options no script or tool has: {sorted(named - known)}"
