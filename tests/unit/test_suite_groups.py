"""The suite's scheduling groups (tests/conftest.py) hold: a module that runs as a group of its own
(`LOCKS_OF_ITS_OWN = True`) pins nothing another engine test module pins, so no image ID it removes is another
group's."""

from __future__ import annotations

import re
from pathlib import Path

INTEGRATION = Path(__file__).resolve().parents[1] / "integration"
PIN = re.compile(r"\b([A-Za-z][A-Za-z0-9_.-]*==\d[0-9A-Za-z.]*)")


def test_a_module_with_locks_of_its_own_shares_no_pin_with_another_module() -> None:
    texts = {path.name: path.read_text(encoding="utf-8") for path in INTEGRATION.glob("test_*.py")}
    own = sorted(name for name, text in texts.items() if re.search(r"^LOCKS_OF_ITS_OWN = True$", text, re.MULTILINE))
    assert own, "no module runs as a group of its own"
    for name in own:
        pins = set(PIN.findall(texts[name]))
        assert pins, f"{name} says its locks are its own but pins nothing"
        for other, text in texts.items():
            shared = pins & set(PIN.findall(text)) if other != name else set()
            assert not shared, f"{name} and {other} both pin {sorted(shared)}: one lock, one image ID, two groups"
