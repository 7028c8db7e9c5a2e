"""The README's examples stay true: every `tinydot ...` line parses with the options the CLI has
(without running it), every command and option its prose names exists, and the Python examples
run (with a 5-step training instead of 500)."""

import re
import shlex
from pathlib import Path

import pytest
import typer

from tinydot.cli import UsageError, app

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def command_lines() -> list[str]:
    lines = [line.split("#")[0].strip() for block in blocks("bash") for line in block.splitlines()]
    return [line for line in lines if line.startswith("tinydot ")]


def test_the_readme_shows_commands_and_python():
    assert len(command_lines()) >= 30 and len(blocks("python")) >= 2


def parse(line: str) -> None:
    """Parse a command line as the CLI would, down to its command, without running anything."""
    args = shlex.split(line.replace("<", "").replace(">", ""))[1:]  # out/study-<hash> placeholders
    ctx = typer.main.get_command(app).make_context("tinydot", list(args))
    while args and args[0] in getattr(ctx.command, "commands", {}):  # descend: tinydot data info ...
        name, args = args[0], args[1:]
        ctx = ctx.command.commands[name].make_context(name, list(args), parent=ctx)  # bad options raise here
    if getattr(ctx.command, "commands", None):
        raise UsageError(f"{line!r} names a command group, not a command")


@pytest.mark.parametrize("line", command_lines())
def test_every_readme_command_parses(line):
    parse(line)


def prose_commands() -> list[str]:
    """`tinydot ...` spans in the README's text (outside code blocks), line breaks joined."""
    prose = re.sub(r"```.*?```", "", README.read_text(), flags=re.S).replace("\n", " ")
    return re.findall(r"`(tinydot [^`]+)`", prose)


@pytest.mark.parametrize("line", prose_commands())
def test_every_command_and_option_the_readme_prose_names_exists(line):
    # prose may name a command without its required options ("`tinydot train`") or a global option alone
    try:
        parse(line.removesuffix("..."))
    except UsageError as error:
        if type(error).__name__ != "MissingParameter" and "names a command group" not in str(error):
            raise


@pytest.mark.parametrize("line", ["tinydot train --out r --nope 3", "tinydot sample --out x.png",
                                  "tinydot lottery --out r --levels many", "tinydot data", "tinydot fly"])
def test_the_parse_check_refuses_what_the_cli_refuses(line):
    with pytest.raises(UsageError):
        parse(line)


def test_the_readme_python_examples_run(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = blocks("python")[:2]
    scope: dict = {}
    exec(compile(first, "README.md (first Python example)", "exec"), scope)
    steps = scope["train"].steps[0, : scope["train"].lengths[0]]
    assert steps.shape[1] == 3 and steps[-1, 2] == 2  # (dx, dy, pen), ending with end-of-digit
    assert "steps=500" in second
    exec(compile(second.replace("steps=500", "steps=5"), "README.md (second Python example)", "exec"), scope)
    sevens = scope["sevens"]
    assert len(sevens) == 16 and (sevens.labels == 7).all()
    assert (tmp_path / "runs" / "tiny" / "model.safetensors").is_file()
