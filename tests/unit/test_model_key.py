"""The test model's name follows what builds it (smoke/server.model_key), not the script's comments:
capacity runs compare their plans' model names, so a comment edit once made an earlier run's calibration
unusable (--calibration-from refuses another model)."""

from __future__ import annotations

from smoke import server


def test_the_model_key_follows_the_code_not_its_comments_or_layout():
    src = server.MODEL_SCRIPT.read_text()
    key = server.model_key()
    assert server.model_key(src) == key and len(key) == 12
    assert server.model_key("# a note on top\n" + src + "\n\n# and one below\n") == key
    assert server.model_key(src + "\nSEED_OFFSET = 1\n") != key
