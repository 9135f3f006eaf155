"""The webmail: a user's mailboxes in the browser, over the same store IMAP uses.

The reading side lives here: folders and unread counts (`folders`), message lists
(`listing`), the reading view and attachments (`reading`), HTML mail made safe
(`sanitise`) and the page routes that tie them together (`pages.mail_routes`).
Writing mail (compose, reply, drafts) is `compose` and `compose_pages`.

What this is not: a second mail store. Every page reads and changes mail through
`appliance.mail.mailboxes.Mailboxes` and the search index, exactly as IMAP does, so a
message read, flagged or moved in the browser is read, flagged or moved in every client.
"""
