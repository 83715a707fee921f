"""KEY=VALUE overrides given after an option still reach the recipe.

`align run` launches each stage of a multi-process profile as
`accelerate launch ... -m align stage RECIPE --stage NAME KEY=VALUE ...`: the overrides come after
`--stage`, where argparse alone refused them ("unrecognized arguments"), so any recipe run with an
override failed under ddp / fsdp / zero profiles (seen on a GPU with the fsdp profile).
"""

from pathlib import Path

from align.cli import main
from align.profiles import profile_path
from align.runner import launch_command

RECIPE = str(Path(__file__).resolve().parent.parent / "recipes" / "tiny" / "sft.yaml")
TYPO = "stages.sft.args.learning_rat=1"  # refused with a suggestion once it reaches the recipe


def test_launched_stage_command_applies_its_overrides(capsys):
    cmd = launch_command(RECIPE, "sft", [TYPO], profile_path("cpu-ddp"))
    argv = cmd[cmd.index("align") + 1:]  # what `-m align` receives
    assert main(argv) == 2
    assert "Did you mean 'learning_rate'?" in capsys.readouterr().err


def test_run_override_after_accelerate_option_is_applied(capsys):
    assert main(["validate", RECIPE, "--accelerate", "cpu", TYPO]) == 2
    assert "Did you mean 'learning_rate'?" in capsys.readouterr().err


def test_unknown_option_is_still_refused(capsys):
    import pytest

    with pytest.raises(SystemExit) as exc:
        main(["validate", RECIPE, "--no-such-option"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err
