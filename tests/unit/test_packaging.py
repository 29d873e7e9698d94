"""What setup.cfg promises: every runtime dependency is one hbt imports, FAISS comes in
exactly one build, and DeepSpeed is capped where hbt reaches into its internals."""

from __future__ import annotations

import configparser
import re

from tests.helpers import ROOT

# Distribution name -> the module hbt imports it as.
MODULE_OF = {"pyyaml": "yaml", "faiss-cpu": "faiss", "tensorboard": "torch.utils.tensorboard", "mpi4py": "mpi4py"}


def requirements(text: str) -> list[str]:
    return [re.split(r"[<>=!~\[ ]", line.strip(), maxsplit=1)[0].lower() for line in text.strip().splitlines() if line.strip()]


def setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def hbt_source() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "hbt").rglob("*.py"))


def test_every_runtime_dependency_is_imported_by_hbt() -> None:
    source = hbt_source()
    for dist in requirements(setup_cfg()["options"]["install_requires"]):
        module = MODULE_OF.get(dist, dist.replace("-", "_"))
        assert re.search(rf"^\s*(from|import) {re.escape(module)}\b", source, re.M), f"{dist} is required but never imported"


def test_launchers_are_extras_not_requirements() -> None:
    cfg = setup_cfg()
    assert "accelerate" not in requirements(cfg["options"]["install_requires"])  # a launcher: hbt never imports it
    assert "accelerate" in requirements(cfg["options.extras_require"]["accelerate"])


def test_one_faiss_build_per_environment() -> None:
    """faiss-cpu and faiss-gpu both install the ``faiss`` module: no extra may add a GPU
    build beside the required CPU one (README says how to swap them on a GPU machine)."""
    cfg = setup_cfg()
    assert "faiss-cpu" in requirements(cfg["options"]["install_requires"])
    for extra, text in cfg["options.extras_require"].items():
        assert not [r for r in requirements(text) if r.startswith("faiss")], extra


def test_deepspeed_has_an_upper_bound() -> None:
    """hbt sets ``engine.enable_backward_allreduce`` and relies on ZeRO's gradient
    hand-off, both DeepSpeed internals: only versions CI ran are allowed."""
    line = next(r for r in setup_cfg()["options"]["install_requires"].splitlines() if r.strip().startswith("deepspeed"))
    assert "<" in line
