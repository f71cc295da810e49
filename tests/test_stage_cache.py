"""The settings record of a cached pipeline folder: what it refuses, and what its message tells the user to do."""

import json

import pytest

from rlfl.stage_cache import check_settings


def test_a_changed_setting_is_refused_with_the_recorded_value(tmp_path):
    check_settings(tmp_path / "settings.json", {"steps": 10, "algorithms": ["ppo"]})
    check_settings(tmp_path / "settings.json", {"steps": 10, "algorithms": ["ppo"]})  # the same: accepted
    with pytest.raises(ValueError, match=r"was built with algorithms=\['ppo'\], not \['ppo', 'grpo'\]; pass a new "
                                         r"output folder \(or delete "):
        check_settings(tmp_path / "settings.json", {"steps": 10, "algorithms": ["ppo", "grpo"]})


def test_a_setting_the_folder_never_recorded_is_named_as_new(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"steps": 10}))  # written by a version without the key
    with pytest.raises(ValueError, match=r"was built without the setting algorithms \(an older version\), so "
                                         r"algorithms=\['dpo'\] cannot be added to it; pass a new output folder"):
        check_settings(tmp_path / "settings.json", {"steps": 10, "algorithms": ["dpo"]})
    assert json.loads((tmp_path / "settings.json").read_text()) == {"steps": 10}  # nothing rewritten
