"""IMAP4rev1 server side: the sans-I/O protocol core and mailbox-name encoding."""
