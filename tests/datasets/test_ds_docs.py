"""Run the python code blocks of docs/datasets.md."""
import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S) if DOC.exists() else []


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_doc_block_runs(code):
    exec(compile(code, str(DOC), "exec"), {})


def test_doc_has_blocks():
    assert len(BLOCKS) >= 3
