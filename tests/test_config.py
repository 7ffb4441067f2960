import pytest
from pydantic import ValidationError

from pipelines.config import PipelineConfig, load_pipeline_config, parse_assignment, preset_differences
from pipelines.presets import PRESETS
from stages.lib.config import ConfigError, flat_fields
from stages.split import SplitConfig


@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_validates(preset):
    config = load_pipeline_config(preset)
    assert config.preset == preset


def test_seed_preset_is_the_seed_study():
    baseline = load_pipeline_config("seed").baseline
    assert baseline.architecture.filters == (96, 192, 256)
    assert baseline.architecture.convs_per_block == 2
    assert baseline.architecture.l2 == 0.003
    assert (baseline.batch_size, baseline.epochs, baseline.early_stopping_patience) == (128, 100, 4)
    assert load_pipeline_config("seed").model_dump(exclude={"preset"}) == PipelineConfig(preset="seed").model_dump(exclude={"preset"})


def test_overrides_apply_in_order():
    config = load_pipeline_config("quick", [parse_assignment("baseline.seed=3"), {"baseline": {"seed": 4, "epochs": 7}}])
    assert (config.baseline.seed, config.baseline.epochs) == (4, 7)
    assert config.baseline.architecture.filters == (32, 64, 128)  # rest of the preset kept


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"baseline": {"epoch": 3}}, "baseline.epoch: not a field here: remove it or correct its spelling"),
        ({"split": {"labels_per_class": 0}}, "split.labels_per_class: Input should be greater than 0"),
        ({"baseline": {"epochs": "ten"}}, "baseline.epochs: Input should be a valid integer"),
        ({"split": {"labels_per_class": 1.5}}, "labels_per_class is 1.5: give a whole count of images, or a fraction below 1"),
        ({"baseline": {"architecture": {"block_dropout": [0.1]}}}, "give one dropout rate per block"),
        ({"baseline": {"precision": "fp8"}}, "baseline.precision"),
        ({"baseline": {"warmup_epochs": 5, "epochs": 5}}, "warmup_epochs (5) must be below epochs (5)"),
        ({"preset": "mine"}, "preset: Input should be 'smoke', 'quick', 'seed', 'gpu' or 'ssl-gpu'"),
    ],
)
def test_bad_config_names_field_and_fix(override, expected):
    with pytest.raises(ConfigError) as error:
        load_pipeline_config("smoke", [override], source="overrides.yaml")
    assert "overrides.yaml" in str(error.value)
    assert expected in str(error.value)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset 'fast'; choose one of smoke, quick, seed, gpu"):
        load_pipeline_config("fast")


def test_configs_are_frozen():
    with pytest.raises(ValidationError):
        SplitConfig().seed = 3


def test_parse_assignment():
    assert parse_assignment("baseline.architecture.filters=[8, 16]") == {"baseline": {"architecture": {"filters": [8, 16]}}}
    with pytest.raises(ValueError, match="expected KEY.PATH=VALUE"):
        parse_assignment("baseline.seed")


def test_flat_fields_names_every_leaf_by_its_dotted_path():
    assert flat_fields({"a": {"b": 1, "c": {"d": [2, 3]}}, "e": None}) == {"a.b": 1, "a.c.d": [2, 3], "e": None}


def test_preset_differences_are_what_the_overrides_changed():
    assert preset_differences(load_pipeline_config("quick")) == {}
    changed = load_pipeline_config("quick", [parse_assignment("fine_tune.joint.weight=0.5"),
                                             parse_assignment("baseline.epochs=7")])
    # the followers of the baseline (fine-tuned and consistency classifiers) train for its epochs unless set
    assert preset_differences(changed) == {"fine_tune.joint.weight": 0.5, "baseline.epochs": 7,
                                           "fine_tune.classifier.epochs": 7}
    assert preset_differences(load_pipeline_config("quick", [{"baseline": {"epochs": 40}}])) == {}  # the preset's value


def test_a_section_inherits_only_what_it_does_not_set_and_says_so(capsys):
    """The quick preset's consistency classifier starts from the baseline and sets its own batch size."""
    config = load_pipeline_config("quick", [parse_assignment("baseline.label_smoothing=0.2")])
    assert config.consistency.classifier.label_smoothing == config.fine_tune.classifier.label_smoothing == 0.2
    assert config.consistency.classifier.batch_size == 64 != config.baseline.batch_size
    standalone = load_pipeline_config("quick", [{"consistency": {"classifier": {"inherit": None}}}])
    assert standalone.consistency.classifier.label_smoothing == 0.0  # TrainConfig's default, not the baseline's 0.1
    from pipelines.cli import main

    assert main(["config", "--preset", "quick"]) == 0
    printed = capsys.readouterr().out
    assert "# fine_tune.classifier: inherits baseline\n" in printed
    assert "# consistency.classifier: inherits baseline, then sets architecture.block_dropout" in printed


def test_an_inherit_that_names_no_section_is_a_clear_error():
    with pytest.raises(ValueError, match="consistency.classifier.inherit: .baseline.epochs. is not a section"):
        load_pipeline_config("smoke", [{"consistency": {"classifier": {"inherit": "baseline.epochs"}}}])
