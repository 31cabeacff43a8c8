"""The one config surface: flags, SALESFC_* fallbacks, defaults, and one-line errors."""

import pytest

from salesfc import settings
from salesfc.cli import build_parser


def resolve(argv, environ=None):
    args = build_parser().parse_args(argv)
    return settings.resolve(args, args.command, environ or {})


def test_flag_beats_environment_beats_default():
    assert resolve(["train"])["epochs"] == settings.BY_NAME["epochs"].default
    assert resolve(["train"], {"SALESFC_EPOCHS": "7"})["epochs"] == 7
    assert resolve(["train", "--epochs", "3"], {"SALESFC_EPOCHS": "7"})["epochs"] == 3


def test_every_setting_has_help_and_a_command():
    for setting in settings.SETTINGS:
        assert len(setting.help) > 20, setting.name
        assert setting.commands, setting.name


def other_value(setting) -> str | None:
    """Text that parses to a value other than the setting's default (None if no candidate does)."""
    default = setting.default
    candidates = [*setting.choices]
    if isinstance(default, (int, float)) and not isinstance(default, bool):
        candidates += [str(default + 1), str(default * 2 + 1)]
    candidates += ["3,2", "7", "abc", "0.5", "http://127.0.0.1:8000", "true", "local[2]"]
    for text in candidates:
        try:
            value = setting.parse(text, setting.flag)
        except settings.SettingError:
            continue
        if value != default:
            return text
    return None


@pytest.mark.parametrize("command", settings.STAGES + settings.SUBMIT)
def test_each_flag_and_its_variable_change_that_setting_alone(command):
    defaults = resolve([command])
    checked = 0
    for setting in settings.for_command(command):
        text = other_value(setting)
        if text is None:
            continue
        by_flag = resolve([command, setting.flag, text])
        assert by_flag == resolve([command], {setting.env: text}), setting.name
        assert {name for name in by_flag if by_flag[name] != defaults[name]} == {setting.name}
        checked += 1
    assert checked >= len(settings.for_command(command)) - 1  # at most one setting has no other parseable value


@pytest.mark.parametrize("argv, environ, fragment", [
    (["train", "--epochs", "-1"], {}, "--epochs: '-1' must be a whole number of at least 1"),
    (["train", "--epochs", "2.5"], {}, "--epochs: '2.5' must be a whole number"),
    (["train", "--spark-master", "yarn"], {},
     "--spark-master: 'yarn' must be local, local[N], local[*] or spark://HOST:PORT"),
    (["train"], {"SALESFC_LR": "fast"}, "SALESFC_LR (environment): 'fast' must be a number"),
    (["train", "--hidden", "256,x"], {}, "--hidden: '256,x' must be comma-separated whole numbers"),
    (["prep", "--size", "huge"], {}, "--size: 'huge' is not one of tiny, small, full"),
    (["train", "--run-id", "Bad_Name"], {}, "--run-id: 'Bad_Name' must be lower-case letters"),
    (["check", "--serve-url", "demo-serve:8000"], {}, "--serve-url: 'demo-serve:8000' must be an http:// or https://"),
])
def test_bad_values_name_the_flag_or_variable(argv, environ, fragment):
    with pytest.raises(settings.SettingError) as caught:
        resolve(argv, environ)
    assert fragment in str(caught.value)


def test_layer_sizes_parse_to_a_tuple():
    assert resolve(["train", "--hidden", "32,16"])["hidden"] == (32, 16)


def test_settings_apply_only_to_their_commands():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prep", "--epochs", "3"])
    assert "epochs" not in resolve(["prep"])


def test_unknown_salesfc_variables_are_reported():
    assert settings.unknown_environment({"SALESFC_EPOCHS": "1", "SALESFC_EPOCH": "1", "HOME": "/"}) == \
        ["SALESFC_EPOCH"]


def test_as_flags_round_trips_through_the_parser():
    values = resolve(["train", "--epochs", "5", "--hidden", "8,4", "--run-id", "r1"])
    again = resolve(["train", *settings.as_flags(values, "train")])
    assert again == values


def test_password_is_environment_only():
    assert "pg_password" not in settings.BY_NAME
    assert settings.PASSWORD_ENV in settings.ENV_NAMES


def test_cli_errors_are_one_line(run_salesfc):
    for argv, code in ((["train", "--bogus"], 2), (["train", "--epochs", "0"], 2), (["nosuch"], 2)):
        result = run_salesfc(*argv, check=False)
        assert result.returncode == code
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "error" in lines[0], result.stderr


def test_help_names_every_environment_variable(run_salesfc):
    for command in ("prep", "train", "infer", "check", "demo"):
        text = " ".join(run_salesfc(command, "--help").stdout.split())
        for setting in settings.for_command(command):
            assert setting.env in text.replace("- ", "-"), (command, setting.env)


def test_config_reports_settings_that_do_not_apply():
    config = settings.Config("prep", resolve(["prep"]))
    assert config.size == "full"
    with pytest.raises(AttributeError, match="does not apply to 'salesfc prep'"):
        _ = config.epochs
    train = config.for_command("train")
    assert train.epochs == settings.BY_NAME["epochs"].default and train.command == "train"
    assert config.replace(size="tiny").size == "tiny" and config.size == "full"  # replace() copies
