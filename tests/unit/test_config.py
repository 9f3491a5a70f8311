"""The config loader: one precedence (defaults < YAML < environment < --set < flags), errors that name
the file and the key path, the built-in profiles, GPU lists, and dump -> load round trips."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from dynamo_cli.config.gpus import parse_gpu_list
from dynamo_cli.config.loader import (
    builtin_profiles,
    dump_config,
    env_overrides,
    load_config,
    parse_set,
    profiles_dir,
)
from dynamo_cli.config.models import DynamoConfig
from dynamo_cli.errors import ConfigError, UsageError


def write_yaml(path: Path, data: object) -> str:
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


@pytest.fixture
def profile(tmp_path: Path) -> str:
    """A profile that changes every key the precedence tests look at away from its default."""
    return write_yaml(
        tmp_path / "p.yaml",
        {
            "namespace": "from-yaml",
            "engine": "mocker",
            "infra": {"etcd": "http://yaml:2379", "nats": "nats://yaml:4222"},
            "frontend": {"port": 1111, "host": "10.0.0.1"},
            "router": {"mode": "random", "replicas": 2},
            "workers": {"count": 3},
        },
    )


# ---- defaults and built-in profiles ------------------------------------------------------------------


def test_no_profile_and_no_sources_gives_the_model_defaults() -> None:
    assert load_config(None, environ={}) == DynamoConfig()


def test_builtin_profiles_are_listed_and_validate() -> None:
    names = builtin_profiles()
    assert {"agg", "disagg"} <= set(names)
    for name in ("agg", "disagg"):
        raw = yaml.safe_load((profiles_dir() / f"{name}.yaml").read_text())
        DynamoConfig.model_validate(raw)  # the file alone, without any other source
        cfg = load_config(name, environ={}).model_dump()
        for section, values in raw.items():  # every key written is the value in force
            for key, value in values.items() if isinstance(values, dict) else [(None, values)]:
                got = cfg[section] if key is None else cfg[section][key.replace("-", "_")]
                assert got == value, (name, section, key)


def test_a_profile_can_be_given_as_a_path(profile: str) -> None:
    cfg = load_config(profile, environ={})
    assert cfg.namespace == "from-yaml"
    assert cfg.frontend.port == 1111
    # keys the file does not mention keep their defaults
    assert cfg.frontend.request_timeout_s == DynamoConfig().frontend.request_timeout_s
    assert cfg.mocker == DynamoConfig().mocker


# ---- precedence ---------------------------------------------------------------------------------------


def test_yaml_overrides_defaults(profile: str) -> None:
    cfg = load_config(profile, environ={})
    assert (cfg.router.mode, cfg.router.replicas, cfg.workers.count) == ("random", 2, 3)
    assert cfg.infra.etcd == "http://yaml:2379"


def test_environment_overrides_yaml(profile: str) -> None:
    env = {
        "ETCD_ENDPOINTS": "http://env:2379",
        "NATS_SERVER": "nats://env:4222",
        "DYNAMO_NAMESPACE": "from-env",
        "DYNAMO__FRONTEND__PORT": "2222",
        "DYNAMO__ROUTER__MODE": "round-robin",
    }
    cfg = load_config(profile, environ=env)
    assert cfg.infra.etcd == "http://env:2379"
    assert cfg.infra.nats == "nats://env:4222"
    assert cfg.namespace == "from-env"
    assert cfg.frontend.port == 2222  # parsed as an int, not left a string
    assert cfg.router.mode == "round-robin"
    assert cfg.frontend.host == "10.0.0.1"  # untouched by the environment


def test_unrelated_and_empty_environment_variables_are_ignored(profile: str) -> None:
    env = {"ETCD_ENDPOINTS": "", "DYNAMO_": "x", "DYNAMO__": "x", "HOME": "/root", "PATH": "/bin"}
    assert load_config(profile, environ=env) == load_config(profile, environ={})


def test_set_overrides_environment(profile: str) -> None:
    env = {"DYNAMO__FRONTEND__PORT": "2222", "DYNAMO_NAMESPACE": "from-env"}
    cfg = load_config(profile, environ=env, sets=["frontend.port=3333"])
    assert cfg.frontend.port == 3333
    assert cfg.namespace == "from-env"


def test_flags_override_set(profile: str) -> None:
    cfg = load_config(
        profile,
        environ={"DYNAMO_NAMESPACE": "from-env"},
        sets=["frontend.port=3333", "namespace=from-set", "workers.count=5"],
        flags={"frontend.port": 4444, "namespace": None, "workers.count": None},
    )
    assert cfg.frontend.port == 4444
    # flags that were not given (None) do not override anything
    assert cfg.namespace == "from-set"
    assert cfg.workers.count == 5


def test_a_later_set_wins_over_an_earlier_one() -> None:
    cfg = load_config(None, environ={}, sets=["router.mode=random", "router.mode=round-robin"])
    assert cfg.router.mode == "round-robin"


def test_environment_is_not_read_from_os_when_environ_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYNAMO__FRONTEND__PORT", "7777")
    assert load_config(None, environ={}).frontend.port == DynamoConfig().frontend.port
    assert load_config(None).frontend.port == 7777  # environ=None means os.environ


def test_env_overrides_map_names_to_dotted_keys() -> None:
    got = dict(env_overrides({"DYNAMO__MOCKER__SPEEDUP_RATIO": "2.5", "ETCD_ENDPOINTS": "http://e:1"}))
    assert got == {"mocker.speedup_ratio": 2.5, "infra.etcd": "http://e:1"}


# ---- --set parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("frontend.port=9000", ("frontend.port", 9000)),
        ("mocker.enable_prefix_caching=false", ("mocker.enable_prefix_caching", False)),
        ("mocker.enable_prefix_caching=true", ("mocker.enable_prefix_caching", True)),
        ("mocker.speedup_ratio=2.5", ("mocker.speedup_ratio", 2.5)),
        ("mocker.prefill_ms=[1, 2, 3]", ("mocker.prefill_ms", [1, 2, 3])),
        ("router.mode=random", ("router.mode", "random")),
        ("model=", ("model", None)),  # empty text for an optional text key: unset
        ("infra.etcd=http://h:2379", ("infra.etcd", "http://h:2379")),  # only the first '=' splits
        ("vllm.extra_args={a: 1}", ("vllm.extra_args", {"a": 1})),
        (" router.mode =random", ("router.mode", "random")),
    ],
)
def test_parse_set_reads_values_as_yaml(item: str, expected: tuple[str, object]) -> None:
    assert parse_set([item]) == [expected]


def test_set_values_reach_the_config_typed() -> None:
    cfg = load_config(
        None,
        environ={},
        sets=[
            "frontend.port=9000",
            "mocker.enable_prefix_caching=false",
            "mocker.prefill_ms=[1, 2, 3]",
            "vllm.extra_args={enforce_eager: true}",
        ],
    )
    assert cfg.frontend.port == 9000
    assert cfg.mocker.enable_prefix_caching is False
    assert cfg.mocker.prefill_ms == (1.0, 2.0, 3.0)
    assert cfg.vllm.extra_args == {"enforce_eager": True}


@pytest.mark.parametrize("item", ["router.mode", "=random", "  =x", ""])
def test_set_without_key_value_is_a_config_error(item: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, environ={}, sets=[item])
    assert "is not key=value" in e.value.message
    assert e.value.hint
    assert e.value.exit_code == 2


@pytest.mark.parametrize("item", ["router..mode=x", ".mode=x", "router.=x"])
def test_set_with_an_empty_path_segment_is_a_config_error(item: str) -> None:
    with pytest.raises(ConfigError, match="is not a key path"):
        load_config(None, environ={}, sets=[item])


def test_set_below_a_value_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, environ={}, sets=["namespace=x", "namespace.deeper=1"])
    assert "'namespace' is a value, not a section" in e.value.message
    assert e.value.message.startswith("--set")


def test_set_with_an_unknown_key_names_the_key_and_the_layer() -> None:
    with pytest.raises(ConfigError) as e:
        load_config("agg", environ={}, sets=["router.bogus=1"])
    msg = e.value.message
    assert "agg.yaml + --set" in msg
    assert "router.bogus: unknown key" in msg


def test_set_with_a_bad_value_names_the_key() -> None:
    with pytest.raises(ConfigError) as e:
        load_config("agg", environ={}, sets=["router.mode=bogus"])
    assert "router.mode:" in e.value.message
    assert "round-robin" in e.value.message  # says what is allowed


def test_bad_environment_value_names_the_environment_layer() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, environ={"DYNAMO__FRONTEND__PORT": "99999"})
    assert "environment" in e.value.message
    assert "frontend.port" in e.value.message


def test_bad_flag_value_names_the_flags_layer() -> None:
    with pytest.raises(ConfigError) as e:
        load_config(None, environ={}, flags={"engine": "tensorrt"})
    assert "flags" in e.value.message
    assert "engine" in e.value.message


@pytest.mark.parametrize("item", ["workers.gpus=0", "namespace=2024"])
def test_set_a_number_on_a_string_key(item: str) -> None:
    key, _, value = item.partition("=")
    cfg = load_config(None, environ={}, sets=[item])
    section, _, leaf = key.rpartition(".")
    node = getattr(cfg, section) if section else cfg
    assert getattr(node, leaf) == value


# ---- errors in YAML files -------------------------------------------------------------------------


def test_unknown_key_in_a_file_names_the_file_and_the_key_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"router": {"mode": "random", "modee": "x"}})
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert path in e.value.message
    assert "router.modee: unknown key" in e.value.message
    assert e.value.exit_code == 2


def test_bad_value_in_a_file_names_the_file_and_the_key_path(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"router": {"mode": "bogus"}})
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert path in e.value.message
    assert "router.mode" in e.value.message


def test_a_file_error_is_reported_even_when_a_later_source_would_fix_it(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"router": {"mode": "bogus"}})
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={}, sets=["router.mode=random"])
    assert "+ --set" not in e.value.message
    assert path in e.value.message


def test_several_errors_are_all_mentioned(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"nope": 1, "frontend": {"port": -1}})
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert "nope: unknown key" in e.value.message
    assert "frontend.port" in e.value.message
    assert "1 more" in e.value.message


def test_cross_field_check_is_an_error_not_a_rewrite(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", {"mocker": {"block_size": 64, "max_num_batched_tokens": 32}})
    with pytest.raises(ConfigError, match="max_num_batched_tokens must be at least block_size"):
        load_config(path, environ={})


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_a_file_that_is_not_a_mapping_is_a_config_error(tmp_path: Path, text: str) -> None:
    path = write_yaml(tmp_path / "list.yaml", text)
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert path in e.value.message
    assert "mapping" in e.value.message


def test_invalid_yaml_is_a_config_error_naming_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "broken.yaml", "router: {mode: random\nworkers: [\n")
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert path in e.value.message
    assert "not valid YAML" in e.value.message
    assert e.value.hint


def test_an_empty_file_means_all_defaults(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "empty.yaml", "# nothing here\n")
    assert load_config(path, environ={}) == DynamoConfig()


def test_unknown_profile_name_lists_the_builtins() -> None:
    with pytest.raises(ConfigError) as e:
        load_config("nope", environ={})
    assert "unknown profile 'nope'" in e.value.message
    assert e.value.hint is not None
    assert "agg" in e.value.hint and "disagg" in e.value.hint


def test_missing_profile_file_is_a_config_error(tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(missing, environ={})


def test_config_error_is_a_usage_error() -> None:
    assert issubclass(ConfigError, UsageError)
    assert ConfigError("x").exit_code == 2


# ---- GPU lists --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("0-3,6", [0, 1, 2, 3, 6]),
        ("0", [0]),
        ("2,0,5", [2, 0, 5]),
        (" 1 - 2 , 4 ", [1, 2, 4]),
        ("3-3", [3]),
        ("10-12", [10, 11, 12]),
    ],
)
def test_parse_gpu_list(spec: str, expected: list[int]) -> None:
    assert parse_gpu_list(spec) == expected


@pytest.mark.parametrize(
    ("spec", "why"),
    [
        ("a", "not a GPU list"),
        ("", "not a GPU list"),
        ("1,", "not a GPU list"),
        ("-1", "not a GPU list"),
        ("0-", "not a GPU list"),
        ("3-1", "backwards"),
        ("1,1", "twice"),
        ("0-2,2", "twice"),
    ],
)
def test_parse_gpu_list_rejects(spec: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_gpu_list(spec)


def test_bad_gpu_list_in_a_profile_is_a_config_error(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "gpus.yaml", {"workers": {"gpus": "3-1"}})
    with pytest.raises(ConfigError) as e:
        load_config(path, environ={})
    assert "workers.gpus" in e.value.message
    assert "backwards" in e.value.message


def test_good_gpu_list_is_kept_as_written() -> None:
    assert load_config(None, environ={}, sets=["workers.gpus=0-3,6"]).workers.gpus == "0-3,6"


# ---- dump -> load ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sets",
    [
        [],
        [
            "namespace=ns-1",
            "model=/models/x",
            "engine=vllm",
            "router.mode=random",
            "router.seed=7",
            "workers.gpus=0-3",
            "mocker.speedup_ratio=1e-3",
            "mocker.prefill_ms=[0.000001, 2, 3.5]",
            "vllm.extra_args={enforce_eager: true, max_model_len: 1024, name: '10'}",
            "frontend.request_timeout_s=0.25",
            "log_level=debug",
        ],
    ],
    ids=["defaults", "many-changes"],
)
def test_dump_config_round_trips_through_load(tmp_path: Path, sets: list[str]) -> None:
    cfg = load_config("agg", environ={}, sets=sets)
    text = dump_config(cfg)
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    again = load_config(str(path), environ={})
    assert again == cfg
    # every section is written out, so the dump documents every key
    assert set(yaml.safe_load(text)) == set(DynamoConfig.model_fields)


# seed 001's four disagg keys: shown in disagg.yaml on purpose, defaults or not.
SHOWN_ON_PURPOSE = {
    ("disagg", "disagg.remote_prefill"),
    ("disagg", "disagg.conditional_disagg"),
    ("disagg", "disagg.max_local_prefill_length"),
    ("disagg", "disagg.max_prefill_queue_size"),
}


@pytest.mark.parametrize("profile", ["agg", "disagg"])
def test_profiles_hold_only_what_differs_from_the_defaults(profile: str) -> None:
    defaults = DynamoConfig().model_dump()
    written = yaml.safe_load((profiles_dir() / f"{profile}.yaml").read_text())
    restated = []

    def walk(value: object, path: list[str]) -> None:
        if isinstance(value, dict):
            for key, sub in value.items():
                walk(sub, [*path, str(key).replace("-", "_")])
            return
        default: object = defaults
        for key in path:
            default = default[key]  # type: ignore[index]
        key = ".".join(path)
        if value == default and (profile, key) not in SHOWN_ON_PURPOSE:
            restated.append(key)

    walk(written, [])
    assert restated == [], f"{profile}.yaml restates defaults: {restated}"


def test_the_kv_block_size_comes_from_the_engine() -> None:
    """One function knows it: the mocker's own setting, vLLM's when set, else vLLM's default (16 on a
    GPU, 128 on CPU, as the config's help says)."""
    from dynamo_cli.engines import kv_block_size

    mocker = DynamoConfig.model_validate({"engine": "mocker", "mocker": {"block_size": 32}})
    assert kv_block_size(mocker, on_gpu=True) == 32
    vllm = DynamoConfig.model_validate({"engine": "vllm"})
    assert (kv_block_size(vllm, on_gpu=True), kv_block_size(vllm, on_gpu=False)) == (16, 128)
    assert "16 on GPU, 128 on CPU" in (
        DynamoConfig.model_fields["vllm"].annotation.model_fields["block_size"].description or ""
    )  # type: ignore[union-attr]
    pinned = DynamoConfig.model_validate({"engine": "vllm", "vllm": {"block_size": 64}})
    assert kv_block_size(pinned, on_gpu=False) == 64
