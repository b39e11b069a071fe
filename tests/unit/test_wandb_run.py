"""perceiver_lit.wandb_run: the run directory keeps one W&B run id per job type, and one group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from perceiver_lit.wandb_run import RUN_IDS_FILE, run_identity


def test_run_ids_are_kept_per_job_type_in_one_group(tmp_path: Path) -> None:
    fit_id, group = run_identity(tmp_path, "fit")
    assert run_identity(tmp_path, "fit") == (fit_id, group)  # a restart continues the same run
    test_id, test_group = run_identity(tmp_path, "test")
    assert test_group == group and test_id != fit_id  # test is its own run, in fit's group
    stored = json.loads((tmp_path / RUN_IDS_FILE).read_text())
    assert stored == {"group": group, "fit": fit_id, "test": test_id}
    assert group.startswith(tmp_path.name + "-") and len(fit_id) == 8 and fit_id.isalnum()
    assert run_identity(tmp_path, "fit", group="my-sweep") == (fit_id, "my-sweep")  # --wandb.group wins
    assert not list(tmp_path.glob("*.partial"))


def test_a_damaged_run_ids_file_is_named(tmp_path: Path) -> None:
    (tmp_path / RUN_IDS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=r"wandb_run\.json: not valid JSON"):
        run_identity(tmp_path, "fit")
    (tmp_path / RUN_IDS_FILE).write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"wandb_run\.json: expected a JSON object of W&B run ids, got list"):
        run_identity(tmp_path, "fit")
