"""Study spec validation: the shipped specs parse; every bad spec names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.spec import MAX_SPEC_BYTES, load_spec, parse_spec
from study.spec_core import masked
from trainables.schema import ConfigError

ROOT = Path(__file__).resolve().parents[2]
GOOD = """
name: ok
model: {name: mlp}
search:
  space:
    train.lr: {loguniform: [1.0e-3, 1.0e-1]}
"""

# (name, YAML, text the error message must contain: the field and what is allowed)
BAD: list[tuple[str, str, str]] = [
    ("yaml syntax", "name: x\nsearch: {space: [\n", "line"),
    ("not a mapping", "- a\n- b\n", "expected a mapping"),
    ("no name", "search: {space: {train.lr: {uniform: [0.1, 0.2]}}}", "name: required"),
    ("name with slash", GOOD.replace("name: ok", "name: a/b"), "name:"),
    ("name with space", GOOD.replace("name: ok", "name: 'a b'"), "name:"),
    ("name upper case", GOOD.replace("name: ok", "name: Digits"), "name:"),
    ("unknown top key", GOOD + "extra: 1\n", "extra: unknown key"),
    ("unknown train key", GOOD + "train: {lrr: 0.1}\n", "train.lrr: unknown key"),
    ("no search", "name: x\nmodel: {name: mlp}\n", "search: required"),
    ("empty space", "name: x\nmodel: {name: mlp}\nsearch: {space: {}}\n", "search.space"),
    ("lr zero", GOOD + "train: {lr: 0}\n", "train.lr: must be > 0"),
    ("lr negative", GOOD + "train: {lr: -0.1}\n", "train.lr"),
    ("lr string", GOOD + "train: {lr: fast}\n", "train.lr: expected a finite number"),
    ("epochs float", GOOD + "train: {epochs: 2.5}\n", "train.epochs: expected an integer"),
    ("epochs zero", GOOD + "train: {epochs: 0}\n", "train.epochs"),
    ("batch zero", GOOD + "train: {batch_size: 0}\n", "train.batch_size"),
    ("bool as int", GOOD + "train: {epochs: true}\n", "train.epochs"),
    ("coef negative", GOOD + "penalty: {kind: fisher, coef: -1}\n", "penalty.coef"),
    ("unknown penalty", GOOD + "penalty: {kind: l2, coef: 1}\n", "penalty.kind"),
    ("recompute zero", GOOD + "penalty: {kind: fisher, coef: 0.1, recompute_every: 0}\n", "penalty.recompute_every"),
    ("unknown model", GOOD.replace("name: mlp", "name: resnet9000"), "model.name: unknown model"),
    ("unknown model option", GOOD.replace("{name: mlp}", "{name: mlp, padding: same}"), "model.padding: unknown key"),
    ("paper padding on 8 px", GOOD.replace("{name: mlp}", "{name: simple_cnn, padding: paper}"), "16 px"),
    ("unknown dataset", GOOD + "data: {name: imagenet22k}\n", "data.name: unknown data set"),
    ("val fraction 1", GOOD + "data: {val_fraction: 1.0}\n", "data.val_fraction"),
    ("label noise 1", GOOD + "data: {label_noise: 1.0}\n", "data.label_noise"),
    ("fisher samples 0", GOOD + "fisher: {samples: 0}\n", "fisher.samples"),
    ("fisher labels", GOOD + "fisher: {labels: true_labels}\n", "fisher.labels"),
    ("label samples with exact", GOOD + "fisher: {labels: exact, label_samples: 4}\n", "fisher.label_samples"),
    ("label samples 0", GOOD + "fisher: {labels: sampled, label_samples: 0}\n", "fisher.label_samples"),
    ("spectrum k 0", GOOD + "fisher: {spectrum: {k: 0}}\n", "fisher.spectrum.k"),
    ("spectrum unknown key", GOOD + "fisher: {spectrum: {top: 3}}\n", "fisher.spectrum.top"),
    ("schedule budget 0", GOOD + "fisher: {schedule: {budget: 0}}\n", "fisher.schedule.budget"),
    ("dense every 0", GOOD + "fisher: {schedule: {dense_every: 0}}\n", "fisher.schedule.dense_every"),
    ("epsilon negative", GOOD + "fisher: {epsilon: -1}\n", "fisher.epsilon"),
    ("loguniform lo 0", GOOD.replace("[1.0e-3, 1.0e-1]", "[0, 1.0e-1]"), "search.space.train.lr.loguniform"),
    ("loguniform reversed", GOOD.replace("[1.0e-3, 1.0e-1]", "[0.1, 0.01]"), "lo < hi"),
    ("domain unknown", GOOD.replace("{loguniform: [1.0e-3, 1.0e-1]}", "{normal: [0, 1]}"), "search.space.train.lr"),
    ("grid empty", GOOD.replace("{loguniform: [1.0e-3, 1.0e-1]}", "{grid: []}"), "non-empty list"),
    (
        "searched value out of range",
        GOOD.replace("{loguniform: [1.0e-3, 1.0e-1]}", "{uniform: [-1, 1]}"),
        "search.space.train.lr: train.lr",
    ),
    ("searched unknown field", GOOD.replace("train.lr:", "train.learning_rate:"), "not a trial field"),
    (
        "int on float bounds",
        GOOD.replace("train.lr: {loguniform: [1.0e-3, 1.0e-1]}", "train.epochs: {int: [1.5, 3]}"),
        "integers",
    ),
    (
        "uniform on an integer field",
        GOOD.replace("train.lr: {loguniform: [1.0e-3, 1.0e-1]}", "train.batch_size: {uniform: [16, 64]}"),
        "integer field",
    ),
    (
        "searching the model",
        GOOD.replace("train.lr: {loguniform: [1.0e-3, 1.0e-1]}", "model.name: {choice: [mlp, simple_cnn]}"),
        "one study per model",
    ),
    ("num_samples zero", GOOD + "  num_samples: 0\n", "search.num_samples"),
    ("max_concurrent zero", GOOD + "  max_concurrent: 0\n", "search.max_concurrent"),
    ("metric test", GOOD + "  metric: test_accuracy\n", "search.metric"),
    ("mode", GOOD + "  mode: maximise\n", "search.mode"),
    ("sampler", GOOD + "  sampler: cmaes\n", "search.sampler"),
    ("grid sampler on range", GOOD + "  sampler: grid\n", "sampler grid"),
    ("seed sampled", GOOD + "    train.seed: {int: [0, 3]}\n", "seeds are never sampled"),
    ("seeds not dividing", GOOD + "    train.seed: {grid: [0, 1, 2]}\n  num_samples: 4\n", "multiple of the 3 seeds"),
    (
        "seeds with asha",
        GOOD + "    train.seed: {grid: [0, 1]}\n  num_samples: 4\n  scheduler: {asha: {grace_period: 1}}\n",
        "search.scheduler",
    ),
    (
        "scheduler unknown",
        GOOD + "  scheduler: hyperband\n",
        "search.scheduler: must be 'none' or a mapping of ['asha']",
    ),
    ("scheduler empty", GOOD + "  scheduler: {}\n", "search.scheduler.asha: required"),
    ("scheduler two", GOOD + "  scheduler: {asha: {}, pbt: {}}\n", "search.scheduler.pbt: unknown key"),
    ("asha bad key", GOOD + "  scheduler: {asha: {grace: 1}}\n", "search.scheduler.asha.grace: unknown key"),
    ("cpu zero", GOOD + "resources: {cpu: 0}\n", "resources.cpu"),
    ("cpu below ray's fraction", GOOD + "resources: {cpu: 0.00001}\n", "resources.cpu"),
    ("gpu negative", GOOD + "resources: {gpu: -1}\n", "resources.gpu"),
    ("gpu 1.5", GOOD + "resources: {gpu: 1.5}\n", "resources.gpu"),
    ("tracking plain path", GOOD + "tracking: {uri: ./mlruns}\n", "tracking.uri"),
    ("tracking file uri", GOOD + "tracking: {uri: 'file:///tmp/mlruns'}\n", "tracking.uri"),
    ("storage plain path", GOOD + "  storage: optuna.db\n", "search.storage: must be a database URL for Optuna"),
    ("storage http", GOOD + "  storage: 'http://127.0.0.1:5000'\n", "search.storage: must be a database URL"),
    ("storage journal file", GOOD + "  storage: 'file:///tmp/journal.log'\n", "postgresql://"),
    ("storage not text", GOOD + "  storage: 5432\n", "search.storage: expected a string"),
    ("augment on digits", GOOD + "data: {augment: true}\n", "data.augment"),
    ("unknown data set", GOOD + "data: {name: imagenet}\n", "data.name"),
    ("cache dir relative", GOOD + "data: {name: cifar10, cache_dir: cache}\n", "data.cache_dir"),
    ("cache dir under a file", GOOD + "data: {name: cifar10, cache_dir: /etc/hostname/cache}\n", "data.cache_dir"),
    ("vgg on 8 px digits", GOOD.replace("model: {name: mlp}", "model: {name: vgg11}"), "32"),
    ("wrn depth", GOOD.replace("model: {name: mlp}", "model: {name: wrn, depth: 17}"), "model.depth"),
    ("densenet growth", GOOD.replace("model: {name: mlp}", "model: {name: densenet_bc, growth: 0}"), "model.growth"),
    ("key twice", GOOD + "  space: {train.epochs: {grid: [1, 2]}}\n", "line 7: 'space' appears twice"),
    ("name twice", GOOD + "name: other\n", "'name' appears twice"),
    ("lr infinite", GOOD + "train: {lr: .inf}\n", "train.lr: expected a finite number, got inf"),
    ("epsilon infinite", GOOD + "fisher: {epsilon: .inf}\n", "fisher.epsilon: expected a finite number"),
    ("range to infinity", GOOD.replace("[1.0e-3, 1.0e-1]", "[1.0e-3, .inf]"), "both finite"),
    ("grid twice the same", GOOD + "    train.batch_size: {grid: [16, 16, 32]}\n", "16 is listed twice"),
    ("seed grid twice", GOOD + "    train.seed: {grid: [0, 0]}\n", "0 is listed twice"),
    ("search a section", GOOD + "    fisher.spectrum: {choice: [null, {k: 2}]}\n", "options are single values"),
    ("search seed negative", GOOD + "  seed: -1\n", "search.seed: must be an integer in [0, 2^32)"),
    ("search seed too large", GOOD + "  seed: 4294967296\n", "search.seed"),
    ("loss maximised", GOOD + "  metric: val_loss\n", "search.mode: must be min with search.metric: val_loss"),
    ("coef of no penalty", GOOD + "    penalty.coef: {loguniform: [1.0e-3, 1.0e-1]}\n", "penalty.kind is none"),
    ("keys of mixed types", GOOD + "train: {1: 2, lrr: 3}\n", "unknown key"),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD, ids=[c[0] for c in BAD])
def test_bad_spec_names_the_field(tmp_path: Path, case: str, text: str, expected: str) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value).strip()  # one sentence, one line


def test_yaml_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("name: x\nsearch:\n  space: {a: [\n")
    with pytest.raises(ConfigError, match=r"line \d+, column \d+"):
        load_spec(path)


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid_and_round_trip(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert parse_spec(yaml.safe_load(yaml.safe_dump(spec.to_yaml_dict()))) == spec


def test_defaults_follow_the_design(tmp_path: Path) -> None:
    spec = parse_spec(yaml.safe_load(GOOD))
    assert spec.trial.penalty.kind == "none" and spec.trial.penalty.coef == 0
    assert spec.trial.fisher.epsilon == 0.6  # digits' default ε
    assert spec.search.num_samples == 12 and spec.search.max_concurrent == 2
    assert spec.search.sampler == "tpe" and spec.search.scheduler is None
    assert spec.tracking.uri == "sqlite:///mlflow.db"
    assert spec.resources.cpu == 1 and spec.resources.gpu == 0


def test_overrides_are_validated_like_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD)
    assert load_spec(path, {"search.num_samples": 3}).search.num_samples == 3
    with pytest.raises(ConfigError, match=r"search\.num_samples"):
        load_spec(path, {"search.num_samples": 0})


def test_seed_grid_replicates() -> None:
    spec = parse_spec(yaml.safe_load(GOOD + "    train.seed: {grid: [0, 1, 2]}\n  num_samples: 6\n"))
    assert spec.search.seeds == (0, 1, 2) and list(spec.search.searched) == ["train.lr"]


def test_sqlite_uri_made_absolute_and_missing_folder_refused(tmp_path: Path) -> None:
    spec = parse_spec(yaml.safe_load(GOOD))
    assert spec.tracking.resolved(tmp_path).uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    bad = parse_spec(yaml.safe_load(GOOD + "tracking: {uri: 'sqlite:///no/such/dir/m.db'}\n"))
    with pytest.raises(ConfigError, match="does not exist"):
        bad.tracking.resolved(tmp_path)


def test_optuna_storage_is_a_database_url_kept_as_written_or_made_absolute(tmp_path: Path) -> None:
    assert parse_spec(yaml.safe_load(GOOD)).search.storage is None  # the study folder's optuna.db
    url = "postgresql+psycopg://fishtune:s3cret@db.lab:5432/optuna"
    spec = parse_spec(yaml.safe_load(GOOD + f"  storage: '{url}'\n"))
    assert spec.search.storage == url and spec.resolved(tmp_path).search.storage == url
    assert parse_spec(yaml.safe_load(yaml.safe_dump(spec.to_yaml_dict()))) == spec
    local = parse_spec(yaml.safe_load(GOOD + "  storage: 'sqlite:///optuna.db'\n")).resolved(tmp_path)
    assert local.search.storage == f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(ConfigError, match=r"search.storage: the folder .* does not exist"):
        parse_spec(yaml.safe_load(GOOD + "  storage: 'sqlite:///no/such/dir/o.db'\n")).resolved(tmp_path)


def test_a_refused_storage_url_does_not_show_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_spec(yaml.safe_load(GOOD + "  storage: 'postgres://me:s3cret@db/optuna'\n"))  # SQLAlchemy says postgresql
    assert "s3cret" not in str(info.value) and "postgres://me:***@db/optuna" in str(info.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://me:s3cret@db:5432/optuna", "postgresql://me:***@db:5432/optuna"),
        ("postgresql+psycopg://me:p%40ss@db/o", "postgresql+psycopg://me:***@db/o"),
        (
            "postgresql://db/o?user=me&password=s3cret&sslmode=require",
            "postgresql://db/o?user=me&password=***&sslmode=require",
        ),
        ("postgresql://me@db/o", "postgresql://me@db/o"),
        ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
        ("sqlite:////tmp/x:y@z/optuna.db", "sqlite:////tmp/x:y@z/optuna.db"),
    ],
)
def test_masked_hides_only_the_password(url: str, shown: str) -> None:
    assert masked(url) == shown


# (name, file content): files that are not a YAML text file at all
NOT_TEXT: list[tuple[str, bytes]] = [
    ("binary", bytes(range(256)) * 4),
    ("latin-1", "name: café\n".encode("latin-1")),
    ("utf-16", GOOD.encode("utf-16")),
    ("nul bytes", b"name: x\0\0\0\n"),
    ("huge", GOOD.encode() + b"# padding\n" * (MAX_SPEC_BYTES // 10)),
]


@pytest.mark.parametrize(("case", "content"), NOT_TEXT, ids=[c[0] for c in NOT_TEXT])
def test_a_file_that_is_not_a_yaml_text_is_refused_in_one_line(tmp_path: Path, case: str, content: bytes) -> None:
    path = tmp_path / "spec.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    if case == "huge":
        assert "1 MiB" in message


def test_a_spec_just_under_the_size_limit_loads(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    text = GOOD + "#" * (MAX_SPEC_BYTES - len(GOOD.encode()) - 1) + "\n"
    path.write_text(text)
    assert len(path.read_bytes()) == MAX_SPEC_BYTES
    assert load_spec(path).name == "ok"


def test_an_override_applies_under_a_null_section(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(GOOD + "tracking:\n")
    assert load_spec(path, {"tracking.uri": "sqlite:///other.db"}).tracking.uri == "sqlite:///other.db"
