import pytest

from nas_core.config import ParamsError, Params, load_params, parse_params


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
        params.cost_tables.num_classes = 3


@pytest.mark.parametrize("text,message", [
    ("cost_tables:\n  spacez: [small]\n", "cost_tables.spacez: unknown key"),
    ("cost_tables:\n  spaces: [medium]\n", "cost_tables.spaces.0: Input should be 'small', 'large' or 'xlarge' (got 'medium')"),
    ("cost_tables:\n  input_size: {height: 100, width: 2048}\n", "cost_tables.input_size.height: Input should be a multiple of 16"),
    ("cost_tables:\n  num_classes: 0\n", "cost_tables.num_classes: Input should be greater than or equal to 1"),
    ("mystery: 1\n", "mystery: unknown key"),
    ("cost_tables:\n  spaces: []\n", "cost_tables.spaces: Value error, list at least one space"),
])
def test_errors_name_the_field_and_allowed_values(tmp_path, text, message):
    p = write(tmp_path, text)
    with pytest.raises(ParamsError) as e:
        load_params(p)
    assert message in str(e.value)
    assert str(p) in str(e.value)


def test_overrides(tmp_path):
    p = write(tmp_path, "cost_tables:\n  spaces: [small]\n")
    params = load_params(p, ["cost_tables.num_classes=7", "cost_tables.spaces=[large, xlarge]"])
    assert params.cost_tables.num_classes == 7 and params.cost_tables.spaces == ("large", "xlarge")
    with pytest.raises(ParamsError, match="with --set cost_tables.num_classes: cost_tables.num_classes: Input should be a valid integer"):
        load_params(p, ["cost_tables.num_classes=many"])
    with pytest.raises(ParamsError, match="expected key.sub=value"):
        load_params(p, ["cost_tables.num_classes"])


def test_unreadable_files(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(write(tmp_path, "a: [1, 2\n"))
    with pytest.raises(ParamsError, match="top level must be a mapping"):
        parse_params([1, 2])
