"""The docs and the settings agree: a user who copies a variable from a page gets a setting
that exists, and every setting the service reads has a line in docs/CONFIGURATION.md."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from app.settings import EndpointConfig, Price, ReplicaConfig, Settings

ROOT = Path(__file__).resolve().parent.parent
CONFIGURATION = ROOT / "docs" / "CONFIGURATION.md"
ENV_NAME = re.compile(r"\bSELFINSTRUCT_[A-Z0-9_]*[A-Z0-9]\b")
# The test suite's own knobs (tests/ reads them, the service never does); docs/TESTING.md
# may name them.
TEST_ONLY_PREFIX = "SELFINSTRUCT_TEST_"


def setting_names() -> set[str]:
    """Every environment variable `Settings` reads, spelled as a user sets it."""
    prefix = Settings.model_config.get("env_prefix", "")
    names = set()
    for field_name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias.upper() if isinstance(alias, str) else f"{prefix}{field_name}".upper())
    return names


def doc_pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def mentioned_names(page: Path) -> set[str]:
    return {
        name
        for name in ENV_NAME.findall(page.read_text(encoding="utf-8"))
        if not name.startswith(TEST_ONLY_PREFIX)
    }


def test_setting_names_are_read_from_the_settings_class() -> None:
    """Guards the test itself: were the mapping wrong, both checks below would be vacuous."""
    names = setting_names()
    assert {"DATABASE_URL", "SELFINSTRUCT_DATA_DIR", "SELFINSTRUCT_ENDPOINTS"} <= names
    assert len(names) == len(Settings.model_fields)


def test_every_variable_a_page_names_is_a_setting() -> None:
    known = setting_names()
    unknown = {
        f"{page.relative_to(ROOT)}: {name}"
        for page in doc_pages()
        for name in mentioned_names(page) - known
    }
    assert not unknown, (
        "these pages name variables app/settings.py does not read (a typo, or a setting that "
        f"was renamed or removed): {sorted(unknown)}"
    )


def test_every_setting_is_documented_in_configuration_md() -> None:
    text = CONFIGURATION.read_text(encoding="utf-8")
    missing = sorted(name for name in setting_names() if f"`{name}`" not in text)
    assert not missing, f"docs/CONFIGURATION.md does not document these settings: {missing}"


def test_every_endpoint_and_price_key_is_documented_in_configuration_md() -> None:
    """The JSON settings have keys of their own, refused when unknown, so each needs a line."""
    text = CONFIGURATION.read_text(encoding="utf-8")
    models: list[type[BaseModel]] = [EndpointConfig, ReplicaConfig, Price]
    missing = sorted(
        f"{model.__name__}.{key}"
        for model in models
        for key in model.model_fields
        if f"`{key}`" not in text
    )
    assert not missing, f"docs/CONFIGURATION.md does not document these keys: {missing}"


LINK = re.compile(r"\]\(([^)\s]+)\)")


def github_anchor(heading: str) -> str:
    """The fragment GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # a `# comment` in code is no heading
    return {github_anchor(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def test_every_link_between_pages_reaches_a_file_and_heading() -> None:
    """Moving a section from one page to another must not leave a link pointing at nothing."""
    broken = []
    for page in doc_pages():
        for target in LINK.findall(page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path_part, _, fragment = target.partition("#")
            dest = (page.parent / path_part).resolve() if path_part else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target} (no such file)")
            elif fragment and dest.suffix == ".md" and fragment not in anchors(dest):
                broken.append(f"{page.relative_to(ROOT)} -> {target} (no such heading)")
    assert not broken, f"broken links: {broken}"
