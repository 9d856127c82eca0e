"""The publishing workflow runs the README's commands: its test step is the README's test
command, its build step the README's build command, and it deploys what that build writes."""

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "book.yml"
README = ROOT / "README.md"
ON_MAIN = "github.event_name == 'push' && github.ref == 'refs/heads/main'"


def readme_commands():
    """The commands of the README's "Two commands" block: ``{"book": ..., "test": ...}``."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    block = next(b for b in blocks if "make book" in b and "make test" in b)
    commands = [line.split("#")[0].strip() for line in block.splitlines()]
    return {command.split()[-1]: command for command in commands if command}


def workflow():
    return yaml.safe_load(WORKFLOW.read_text())


def steps(job):
    return workflow()["jobs"][job]["steps"]


def step_index(job, predicate, what):
    found = [i for i, step in enumerate(steps(job)) if predicate(step)]
    assert len(found) == 1, f"{WORKFLOW.name}: expected one step that {what} in job {job!r}, found {len(found)}"
    return found[0]


def test_readme_names_the_two_commands():
    assert readme_commands() == {"book": "make book", "test": "make test"}


def test_workflow_runs_the_readme_commands_and_deploys_the_build():
    commands = readme_commands()
    test = step_index("build", lambda s: s.get("run") == commands["test"], f"runs {commands['test']!r}")
    book = step_index("build", lambda s: s.get("run") == commands["book"], f"runs {commands['book']!r}")
    upload = step_index(
        "build",
        lambda s: s.get("uses", "").startswith("actions/upload-pages-artifact@"),
        "uploads the Pages artifact",
    )
    configure = step_index(
        "build", lambda s: s.get("uses", "").startswith("actions/configure-pages@"), "configures Pages"
    )
    assert test < book < upload and configure < upload
    build_steps = steps("build")
    assert build_steps[upload]["with"]["path"] == "_build/html"  # where `make book` writes
    assert "if" not in build_steps[test] and "if" not in build_steps[book]
    assert build_steps[upload]["if"] == build_steps[configure]["if"] == ON_MAIN


def test_workflow_deploys_only_main_to_github_pages():
    spec = workflow()
    triggers = spec.get("on", spec.get(True))  # YAML 1.1 reads a bare `on` as true
    assert triggers["push"]["branches"] == ["main"] and "pull_request" in triggers
    deploy = spec["jobs"]["deploy"]
    assert deploy["if"] == ON_MAIN and deploy["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert deploy["concurrency"] == {"group": "pages", "cancel-in-progress": False}
    assert [s["uses"].split("@")[0] for s in deploy["steps"]] == ["actions/deploy-pages"]
    assert spec["permissions"] == {"contents": "read"}  # nothing else may write


def test_readme_shows_the_badge_and_the_address():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    repo = config["repository"]["url"].removeprefix("https://github.com/").strip("/")
    owner, name = repo.split("/")
    text = README.read_text()
    badge = f"https://github.com/{repo}/actions/workflows/{WORKFLOW.name}/badge.svg"
    assert badge in text
    assert f"https://{owner}.github.io/{name}/" in text
