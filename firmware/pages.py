"""What the display and the status LED show, from the host's last STATE: pure functions.

A page is at most `LINES` lines of at most `COLUMNS` characters (the 8x8 font of
`framebuf` on a 128x64 display, one line every `LINE_PITCH` pixels). The font has no
Thai glyphs, so the panel speaks English; docs/front-panel.md gives the Thai.
"""

COLUMNS = 16
LINES = 5
LINE_PITCH = 13

#: Pages in the order a short press walks them; `available` skips those not relevant.
BOX = "box"
SETUP = "setup"
LINKS = "links"
QUEUE = "queue"
HEALTH = "health"
UPDATE = "update"
ORDER = (BOX, SETUP, LINKS, QUEUE, HEALTH, UPDATE)

#: LED modes, and their patterns: alternating on/off times in ms, repeated.
BOOTING = "booting"
OK = "ok"
DEGRADED = "degraded"
UPLINK_DOWN = "uplink-down"
UNPROVISIONED = "unprovisioned"
UPDATING = "updating"
ERROR = "error"
PATTERNS = {
    BOOTING: (100, 100),
    OK: (1000, 0),
    DEGRADED: (1000, 1000),
    UPLINK_DOWN: (150, 150, 150, 1050),
    UNPROVISIONED: (1500, 500),
    UPDATING: (250, 250),
    ERROR: (100, 100, 100, 100, 100, 700),
}


#: Update phases (the host's ``uphase``) while the box is busy with an update; the
#: others say how the last one ended: installed (waits for a reboot), good,
#: rolled-back, refused.
UPDATE_BUSY = ("downloading", "verifying", "installing", "rebooting")
#: Width of the progress bar between its brackets.
BAR = COLUMNS - 2


def updating(state):
    """Whether the box is busy with an update (an older host sends only ``update``)."""
    phase = state.get("uphase", "")
    return phase in UPDATE_BUSY or (not phase and bool(state.get("update")))


def led_mode(state):
    """Return the LED mode for *state* (a dict of STATE fields; empty before the host spoke)."""
    if not state:
        return BOOTING
    if state.get("health") == "error":
        return ERROR
    if updating(state):
        return UPDATING
    if state.get("prov") == "no":
        return UNPROVISIONED
    if state.get("health") == "warn":
        return DEGRADED
    if state.get("gin") == "down":
        return UPLINK_DOWN
    return OK


def available(state):
    """Return the pages worth showing for *state*, in walking order."""
    pages = []
    for page in ORDER:
        if page == SETUP and state.get("prov") != "no":
            continue
        if page == UPDATE and not (state.get("update") or state.get("uphase")):
            continue
        pages.append(page)
    return pages


def next_page(current, state):
    """Return the page after *current* (a short press)."""
    pages = available(state)
    if current not in pages:
        return pages[0]
    return pages[(pages.index(current) + 1) % len(pages)]


def _wrap(text, width, count):
    words = text.split()
    lines = []
    line = ""
    for word in words:
        while len(word) > width:
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:width])
            word = word[width:]
        if not line:
            line = word
        elif len(line) + 1 + len(word) <= width:
            line = line + " " + word
        else:
            lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines[:count]


def lines(page, state):
    """Return the text lines of *page* for *state*."""
    if not state:
        return ["EDGEBOX", "starting...", "waiting for host"]
    if page == BOX:
        return ["EDGEBOX", state.get("name", "?"), "LAN", state.get("lan", "-")]
    if page == SETUP:
        text = ["SETUP CODE", state.get("setup", "-"), "open https://", state.get("lan", "-")]
        fingerprint = state.get("fp", "")
        if fingerprint:
            # 16 hex digits fill a line exactly; the dashes the console prints do not fit.
            text.append(fingerprint.replace("-", ""))
        return text
    if page == LINKS:
        return [
            "LINKS",
            "GIN: " + state.get("gin", "unknown"),
            "INTL: " + state.get("intl", "unknown"),
            "Queue: " + state.get("queue", "0"),
        ]
    if page == QUEUE:
        return [
            "OUTBOUND QUEUE",
            state.get("queue", "0") + " waiting",
            "most urgent:",
            state.get("urgent", "-") or "-",
        ]
    if page == HEALTH:
        check = state.get("check", "")
        if not check:
            return ["HEALTH", "all checks ok"]
        return ["HEALTH " + state.get("health", "?").upper()] + _wrap(check, COLUMNS, LINES - 1)
    if page == UPDATE:
        return _update_lines(state)
    return []


def _update_lines(state):
    version = state.get("uver", "")
    title = "UPDATE " + version if version else "UPDATE"
    phase = state.get("uphase", "") or "installing"
    percent = state.get("update", "")
    why = state.get("uwhy", "")
    if phase in ("downloading", "verifying", "installing"):
        text = [title, phase + " " + percent + "%" if percent else phase]
        if percent.isdigit():
            filled = min(int(percent), 100) * BAR // 100
            text.append("[" + "#" * filled + "." * (BAR - filled) + "]")
        # A download may be cut at any time; writing a slot may not.
        text.append("link may drop" if phase == "downloading" else "do not unplug")
        return text
    if phase == "rebooting":
        return [title, "rebooting", "do not unplug"]
    if phase == "installed":
        return [title, "installed:", "runs after the", "next reboot"]
    if phase == "good":
        return [title, "good: running", "and committed"]
    word = "ROLLED BACK" if phase == "rolled-back" else phase.upper()
    return [title, word] + _wrap(why or "see HEALTH page", COLUMNS, LINES - 2)


def fit(text_lines):
    """Return *text_lines* cut to the display: `LINES` lines of `COLUMNS` characters."""
    return [line[:COLUMNS] for line in text_lines[:LINES]]
