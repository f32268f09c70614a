"""Root conftest: loads every fixture module under tests/fixtures/ as a plugin, so each part of
the suite (services, workers, browser) keeps its fixtures in a file of its own."""

from pathlib import Path

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "tests" / "fixtures").glob("*.py")
    if not path.stem.startswith("_")
)
