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


@pytest.mark.parametrize(
    "text, key",
    [
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
        # no value that only fails after the model loads, or never (every float finite, p below 1)
        ("train: {max_grad_norm: -1}", "train.max_grad_norm: Input should be greater than 0"),
        ("train: {max_grad_norm: 0}", "train.max_grad_norm: Input should be greater than 0"),
        ("train: {lr: .inf}", "train.lr: Input should be a finite number"),
        ("train: {weight_decay: .nan}", "train.weight_decay: Input should be a finite number"),
        ("controller: {delta_up: .nan}", "controller.delta_up: Input should be a finite number"),
        ("lora: {alpha: .inf}", "lora.alpha: Input should be a finite number"),
        ("canary: {temperature: .nan}", "canary.temperature: Input should be a finite number"),
        ("judge: {timeout_s: .inf}", "judge.timeout_s: Input should be a finite number"),
        ("controller: {p_max: 1.0, p_init: 1.0}", r"controller.p_max: must be in [0, 1), got 1.0"),
        ("eval: {sets: []}", "eval.sets: List should have at least 1 item"),
        ("eval: {sets: [general, general]}", "eval.sets: must not repeat a set"),
        ("seed: true", "seed: expected a number, got the boolean true"),
        ("train: {lr: true}", "train.lr: expected a number, got the boolean true"),
        ("judge: {backend: openai}", "judge.model: the openai judge backend needs judge.model"),
        ("judge: {backend: transformers}", "judge.model: the transformers judge backend needs judge.model"),
        ("model: {device: gpu0}", "model.device: must be auto, cpu, mps, cuda or cuda:N, got 'gpu0'"),
    ],
)
def test_invalid_values_name_key_and_file(tmp_path, text, key):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        load_config([path])
    assert f"{path}: {key}" in str(err.value) and "\n" not in str(err.value)


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


def test_fixed_p_of_one_in_the_registry_is_refused(monkeypatch):
    from canary_lib import methods

    monkeypatch.setitem(methods.METHODS, "fixed_100", methods.fixed_p_method(1.0))
    with pytest.raises(ConfigError, match=r"method.name: method 'fixed_100' has fixed p = 1.0 .* must be in \[0, 1\)"):
        load_config(overrides=["method.name=fixed_100"])


def test_duplicate_yaml_keys_are_errors(tmp_path):
    path = write(tmp_path, "dup.yaml", "controller:\n  K: 3\n  K: 5\n")
    with pytest.raises(ConfigError, match=rf"{path}: not valid YAML: .*duplicate key 'K' \(line 3\)"):
        load_config([path])
    with pytest.raises(ConfigError, match="duplicate key 'seed'"):
        load_config([write(tmp_path, "dup2.yaml", "seed: 1\nseed: 2\n")])


def test_broken_override_value_and_non_utf8_file_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"override 'controller.K=\[1,': the value is not valid YAML") as err:
        load_config(overrides=["controller.K=[1,"])
    assert "\n" not in str(err.value)
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes("seed: 1 # caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=f"{bad}: not UTF-8 text"):
        load_config([bad])


def test_cross_field_errors_blame_the_files_that_set_the_fields(tmp_path):
    profile = write(tmp_path, "profile.yaml", "train: {batch_size: 16, micro_batch_size: 16, lr: 0.001}\n")
    other = write(tmp_path, "other.yaml", "train: {micro_batch_size: 5}\n")
    with pytest.raises(ConfigError) as err:
        load_config([profile, other], ["train.batch_size=12"])
    assert f"--set train.batch_size=12, {other}: train.batch_size: " in str(err.value)
    assert str(profile) not in str(err.value)
    method = write(tmp_path, "fixed_mean.yaml", "method: {name: fixed_mean}\n")
    with pytest.raises(ConfigError) as err:
        load_config([write(tmp_path, "p.yaml", "method: {name: canary}\n"), method])
    assert f"invalid configuration: {method}: method.reference_run: " in str(err.value)
