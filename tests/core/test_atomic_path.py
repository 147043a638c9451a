"""atomic_path: the target holds the old content or the whole new content, never a part, and nothing is left beside it."""
import pytest

from gcross_core.files import atomic_path


@pytest.mark.parametrize("durable", [False, True])
def test_a_finished_block_replaces_the_file(tmp_path, durable):
    target = tmp_path / "sub" / "out.json"
    with atomic_path(target, durable=durable) as tmp:
        assert tmp.parent == target.parent and tmp != target and not target.exists()
        tmp.write_text("new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_a_failing_block_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(target) as tmp:
            tmp.write_text("ha")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
