import re

import pytest

from nas_core.config import Params, ParamsError, load_params, missing_datasets, parse_params


def write(tmp_path, text):
    p = tmp_path / "params.yaml"
    p.write_text(text)
    return p


def test_repository_params_file_is_valid():
    from tests.repo_copy import ROOT

    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)


def test_defaults_and_frozen(tmp_path):
    params = load_params(write(tmp_path, "{}"))
    assert params.cost_tables.input_size.hw == (1024, 2048)
    with pytest.raises(Exception):
        params.cost_tables.input_size = 3


@pytest.mark.parametrize("text,message", [
    ("cost_tables:\n  spacez: [small]\n", "cost_tables.spacez: unknown key"),
    ("cost_tables:\n  spaces: [medium]\n",
     "cost_tables.spaces.0: Input should be 'small', 'large' or 'xlarge' (got 'medium')"),
    ("cost_tables:\n  input_size: {height: 100, width: 2048}\n",
     "cost_tables.input_size.height: Input should be a multiple of 16"),
    ("mystery: 1\n", "mystery: unknown key"),
    ("cost_tables:\n  spaces: []\n", "cost_tables.spaces: list at least one space"),
])
def test_errors_name_the_field_and_allowed_values(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)


def test_overrides(tmp_path):
    p = write(tmp_path, "cost_tables:\n  spaces: [small]\n")
    params = load_params(p, ["search.epochs=7", "cost_tables.spaces=[large, xlarge]"])
    assert params.search.epochs == 7 and params.cost_tables.spaces == ("large", "xlarge")
    with pytest.raises(ParamsError, match="with --set search.epochs: "
                                          "search.epochs: Input should be a valid integer"):
        load_params(p, ["search.epochs=many"])
    with pytest.raises(ParamsError, match="expected key.sub=value"):
        load_params(p, ["search.epochs"])


def test_pipeline_dispatch(tmp_path):
    p = write(tmp_path, "pipeline:\n  concurrency: 3\n")
    assert load_params(p).pipeline.dispatch == "subflows"
    assert load_params(p, ["pipeline.dispatch=deployments"]).pipeline.dispatch == "deployments"
    with pytest.raises(ParamsError, match="pipeline.dispatch: Input should be 'subflows' or 'deployments' "
                                          r"\(got 'cluster'\)"):
        load_params(p, ["pipeline.dispatch=cluster"])


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        parse_params([1, 2])


