"""The agency admin console in the browser: users, org chart, outbound queue, health.

`console` holds the rules (who may see and change whom, summaries of the box's
state); `pages` turns them into the ``/admin`` web pages (`pages.admin_routes`).
"""
