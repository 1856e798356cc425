"""configs/det as detectron2 users expect: what several configs share lives in a ``_BASE_``
file (Base-POMP.yaml, centernet2/Base-CenterNet2.yaml, world/Base-world-tiny.yaml, ...), so no
block of six or more lines is written in two configs (the counterpart of
tests/seg/test_config_layout.py)."""
from pathlib import Path

from tests.config_blocks import repeated_blocks

DET = Path(__file__).resolve().parents[2] / "configs" / "det"


def test_no_block_of_six_lines_is_repeated():
    assert sorted(DET.rglob("*.yaml")), "no det configs found"
    repeated = repeated_blocks(DET, "*.yaml")
    assert not repeated, f"repeated config blocks: {repeated}"


def test_the_check_sees_a_repeated_block(tmp_path):
    block = "".join(f"KEY_{i}: {i}\n" for i in range(6))
    (tmp_path / "a.yaml").write_text("_BASE_: x.yaml\n" + block)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yaml").write_text("# a comment\n" + block + "OTHER: 1\n")
    (tmp_path / "c.yaml").write_text(block[: block.rindex("KEY_5")])  # five lines only: fine
    assert list(repeated_blocks(tmp_path, "*.yaml").values()) == [["a.yaml:1", "sub/b.yaml:0"]]
