"""Keep the search index in step with the mail database after a restart.

The index is updated right after every change, but it lives in its own database, so a
crash between the two commits can leave it behind; a new or rebuilt index starts
empty. This service reconciles once at start-up, in the background: the box serves
mail at once, and SEARCH falls back to reading messages the index does not know yet.
"""

from __future__ import annotations

import logging

import trio

from appliance.mail.mailstore import Mailstore

log = logging.getLogger("edgebox.mail")


class SearchIndexReconciler:
    name = "search-index"

    def __init__(self, mailstore: Mailstore) -> None:
        self.mailstore = mailstore

    async def serve(
        self, *, task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started([])
        added = await self.mailstore.reconcile_search_index()
        if added:
            log.info("search index: indexed %d messages it was missing", added)
        await trio.sleep_forever()
