import subprocess
import sys


def test_help_lists_stages_without_heavy_imports():
    code = ("import sys; from g2i_core.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'pyspark', 'diffusers', 'transformers') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("s3", "sample", "serve-images", "config"):
        assert name in out
    assert "HEAVY []" in out


def test_every_subcommand_has_help():
    from g2i_core.cli import discover, main

    for name in discover():
        try:
            main([name, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, name


def test_errors_are_one_line(tmp_path, capsys):
    from g2i_core.cli import main

    rc = main(["serve-images", "--dir", str(tmp_path / "nope")])
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]