@pytest.mark.parametrize("text,message", [
    ("search:\n  epochs: yes\n", "search.epochs: Input should be a valid integer (got True: YAML reads yes/no/on/off"),
    ("search:\n  epochs: '3'\n", "search.epochs: Input should be a valid integer (got the string '3'"),
    ("search:\n  epochs: 3.0\n", "search.epochs: Input should be a valid integer (got 3.0)"),
    ("data:\n  generate: 1\n", "data.generate: Input should be a valid boolean (got 1)"),
    ("search:\n  alpha: 'high'\n", "search.alpha: Input should be a valid number (got the string 'high'"),
    ("search:\n  alpah: 0.5\n", "search.alpah: unknown key (did you mean 'alpha'? valid keys: space, cost_table,"),
    ("serach: {}\n", "serach: unknown key (did you mean 'search'? valid keys: paths, tracking, data,"),
    ("train:\n  train_fine: {epoch: 3}\n", "train.train_fine.epoch: unknown key (did you mean 'epochs'?"),
    ("search:\n  space: smal\n",
     "search.space: Input should be 'small', 'large' or 'xlarge' (got 'smal'; did you mean 'small'?)"),
])
def test_no_lax_coercion_and_the_nearest_key(tmp_path, text, message):
    with pytest.raises(ParamsError) as e:
        load_params(write(tmp_path, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_numbers_a_user_means_are_read_as_such(tmp_path):
    params = load_params(write(tmp_path, "search:\n  alpha: 1\n  weight_decay: 1e-5\n  scale: [1, 2]\n"))
    assert params.search.alpha == 1.0 and params.search.weight_decay == 1e-5 and params.search.scale == (1.0, 2.0)
    assert load_params(write(tmp_path, "search:\n  cost_table: '1e-5'\n")).search.cost_table == "1e-5"


@pytest.mark.parametrize("text,message", [
    ("search:\n  epochs: 3\n  alpha: 0.5\n  epochs: 4\n", "search.epochs: duplicate key (lines 2 and 4)"),
    ("search: {}\nsample: {}\nsearch: {}\n", "search: duplicate key (lines 1 and 3)"),
    ("train:\n  train_fine: {epochs: 3, epochs: 4}\n", "train.train_fine.epochs: duplicate key (lines 2 and 2)"),
])
def test_a_key_given_twice_is_refused_with_its_lines(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(ParamsError, match=f"^{re.escape(f'{p}: {message}')}"):
        load_params(p)


def test_anchors_and_merge_keys_are_no_duplicates(tmp_path):
    p = write(tmp_path, "train:\n  pretrain_coco: &stage {epochs: 2, schedule: poly}\n"
                        "  train_coarse:\n    <<: *stage\n    epochs: 3\n")
    params = load_params(p)
    assert (params.train.pretrain_coco.epochs, params.train.train_coarse.epochs) == (2, 3)


def test_params_files_that_are_no_params_file(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "bin.yaml").write_bytes(b"\x89PNG\r\n\x1a\n\xff")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad.yaml").write_text("search:\n  alpha: [1\n")
    for name, message in (("folder", "is a folder, not a params file"), ("bin.yaml", "not a UTF-8 text file"),
                          ("list.yaml", "the top level must be a mapping of sections, not a list"),
                          ("bad.yaml", "not valid YAML at line 3, column 1"), ("nope.yaml", "no such params file")):
        path = tmp_path / name
        with pytest.raises(ParamsError, match=f"^{path}: {message}"):
            load_params(path)


def test_overrides_name_the_key_never_the_value(tmp_path):
    p = write(tmp_path, "{}\n")
    for override, message in (("latency.password=hunter2", "--set latency.password: secrets are never accepted"),
                              ("search.alpha=[hunter2", "--set search.alpha: not valid YAML"),
                              ("search.patch={height: 64, height: 32}", "search.patch.height: duplicate key"),
                              ("search..alpha=hunter2", "--set 'search..alpha': expected key.sub=value")):
        with pytest.raises(ParamsError, match=re.escape(message)) as e:
            load_params(p, [override])
        assert "hunter2" not in str(e.value)


def test_real_datasets_the_pipeline_reads(tmp_path):
    (tmp_path / "cs").mkdir()
    params = load_params(write(tmp_path, f"data: {{generate: false}}\npaths: {{dataset: {tmp_path / 'cs'}, "
                                         f"coco: {tmp_path / 'nope'}, imagenet: {tmp_path / 'nope2'}}}\n"))
    missing = missing_datasets(params)
    assert [m.split(":")[0] for m in missing] == ["paths.coco", "paths.imagenet"]
    assert "or set train.pretrain_coco.enabled: false" in missing[0]
    off = load_params(write(tmp_path, f"data: {{generate: false}}\npaths: {{dataset: {tmp_path / 'cs'}}}\n"
                                      "train: {pretrain_coco: {enabled: false}, "
                                      "pretrain_imagenet: {enabled: false}}\n"))
    assert off.datasets() == {"dataset": str(tmp_path / "cs")} and missing_datasets(off) == []


def test_a_folder_format_target_must_exist_even_when_generating(tmp_path):
    """The pipeline never generates the user's own dataset: with data.generate true its folder is still required."""
    text = (f"data: {{format: folder}}\npaths: {{dataset: {tmp_path / 'mine'}}}\n"
            "train: {train_coarse: {enabled: false}}\n")
    missing = missing_datasets(load_params(write(tmp_path, text)))
    assert missing == [f"paths.dataset: {tmp_path / 'mine'}: no such dataset folder (data.format is folder: point "
                       "paths.dataset at your dataset, README 'Your own dataset')"]
    (tmp_path / "mine").mkdir()
    assert missing_datasets(load_params(write(tmp_path, text))) == []


@pytest.mark.parametrize("text,message", [
    ("paths: {cityscapes: data/cs}\n", "paths.cityscapes: renamed to paths.dataset"),
    ("cost_tables: {num_classes: 19}\n", "cost_tables.num_classes: removed; the class count comes from the dataset"),
    ("latency: {num_classes: 19}\n", "latency.num_classes: removed"),
    ("search: {num_classes: 5}\n", "search.num_classes: removed"),
    ("data: {format: folder}\n", "train.train_coarse.enabled: the folder format has no coarse annotations"),
])
def test_settings_the_dataset_now_decides_are_refused_with_the_fix(tmp_path, text, message):
    with pytest.raises(ParamsError, match=re.escape(message)):
        load_params(write(tmp_path, text))
