// Chat search results (/chat/search): moving through the results from the keyboard.

import { arrowNavigation, root, startChatPage } from "./chat-page.js";

startChatPage(() => arrowNavigation(root, ".search-result a"));
