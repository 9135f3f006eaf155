"""No page transfers more than 500 KB before the user does anything (issue 6).

Measured in the browser with its cache disabled (the worst case: a first visit), as the
sum of the bytes of the document and everything it loaded, headers included
(Resource Timing ``transferSize``), after the network has gone quiet.
"""

from __future__ import annotations

import json
from typing import Any

from tests.e2e.browser.conftest import DOMAIN, SCREENSHOTS, Browsers
from tests.e2e.browser.test_chat import group_room
from tests.e2e.browser.test_mail import deliver

LIMIT = 500 * 1024

TRANSFERRED = """() => {
  const entries = [...performance.getEntriesByType("navigation"),
                   ...performance.getEntriesByType("resource")];
  return entries.map((e) => [e.name, e.transferSize]);
}"""


def test_no_main_page_transfers_more_than_500_kb(browsers: Browsers) -> None:
    deliver(browsers.box, "ทดสอบขนาดหน้า", "เนื้อความ\n" * 200, to=f"somchai@{DOMAIN}")
    room_id = group_room(browsers.box, "ห้องวัดขนาดหน้า")
    tab = browsers.signed_in(f"somchai@{DOMAIN}")
    page = tab.page
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
    tab.go("/mail")
    first = page.locator("table.messages a.open").first.get_attribute("href")
    paths = [
        "/mail", first, "/mail/compose", "/mail/search?q=ทดสอบ", "/chat",
        f"/chat/rooms/{room_id}", "/chat/new", "/admin", "/admin/users", "/settings",
    ]  # fmt: skip
    weights: dict[str, Any] = {}
    for path in paths:
        tab.go(path)
        page.wait_for_load_state("networkidle")
        entries = page.evaluate(TRANSFERRED)
        total = sum(size for _, size in entries)
        weights[path] = {"bytes": total, "requests": len(entries)}
        # A zero would mean the measurement saw nothing (cache, or a failed load).
        assert total > 1000, (path, entries)
        assert total < LIMIT, (path, entries)
    SCREENSHOTS.parent.mkdir(parents=True, exist_ok=True)
    (SCREENSHOTS.parent / "page-weights.json").write_text(json.dumps(weights, indent=2) + "\n")
    tab.assert_clean()
