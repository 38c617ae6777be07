import subprocess
import sys

from medsemgan import cli


def test_help_lists_every_registered_verb(capsys):
    parser = cli.build_parser()
    help_text = parser.format_help()
    for verb in cli.COMMANDS:
        assert verb in help_text


def test_console_entry_point_runs():
    out = subprocess.run(
        [sys.executable, "-m", "medsemgan.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0
    assert out.stdout.startswith("medsemgan ")


def test_unknown_verb_exits_nonzero():
    out = subprocess.run(
        [sys.executable, "-m", "medsemgan.cli", "no-such-verb"], capture_output=True, text=True
    )
    assert out.returncode != 0


def test_a_verb_builds_without_importing_the_other_verbs():
    code = (
        "import sys; from medsemgan import cli; cli.build_parser('info'); "
        "print('medsemgan.evaluation.report' in sys.modules, 'medsemgan.data.info' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
