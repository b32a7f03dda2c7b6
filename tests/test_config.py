import pytest

from genlab.config import build_run_config, dump_yaml, from_dict, load_yaml, set_dotted, to_dict
from genlab.errors import UsageError
from genlab.models import ddpm


def test_overrides_are_typed():
    cfg = build_run_config("ddpm", ddpm.Config)
    set_dotted(cfg, "train.steps", "12")
    set_dotted(cfg, "model.lr", "1e-3")
    set_dotted(cfg, "model.channel_mult", "[1, 2]")
    set_dotted(cfg, "model.class_cond", "true")
    assert cfg.train.steps == 12 and isinstance(cfg.train.steps, int)
    assert cfg.model.lr == pytest.approx(1e-3) and isinstance(cfg.model.lr, float)
    assert cfg.model.channel_mult == [1, 2]
    assert cfg.model.class_cond is True


def test_unknown_key_lists_valid_keys():
    cfg = build_run_config("ddpm", ddpm.Config)
    with pytest.raises(UsageError, match="unknown config key 'train.stepz'.*steps, batch_size"):
        set_dotted(cfg, "train.stepz", "3")
    with pytest.raises(UsageError, match="unknown config key 'model.foo'"):
        build_run_config("ddpm", ddpm.Config, {"model": {"foo": 1}})
    with pytest.raises(UsageError, match="valid top-level keys"):
        build_run_config("ddpm", ddpm.Config, {"optim": {}})


def test_bad_value_type_names_the_key():
    cfg = build_run_config("ddpm", ddpm.Config)
    with pytest.raises(UsageError, match="train.steps.*integer"):
        set_dotted(cfg, "train.steps", "many")
    with pytest.raises(UsageError, match="model.class_cond.*true/false"):
        set_dotted(cfg, "model.class_cond", "perhaps")


def test_yaml_round_trip(tmp_path):
    cfg = build_run_config("ddpm", ddpm.Config, {"data": "ring8", "train": {"steps": 7}})
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg))
    again = build_run_config("ddpm", ddpm.Config, load_yaml(path))
    assert to_dict(again) == to_dict(cfg)
    assert again.data.name == "ring8" and again.train.steps == 7


def test_family_mismatch_is_an_error():
    with pytest.raises(UsageError, match="for family 'vae'"):
        build_run_config("ddpm", ddpm.Config, {"family": "vae"})


def test_from_dict_rejects_wrong_section_type():
    from genlab.config import RunConfig

    with pytest.raises(UsageError):
        from_dict(RunConfig, {"train": 3})
