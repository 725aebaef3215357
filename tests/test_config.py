"""Configuration loading: merge order, overrides, and every invalid parameter named with its key and file."""

import pytest

from canary_lib.config import ConfigError, RunConfig, dump_config, load_config


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_merge_order_and_overrides(tmp_path):
    a = write(tmp_path, "a.yaml", "seed: 1\ncontroller: {K: 10, alpha: 0.3}\n")
    b = write(tmp_path, "b.yaml", "controller: {K: 20}\nmethod: {name: delayed, delay_cycles: 3}\n")
    cfg = load_config([a, b], ["seed=7", "controller.delta_up=0.1", "train.max_target_examples=null"])
    assert (cfg.seed, cfg.controller.K, cfg.controller.alpha, cfg.controller.delta_up) == (7, 20, 0.3, 0.1)
    assert cfg.method.name == "delayed" and cfg.method.delay_cycles == 3


@pytest.mark.parametrize("text, key", [
    ("controller: {alpha: 0}", "controller.alpha"),
    ("controller: {alpha: 1.5}", "controller.alpha"),
    ("controller: {r_low: 0.1, r_high: 0.05}", "controller.r_low"),
    ("controller: {p_max: 1.2}", "controller.p_max"),
    ("controller: {p_min: -0.1}", "controller.p_min"),
    ("controller: {p_min: 0.3, p_max: 0.2, p_init: 0.25}", "controller.p_min"),
    ("controller: {p_init: 0.5}", "controller.p_init"),
    ("controller: {delta_up: -0.01}", "controller.delta_up"),
    ("controller: {delta_down: -0.01}", "controller.delta_down"),
    ("controller: {K: 0}", "controller.K"),
    ("controller: {K: ten}", "controller.K"),
    ("controler: {K: 3}", "controler"),
    ("train: {batch_size: 16, micro_batch_size: 5}", "train"),
    ("method: {name: shuffled}", "method.reference_run"),
    ("method: {name: bogus}", "method.name"),
    ("method: {name: fixed}", "method.name: unknown method 'fixed' (Fixed 5% is now fixed_5"),
    ("method: {name: fixed_5, fixed_p: 0.1}", "method.fixed_p: unknown key"),
])
def test_invalid_values_name_key_and_file(tmp_path, text, key):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert f"{path}: {key}" in str(err.value)


def test_override_errors_name_the_override():
    with pytest.raises(ConfigError, match=r"--set controller.alpha=2: controller.alpha"):
        load_config(overrides=["controller.alpha=2"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(overrides=["seed"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "nope.yaml"])
    with pytest.raises(ConfigError, match="mapping"):
        load_config([write(tmp_path, "list.yaml", "- 1\n- 2\n")])


def test_dump_round_trips(tmp_path):
    cfg = load_config(overrides=["seed=5", "controller.K=12"])
    again = load_config([write(tmp_path, "c.yaml", dump_config(cfg))])
    assert again == cfg and isinstance(again, RunConfig)
