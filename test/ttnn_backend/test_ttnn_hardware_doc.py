"""docs/ttnn_hardware.md lists every ttnn call pattern the backend issues (item 5 of issue 9)."""

from __future__ import annotations

from pathlib import Path

from pi0_ttnn_node.tools.ttnn_patterns import EVIDENCE, NOT_SEEN, collect, evidence

DOC = Path(__file__).resolve().parents[2] / "docs" / "ttnn_hardware.md"


def test_the_hardware_doc_covers_every_call_pattern_the_backend_issues():
    text = DOC.read_text()
    rows = collect(models=("pi0", "pi05"), sizes=("tiny",))
    missing = [row.key() for row in rows if row.key() not in text]
    assert not missing, ("patterns not in docs/ttnn_hardware.md (regenerate with python -m "
                         "pi0_ttnn_node.tools.ttnn_patterns --write docs/ttnn_hardware.md):\n"
                         + "\n".join(missing))
    for row in rows:  # every op has hardware evidence or an explicit "not seen" reason
        assert "no evidence recorded" not in evidence(row), row


def test_every_not_seen_pattern_names_its_reason():
    for op, text in EVIDENCE.items():
        if text.startswith(NOT_SEEN):
            assert ":" in text or "(" in text, op
