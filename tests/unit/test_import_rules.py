"""Import rules that keep the design easy to see: the set blocks depend on torch alone, the encoder on them
alone, one module speaks to MLflow, and chunking runs no network."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _imported_modules(path: Path) -> set[str]:
    """Full dotted name of every module ``path`` imports (at any depth in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
    return names


def _imported(path: Path) -> set[str]:
    """Top-level package of every module ``path`` imports."""
    return {n.split(".")[0] for n in _imported_modules(path)}


def test_the_set_blocks_import_nothing_of_the_project():
    assert _imported(ROOT / "pipeline" / "sets.py") <= {
        "__future__",
        "math",
        "collections",
        "typing",
        "torch",
    }


def test_the_encoder_imports_of_the_project_only_the_set_blocks():
    """SNE's hierarchy reads its side inputs' widths from its config, not from what computes them."""
    imported = _imported_modules(ROOT / "pipeline" / "encoder.py")
    assert {n for n in imported if n.split(".")[0] == "pipeline"} == {"pipeline.sets"}


def test_only_the_tracking_module_imports_mlflow():
    sources = [*ROOT.glob("pipeline/**/*.py"), *ROOT.glob("jobs/*.py")]
    assert len(sources) > 20
    users = sorted(str(p.relative_to(ROOT)) for p in sources if "mlflow" in _imported(p))
    assert users == ["pipeline/tracking.py"]


def test_chunking_reads_weights_and_never_runs_a_network():
    """Probing is prepare's own stage (pipeline.probes.probe_table); chunking builds no torch module."""
    imported = _imported_modules(ROOT / "pipeline" / "chunking.py")
    assert "torch" not in _imported(ROOT / "pipeline" / "chunking.py")
    assert not {"pipeline.probes", "pipeline.families"} & imported
