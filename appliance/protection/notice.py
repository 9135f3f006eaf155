"""What stands in for a message whose virus was removed (mail replicated from the centre).

A message that reaches a user's central mailbox has been accepted by the centre; the
box cannot refuse it, only decline to keep its infected content. It keeps the
message's place (so the two sides stay matched and it is not fetched again) with this
notice: the original header block, kept for who, when and what, then a short
bilingual body naming the signature. Pure: bytes in, bytes out.
"""

from __future__ import annotations

#: Removed from the kept header block: they describe a body that is no longer there.
_BODY_FIELDS = (b"content-", b"mime-version:")


def _header_block(content: bytes) -> bytes:
    end = content.find(b"\r\n\r\n")
    if end < 0:
        end = content.find(b"\n\n")
        return content[: end + 1] if end >= 0 else content
    return content[: end + 2]


def virus_notice(content: bytes, signature: str, hostname: str) -> bytes:
    """Return the message that replaces *content*, in which clamd found *signature*."""
    kept: list[bytes] = []
    dropping = False
    for line in _header_block(content).splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        dropping = line.lower().startswith(_BODY_FIELDS)
        if not dropping:
            kept.append(line if line.endswith(b"\r\n") else line.rstrip(b"\r\n") + b"\r\n")
    name = "".join(c for c in signature if " " <= c <= "~")[:120]
    body = (
        f"ข้อความนี้มีไวรัส ({name}) เครื่องแม่ข่าย {hostname} จึงนำเนื้อหาและไฟล์แนบออก\r\n"
        "หากจำเป็นต้องใช้ กรุณาติดต่อผู้ส่งหรือผู้ดูแลระบบ\r\n\r\n"
        f"This message contained a virus ({name}); {hostname} removed its content and\r\n"
        "attachments. If you need it, ask the sender or your administrator.\r\n"
    )
    return (
        b"".join(kept)
        + f"X-Virus-Found: {name}\r\n".encode()
        + b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        + b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        + body.encode("utf-8")
    )


def pending_virus_notice(header: bytes, signature: str, hostname: str) -> bytes:
    """The body filled in for a listed message (its stored *header* must stay first)."""
    name = "".join(c for c in signature if " " <= c <= "~")[:120]
    return (
        header
        + (f"[virus removed by {hostname}: {name}] [{hostname} นำเนื้อหาที่มีไวรัสออกแล้ว]\r\n").encode()
    )
