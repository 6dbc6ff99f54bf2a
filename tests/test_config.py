"""Config tree: recipes, dotted overrides, validation messages."""
import pytest

from lamo_scale.config import Config, ConfigError, describe_options, flatten, from_dict, load_config, to_dict


def test_defaults_are_the_paper_recipe():
    cfg = load_config()
    assert (cfg.model.backbone, cfg.model.finetune, cfg.model.embedding) == ("gpt2", "lora", "mlp")
    assert (cfg.model.lora.rank, cfg.model.lora.alpha, cfg.model.lora.dropout) == (16, 32.0, 0.1)
    assert (cfg.data.context_len, cfg.train.batch_size, cfg.train.lr) == (20, 64, 1e-4)
    assert (cfg.train.weight_decay, cfg.train.warmup_steps, cfg.train.grad_clip) == (1e-5, 2500, 0.25)
    assert cfg.loss.language_weight == 0.1 and cfg.text.block_size == 1024 and cfg.text.batch_size == 2


def test_recipe_and_dotted_overrides():
    cfg = load_config("quickstart", ["train.steps=200", "model.lora.rank=8", "eval.target_returns=[10, 20.5]"])
    assert cfg.recipe == "quickstart"
    assert cfg.train.steps == 200 and cfg.model.lora.rank == 8
    assert cfg.eval.target_returns == [10.0, 20.5]
    assert cfg.data.context_len == 5  # from the recipe file


def test_yaml_boolean_spellings_of_choices_are_read_as_the_choice():
    # YAML 1.1 reads `no` as False: `train.mixed_precision=no` is what a user types
    assert load_config("quickstart", ["train.mixed_precision=no"]).train.mixed_precision == "no"
    with pytest.raises(ConfigError, match="mixed_precision: True is not one of"):
        load_config("quickstart", ["train.mixed_precision=yes"])


def test_unknown_key_names_valid_keys_and_suggests():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.stpes=5"])
    msg = str(err.value)
    assert "train.stpes" in msg and "Did you mean 'steps'" in msg and "batch_size" in msg


def test_unknown_section_suggests():
    with pytest.raises(ConfigError, match="Did you mean 'model'"):
        load_config(None, ["modle.backbone=gpt2"])


@pytest.mark.parametrize("override, fragment", [
    ("train.steps=abc", "train.steps: expected int"),
    ("model.finetune=partial", "'partial' is not one of 'lora', 'full', 'frozen'"),
    ("train.lr=true", "train.lr: expected float"),
    ("data.data_ratio=0", "data.data_ratio must be in (0, 1]"),
    ("train.batch_size=10", "must be divisible by train.grad_accum"),
])
def test_wrong_values_refused(override, fragment):
    extra = ["train.grad_accum=4"] if "batch_size" in override else []
    with pytest.raises(ConfigError) as err:
        load_config(None, [override] + extra)
    assert fragment in str(err.value)


def test_impossible_combinations_refused():
    with pytest.raises(ConfigError, match="frozen random"):
        load_config(None, ["model.finetune=frozen", "model.pretrained=false", "loss.language_weight=0"])
    with pytest.raises(ConfigError, match="language loss"):
        load_config(None, ["model.finetune=frozen"])
    with pytest.raises(ConfigError, match="LoRA settings apply only"):
        load_config(None, ["model.finetune=full", "model.lora.target_modules=[c_attn]"])


def test_missing_recipe_lists_known():
    with pytest.raises(ConfigError, match="lamo-scale recipes lists them"):
        load_config("no-such-recipe")
    with pytest.raises(ConfigError, match="Close: quickstart"):
        load_config("quickstrat")


def test_roundtrip_and_flatten():
    cfg = load_config("quickstart")
    assert from_dict(to_dict(cfg)) == cfg
    flat = flatten(cfg)
    assert flat["model.lora.rank"] == 16 and flat["train.steps"] == cfg.train.steps


def test_every_option_documented():
    rows = describe_options(Config)
    assert len(rows) > 40
    undocumented = [key for key, _, _, doc in rows if not doc]
    assert undocumented == []


def test_several_recipes_merge_left_to_right(tmp_path):
    overlay = tmp_path / "overlay.yaml"
    overlay.write_text("model:\n  embedding: linear\ntrain:\n  steps: 7\n")
    cfg = load_config(["quickstart", str(overlay)], ["train.steps=9"])
    assert cfg.recipe == "quickstart+overlay"
    assert cfg.model.embedding == "linear" and cfg.train.steps == 9 and cfg.data.context_len == 5


def test_base_inheritance_and_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b\ntrain: {steps: 3}\n")
    (tmp_path / "b.yaml").write_text("base: quickstart\ntrain: {steps: 5, lr: 0.5}\n")
    cfg = load_config(str(tmp_path / "a.yaml"))
    assert cfg.train.steps == 3 and cfg.train.lr == 0.5 and cfg.data.context_len == 5
    (tmp_path / "c.yaml").write_text("base: c\n")
    with pytest.raises(ConfigError, match="inherits from itself"):
        load_config(str(tmp_path / "c.yaml"))
