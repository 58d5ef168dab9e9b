"""Refit before retraining (``retrain.recovery_examples``): a trial starts retraining from
the least-squares refit of what it kept, exactly as :func:`autoprune.engine.recovery.recover`
gives it, and a bad count is named before any trial runs."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_study

from autoprune.engine.prune import PruneConfig, prune
from autoprune.engine.recovery import reconstruction_errors, recover
from autoprune.run.trial import retrain_calibration, run_trial
from autoprune.search.spec import StudyError
from autoprune.workflow import opened_run

CONFIG = PruneConfig(heads=[2, 1], ffn=[24, 12])


@pytest.fixture(scope="module")
def tiny_session_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    study = tiny_study(tmp_path_factory.mktemp("refit"))
    with opened_run(study, study.parent / "run"):
        pass  # prepared once; each test opens it again with its own overrides
    return study


def test_a_trial_retrains_from_the_refit_model(tiny_session_dir: Path) -> None:
    study = tiny_session_dir
    overrides = {"retrain.recovery_examples": 16, "retrain.steps": 0}
    with opened_run(study, study.parent / "run", overrides) as session:
        prepared = session.prepared
        outcome, trained = run_trial(prepared, CONFIG, session.settings)
        calibration = retrain_calibration(prepared, 16)
        expected = recover(prune(prepared.model, CONFIG, prepared.scores), calibration)
        plain = prune(prepared.model, CONFIG, prepared.scores)
        plain_settings = dataclasses.replace(
            session.settings,
            retrain=session.settings.retrain.model_copy(update={"recovery_examples": 0}),
        )
        unrefit, _ = run_trial(prepared, CONFIG, plain_settings)
    for name, value in expected.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, msg=name)
    # the refit is not a no-op: it lowers the blocks' error against the dense model
    refit_error = sum(sum(e.values()) for e in reconstruction_errors(trained, calibration))
    plain_error = sum(sum(e.values()) for e in reconstruction_errors(plain, calibration))
    assert refit_error < plain_error
    assert outcome.size == unrefit.size  # shapes are kept: sizes are the pruned model's
    assert outcome.metric_search_before == pytest.approx(
        prepared.task.evaluate(expected, prepared.data.search)
    )


@pytest.mark.parametrize("examples", [-1, 10_000])
def test_a_bad_recovery_count_is_named_when_the_run_opens(
    tiny_session_dir: Path, tmp_path: Path, examples: int
) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_session_dir.parent / "run", run)
    with (
        pytest.raises(StudyError, match="retrain.recovery_examples"),
        opened_run(tiny_session_dir, run, {"retrain.recovery_examples": examples}),
    ):
        pass
